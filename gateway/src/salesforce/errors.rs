//! Salesforce's answers read the way the error catalogue says to react to them: the usage header,
//! error bodies, and which class of [`CrmError`] each status and code is.

use actors::crm::port::{ApiUsage, CrmError};
use serde::Deserialize;

/// Reads `Sforce-Limit-Info: api-usage=10018/100000` (other parts, such as `per-app-api-usage`,
/// may follow after `;`).
pub fn parse_limit_info(header: &str) -> Option<ApiUsage> {
    header.split([';', ',']).map(str::trim).find_map(|part| {
        let (used, max) = part.strip_prefix("api-usage=")?.split_once('/')?;
        Some(ApiUsage { used: used.trim().parse().ok()?, max: max.trim().parse().ok()? })
    })
}

/// One entry of a REST error body: `[{"message": "...", "errorCode": "...", "fields": []}]`.
#[derive(Debug, Deserialize)]
struct RestError {
    #[serde(default)]
    message: String,
    #[serde(rename = "errorCode", default)]
    error_code: String,
}

/// An OAuth error body: `{"error": "invalid_grant", "error_description": "..."}`.
#[derive(Debug, Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The code and message of an error body, whatever its shape.
fn code_and_message(body: &[u8]) -> (String, String) {
    if let Ok(errors) = serde_json::from_slice::<Vec<RestError>>(body)
        && let Some(first) = errors.into_iter().next()
    {
        return (first.error_code, first.message);
    }
    if let Ok(error) = serde_json::from_slice::<OAuthError>(body) {
        return (error.error, error.error_description);
    }
    let text = String::from_utf8_lossy(body);
    (String::new(), text.chars().take(200).collect())
}

/// The class of a failed REST answer (anything but 2xx), per the error catalogue.
pub fn classify(status: u16, body: &[u8]) -> CrmError {
    let (code, message) = code_and_message(body);
    let described = if code.is_empty() { format!("HTTP {status}: {message}") } else { format!("{code}: {message}") };
    match (status, code.as_str()) {
        (403, "REQUEST_LIMIT_EXCEEDED") if message.contains("ConcurrentPerOrgLongTxn") => {
            CrmError::Concurrency(described)
        }
        (403, "REQUEST_LIMIT_EXCEEDED") => CrmError::LimitExceeded(described),
        // Credentials, permissions or an org with the API switched off: a person must act; retrying
        // slowly loses nothing meanwhile.
        (401 | 403, _) => CrmError::Auth(described),
        (408 | 412 | 429, _) | (500..=599, _) => CrmError::Transient(described),
        _ => CrmError::Rejected { code: if code.is_empty() { format!("HTTP_{status}") } else { code }, message },
    }
}

/// Per-record error codes worth sending again: the row was locked by someone else's transaction,
/// or the batch was rolled back because of another record.
pub fn record_error_is_retryable(code: &str) -> bool {
    matches!(code, "UNABLE_TO_LOCK_ROW" | "ALL_OR_NONE_OPERATION_ROLLED_BACK" | "REQUEST_RUNNING_TOO_LONG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_header_is_read_in_its_forms() {
        assert_eq!(parse_limit_info("api-usage=10018/100000"), Some(ApiUsage { used: 10018, max: 100_000 }));
        assert_eq!(
            parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=sample)"),
            Some(ApiUsage { used: 25, max: 5000 })
        );
        assert_eq!(parse_limit_info("api-bursts=1/750"), None);
        assert_eq!(parse_limit_info("api-usage=x/5000"), None);
    }

    fn rest(code: &str, message: &str) -> Vec<u8> {
        format!(r#"[{{"message":"{message}","errorCode":"{code}","fields":[]}}]"#).into_bytes()
    }

    #[test]
    fn every_class_of_the_catalogue() {
        let limit = classify(403, &rest("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."));
        assert!(matches!(limit, CrmError::LimitExceeded(_)), "{limit:?}");
        let long = classify(403, &rest("REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."));
        assert!(matches!(long, CrmError::Concurrency(_)), "{long:?}");
        assert!(matches!(classify(401, &rest("INVALID_SESSION_ID", "Session expired or invalid")), CrmError::Auth(_)));
        assert!(matches!(classify(403, &rest("INSUFFICIENT_ACCESS", "no")), CrmError::Auth(_)));
        assert!(matches!(classify(403, &rest("API_CURRENTLY_DISABLED", "off")), CrmError::Auth(_)));
        assert!(matches!(
            classify(400, br#"{"error":"invalid_grant","error_description":"expired"}"#),
            CrmError::Rejected { code, .. } if code == "invalid_grant"
        ));
        for transient in [500, 502, 503] {
            assert!(matches!(classify(transient, &rest("SERVER_UNAVAILABLE", "busy")), CrmError::Transient(_)));
        }
        assert!(matches!(classify(412, &rest("BATCH_PROCESSING_HALTED", "x")), CrmError::Transient(_)));
        for (status, code) in [(400, "MALFORMED_QUERY"), (400, "INVALID_FIELD"), (400, "JSON_PARSER_ERROR"), (300, "")]
        {
            let error = classify(status, &rest(code, "bad"));
            assert!(matches!(error, CrmError::Rejected { .. }), "{status} {code}: {error:?}");
            assert!(!error.is_retryable());
        }
        assert!(
            matches!(classify(502, b"<html>bad gateway</html>"), CrmError::Transient(message) if message.contains("502"))
        );
    }

    #[test]
    fn only_lock_contention_is_retried_per_record() {
        assert!(record_error_is_retryable("UNABLE_TO_LOCK_ROW"));
        assert!(!record_error_is_retryable("STRING_TOO_LONG"));
        assert!(!record_error_is_retryable("INVALID_CROSS_REFERENCE_KEY"));
    }
}

//! The OAuth side, pure: checking a JWT bearer assertion's signature and claims against the
//! configured connected app, with the time passed in.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

/// How far ahead an assertion's `exp` may lie. Salesforce's help asks for about three minutes; the
/// sandbox allows five so a client's clock may be a little ahead.
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// What an assertion must claim.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// `iss`: the connected app's consumer key.
    pub consumer_key: &'a str,
    /// `sub`: the integration user's name.
    pub username: &'a str,
    /// `aud`: the login URL.
    pub audience: &'a str,
}

/// Why an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssertionError {
    /// Not a JWT, not RS256, or the signature does not verify.
    #[error("invalid assertion: {0}")]
    Invalid(String),
    /// `iss` is not the consumer key.
    #[error("client identifier invalid")]
    WrongIssuer,
    /// `sub` is not the configured user.
    #[error("user hasn't approved this consumer")]
    WrongSubject,
    /// `aud` is not the configured audience.
    #[error("audience is invalid")]
    WrongAudience,
    /// `exp` is missing or past.
    #[error("expired authorization code")]
    Expired,
    /// `exp` is further ahead than [`MAX_ASSERTION_LIFETIME_SECS`].
    #[error("assertion expires too far in the future (at most {MAX_ASSERTION_LIFETIME_SECS} seconds ahead)")]
    TooFarAhead,
}

impl AssertionError {
    /// The OAuth error code Salesforce answers with.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            AssertionError::WrongIssuer => "invalid_client",
            _ => "invalid_grant",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<u64>,
}

/// Verifies `assertion`'s RS256 signature with `key`, then its claims against `expected` at
/// `now_secs` (seconds since the epoch).
pub fn verify_assertion(
    assertion: &str,
    key: &DecodingKey,
    expected: Expected<'_>,
    now_secs: u64,
) -> Result<(), AssertionError> {
    // The library checks only the signature and algorithm; the claims are checked below against the
    // time we are given, so tests need no clock.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(assertion, key, &validation)
        .map_err(|error| AssertionError::Invalid(error.to_string()))?
        .claims;
    if claims.iss.as_deref() != Some(expected.consumer_key) {
        return Err(AssertionError::WrongIssuer);
    }
    if claims.sub.as_deref() != Some(expected.username) {
        return Err(AssertionError::WrongSubject);
    }
    let audience_ok = match &claims.aud {
        Some(serde_json::Value::String(aud)) => aud == expected.audience,
        Some(serde_json::Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(expected.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(AssertionError::WrongAudience);
    }
    match claims.exp {
        Some(exp) if exp <= now_secs => Err(AssertionError::Expired),
        Some(exp) if exp > now_secs + MAX_ASSERTION_LIFETIME_SECS => Err(AssertionError::TooFarAhead),
        Some(_) => Ok(()),
        None => Err(AssertionError::Expired),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    // The test-only key pair under tests/fixtures (see its README).
    const PRIVATE: &str = include_str!("../../../tests/fixtures/jwt-test-key.pem");
    const PUBLIC: &str = include_str!("../../../tests/fixtures/jwt-test-key.pub.pem");
    const NOW: u64 = 1_750_000_000;
    const EXPECTED: Expected<'static> =
        Expected { consumer_key: "key", username: "user@example.com", audience: "https://login.salesforce.com" };

    fn sign(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
    }

    fn claims(exp: u64) -> serde_json::Value {
        serde_json::json!({"iss": "key", "sub": "user@example.com", "aud": "https://login.salesforce.com", "exp": exp})
    }

    fn verify(token: &str) -> Result<(), AssertionError> {
        verify_assertion(token, &DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap(), EXPECTED, NOW)
    }

    #[test]
    fn a_good_assertion_verifies() {
        assert_eq!(verify(&sign(claims(NOW + 180))), Ok(()));
        assert_eq!(verify(&sign(claims(NOW + MAX_ASSERTION_LIFETIME_SECS))), Ok(()));
    }

    #[test]
    fn each_bad_claim_is_named() {
        let mut bad = claims(NOW + 60);
        bad["iss"] = "other".into();
        assert_eq!(verify(&sign(bad)), Err(AssertionError::WrongIssuer));
        let mut bad = claims(NOW + 60);
        bad["sub"] = "someone@else".into();
        assert_eq!(verify(&sign(bad)), Err(AssertionError::WrongSubject));
        let mut bad = claims(NOW + 60);
        bad["aud"] = "https://test.salesforce.com".into();
        assert_eq!(verify(&sign(bad)), Err(AssertionError::WrongAudience));
        assert_eq!(verify(&sign(claims(NOW))), Err(AssertionError::Expired));
        assert_eq!(verify(&sign(claims(NOW + MAX_ASSERTION_LIFETIME_SECS + 1))), Err(AssertionError::TooFarAhead));
        assert_eq!(AssertionError::WrongIssuer.oauth_error(), "invalid_client");
        assert_eq!(AssertionError::Expired.oauth_error(), "invalid_grant");
    }

    #[test]
    fn a_tampered_or_foreign_token_does_not_verify() {
        let token = sign(claims(NOW + 60));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = sign(serde_json::json!({"iss": "key", "sub": "admin", "aud": "x", "exp": NOW + 60}));
        let forged_claims = forged.split('.').nth(1).unwrap().to_owned();
        parts[1] = &forged_claims;
        assert!(matches!(verify(&parts.join(".")), Err(AssertionError::Invalid(_))));
        assert!(matches!(verify("not a jwt"), Err(AssertionError::Invalid(_))));
        let hs256 =
            jsonwebtoken::encode(&Header::default(), &claims(NOW + 60), &EncodingKey::from_secret(b"s")).unwrap();
        assert!(matches!(verify(&hs256), Err(AssertionError::Invalid(_))));
    }
}

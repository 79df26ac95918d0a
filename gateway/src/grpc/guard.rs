//! Who may call the API: bearer tokens from the configuration, each with scopes, and a rate limit
//! per client. Tokens are compared in constant time and never logged.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Request, Status};

use crate::config::GrpcConfig;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Reading lines, calls and events.
    Read,
    /// Driving calls and agents.
    Control,
    /// Administering the gateway (Salesforce settings, dead letters).
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Self::Read => "calls:read",
            Self::Control => "calls:control",
            Self::Admin => "admin",
        }
    }
}

struct Client {
    name: String,
    token: Vec<u8>,
    scopes: Vec<String>,
}

/// Checks every request's token, scope and rate.
pub(crate) struct Guard {
    clients: Vec<Client>,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.clients.iter().map(|client| client.name.as_str()).collect();
        f.debug_struct("Guard").field("clients", &names).finish_non_exhaustive()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

impl Guard {
    pub(crate) fn new(config: &GrpcConfig) -> Self {
        let clients = config
            .tokens
            .iter()
            .map(|token| Client {
                name: token.name.clone(),
                token: token.token.expose().as_bytes().to_vec(),
                scopes: token.scopes.clone(),
            })
            .collect();
        let per_second = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        Self { clients, limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)) }
    }

    /// Lets the request through, or says why not: UNAUTHENTICATED without a known token,
    /// PERMISSION_DENIED without the scope, RESOURCE_EXHAUSTED over the rate limit.
    pub(crate) fn admit<T>(&self, request: &Request<T>, scope: Scope) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: send \"authorization: Bearer <token>\""))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("the authorization header must be \"Bearer <token>\""))?;
        let client = self
            .clients
            .iter()
            .find(|client| constant_time_eq(&client.token, token.trim().as_bytes()))
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        let allowed = client.scopes.iter().any(|held| held == "admin" || held == scope.name())
            || (scope == Scope::Read && client.scopes.iter().any(|held| held == "calls:control"));
        if !allowed {
            return Err(Status::permission_denied(format!(
                "client {:?} lacks the scope {} this request needs",
                client.name,
                scope.name()
            )));
        }
        if self.limiter.check_key(&client.name).is_err() {
            return Err(Status::resource_exhausted(format!(
                "client {:?} is over its rate limit; slow down and retry",
                client.name
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::config::{Secret, TokenConfig};

    fn guard(rate: u32) -> Guard {
        Guard::new(&GrpcConfig {
            tokens: vec![
                TokenConfig {
                    name: "wallboard".into(),
                    token: Secret::new("read-only-token-0123"),
                    scopes: vec!["calls:read".into()],
                },
                TokenConfig {
                    name: "desktop".into(),
                    token: Secret::new("desktop-token-0123456"),
                    scopes: vec!["calls:control".into()],
                },
            ],
            rate_limit_per_sec: rate,
            rate_limit_burst: rate,
            ..GrpcConfig::default()
        })
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn tokens_and_scopes_decide() {
        let guard = guard(1000);
        let code = |auth, scope| guard.admit(&request(auth), scope).err().map(|status| status.code());
        assert_eq!(code(None, Scope::Read), Some(Code::Unauthenticated));
        assert_eq!(code(Some("Basic abc"), Scope::Read), Some(Code::Unauthenticated));
        assert_eq!(code(Some("Bearer nope-nope-nope-nope"), Scope::Read), Some(Code::Unauthenticated));
        assert_eq!(code(Some("Bearer read-only-token-0123"), Scope::Read), None);
        assert_eq!(code(Some("Bearer read-only-token-0123"), Scope::Control), Some(Code::PermissionDenied));
        assert_eq!(code(Some("Bearer desktop-token-0123456"), Scope::Control), None);
        assert_eq!(code(Some("Bearer desktop-token-0123456"), Scope::Read), None, "control implies read");
    }

    #[test]
    fn a_client_over_its_rate_is_told_so() {
        let guard = guard(2);
        let auth = Some("Bearer desktop-token-0123456");
        assert!(guard.admit(&request(auth), Scope::Read).is_ok());
        assert!(guard.admit(&request(auth), Scope::Read).is_ok());
        let refused = guard.admit(&request(auth), Scope::Read).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(!refused.message().contains("0123456"), "the token is never echoed");
        // Another client has its own allowance.
        assert!(guard.admit(&request(Some("Bearer read-only-token-0123")), Scope::Read).is_ok());
    }
}

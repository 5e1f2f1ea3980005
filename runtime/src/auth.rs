//! Authentication and authorization of calls.
//!
//! An [`Authenticator`] looks at a call's metadata and connection and either returns the
//! [`Principal`] it acts for or refuses it, at once or after awaiting I/O ([`AuthDecision`]).
//! Two are built in: [`MtlsAllowList`] (the verified client certificate's SPIFFE ID must match a
//! pattern, or its DNS name be listed) and [`BearerTokens`] (`authorization: Bearer <token>`
//! must be one of a configured set). The principal reaches handlers in the request extensions.
//!
//! Independently of the authenticator, `GRPC_ALLOWED_PEERS` restricts which mutual-TLS peers may
//! call at all (see [`crate::layers`], layer 4).
//!
//! Refusals follow the gRPC status semantics: no or invalid credentials are `UNAUTHENTICATED`,
//! valid credentials without the right are `PERMISSION_DENIED`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::tls::PeerIdentity;

/// Who a call acts for, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity: a SPIFFE ID, a DNS name or a token's configured subject.
    pub subject: String,
    /// How it was established.
    pub method: AuthMethod,
}

/// How a [`Principal`] was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A verified client certificate.
    Mtls,
    /// A bearer token.
    BearerToken,
    /// A custom [`Authenticator`].
    Custom,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing or invalid credentials → `UNAUTHENTICATED`.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated but not allowed → `PERMISSION_DENIED`.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            AuthError::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// What an authenticator sees of a call.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The request path, `/package.Service/Method`.
    pub path: &'a str,
    /// Request metadata (HTTP/2 headers).
    pub metadata: &'a http::HeaderMap,
    /// The verified client certificate identity, with mutual TLS.
    pub peer: Option<&'a PeerIdentity>,
}

/// An authenticator's verdict: ready now, or after awaiting I/O.
pub enum AuthDecision {
    /// Decided without waiting (the cheap, common case: no allocation).
    Ready(Result<Principal, AuthError>),
    /// Decided by a future, e.g. one that fetches a JWKS or asks a token introspection endpoint.
    /// It must own what it needs from the request (copy the token out first).
    Pending(Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send>>),
}

impl AuthDecision {
    /// A verdict decided by `future`.
    pub fn pending(future: impl Future<Output = Result<Principal, AuthError>> + Send + 'static) -> Self {
        AuthDecision::Pending(Box::pin(future))
    }
}

impl From<Result<Principal, AuthError>> for AuthDecision {
    fn from(verdict: Result<Principal, AuthError>) -> Self {
        AuthDecision::Ready(verdict)
    }
}

impl std::fmt::Debug for AuthDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthDecision::Ready(verdict) => f.debug_tuple("Ready").field(verdict).finish(),
            AuthDecision::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Decides whether a call may proceed; runs on every call that is not exempt, after the peer
/// allow-list. Return [`AuthDecision::Ready`] (or `result.into()`) when no I/O is needed.
pub trait Authenticator: Send + Sync + 'static {
    /// The principal the call acts for, or why it is refused.
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision;
}

/// Allows callers whose verified client certificate carries a SPIFFE ID matching a pattern
/// (`spiffe://cluster.local/ns/shop/sa/*`, the grammar of `GRPC_ALLOWED_PEERS`) or a listed DNS
/// name (DNS SAN). Needs `TLS_MODE=mutual`, which guarantees the certificate chains to the CA.
#[derive(Debug, Clone, Default)]
pub struct MtlsAllowList {
    spiffe_patterns: Vec<String>,
    dns_names: HashSet<String>,
}

impl MtlsAllowList {
    /// An empty list (refuses everyone until entries are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows a SPIFFE ID or pattern, e.g. `spiffe://cluster.local/ns/prod/sa/orders` or
    /// `spiffe://cluster.local/ns/prod/sa/*`. An invalid pattern is refused with the reason.
    pub fn allow_spiffe_id(mut self, pattern: impl Into<String>) -> Result<Self, crate::ConfigError> {
        let pattern = pattern.into();
        crate::config::AllowedPeers::parse(&pattern)?;
        self.spiffe_patterns.push(pattern);
        Ok(self)
    }

    /// Allows a DNS SAN, e.g. `orders.prod.svc`. Compared case-insensitively.
    pub fn allow_dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.insert(name.into().to_ascii_lowercase());
        self
    }
}

impl MtlsAllowList {
    fn check(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let Some(peer) = request.peer else {
            return Err(AuthError::Unauthenticated("a client certificate is required".into()));
        };
        if let Some(id) = peer.spiffe_id()
            && self.spiffe_patterns.iter().any(|p| grpc_contract::spiffe::pattern_matches(p, id))
        {
            return Ok(Principal { subject: id.to_string(), method: AuthMethod::Mtls });
        }
        if let Some(name) = peer.dns_names().iter().find(|n| self.dns_names.contains(&n.to_ascii_lowercase()))
        {
            return Ok(Principal { subject: name.clone(), method: AuthMethod::Mtls });
        }
        Err(AuthError::PermissionDenied("the client certificate identity is not allowed".into()))
    }
}

impl Authenticator for MtlsAllowList {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        self.check(request).into()
    }
}

/// Allows calls presenting `authorization: Bearer <token>` for a configured token. Tokens are
/// kept only as SHA-256 digests, so a heap dump or a `Debug` print reveals none.
#[derive(Clone, Default)]
pub struct BearerTokens {
    by_digest: HashMap<[u8; 32], Arc<TokenGrant>>,
}

#[derive(Debug)]
struct TokenGrant {
    subject: String,
    /// Service names (`package.Service`) this token may call; empty means all.
    services: HashSet<String>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokens").field("tokens", &self.by_digest.len()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl BearerTokens {
    /// An empty set (refuses everyone until tokens are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` for calls to any service, acting as `subject`.
    pub fn allow(mut self, token: &str, subject: impl Into<String>) -> Self {
        let grant = TokenGrant { subject: subject.into(), services: HashSet::new() };
        self.by_digest.insert(digest(token), Arc::new(grant));
        self
    }

    /// Accepts `token` acting as `subject` only for the listed services (`package.Service`);
    /// other services answer `PERMISSION_DENIED`.
    pub fn allow_services<I, S>(mut self, token: &str, subject: impl Into<String>, services: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let grant =
            TokenGrant { subject: subject.into(), services: services.into_iter().map(Into::into).collect() };
        self.by_digest.insert(digest(token), Arc::new(grant));
        self
    }
}

/// The service part of `/package.Service/Method`.
fn service_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

impl Authenticator for BearerTokens {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        self.check(request).into()
    }
}

impl BearerTokens {
    fn check(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let Some(value) = request.metadata.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::Unauthenticated("missing authorization metadata".into()));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Unauthenticated("authorization is not a bearer token".into()))?;
        let Some(grant) = self.by_digest.get(&digest(token)) else {
            return Err(AuthError::Unauthenticated("invalid bearer token".into()));
        };
        if !grant.services.is_empty() && !grant.services.contains(service_of(request.path)) {
            return Err(AuthError::PermissionDenied(format!(
                "{} may not call {}",
                grant.subject,
                service_of(request.path)
            )));
        }
        Ok(Principal { subject: grant.subject.clone(), method: AuthMethod::BearerToken })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        path: &'a str,
        metadata: &'a http::HeaderMap,
        peer: Option<&'a PeerIdentity>,
    ) -> AuthRequest<'a> {
        AuthRequest { path, metadata, peer }
    }

    #[test]
    fn mtls_allow_list_accepts_listed_spiffe_ids_and_dns_names_only() {
        let list = MtlsAllowList::new()
            .allow_spiffe_id("spiffe://td/ns/a/sa/orders")
            .unwrap()
            .allow_spiffe_id("spiffe://td/ns/*/sa/billing")
            .unwrap()
            .allow_dns_name("Billing.svc");
        assert!(MtlsAllowList::new().allow_spiffe_id("spiffe://td/ns/a*").is_err());
        let headers = http::HeaderMap::new();
        let orders = PeerIdentity::for_tests(Some("spiffe://td/ns/a/sa/orders"), &[], "CN=orders");
        let billing = PeerIdentity::for_tests(None, &["billing.svc"], "");
        let other = PeerIdentity::for_tests(Some("spiffe://td/ns/a/sa/evil"), &[], "");
        let pattern = PeerIdentity::for_tests(Some("spiffe://td/ns/b/sa/billing"), &[], "");
        let p = list.check(&request("/a.B/C", &headers, Some(&orders))).unwrap();
        assert_eq!(p, Principal { subject: "spiffe://td/ns/a/sa/orders".into(), method: AuthMethod::Mtls });
        assert_eq!(list.check(&request("/a.B/C", &headers, Some(&billing))).unwrap().subject, "billing.svc");
        assert_eq!(
            list.check(&request("/a.B/C", &headers, Some(&pattern))).unwrap().subject,
            "spiffe://td/ns/b/sa/billing"
        );
        assert!(matches!(
            list.check(&request("/a.B/C", &headers, Some(&other))),
            Err(AuthError::PermissionDenied(_))
        ));
        assert!(matches!(list.check(&request("/a.B/C", &headers, None)), Err(AuthError::Unauthenticated(_))));
    }

    #[test]
    fn bearer_tokens_distinguish_missing_invalid_and_not_allowed() {
        let tokens = BearerTokens::new().allow("s3cret", "ci").allow_services(
            "narrow",
            "bot",
            ["user.v1.UserService"],
        );
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            tokens.check(&request("/a.B/C", &headers, None)),
            Err(AuthError::Unauthenticated(_))
        ));
        headers.insert("authorization", "Bearer wrong".parse().unwrap());
        assert!(matches!(
            tokens.check(&request("/a.B/C", &headers, None)),
            Err(AuthError::Unauthenticated(_))
        ));
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(tokens.check(&request("/a.B/C", &headers, None)).unwrap().subject, "ci");
        headers.insert("authorization", "Bearer narrow".parse().unwrap());
        assert_eq!(
            tokens.check(&request("/user.v1.UserService/GetUser", &headers, None)).unwrap().subject,
            "bot"
        );
        assert!(matches!(
            tokens.check(&request("/admin.v1.Admin/Drop", &headers, None)),
            Err(AuthError::PermissionDenied(_))
        ));
        assert!(!format!("{tokens:?}").contains("s3cret"));
    }
}

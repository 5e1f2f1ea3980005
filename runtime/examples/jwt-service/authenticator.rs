//! A JWT bearer-token [`Authenticator`]: the check an OIDC-protected service needs, on
//! `jsonwebtoken` (9.x, whose signatures run on `ring`, the crypto provider the runtime already
//! uses; later majors offer only aws-lc-rs or a second, pure-Rust stack).
//!
//! - The token comes from `authorization: Bearer <jwt>`; its `kid` names the signing key.
//! - Keys come from the issuer's JWKS URL and are cached. A known `kid` is checked at once,
//!   without I/O ([`AuthDecision::Ready`]); an unknown one makes the authenticator fetch the
//!   JWKS (key rotation), and the call waits for it ([`AuthDecision::Pending`]).
//! - Fetches happen at most once per [`MIN_REFRESH`], however many tokens with unknown keys
//!   arrive, so forged `kid`s cannot turn the service into a JWKS flooder.
//! - `exp`, `nbf`, `aud` and `iss` are validated; the principal is the token's `sub`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use grpc_runtime::{AuthDecision, AuthError, AuthMethod, AuthRequest, Authenticator, Principal};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The shortest interval between two JWKS fetches.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Verifies JWTs against an issuer's JWKS.
#[derive(Clone)]
pub struct JwtAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    jwks_url: http::Uri,
    /// One per accepted algorithm: jsonwebtoken checks every listed algorithm against the key's
    /// family, so each verification names exactly the token's.
    validations: Vec<(Algorithm, Validation)>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the JWKS was last fetched; held while fetching, so concurrent calls wait for one
    /// fetch instead of starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: Client,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl JwtAuthenticator {
    /// Accepts ES256 and RS256 tokens for `audience` from `issuer`, signed by a key of the JWKS
    /// at `jwks_url` (`https://` with the system's CAs, or `http://`).
    pub fn new(jwks_url: http::Uri, issuer: &str, audience: &str) -> Result<Self, String> {
        let validations = [Algorithm::ES256, Algorithm::RS256]
            .into_iter()
            .map(|alg| {
                let mut validation = Validation::new(alg);
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (alg, validation)
            })
            .collect();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS for the JWKS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
        Ok(JwtAuthenticator {
            inner: Arc::new(Inner {
                jwks_url,
                validations,
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
                client,
            }),
        })
    }
}

fn unauthenticated(reason: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(reason.into())
}

impl Inner {
    fn verify(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Principal, AuthError> {
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(unauthenticated(format!("tokens signed with {alg:?} are not accepted")));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        Ok(Principal { subject: data.claims.sub, method: AuthMethod::Custom })
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(kid).cloned()
    }

    /// Fetches the JWKS unless it was fetched less than [`MIN_REFRESH`] ago.
    async fn refresh(&self) -> Result<(), AuthError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let fetch = async {
            use http_body_util::BodyExt;
            let response = self.client.get(self.jwks_url.clone()).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("JWKS answered {}", response.status()));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice::<JwkSet>(&body).map_err(|e| format!("not a JWKS: {e}"))
        };
        let set = match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(Ok(set)) => set,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, url = %self.jwks_url, "fetching the JWKS failed");
                return Err(AuthError::Unauthenticated("the signing keys are unavailable".into()));
            }
            Err(_) => {
                tracing::warn!(url = %self.jwks_url, "fetching the JWKS timed out");
                return Err(AuthError::Unauthenticated("the signing keys are unavailable".into()));
            }
        };
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect();
        tracing::info!(keys = keys.len(), url = %self.jwks_url, "fetched the JWKS");
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        let token = request
            .metadata
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(unauthenticated("a bearer token is required")).into();
        };
        let (kid, alg) = match jsonwebtoken::decode_header(token) {
            Ok(header) => (header.kid, header.alg),
            Err(e) => return Err(unauthenticated(format!("invalid token: {e}"))).into(),
        };
        let Some(kid) = kid else {
            return Err(unauthenticated("the token names no key (kid)")).into();
        };
        if let Some(key) = self.inner.cached(&kid) {
            return self.inner.verify(token, alg, &key).into();
        }
        // An unknown key: the issuer may have rotated. The future owns what it needs.
        let inner = self.inner.clone();
        let token = token.to_string();
        AuthDecision::pending(async move {
            inner.refresh().await?;
            match inner.cached(&kid) {
                Some(key) => inner.verify(&token, alg, &key),
                None => Err(unauthenticated("the token is signed by an unknown key")),
            }
        })
    }
}

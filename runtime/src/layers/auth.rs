//! Layer 4: authentication and authorization, in two steps:
//!
//! 1. **Peer allow-list** (`GRPC_ALLOWED_PEERS`, mutual TLS): the verified client certificate's
//!    SPIFFE ID must match a pattern, else `PERMISSION_DENIED` (no certificate:
//!    `UNAUTHENTICATED`). The [`Principal`] is the SPIFFE ID.
//! 2. **Authenticator** ([`Authenticator`]): its verdict may be immediate or asynchronous (a
//!    JWT check that fetches keys); its [`Principal`] replaces the allow-list's.
//!
//! A refusal short-circuits before deadline timers or concurrency permits are spent. Services
//! listed as exempt (by default the health service, which probes and load balancers call without
//! credentials) skip both steps; they have their own concurrency budget so they cannot be used
//! to starve the others.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::context::RequestContext;
use super::{InnerBody, MaybeBody, Reject};
use crate::auth::{AuthDecision, AuthError, AuthMethod, AuthRequest, Authenticator, Principal};
use crate::config::AllowedPeers;

/// Layer for [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    allowed_peers: Option<Arc<AllowedPeers>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    exempt_services: Arc<HashSet<String>>,
}

impl AuthLayer {
    pub(crate) fn new(
        allowed_peers: Option<AllowedPeers>,
        authenticator: Option<Arc<dyn Authenticator>>,
        exempt_services: HashSet<String>,
    ) -> Self {
        AuthLayer {
            allowed_peers: allowed_peers.map(Arc::new),
            authenticator,
            exempt_services: Arc::new(exempt_services),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            allowed_peers: self.allowed_peers.clone(),
            authenticator: self.authenticator.clone(),
            exempt_services: self.exempt_services.clone(),
        }
    }
}

/// Authenticates and authorizes calls.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    allowed_peers: Option<Arc<AllowedPeers>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    exempt_services: Arc<HashSet<String>>,
}

/// The allow-list's verdict on a call's peer.
fn check_peer(allowed: &AllowedPeers, context: Option<&RequestContext>) -> Result<Principal, AuthError> {
    let Some(identity) = context.and_then(|c| c.peer()).and_then(|p| p.identity.as_deref()) else {
        return Err(AuthError::Unauthenticated("a client certificate is required".into()));
    };
    match identity.spiffe_id() {
        Some(id) if allowed.allows(id) => Ok(Principal { subject: id.to_string(), method: AuthMethod::Mtls }),
        Some(id) => Err(AuthError::PermissionDenied(format!("peer {id} is not allowed to call this server"))),
        None => Err(AuthError::PermissionDenied("the client certificate carries no SPIFFE ID".into())),
    }
}

/// Longest an asynchronous authenticator may take before the call is answered `UNAVAILABLE`
/// (retryable: the authenticator's backend is slow or down).
pub const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Waiting<B, E> = Pin<Box<dyn Future<Output = Result<http::Response<MaybeBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`Auth`]: refused, running the inner service, or waiting for an
    /// asynchronous authenticator (boxed: only I/O-bound authenticators take this path).
    // pin_project_lite cannot carry doc comments on enum variant fields.
    #[allow(missing_docs)]
    #[project = AuthProj]
    pub enum AuthFuture<F, B, E> {
        /// Refused.
        Reject { #[pin] future: Reject<MaybeBody<B>, E> },
        /// Running the inner service.
        Inner { #[pin] future: InnerBody<F> },
        /// Waiting for the authenticator, then running the inner service.
        Waiting { future: Waiting<B, E> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MaybeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthProj::Reject { future } => future.poll(cx),
            AuthProj::Inner { future } => future.poll(cx),
            AuthProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Auth<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<MaybeBody<ResBody>>;
    type Error = Infallible;
    type Future = AuthFuture<S::Future, ResBody, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let pass = |inner: &mut S, req| AuthFuture::Inner { future: InnerBody::new(inner.call(req)) };
        let refuse = |err: AuthError| {
            tracing::debug!(error = %err, "call refused");
            AuthFuture::Reject { future: Reject::new(err.into()) }
        };
        if self.allowed_peers.is_none() && self.authenticator.is_none() {
            return pass(&mut self.inner, req);
        }
        let context = req.extensions().get::<RequestContext>();
        if context.is_some_and(|c| self.exempt_services.contains(&c.method().service)) {
            return pass(&mut self.inner, req);
        }
        let mut principal = None;
        if let Some(allowed) = &self.allowed_peers {
            match check_peer(allowed, context) {
                Ok(p) => principal = Some(p),
                Err(err) => return refuse(err),
            }
        }
        let decision = match &self.authenticator {
            None => AuthDecision::Ready(
                principal.ok_or_else(|| AuthError::Unauthenticated("no credentials were checked".into())),
            ),
            Some(authenticator) => {
                let peer = context.and_then(|c| c.peer()).and_then(|p| p.identity.as_deref());
                authenticator.authenticate(&AuthRequest {
                    path: req.uri().path(),
                    metadata: req.headers(),
                    peer,
                })
            }
        };
        match decision {
            AuthDecision::Ready(Ok(principal)) => {
                req.extensions_mut().insert::<Principal>(principal);
                pass(&mut self.inner, req)
            }
            AuthDecision::Ready(Err(err)) => refuse(err),
            AuthDecision::Pending(verdict) => {
                // The ready service goes with the call; this one is replaced by a clone (tower's
                // rule for services that move into a future).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                // The verdict runs above the deadline layer, so it is bounded here: by the
                // call's own deadline when it sent one, and never longer than AUTH_TIMEOUT.
                let limit = req
                    .headers()
                    .get(&crate::codes::GRPC_TIMEOUT)
                    .and_then(|v| super::deadline::parse_grpc_timeout(v.as_bytes()))
                    .map_or(AUTH_TIMEOUT, |t| t.min(AUTH_TIMEOUT));
                AuthFuture::Waiting {
                    future: Box::pin(async move {
                        let verdict = match tokio::time::timeout(limit, verdict).await {
                            Ok(verdict) => verdict,
                            Err(_) => {
                                tracing::warn!(timeout = ?limit, "the authenticator did not decide in time");
                                return Ok(crate::codes::error_response(tonic::Status::unavailable(
                                    "authentication did not complete in time",
                                )));
                            }
                        };
                        match verdict {
                            Ok(principal) => {
                                req.extensions_mut().insert::<Principal>(principal);
                                inner.call(req).await.map(super::inner_body)
                            }
                            Err(err) => {
                                tracing::debug!(error = %err, "call refused");
                                Ok(crate::codes::error_response(err.into()))
                            }
                        }
                    }),
                }
            }
        }
    }
}

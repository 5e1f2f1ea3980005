//! Layer 6: authentication. Runs the configured [`crate::auth::Authenticator`];
//! a refusal short-circuits with `UNAUTHENTICATED` or `PERMISSION_DENIED` before deadline timers
//! or concurrency permits are spent. The [`Principal`] is added to the request extensions.
//! Services listed as exempt (by default the health service, which probes and load balancers
//! call without credentials) skip authentication.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;

use super::MaybeBody;
use super::context::RequestContext;
use crate::auth::{AuthRequest, Authenticator, Principal};

/// Layer for [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Option<Arc<dyn Authenticator>>,
    exempt_services: Arc<HashSet<String>>,
}

impl AuthLayer {
    pub(crate) fn new(
        authenticator: Option<Arc<dyn Authenticator>>,
        exempt_services: HashSet<String>,
    ) -> Self {
        AuthLayer { authenticator, exempt_services: Arc::new(exempt_services) }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
            exempt_services: self.exempt_services.clone(),
        }
    }
}

/// Authenticates calls.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Option<Arc<dyn Authenticator>>,
    exempt_services: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Auth<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MaybeBody<ResBody>>;
    type Error = S::Error;
    type Future = Either<super::Reject<MaybeBody<ResBody>, S::Error>, super::InnerBody<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let Some(authenticator) = &self.authenticator else {
            return Either::Right(super::InnerBody::new(self.inner.call(req)));
        };
        let context = req.extensions().get::<RequestContext>();
        if context.is_some_and(|c| self.exempt_services.contains(&c.method().service)) {
            return Either::Right(super::InnerBody::new(self.inner.call(req)));
        }
        let peer = context.and_then(|c| c.peer()).and_then(|p| p.identity.as_deref());
        let verdict = authenticator.authenticate(&AuthRequest {
            path: req.uri().path(),
            metadata: req.headers(),
            peer,
        });
        match verdict {
            Ok(principal) => {
                req.extensions_mut().insert::<Principal>(principal);
                Either::Right(super::InnerBody::new(self.inner.call(req)))
            }
            Err(err) => {
                tracing::debug!(error = %err, "call refused by authentication");
                Either::Left(super::Reject::new(err.into()))
            }
        }
    }
}

//! Layer 8: your layers ([`Server::layer`](crate::Server::layer)), between the limits and the
//! handler. They run for every call that got this far: authenticated, within its deadline,
//! holding a concurrency permit. Without any, the router is called directly at no cost.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::Either;
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

/// The service your layers wrap, and what they must return: requests and responses with tonic's
/// body, and no error (answer failures as gRPC statuses, e.g. `tonic::Status::into_http`).
pub type HandlerService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// A layer added with [`Server::layer`](crate::Server::layer), type-erased.
pub(crate) type BoxedLayer = Box<dyn FnOnce(HandlerService) -> HandlerService + Send>;

/// The innermost service: the router, behind your layers when there are any.
#[derive(Clone)]
pub enum Handler {
    /// No user layers: tonic's router.
    Routes(tonic::service::Routes),
    /// The router behind user layers.
    Layered(HandlerService),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Routes(_) => f.write_str("Handler::Routes"),
            Handler::Layered(_) => f.write_str("Handler::Layered"),
        }
    }
}

impl Handler {
    /// The router behind `layers`, the first one outermost.
    pub(crate) fn new(routes: tonic::service::Routes, layers: Vec<BoxedLayer>) -> Self {
        if layers.is_empty() {
            return Handler::Routes(routes);
        }
        let mut service = HandlerService::new(routes);
        for layer in layers.into_iter().rev() {
            service = layer(service);
        }
        Handler::Layered(service)
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<B> tower_service::Service<http::Request<B>> for Handler
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Either<<tonic::service::Routes as tower_service::Service<http::Request<B>>>::Future, BoxedFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Handler::Routes(routes) => tower_service::Service::<http::Request<B>>::poll_ready(routes, cx),
            Handler::Layered(service) => service.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self {
            Handler::Routes(routes) => Either::Left(routes.call(req)),
            Handler::Layered(service) => Either::Right(service.call(req.map(Body::new))),
        }
    }
}

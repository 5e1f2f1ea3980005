//! Layer 5: access log. One line per call when it ends, at a level chosen by the code the way
//! go-grpc-middleware's logging does (client mistakes at `info`, overload and precondition
//! problems at `warn`, server faults at `error`), inside the RPC span so it carries the trace id.

use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;

use super::context::{Id, RequestContext};
use super::{MapResponse, ObservedBody, OnEnd, Outcome};
use crate::codes::code_label;

/// Log target of access log lines, for filtering (`RUST_LOG=grpc_runtime::access=off`).
pub const ACCESS_LOG_TARGET: &str = "grpc_runtime::access";

/// Layer for [`AccessLog`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl<S> tower_layer::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

/// Logs one line per call.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

/// The log level for a final code (go-grpc-middleware's `DefaultServerCodeToLevel`).
pub fn level_for(code: Code) -> tracing::Level {
    match code {
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unauthenticated => tracing::Level::INFO,
        Code::DeadlineExceeded
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable => tracing::Level::WARN,
        Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => tracing::Level::ERROR,
    }
}

/// Completion callback writing the line.
pub struct LogEnd {
    context: Option<RequestContext>,
    start: Instant,
    span: tracing::Span,
}

macro_rules! access_line {
    ($level:expr, $($fields:tt)*) => {
        match $level {
            tracing::Level::ERROR => tracing::error!(target: ACCESS_LOG_TARGET, $($fields)*),
            tracing::Level::WARN => tracing::warn!(target: ACCESS_LOG_TARGET, $($fields)*),
            _ => tracing::info!(target: ACCESS_LOG_TARGET, $($fields)*),
        }
    };
}

impl OnEnd for LogEnd {
    fn on_end(self, outcome: Outcome) {
        let _entered = self.span.enter();
        // Whole microseconds: integers format far faster than floats, on every call.
        let duration_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let level = level_for(outcome.code);
        let Some(ctx) = self.context else {
            access_line!(level, grpc_code = code_label(outcome.code), duration_us, "finished call");
            return;
        };
        let tenant = ctx.tenant_id().map(Id::as_str).unwrap_or("");
        let peer = ctx.peer_address().unwrap_or("");
        access_line!(
            level,
            grpc_service = ctx.method().service.as_str(),
            grpc_method = ctx.method().method.as_str(),
            grpc_type = ctx.method().kind.as_str(),
            grpc_code = code_label(outcome.code),
            duration_us,
            tenant_id = tenant,
            peer_address = peer,
            "finished call"
        );
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AccessLog<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody, LogEnd>>;
    type Error = S::Error;
    type Future = MapResponse<S::Future, LogEnd>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let context = req.extensions().get::<RequestContext>().cloned();
        let end = LogEnd { context, start: Instant::now(), span: tracing::Span::current() };
        MapResponse::new(self.inner.call(req), end)
    }
}

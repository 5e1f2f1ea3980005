//! The access log's target and levels. The observe layer writes one line per
//! call when it ends, at a level chosen by the code the way go-grpc-middleware's logging does
//! (client mistakes at `info`, overload and precondition problems at `warn`, server faults at
//! `error`), inside the RPC span so it carries the trace id.

use tonic::Code;

/// Log target of access log lines, for filtering (`RUST_LOG=grpc_runtime::access=off`).
pub const ACCESS_LOG_TARGET: &str = "grpc_runtime::access";

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

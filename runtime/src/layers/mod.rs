//! The interceptor chain: tower layers around every RPC, outermost first.
//!
//! | # | layer | why here |
//! |---|---|---|
//! | 1 | [`context`] | resolves the method once and attaches request id, tenant, peer identity and the connection's stream budget for everything below; outside recovery so even a panic's `INTERNAL` answer echoes `x-request-id` (it runs no user code) |
//! | 2 | `observe` | the RPC span, the metrics and the access line, from one response observer: the span encloses everything below so every log line carries the trace id, and every call is counted, including those auth, deadline or limits reject |
//! | 3 | `recovery` | a panic anywhere below (handler, stream, other layer) becomes `INTERNAL` before the observer sees it, so metrics, logs and the span all say `Internal` |
//! | 4 | `auth` | the peer allow-list and the [`Authenticator`](crate::Authenticator) reject before any resources (deadline timers, concurrency permits) are spent |
//! | 5 | [`deadline`] | bounds everything below, your layers and the handler included |
//! | 6 | `limit` | concurrency budgets (unary, streaming and health apart) and message size limits |
//! | 7 | `compression` | gzip in both directions for every service, as grpc-go and grpcio use it; below the limits, which therefore check the sizes on the wire, while inflating is bounded by the decoding limit itself |
//! | 8 | your layers | [`Server::layer`](crate::Server::layer): they see the [`Principal`](crate::Principal), the [`Deadline`](deadline::Deadline) and the [`RequestContext`](context::RequestContext), and count as part of the handler |
//!
//! Every layer is generic over request and response bodies and wraps them without boxing (tonic's
//! router boxes once when it hands the request to the service).

// Public: what handlers and log filters name. The layers themselves are internal: the chain
// is assembled by `Server::bind`, in the documented order.
pub mod access_log;
pub(crate) mod auth;
pub(crate) mod compression;
pub mod context;
pub mod deadline;
pub(crate) mod limit;
pub(crate) mod metrics;
pub(crate) mod observe;
pub(crate) mod recovery;
pub mod trace;
pub(crate) mod user;

mod body;
pub(crate) use body::{InnerBody, MaybeBody, Reject, inner_body};

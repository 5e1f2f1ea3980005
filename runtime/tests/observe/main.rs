//! The call's span, metrics and access line under a panic, observed through a `tracing`
//! subscriber set for this test's thread. A binary of its own: `tracing` caches each callsite's
//! interest process-wide, and in the shared test binary a concurrent test could leave the RPC
//! span's callsite cached as disabled while this one runs.

// Test support code (outside #[test] functions) may panic: a broken precondition must fail loudly.
#![allow(clippy::panic)]

#[path = "../runtime/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../examples/user-service/service.rs"]
#[allow(dead_code)]
mod service;

mod observe;

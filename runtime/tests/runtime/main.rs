//! Integration tests of grpc-runtime against real peers: grpcurl, buf curl, connect-web (Node),
//! grpcio (Python), a real Prometheus, an OTLP receiver. One binary, so the crate links once.
//!
//! A test that needs an external tool fails when the tool is missing and `CI` is set; without
//! `CI` it prints `SKIPPED` with the reason. `scripts/install-tools.sh` installs every tool.

// Test support code (outside #[test] functions) may panic: a broken precondition must fail loudly.
#![allow(clippy::panic)]

mod harness;
#[path = "../../examples/user-service/service.rs"]
#[allow(dead_code)]
mod service;

#[path = "../../examples/h2-abuse/attacks.rs"]
mod h2_attacks;
#[path = "../../examples/jwt-service/authenticator.rs"]
mod jwt_authenticator;

mod chain;
mod compression;
mod grpc_web;
mod grpcurl;
mod h2_abuse;
mod hardening;
mod jwt;
mod limits;
mod metrics_scrape;
mod mtls;
mod shutdown;
mod tracing_otlp;

//! grpc-operator: reconciles `GrpcService` resources into everything a
//! production gRPC service needs.
//!
//! The reconciler is a pipeline: validate → fetch → desired → apply → status
//! (see [`reconcile`]). Every kind of child is one module in [`children`],
//! whose builder is a pure function of the validated spec, shared by the
//! controller and by the offline `render` command, so a preview is exactly
//! what the controller would apply. The workload contract with the runtime is
//! the `grpc-contract` crate.

pub mod admin;
pub mod api;
pub mod children;
pub mod crd;
pub mod envoy;
pub mod health;
pub mod metrics;
pub mod monitoring;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod run;

//! grpc-operator: reconciles `GrpcService` resources into everything a
//! production gRPC service needs.
//!
//! The reconciler is a pipeline: fetch → validate → desired → apply → status
//! (see [`reconcile`]). Builders in [`reconcile::desired`] are pure functions
//! of the validated spec, shared by the controller and by the offline `render`
//! command, so a preview is exactly what the controller would apply.

pub mod admin;
pub mod api;
pub mod contract;
pub mod crd;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod run;

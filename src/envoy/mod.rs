//! Envoy configuration for the gRPC-Web sidecar: typed `envoy-types` protos,
//! written as proto3 JSON through Envoy's descriptor set.

pub mod bootstrap;
pub mod descriptors;
pub mod json;

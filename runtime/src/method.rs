//! The table of known RPC methods, built once from the registered file descriptor sets.
//!
//! Layers need to know, per call, the service and method names and the streaming kind
//! (`grpc_type` in the metrics). Reading them from descriptors at startup means no per-request
//! parsing beyond one hash lookup, and bounds metric cardinality: a path that names no
//! registered method is reported as service and method `unknown`, whatever a client sends.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::metrics::{MethodMetrics, ServerMetrics};

/// The streaming kind of an RPC, spelled as go-grpc-prometheus's `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcKind {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl RpcKind {
    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcKind::Unary => "unary",
            RpcKind::ClientStream => "client_stream",
            RpcKind::ServerStream => "server_stream",
            RpcKind::BidiStream => "bidi_stream",
        }
    }

    /// Whether the server sends a stream of responses (such calls may legitimately run long).
    pub fn server_streams(self) -> bool {
        matches!(self, RpcKind::ServerStream | RpcKind::BidiStream)
    }
}

/// Which concurrency budget a method's calls draw from (see [`crate::layers`], layer 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Unary calls.
    Unary,
    /// Client-, server- and bidi-streaming calls.
    Streaming,
    /// The health service's unary calls (`Check`).
    Health,
    /// The health service's `Watch` streams.
    HealthWatch,
}

/// One RPC method as the layers see it; shared by every call of that method.
#[derive(Debug)]
pub struct RpcMethod {
    /// Fully-qualified service name, e.g. `user.v1.UserService`.
    pub service: String,
    /// Method name, e.g. `GetUser`.
    pub method: String,
    /// `package.Service/Method`, the span name.
    pub full_name: String,
    /// Streaming kind.
    pub kind: RpcKind,
    /// The concurrency budget its calls draw from.
    pub budget: Budget,
    /// Pre-created metric children for this method.
    pub(crate) metrics: MethodMetrics,
}

/// Lookup from HTTP/2 `:path` (`/package.Service/Method`) to the method.
#[derive(Debug)]
pub(crate) struct MethodTable {
    by_path: HashMap<String, Arc<RpcMethod>>,
    unknown: Arc<RpcMethod>,
}

/// An error decoding a registered file descriptor set.
#[derive(Debug, thiserror::Error)]
#[error("file descriptor set #{index} is not a valid encoded google.protobuf.FileDescriptorSet: {source}")]
pub struct DescriptorError {
    index: usize,
    #[source]
    source: prost::DecodeError,
}

impl MethodTable {
    /// Builds the table from encoded `FileDescriptorSet`s, pre-creating every method's metrics.
    pub(crate) fn build(sets: &[&[u8]], metrics: &ServerMetrics) -> Result<Self, DescriptorError> {
        let mut by_path = HashMap::new();
        for (index, bytes) in sets.iter().enumerate() {
            let set = prost_types::FileDescriptorSet::decode(*bytes)
                .map_err(|source| DescriptorError { index, source })?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => RpcKind::Unary,
                            (true, false) => RpcKind::ClientStream,
                            (false, true) => RpcKind::ServerStream,
                            (true, true) => RpcKind::BidiStream,
                        };
                        let path = format!("/{service_name}/{}", method.name());
                        let health = service_name == crate::server::HEALTH_SERVICE;
                        let budget = match (health, kind) {
                            (true, RpcKind::Unary) => Budget::Health,
                            (true, _) => Budget::HealthWatch,
                            (false, RpcKind::Unary) => Budget::Unary,
                            (false, _) => Budget::Streaming,
                        };
                        by_path.entry(path).or_insert_with(|| {
                            Arc::new(RpcMethod {
                                budget,
                                metrics: metrics.method(kind, &service_name, method.name()),
                                service: service_name.clone(),
                                method: method.name().to_string(),
                                full_name: format!("{service_name}/{}", method.name()),
                                kind,
                            })
                        });
                    }
                }
            }
        }
        let unknown = Arc::new(RpcMethod {
            metrics: metrics.method(RpcKind::Unary, "unknown", "unknown"),
            service: "unknown".into(),
            method: "unknown".into(),
            full_name: "unknown".into(),
            kind: RpcKind::Unary,
            budget: Budget::Unary,
        });
        Ok(MethodTable { by_path, unknown })
    }

    /// The method for a request path; `unknown` for anything not registered.
    pub(crate) fn lookup(&self, path: &str) -> Arc<RpcMethod> {
        self.by_path.get(path).unwrap_or(&self.unknown).clone()
    }

    /// The method unregistered paths resolve to.
    pub(crate) fn unknown(&self) -> Arc<RpcMethod> {
        self.unknown.clone()
    }

    /// Whether the descriptors define `service` (`package.Service`).
    pub(crate) fn has_service(&self, service: &str) -> bool {
        self.by_path.values().any(|m| m.service == service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_get_their_streaming_kind_from_the_descriptors() {
        let metrics = ServerMetrics::new(&prometheus::Registry::new()).unwrap();
        let table = MethodTable::build(&[tonic_health::pb::FILE_DESCRIPTOR_SET], &metrics).unwrap();
        let check = table.lookup("/grpc.health.v1.Health/Check");
        assert_eq!(
            (check.service.as_str(), check.method.as_str(), check.kind),
            ("grpc.health.v1.Health", "Check", RpcKind::Unary)
        );
        assert_eq!(table.lookup("/grpc.health.v1.Health/Watch").kind, RpcKind::ServerStream);
        let unknown = table.lookup("/evil.Service/Random123");
        assert_eq!((unknown.service.as_str(), unknown.method.as_str()), ("unknown", "unknown"));
    }

    #[test]
    fn garbage_descriptor_bytes_are_an_error_naming_the_set() {
        let metrics = ServerMetrics::new(&prometheus::Registry::new()).unwrap();
        let err =
            MethodTable::build(&[tonic_health::pb::FILE_DESCRIPTOR_SET, b"\xff\xff"], &metrics).unwrap_err();
        assert!(err.to_string().starts_with("file descriptor set #1"), "{err}");
    }
}

//! Envoy's descriptor set, for writing typed Envoy protos as proto3 JSON.
//!
//! `envoy-types` compiles Envoy's protos into prost types but ships no
//! descriptors, and prost types carry no reflection. The descriptor set of the
//! messages the sidecar's configuration uses (and every file they import) is
//! therefore compiled from the `.proto` files that `envoy-types` ships, by
//! protox, and committed as `envoy.binpb`. The test at the bottom recompiles
//! it from the locked `envoy-types` and fails when the committed file is
//! stale; `make envoy-descriptors` rewrites it.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// The committed descriptor set (source info stripped).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("envoy.binpb");

/// The `.proto` files whose messages the configuration uses, directly or
/// inside a `google.protobuf.Any` (`typed_config`, SDS resources): their
/// imports come along. An `Any` whose type is missing here could not be
/// written, so adding a new `typed_config` type means adding its file.
pub const ROOT_FILES: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/grpc_web/v3/grpc_web.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/service/discovery/v3/discovery.proto",
];

/// Include directories under `envoy-types`' `proto/`.
pub const INCLUDE_DIRS: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec",
    "opentelemetry-proto",
    "client_model",
];

/// The pool, decoded once. The committed set is checked by the tests below, so
/// failing to decode it is a build defect, not a runtime condition.
pub static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTOR_SET).expect("the committed Envoy descriptor set decodes")
});

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use prost::Message;

    use super::*;

    /// `envoy-types`' `proto/` directory, from the locked dependency graph.
    fn envoy_types_protos() -> PathBuf {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        let manifest = meta["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "envoy-types"))
            .and_then(|p| p["manifest_path"].as_str())
            .expect("envoy-types is a dependency");
        PathBuf::from(manifest).parent().expect("crate dir").join("proto")
    }

    fn compile() -> Vec<u8> {
        let root = envoy_types_protos();
        let includes: Vec<PathBuf> = INCLUDE_DIRS.iter().map(|d| root.join(d)).collect();
        let mut compiler = protox::Compiler::new(includes).expect("include dirs");
        compiler.include_imports(true).include_source_info(false);
        compiler.open_files(ROOT_FILES).expect("Envoy's protos compile");
        compiler.file_descriptor_set().encode_to_vec()
    }

    #[test]
    fn the_committed_envoy_descriptor_set_is_current() {
        let fresh = compile();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/envoy/envoy.binpb");
        if std::env::var_os("UPDATE_ENVOY_DESCRIPTORS").is_some() {
            std::fs::write(path, &fresh).expect("write envoy.binpb");
            return;
        }
        assert!(
            fresh == DESCRIPTOR_SET,
            "src/envoy/envoy.binpb is stale for the locked envoy-types: run `make envoy-descriptors`"
        );
    }

    #[test]
    fn every_typed_config_of_the_sidecar_resolves_in_the_pool() {
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.cors.v3.Cors",
            "envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "envoy.extensions.transport_sockets.tls.v3.Secret",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "envoy.service.discovery.v3.DiscoveryResponse",
        ] {
            assert!(POOL.get_message_by_name(name).is_some(), "{name} is not in the pool");
        }
    }
}

//! The gRPC-Web sidecar's Envoy configuration: the bootstrap and its SDS
//! files, built from Envoy's typed protos. Pure: the same input gives the same
//! bytes.
//!
//! What it rules out by construction:
//! - the upstream is declared HTTP/2 (`explicit_http_config`), so a gRPC
//!   server never gets HTTP/1.1 and answers a "protocol error" 502;
//! - routes match on a prefix, never `grpc: {}`, which would miss the CORS
//!   preflight (an `OPTIONS` without `content-type: application/grpc`);
//! - the CORS policy sets `forward_not_matching_preflights: false`, so a
//!   preflight from a refused origin is answered by Envoy and never reaches
//!   the workload (Envoy's default forwards it);
//! - the route timeout is 0 and `stream_idle_timeout` is long, so server
//!   streams are not cut at Envoy's 15 s route or 5 min idle defaults;
//!   `grpc-timeout` is honoured, within `maxStreamDuration` when set;
//! - no filter buffers bodies, which would break streaming.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, circuit_breakers, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, ConfigSource, DataSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions, Node, PathConfigSource, SocketAddress,
    SubstitutionFormatString, TransportSocket, WatchedDirectory, address, config_source, data_source,
    http_protocol_options::HeadersWithUnderscoresAction, socket_address, substitution_format_string,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::overload::v3::{OverloadManager, ResourceMonitor, resource_monitor};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{StdoutAccessLog, stdout_access_log};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::grpc_web::v3::GrpcWeb;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions as UpstreamHttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as ProtoDuration, Struct, UInt32Value, Value as ProtoValue, value,
};
use grpc_contract::web::{ALLOW_HEADERS, EXPOSE_HEADERS};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};

use super::descriptors::POOL;

/// ConfigMap key of the bootstrap.
pub const BOOTSTRAP_FILE: &str = "envoy.json";
/// ConfigMap key of the SDS file with the workload's certificate and key
/// (the upstream client certificate).
pub const SDS_WORKLOAD_CERTIFICATE_FILE: &str = "sds-workload-certificate.json";
/// ConfigMap key of the SDS file with the workload CA bundle (validating the
/// upstream server).
pub const SDS_WORKLOAD_CA_FILE: &str = "sds-workload-ca.json";
/// ConfigMap key of the SDS file with the browser-facing certificate.
pub const SDS_BROWSER_CERTIFICATE_FILE: &str = "sds-browser-certificate.json";

/// Cluster of the workload's gRPC port.
pub const WORKLOAD_CLUSTER: &str = "workload";
/// Cluster of Envoy's own admin interface (behind the metrics listener).
pub const ADMIN_CLUSTER: &str = "envoy_admin";
/// The only paths the metrics listener forwards to the admin interface.
pub const METRICS_PATHS: [&str; 2] = ["/stats/prometheus", "/ready"];
/// How long a browser may cache a preflight answer. Chromium caps it at 2 h.
pub const PREFLIGHT_MAX_AGE_SECONDS: u32 = 7200;
/// A stream with no activity for this long is reset. Envoy's default, 5
/// minutes, cuts quiet server streams (a notification feed); the workload's
/// own idle and age limits still apply behind it.
pub const STREAM_IDLE_TIMEOUT_SECONDS: i64 = 3600;
/// Downstream connections Envoy accepts in all (the overload manager's
/// global limit; without one Envoy warns at start-up and accepts without
/// bound).
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 10_000;
/// Requests, pending requests and connections Envoy lets through to the
/// workload at once: as many as downstream connections it accepts.
pub const UPSTREAM_MAX_REQUESTS: u32 = 10_000;
/// Read and write buffer per connection: the HTTP/2 connection window of the
/// runtime's server (1 MiB), so Envoy never holds more of a stream than the
/// workload would.
pub const PER_CONNECTION_BUFFER_LIMIT_BYTES: u32 = 1 << 20;

/// The browser origins a CORS policy allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`allowAnyOrigin: true`).
    Any,
    /// Exact origins and `https://*.example.com` patterns, checked by
    /// [`grpc_contract::web::check_origin_pattern`].
    List(Vec<String>),
}

/// The upstream connection's mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Directory of the mounted workload Secret (`tls.crt`, `tls.key`,
    /// `ca.crt`).
    pub dir: String,
    /// The workload's SPIFFE ID: the server certificate must carry it as a
    /// URI SAN.
    pub server_spiffe_id: String,
}

/// Everything the configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarInput {
    /// `node.id` and `node.cluster` (file-based SDS requires both).
    pub node: String,
    /// Where the ConfigMap is mounted (the SDS files' directory).
    pub config_dir: String,
    /// Bind address of the listeners (`0.0.0.0` in a pod).
    pub listen_address: String,
    /// Browser-facing gRPC-Web port.
    pub web_port: u16,
    /// Port of the listener serving `/stats/prometheus` and `/ready`.
    pub metrics_port: u16,
    /// Envoy's admin port, on 127.0.0.1 only.
    pub admin_port: u16,
    /// The workload's gRPC port, on 127.0.0.1.
    pub upstream_port: u16,
    /// Allowed browser origins.
    pub origins: Origins,
    /// Request headers allowed besides the contract's list.
    pub extra_allow_headers: Vec<String>,
    /// Longest a stream may last, in seconds; 0 is no limit.
    pub max_stream_duration_seconds: i64,
    /// mTLS to the workload, unless its TLS is disabled.
    pub upstream_tls: Option<UpstreamTls>,
    /// Directory of the mounted browser-facing certificate Secret
    /// (`tls.crt`, `tls.key`), to terminate browser TLS at Envoy.
    pub browser_tls_dir: Option<String>,
}

/// A typical pod's input: mutual TLS upstream, an exact and a wildcard
/// origin, the default ports (the tests' and the benchmark's case).
pub fn example_input() -> SidecarInput {
    SidecarInput {
        node: "shop/user-service".to_owned(),
        config_dir: "/etc/envoy".to_owned(),
        listen_address: "0.0.0.0".to_owned(),
        web_port: 8080,
        metrics_port: 9902,
        admin_port: 9901,
        upstream_port: 50051,
        origins: Origins::List(vec![
            "https://app.example.com".to_owned(),
            "https://*.example.org".to_owned(),
        ]),
        extra_allow_headers: Vec::new(),
        max_stream_duration_seconds: 0,
        upstream_tls: Some(UpstreamTls {
            dir: "/var/run/secrets/grpcoperator.io/tls".to_owned(),
            server_spiffe_id: "spiffe://cluster.local/ns/shop/sa/user-service".to_owned(),
        }),
        browser_tls_dir: None,
    }
}

/// The generated files: ConfigMap key → content.
pub type Files = BTreeMap<&'static str, String>;

/// Writing a message as JSON failed: a type missing from the descriptor set,
/// a programming error the tests catch.
#[derive(Debug, thiserror::Error)]
#[error("failed to write the Envoy {message} as JSON: {reason}")]
pub struct EncodeError {
    /// The message's full name.
    pub message: String,
    /// Why.
    pub reason: String,
}

/// How a message becomes JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// From the wire bytes, falling back to the reference ([`to_json`]).
    Fast,
    /// From the wire bytes, failing instead of falling back (tests).
    Strict,
    /// prost-reflect's `DynamicMessage` serializer ([`to_json_reference`]).
    Reference,
}

fn write<M: Message + Name>(message: &M, writer: Writer) -> Result<String, EncodeError> {
    match writer {
        Writer::Fast => to_json(message),
        Writer::Strict => to_json_strict(message),
        Writer::Reference => to_json_reference(message),
    }
}

/// Builds the bootstrap and the SDS files it references.
pub fn build(input: &SidecarInput) -> Result<Files, EncodeError> {
    build_with(input, Writer::Fast)
}

/// [`build`] with a chosen JSON writer.
pub fn build_with(input: &SidecarInput, writer: Writer) -> Result<Files, EncodeError> {
    let to_json = |m: &dyn Fn(Writer) -> Result<String, EncodeError>| m(writer);
    let mut files = Files::new();
    files.insert(BOOTSTRAP_FILE, to_json(&|w| write(&bootstrap(input), w))?);
    if let Some(tls) = &input.upstream_tls {
        let certificate = certificate_secret(WORKLOAD_CERTIFICATE_SECRET, &tls.dir);
        files.insert(SDS_WORKLOAD_CERTIFICATE_FILE, to_json(&|w| write(&sds_file(certificate.clone()), w))?);
        let ca = Secret {
            name: WORKLOAD_CA_SECRET.to_owned(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(file(&tls.dir, grpc_contract::tls::CA_FILE)),
                watched_directory: Some(watched(&tls.dir)),
                ..CertificateValidationContext::default()
            })),
        };
        files.insert(SDS_WORKLOAD_CA_FILE, to_json(&|w| write(&sds_file(ca.clone()), w))?);
    }
    if let Some(dir) = &input.browser_tls_dir {
        let certificate = certificate_secret(BROWSER_CERTIFICATE_SECRET, dir);
        files.insert(SDS_BROWSER_CERTIFICATE_FILE, to_json(&|w| write(&sds_file(certificate.clone()), w))?);
    }
    Ok(files)
}

const WORKLOAD_CERTIFICATE_SECRET: &str = "workload_certificate";
const WORKLOAD_CA_SECRET: &str = "workload_ca";
const BROWSER_CERTIFICATE_SECRET: &str = "browser_certificate";

/// Writes `message` as compact proto3 JSON through the descriptor pool: field
/// names as in Envoy's docs (snake_case), `Any` with its `@type`, defaults
/// left out, one line and a newline (compact is a fifth cheaper to write
/// than indented; `jq` shows it indented).
/// [`super::json`] writes it from the wire bytes; should it meet something
/// it does not handle, prost-reflect's serializer (the reference) does.
pub fn to_json<M: Message + Name>(message: &M) -> Result<String, EncodeError> {
    to_json_strict(message).or_else(|_| to_json_reference(message))
}

/// [`to_json`] without the fallback: the wire walker's result or its error.
fn to_json_strict<M: Message + Name>(message: &M) -> Result<String, EncodeError> {
    let fail = |reason: String| EncodeError { message: M::full_name(), reason };
    let descriptor = POOL
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| fail("not in the descriptor set".to_owned()))?;
    let bytes = message.encode_to_vec();
    write_compact(&super::json::Wire { desc: descriptor, bytes: &bytes }).map_err(|e| fail(e.to_string()))
}

/// [`to_json`] through prost-reflect's `DynamicMessage` serializer: slower,
/// and the reference the fast path is tested against.
pub fn to_json_reference<M: Message + Name>(message: &M) -> Result<String, EncodeError> {
    let fail = |reason: String| EncodeError { message: M::full_name(), reason };
    let descriptor = POOL
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| fail("not in the descriptor set".to_owned()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| fail(e.to_string()))?;
    let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(false);
    let mut out = Vec::with_capacity(16 << 10);
    let mut serializer = serde_json::Serializer::new(&mut out);
    dynamic.serialize_with_options(&mut serializer, &options).map_err(|e| fail(e.to_string()))?;
    out.push(b'\n');
    String::from_utf8(out).map_err(|e| fail(e.to_string()))
}

fn write_compact<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(16 << 10);
    let mut serializer = serde_json::Serializer::new(&mut out);
    value.serialize(&mut serializer)?;
    out.push(b'\n');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).map_err(<serde_json::Error as serde::ser::Error>::custom)
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

fn seconds(s: i64) -> ProtoDuration {
    ProtoDuration { seconds: s, nanos: 0 }
}

fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..SocketAddress::default()
        })),
    }
}

fn watched(dir: &str) -> WatchedDirectory {
    WatchedDirectory { path: dir.to_owned(), ..WatchedDirectory::default() }
}

fn file(dir: &str, name: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(format!("{}/{name}", dir.trim_end_matches('/')))),
        ..DataSource::default()
    }
}

fn bootstrap(input: &SidecarInput) -> Bootstrap {
    let mut clusters = vec![workload_cluster(input), admin_cluster(input)];
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Bootstrap {
        node: Some(Node { id: input.node.clone(), cluster: input.node.clone(), ..Node::default() }),
        static_resources: Some(StaticResources {
            listeners: vec![web_listener(input), metrics_listener(input)],
            clusters,
            ..StaticResources::default()
        }),
        // Probes and scrapes must get through when browsers use every
        // connection the global limit allows.
        admin: Some(Admin {
            address: Some(socket("127.0.0.1", input.admin_port)),
            ignore_global_conn_limit: true,
            ..Admin::default()
        }),
        overload_manager: Some(OverloadManager {
            resource_monitors: vec![ResourceMonitor {
                name: "envoy.resource_monitors.global_downstream_max_connections".to_owned(),
                config_type: Some(resource_monitor::ConfigType::TypedConfig(any(
                    &DownstreamConnectionsConfig {
                        max_active_downstream_connections: MAX_DOWNSTREAM_CONNECTIONS as i64,
                    },
                ))),
            }],
            ..OverloadManager::default()
        }),
        ..Bootstrap::default()
    }
}

/// An SDS source read from `<config_dir>/<file>`; the directory is watched
/// because the kubelet replaces a ConfigMap volume's files by swapping its
/// `..data` link, which a watch on the file alone misses.
fn sds(input: &SidecarInput, name: &str, file_name: &str) -> SdsSecretConfig {
    let dir = input.config_dir.trim_end_matches('/');
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
                PathConfigSource {
                    path: format!("{dir}/{file_name}"),
                    watched_directory: Some(watched(dir)),
                    ..PathConfigSource::default()
                },
            )),
            ..ConfigSource::default()
        }),
    }
}

/// A certificate and key read from a mounted Secret. Watching the Secret's
/// directory makes Envoy re-read both when the kubelet swaps `..data`, so a
/// renewed certificate is served without a restart.
fn certificate_secret(name: &str, dir: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(file(dir, grpc_contract::tls::CERT_FILE)),
            private_key: Some(file(dir, grpc_contract::tls::KEY_FILE)),
            watched_directory: Some(watched(dir)),
            ..TlsCertificate::default()
        })),
    }
}

fn sds_file(secret: Secret) -> DiscoveryResponse {
    DiscoveryResponse { resources: vec![any(&secret)], ..DiscoveryResponse::default() }
}

/// TLS 1.3 only, as the runtime's server. Both bounds: an Envoy client's
/// default maximum is TLS 1.2, which a TLS 1.3 minimum alone turns into "no
/// supported versions".
fn tls13() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..TlsParameters::default()
    }
}

fn web_listener(input: &SidecarInput) -> Listener {
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: "grpc_web".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(web_routes(input))),
        http_filters: vec![
            http_filter("envoy.filters.http.grpc_web", any(&GrpcWeb::default())),
            http_filter("envoy.filters.http.cors", any(&Cors::default())),
            http_filter("envoy.filters.http.router", any(&Router::default())),
        ],
        stream_idle_timeout: Some(seconds(STREAM_IDLE_TIMEOUT_SECONDS)),
        // Slow-header (slowloris) bound, as the runtime's HTTP/1.1 header read timeout.
        request_headers_timeout: Some(seconds(30)),
        max_request_headers_kb: Some(u32_value(grpc_contract::limits::MAX_HEADER_LIST_BYTES / 1024)),
        common_http_protocol_options: Some(CommonHttpProtocolOptions {
            idle_timeout: Some(seconds(3600)),
            headers_with_underscores_action: HeadersWithUnderscoresAction::RejectRequest as i32,
            ..CommonHttpProtocolOptions::default()
        }),
        http_protocol_options: Some(Http1ProtocolOptions::default()),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(u32_value(grpc_contract::limits::MAX_CONCURRENT_STREAMS)),
            initial_stream_window_size: Some(u32_value(64 << 10)),
            initial_connection_window_size: Some(u32_value(PER_CONNECTION_BUFFER_LIMIT_BYTES)),
            ..Http2ProtocolOptions::default()
        }),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        access_log: vec![json_access_log()],
        ..HttpConnectionManager::default()
    };
    let transport_socket = input.browser_tls_dir.as_ref().map(|_| TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_params: Some(TlsParameters {
                    tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                    ..TlsParameters::default()
                }),
                tls_certificate_sds_secret_configs: vec![sds(
                    input,
                    BROWSER_CERTIFICATE_SECRET,
                    SDS_BROWSER_CERTIFICATE_FILE,
                )],
                alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
                ..CommonTlsContext::default()
            }),
            ..DownstreamTlsContext::default()
        }))),
    });
    Listener {
        name: "grpc_web".to_owned(),
        address: Some(socket(&input.listen_address, input.web_port)),
        per_connection_buffer_limit_bytes: Some(u32_value(PER_CONNECTION_BUFFER_LIMIT_BYTES)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(any(&hcm))],
            transport_socket,
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn network_filter(config: Any) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..HttpFilter::default()
    }
}

fn web_routes(input: &SidecarInput) -> RouteConfiguration {
    let route = Route {
        // A prefix, not `grpc: {}`: the preflight is an OPTIONS without a gRPC
        // content type, and must reach the CORS filter through a route.
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..RouteMatch::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(WORKLOAD_CLUSTER.to_owned())),
            // 0 disables the 15 s default that cuts streams.
            timeout: Some(seconds(0)),
            max_stream_duration: Some(route_action::MaxStreamDuration {
                max_stream_duration: (input.max_stream_duration_seconds > 0)
                    .then(|| seconds(input.max_stream_duration_seconds)),
                // The client's `grpc-timeout` applies, capped by the
                // maximum when one is set: a `grpc-timeout` replaces
                // `max_stream_duration`, so an uncapped header (0s) would
                // let any client escape the limit.
                grpc_timeout_header_max: Some(seconds(input.max_stream_duration_seconds.max(0))),
                ..route_action::MaxStreamDuration::default()
            }),
            ..RouteAction::default()
        })),
        ..Route::default()
    };
    let mut per_filter = HashMap::new();
    per_filter.insert(
        "envoy.filters.http.cors".to_owned(),
        any(&cors_policy(&input.origins, &input.extra_allow_headers)),
    );
    RouteConfiguration {
        name: "grpc_web".to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "grpc_web".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![route],
            typed_per_filter_config: per_filter,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// The CORS policy: the contract's header lists (the same as the runtime's
/// native gRPC-Web) plus `extra` allowed request headers, and refused
/// preflights answered by Envoy.
pub fn cors_policy(origins: &Origins, extra: &[String]) -> CorsPolicy {
    let mut allow_headers: Vec<&str> = ALLOW_HEADERS.to_vec();
    for h in extra {
        if !allow_headers.contains(&h.as_str()) {
            allow_headers.push(h);
        }
    }
    let allow_origin_string_match = match origins {
        Origins::Any => vec![StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: ".*".to_owned(),
                ..RegexMatcher::default()
            })),
            ignore_case: false,
        }],
        Origins::List(list) => list.iter().map(|o| origin_matcher(o)).collect(),
    };
    CorsPolicy {
        allow_origin_string_match,
        allow_methods: "POST, GET, OPTIONS".to_owned(),
        allow_headers: allow_headers.join(", "),
        expose_headers: EXPOSE_HEADERS.join(", "),
        max_age: PREFLIGHT_MAX_AGE_SECONDS.to_string(),
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..CorsPolicy::default()
    }
}

/// An exact origin matches case-insensitively; `https://*.example.com` as
/// a regex for exactly one leftmost label, as the runtime matches it.
fn origin_matcher(origin: &str) -> StringMatcher {
    match grpc_contract::web::origin_regex(origin) {
        Some(regex) => StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex,
                ..RegexMatcher::default()
            })),
            ignore_case: false,
        },
        None => StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(origin.to_owned())),
            ignore_case: true,
        },
    }
}

fn json_access_log() -> AccessLog {
    let fields = [
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(:PATH)%"),
        ("protocol", "%PROTOCOL%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("grpc_status", "%GRPC_STATUS%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
        ("duration_ms", "%DURATION%"),
        ("upstream_service_time_ms", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
        ("origin", "%REQ(ORIGIN)%"),
        ("user_agent", "%REQ(USER-AGENT)%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("downstream_address", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ];
    let json_format = Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                ((*k).to_owned(), ProtoValue { kind: Some(value::Kind::StringValue((*v).to_owned())) })
            })
            .collect(),
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&StdoutAccessLog {
            access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::JsonFormat(json_format)),
                    ..SubstitutionFormatString::default()
                },
            )),
        }))),
        ..AccessLog::default()
    }
}

fn static_cluster(name: &str, port: u16) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("127.0.0.1", port)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    }
}

/// The workload: HTTP/2 declared explicitly (a gRPC server answers HTTP/1.1
/// with a protocol error), and mTLS with the workload's own certificate
/// unless its TLS is disabled.
fn workload_cluster(input: &SidecarInput) -> Cluster {
    let mut c = static_cluster(WORKLOAD_CLUSTER, input.upstream_port);
    let http2 = UpstreamHttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions {
                            max_concurrent_streams: Some(u32_value(
                                grpc_contract::limits::MAX_CONCURRENT_STREAMS,
                            )),
                            ..Http2ProtocolOptions::default()
                        },
                    ),
                ),
            },
        )),
        ..UpstreamHttpProtocolOptions::default()
    };
    c.typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(), any(&http2));
    c.per_connection_buffer_limit_bytes = Some(u32_value(PER_CONNECTION_BUFFER_LIMIT_BYTES));
    // Envoy's defaults (1,024 requests in flight) would cap long-lived
    // browser streams below what the runtime admits; the runtime's own
    // budgets answer RESOURCE_EXHAUSTED when it is full.
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: Some(u32_value(UPSTREAM_MAX_REQUESTS)),
            max_pending_requests: Some(u32_value(UPSTREAM_MAX_REQUESTS)),
            max_requests: Some(u32_value(UPSTREAM_MAX_REQUESTS)),
            ..circuit_breakers::Thresholds::default()
        }],
        ..CircuitBreakers::default()
    });
    c.transport_socket = input.upstream_tls.as_ref().map(|tls| TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_params: Some(tls13()),
                tls_certificate_sds_secret_configs: vec![sds(
                    input,
                    WORKLOAD_CERTIFICATE_SECRET,
                    SDS_WORKLOAD_CERTIFICATE_FILE,
                )],
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::CombinedValidationContext(
                        common_tls_context::CombinedCertificateValidationContext {
                            default_validation_context: Some(CertificateValidationContext {
                                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                    san_type: SanType::Uri as i32,
                                    matcher: Some(StringMatcher {
                                        match_pattern: Some(string_matcher::MatchPattern::Exact(
                                            tls.server_spiffe_id.clone(),
                                        )),
                                        ignore_case: false,
                                    }),
                                    ..SubjectAltNameMatcher::default()
                                }],
                                ..CertificateValidationContext::default()
                            }),
                            validation_context_sds_secret_config: Some(sds(
                                input,
                                WORKLOAD_CA_SECRET,
                                SDS_WORKLOAD_CA_FILE,
                            )),
                            ..common_tls_context::CombinedCertificateValidationContext::default()
                        },
                    ),
                ),
                // The runtime serves gRPC over TLS only with ALPN h2.
                alpn_protocols: vec!["h2".to_owned()],
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        }))),
    });
    c
}

fn admin_cluster(input: &SidecarInput) -> Cluster {
    static_cluster(ADMIN_CLUSTER, input.admin_port)
}

/// The listener behind the `envoy-metrics` port: exactly the Prometheus
/// stats and the readiness path of the admin interface; anything else is a
/// 404 from Envoy (the admin interface's mutations never become reachable).
fn metrics_listener(input: &SidecarInput) -> Listener {
    let mut routes: Vec<Route> = METRICS_PATHS
        .iter()
        .map(|path| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path((*path).to_owned())),
                ..RouteMatch::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(ADMIN_CLUSTER.to_owned())),
                ..RouteAction::default()
            })),
            ..Route::default()
        })
        .collect();
    routes.push(Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..RouteMatch::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 404,
            ..DirectResponseAction::default()
        })),
        ..Route::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: "envoy_metrics".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "envoy_metrics".to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "envoy_metrics".to_owned(),
                domains: vec!["*".to_owned()],
                routes,
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        })),
        http_filters: vec![http_filter("envoy.filters.http.router", any(&Router::default()))],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: "envoy_metrics".to_owned(),
        address: Some(socket(&input.listen_address, input.metrics_port)),
        ignore_global_conn_limit: true,
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(any(&hcm))],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pod_input() -> SidecarInput {
        example_input()
    }

    fn bootstrap_json(input: &SidecarInput) -> serde_json::Value {
        let files = build(input).expect("builds");
        serde_json::from_str(&files[BOOTSTRAP_FILE]).expect("JSON")
    }

    fn web_hcm(b: &serde_json::Value) -> &serde_json::Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn the_pods_bootstrap_matches_snapshot() {
        let files = build(&pod_input()).expect("builds");
        // The files are compact JSON; the snapshots re-indent them to be read.
        let pretty = |text: &str| {
            let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
            serde_json::to_string_pretty(&value).expect("JSON")
        };
        insta::assert_snapshot!("envoy_json", pretty(&files[BOOTSTRAP_FILE]));
        insta::assert_snapshot!("sds_workload_certificate", pretty(&files[SDS_WORKLOAD_CERTIFICATE_FILE]));
        insta::assert_snapshot!("sds_workload_ca", pretty(&files[SDS_WORKLOAD_CA_FILE]));
    }

    /// The pod input and variants covering every optional part.
    fn inputs() -> Vec<SidecarInput> {
        let mut plain = pod_input();
        plain.upstream_tls = None;
        plain.origins = Origins::Any;
        plain.max_stream_duration_seconds = 5400;
        let mut browser = pod_input();
        browser.extra_allow_headers = vec!["x-csrf-token".to_owned(), "authorization".to_owned()];
        browser.browser_tls_dir = Some("/var/run/secrets/grpcoperator.io/browser-tls".to_owned());
        browser.web_port = 8443;
        vec![pod_input(), plain, browser]
    }

    #[test]
    fn the_wire_walker_writes_exactly_what_prost_reflect_writes() {
        for input in inputs() {
            let fast = build_with(&input, Writer::Strict).expect("the wire walker handles every part");
            let reference = build_with(&input, Writer::Reference).expect("prost-reflect writes it");
            assert_eq!(fast, reference, "{input:?}");
        }
    }

    #[test]
    fn the_wire_walker_matches_prost_reflect_on_packed_numbers_fractions_and_json_values() {
        use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
        let retry = RetryPolicy {
            retry_on: "5xx,reset".to_owned(),
            num_retries: Some(u32_value(3)),
            per_try_timeout: Some(ProtoDuration { seconds: 2, nanos: 500_000_000 }),
            retriable_status_codes: vec![503, 504, 429],
            ..RetryPolicy::default()
        };
        assert_eq!(
            write(&retry, Writer::Strict).expect("strict"),
            write(&retry, Writer::Reference).expect("reference")
        );
        let nested = Struct {
            fields: [
                ("n".to_owned(), ProtoValue { kind: Some(value::Kind::NumberValue(-1.25)) }),
                ("b".to_owned(), ProtoValue { kind: Some(value::Kind::BoolValue(true)) }),
                ("z".to_owned(), ProtoValue { kind: Some(value::Kind::NullValue(0)) }),
                (
                    "l".to_owned(),
                    ProtoValue {
                        kind: Some(value::Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
                            values: vec![ProtoValue { kind: Some(value::Kind::StringValue("x".to_owned())) }],
                        })),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        let log = SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(nested)),
            ..SubstitutionFormatString::default()
        };
        assert_eq!(
            write(&log, Writer::Strict).expect("strict"),
            write(&log, Writer::Reference).expect("reference")
        );
    }

    #[test]
    fn output_is_byte_identical_across_builds() {
        let first = build(&pod_input()).expect("builds");
        for _ in 0..20 {
            assert_eq!(build(&pod_input()).expect("builds"), first);
        }
    }

    #[test]
    fn filters_run_grpc_web_then_cors_then_the_router() {
        let b = bootstrap_json(&pod_input());
        let names: Vec<&str> = web_hcm(&b)["http_filters"]
            .as_array()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]
        );
    }

    #[test]
    fn routes_match_a_prefix_never_cut_streams_and_honour_grpc_timeout() {
        let mut input = pod_input();
        let b = bootstrap_json(&input);
        let vhost = &web_hcm(&b)["route_config"]["virtual_hosts"][0];
        let route = &vhost["routes"][0];
        assert_eq!(route["match"], serde_json::json!({"prefix": "/"}), "never grpc: {{}}");
        assert_eq!(route["route"]["timeout"], "0s");
        assert_eq!(
            route["route"]["max_stream_duration"],
            serde_json::json!({"grpc_timeout_header_max": "0s"})
        );
        assert_eq!(web_hcm(&b)["stream_idle_timeout"], "3600s");
        input.max_stream_duration_seconds = 1800;
        let b = bootstrap_json(&input);
        let route = &web_hcm(&b)["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(
            route["route"]["max_stream_duration"],
            serde_json::json!({"max_stream_duration": "1800s", "grpc_timeout_header_max": "1800s"}),
            "a client's grpc-timeout may shorten the limit, never lift it"
        );
    }

    #[test]
    fn the_cors_policy_answers_refused_preflights_and_uses_the_contracts_headers() {
        let b = bootstrap_json(&pod_input());
        let policy = &web_hcm(&b)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"];
        assert_eq!(policy["forward_not_matching_preflights"], false);
        assert_eq!(policy["allow_methods"], "POST, GET, OPTIONS");
        assert_eq!(policy["allow_headers"], ALLOW_HEADERS.join(", "));
        assert_eq!(policy["expose_headers"], EXPOSE_HEADERS.join(", "));
        let mut input = pod_input();
        input.extra_allow_headers = vec!["x-csrf-token".to_owned(), "authorization".to_owned()];
        let b = bootstrap_json(&input);
        let policy = &web_hcm(&b)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"];
        assert_eq!(
            policy["allow_headers"],
            format!("{}, x-csrf-token", ALLOW_HEADERS.join(", ")),
            "configured headers follow the contract's, once each"
        );
        for header in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization"] {
            assert!(ALLOW_HEADERS.contains(&header), "{header}");
        }
        for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(EXPOSE_HEADERS.contains(&header), "{header}");
        }
        assert_eq!(policy["max_age"], "7200");
        let matchers = policy["allow_origin_string_match"].as_array().expect("matchers");
        assert_eq!(matchers[0], serde_json::json!({"exact": "https://app.example.com", "ignore_case": true}));
        assert_eq!(matchers[1]["safe_regex"]["regex"], r"(?i)^https://[a-z0-9-]+\.example\.org$");
    }

    #[test]
    fn the_wildcard_regex_matches_exactly_what_the_runtime_matches() {
        let pattern = "https://*.example.org:8443";
        let regex =
            regex::Regex::new(&grpc_contract::web::origin_regex(pattern).expect("wildcard")).expect("regex");
        for origin in [
            "https://a.example.org:8443",
            "https://A-1.Example.org:8443",
            "https://example.org:8443",
            "https://a.b.example.org:8443",
            "https://a.example.org",
            "http://a.example.org:8443",
            "https://a.example.org:84430",
            "https://aexample.org:8443",
        ] {
            assert_eq!(
                regex.is_match(origin),
                grpc_contract::web::origin_matches(pattern, origin),
                "{origin}"
            );
        }
    }

    #[test]
    fn the_upstream_is_http2_with_mutual_tls_and_a_spiffe_san_match() {
        let b = bootstrap_json(&pod_input());
        let clusters = b["static_resources"]["clusters"].as_array().expect("clusters");
        let workload = clusters.iter().find(|c| c["name"] == WORKLOAD_CLUSTER).expect("workload cluster");
        let options = &workload["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(options["explicit_http_config"]["http2_protocol_options"].is_object(), "{options}");
        let tls = &workload["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(tls["alpn_protocols"], serde_json::json!(["h2"]));
        assert_eq!(
            tls["tls_params"],
            serde_json::json!({"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"})
        );
        let combined = &tls["combined_validation_context"];
        assert_eq!(
            combined["default_validation_context"]["match_typed_subject_alt_names"][0],
            serde_json::json!({"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/user-service"}})
        );
        let sds = &tls["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"];
        assert_eq!(sds["path"], "/etc/envoy/sds-workload-certificate.json");
        assert_eq!(sds["watched_directory"]["path"], "/etc/envoy");
        let files = build(&pod_input()).expect("builds");
        let certificate: serde_json::Value =
            serde_json::from_str(&files[SDS_WORKLOAD_CERTIFICATE_FILE]).expect("JSON");
        let resource = &certificate["resources"][0];
        assert_eq!(
            resource["tls_certificate"]["watched_directory"]["path"],
            "/var/run/secrets/grpcoperator.io/tls"
        );
        assert_eq!(
            resource["tls_certificate"]["private_key"]["filename"],
            "/var/run/secrets/grpcoperator.io/tls/tls.key"
        );

        let mut plain = pod_input();
        plain.upstream_tls = None;
        let b = bootstrap_json(&plain);
        let workload = b["static_resources"]["clusters"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == WORKLOAD_CLUSTER))
            .expect("workload cluster")
            .clone();
        assert!(workload.get("transport_socket").is_none(), "h2c when the workload's TLS is disabled");
        assert_eq!(build(&plain).expect("builds").len(), 1, "no SDS files");
    }

    #[test]
    fn admin_is_on_loopback_and_the_metrics_listener_routes_only_stats_and_ready() {
        let b = bootstrap_json(&pod_input());
        assert_eq!(b["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
        let metrics = &b["static_resources"]["listeners"][1];
        assert_eq!(metrics["address"]["socket_address"]["port_value"], 9902);
        let routes = metrics["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
            ["routes"]
            .as_array()
            .expect("routes")
            .clone();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0]["match"], serde_json::json!({"path": "/stats/prometheus"}));
        assert_eq!(routes[1]["match"], serde_json::json!({"path": "/ready"}));
        assert_eq!(routes[2]["direct_response"]["status"], 404);
        assert_eq!(
            b["overload_manager"]["resource_monitors"][0]["typed_config"]["max_active_downstream_connections"],
            10_000
        );
    }
}

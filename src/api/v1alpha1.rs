//! `grpcoperator.io/v1alpha1`.
//!
//! Rules that a real API server can enforce before the controller sees an object
//! (bounds, patterns, enums, list uniqueness, CEL) are declared here, on the
//! type. `crate::reconcile::validate` repeats them and adds the checks a schema
//! cannot express, because the controller must never trust that the CRD in the
//! cluster is the current one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default gRPC port.
pub const DEFAULT_PORT: i32 = 50051;
/// Default admin (metrics, health) port.
pub const DEFAULT_ADMIN_PORT: i32 = 9090;
/// Upper bound of `spec.replicas`.
pub const MAX_REPLICAS: i32 = 1000;
/// Pattern of a DNS-1123 subdomain (Kubernetes object names).
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a fully-qualified gRPC service name: a protobuf package of at
/// least one segment followed by the service name, e.g. `user.v1.UserService`.
pub const SERVICE_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$";

/// Desired state of one gRPC microservice.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grpcoperator.io",
    version = "v1alpha1",
    kind = "GrpcService",
    plural = "grpcservices",
    singular = "grpcservice",
    shortname = "grpcsvc",
    namespaced,
    doc = "A gRPC microservice. grpc-operator reconciles it into a Deployment and a Service that follow the workload contract (docs/workload-contract.md).",
    status = "GrpcServiceStatus",
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits or '-', starting with a letter), because the Service is named after it"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image","priority":0}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.port != self.adminPort").message("port and adminPort must differ").field_path(".adminPort").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("replicas and autoscaling are mutually exclusive: with autoscaling, the HorizontalPodAutoscaler sets the replica count").field_path(".autoscaling").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.grpcWeb) || !has(self.grpcWeb.enabled) || !self.grpcWeb.enabled || !has(self.grpcWeb.mode) || self.grpcWeb.mode != 'native' || (has(self.tls) && has(self.tls.mode) && self.tls.mode != 'mutual')").message("grpcWeb.mode native needs tls.mode server or disabled: browsers present no client certificate (or use mode sidecar)").field_path(".grpcWeb.mode").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.grpcWeb) || !has(self.grpcWeb.enabled) || !self.grpcWeb.enabled || [self.port, self.adminPort].all(p, p != (has(self.grpcWeb.port) ? self.grpcWeb.port : 8080))").message("grpcWeb.port must differ from port and adminPort: all three are ports of the Service").field_path(".grpcWeb.port").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.grpcWeb) || !has(self.grpcWeb.enabled) || !self.grpcWeb.enabled || (has(self.grpcWeb.mode) && self.grpcWeb.mode == 'native') || [self.port, self.adminPort, has(self.grpcWeb.port) ? self.grpcWeb.port : 8080].all(p, p != 9901 && p != 9902)").message("with the gRPC-Web sidecar, port, adminPort and grpcWeb.port may not be 9901 or 9902, the sidecar's Envoy admin and envoy-metrics ports").field_path(".grpcWeb.port").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct GrpcServiceSpec {
    /// Container image of the workload, e.g. `registry.example.com/shop/user-service:1.4.2`.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// When the kubelet pulls the image. Defaults to the Kubernetes default
    /// (`Always` for `:latest`, `IfNotPresent` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets in the same namespace used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Number of pods. When unset, the operator does not own the replica
    /// count: a HorizontalPodAutoscaler, `kubectl scale` or KEDA may set it,
    /// and a new Deployment starts with 1. Mutually exclusive with
    /// `autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// A HorizontalPodAutoscaler (`autoscaling/v2`) for the Deployment.
    /// Mutually exclusive with `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// A PodDisruptionBudget for the pods. When unset, the operator creates
    /// one with `maxUnavailable: 1` when the service has at least 2 pods
    /// (`replicas` or `autoscaling.minReplicas`), and none otherwise; with
    /// `replicas` unset and no autoscaling the pod count is not known, so no
    /// budget is created unless this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Disruption>,

    /// Graceful shutdown of the workload. The pod's
    /// `terminationGracePeriodSeconds` is `drainDelay + timeout` plus the
    /// runtime's hook and flush budget (10 s) plus 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,

    /// gRPC port (h2c, or TLS when mTLS is enabled). Exposed as the Service
    /// port named `grpc` and given to the workload as `GRPC_PORT`.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Admin HTTP port serving `/metrics`, `/healthz` and `/readyz`. Exposed as
    /// the Service port named `admin` and given to the workload as `ADMIN_PORT`.
    /// Must differ from `port`.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,

    /// Fully-qualified gRPC service names the workload serves, e.g.
    /// `user.v1.UserService`. Health checks, metrics alerts and service
    /// discovery are generated per service.
    #[schemars(length(min = 1, max = 64), inner(length(max = 253), pattern(SERVICE_NAME_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub services: Vec<String>,

    /// Extra environment variables for the workload container. Variables of
    /// the workload contract (`GRPC_PORT`, `ADMIN_PORT`, `POD_*`,
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `LOG_FORMAT`, `TLS_*`,
    /// `GRPC_WEB_ORIGINS`, `CONSUL_*`, `SHUTDOWN_*`) are set by the operator
    /// and may not be set here; `spec.shutdown` sets the shutdown ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,

    /// Compute resources of the workload container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Mutual TLS: certificates from the operator's CA (or cert-manager),
    /// mounted at `TLS_DIR` and hot-reloaded by the runtime. A missing
    /// section means `mode: mutual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// gRPC-Web for browsers: an Envoy sidecar (`grpc_web`, CORS, then the
    /// workload over HTTP/2 and mTLS), or the runtime itself (`native`).
    /// Browsers reach it on the Service port `grpc-web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_web: Option<GrpcWeb>,

    /// Monitoring with prometheus-operator and Grafana: a ServiceMonitor,
    /// a PrometheusRule with alerts (and SLO burn-rate alerts) built from the
    /// runtime's metric names, and a dashboard. A missing section means the
    /// ServiceMonitor and the alerts on, the dashboard off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Monitoring>,

    /// Service account the pods run as; their SPIFFE ID
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`) is
    /// their identity for `tls.allowedClients`. When unset, the operator
    /// creates a ServiceAccount named after the GrpcService (without an
    /// automounted API token), so that every service has its own identity.
    /// GrpcServices that name the same account share one identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN_PATTERN))]
    pub service_account_name: Option<String>,

    /// Annotations added to the pod template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_annotations: BTreeMap<String, String>,

    /// Labels added to the pod template. The operator's selector labels
    /// (`app.kubernetes.io/name`, `app.kubernetes.io/managed-by`,
    /// `grpcoperator.io/service`) may not be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/managed-by' in self) && !('grpcoperator.io/service' in self)").message("podLabels may not set the operator's selector labels app.kubernetes.io/name, app.kubernetes.io/managed-by or grpcoperator.io/service"))]
    pub pod_labels: BTreeMap<String, String>,
}

/// Pattern of a certificate duration: hours and/or minutes, e.g. `720h`,
/// `1h30m`, `90m`.
pub const CERT_DURATION_PATTERN: &str = r"^([0-9]{1,4}h)?([0-9]{1,6}m)?$";

/// Mutual TLS of the workload.
///
/// With `mutual` (the default) every caller must present a certificate
/// from the operator's CA: services managed by the operator call each other
/// with their own certificates and no configuration. Clients outside the
/// mesh need a certificate from the CA (mount a GrpcService's Secret, or
/// issue one), or the service must use `mode: server` (TLS without client
/// certificates), or browsers go through the gRPC-Web proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.duration) || (duration(self.duration) >= duration('1h') && duration(self.duration) <= duration('8760h'))").message("duration must be between 1h and 8760h").field_path(".duration").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(has(self.duration) ? self.duration : '720h')").message("renewBefore must be less than duration").field_path(".renewBefore").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.allowedClients) || size(self.allowedClients) == 0 || !has(self.mode) || self.mode == 'mutual'").message("allowedClients needs mode mutual: only client certificates identify callers").field_path(".allowedClients").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.issuerRef) || !has(self.mode) || self.mode != 'disabled'").message("issuerRef needs TLS: mode may not be disabled").field_path(".issuerRef").reason(Reason::FieldValueForbidden))]
pub struct Tls {
    /// `disabled`, `server` (TLS; clients are not authenticated) or
    /// `mutual` (TLS with client certificates). Default `mutual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Lifetime of a certificate: hours and minutes (`720h`, `1h30m`).
    /// Default `720h`; between `1h` and `8760h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 12), pattern(CERT_DURATION_PATTERN))]
    pub duration: Option<String>,
    /// How long before it expires a certificate is renewed. Default one
    /// third of `duration`; must be less than `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 12), pattern(CERT_DURATION_PATTERN))]
    pub renew_before: Option<String>,
    /// Extra DNS names of the certificate, besides the Service's
    /// (`<name>`, `<name>.<namespace>`, `<name>.<namespace>.svc`,
    /// `<name>.<namespace>.svc.<cluster-domain>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253), pattern(DNS_NAME_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub dns_names: Vec<String>,
    /// `Always` (default): every re-issue uses a new key. `Never`: the key
    /// is kept across renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_rotation: Option<PrivateKeyRotation>,
    /// The peers allowed to call (mode `mutual`), given to the workload as
    /// `GRPC_ALLOWED_PEERS`; others get `PERMISSION_DENIED`. Empty: any
    /// certificate of the trust domain. An entry is a SPIFFE ID pattern
    /// (`*` is one whole path segment) or another GrpcService, which stands
    /// for its service account's SPIFFE ID. A GrpcService that cannot be
    /// resolved never widens the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_clients: Vec<AllowedClient>,
    /// Issue through cert-manager instead of the operator's CA: a
    /// cert-manager `Certificate` is created for this issuer, and its Secret
    /// (`<name>-tls`) is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// Pattern of an allowed browser origin: `*`, an exact origin, or one whose
/// leftmost host label is `*` above at least two more (`https://*.example.com`,
/// not `https://*.com`).
pub const ORIGIN_PATTERN: &str = r"^(\*|https?://(\*\.[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?)$";

/// Pattern of a lower-case HTTP header name (an RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[a-z0-9!#$%&'*+.^_`|~-]+$";

/// Pattern of a stream duration: hours, minutes and seconds (`0s`, `30m`,
/// `1h30m`, `90s`).
pub const STREAM_DURATION_PATTERN: &str = r"^([0-9]{1,4}h)?([0-9]{1,6}m)?([0-9]{1,7}s)?$";

/// The Envoy port of the sidecar's admin interface, on 127.0.0.1 only.
pub const ENVOY_ADMIN_PORT: i32 = 9901;
/// The sidecar's `envoy-metrics` port: `/stats/prometheus` and `/ready`.
pub const ENVOY_METRICS_PORT: i32 = 9902;
/// Default browser-facing port.
pub const DEFAULT_GRPC_WEB_PORT: i32 = 8080;

/// gRPC-Web for browsers.
///
/// Browsers cannot speak gRPC. With `mode: sidecar` (the default) an Envoy
/// sidecar translates gRPC-Web, answers CORS, and calls the workload over
/// HTTP/2 with the workload's own certificate; with `mode: native` the
/// runtime serves gRPC-Web itself (`GRPC_WEB_ORIGINS`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.enabled) || !self.enabled || (has(self.allowAnyOrigin) && self.allowAnyOrigin) || (has(self.allowedOrigins) && size(self.allowedOrigins) > 0)").message("allowedOrigins needs at least one origin when gRPC-Web is enabled (or allowAnyOrigin: true)").field_path(".allowedOrigins").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.allowedOrigins) || !self.allowedOrigins.exists(o, o == '*') || (has(self.allowAnyOrigin) && self.allowAnyOrigin)").message("* in allowedOrigins lets every web site call the service: it needs allowAnyOrigin: true").field_path(".allowedOrigins").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.browserTLS) || !has(self.mode) || self.mode == 'sidecar'").message("browserTLS terminates TLS at the Envoy sidecar: it needs mode sidecar").field_path(".browserTLS").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.allowedHeaders) || size(self.allowedHeaders) == 0 || !has(self.mode) || self.mode == 'sidecar'").message("allowedHeaders configures the sidecar's CORS policy: it needs mode sidecar (native mode allows the runtime's list)").field_path(".allowedHeaders").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.envoy) || !has(self.mode) || self.mode == 'sidecar'").message("envoy configures the sidecar: it needs mode sidecar").field_path(".envoy").reason(Reason::FieldValueForbidden))]
pub struct GrpcWeb {
    /// Serve gRPC-Web. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// `sidecar` (default): an Envoy sidecar. `native`: the runtime serves
    /// gRPC-Web itself on the gRPC port; it needs `tls.mode` `server` or
    /// `disabled`, because browsers present no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<GrpcWebMode>,
    /// Browser origins allowed to call: exact (`https://app.example.com`,
    /// `http://localhost:3000`) or with a wildcard leftmost label
    /// (`https://*.example.com`, exactly one label). `*` needs
    /// `allowAnyOrigin: true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), pattern(ORIGIN_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_origins: Vec<String>,
    /// Allow every origin. Callers are then authorized by the application
    /// alone (bearer tokens, never cookies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_origin: bool,
    /// Request headers browsers may send besides the runtime's own list
    /// (`content-type`, `x-grpc-web`, `x-user-agent`, `grpc-timeout`,
    /// `authorization`, `x-request-id`, `x-tenant-id`, `traceparent`):
    /// lower-case header names, added to the CORS policy's
    /// `Access-Control-Allow-Headers`. Sidecar mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128), pattern(HEADER_NAME_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_headers: Vec<String>,
    /// Browser-facing port: the Service port `grpc-web`. Default 8080. With
    /// `mode: native` it maps to the gRPC port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Longest a call may last (`30m`, `1h`); `0s`, the default, is no
    /// limit. The client's `grpc-timeout` applies either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), pattern(STREAM_DURATION_PATTERN))]
    pub max_stream_duration: Option<String>,
    /// The Envoy sidecar's image and resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<EnvoySidecar>,
    /// Terminate browser TLS at the sidecar with this certificate. The
    /// workload CA is private, so browsers would not trust it; by default
    /// TLS is left to the ingress.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "browserTLS")]
    pub browser_tls: Option<BrowserTls>,
}

/// How gRPC-Web is served.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GrpcWebMode {
    /// An Envoy sidecar in front of the workload.
    Sidecar,
    /// The runtime serves gRPC-Web itself.
    Native,
}

/// The Envoy sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoySidecar {
    /// Image; default the operator's `--envoy-image` (a pinned official
    /// distroless Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Compute resources. Default requests: 50m CPU, 64Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A `kubernetes.io/tls` Secret in the GrpcService's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrowserTls {
    /// Its name.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
}

/// Pattern of a Prometheus duration as the monitoring settings take it:
/// hours, minutes and seconds (`30s`, `5m`, `1h30m`), which CEL's
/// `duration()` parses too.
pub const PROMETHEUS_DURATION_PATTERN: &str = r"^([0-9]{1,4}h)?([0-9]{1,4}m)?([0-9]{1,5}s)?$";
/// Pattern of an SLO window: whole days, 7 to 90.
pub const SLO_WINDOW_PATTERN: &str = r"^([7-9]|[1-8][0-9]|90)d$";
/// Pattern of a label value (at most 63 characters; may be empty).
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// Pattern of a runbook base URL.
/// (No braces: Prometheus renders annotations as templates, and a stray
/// `{{` would make the whole PrometheusRule invalid.)
pub const RUNBOOK_URL_PATTERN: &str = r"^https?://[^\s{}]+$";
/// The largest finite bucket of `grpc_server_handling_seconds`: a p99 above
/// it cannot be told apart from `+Inf`.
pub const MAX_LATENCY_P99_SECONDS: f64 = 10.0;

/// Monitoring with prometheus-operator (ServiceMonitor, PrometheusRule) and
/// Grafana (a dashboard ConfigMap for the Grafana chart's sidecar).
///
/// The condition `MonitoringReady` says whether a Prometheus in the cluster
/// selects the ServiceMonitor and the rules, and which labels would make
/// one do so.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.slo) || !has(self.alerts) || !has(self.alerts.enabled) || self.alerts.enabled").message("slo needs alerts: its burn-rate alerts are part of the PrometheusRule").field_path(".slo").reason(Reason::FieldValueForbidden))]
pub struct Monitoring {
    /// Labels added to every monitoring object (ServiceMonitor,
    /// PrometheusRule, dashboard ConfigMap). kube-prometheus-stack, for
    /// example, selects only objects labelled `release: <its release>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/managed-by' in self) && !('grpcoperator.io/service' in self)").message("monitoring labels may not set the operator's labels app.kubernetes.io/name, app.kubernetes.io/managed-by or grpcoperator.io/service"))]
    pub labels: BTreeMap<String, String>,
    /// The ServiceMonitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSettings>,
    /// The alerts of the PrometheusRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
    /// An availability SLO: multi-window, multi-burn-rate alerts (Google SRE
    /// workbook) and recording rules `grpcservice:sli_errors:ratio_rate<window>`.
    /// Needs `alerts` enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// A Grafana dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<Dashboard>,
}

/// The ServiceMonitor (monitoring.coreos.com/v1): the Service's `admin`
/// port `/metrics`, and the `envoy-metrics` port with the gRPC-Web sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.interval) || (duration(self.interval) >= duration('1s') && duration(self.interval) <= duration('2m'))").message("interval must be between 1s and 2m: the alerts' 5-minute rates need at least two samples").field_path(".interval").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.scrapeTimeout) || (duration(self.scrapeTimeout) >= duration('1s') && duration(self.scrapeTimeout) <= duration(has(self.interval) ? self.interval : '30s'))").message("scrapeTimeout must be at least 1s and at most interval: Prometheus refuses a timeout longer than the interval").field_path(".scrapeTimeout").reason(Reason::FieldValueInvalid))]
pub struct ServiceMonitorSettings {
    /// Create the ServiceMonitor. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Scrape interval (`30s`, `1m`), at most `2m`: the alerts' rates over 5
    /// minutes need two samples. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), pattern(PROMETHEUS_DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Scrape timeout, at most `interval`. Default: Prometheus's (10s, or the
    /// interval when shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), pattern(PROMETHEUS_DURATION_PATTERN))]
    pub scrape_timeout: Option<String>,
    /// Labels of the ServiceMonitor only, besides `monitoring.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/managed-by' in self) && !('grpcoperator.io/service' in self)").message("monitoring labels may not set the operator's labels app.kubernetes.io/name, app.kubernetes.io/managed-by or grpcoperator.io/service"))]
    pub labels: BTreeMap<String, String>,
}

/// Alerts on the runtime's metrics. Error rates count server errors only
/// (`Unknown`, `DeadlineExceeded`, `Unimplemented`, `Internal`,
/// `Unavailable`, `DataLoss`); `NotFound`, `InvalidArgument` and the other
/// codes are the caller's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alerts {
    /// Create the PrometheusRule. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Alert when more than this percentage of a method's calls end in a
    /// server error over 5 minutes (and it has at least 0.1 calls/s).
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub error_rate_percent: Option<f64>,
    /// Alert when a method's p99 latency over 5 minutes is above this many
    /// seconds. Unary calls only, without `grpc.health.v1.Health`. Default 1,
    /// at most 10 (the largest finite histogram bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.005, max = 10.0))]
    pub latency_p99_seconds: Option<f64>,
    /// How long a condition must hold before its alert fires (`5m`,
    /// `30s`). Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "for")]
    #[schemars(length(min = 2, max = 16), pattern(PROMETHEUS_DURATION_PATTERN))]
    pub for_: Option<String>,
    /// The `severity` label values of the alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlertSeverity>,
    /// Base of each alert's `runbook_url` (`<base>/<alertname>`). Default:
    /// the operator's runbooks (docs/runbooks.md).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "runbookBaseURL")]
    #[schemars(length(min = 8, max = 512), pattern(RUNBOOK_URL_PATTERN))]
    pub runbook_base_url: Option<String>,
    /// Labels of the PrometheusRule only, besides `monitoring.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/managed-by' in self) && !('grpcoperator.io/service' in self)").message("monitoring labels may not set the operator's labels app.kubernetes.io/name, app.kubernetes.io/managed-by or grpcoperator.io/service"))]
    pub labels: BTreeMap<String, String>,
}

/// The `severity` label values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertSeverity {
    /// Alerts that need someone now (error rate, latency, a target down,
    /// fast SLO burn). Default `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_VALUE_PATTERN))]
    pub page: Option<String>,
    /// Alerts that need someone this week (panics, an expiring
    /// certificate, slow SLO burn). Default `warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_VALUE_PATTERN))]
    pub ticket: Option<String>,
}

/// An availability SLO over server errors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("0.02 * 24.0 * double(int((has(self.window) ? self.window : '30d').replace('d', ''))) * (100.0 - (has(self.objective) ? self.objective : 99.9)) / 100.0 < 1.0").message("objective is too low for window: the 1h page alert (2% of the error budget in an hour) would need more than 100% errors and could never fire; raise objective or shorten window").field_path(".objective").reason(Reason::FieldValueInvalid))]
pub struct Slo {
    /// Percentage of calls that must not end in a server error. Default 99.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 90.0, max = 99.999))]
    pub objective: Option<f64>,
    /// The SLO window, in days (`7d` to `90d`). Default `30d`. The burn-rate
    /// factors (14.4, 6, 3, 1 at 30d) scale with it, so each alert still
    /// means the same share of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 3), pattern(SLO_WINDOW_PATTERN))]
    pub window: Option<String>,
}

/// A Grafana dashboard in a ConfigMap labelled `grafana_dashboard: "1"`,
/// the Grafana Helm chart's sidecar convention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    /// Create the dashboard. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Grafana folder (the `grafana_folder` annotation). Default: the
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub folder: Option<String>,
}

/// Pattern of a DNS name of a certificate (a `*.` wildcard allowed).
pub const DNS_NAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// TLS mode of the workload (`TLS_MODE`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// Cleartext HTTP/2 (h2c).
    Disabled,
    /// TLS; clients are not authenticated.
    Server,
    /// TLS with client certificates from the trust bundle.
    Mutual,
}

impl TlsMode {
    /// The `TLS_MODE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Server => "server",
            Self::Mutual => "mutual",
        }
    }
}

/// Whether re-issued certificates get a new key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PrivateKeyRotation {
    /// A new key on every issue.
    Always,
    /// The key is kept.
    Never,
}

/// One allowed caller: exactly one of `spiffeId` and `name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.spiffeId) != has(self.name)").message("set exactly one of spiffeId and name").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.namespace) || has(self.name)").message("namespace goes with name").field_path(".namespace").reason(Reason::FieldValueForbidden))]
pub struct AllowedClient {
    /// A SPIFFE ID or pattern: `spiffe://cluster.local/ns/shop/sa/web`,
    /// `spiffe://cluster.local/ns/shop/sa/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 10, max = 2048))]
    pub spiffe_id: Option<String>,
    /// A GrpcService whose identity (service account) may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Its namespace; defaults to this GrpcService's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (default, in this namespace) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<IssuerKind>,
    /// API group of the issuer; default `cert-manager.io` (external issuers
    /// have their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
}

/// Kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum IssuerKind {
    /// Namespaced.
    Issuer,
    /// Cluster-scoped.
    ClusterIssuer,
}

/// Horizontal autoscaling of the Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas may not be greater than maxReplicas").field_path(".minReplicas").reason(Reason::FieldValueInvalid))]
pub struct Autoscaling {
    /// Lower bound of the replica count. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Upper bound of the replica count.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilization, in percent of `resources.requests.cpu`
    /// (which must then be set). When neither target is set, the target is
    /// 80 % CPU, as for a HorizontalPodAutoscaler without metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Target average memory utilization, in percent of
    /// `resources.requests.memory` (which must then be set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization_percentage: Option<i32>,
}

/// The pods' disruption budget: exactly one of the two fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("set exactly one of minAvailable and maxUnavailable").reason(Reason::FieldValueInvalid))]
pub struct Disruption {
    /// Pods that must stay available during voluntary disruptions: a number,
    /// or a percentage such as `50%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unavailable during voluntary disruptions: a number,
    /// or a percentage such as `25%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Shutdown budget of the workload, given to it as `SHUTDOWN_DRAIN_DELAY`
/// and `SHUTDOWN_TIMEOUT`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shutdown {
    /// How long the workload keeps serving after SIGTERM while reporting not
    /// ready, so that load balancers stop sending it calls: `500ms`, `5s`,
    /// `1m`. Defaults to `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(DURATION_PATTERN))]
    pub drain_delay: Option<String>,
    /// How long in-flight calls may run after the listener closes; at most
    /// `1h`. Defaults to `20s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// Pattern of a shutdown duration: a whole number of `ms`, `s` or `m`.
pub const DURATION_PATTERN: &str = r"^[0-9]{1,7}(ms|s|m)$";

/// Image pull policy of the workload container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: what serving depends on is in place (the Deployment is
    /// available). `Synced`: the last reconcile applied the current spec;
    /// False at the first permanent failure or after 5 transient ones in a
    /// row. `DeploymentAvailable`: the Deployment has rolled out the current
    /// spec with the minimum available pods. Later capabilities add
    /// `CertificateReady`, `GrpcWebReady` and `MonitoringReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Pods of the current Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods of the current Deployment that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// In-cluster gRPC address, e.g. `user-service.shop.svc:50051`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The workload certificate in the `<name>-tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
}

/// The workload certificate, as issued. Never key material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// NotBefore (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// NotAfter (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator renews it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// Serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SHA-256 fingerprint of the CA certificate that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_fingerprint: Option<String>,
}

fn default_port() -> i32 {
    DEFAULT_PORT
}

fn default_admin_port() -> i32 {
    DEFAULT_ADMIN_PORT
}

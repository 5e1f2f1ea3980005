//! validate: defaulting and every cross-field check, producing the only value
//! the builders in `crate::children` accept.
//!
//! The CRD schema and its CEL rules reject most bad input at the API server,
//! but the controller cannot rely on that: the installed CRD may be older than
//! the operator, `render` runs with no API server at all, and some rules cannot
//! be expressed cheaply in CEL (reserved env names, label syntax). So every
//! rule is checked here too, and all violations are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use grpc_contract::env::RESERVED as RESERVED_ENV;
use grpc_contract::shutdown::{
    DEFAULT_DRAIN_DELAY, DEFAULT_TIMEOUT, parse_duration_ms, termination_grace_seconds,
};
use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regex::Regex;

use crate::api::v1alpha1::{DNS1123_SUBDOMAIN_PATTERN, MAX_REPLICAS, SERVICE_NAME_PATTERN};
use crate::api::v1alpha1::{ENVOY_ADMIN_PORT, ENVOY_METRICS_PORT};
use crate::api::{GrpcService, GrpcWebMode, ImagePullPolicy, TlsMode};
use crate::children::labels::RESERVED_POD_LABELS;
use crate::envoy::bootstrap::Origins;

/// A `GrpcService` that passed validation, with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedService {
    /// `metadata.name`; also the name of every child object.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`; `None` only when rendering offline a manifest that was
    /// never stored, in which case children carry no ownerReference.
    pub uid: Option<String>,
    /// `metadata.generation` (0 offline).
    pub generation: i64,
    /// Container image.
    pub image: String,
    /// Image pull policy; `None` leaves the Kubernetes default.
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Image pull secrets.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Number of pods; `None` leaves the count to others (an HPA, `kubectl
    /// scale`).
    pub replicas: Option<i32>,
    /// Horizontal autoscaling, with defaults applied.
    pub autoscaling: Option<ValidAutoscaling>,
    /// The disruption budget to create, after defaulting; `None` creates none.
    pub disruption: Option<DisruptionBudget>,
    /// Shutdown budget of the workload.
    pub shutdown: ValidShutdown,
    /// gRPC port.
    pub port: i32,
    /// Admin HTTP port.
    pub admin_port: i32,
    /// Fully-qualified gRPC service names, in spec order, unique.
    pub services: Vec<String>,
    /// User environment variables (none of them reserved).
    pub env: Vec<EnvVar>,
    /// Container resources, quantities in canonical form.
    pub resources: Option<ResourceRequirements>,
    /// The service account the pods run as: `spec.serviceAccountName`, or
    /// the GrpcService's name (the operator creates that account).
    pub service_account: String,
    /// Whether the operator creates [`Self::service_account`].
    pub creates_service_account: bool,
    /// Mutual TLS, with defaults applied.
    pub tls: ValidTls,
    /// gRPC-Web, when enabled.
    pub grpc_web: Option<ValidGrpcWeb>,
    /// Monitoring, with defaults applied.
    pub monitoring: crate::monitoring::ValidMonitoring,
    /// Extra pod template annotations.
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra pod template labels (none of them reserved).
    pub pod_labels: BTreeMap<String, String>,
}

/// `spec.autoscaling` with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidAutoscaling {
    /// Lower bound of the replica count.
    pub min_replicas: i32,
    /// Upper bound of the replica count.
    pub max_replicas: i32,
    /// Average CPU utilization target (percent of the request).
    pub cpu_utilization: Option<i32>,
    /// Average memory utilization target (percent of the request).
    pub memory_utilization: Option<i32>,
}

/// Default CPU target when `spec.autoscaling` names none: what a
/// HorizontalPodAutoscaler without metrics would use.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

/// The PodDisruptionBudget's one limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisruptionBudget {
    /// `minAvailable`.
    MinAvailable(IntOrString),
    /// `maxUnavailable`.
    MaxUnavailable(IntOrString),
}

/// `spec.tls` with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidTls {
    /// The mode (`mutual` when the section is missing).
    pub mode: TlsMode,
    /// Certificate lifetime, seconds.
    pub duration_seconds: i64,
    /// Renewal margin before NotAfter, seconds.
    pub renew_before_seconds: i64,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Whether every re-issue uses a new key (`privateKeyRotation: Always`).
    pub rotate_key: bool,
    /// The allowed callers, in spec order (only with `mutual`).
    pub allowed_clients: Vec<ValidAllowedClient>,
    /// cert-manager issues instead of the operator.
    pub issuer_ref: Option<crate::api::IssuerRef>,
}

impl ValidTls {
    /// Whether the workload serves TLS.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disabled
    }

    /// Whether the operator's CA issues the certificate.
    pub fn operator_issued(&self) -> bool {
        self.enabled() && self.issuer_ref.is_none()
    }
}

/// `spec.grpcWeb` when enabled, with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidGrpcWeb {
    /// Sidecar or native.
    pub mode: GrpcWebMode,
    /// The allowed browser origins.
    pub origins: Origins,
    /// The Service port `grpc-web` (the sidecar's listener in sidecar mode).
    pub port: i32,
    /// Longest call, seconds; 0 is no limit.
    pub max_stream_duration_seconds: i64,
    /// The sidecar image, when the spec sets one (else the operator's).
    pub envoy_image: Option<String>,
    /// The sidecar's resources, quantities canonical.
    pub envoy_resources: Option<ResourceRequirements>,
    /// The browser-facing certificate's Secret.
    pub browser_tls_secret: Option<String>,
    /// Extra CORS request headers (sidecar mode).
    pub allowed_headers: Vec<String>,
}

impl ValidGrpcWeb {
    /// Whether an Envoy sidecar serves it.
    pub fn sidecar(&self) -> bool {
        self.mode == GrpcWebMode::Sidecar
    }
}

/// One allowed caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidAllowedClient {
    /// A SPIFFE ID pattern, checked with the runtime's grammar.
    Pattern(String),
    /// A GrpcService, resolved to its service account's SPIFFE ID.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// Default `spec.tls.duration`: 30 days.
pub const DEFAULT_CERT_DURATION_SECONDS: i64 = 720 * 3600;
/// Shortest `spec.tls.duration`.
pub const MIN_CERT_DURATION_SECONDS: i64 = 3600;
/// Longest `spec.tls.duration`.
pub const MAX_CERT_DURATION_SECONDS: i64 = 8760 * 3600;

/// Parses a certificate duration (`720h`, `1h30m`, `90m`) into seconds.
pub fn parse_cert_duration(text: &str) -> Option<i64> {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| compile(r"^(?:([0-9]{1,4})h)?(?:([0-9]{1,6})m)?$"));
    let caps = PATTERN.captures(text)?;
    if text.is_empty() {
        return None;
    }
    let part = |i: usize| caps.get(i).map_or(Some(0), |m| m.as_str().parse::<i64>().ok());
    Some(part(1)? * 3600 + part(2)? * 60)
}

/// `spec.shutdown` with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidShutdown {
    /// `SHUTDOWN_DRAIN_DELAY`, as given (or the default).
    pub drain_delay: String,
    /// `SHUTDOWN_TIMEOUT`, as given (or the default).
    pub timeout: String,
    /// The pod's `terminationGracePeriodSeconds` covering both.
    pub termination_grace_seconds: i64,
}

impl ValidatedService {
    /// In-cluster gRPC address of the Service.
    pub fn endpoint(&self) -> String {
        format!("{}.{}.svc:{}", self.name, self.namespace, self.port)
    }
}

/// One rule a field broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path in the object, in the API server's notation: `spec.services[1]`,
    /// `spec.podLabels[team]`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The spec is invalid; nothing may be applied until it changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec {
    /// Every violation found, in field order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl InvalidSpec {
    /// Bounded label for metrics and events.
    pub fn category(&self) -> &'static str {
        "invalid_spec"
    }
}

/// Where the validated object comes from, for the two fields the API server
/// normally fills in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the API server: namespace and uid must be present.
    Cluster,
    /// A manifest read offline by `render`: a missing namespace means
    /// `default` (as `kubectl apply` would), and there is no uid yet.
    Manifest,
}

static SERVICE_NAME: LazyLock<Regex> = LazyLock::new(|| compile(SERVICE_NAME_PATTERN));
static DNS1035_LABEL: LazyLock<Regex> = LazyLock::new(|| compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"));
static DNS1123_LABEL: LazyLock<Regex> = LazyLock::new(|| compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));
static DNS_NAME: LazyLock<Regex> = LazyLock::new(|| compile(crate::api::v1alpha1::DNS_NAME_PATTERN));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| compile(DNS1123_SUBDOMAIN_PATTERN));
static QUALIFIED_NAME: LazyLock<Regex> =
    LazyLock::new(|| compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"));
static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| compile(crate::api::v1alpha1::HEADER_NAME_PATTERN));
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"));

/// The patterns are literals covered by the unit tests, so failing to compile
/// one is a programming error caught before release.
fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static regex compiles")
}

/// Kubernetes limits pod annotations to 256 KiB in total.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Validates `obj` and applies every default.
pub fn validate(obj: &GrpcService, origin: Origin) -> Result<ValidatedService, InvalidSpec> {
    let mut errs = Errors::default();
    let meta = &obj.metadata;
    let spec = &obj.spec;

    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name", "Required value");
    } else if name.len() > 63 || !DNS1035_LABEL.is_match(&name) {
        errs.push(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: must be a DNS-1035 label (at most 63 lowercase letters, digits or '-', starting with a letter), because the Service is named after it"
            ),
        );
    }
    let namespace = match (&meta.namespace, origin) {
        (Some(ns), _) if !ns.is_empty() => ns.clone(),
        (_, Origin::Manifest) => "default".to_owned(),
        (_, Origin::Cluster) => {
            errs.push("metadata.namespace", "Required value");
            String::new()
        }
    };
    let uid = meta.uid.clone().filter(|u| !u.is_empty());
    if origin == Origin::Cluster && uid.is_none() {
        errs.push("metadata.uid", "Required value: the object must come from the API server");
    }

    let image = spec.image.trim();
    if image.is_empty() {
        errs.push("spec.image", "Required value");
    } else if image.len() != spec.image.len() || image.chars().any(char::is_whitespace) {
        errs.push("spec.image", format!("Invalid value: {:?}: must not contain whitespace", spec.image));
    } else if image.len() > 1024 {
        errs.push("spec.image", "Too long: may not be more than 1024 bytes");
    }

    for (i, secret) in spec.image_pull_secrets.iter().enumerate() {
        if !DNS1123_SUBDOMAIN.is_match(&secret.name) || secret.name.len() > 253 {
            errs.push(
                format!("spec.imagePullSecrets[{i}].name"),
                format!(
                    "Invalid value: {:?}: must be the name of a Secret (a DNS-1123 subdomain)",
                    secret.name
                ),
            );
        }
    }

    if let Some(replicas) = spec.replicas
        && !(0..=MAX_REPLICAS).contains(&replicas)
    {
        errs.push(
            "spec.replicas",
            format!("Invalid value: {replicas}: must be between 0 and {MAX_REPLICAS}"),
        );
    }
    let autoscaling = spec.autoscaling.as_ref().map(|a| check_autoscaling(&mut errs, spec, a));
    let disruption = check_disruption(&mut errs, spec, autoscaling.as_ref());
    let shutdown = check_shutdown(&mut errs, spec.shutdown.as_ref());
    let tls = check_tls(&mut errs, spec.tls.as_ref(), &namespace);
    // Checked also when disabled, as the CRD's rules are: a section that
    // `render` accepts is one the API server accepts.
    let grpc_web = spec
        .grpc_web
        .as_ref()
        .map(|w| (w.enabled, check_grpc_web(&mut errs, spec, w, &tls)))
        .and_then(|(enabled, w)| enabled.then_some(w));
    let monitoring = check_monitoring(&mut errs, spec.monitoring.as_ref(), &namespace);
    check_port(&mut errs, "spec.port", spec.port);
    check_port(&mut errs, "spec.adminPort", spec.admin_port);
    if spec.port == spec.admin_port {
        errs.push(
            "spec.adminPort",
            format!("Invalid value: {}: port and adminPort must differ", spec.admin_port),
        );
    }

    if spec.services.is_empty() {
        errs.push("spec.services", "Required value: at least one fully-qualified gRPC service name");
    }
    let mut seen = BTreeSet::new();
    for (i, svc) in spec.services.iter().enumerate() {
        let path = format!("spec.services[{i}]");
        if svc.len() > 253 || !SERVICE_NAME.is_match(svc) {
            errs.push(
                path,
                format!(
                    "Invalid value: {svc:?}: must be a fully-qualified gRPC service name such as user.v1.UserService"
                ),
            );
        } else if !seen.insert(svc.as_str()) {
            errs.push(path, format!("Duplicate value: {svc:?}"));
        }
    }

    let mut env_names = BTreeSet::new();
    for (i, var) in spec.env.iter().enumerate() {
        let path = format!("spec.env[{i}].name");
        if var.name.is_empty() {
            errs.push(path, "Required value");
        } else if var.name.contains('=') || var.name.chars().any(|c| !(' '..='~').contains(&c)) {
            errs.push(
                path,
                format!(
                    "Invalid value: {:?}: must consist of printable ASCII characters except '='",
                    var.name
                ),
            );
        } else if RESERVED_ENV.contains(&var.name.as_str()) {
            errs.push(
                path,
                format!("Forbidden: {:?} is part of the workload contract and set by the operator", var.name),
            );
        } else if !env_names.insert(var.name.as_str()) {
            errs.push(path, format!("Duplicate value: {:?}", var.name));
        }
        if var.value.as_deref().is_some_and(|v| !v.is_empty()) && var.value_from.is_some() {
            errs.push(
                format!("spec.env[{i}].valueFrom"),
                "Invalid value: may not be specified when `value` is not empty",
            );
        }
    }

    if let Some(sa) = &spec.service_account_name
        && (sa.len() > 253 || !DNS1123_SUBDOMAIN.is_match(sa))
    {
        errs.push("spec.serviceAccountName", format!("Invalid value: {sa:?}: must be a DNS-1123 subdomain"));
    }

    let mut annotation_bytes = 0;
    for (key, value) in &spec.pod_annotations {
        check_qualified_key(&mut errs, &format!("spec.podAnnotations[{key}]"), key);
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        errs.push("spec.podAnnotations", "Too long: must have at most 262144 bytes");
    }
    for (key, value) in &spec.pod_labels {
        let path = format!("spec.podLabels[{key}]");
        check_qualified_key(&mut errs, &path, key);
        if RESERVED_POD_LABELS.contains(&key.as_str()) {
            errs.push(path.clone(), format!("Forbidden: {key:?} is a selector label set by the operator"));
        }
        if value.len() > 63 || !LABEL_VALUE.is_match(value) {
            errs.push(
                path,
                format!(
                    "Invalid value: {value:?}: a label value must be at most 63 characters: letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                ),
            );
        }
    }

    // Canonical quantities, as the API server will store them: otherwise the
    // drift check sees `0.5` against a stored `500m` (see `quantity`).
    let resources = canonical_resources(&mut errs, "spec.resources", spec.resources.as_ref());

    errs.into_result()?;
    let service_account = spec.service_account_name.clone().unwrap_or_else(|| name.clone());
    Ok(ValidatedService {
        name,
        namespace,
        uid,
        generation: meta.generation.unwrap_or(0),
        image: spec.image.clone(),
        image_pull_policy: spec.image_pull_policy,
        image_pull_secrets: spec.image_pull_secrets.clone(),
        replicas: spec.replicas,
        autoscaling,
        disruption,
        shutdown,
        port: spec.port,
        admin_port: spec.admin_port,
        services: spec.services.clone(),
        env: spec.env.clone(),
        resources,
        service_account,
        creates_service_account: spec.service_account_name.is_none(),
        tls,
        grpc_web,
        monitoring,
        pod_annotations: spec.pod_annotations.clone(),
        pod_labels: spec.pod_labels.clone(),
    })
}

fn check_autoscaling(
    errs: &mut Errors,
    spec: &crate::api::GrpcServiceSpec,
    a: &crate::api::Autoscaling,
) -> ValidAutoscaling {
    if spec.replicas.is_some() {
        errs.push(
            "spec.autoscaling",
            "Forbidden: replicas and autoscaling are mutually exclusive: with autoscaling, the HorizontalPodAutoscaler sets the replica count",
        );
    }
    let min = a.min_replicas.unwrap_or(1);
    for (path, v) in [("spec.autoscaling.minReplicas", min), ("spec.autoscaling.maxReplicas", a.max_replicas)]
    {
        if !(1..=MAX_REPLICAS).contains(&v) {
            errs.push(path, format!("Invalid value: {v}: must be between 1 and {MAX_REPLICAS}"));
        }
    }
    if min > a.max_replicas {
        errs.push(
            "spec.autoscaling.minReplicas",
            format!("Invalid value: {min}: may not be greater than maxReplicas ({})", a.max_replicas),
        );
    }
    let (mut cpu, memory) = (a.target_cpu_utilization_percentage, a.target_memory_utilization_percentage);
    if cpu.is_none() && memory.is_none() {
        cpu = Some(DEFAULT_CPU_UTILIZATION);
    }
    for (path, v) in [
        ("spec.autoscaling.targetCPUUtilizationPercentage", cpu),
        ("spec.autoscaling.targetMemoryUtilizationPercentage", memory),
    ] {
        if let Some(v) = v
            && !(1..=1000).contains(&v)
        {
            errs.push(path, format!("Invalid value: {v}: must be between 1 and 1000"));
        }
    }
    // Utilization is a percentage of the container's request: without one the
    // HPA reports "missing request" and never scales.
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    for (resource, target, field) in [
        ("cpu", cpu, "targetCPUUtilizationPercentage"),
        ("memory", memory, "targetMemoryUtilizationPercentage"),
    ] {
        if target.is_some() && !requests.is_some_and(|r| r.contains_key(resource)) {
            let default_note = if field == "targetCPUUtilizationPercentage"
                && a.target_cpu_utilization_percentage.is_none()
            {
                format!(
                    " (the default target, {DEFAULT_CPU_UTILIZATION}% CPU, applies when no target is set)"
                )
            } else {
                String::new()
            };
            errs.push(
                format!("spec.resources.requests.{resource}"),
                format!(
                    "Required value: autoscaling.{field} is a percentage of the {resource} request{default_note}"
                ),
            );
        }
    }
    ValidAutoscaling {
        min_replicas: min,
        max_replicas: a.max_replicas,
        cpu_utilization: cpu,
        memory_utilization: memory,
    }
}

/// The budget to create: the spec's, or `maxUnavailable: 1` when the service
/// is known to run at least 2 pods. With `replicas` unset and no autoscaling
/// the count is someone else's, so no default budget is created.
fn check_disruption(
    errs: &mut Errors,
    spec: &crate::api::GrpcServiceSpec,
    autoscaling: Option<&ValidAutoscaling>,
) -> Option<DisruptionBudget> {
    if let Some(d) = &spec.disruption {
        let budget = match (&d.min_available, &d.max_unavailable) {
            (Some(v), None) => {
                Some(("spec.disruption.minAvailable", DisruptionBudget::MinAvailable(v.clone())))
            }
            (None, Some(v)) => {
                Some(("spec.disruption.maxUnavailable", DisruptionBudget::MaxUnavailable(v.clone())))
            }
            _ => {
                errs.push(
                    "spec.disruption",
                    "Invalid value: set exactly one of minAvailable and maxUnavailable",
                );
                None
            }
        };
        let (path, budget) = budget?;
        let value = match &budget {
            DisruptionBudget::MinAvailable(v) | DisruptionBudget::MaxUnavailable(v) => v,
        };
        match value {
            IntOrString::Int(n) if *n < 0 => {
                errs.push(path, format!("Invalid value: {n}: must be greater than or equal to 0"))
            }
            IntOrString::String(p) if !is_percentage(p) => errs.push(
                path,
                format!("Invalid value: {p:?}: must be a number or a percentage between 0% and 100%"),
            ),
            _ => {}
        }
        return Some(budget);
    }
    let pods = match (spec.replicas, autoscaling) {
        (Some(n), _) => n,
        (None, Some(a)) => a.min_replicas,
        (None, None) => 0,
    };
    (pods >= 2).then_some(DisruptionBudget::MaxUnavailable(IntOrString::Int(1)))
}

fn is_percentage(p: &str) -> bool {
    p.strip_suffix('%')
        .filter(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n <= 100)
}

fn check_shutdown(errs: &mut Errors, shutdown: Option<&crate::api::Shutdown>) -> ValidShutdown {
    let field = |path: &str, value: Option<&String>, default: &str, errs: &mut Errors| {
        let text = value.cloned().unwrap_or_else(|| default.to_owned());
        match parse_duration_ms(&text) {
            Ok(ms) => (text, ms),
            Err(e) => {
                errs.push(path, format!("Invalid value: {text:?}: {}", e.reason()));
                (text, 0)
            }
        }
    };
    let (drain_delay, drain_ms) = field(
        "spec.shutdown.drainDelay",
        shutdown.and_then(|s| s.drain_delay.as_ref()),
        DEFAULT_DRAIN_DELAY,
        errs,
    );
    let (timeout, timeout_ms) =
        field("spec.shutdown.timeout", shutdown.and_then(|s| s.timeout.as_ref()), DEFAULT_TIMEOUT, errs);
    let grace = termination_grace_seconds(drain_ms, timeout_ms);
    ValidShutdown {
        drain_delay,
        timeout,
        termination_grace_seconds: i64::try_from(grace).unwrap_or(i64::MAX),
    }
}

fn check_tls(errs: &mut Errors, tls: Option<&crate::api::Tls>, namespace: &str) -> ValidTls {
    // A missing section is mutual TLS: a schema default inside `tls` does
    // not apply when `tls` itself is absent.
    let default = crate::api::Tls::default();
    let tls = tls.unwrap_or(&default);
    let mode = tls.mode.unwrap_or(TlsMode::Mutual);
    let duration = |path: &str, value: &Option<String>, errs: &mut Errors| {
        value.as_ref().and_then(|v| match parse_cert_duration(v) {
            Some(s) => Some(s),
            None => {
                errs.push(
                    path,
                    format!("Invalid value: {v:?}: must be hours and/or minutes such as 720h, 1h30m or 90m"),
                );
                None
            }
        })
    };
    let duration_seconds =
        duration("spec.tls.duration", &tls.duration, errs).unwrap_or(DEFAULT_CERT_DURATION_SECONDS);
    if !(MIN_CERT_DURATION_SECONDS..=MAX_CERT_DURATION_SECONDS).contains(&duration_seconds) {
        errs.push(
            "spec.tls.duration",
            format!(
                "Invalid value: {:?}: must be between 1h and 8760h",
                tls.duration.clone().unwrap_or_default()
            ),
        );
    }
    let renew_before_seconds =
        duration("spec.tls.renewBefore", &tls.renew_before, errs).unwrap_or(duration_seconds / 3);
    if tls.renew_before.is_some() && (renew_before_seconds >= duration_seconds || renew_before_seconds <= 0) {
        errs.push(
            "spec.tls.renewBefore",
            format!(
                "Invalid value: {:?}: must be more than 0 and less than duration",
                tls.renew_before.clone().unwrap_or_default()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, n) in tls.dns_names.iter().enumerate() {
        let path = format!("spec.tls.dnsNames[{i}]");
        if n.len() > 253 || !DNS_NAME.is_match(n) {
            errs.push(
                path,
                format!("Invalid value: {n:?}: must be a lower-case DNS name, optionally starting with *."),
            );
        } else if !seen.insert(n.as_str()) {
            errs.push(path, format!("Duplicate value: {n:?}"));
        }
    }
    let mut allowed_clients = Vec::with_capacity(tls.allowed_clients.len());
    for (i, c) in tls.allowed_clients.iter().enumerate() {
        let path = format!("spec.tls.allowedClients[{i}]");
        match (&c.spiffe_id, &c.name) {
            (Some(id), None) => {
                if c.namespace.is_some() {
                    errs.push(format!("{path}.namespace"), "Forbidden: namespace goes with name");
                }
                match grpc_contract::spiffe::check_pattern(id) {
                    Ok(()) => allowed_clients.push(ValidAllowedClient::Pattern(id.clone())),
                    Err(e) => errs
                        .push(format!("{path}.spiffeId"), format!("Invalid value: {id:?}: {}", e.reason())),
                }
            }
            (None, Some(name)) => {
                let ns = c.namespace.clone().unwrap_or_else(|| namespace.to_owned());
                if !DNS1035_LABEL.is_match(name) || name.len() > 63 {
                    errs.push(
                        format!("{path}.name"),
                        format!("Invalid value: {name:?}: must be the name of a GrpcService"),
                    );
                } else if !DNS1123_LABEL.is_match(&ns) || ns.len() > 63 {
                    errs.push(
                        format!("{path}.namespace"),
                        format!("Invalid value: {ns:?}: must be a namespace name"),
                    );
                } else {
                    allowed_clients.push(ValidAllowedClient::Service { namespace: ns, name: name.clone() });
                }
            }
            _ => errs.push(path, "Invalid value: set exactly one of spiffeId and name"),
        }
    }
    if !tls.allowed_clients.is_empty() && mode != TlsMode::Mutual {
        errs.push(
            "spec.tls.allowedClients",
            format!("Forbidden: allowedClients needs mode mutual (mode is {}): only client certificates identify callers", mode.as_str()),
        );
    }
    if tls.issuer_ref.is_some() && mode == TlsMode::Disabled {
        errs.push("spec.tls.issuerRef", "Forbidden: issuerRef needs TLS: mode may not be disabled");
    }
    ValidTls {
        mode,
        duration_seconds,
        renew_before_seconds,
        dns_names: tls.dns_names.clone(),
        rotate_key: tls.private_key_rotation != Some(crate::api::PrivateKeyRotation::Never),
        allowed_clients,
        issuer_ref: tls.issuer_ref.clone(),
    }
}

/// Resource requirements with canonical quantities, as the API server will
/// store them: otherwise the drift check sees `0.5` against a stored `500m`
/// (see `quantity`).
fn canonical_resources(
    errs: &mut Errors,
    path: &str,
    resources: Option<&ResourceRequirements>,
) -> Option<ResourceRequirements> {
    let mut resources = resources.cloned();
    if let Some(r) = resources.as_mut() {
        for (field, map) in [("limits", r.limits.as_mut()), ("requests", r.requests.as_mut())] {
            for (name, q) in map.into_iter().flatten() {
                match super::quantity::canonical(&q.0) {
                    Ok(c) => q.0 = c,
                    Err(e) => {
                        errs.push(format!("{path}.{field}[{name}]"), format!("Invalid value: {:?}: {e}", q.0))
                    }
                }
            }
        }
    }
    resources
}

/// A stream duration (`0s`, `90s`, `30m`, `1h30m`), in seconds.
pub fn parse_stream_duration(text: &str) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, factor) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return None,
        };
        if digits.is_empty() || rank <= last_unit {
            return None;
        }
        total = total.checked_add(digits.parse::<i64>().ok()?.checked_mul(factor)?)?;
        digits.clear();
        last_unit = rank;
    }
    digits.is_empty().then_some(total)
}

fn check_grpc_web(
    errs: &mut Errors,
    spec: &crate::api::GrpcServiceSpec,
    web: &crate::api::GrpcWeb,
    tls: &ValidTls,
) -> ValidGrpcWeb {
    let mode = web.mode.unwrap_or(GrpcWebMode::Sidecar);
    let mut list = Vec::with_capacity(web.allowed_origins.len());
    let mut seen = BTreeSet::new();
    for (i, origin) in web.allowed_origins.iter().enumerate() {
        let path = format!("spec.grpcWeb.allowedOrigins[{i}]");
        if origin == "*" {
            if !web.allow_any_origin {
                errs.push(
                    path,
                    "Forbidden: * lets every web site call the service: it needs allowAnyOrigin: true",
                );
            }
        } else if let Err(e) = grpc_contract::web::check_origin_pattern(origin) {
            errs.push(path, format!("Invalid value: {origin:?}: {}", e.reason()));
        } else if !seen.insert(origin.to_ascii_lowercase()) {
            errs.push(path, format!("Duplicate value: {origin:?}"));
        } else {
            list.push(origin.clone());
        }
    }
    if web.enabled && web.allowed_origins.is_empty() && !web.allow_any_origin {
        errs.push(
            "spec.grpcWeb.allowedOrigins",
            "Required value: at least one origin when gRPC-Web is enabled (or allowAnyOrigin: true)",
        );
    }
    let origins = if web.allow_any_origin { Origins::Any } else { Origins::List(list) };
    let port = web.port.unwrap_or(crate::api::v1alpha1::DEFAULT_GRPC_WEB_PORT);
    check_port(errs, "spec.grpcWeb.port", port);
    if web.enabled && (port == spec.port || port == spec.admin_port) {
        errs.push(
            "spec.grpcWeb.port",
            format!("Invalid value: {port}: must differ from port and adminPort: all three are ports of the Service"),
        );
    }
    if web.enabled && mode == GrpcWebMode::Sidecar {
        for (path, p) in
            [("spec.port", spec.port), ("spec.adminPort", spec.admin_port), ("spec.grpcWeb.port", port)]
        {
            if p == ENVOY_ADMIN_PORT || p == ENVOY_METRICS_PORT {
                errs.push(
                    path,
                    format!("Invalid value: {p}: the gRPC-Web sidecar uses {ENVOY_ADMIN_PORT} (Envoy admin) and {ENVOY_METRICS_PORT} (envoy-metrics)"),
                );
            }
        }
    }
    if web.enabled && mode == GrpcWebMode::Native && tls.mode == TlsMode::Mutual {
        errs.push(
            "spec.grpcWeb.mode",
            "Forbidden: native needs tls.mode server or disabled: browsers present no client certificate (or use mode sidecar)",
        );
    }
    let max_stream_duration_seconds = match &web.max_stream_duration {
        None => 0,
        Some(text) => parse_stream_duration(text).unwrap_or_else(|| {
            errs.push(
                "spec.grpcWeb.maxStreamDuration",
                format!("Invalid value: {text:?}: must be hours, minutes and seconds such as 0s, 90s, 30m or 1h30m"),
            );
            0
        }),
    };
    let envoy = web.envoy.as_ref();
    if mode == GrpcWebMode::Native {
        if envoy.is_some() {
            errs.push("spec.grpcWeb.envoy", "Forbidden: envoy configures the sidecar: it needs mode sidecar");
        }
        if web.browser_tls.is_some() {
            errs.push(
                "spec.grpcWeb.browserTLS",
                "Forbidden: browserTLS terminates TLS at the Envoy sidecar: it needs mode sidecar",
            );
        }
    }
    let envoy_image = envoy.and_then(|e| e.image.clone());
    if let Some(image) = &envoy_image
        && (image.trim().is_empty() || image.chars().any(char::is_whitespace) || image.len() > 1024)
    {
        errs.push(
            "spec.grpcWeb.envoy.image",
            format!("Invalid value: {image:?}: must be a non-empty image reference without whitespace"),
        );
    }
    let envoy_resources =
        canonical_resources(errs, "spec.grpcWeb.envoy.resources", envoy.and_then(|e| e.resources.as_ref()));
    let mut headers = BTreeSet::new();
    for (i, h) in web.allowed_headers.iter().enumerate() {
        let path = format!("spec.grpcWeb.allowedHeaders[{i}]");
        if h.is_empty() || h.len() > 128 || !HEADER_NAME.is_match(h) {
            errs.push(path, format!("Invalid value: {h:?}: must be a lower-case HTTP header name"));
        } else if !headers.insert(h.as_str()) {
            errs.push(path, format!("Duplicate value: {h:?}"));
        }
    }
    if !web.allowed_headers.is_empty() && mode == GrpcWebMode::Native {
        errs.push(
            "spec.grpcWeb.allowedHeaders",
            "Forbidden: allowedHeaders configures the sidecar's CORS policy: it needs mode sidecar",
        );
    }
    let browser_tls_secret = web.browser_tls.as_ref().map(|b| b.secret_name.clone());
    if let Some(name) = &browser_tls_secret
        && (name.len() > 253 || !DNS1123_SUBDOMAIN.is_match(name))
    {
        errs.push(
            "spec.grpcWeb.browserTLS.secretName",
            format!("Invalid value: {name:?}: must be the name of a Secret (a DNS-1123 subdomain)"),
        );
    }
    ValidGrpcWeb {
        mode,
        origins,
        port,
        max_stream_duration_seconds,
        envoy_image,
        envoy_resources,
        browser_tls_secret,
        allowed_headers: web.allowed_headers.clone(),
    }
}

/// Labels the operator sets on every child; monitoring labels may not
/// replace them.
const OPERATOR_LABELS: [&str; 3] = [
    crate::children::labels::NAME_LABEL,
    crate::children::labels::MANAGED_BY_LABEL,
    crate::children::labels::SERVICE_LABEL,
];

fn check_labels(errs: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        let path = format!("{path}[{key}]");
        check_qualified_key(errs, &path, key);
        if OPERATOR_LABELS.contains(&key.as_str()) {
            errs.push(path.clone(), format!("Forbidden: {key:?} is set by the operator"));
        }
        if value.len() > 63 || !LABEL_VALUE.is_match(value) {
            errs.push(
                path,
                format!(
                    "Invalid value: {value:?}: a label value must be at most 63 characters: letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                ),
            );
        }
    }
}

/// A monitoring duration (`30s`, `5m`, `1h30m`) in seconds.
pub fn parse_prometheus_duration(text: &str) -> Option<i64> {
    static PATTERN: LazyLock<Regex> =
        LazyLock::new(|| compile(crate::api::v1alpha1::PROMETHEUS_DURATION_PATTERN));
    if text.len() < 2 || !PATTERN.is_match(text) {
        return None;
    }
    parse_stream_duration(text)
}

fn check_monitoring(
    errs: &mut Errors,
    spec: Option<&crate::api::Monitoring>,
    namespace: &str,
) -> crate::monitoring::ValidMonitoring {
    use crate::monitoring::{
        self as mon, ValidAlerts, ValidDashboard, ValidMonitoring, ValidServiceMonitor, ValidSlo,
    };
    let Some(spec) = spec else { return ValidMonitoring::default() };
    check_labels(errs, "spec.monitoring.labels", &spec.labels);
    let with = |own: &BTreeMap<String, String>| {
        let mut all = spec.labels.clone();
        all.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    };
    let duration = |errs: &mut Errors, path: &str, value: &str| {
        let seconds = parse_prometheus_duration(value);
        if seconds.is_none() {
            errs.push(
                path,
                format!("Invalid value: {value:?}: must be hours, minutes and seconds in that order, such as 30s, 5m or 1h30m"),
            );
        }
        seconds
    };

    let sm = spec.service_monitor.clone().unwrap_or_default();
    check_labels(errs, "spec.monitoring.serviceMonitor.labels", &sm.labels);
    let interval = sm.interval.clone().unwrap_or_else(|| mon::DEFAULT_INTERVAL.to_owned());
    let interval_seconds = duration(errs, "spec.monitoring.serviceMonitor.interval", &interval);
    if interval_seconds.is_some_and(|s| !(1..=120).contains(&s)) {
        errs.push(
            "spec.monitoring.serviceMonitor.interval",
            format!("Invalid value: {interval:?}: must be between 1s and 2m: the alerts' 5-minute rates need at least two samples"),
        );
    }
    if let Some(timeout) = &sm.scrape_timeout {
        let t = duration(errs, "spec.monitoring.serviceMonitor.scrapeTimeout", timeout);
        if let (Some(t), Some(i)) = (t, interval_seconds)
            && (t < 1 || t > i)
        {
            errs.push(
                "spec.monitoring.serviceMonitor.scrapeTimeout",
                format!("Invalid value: {timeout:?}: must be at least 1s and at most interval ({interval}): Prometheus refuses a timeout longer than the interval"),
            );
        }
    }
    let service_monitor = sm.enabled.unwrap_or(true).then(|| ValidServiceMonitor {
        interval: interval.clone(),
        scrape_timeout: sm.scrape_timeout.clone(),
        labels: with(&sm.labels),
    });

    let a = spec.alerts.clone().unwrap_or_default();
    check_labels(errs, "spec.monitoring.alerts.labels", &a.labels);
    let error_rate_percent = a.error_rate_percent.unwrap_or(mon::DEFAULT_ERROR_RATE_PERCENT);
    if !(0.01..=100.0).contains(&error_rate_percent) {
        errs.push(
            "spec.monitoring.alerts.errorRatePercent",
            format!("Invalid value: {error_rate_percent}: must be between 0.01 and 100"),
        );
    }
    let latency = a.latency_p99_seconds.unwrap_or(mon::DEFAULT_LATENCY_P99_SECONDS);
    if !(0.005..=crate::api::v1alpha1::MAX_LATENCY_P99_SECONDS).contains(&latency) {
        errs.push(
            "spec.monitoring.alerts.latencyP99Seconds",
            format!("Invalid value: {latency}: must be between 0.005 and 10, the largest finite bucket of grpc_server_handling_seconds"),
        );
    }
    let for_ = a.for_.clone().unwrap_or_else(|| mon::DEFAULT_FOR.to_owned());
    duration(errs, "spec.monitoring.alerts.for", &for_);
    let severity = a.severity.clone().unwrap_or_default();
    let page = severity.page.unwrap_or_else(|| mon::DEFAULT_PAGE_SEVERITY.to_owned());
    let ticket = severity.ticket.unwrap_or_else(|| mon::DEFAULT_TICKET_SEVERITY.to_owned());
    for (path, value) in [("page", &page), ("ticket", &ticket)] {
        if value.is_empty() || value.len() > 63 || !LABEL_VALUE.is_match(value) {
            errs.push(
                format!("spec.monitoring.alerts.severity.{path}"),
                format!("Invalid value: {value:?}: must be a label value (letters, digits, '-', '_' or '.')"),
            );
        }
    }
    let runbook = a.runbook_base_url.clone().unwrap_or_else(|| mon::DEFAULT_RUNBOOK_BASE_URL.to_owned());
    if !(runbook.starts_with("https://") || runbook.starts_with("http://"))
        || runbook.chars().any(|c| c.is_whitespace() || c == '{' || c == '}')
        || runbook.len() > 512
    {
        errs.push(
            "spec.monitoring.alerts.runbookBaseURL",
            format!("Invalid value: {runbook:?}: must be an http(s) URL without spaces or braces (annotations are templates)"),
        );
    }
    let alerts_enabled = a.enabled.unwrap_or(true);
    let slo = spec.slo.as_ref().map(|slo| {
        let objective = slo.objective.unwrap_or(mon::DEFAULT_SLO_OBJECTIVE);
        if !(90.0..=99.999).contains(&objective) {
            errs.push(
                "spec.monitoring.slo.objective",
                format!("Invalid value: {objective}: must be between 90 and 99.999"),
            );
        }
        let window = slo.window.clone().unwrap_or_else(|| format!("{}d", mon::DEFAULT_SLO_WINDOW_DAYS));
        let window_days = window
            .strip_suffix('d')
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|d| (7..=90).contains(d) && !window.starts_with('0'));
        if window_days.is_none() {
            errs.push(
                "spec.monitoring.slo.window",
                format!("Invalid value: {window:?}: must be whole days from 7d to 90d"),
            );
        }
        let v = ValidSlo { objective, window_days: window_days.unwrap_or(mon::DEFAULT_SLO_WINDOW_DAYS) };
        let fastest = mon::BURN_WINDOWS[0].factor(v.window_days) * v.budget();
        if window_days.is_some() && fastest >= 1.0 {
            errs.push(
                "spec.monitoring.slo.objective",
                format!(
                    "Invalid value: {objective}: too low for window {window}: the 1h page alert (2% of the error budget in an hour) would need {}% errors and could never fire; raise objective or shorten window",
                    mon::number(fastest * 100.0)
                ),
            );
        }
        if !alerts_enabled {
            errs.push("spec.monitoring.slo", "Forbidden: slo needs alerts: its burn-rate alerts are part of the PrometheusRule");
        }
        v
    });
    let alerts = alerts_enabled.then(|| ValidAlerts {
        error_rate_percent,
        latency_p99_seconds: latency,
        for_,
        page_severity: page,
        ticket_severity: ticket,
        runbook_base_url: runbook,
        labels: with(&a.labels),
        slo,
    });
    let dashboard = spec
        .dashboard
        .as_ref()
        .filter(|d| d.enabled)
        .map(|d| ValidDashboard { folder: d.folder.clone().unwrap_or_else(|| namespace.to_owned()) });
    ValidMonitoring { labels: spec.labels.clone(), service_monitor, alerts, dashboard }
}

fn check_port(errs: &mut Errors, path: &str, port: i32) {
    if !(1..=65535).contains(&port) {
        errs.push(path, format!("Invalid value: {port}: must be between 1 and 65535"));
    }
}

/// A label or annotation key: an optional DNS-1123 subdomain prefix and `/`,
/// then a name of at most 63 characters.
fn check_qualified_key(errs: &mut Errors, path: &str, key: &str) {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && DNS1123_SUBDOMAIN.is_match(p));
    let name_ok = name.len() <= 63 && QUALIFIED_NAME.is_match(name);
    if !prefix_ok || !name_ok {
        errs.push(
            path,
            format!(
                "Invalid value: {key:?}: must be a qualified name: an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ),
        );
    }
}

/// Accumulates every violation so that one round trip shows them all.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), reason: reason.into() });
    }

    fn into_result(self) -> Result<(), InvalidSpec> {
        if self.0.is_empty() { Ok(()) } else { Err(InvalidSpec { errors: self.0 }) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::GrpcServiceSpec;
    use kube::api::ObjectMeta;

    /// A valid GrpcService as the API server would hand it to the controller.
    pub(crate) fn sample() -> GrpcService {
        let mut obj = GrpcService::new(
            "user-service",
            GrpcServiceSpec {
                image: "registry.example.com/shop/user-service:1.4.2".into(),
                image_pull_policy: None,
                image_pull_secrets: vec![],
                replicas: Some(2),
                autoscaling: None,
                disruption: None,
                shutdown: None,
                port: 50051,
                admin_port: 9090,
                services: vec!["user.v1.UserService".into()],
                env: vec![],
                resources: None,
                tls: None,
                grpc_web: None,
                monitoring: None,
                service_account_name: None,
                pod_annotations: BTreeMap::new(),
                pod_labels: BTreeMap::new(),
            },
        );
        obj.metadata = ObjectMeta {
            name: Some("user-service".into()),
            namespace: Some("shop".into()),
            uid: Some("0b9e4f1c-5f1e-4a7a-9d43-1f0f3c2a7b10".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        obj
    }

    fn paths(err: &InvalidSpec) -> Vec<&str> {
        err.errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn valid_object_keeps_its_identity_and_spec() {
        let v = validate(&sample(), Origin::Cluster).expect("valid");
        assert_eq!(v.name, "user-service");
        assert_eq!(v.namespace, "shop");
        assert_eq!(v.generation, 3);
        assert_eq!(v.replicas, Some(2));
        assert_eq!(v.disruption, Some(DisruptionBudget::MaxUnavailable(IntOrString::Int(1))));
        assert_eq!(v.shutdown.termination_grace_seconds, 40);
        assert_eq!(v.endpoint(), "user-service.shop.svc:50051");
    }

    #[test]
    fn resource_quantities_are_canonical_and_malformed_ones_name_their_field() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut obj = sample();
        obj.spec.resources = Some(ResourceRequirements {
            requests: Some(
                [("cpu".to_owned(), Quantity("0.5".into())), ("memory".to_owned(), Quantity("1.5Gi".into()))]
                    .into(),
            ),
            limits: Some([("cpu".to_owned(), Quantity("10000".into()))].into()),
            ..ResourceRequirements::default()
        });
        let v = validate(&obj, Origin::Cluster).expect("valid");
        let r = v.resources.expect("resources");
        let requests = r.requests.expect("requests");
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("500m", "1536Mi"));
        assert_eq!(r.limits.expect("limits")["cpu"].0, "10k");

        obj.spec.resources = Some(ResourceRequirements {
            limits: Some([("memory".to_owned(), Quantity("lots".into()))].into()),
            ..ResourceRequirements::default()
        });
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(paths(&err), vec!["spec.resources.limits[memory]"]);
    }

    #[test]
    fn spec_defaults_come_from_the_schema_when_fields_are_omitted() {
        let obj: GrpcService = serde_json::from_value(serde_json::json!({
            "apiVersion": "grpcoperator.io/v1alpha1", "kind": "GrpcService",
            "metadata": {"name": "a", "namespace": "n", "uid": "u"},
            "spec": {"image": "img:1", "services": ["a.v1.A"]}
        }))
        .expect("parses");
        let v = validate(&obj, Origin::Cluster).expect("valid");
        assert_eq!((v.replicas, v.port, v.admin_port), (None, 50051, 9090));
        assert_eq!(v.disruption, None, "the pod count is not known");
        assert_eq!((v.shutdown.drain_delay.as_str(), v.shutdown.timeout.as_str()), ("5s", "20s"));
    }

    #[test]
    fn every_violation_is_reported_with_its_field_path() {
        let mut obj = sample();
        obj.metadata.name = Some("User_Service".into());
        obj.spec.image = String::new();
        obj.spec.replicas = Some(1001);
        obj.spec.port = 70000;
        obj.spec.services = vec!["UserService".into(), "a.B".into(), "a.B".into()];
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(
            paths(&err),
            [
                "metadata.name",
                "spec.image",
                "spec.replicas",
                "spec.port",
                "spec.services[0]",
                "spec.services[2]"
            ]
        );
        assert!(err.to_string().contains("spec.services[2]: Duplicate value: \"a.B\""), "{err}");
    }

    #[test]
    fn autoscaling_excludes_replicas_and_needs_the_request_its_target_is_relative_to() {
        let mut obj = sample();
        obj.spec.autoscaling = Some(crate::api::Autoscaling {
            min_replicas: Some(3),
            max_replicas: 10,
            target_cpu_utilization_percentage: None,
            target_memory_utilization_percentage: Some(70),
        });
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(
            paths(&err),
            ["spec.autoscaling", "spec.resources.requests.memory"],
            "only memory is targeted: {err}"
        );
        obj.spec.replicas = None;
        obj.spec.autoscaling.as_mut().expect("set").target_memory_utilization_percentage = None;
        let err = validate(&obj, Origin::Cluster).expect_err("the default CPU target needs a CPU request");
        assert_eq!(paths(&err), ["spec.resources.requests.cpu"]);
        assert!(err.errors[0].reason.contains("80% CPU"), "{err}");

        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        obj.spec.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_owned(), Quantity("250m".into()))].into()),
            ..ResourceRequirements::default()
        });
        let v = validate(&obj, Origin::Cluster).expect("valid");
        let a = v.autoscaling.expect("autoscaling");
        assert_eq!(
            (a.min_replicas, a.max_replicas, a.cpu_utilization, a.memory_utilization),
            (3, 10, Some(80), None)
        );
        assert_eq!(
            v.disruption,
            Some(DisruptionBudget::MaxUnavailable(IntOrString::Int(1))),
            "minReplicas >= 2"
        );
    }

    #[test]
    fn disruption_budget_defaults_follow_the_pod_count_and_explicit_ones_are_checked() {
        let mut obj = sample();
        obj.spec.replicas = Some(1);
        assert_eq!(validate(&obj, Origin::Cluster).expect("valid").disruption, None);
        obj.spec.disruption = Some(crate::api::Disruption {
            min_available: Some(IntOrString::String("50%".into())),
            max_unavailable: None,
        });
        assert_eq!(
            validate(&obj, Origin::Cluster).expect("valid").disruption,
            Some(DisruptionBudget::MinAvailable(IntOrString::String("50%".into())))
        );
        obj.spec.disruption = Some(crate::api::Disruption {
            min_available: Some(IntOrString::String("150%".into())),
            max_unavailable: None,
        });
        assert_eq!(
            paths(&validate(&obj, Origin::Cluster).expect_err("invalid")),
            ["spec.disruption.minAvailable"]
        );
        obj.spec.disruption = Some(crate::api::Disruption {
            min_available: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(1)),
        });
        assert_eq!(paths(&validate(&obj, Origin::Cluster).expect_err("invalid")), ["spec.disruption"]);
    }

    #[test]
    fn shutdown_durations_use_the_runtimes_parser_and_set_the_grace_period() {
        let mut obj = sample();
        obj.spec.shutdown =
            Some(crate::api::Shutdown { drain_delay: Some("10s".into()), timeout: Some("1m".into()) });
        let v = validate(&obj, Origin::Cluster).expect("valid");
        assert_eq!(v.shutdown.termination_grace_seconds, 10 + 60 + 10 + 5);
        obj.spec.shutdown =
            Some(crate::api::Shutdown { drain_delay: Some("5".into()), timeout: Some("2h".into()) });
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(paths(&err), ["spec.shutdown.drainDelay", "spec.shutdown.timeout"]);
    }

    #[test]
    fn equal_ports_are_rejected_on_admin_port() {
        let mut obj = sample();
        obj.spec.admin_port = obj.spec.port;
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(paths(&err), ["spec.adminPort"]);
        assert!(err.errors[0].reason.contains("must differ"));
    }

    #[test]
    fn workload_contract_env_vars_cannot_be_overridden() {
        let mut obj = sample();
        obj.spec.env = vec![
            EnvVar { name: "FEATURE_X".into(), value: Some("1".into()), value_from: None },
            EnvVar { name: "GRPC_PORT".into(), value: Some("1".into()), value_from: None },
            EnvVar { name: "FEATURE_X".into(), value: Some("2".into()), value_from: None },
            EnvVar { name: "A=B".into(), value: None, value_from: None },
            EnvVar { name: "SHUTDOWN_TIMEOUT".into(), value: Some("1m".into()), value_from: None },
        ];
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(
            paths(&err),
            ["spec.env[1].name", "spec.env[2].name", "spec.env[3].name", "spec.env[4].name"]
        );
        assert!(err.errors[3].reason.contains("part of the workload contract"), "{err}");
        assert!(err.errors[0].reason.starts_with("Forbidden"));
    }

    #[test]
    fn selector_labels_and_malformed_keys_in_pod_labels_are_rejected() {
        let mut obj = sample();
        obj.spec.pod_labels = BTreeMap::from([
            ("grpcoperator.io/service".into(), "x".into()),
            ("team".into(), "not a valid value".into()),
            ("-bad".into(), "v".into()),
        ]);
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(
            paths(&err),
            ["spec.podLabels[-bad]", "spec.podLabels[grpcoperator.io/service]", "spec.podLabels[team]"]
        );
    }

    #[test]
    fn service_account_and_pull_secret_names_must_be_dns_subdomains() {
        let mut obj = sample();
        obj.spec.service_account_name = Some("Bad SA".into());
        obj.spec.image_pull_secrets =
            vec![LocalObjectReference { name: "ok".into() }, LocalObjectReference { name: "NO".into() }];
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(paths(&err), ["spec.imagePullSecrets[1].name", "spec.serviceAccountName"]);
    }

    #[test]
    fn manifest_without_namespace_or_uid_is_valid_offline_only() {
        let mut obj = sample();
        obj.metadata.namespace = None;
        obj.metadata.uid = None;
        let v = validate(&obj, Origin::Manifest).expect("valid offline");
        assert_eq!(v.namespace, "default");
        assert_eq!(v.uid, None);
        let err = validate(&obj, Origin::Cluster).expect_err("a stored object has both");
        assert_eq!(paths(&err), ["metadata.namespace", "metadata.uid"]);
    }

    #[test]
    fn static_patterns_compile_and_match_what_they_should() {
        assert!(SERVICE_NAME.is_match("user.v1.UserService"));
        assert!(!SERVICE_NAME.is_match("UserService"));
        assert!(DNS1035_LABEL.is_match("user-service"));
        assert!(!DNS1035_LABEL.is_match("1user"));
        assert!(DNS1123_SUBDOMAIN.is_match("a.b-c"));
        assert!(QUALIFIED_NAME.is_match("a_b.c-d"));
        assert!(LABEL_VALUE.is_match(""));
    }

    fn web(origins: &[&str]) -> crate::api::GrpcWeb {
        crate::api::GrpcWeb {
            enabled: true,
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn grpc_web_defaults_to_a_sidecar_on_8080_without_a_stream_limit() {
        let mut obj = sample();
        obj.spec.grpc_web = Some(web(&["https://app.example.com"]));
        let v = validate(&obj, Origin::Cluster).expect("valid").grpc_web.expect("enabled");
        assert_eq!((v.mode, v.port, v.max_stream_duration_seconds), (GrpcWebMode::Sidecar, 8080, 0));
        assert_eq!(v.origins, Origins::List(vec!["https://app.example.com".into()]));
        obj.spec.grpc_web = Some(crate::api::GrpcWeb { enabled: false, ..web(&[]) });
        assert_eq!(validate(&obj, Origin::Cluster).expect("valid").grpc_web, None, "disabled");
        obj.spec.grpc_web = Some(crate::api::GrpcWeb { enabled: false, ..web(&["*"]) });
        let err = validate(&obj, Origin::Cluster).expect_err("checked when disabled too, as the CRD does");
        assert_eq!(paths(&err), ["spec.grpcWeb.allowedOrigins[0]"]);
    }

    #[test]
    fn grpc_web_origins_ports_and_modes_are_checked_with_their_paths() {
        let mut obj = sample();
        obj.spec.grpc_web = Some(web(&[
            "*",
            "https://a.example.com/app",
            "https://a.*.com",
            "https://X.com",
            "https://x.com",
        ]));
        let err = validate(&obj, Origin::Cluster).expect_err("invalid");
        assert_eq!(
            paths(&err),
            [
                "spec.grpcWeb.allowedOrigins[0]",
                "spec.grpcWeb.allowedOrigins[1]",
                "spec.grpcWeb.allowedOrigins[2]",
                "spec.grpcWeb.allowedOrigins[4]",
            ],
            "{err}"
        );
        assert!(err.errors[0].reason.contains("allowAnyOrigin"), "{err}");
        assert!(err.errors[3].reason.starts_with("Duplicate"), "origins compare without case: {err}");

        obj.spec.grpc_web = Some(web(&[]));
        let err = validate(&obj, Origin::Cluster).expect_err("no origin");
        assert_eq!(paths(&err), ["spec.grpcWeb.allowedOrigins"]);
        obj.spec.grpc_web = Some(crate::api::GrpcWeb { allow_any_origin: true, ..web(&[]) });
        let v = validate(&obj, Origin::Cluster).expect("any origin");
        assert_eq!(v.grpc_web.map(|w| w.origins), Some(Origins::Any));

        obj.spec.grpc_web = Some(crate::api::GrpcWeb {
            allowed_headers: vec!["x-csrf-token".into(), "X-Upper".into(), "x-csrf-token".into()],
            ..web(&["https://x.com"])
        });
        let err = validate(&obj, Origin::Cluster).expect_err("headers");
        assert_eq!(
            paths(&err),
            ["spec.grpcWeb.allowedHeaders[1]", "spec.grpcWeb.allowedHeaders[2]"],
            "{err}"
        );

        obj.spec.admin_port = 9902;
        obj.spec.grpc_web = Some(crate::api::GrpcWeb { port: Some(50051), ..web(&["https://x.com"]) });
        let err = validate(&obj, Origin::Cluster).expect_err("ports");
        assert_eq!(paths(&err), ["spec.grpcWeb.port", "spec.adminPort"], "{err}");

        obj.spec.admin_port = 9090;
        obj.spec.grpc_web = Some(crate::api::GrpcWeb {
            mode: Some(GrpcWebMode::Native),
            max_stream_duration: Some("1d".into()),
            browser_tls: Some(crate::api::BrowserTls { secret_name: "web".into() }),
            ..web(&["https://x.com"])
        });
        let err = validate(&obj, Origin::Cluster).expect_err("native with mutual TLS");
        assert_eq!(
            paths(&err),
            ["spec.grpcWeb.mode", "spec.grpcWeb.maxStreamDuration", "spec.grpcWeb.browserTLS"],
            "{err}"
        );
    }

    #[test]
    fn stream_durations_parse_hours_minutes_and_seconds_in_order() {
        for (text, want) in [
            ("0s", Some(0)),
            ("90s", Some(90)),
            ("30m", Some(1800)),
            ("1h30m", Some(5400)),
            ("1h5s", Some(3605)),
        ] {
            assert_eq!(parse_stream_duration(text), want, "{text}");
        }
        for text in ["", "5", "1d", "30m1h", "h", "1h1h"] {
            assert_eq!(parse_stream_duration(text), None, "{text}");
        }
    }
}

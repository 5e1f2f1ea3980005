//! Test harness for grpc-operator around a real Kubernetes control plane.
//!
//! - [`cluster`]: etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kwok, built from their Go modules
//!   (`scripts/build-test-infra.sh`) and started with `kwokctl --runtime binary`.
//! - [`TestCluster`]: one such cluster per test binary, with the CRDs and the
//!   operator's ClusterRole installed; tests isolate themselves by namespace.
//! - [`FaultProxy`]: sits between the operator under test and the API server,
//!   records requests and injects faults.
//! - [`audit`]: reads the API server's audit log.
//! - [`ports`]: loopback ports for child processes, outside the ephemeral range.
//!
//! Test infrastructure, never product.

pub mod audit;
pub mod cluster;
pub mod components;
mod faults;
pub mod ports;
pub mod proxy;
mod request_log;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use cluster::{Cluster, ClusterInfo, NODE_NAME, kubectl};
pub use components::repo_root;
pub use faults::{Fault, FaultKind};
pub use proxy::FaultProxy;
pub use request_log::{RequestRecord, Verb};

/// Waits until `crds` are Established. `kubectl wait` fails at once, rather
/// than waiting, while a CRD just applied has no `status.conditions` yet.
pub fn wait_established(cluster: &Cluster, crds: &[&str]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    args.extend_from_slice(crds);
    loop {
        match cluster.kubectl(&args, None) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("accessor error") => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The ClusterRole of the monitoring selection check
/// (`config/monitoring-selection`); each test's operator account is bound to
/// it by a ClusterRoleBinding `<role>-<namespace>`.
pub const MONITORING_SELECTION_ROLE: &str = "grpc-operator-monitoring-selection";

/// Name of the Role (and RoleBinding) of the operator's CA (`config/ca-rbac`).
pub const CA_ROLE: &str = "grpc-operator-ca";

/// Name of the operator's ServiceAccount, ClusterRole and RoleBindings in tests,
/// as in `config/rbac`.
pub const OPERATOR_ACCOUNT: &str = "grpc-operator";

/// The control plane shared by every test of one test binary, started on first
/// use with the GrpcService CRD and the operator's ClusterRole
/// (`config/rbac/role.yaml`) installed. Tests isolate themselves by namespace
/// ([`TestCluster::namespace`]); tests that change CRDs take
/// [`TestCluster::crds_exclusive`], every other test [`TestCluster::crds_shared`].
///
/// It lives in a `static` and is never dropped: its watchdog deletes it when
/// the test process exits, however it exits.
pub struct TestCluster {
    cluster: Cluster,
    crds: RwLock<()>,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

impl TestCluster {
    /// The shared cluster, started on first call (blocking).
    pub fn get() -> anyhow::Result<&'static Self> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("the test cluster did not start: {e}"))
    }

    fn start() -> anyhow::Result<Self> {
        let cluster = Cluster::start()?;
        let root = repo_root();
        let crds = root.join("crds");
        cluster.kubectl(&["apply", "--server-side", "-f", &crds.display().to_string()], None)?;
        wait_established(&cluster, &["crd/grpcservices.grpcoperator.io"])?;
        // cert-manager's CRDs (its controller cannot be built from published
        // modules): the operator's Certificates meet the real schema.
        let cm = cluster.info.cert_manager_crds.display().to_string();
        cluster.kubectl(&["apply", "--server-side", "-f", &cm], None)?;
        wait_established(&cluster, &["crd/certificates.cert-manager.io"])?;
        // prometheus-operator's CRDs: the operator's ServiceMonitors and
        // PrometheusRules meet the real schemas (tests that need them absent
        // take the CRDs exclusively and put them back).
        let po = cluster.info.prometheus_operator_crds.display().to_string();
        cluster.kubectl(&["apply", "--server-side", "-f", &po], None)?;
        wait_established(
            &cluster,
            &[
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
                "crd/prometheuses.monitoring.coreos.com",
            ],
        )?;
        let role = root.join("config/rbac/role.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", &role.display().to_string()], None)?;
        let selection = root.join("config/monitoring-selection/role.yaml");
        cluster.kubectl(&["apply", "--server-side", "-f", &selection.display().to_string()], None)?;
        Ok(Self { cluster, crds: RwLock::new(()) })
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.cluster.info
    }

    /// The admin kubeconfig's path.
    pub fn kubeconfig(&self) -> &Path {
        &self.cluster.info.kubeconfig
    }

    /// Runs kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        self.cluster.kubectl(args, stdin)
    }

    /// Waits until `crds` (`crd/<name>`) are Established.
    pub fn wait_established(&self, crds: &[&str]) -> anyhow::Result<()> {
        wait_established(&self.cluster, crds)
    }

    /// The admin's client configuration.
    pub async fn admin_config(&self) -> anyhow::Result<kube::Config> {
        let kc = Kubeconfig::read_from(self.kubeconfig())?;
        Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
    }

    /// A client with cluster-admin rights, for the test's own checks. Make one
    /// per test: a client belongs to the runtime it was made on.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.admin_config().await?)?)
    }

    /// Taken by tests that only read the CRDs (every test but a few).
    pub async fn crds_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.crds.read().await
    }

    /// Taken by a test that deletes or changes a CRD: no other test runs meanwhile.
    pub async fn crds_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.crds.write().await
    }

    /// Creates a fresh namespace named `<prefix>-<n>`; it is deleted when
    /// the returned guard drops.
    pub async fn namespace(&self, client: &kube::Client, prefix: &str) -> anyhow::Result<TestNamespace> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace { name, kubeconfig: self.kubeconfig().to_path_buf() })
    }

    /// Sets up the operator's identity in `namespace`, as a namespaced install
    /// does: ServiceAccount `grpc-operator`, a RoleBinding to the ClusterRole of
    /// `config/rbac`, and a token for it. Returns the token.
    pub async fn operator_token(&self, client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
        let ssa = PatchParams::apply("grpc-operator-tests").force();
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(OPERATOR_ACCOUNT.into()), ..ObjectMeta::default() },
            ..ServiceAccount::default()
        };
        sa.patch(OPERATOR_ACCOUNT, &ssa, &Patch::Apply(&with_type_meta(&account)?)).await?;
        let binding = RoleBinding {
            metadata: ObjectMeta { name: Some(OPERATOR_ACCOUNT.into()), ..ObjectMeta::default() },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: OPERATOR_ACCOUNT.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: OPERATOR_ACCOUNT.into(),
                namespace: Some(namespace.into()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .patch(OPERATOR_ACCOUNT, &ssa, &Patch::Apply(&with_type_meta(&binding)?))
            .await?;
        // The CA's Role (config/ca-rbac): tests keep the operator's CA
        // Secret in the test namespace.
        let mut ca_role: Role =
            serde_saphyr::from_str(&std::fs::read_to_string(repo_root().join("config/ca-rbac/role.yaml"))?)?;
        ca_role.metadata.namespace = Some(namespace.into());
        Api::<Role>::namespaced(client.clone(), namespace)
            .patch(CA_ROLE, &ssa, &Patch::Apply(&with_type_meta(&ca_role)?))
            .await?;
        let ca_binding = RoleBinding {
            metadata: ObjectMeta { name: Some(CA_ROLE.into()), ..ObjectMeta::default() },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: CA_ROLE.into(),
            },
            subjects: binding.subjects.clone(),
        };
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .patch(CA_ROLE, &ssa, &Patch::Apply(&with_type_meta(&ca_binding)?))
            .await?;
        // The monitoring selection check's read-only ClusterRole
        // (config/monitoring-selection), bound cluster-wide as the
        // cluster-wide install does.
        let selection = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(format!("{MONITORING_SELECTION_ROLE}-{namespace}")),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: MONITORING_SELECTION_ROLE.into(),
            },
            subjects: binding.subjects.clone(),
        };
        Api::<ClusterRoleBinding>::all(client.clone())
            .patch(
                &format!("{MONITORING_SELECTION_ROLE}-{namespace}"),
                &ssa,
                &Patch::Apply(&with_type_meta(&selection)?),
            )
            .await?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(24 * 3600), ..Default::default() }),
            ..TokenRequest::default()
        };
        let issued = sa.create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request).await?;
        issued.status.and_then(|s| s.token).context("TokenRequest answered without a token")
    }

    /// A client configuration for the operator of `namespace`: its
    /// service-account token against `server` (a [`FaultProxy`] URL, or the
    /// API server itself).
    pub async fn operator_config(&self, token: &str, server: &str) -> anyhow::Result<kube::Config> {
        let admin = self.admin_config().await?;
        let mut config = kube::Config::new(server.parse()?);
        if server.starts_with("https://") {
            config.root_cert = admin.root_cert;
        }
        config.auth_info.token = Some(token.to_owned().into());
        Ok(config)
    }

    /// The same as a kubeconfig file, for the operator binary.
    pub async fn write_operator_kubeconfig(
        &self,
        token: &str,
        server: &str,
        path: &Path,
    ) -> anyhow::Result<()> {
        let admin = self.admin_config().await?;
        let ca = if server.starts_with("https://") {
            admin.root_cert.as_ref().and_then(|c| c.first()).map(|der| ca_data(der))
        } else {
            None
        };
        std::fs::write(path, operator_kubeconfig(server, ca.as_deref(), token))?;
        Ok(())
    }
}

/// A kubeconfig with one cluster, one token user and one context.
pub fn operator_kubeconfig(server: &str, ca_pem_base64: Option<&str>, token: &str) -> String {
    let cluster = match ca_pem_base64 {
        Some(ca) => serde_json::json!({"server": server, "certificate-authority-data": ca}),
        None => serde_json::json!({"server": server}),
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": OPERATOR_ACCOUNT}}],
        "current-context": "operator",
    })
    .to_string()
}

/// kubeconfig's `certificate-authority-data`: the PEM text, base64-encoded.
fn ca_data(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    b64.encode(pem)
}

fn with_type_meta<K: kube::Resource<DynamicType = ()> + serde::Serialize>(
    obj: &K,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj)?;
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    Ok(v)
}

/// A namespace created for one test; deleted (without waiting) on drop, also
/// when the test panics. The test's operator is gone by then, so the
/// GrpcServices' finalizers are released first; otherwise the namespace
/// would stay Terminating and block a later deletion of the CRD.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let ns = self.name.as_str();
        let names = kubectl(&self.kubeconfig, &["-n", ns, "get", "grpcservices", "-o", "name"], None);
        for name in names.unwrap_or_default().lines().filter(|l| !l.is_empty()) {
            let release = r#"{"metadata":{"finalizers":null}}"#;
            let _ =
                kubectl(&self.kubeconfig, &["-n", ns, "patch", name, "--type=merge", "-p", release], None);
        }
        let _ = kubectl(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"],
            None,
        );
    }
}

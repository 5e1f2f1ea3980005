//! Where the control plane's binaries come from: `scripts/build-test-infra.sh`
//! builds each one from its Go module, at the versions pinned in
//! `test-infra/versions.env`, into a per-version cache outside the checkout,
//! and reuses the cache when it is there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The repository root (the testkit crate sits one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Paths of the control plane's binaries.
#[derive(Clone, Debug)]
pub struct Components {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub etcd: PathBuf,
    pub kwok: PathBuf,
    pub kwokctl: PathBuf,
    /// cert-manager's CRDs (a directory of YAML files).
    pub cert_manager_crds: PathBuf,
    /// prometheus-operator's CRDs (a directory of YAML files).
    pub prometheus_operator_crds: PathBuf,
    /// prometheus-operator's operator binary.
    pub prometheus_operator: PathBuf,
    /// promtool with Kubernetes service discovery (built from its Go module).
    pub promtool: PathBuf,
}

impl Components {
    /// Builds whatever is missing (minutes, once per machine), then returns
    /// the paths. The build's progress goes to this process's stderr.
    pub fn ensure() -> anyhow::Result<Self> {
        let script = repo_root().join("scripts/build-test-infra.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}); it needs Go 1.26 and the Go module proxy (see test-infra/versions.env)",
                script.display(),
                out.status
            );
        }
        let dirs: BTreeMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
            .collect();
        let dir = |name: &str| {
            dirs.get(name).cloned().with_context(|| format!("{} printed no {name}= line", script.display()))
        };
        let (k8s, etcd, kwok) = (dir("kubernetes")?, dir("etcd")?, dir("kwok")?);
        let c = Self {
            kube_apiserver: k8s.join("kube-apiserver"),
            kube_controller_manager: k8s.join("kube-controller-manager"),
            kube_scheduler: k8s.join("kube-scheduler"),
            etcd: etcd.join("etcd"),
            kwok: kwok.join("kwok"),
            kwokctl: kwok.join("kwokctl"),
            cert_manager_crds: dir("cert-manager-crds")?,
            prometheus_operator_crds: dir("prometheus-operator-crds")?,
            prometheus_operator: dir("prometheus-operator")?.join("operator"),
            promtool: dir("promtool")?.join("promtool"),
        };
        for p in [
            &c.kube_apiserver,
            &c.kube_controller_manager,
            &c.kube_scheduler,
            &c.etcd,
            &c.kwok,
            &c.kwokctl,
            &c.prometheus_operator,
            &c.promtool,
        ] {
            if !p.is_file() {
                bail!("{} is missing after {}", p.display(), script.display());
            }
        }
        Ok(c)
    }
}

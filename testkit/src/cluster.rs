//! A real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (simulated nodes and
//! kubelets), started by `kwokctl --runtime binary` from locally built
//! binaries, with RBAC authorization, the default admission plugins (plus
//! OwnerReferencesPermissionEnforcement) and an audit log of every request
//! made by a service account.
//!
//! kwokctl starts the components detached (in their own sessions), so a
//! process group cannot take them down. Instead every cluster has a
//! watchdog: a `sh` that holds the read end of a pipe whose write end only
//! this process has. When this process ends in any way, even SIGKILL, the
//! pipe closes and the watchdog deletes the cluster. A cluster whose creator
//! and watchdog were both killed is deleted by the next start
//! ([`sweep_stale`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::components::Components;

/// Name of the fake node every cluster gets. It has no taints, so workloads
/// schedule on it without tolerations.
pub const NODE_NAME: &str = "kwok-node-0";

/// Folder under the system temp dir that holds every test cluster's workdir.
const ROOT_DIR: &str = "grpc-operator-test-clusters";

/// Audit policy: every request of a service account, at Metadata level (no
/// bodies, so no Secret data reaches the log). The operator under test runs
/// as a service account; the RBAC test reads its requests from here.
const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

/// An untainted node with room for the benchmark's thousand pods.
const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    node.alpha.kubernetes.io/ttl: \"0\"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
status:
  allocatable: {cpu: \"256\", memory: 1Ti, pods: \"5000\"}
  capacity: {cpu: \"256\", memory: 1Ti, pods: \"5000\"}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
";

/// Where a running cluster's files are.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    /// kwokctl's cluster name.
    pub name: String,
    /// The cluster's own folder (kwokctl's `KWOK_WORKDIR`).
    pub workdir: PathBuf,
    /// Admin kubeconfig (client certificate of `system:masters`).
    pub kubeconfig: PathBuf,
    /// kube-apiserver's audit log (JSON lines).
    pub audit_log: PathBuf,
    /// cert-manager's CustomResourceDefinitions (a directory of YAML files).
    pub cert_manager_crds: PathBuf,
    /// prometheus-operator's CustomResourceDefinitions (a directory of YAML files).
    pub prometheus_operator_crds: PathBuf,
    /// The prometheus-operator binary.
    pub prometheus_operator: PathBuf,
    /// promtool with Kubernetes service discovery.
    pub promtool: PathBuf,
}

impl ClusterInfo {
    fn cluster_dir(&self) -> PathBuf {
        self.workdir.join("clusters").join(&self.name)
    }

    /// Process id of a component (`kube-apiserver`, `etcd`, …), from kwokctl's pid file.
    pub fn pid(&self, component: &str) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.cluster_dir().join("pids").join(format!("{component}.pid"))).ok()?;
        text.trim().parse().ok()
    }
}

/// A running cluster; deleted on [`Cluster::stop`] or drop.
pub struct Cluster {
    pub info: ClusterInfo,
    kwokctl: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// Builds missing components, starts a cluster on loopback and waits
    /// until the API answers and the fake node is Ready. Blocking; about 6 s
    /// once the components are built.
    pub fn start() -> anyhow::Result<Self> {
        let components = Components::ensure()?;
        let root = std::env::temp_dir().join(ROOT_DIR);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        sweep_stale(&root, &components.kwokctl);

        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("grpcop-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let workdir = root.join(&name);
        std::fs::create_dir_all(&workdir)?;
        std::fs::write(workdir.join("owner.pid"), std::process::id().to_string())?;
        let info = ClusterInfo {
            kubeconfig: workdir.join("clusters").join(&name).join("kubeconfig.yaml"),
            audit_log: workdir.join("clusters").join(&name).join("logs").join("audit.log"),
            name,
            workdir,
            cert_manager_crds: components.cert_manager_crds.clone(),
            prometheus_operator_crds: components.prometheus_operator_crds.clone(),
            prometheus_operator: components.prometheus_operator.clone(),
            promtool: components.promtool.clone(),
        };
        let watchdog = arm_watchdog(&components.kwokctl, &info)?;
        let mut cluster = Self { info, kwokctl: components.kwokctl.clone(), watchdog: Some(watchdog) };
        cluster.create(&components)?;
        Ok(cluster)
    }

    fn create(&mut self, c: &Components) -> anyhow::Result<()> {
        let dir = &self.info.workdir;
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY)?;
        let config = dir.join("kwokctl.yaml");
        std::fs::write(&config, kwokctl_config(c, &policy))?;
        let log = dir.join("kwokctl.log");
        let started = Instant::now();
        let status = self
            .kwokctl_cmd()
            .args(["create", "cluster", "--name", &self.info.name, "--config"])
            .arg(&config)
            .args(["--runtime", "binary", "--wait", "120s"])
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("kwokctl.err"))?)
            .status()
            .context("running kwokctl create cluster")?;
        if !status.success() {
            let err = std::fs::read_to_string(dir.join("kwokctl.err")).unwrap_or_default();
            bail!("kwokctl create cluster failed ({status}):\n{}", tail(&err, 40));
        }
        if !self.info.kubeconfig.is_file() {
            bail!("kwokctl wrote no kubeconfig at {}", self.info.kubeconfig.display());
        }
        self.kubectl(&["apply", "--server-side", "-f", "-"], Some(NODE))?;
        self.kubectl(
            &["wait", "--for=condition=Ready", &format!("node/{NODE_NAME}"), "--timeout=120s"],
            None,
        )?;
        tracing::info!(name = %self.info.name, elapsed = ?started.elapsed(), "test cluster ready");
        Ok(())
    }

    /// Runs kubectl as the cluster admin; fails with its stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        kubectl(&self.info.kubeconfig, args, stdin)
    }

    fn kwokctl_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.kwokctl);
        cmd.env("KWOK_WORKDIR", &self.info.workdir).stdin(Stdio::null());
        cmd
    }

    /// Deletes the cluster: every component is stopped and the workdir
    /// removed. Closing the watchdog's stdin makes it do that; this waits.
    pub fn stop(&mut self) {
        let Some((mut child, stdin)) = self.watchdog.take() else { return };
        drop(stdin);
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs kubectl with a kubeconfig; fails with its stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl (is it installed? scripts/install-tools.sh installs it)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kwokctl_config(c: &Components, audit_policy: &Path) -> String {
    let p = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
    format!(
        "\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeAuthorization: true
  kubeAdmission: true
  kubeAuditPolicy: {policy}
  kubeApiserverBinary: {apiserver}
  kubeControllerManagerBinary: {kcm}
  kubeSchedulerBinary: {scheduler}
  kwokControllerBinary: {kwok}
  etcdBinary: {etcd}
componentsPatches:
  - name: kube-apiserver
    extraArgs:
      # On top of the defaults: setting blockOwnerDeletion then needs update
      # on the owner's finalizers subresource, as on hardened clusters.
      - key: enable-admission-plugins
        value: OwnerReferencesPermissionEnforcement
      # The default /24 runs out at 254 Services; the benchmark makes 1,000.
      - key: service-cluster-ip-range
        value: 10.96.0.0/16
  - name: kwok-controller
    extraArgs:
      # Pod IPs: kwok's default /24 runs out at 254 pods.
      - key: cidr
        value: 10.244.0.0/16
",
        policy = p(audit_policy),
        apiserver = p(&c.kube_apiserver),
        kcm = p(&c.kube_controller_manager),
        scheduler = p(&c.kube_scheduler),
        kwok = p(&c.kwok),
        etcd = p(&c.etcd),
    )
}

/// Deletes a cluster: `sh -c TEARDOWN teardown KWOKCTL WORKDIR NAME`.
///
/// Every process of the cluster (kwokctl create itself included) has the
/// workdir in its command line: kill those first, so nothing still being
/// started survives, then let kwokctl clean up, then make sure. The trailing
/// slash keeps the pattern from matching the shell running this, whose
/// arguments hold the workdir without one.
const TEARDOWN: &str = "pkill -KILL -f -- \"$2/\"; \
                        KWOK_WORKDIR=\"$2\" \"$1\" delete cluster --name \"$3\" >/dev/null 2>&1; \
                        pkill -KILL -f -- \"$2/\"; rm -rf \"$2\"";

fn teardown_cmd(script: &str, kwokctl: &Path, workdir: &Path, name: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "teardown"]).arg(kwokctl).arg(workdir).arg(name);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Starts the watchdog: a `sh` that waits for its stdin to yield a line or
/// end, then runs [`TEARDOWN`]. Only this process holds the write end, so the
/// cluster goes when this process goes, however it goes; [`Cluster::stop`]
/// closes it on purpose. Its own process group keeps Ctrl-C in a terminal
/// from killing it before it has cleaned up.
fn arm_watchdog(kwokctl: &Path, info: &ClusterInfo) -> anyhow::Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt as _;
    let script = format!("IFS= read -r _; {TEARDOWN}");
    let mut child = teardown_cmd(&script, kwokctl, &info.workdir, &info.name)
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the cluster watchdog (sh)")?;
    let stdin = child.stdin.take().context("watchdog stdin")?;
    Ok((child, stdin))
}

/// Deletes clusters whose creating process no longer exists (both it and its
/// watchdog were killed, e.g. by SIGKILL to a whole process group).
pub fn sweep_stale(root: &Path, kwokctl: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let dir = e.path();
        let owner =
            std::fs::read_to_string(dir.join("owner.pid")).ok().and_then(|t| t.trim().parse::<u32>().ok());
        let alive = owner.is_some_and(running);
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60));
        if !alive
            && old
            && let Some(name) = dir.file_name().and_then(|n| n.to_str())
        {
            tracing::warn!(cluster = name, "deleting a test cluster left behind by a killed process");
            let _ = teardown_cmd(TEARDOWN, kwokctl, &dir, name).stdin(Stdio::null()).status();
        }
    }
}

/// Whether `pid` is a live process. A killed process whose parent has not
/// reaped it yet (a zombie) still has a /proc entry, but is gone.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

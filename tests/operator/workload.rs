//! Running what the operator produced, as a kubelet would: a GrpcService's
//! Secret copied into a kubelet-style volume (`..data` swapped atomically on
//! every change), the real runtime (`grpc-runtime`'s `user-service` example)
//! started with the Deployment's environment, and real peers (grpcio and
//! grpc-go) calling it with other GrpcServices' certificates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::Harness;

/// A tool installed by scripts/install-tools.sh (`.tools/bin`), or on PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = grpc_operator_testkit::repo_root().join(".tools/bin").join(name);
    if local.exists() {
        return local;
    }
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    assert!(found.is_some(), "`{name}` is not installed: run scripts/install-tools.sh");
    found.expect("checked above")
}

/// The runtime's example server (cargo builds examples before tests).
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join("user-service");
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build -p grpc-runtime --examples`",
        path.display()
    );
    path
}

pub use grpc_operator_testkit::ports::free_port;

/// The data of Secret `name`.
pub async fn secret_data(h: &Harness, name: &str) -> BTreeMap<String, Vec<u8>> {
    let secret = h.api::<Secret>().get(name).await.expect("Secret");
    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// A directory laid out like a kubelet-managed Secret volume: `..<version>/`
/// holding the files, `..data -> ..<version>`, and each file a symlink to
/// `..data/<file>`. An update writes a new version directory, renames a fresh
/// link over `..data` (atomic) and removes the old version, as the kubelet's
/// atomic writer does.
pub struct SecretVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    pub fn create(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Self {
        std::fs::create_dir_all(dir).expect("volume dir");
        let mut v = Self { dir: dir.to_path_buf(), generation: 0 };
        v.update(files);
        for name in files.keys() {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("file link");
        }
        v
    }

    fn version(generation: u32) -> String {
        format!("..2026_11_30_00_00_00.{generation}")
    }

    pub fn update(&mut self, files: &BTreeMap<String, Vec<u8>>) {
        let previous = self.generation;
        self.generation += 1;
        let version = Self::version(self.generation);
        std::fs::create_dir(self.dir.join(&version)).expect("version dir");
        for (name, content) in files {
            std::fs::write(self.dir.join(&version).join(name), content).expect("write file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if previous > 0 {
            std::fs::remove_dir_all(self.dir.join(Self::version(previous))).expect("remove old version");
        }
    }
}

/// The versions of a Secret a [`KubeletSync`] wrote, in order.
type Synced = Arc<Mutex<Vec<(Option<String>, BTreeMap<String, Vec<u8>>)>>>;

/// Plays the kubelet for one Secret: copies it into a volume whenever it
/// changes (polling every `every`), and records every version it synced.
pub struct KubeletSync {
    pub dir: PathBuf,
    synced: Synced,
    task: tokio::task::JoinHandle<()>,
}

impl KubeletSync {
    pub async fn start(h: &Harness, secret: &str, dir: &Path, every: Duration) -> Self {
        let api: Api<Secret> = h.api();
        let first = api.get(secret).await.expect("Secret to mount");
        let data = |s: &Secret| -> BTreeMap<String, Vec<u8>> {
            s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
        };
        let mut volume = SecretVolume::create(dir, &data(&first));
        let rv = first.metadata.resource_version.clone().unwrap_or_default();
        let renewal = |s: &Secret| {
            s.metadata.annotations.as_ref().and_then(|a| a.get("grpcoperator.io/renewal-time")).cloned()
        };
        let synced: Synced = Arc::new(Mutex::new(vec![(renewal(&first), data(&first))]));
        let record = Arc::clone(&synced);
        let name = secret.to_owned();
        let task = tokio::spawn(async move {
            let mut last = rv;
            loop {
                tokio::time::sleep(every).await;
                let Ok(s) = api.get(&name).await else { continue };
                let now = s.metadata.resource_version.clone().unwrap_or_default();
                if now != last {
                    let files = data(&s);
                    volume.update(&files);
                    record.lock().expect("lock").push((renewal(&s), files));
                    last = now;
                }
            }
        });
        Self { dir: dir.to_path_buf(), synced, task }
    }

    /// Versions synced so far.
    pub fn versions(&self) -> Vec<BTreeMap<String, Vec<u8>>> {
        self.synced.lock().expect("lock").iter().map(|(_, d)| d.clone()).collect()
    }

    /// The renewal-time annotation of each version synced (RFC 3339).
    pub fn renewal_times(&self) -> Vec<Option<String>> {
        self.synced.lock().expect("lock").iter().map(|(r, _)| r.clone()).collect()
    }

    /// Client credentials from the volume as it is now: the three files of
    /// one version (read through one resolved `..data` link, as the runtime
    /// reads them), copied into `into` as `name`.
    pub fn creds(&self, into: &Path, name: &str) -> Creds {
        loop {
            let Ok(version) = std::fs::read_link(self.dir.join("..data")) else { continue };
            let read = |f: &str| std::fs::read(self.dir.join(&version).join(f));
            if let (Ok(ca), Ok(cert), Ok(key)) = (read("ca.crt"), read("tls.crt"), read("tls.key")) {
                return Creds::write(into, name, &ca, Some((&cert, &key)));
            }
        }
    }
}

impl Drop for KubeletSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The runtime, started as the pod of a GrpcService would be.
pub struct Workload {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    child: tokio::process::Child,
}

impl Workload {
    /// Starts the example server with the contract variables of the
    /// GrpcService's Deployment (`TLS_MODE`, `GRPC_ALLOWED_PEERS`, …), its
    /// ports on loopback and `TLS_DIR` pointing at `tls_dir`; waits for
    /// `/readyz`.
    pub async fn start(h: &Harness, name: &str, tls_dir: &Path) -> Self {
        let env = container_env(h, name).await;
        let (grpc, admin) = (free_port(), free_port());
        let mut cmd = tokio::process::Command::new(example_binary());
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in &env {
            // Variables the kubelet fills from the pod (downward API) are
            // not needed on loopback.
            if !v.contains("$(") {
                cmd.env(k, v);
            }
        }
        cmd.env("GRPC_PORT", grpc.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .env("TLS_DIR", tls_dir)
            .env("SHUTDOWN_DRAIN_DELAY", "0s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("user-service starts");
        let w = Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(w.admin, "/readyz").await != Some(200) {
            assert!(Instant::now() < deadline, "the workload of {name} never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w
    }

    /// The Prometheus exposition of its admin port.
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await.unwrap_or_default()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The literal env of the workload container of GrpcService `name`.
pub async fn container_env(h: &Harness, name: &str) -> BTreeMap<String, String> {
    let dep = h.api::<Deployment>().get(name).await.expect("Deployment");
    let containers = dep.spec.and_then(|s| s.template.spec).map(|p| p.containers).unwrap_or_default();
    containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await?.split_whitespace().nth(1)?.parse().ok()
}

/// Client credentials written to files for the peers.
pub struct Creds {
    pub ca: PathBuf,
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

impl Creds {
    /// From a leaf Secret's data (its `ca.crt` as the trusted bundle).
    pub fn from_secret(dir: &Path, name: &str, data: &BTreeMap<String, Vec<u8>>) -> Self {
        Self::write(dir, name, &data["ca.crt"], Some((&data["tls.crt"], &data["tls.key"])))
    }

    pub fn write(dir: &Path, name: &str, ca: &[u8], leaf: Option<(&[u8], &[u8])>) -> Self {
        let ca_path = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&ca_path, ca).expect("write CA");
        let cert_and_key = leaf.map(|(cert, key)| {
            let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
            std::fs::write(&c, cert).expect("write cert");
            std::fs::write(&k, key).expect("write key");
            (c, k)
        });
        Self { ca: ca_path, cert_and_key }
    }
}

fn peer_args(cmd: &mut tokio::process::Command, target: SocketAddr, server_name: &str, creds: &Creds) {
    cmd.arg("--target")
        .arg(target.to_string())
        .arg("--server-name")
        .arg(server_name)
        .arg("--ca")
        .arg(&creds.ca);
    if let Some((cert, key)) = &creds.cert_and_key {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
}

/// The one JSON line a peer printed.
fn json_line(out: &std::process::Output, who: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let parsed = serde_json::from_str(line);
    assert!(
        parsed.is_ok(),
        "no JSON line from {who}: status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parsed.expect("checked above")
}

/// grpcio (gRPC C-core): `GetUser(1)`, or a loop (`args`).
pub async fn grpcio(target: SocketAddr, server_name: &str, creds: &Creds, args: &[&str]) -> Value {
    let mut cmd = tokio::process::Command::new(tool("python-peers"));
    cmd.arg(grpc_operator_testkit::repo_root().join("runtime/tests/peers/grpcio_client.py"));
    peer_args(&mut cmd, target, server_name, creds);
    let args = if args.is_empty() { &["--call", "get"][..] } else { args };
    cmd.args(args).env("GRPC_VERBOSITY", "ERROR").kill_on_drop(true);
    json_line(&cmd.output().await.expect("grpcio client runs"), "the grpcio client")
}

/// grpc-go: `GetUser(1)`.
pub async fn grpc_go(target: SocketAddr, server_name: &str, creds: &Creds) -> Value {
    let mut cmd = tokio::process::Command::new(tool("go-peer-client"));
    peer_args(&mut cmd, target, server_name, creds);
    cmd.args(["--call", "get"]).kill_on_drop(true);
    json_line(&cmd.output().await.expect("grpc-go client runs"), "the grpc-go client")
}

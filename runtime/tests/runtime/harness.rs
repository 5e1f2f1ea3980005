//! Shared test plumbing: in-process servers on 127.0.0.1 port 0, tool lookup, subprocesses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use grpc_runtime::{BoundServer, Config, Health, ServeError, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::service::Users;
use crate::service::pb::user_service_client::UserServiceClient;
use crate::service::pb::user_service_server::UserServiceServer;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("runtime/ has a parent").to_path_buf()
}

/// The user-service proto file.
pub fn user_proto() -> PathBuf {
    repo_root().join("runtime/proto/user/v1/user.proto")
}

/// Finds an external tool: `.tools/bin` first (where install-tools.sh puts them), then PATH.
/// Missing: panics under `CI`, else prints SKIPPED and returns None.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        return Some(local);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let message = format!("`{name}` not found (run scripts/install-tools.sh)");
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// The built `user-service` example binary (cargo builds examples before running tests).
pub fn example_binary() -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/examples/user-service
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join("user-service");
    assert!(path.exists(), "{} missing: build it with `cargo build -p grpc-runtime --examples`", path.display());
    path
}

/// Test defaults: loopback, ephemeral ports, no drain delay, short shutdown timeout, and the
/// global telemetry left to the test process.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    config.shutdown.drain_delay = Duration::ZERO;
    config.shutdown.timeout = Duration::from_secs(5);
    config
}

/// A server with the seeded user service.
pub fn user_server() -> Server {
    Server::new(test_config())
        .without_telemetry_init()
        .add_service(UserServiceServer::new(Users::with_seed()))
        .file_descriptor_set(crate::service::pb::FILE_DESCRIPTOR_SET)
}

/// A running in-process server.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub health: Health,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Binds and starts serving.
    pub async fn start(server: Server) -> TestServer {
        let bound: BoundServer = server.bind().await.expect("server binds");
        Self::serve(bound)
    }

    /// Starts serving an already bound server.
    pub fn serve(bound: BoundServer) -> TestServer {
        let (tx, rx) = oneshot::channel::<()>();
        let grpc = bound.grpc_addr();
        let admin = bound.admin_addr();
        let health = bound.health();
        let task = tokio::spawn(bound.serve_until(async move {
            let _ = rx.await;
        }));
        TestServer { grpc, admin, health, stop: Some(tx), task: Some(task) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A tonic client of the user service.
    pub async fn client(&self) -> UserServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        UserServiceClient::new(channel)
    }

    /// Starts graceful shutdown and returns the serve task.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not yet shut down")
    }

    /// Shuts down and waits.
    pub async fn stop(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops within 30 s")
            .expect("serve task")
            .expect("serve returns Ok");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs a command with a 120 s timeout and returns its output.
pub async fn run(cmd: &mut tokio::process::Command) -> Output {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} timed out"))
        .unwrap_or_else(|e| panic!("{cmd:?} failed to start: {e}"));
    out
}

/// Stdout of a command as a string, with stderr attached to any assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A raw HTTP/1.1 request (no client library: the tests want the exact headers on the wire).
/// Returns the status code and the full response text (headers and body).
pub async fn http1(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// `GET path` on the admin port.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http1(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")).await
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build -p grpc-runtime --examples`",
        path.display()
    );
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
    /// The server's health handle (tests flip services to NOT_SERVING with it).
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
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} timed out"))
        .unwrap_or_else(|e| panic!("{cmd:?} failed to start: {e}"))
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

/// A user service whose handlers misbehave on purpose, for the chain, limit and shutdown tests:
///
/// - `GetUser(-1)` sleeps 1.5 s, then answers; `GetUser(-2)` panics; `GetUser(-3)` answers a
///   user whose name describes the request context
///   (`request_id|tenant|principal|deadline ms|trace id|baggage "plan"`);
///   other ids answer a user at once.
/// - `CreateUser` with name `big` answers a user with an 8 KiB name; otherwise echoes.
/// - `ListUsers` streams a user every 100 ms, forever (until the client, a deadline or
///   shutdown ends it); a panic at the third message when the metadata has `x-panic-stream`;
///   with `x-end-on-shutdown`, it ends cleanly when the server's shutdown signal fires.
#[derive(Debug, Clone, Default)]
pub struct Misbehaving;

type UserStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<crate::service::pb::User, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl crate::service::pb::user_service_server::UserService for Misbehaving {
    async fn get_user(
        &self,
        request: tonic::Request<crate::service::pb::GetUserRequest>,
    ) -> Result<tonic::Response<crate::service::pb::User>, tonic::Status> {
        use crate::service::pb::User;
        match request.get_ref().user_id {
            -1 => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(tonic::Response::new(User { id: -1, name: "slow".into(), tags: vec![] }))
            }
            -2 => panic!("handler bug on purpose"),
            -3 => {
                let ctx = request.extensions().get::<grpc_runtime::RequestContext>();
                let principal = request.extensions().get::<grpc_runtime::Principal>();
                let deadline = request.extensions().get::<grpc_runtime::Deadline>();
                let trace = request.extensions().get::<grpc_runtime::TraceContext>();
                let baggage = request.extensions().get::<grpc_runtime::Baggage>();
                let name = format!(
                    "{}|{}|{}|{}|{}|{}",
                    ctx.map(|c| c.request_id().to_string()).unwrap_or_default(),
                    ctx.and_then(|c| c.tenant_id().map(ToString::to_string)).unwrap_or_default(),
                    principal.map(|p| p.subject.clone()).unwrap_or_default(),
                    deadline.map(|d| d.remaining().as_millis().to_string()).unwrap_or_default(),
                    trace.map(|t| t.trace_id.to_string()).unwrap_or_default(),
                    baggage.and_then(|b| b.get("plan")).unwrap_or_default(),
                );
                Ok(tonic::Response::new(User { id: -3, name, tags: vec![] }))
            }
            id => Ok(tonic::Response::new(User { id, name: format!("user-{id}"), tags: vec![] })),
        }
    }

    async fn create_user(
        &self,
        request: tonic::Request<crate::service::pb::CreateUserRequest>,
    ) -> Result<tonic::Response<crate::service::pb::User>, tonic::Status> {
        let req = request.into_inner();
        let name = if req.name == "big" { "x".repeat(8 << 10) } else { req.name };
        Ok(tonic::Response::new(crate::service::pb::User { id: 100, name, tags: req.tags }))
    }

    type ListUsersStream = UserStream;

    async fn list_users(
        &self,
        request: tonic::Request<crate::service::pb::ListUsersRequest>,
    ) -> Result<tonic::Response<UserStream>, tonic::Status> {
        let panic_at_third = request.metadata().contains_key("x-panic-stream");
        // With `x-end-on-shutdown`, the stream ends (OK) when the server begins shutting down.
        let shutdown = request
            .metadata()
            .contains_key("x-end-on-shutdown")
            .then(|| request.extensions().get::<grpc_runtime::RequestContext>().map(|c| c.shutdown().clone()))
            .flatten();
        let stream = futures::stream::unfold(0i64, move |n| {
            let shutdown = shutdown.clone();
            async move {
                let tick = tokio::time::sleep(Duration::from_millis(100));
                match &shutdown {
                    Some(signal) => tokio::select! {
                        () = tick => {}
                        () = signal.cancelled() => return None,
                    },
                    None => tick.await,
                }
                if panic_at_third && n == 2 {
                    panic!("stream bug on purpose");
                }
                Some((Ok(crate::service::pb::User { id: n, name: format!("user-{n}"), tags: vec![] }), n + 1))
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// A server with the [`Misbehaving`] service.
pub fn misbehaving_server() -> Server {
    Server::new(test_config())
        .without_telemetry_init()
        .add_service(UserServiceServer::new(Misbehaving))
        .file_descriptor_set(crate::service::pb::FILE_DESCRIPTOR_SET)
}

/// Reads one metric sample's value from the admin `/metrics` (exact series text, e.g.
/// `grpc_server_handled_total{grpc_code="OK",…}`); 0 when absent.
pub async fn metric_value(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = admin_get(admin, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

/// One gRPC call over a bare HTTP/2 connection (the `h2` crate), for tests where a gRPC client
/// library would get in the way, e.g. by enforcing `grpc-timeout` itself. Returns the final
/// `grpc-status` (from the headers of a trailers-only response, or from the trailers) and the
/// number of response messages.
pub async fn raw_grpc_call<M: prost::Message>(
    addr: SocketAddr,
    path: &str,
    message: &M,
    metadata: &[(&str, &str)],
) -> (i32, usize) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let mut builder = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(()).expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send request");
    let payload = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    send.send_data(frame.into(), true).expect("send body");
    let response = response.await.expect("response headers");
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok())
    };
    if let Some(code) = status_of(response.headers()) {
        return (code, 0);
    }
    let mut body = response.into_body();
    let mut bytes = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    (status_of(&trailers).expect("grpc-status in trailers"), usize::from(bytes > 0))
}

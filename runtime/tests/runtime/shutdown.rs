//! Graceful shutdown: NOT_SERVING and a failing /readyz during the drain delay, in-flight calls
//! completing, a hard stop at the timeout even when a client holds a stream open, and the
//! example process exiting 0 on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{TestServer, admin_get, example_binary, misbehaving_server};
use crate::service::pb::{GetUserRequest, ListUsersRequest};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test]
async fn in_flight_calls_complete_and_the_listener_closes() {
    let mut server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;
    let slow = tokio::spawn(async move { client.get_user(GetUserRequest { user_id: -1 }).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let serving = server.begin_shutdown();
    let user = slow.await.expect("join").expect("the in-flight call completes").into_inner();
    assert_eq!(user.name, "slow");
    serving.await.expect("join").expect("serve returns Ok");
    assert!(tokio::net::TcpStream::connect(server.grpc).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn shutdown_reports_not_serving_fails_readyz_and_runs_hooks_while_still_serving_the_drain() {
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = hook_ran.clone();
    let server = misbehaving_server()
        .configure(|c| c.shutdown.drain_delay = Duration::from_millis(1500))
        .on_shutdown(move || async move { flag.store(true, Ordering::SeqCst) });
    let mut server = TestServer::start(server).await;
    assert_eq!(admin_get(server.admin, "/readyz").await.0, 200);
    let channel =
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut users = crate::service::pb::user_service_client::UserServiceClient::new(channel);

    let serving = server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = admin_get(server.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(admin_get(server.admin, "/healthz").await.0, 200, "still alive while draining");
    for service in ["", "user.v1.UserService"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health answers while draining");
        assert_eq!(
            reply.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    assert!(hook_ran.load(Ordering::SeqCst), "the shutdown hook ran before the drain delay ended");
    // Calls keep working during the drain delay: load balancers may still send some.
    users.get_user(GetUserRequest { user_id: 3 }).await.expect("served during the drain delay");
    serving.await.expect("join").expect("serve returns Ok");
}

#[tokio::test]
async fn the_server_stops_at_the_shutdown_timeout_even_with_a_stream_held_open() {
    let server = misbehaving_server().configure(|c| c.shutdown.timeout = Duration::from_millis(800));
    let mut server = TestServer::start(server).await;
    let mut client = server.client().await;
    let mut stream = client.list_users(ListUsersRequest {}).await.expect("stream").into_inner();
    stream.message().await.expect("first message").expect("some");
    let started = Instant::now();
    let serving = server.begin_shutdown();
    serving.await.expect("join").expect("serve returns Ok");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "waited for the stream first: {took:?}");
    assert!(took < Duration::from_secs(3), "stopped at the timeout: {took:?}");
    // The client sees its stream end with an error, not hang.
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends once the server is gone");
    assert!(ended.is_err(), "an endless stream cut by shutdown is an error: {ended:?}");
}

#[tokio::test]
async fn sigterm_makes_the_example_exit_zero_within_its_deadline_despite_a_hanging_call() {
    let (grpc, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(example_binary())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GRPC_PORT", grpc.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("LOG_FORMAT", "json")
        .env("SHUTDOWN_DRAIN_DELAY", "300ms")
        .env("SHUTDOWN_TIMEOUT", "1s")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("example starts");
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let ready = crate::harness::eventually(Duration::from_secs(20), || async {
        let ok = tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && admin_get(admin_addr, "/readyz").await.0 == 200;
        ok.then_some(())
    })
    .await;
    assert!(ready.is_some(), "the example became ready");

    // A call whose request body never ends: the handler waits for it until shutdown cuts it.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc)).await.expect("connect");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2");
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    let request = http::Request::post(format!("http://127.0.0.1:{grpc}/user.v1.UserService/GetUser"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (_response, _send) = h2.send_request(request, false).expect("request sent, body left open");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = child.id().expect("pid").to_string();
    let started = Instant::now();
    let kill = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(kill.success());
    let waited = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let took = started.elapsed();
    let mut stdout = String::new();
    if waited.is_err() {
        let _ = child.start_kill();
    }
    if let Some(mut out) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        let _ = out.read_to_string(&mut stdout).await;
    }
    let status = waited.unwrap_or_else(|_| panic!("no exit within 10 s; output:\n{stdout}")).expect("wait");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(took < Duration::from_secs(4), "drain 0.3 s + timeout 1 s, exited after {took:?}");
    assert!(stdout.contains("shutdown complete"), "{stdout}");
}

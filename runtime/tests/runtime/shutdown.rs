//! Graceful shutdown: NOT_SERVING and a failing /readyz during the drain delay, in-flight calls
//! completing, a hard stop at the timeout even when a client holds a stream open, and the
//! example process exiting 0 on SIGTERM.

use grpc_operator_testkit::ports::free_port;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{TestServer, admin_get, example_binary, misbehaving_server};
use crate::service::pb::{GetUserRequest, ListUsersRequest};

/// The example binary with a clean environment, the contract ports and `env`, ready (its
/// `/readyz` answers 200); returns the child, the gRPC port and the admin address.
async fn ready_example(
    env: &[(&str, &str)],
    stdout: std::process::Stdio,
) -> (tokio::process::Child, u16, std::net::SocketAddr) {
    let (grpc, admin) = (free_port(), free_port());
    let mut command = tokio::process::Command::new(example_binary());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GRPC_PORT", grpc.to_string())
        .env("ADMIN_PORT", admin.to_string());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.stdout(stdout).kill_on_drop(true).spawn().expect("example starts");
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let ready = crate::harness::eventually(Duration::from_secs(20), || async {
        let ok = tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && admin_get(admin_addr, "/readyz").await.0 == 200;
        ok.then_some(())
    })
    .await;
    assert!(ready.is_some(), "the example became ready");
    (child, grpc, admin_addr)
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
    let mut stream = client.list_users(ListUsersRequest::default()).await.expect("stream").into_inner();
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
    let env = [("LOG_FORMAT", "json"), ("SHUTDOWN_DRAIN_DELAY", "300ms"), ("SHUTDOWN_TIMEOUT", "1s")];
    let (mut child, grpc, _) = ready_example(&env, std::process::Stdio::piped()).await;

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

#[tokio::test]
async fn calls_that_race_the_goaway_are_served_never_answered_unavailable() {
    let mut server = TestServer::start(misbehaving_server()).await;
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let send = send.ready().await.expect("ready");
    // Twenty callers keep GetUser calls in flight on one connection until it refuses new streams.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut send = send.clone();
        callers.spawn(async move {
            let mut codes = Vec::new();
            loop {
                let Ok(ready) = send.ready().await else { return codes };
                send = ready;
                let request = http::Request::post("http://localhost/user.v1.UserService/GetUser")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .expect("request");
                let Ok((response, mut body)) = send.send_request(request, false) else { return codes };
                if body.send_data(vec![0u8, 0, 0, 0, 2, 0x08, 0x01].into(), true).is_err() {
                    return codes;
                }
                // A stream the server refused after its GOAWAY (REFUSED_STREAM) is a transport
                // error clients retry; any other stream error is a failure.
                let response = match response.await {
                    Ok(response) => response,
                    Err(err) if err.reason() == Some(h2::Reason::REFUSED_STREAM) => continue,
                    Err(err) if err.is_go_away() => return codes,
                    Err(err) => {
                        codes.push(-(err.reason().map_or(1, u32::from) as i32));
                        continue;
                    }
                };
                let status = |h: &http::HeaderMap| {
                    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok())
                };
                let code = match status(response.headers()) {
                    Some(code) => Some(code),
                    None => {
                        let mut body = response.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        body.trailers().await.ok().flatten().as_ref().and_then(status)
                    }
                };
                codes.extend(code);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown().await.expect("join").expect("serve returns Ok");
    let mut codes = Vec::new();
    while let Some(result) = callers.join_next().await {
        codes.extend(result.expect("caller"));
    }
    assert!(codes.len() > 100, "the callers made calls: {}", codes.len());
    let not_ok: Vec<i32> = codes.iter().copied().filter(|c| *c != 0).collect();
    assert!(not_ok.is_empty(), "{} of {} calls failed with {:?}", not_ok.len(), codes.len(), not_ok);
}

#[tokio::test]
async fn a_long_lived_stream_ends_cleanly_when_shutdown_begins() {
    let server = misbehaving_server().configure(|c| c.shutdown.timeout = Duration::from_secs(10));
    let mut server = TestServer::start(server).await;
    let mut client = server.client().await;
    let mut request = tonic::Request::new(ListUsersRequest::default());
    request.metadata_mut().insert("x-end-on-shutdown", "1".parse().expect("value"));
    let mut stream = client.list_users(request).await.expect("stream").into_inner();
    stream.message().await.expect("first message").expect("some");
    let started = Instant::now();
    let serving = server.begin_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(matches!(ended, Ok(None)), "the handler ended its stream with OK: {ended:?}");
    serving.await.expect("join").expect("serve returns Ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "well before the 10 s timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_cannot_report_serving_again_once_shutdown_has_begun() {
    let server = misbehaving_server().configure(|c| c.shutdown.drain_delay = Duration::from_millis(800));
    let mut server = TestServer::start(server).await;
    let health = server.health.clone();
    let serving = server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A dependency check that recovers during the drain must not put the endpoint back.
    health.set_serving("user.v1.UserService", true).await;
    health.set_serving("", true).await;
    assert!(!health.is_serving("user.v1.UserService") && !health.is_serving(""));
    assert_eq!(admin_get(server.admin, "/readyz").await.0, 503);
    serving.await.expect("join").expect("serve returns Ok");
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let (mut child, _, admin_addr) =
        ready_example(&[("SHUTDOWN_DRAIN_DELAY", "30s")], std::process::Stdio::null()).await;
    let pid = child.id().expect("pid").to_string();
    let term = || async {
        let kill = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
        assert!(kill.success());
    };
    term().await;
    // The first SIGTERM starts a 30 s drain; /readyz turns 503.
    let draining = crate::harness::eventually(Duration::from_secs(5), || async {
        (admin_get(admin_addr, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert!(draining.is_some(), "the first SIGTERM began the drain");
    let started = Instant::now();
    term().await;
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .expect("the second SIGTERM exits at once")
        .expect("wait");
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn health_watch_streams_end_when_shutdown_begins_instead_of_holding_the_drain() {
    let server = misbehaving_server().configure(|c| c.shutdown.timeout = Duration::from_secs(10));
    let mut server = TestServer::start(server).await;
    let channel =
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first status").expect("some");
    let started = Instant::now();
    let serving = server.begin_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue, // NOT_SERVING during the drain
                other => return other,
            }
        }
    })
    .await
    .expect("the Watch stream ends");
    assert!(matches!(ended, Ok(None)), "ended with OK: {ended:?}");
    serving.await.expect("join").expect("serve returns Ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "well before the 10 s timeout: {:?}",
        started.elapsed()
    );
}

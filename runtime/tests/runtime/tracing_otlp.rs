//! Tracing end to end: the `user-service` example, configured only by the workload contract's
//! environment, exports its RPC span over OTLP/gRPC to an in-test collector, continuing the
//! caller's W3C `traceparent`, and its JSON access log line carries the same trace id.

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::io::AsyncReadExt;

use crate::harness::{admin_get, example_binary};
use crate::service::pb::GetUserRequest;
use crate::service::pb::user_service_client::UserServiceClient;

/// An OTLP/gRPC trace collector keeping every export request.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Every exported span with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut spans = Vec::new();
        for request in requests.iter() {
            for resource_spans in &request.resource_spans {
                let resource =
                    resource_spans.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                for scope_spans in &resource_spans.scope_spans {
                    for span in &scope_spans.spans {
                        spans.push((resource.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }
}

/// A port free at the time of the call (bound on 127.0.0.1:0, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("addr").port()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_string())
}

#[tokio::test]
async fn the_server_span_reaches_an_otlp_receiver_with_the_callers_trace_id() {
    // The collector.
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
    let collector_addr = listener.local_addr().expect("addr");
    let (stop_collector, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    // The service, as a deployment runs it.
    let grpc_port = free_port();
    let admin_port = std::iter::repeat_with(free_port).find(|&p| p != grpc_port).expect("a second port");
    let mut child = tokio::process::Command::new(example_binary())
        .env("GRPC_PORT", grpc_port.to_string())
        .env("ADMIN_PORT", admin_port.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))
        .env("OTEL_SERVICE_NAME", "user-service-test")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("SHUTDOWN_DRAIN_DELAY", "0ms")
        .env("SHUTDOWN_TIMEOUT", "2s")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env_remove("TLS_MODE")
        .env_remove("GRPC_WEB_ORIGINS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("user-service starts");
    let pid = child.id().expect("pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let stdout_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("user-service exited early with {status}:\n{}", stderr_task.await.unwrap_or_default());
        }
        if tokio::net::TcpStream::connect(admin).await.is_ok() && admin_get(admin, "/readyz").await.0 == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "user-service not ready within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One call, continuing a trace the caller started.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span_id = "00f067aa0ba902b7";
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut client = UserServiceClient::new(channel);
    let mut request = tonic::Request::new(GetUserRequest { user_id: 1 });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{parent_span_id}-01").parse().expect("ascii"));
    let user = client.get_user(request).await.expect("GetUser 1").into_inner();
    assert_eq!(user.name, "alice");
    drop(client);

    // SIGTERM: graceful shutdown flushes the spans before the process exits.
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .kill_on_drop(true)
        .status()
        .await
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}: {kill}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("user-service exits within 10 s of SIGTERM")
        .expect("wait");
    let stdout = stdout_task.await.expect("stdout reader");
    let stderr = stderr_task.await.expect("stderr reader");
    assert_eq!(status.code(), Some(0), "user-service exit: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let _ = stop_collector.send(());
    collector_task.await.expect("collector task").expect("collector serves");

    // The span, as the collector received it.
    let spans = collector.spans();
    let found: Vec<_> = spans.iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one span of trace {trace_id}; the collector got {} spans: {spans:#?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        spans.len()
    );
    let (resource, span) = found[0];
    assert_eq!(hex(&span.parent_span_id), parent_span_id, "{span:#?}");
    assert_eq!(span.span_id.len(), 8, "{span:#?}");
    assert_ne!(hex(&span.span_id), parent_span_id, "{span:#?}");
    assert_eq!(span.kind, SpanKind::Server as i32, "{span:#?}");
    assert_eq!(span.name, "user.v1.UserService/GetUser", "{span:#?}");
    assert_eq!(attribute(&span.attributes, "rpc.system"), Some(&string("grpc")), "{span:#?}");
    assert_eq!(attribute(&span.attributes, "rpc.service"), Some(&string("user.v1.UserService")), "{span:#?}");
    assert_eq!(attribute(&span.attributes, "rpc.method"), Some(&string("GetUser")), "{span:#?}");
    assert_eq!(attribute(&span.attributes, "rpc.grpc.status_code"), Some(&Value::IntValue(0)), "{span:#?}");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano, "{span:#?}");
    assert_eq!(
        attribute(resource, "service.name"),
        Some(&string("user-service-test")),
        "resource {resource:#?}"
    );

    // The access log line of the call carries the trace id.
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "grpc_runtime::access" && l["message"] == "finished call")
        .collect();
    assert_eq!(access.len(), 1, "one access line expected:\n{stdout}");
    let line = access[0];
    assert_eq!(line["grpc_method"], "GetUser", "{line}");
    assert_eq!(line["grpc_code"], "OK", "{line}");
    assert_eq!(line["trace_id"], trace_id, "{line}");
    assert_eq!(
        line["span_id"].as_str(),
        Some(hex(&found[0].1.span_id).as_str()),
        "the server span's id: {line}"
    );
    assert_eq!(line["request_id"].as_str().map(str::len), Some(32), "a generated request id: {line}");
}

//! Tracing end to end: the `user-service` example, configured only by the environment, exports
//! its RPC span to an in-test collector, continuing the caller's trace, and its JSON access log
//! line carries the same trace id. The collector speaks OTLP/gRPC over plaintext or TLS, or
//! OTLP/HTTP with protobuf bodies; the caller's trace arrives as W3C `traceparent`, B3 or
//! Jaeger headers, as `OTEL_PROPAGATORS` selects.

use grpc_operator_testkit::ports::free_port;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_string())
}

/// How the in-test collector listens.
enum Transport {
    /// OTLP/gRPC, plaintext.
    Grpc,
    /// OTLP/gRPC over TLS with a certificate for 127.0.0.1 issued by a test CA; the service gets
    /// the CA through `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    GrpcTls,
    /// OTLP/HTTP protobuf, plaintext, on `/v1/traces`.
    Http,
}

/// A running collector: the URL to give the service, and what it received.
struct RunningCollector {
    endpoint: String,
    collector: Collector,
    /// Request headers of each OTLP/HTTP export.
    http_headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _tmp: tempfile::TempDir,
    ca_file: std::path::PathBuf,
}

async fn start_collector(transport: Transport) -> RunningCollector {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let ca_file = tmp.path().join("collector-ca.crt");
    let http_headers: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = async {
        let _ = stopped.await;
    };
    let (endpoint, task) = match transport {
        Transport::Grpc => {
            let serve = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming_shutdown(incoming, shutdown);
            (format!("http://{addr}"), tokio::spawn(async move { serve.await.expect("collector serves") }))
        }
        Transport::GrpcTls => {
            let ca_key = rcgen::KeyPair::generate().expect("CA key");
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
            let cert = params.signed_by(&key, &issuer).expect("leaf");
            std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
            let identity = tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem());
            let serve = tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("TLS config")
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming_shutdown(incoming, shutdown);
            (format!("https://{addr}"), tokio::spawn(async move { serve.await.expect("collector serves") }))
        }
        Transport::Http => {
            let (requests, headers) = (collector.requests.clone(), http_headers.clone());
            let route =
                axum::routing::post(move |received: http::HeaderMap, body: bytes::Bytes| async move {
                    let request =
                        <ExportTraceServiceRequest as prost::Message>::decode(body).expect("protobuf body");
                    requests.lock().unwrap_or_else(PoisonError::into_inner).push(request);
                    headers.lock().unwrap_or_else(PoisonError::into_inner).push(received);
                    (
                        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                        prost::Message::encode_to_vec(&ExportTraceServiceResponse { partial_success: None }),
                    )
                });
            let app = axum::Router::new().route("/v1/traces", route);
            let listener = incoming.into_inner();
            let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
            (format!("http://{addr}"), tokio::spawn(async move { serve.await.expect("collector serves") }))
        }
    };
    RunningCollector { endpoint, collector, http_headers, stop, task, _tmp: tmp, ca_file }
}

/// What one call through the example left behind.
struct Exported {
    spans: Vec<(Vec<KeyValue>, Span)>,
    stdout: String,
    stderr: String,
    http_headers: Vec<http::HeaderMap>,
}

/// Runs the example with `env` on top of the contract's variables, makes one GetUser(1) call
/// carrying `metadata`, stops the example with SIGTERM (which flushes spans) and the collector.
async fn export_one_call(transport: Transport, env: &[(&str, &str)], metadata: &[(&str, &str)]) -> Exported {
    let running = start_collector(transport).await;
    let grpc_port = free_port();
    let admin_port = free_port();
    let mut command = tokio::process::Command::new(example_binary());
    command
        .env("GRPC_PORT", grpc_port.to_string())
        .env("ADMIN_PORT", admin_port.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &running.endpoint)
        .env("OTEL_SERVICE_NAME", "user-service-test")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("SHUTDOWN_DRAIN_DELAY", "0ms")
        .env("SHUTDOWN_TIMEOUT", "2s");
    for name in [
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_PROPAGATORS",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "TLS_MODE",
        "GRPC_WEB_ORIGINS",
    ] {
        command.env_remove(name);
    }
    if running.ca_file.exists() {
        command.env("OTEL_EXPORTER_OTLP_CERTIFICATE", &running.ca_file);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
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

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut client = UserServiceClient::new(channel);
    let mut request = tonic::Request::new(GetUserRequest { user_id: 1 });
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).expect("key");
        request.metadata_mut().insert(key, v.parse().expect("ascii"));
    }
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
    let _ = running.stop.send(());
    running.task.await.expect("collector task");
    let http_headers = running.http_headers.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Exported { spans: running.collector.spans(), stdout, stderr, http_headers }
}

impl Exported {
    /// The one span of `trace_id`.
    fn span_of(&self, trace_id: &str) -> (&[KeyValue], &Span) {
        let found: Vec<_> = self.spans.iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one span of trace {trace_id}; the collector got {} spans: {:#?}\nstdout:\n{}\nstderr:\n{}",
            self.spans.len(),
            self.spans,
            self.stdout,
            self.stderr
        );
        (&found[0].0, &found[0].1)
    }

    /// The access log line of the call.
    fn access_line(&self) -> serde_json::Value {
        let lines: Vec<serde_json::Value> = self
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect();
        let access: Vec<_> = lines
            .into_iter()
            .filter(|l| l["target"] == "grpc_runtime::access" && l["message"] == "finished call")
            .collect();
        assert_eq!(access.len(), 1, "one access line expected:\n{}", self.stdout);
        access.into_iter().next().unwrap_or_default()
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn the_server_span_reaches_an_otlp_receiver_with_the_callers_trace_id() {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let exported = export_one_call(Transport::Grpc, &[], &[("traceparent", &traceparent)]).await;
    let (resource, span) = exported.span_of(TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    assert_eq!(span.span_id.len(), 8, "{span:#?}");
    assert_ne!(hex(&span.span_id), PARENT_SPAN_ID, "{span:#?}");
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
    let line = exported.access_line();
    assert_eq!(line["grpc_method"], "GetUser", "{line}");
    assert_eq!(line["grpc_code"], "OK", "{line}");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span_id"].as_str(), Some(hex(&span.span_id).as_str()), "the server span's id: {line}");
    assert_eq!(line["request_id"].as_str().map(str::len), Some(32), "a generated request id: {line}");
}

#[tokio::test]
async fn spans_reach_an_https_collector_over_otlp_grpc_with_the_configured_ca_and_headers() {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let env = [("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret")];
    let exported = export_one_call(Transport::GrpcTls, &env, &[("traceparent", &traceparent)]).await;
    let (_, span) = exported.span_of(TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
    assert!(
        !exported.stdout.contains("s3cret") && !exported.stderr.contains("s3cret"),
        "the header value is never logged"
    );
}

#[tokio::test]
async fn spans_reach_an_otlp_http_protobuf_collector_with_the_headers() {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret"),
    ];
    let exported = export_one_call(Transport::Http, &env, &[("traceparent", &traceparent)]).await;
    exported.span_of(TRACE_ID);
    assert!(
        exported.http_headers.iter().any(|h| h.get("authorization").is_some_and(|v| v == "Bearer s3cret")),
        "{:?}",
        exported.http_headers
    );
}

#[tokio::test]
async fn b3_and_jaeger_callers_keep_their_trace() {
    let propagators = [("OTEL_PROPAGATORS", "tracecontext,baggage,b3multi,jaeger")];
    let b3 = [("x-b3-traceid", TRACE_ID), ("x-b3-spanid", PARENT_SPAN_ID), ("x-b3-sampled", "1")];
    let exported = export_one_call(Transport::Grpc, &propagators, &b3).await;
    let (_, span) = exported.span_of(TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(exported.access_line()["trace_id"], TRACE_ID);

    let jaeger_trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let uber = format!("{jaeger_trace}:{PARENT_SPAN_ID}:0:1");
    let exported = export_one_call(Transport::Grpc, &propagators, &[("uber-trace-id", &uber)]).await;
    let (_, span) = exported.span_of(jaeger_trace);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);

    // With only W3C propagation (the default), a B3 caller starts a new trace.
    let exported = export_one_call(Transport::Grpc, &[], &b3).await;
    assert!(exported.spans.iter().all(|(_, s)| hex(&s.trace_id) != TRACE_ID));
}

//! What a call leaves behind: metrics, the access log line and the span agree on the final code,
//! a panic included.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::trace::{Status as SpanStatus, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::Code;
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::{TestServer, metric_value, misbehaving_server};
use crate::service::pb::GetUserRequest;

/// Spans the SDK exports, kept in memory.
#[derive(Debug, Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
        std::future::ready(Ok(()))
    }
}

/// One log event: level, target and its fields as text.
#[derive(Debug, Clone)]
struct Event {
    level: tracing::Level,
    target: String,
    fields: Vec<(String, String)>,
}

impl Event {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Log events, kept in memory.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

struct Visitor<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        let meta = event.metadata();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(Event {
            level: *meta.level(),
            target: meta.target().to_string(),
            fields,
        });
    }
}

#[tokio::test]
async fn a_panic_is_internal_in_the_metrics_the_access_log_and_the_span() {
    let spans = Spans::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
    let events = Events::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(events.clone());
    // The test runs on one thread (current-thread runtime): the server's tasks see this default.
    let _default = tracing::subscriber::set_default(subscriber);
    // Callsite interest is cached process-wide: a callsite first hit by another test's thread,
    // with no subscriber there, may be cached as "never". Re-evaluate with this subscriber.
    tracing::callsite::rebuild_interest_cache();

    let server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;
    let status = client.get_user(GetUserRequest { user_id: -2 }).await.expect_err("panics");
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    let series = |code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"GetUser\",grpc_service=\"user.v1.UserService\",grpc_type=\"unary\"}}"
        )
    };
    assert_eq!(metric_value(server.admin, &series("Internal")).await, 1.0);
    assert_eq!(metric_value(server.admin, &series("Canceled")).await, 0.0);
    assert_eq!(metric_value(server.admin, grpc_runtime::metrics::PANICS_RECOVERED_TOTAL).await, 1.0);

    let access: Vec<Event> = events
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|e| e.target == grpc_runtime::layers::access_log::ACCESS_LOG_TARGET)
        .filter(|e| e.field("grpc_method") == Some("GetUser"))
        .cloned()
        .collect();
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0].field("grpc_code"), Some("Internal"), "{access:?}");
    assert_eq!(access[0].level, tracing::Level::ERROR, "{access:?}");

    server.stop().await;
    let _ = provider.force_flush();
    let spans = spans.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let span = spans.iter().find(|s| s.name == "user.v1.UserService/GetUser").unwrap_or_else(|| {
        panic!("no GetUser span in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
    });
    assert_eq!(span.status, SpanStatus::error("Internal"), "{span:?}");
    let code = span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "rpc.grpc.status_code")
        .map(|kv| kv.value.clone());
    assert_eq!(code, Some(opentelemetry::Value::I64(13)), "{span:?}");
}

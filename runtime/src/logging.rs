//! The JSON log line format: one object per line with `timestamp`, `level`, `target`, the
//! event's fields, and, inside an RPC, its `trace_id`, `span_id` and `request_id`.
//!
//! Hand-written rather than tracing-subscriber's JSON format or json-subscriber because the
//! access log writes one line per call: tracing-subscriber's JSON formatter re-serializes every
//! enclosing span's fields for each line and on each field record, and json-subscriber builds a
//! map of JSON values per line; measured with callgrind, each cost more instructions per line
//! than the whole bare tonic call (see docs/benchmarks.md). This layer formats events only
//! (never span fields) into a reused per-thread buffer and writes it with one `write`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// What log lines inside an RPC carry, stored in the RPC span's extensions by the trace layer.
#[derive(Debug, Clone)]
pub(crate) struct LogContext {
    pub(crate) trace_id: opentelemetry::trace::TraceId,
    pub(crate) span_id: opentelemetry::trace::SpanId,
    pub(crate) request_id: http::HeaderValue,
}

thread_local! {
    /// The RPC whose code runs on this thread right now, when the observe layer runs without a
    /// `tracing` span (JSON logs and no span export): set around every poll of the call's
    /// future and response body, so log lines of the handler carry the call's ids.
    static CURRENT: RefCell<Option<crate::layers::context::RequestContext>> = const { RefCell::new(None) };
}

/// Restores the previous current RPC when dropped.
pub(crate) struct CurrentRpc(Option<crate::layers::context::RequestContext>);

impl CurrentRpc {
    /// Makes `rpc` the current RPC of this thread until the guard drops.
    pub(crate) fn enter(rpc: &crate::layers::context::RequestContext) -> CurrentRpc {
        let previous = CURRENT.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.replace(rpc.clone())));
        CurrentRpc(previous)
    }
}

impl Drop for CurrentRpc {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = previous;
            }
        });
    }
}

/// Attaches `log` to the span's extensions, when the subscriber is a tracing-subscriber
/// `Registry` (it is whenever [`crate::Telemetry::init`] installed it).
pub(crate) fn attach(span: &tracing::Span, log: LogContext) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(span) = registry.span(id)
        {
            span.extensions_mut().insert(log);
        }
    });
}

/// A `tracing_subscriber` layer writing JSON lines to a writer.
pub(crate) struct JsonLines<W> {
    make_writer: W,
}

impl<W> JsonLines<W> {
    pub(crate) fn new(make_writer: W) -> Self {
        JsonLines { make_writer }
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        LINE.with(|line| {
            // A re-entrant event (a field's Debug impl that logs) gets a fresh buffer.
            let mut fallback = String::new();
            let mut borrowed = line.try_borrow_mut();
            let buf: &mut String = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fallback,
            };
            buf.clear();
            let meta = event.metadata();
            buf.push_str("{\"timestamp\":\"");
            let _ = write!(buf, "{}", jiff::Timestamp::now());
            buf.push_str("\",\"level\":\"");
            buf.push_str(meta.level().as_str());
            buf.push_str("\",\"target\":");
            push_json_str(buf, meta.target());
            let mut visitor = FieldsVisitor { buf, scratch: String::new() };
            event.record(&mut visitor);
            let buf = visitor.buf;
            let push_ids = |buf: &mut String, trace_id: &[u8], span_id: &[u8], request_id: &str| {
                buf.push_str(",\"trace_id\":\"");
                push_hex(buf, trace_id);
                buf.push_str("\",\"span_id\":\"");
                push_hex(buf, span_id);
                buf.push_str("\",\"request_id\":");
                push_json_str(buf, request_id);
            };
            let mut found = false;
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope {
                    if let Some(log) = span.extensions().get::<LogContext>() {
                        push_ids(
                            buf,
                            &log.trace_id.to_bytes(),
                            &log.span_id.to_bytes(),
                            log.request_id.to_str().unwrap_or(""),
                        );
                        found = true;
                        break;
                    }
                }
            }
            if !found {
                CURRENT.with(|c| {
                    if let Ok(current) = c.try_borrow()
                        && let Some(rpc) = current.as_ref()
                        && let Some(ids) = rpc.trace()
                    {
                        push_ids(
                            buf,
                            &ids.trace_id.to_bytes(),
                            &ids.span_id.to_bytes(),
                            rpc.request_id().as_str(),
                        );
                    }
                });
            }
            buf.push_str("}\n");
            let _ = self.make_writer.make_writer_for(meta).write_all(buf.as_bytes());
        });
    }
}

struct FieldsVisitor<'a> {
    buf: &'a mut String,
    scratch: String,
}

impl FieldsVisitor<'_> {
    fn key(&mut self, field: &Field) {
        self.buf.push(',');
        push_json_str(self.buf, field.name());
        self.buf.push(':');
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.buf, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.buf, "{value}");
        } else {
            let _ = write!(self.buf, "\"{value}\"");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.buf.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value}");
        self.key(field);
        push_json_str(self.buf, &self.scratch);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        self.key(field);
        push_json_str(self.buf, &self.scratch);
    }
}

/// Appends lowercase hex digits of `bytes` (trace and span ids, as W3C writes them).
fn push_hex(buf: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        buf.push(char::from(HEX[usize::from(b >> 4)]));
        buf.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Bytes that must be escaped in a JSON string: control characters, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `s` as a JSON string literal (RFC 8259 escaping). Works on bytes: every byte that
/// needs escaping is ASCII, so runs of other bytes (multi-byte UTF-8 included) are copied whole.
fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    let bytes = s.as_bytes();
    // Fast path for the usual case. A fold without early exit over plain comparisons
    // vectorizes; `any` would test byte by byte.
    let needs_escape = bytes.iter().fold(false, |acc, &b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        buf.push_str(s);
        buf.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        buf.push_str(&s[start..i]);
        match b {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            _ => {
                let _ = write!(buf, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_strings_are_escaped_per_rfc_8259() {
        let mut buf = String::new();
        push_json_str(&mut buf, "a\"b\\c\nd\u{1}é");
        assert_eq!(buf, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&buf).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn lines_are_json_objects_with_event_fields_and_the_rpc_ids_of_the_enclosing_span() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, ratio = 0.5, ok = true, name = "x\"y", "plain line");
            let span = tracing::info_span!("grpc.server");
            attach(
                &span,
                LogContext {
                    trace_id: opentelemetry::trace::TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128),
                    span_id: opentelemetry::trace::SpanId::from(0x00f067aa0ba902b7u64),
                    request_id: http::HeaderValue::from_static("req-1"),
                },
            );
            let _entered = span.enter();
            tracing::warn!(error = %"boom", "inside");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["message"], "plain line");
        assert_eq!(lines[0]["answer"], 42);
        assert_eq!(lines[0]["ratio"], 0.5);
        assert_eq!(lines[0]["ok"], true);
        assert_eq!(lines[0]["name"], "x\"y");
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span_id"], "00f067aa0ba902b7");
        assert_eq!(lines[1]["request_id"], "req-1");
        assert_eq!(lines[1]["level"], "WARN");
        assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

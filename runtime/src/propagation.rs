//! Trace context propagators chosen by `OTEL_PROPAGATORS`, so callers instrumented with W3C
//! trace context, Zipkin's B3 or Jaeger keep one trace across the service.
//!
//! `tracecontext` and `baggage` come from the OpenTelemetry SDK. B3 and Jaeger are written here,
//! because no maintained crate fits: B3's was `opentelemetry-zipkin`, deprecated with the whole
//! Zipkin exporter in 0.33, and `opentelemetry-jaeger-propagator` is released only for
//! opentelemetry 0.32 (this crate uses 0.33, and the two versions' propagator traits are
//! different types). Both formats are a few headers of hex.

use std::borrow::Cow;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

/// A propagator named in `OTEL_PROPAGATORS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Propagator {
    /// W3C `traceparent` / `tracestate` (`tracecontext`).
    TraceContext,
    /// W3C `baggage` (`baggage`).
    Baggage,
    /// Zipkin B3, single `b3` header (`b3`).
    B3,
    /// Zipkin B3, `X-B3-*` headers (`b3multi`).
    B3Multi,
    /// Jaeger `uber-trace-id` and `uberctx-*` baggage (`jaeger`).
    Jaeger,
}

impl Propagator {
    /// The `OTEL_PROPAGATORS` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagator::TraceContext => "tracecontext",
            Propagator::Baggage => "baggage",
            Propagator::B3 => "b3",
            Propagator::B3Multi => "b3multi",
            Propagator::Jaeger => "jaeger",
        }
    }

    /// Parses one name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Propagator::TraceContext,
            Propagator::Baggage,
            Propagator::B3,
            Propagator::B3Multi,
            Propagator::Jaeger,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }

    pub(crate) fn build(self) -> Box<dyn TextMapPropagator + Send + Sync> {
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        match self {
            Propagator::TraceContext => Box::new(TraceContextPropagator::new()),
            Propagator::Baggage => Box::new(BaggagePropagator::new()),
            Propagator::B3 => Box::new(B3Propagator { multi: false }),
            Propagator::B3Multi => Box::new(B3Propagator { multi: true }),
            Propagator::Jaeger => Box::new(JaegerPropagator),
        }
    }
}

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// Zipkin's B3: the single `b3: {trace-id}-{span-id}[-{sampled}[-{parent-span-id}]]` header, or
/// the `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` and `X-B3-Flags` headers. Extraction
/// accepts both forms, the single header first; injection writes the configured one.
#[derive(Debug, Clone, Copy)]
pub struct B3Propagator {
    multi: bool,
}

fn b3_ids(trace: &str, span: &str) -> Option<(TraceId, SpanId)> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(trace, 16) || hex(trace, 32)) || !hex(span, 16) {
        return None;
    }
    let trace_id = TraceId::from(u128::from_str_radix(trace, 16).ok()?);
    let span_id = SpanId::from(u64::from_str_radix(span, 16).ok()?);
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((trace_id, span_id))
}

/// B3's sampling state: `1`, `d` (debug) or `true` sample; `0` or `false` do not; absent defers.
fn b3_sampled(state: Option<&str>) -> Option<bool> {
    match state? {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn b3_context(trace: TraceId, span: SpanId, sampled: Option<bool>) -> SpanContext {
    let flags = if sampled == Some(true) { TraceFlags::SAMPLED } else { TraceFlags::default() };
    SpanContext::new(trace, span, flags, true, TraceState::default())
}

fn extract_b3(extractor: &dyn Extractor) -> Option<SpanContext> {
    if let Some(single) = extractor.get(B3_SINGLE) {
        let mut parts = single.trim().split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        let sampled = parts.next();
        let (trace, span) = b3_ids(trace, span)?;
        return Some(b3_context(trace, span, b3_sampled(sampled)));
    }
    let (trace, span) = b3_ids(extractor.get(B3_TRACE_ID)?.trim(), extractor.get(B3_SPAN_ID)?.trim())?;
    let debug = extractor.get(B3_FLAGS).is_some_and(|f| f.trim() == "1");
    let sampled = if debug { Some(true) } else { b3_sampled(extractor.get(B3_SAMPLED).map(str::trim)) };
    Some(b3_context(trace, span, sampled))
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        if self.multi {
            injector.set(B3_TRACE_ID, sc.trace_id().to_string());
            injector.set(B3_SPAN_ID, sc.span_id().to_string());
            injector.set(B3_SAMPLED, sampled.to_string());
        } else {
            injector.set(B3_SINGLE, format!("{}-{}-{sampled}", sc.trace_id(), sc.span_id()));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_b3(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(if self.multi { B3_MULTI_FIELDS.as_slice() } else { B3_SINGLE_FIELDS.as_slice() })
    }
}

static B3_SINGLE_FIELDS: std::sync::LazyLock<[String; 1]> =
    std::sync::LazyLock::new(|| [B3_SINGLE.to_string()]);
static B3_MULTI_FIELDS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    [B3_TRACE_ID.to_string(), B3_SPAN_ID.to_string(), B3_SAMPLED.to_string(), B3_FLAGS.to_string()]
});

const UBER_TRACE_ID: &str = "uber-trace-id";
const UBER_BAGGAGE_PREFIX: &str = "uberctx-";
/// Jaeger's flags: bit 0 sampled, bit 1 debug (debug implies sampled).
const JAEGER_SAMPLED: u8 = 0x01;
const JAEGER_DEBUG: u8 = 0x02;

/// Jaeger's native propagation: `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`
/// (hex; the trace id 64 or 128 bits, leading zeros optional; the parent id deprecated and
/// ignored) and baggage in `uberctx-{key}` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct JaegerPropagator;

fn parse_uber_trace_id(value: &str) -> Option<SpanContext> {
    // Some clients URL-encode the separators.
    let value: Cow<'_, str> = if value.contains('%') {
        Cow::Owned(value.replace("%3A", ":").replace("%3a", ":"))
    } else {
        Cow::Borrowed(value)
    };
    let mut parts = value.split(':');
    let (trace, span, _parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || trace.is_empty() || trace.len() > 32 || span.is_empty() || span.len() > 16 {
        return None;
    }
    let trace_id = TraceId::from(u128::from_str_radix(trace, 16).ok()?);
    let span_id = SpanId::from(u64::from_str_radix(span, 16).ok()?);
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let sampled = flags & (JAEGER_SAMPLED | JAEGER_DEBUG) != 0;
    let trace_flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    Some(SpanContext::new(trace_id, span_id, trace_flags, true, TraceState::default()))
}

impl TextMapPropagator for JaegerPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let flags = if sc.is_sampled() { JAEGER_SAMPLED } else { 0 };
            injector.set(UBER_TRACE_ID, format!("{}:{}:0:{flags:x}", sc.trace_id(), sc.span_id()));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        use opentelemetry::baggage::BaggageExt;
        let mut cx = match extractor.get(UBER_TRACE_ID).and_then(parse_uber_trace_id) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        };
        let baggage: Vec<KeyValue> = extractor
            .keys()
            .into_iter()
            .filter_map(|key| {
                let name = key.strip_prefix(UBER_BAGGAGE_PREFIX)?;
                let value = extractor.get(key)?;
                (!name.is_empty()).then(|| KeyValue::new(name.to_string(), value.to_string()))
            })
            .collect();
        if !baggage.is_empty() {
            cx = cx.with_baggage(baggage);
        }
        cx
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.as_slice())
    }
}

static FIELDS: std::sync::LazyLock<[String; 1]> = std::sync::LazyLock::new(|| [UBER_TRACE_ID.to_string()]);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn b3_single_and_multi_headers_are_extracted_and_injected() {
        let single = B3Propagator { multi: false };
        let multi = B3Propagator { multi: true };
        let cx = single.extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(sc.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled() && sc.is_remote());

        let mut out = HashMap::new();
        multi.inject_context(&cx, &mut out);
        assert_eq!(out.get("x-b3-traceid").map(String::as_str), Some("80f198ee56343ba864fe8b2a57d3eff7"));
        assert_eq!(out.get("x-b3-sampled").map(String::as_str), Some("1"));
        let back = multi.extract(&out);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());

        let mut out = HashMap::new();
        single.inject_context(&cx, &mut out);
        assert_eq!(
            out.get("b3").map(String::as_str),
            Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        );

        // 64-bit trace ids, debug flag, not sampled, and garbage.
        let sc = extract_b3(&headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        assert_eq!(sc.trace_id().to_string(), "000000000000000064fe8b2a57d3eff7");
        assert!(sc.is_sampled());
        assert!(
            !extract_b3(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")])).unwrap().is_sampled()
        );
        for bad in ["0", "xyz-e457b5a2e4d86bd1", "64fe8b2a57d3eff7", "64fe8b2a57d3eff-e457b5a2e4d86bd1"] {
            assert!(extract_b3(&headers(&[("b3", bad)])).is_none(), "{bad}");
        }
    }

    #[test]
    fn jaeger_headers_round_trip_and_bad_ones_are_ignored() {
        let mut headers = HashMap::new();
        headers.insert(
            "uber-trace-id".to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1".to_string(),
        );
        headers.insert("uberctx-plan".to_string(), "gold".to_string());
        let cx = JaegerPropagator.extract(&headers);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(cx.baggage().get("plan").map(|v| v.to_string()), Some("gold".into()));

        let mut out = HashMap::new();
        JaegerPropagator.inject_context(&cx, &mut out);
        assert_eq!(
            out.get("uber-trace-id").map(String::as_str),
            Some("4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1")
        );

        // A 64-bit trace id without leading zeros, URL-encoded separators, debug flag.
        let sc = parse_uber_trace_id("a3ce929d0e0e4736%3A00f067aa0ba902b7%3A0%3A2").unwrap();
        assert_eq!(sc.trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(sc.is_sampled());
        for bad in ["", "x:y:0:1", "0:00f067aa0ba902b7:0:1", "4bf9:0:0:1", "1:2:3", "1:2:3:4:5"] {
            assert!(parse_uber_trace_id(bad).is_none(), "{bad}");
        }
    }
}

//! PromQL from the contract's names.
//!
//! Hand-written: the Rust PromQL crates parse expressions, none builds them,
//! and the rules need only selectors and a few aggregations. Metric and
//! label names come only from [`grpc_contract::metrics`] constants (and
//! Prometheus's own `up`, `le`, `job`, `namespace`), and label values are
//! escaped, so an expression is never assembled from free text.

use std::fmt;

use grpc_contract::metrics as m;

/// `job`: the ServiceMonitor's `jobLabel` (`app.kubernetes.io/name`), so the
/// GrpcService's name.
pub const JOB: &str = "job";
/// `namespace`: the target's namespace.
pub const NAMESPACE: &str = "namespace";
/// `pod`: the target's pod.
pub const POD: &str = "pod";
/// `le`: a histogram bucket's upper bound.
pub const LE: &str = "le";
/// `up`: Prometheus's per-target health.
pub const UP: &str = "up";

/// A label matcher operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `=~`
    Re,
    /// `!~`
    Nre,
}

/// One label matcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    label: &'static str,
    op: Op,
    value: String,
}

/// A vector selector: a metric name and matchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

impl Selector {
    /// `metric{}`.
    pub fn new(metric: &str) -> Self {
        Self { metric: metric.to_owned(), matchers: Vec::new() }
    }

    /// `metric_suffix{}` of a histogram (`_bucket`, `_count`).
    pub fn histogram(metric: &str, suffix: HistogramSeries) -> Self {
        Self::new(&format!("{metric}{}", suffix.as_str()))
    }

    /// Adds a matcher.
    #[must_use]
    pub fn with(mut self, label: &'static str, op: Op, value: impl Into<String>) -> Self {
        self.matchers.push(Matcher { label, op, value: value.into() });
        self
    }

    /// Adds `label="value"`.
    #[must_use]
    pub fn eq(self, label: &'static str, value: impl Into<String>) -> Self {
        self.with(label, Op::Eq, value)
    }
}

/// The series of a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistogramSeries {
    /// `_bucket`
    Bucket,
    /// `_count`
    Count,
}

impl HistogramSeries {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bucket => "_bucket",
            Self::Count => "_count",
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let op = match m.op {
                Op::Eq => "=",
                Op::Ne => "!=",
                Op::Re => "=~",
                Op::Nre => "!~",
            };
            write!(f, "{}{op}{}", m.label, quote(&m.value))?;
        }
        f.write_str("}")
    }
}

/// A PromQL string literal: double-quoted, with `\` and `"` escaped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A regex alternative matching each of `values` literally (RE2 syntax, as
/// Prometheus anchors it).
pub fn alternatives(values: &[&str]) -> String {
    values.iter().map(|v| regex::escape(v)).collect::<Vec<_>>().join("|")
}

/// `rate(selector[window])`.
pub fn rate(selector: &Selector, window: &str) -> String {
    format!("rate({selector}[{window}])")
}

/// `increase(selector[window])`.
pub fn increase(selector: &Selector, window: &str) -> String {
    format!("increase({selector}[{window}])")
}

/// `sum_over_time(selector[window])`.
pub fn sum_over_time(selector: &Selector, window: &str) -> String {
    format!("sum_over_time({selector}[{window}])")
}

/// `sum by (labels) (expr)`.
pub fn sum_by(labels: &[&str], expr: &str) -> String {
    format!("sum by ({}) ({expr})", labels.join(", "))
}

/// `min by (labels) (expr)`.
pub fn min_by(labels: &[&str], expr: &str) -> String {
    format!("min by ({}) ({expr})", labels.join(", "))
}

/// `histogram_quantile(q, expr)`.
pub fn histogram_quantile(q: f64, expr: &str) -> String {
    format!("histogram_quantile({}, {expr})", super::number(q))
}

/// The series of one GrpcService as the ServiceMonitor scrapes them.
pub fn service_selector(metric: &str, namespace: &str, name: &str) -> Selector {
    Selector::new(metric).eq(NAMESPACE, namespace).eq(JOB, name)
}

/// `grpc_server_handled_total` of one GrpcService's application calls (the
/// runtime's own health and reflection services left out).
pub fn handled(namespace: &str, name: &str) -> Selector {
    service_selector(m::SERVER_HANDLED_TOTAL, namespace, name).with(
        m::LABEL_SERVICE,
        Op::Nre,
        alternatives(m::INFRASTRUCTURE_SERVICES),
    )
}

/// [`handled`] with a server-error code.
pub fn server_errors(namespace: &str, name: &str) -> Selector {
    handled(namespace, name).with(m::LABEL_CODE, Op::Re, m::server_error_code_regex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_escape_values_and_name_the_contracts_metrics() {
        let s = server_errors("shop", "user-service");
        assert_eq!(
            s.to_string(),
            r#"grpc_server_handled_total{namespace="shop", job="user-service", grpc_service!~"grpc\\.health\\.v1\\.Health|grpc\\.reflection\\.v1\\.ServerReflection|grpc\\.reflection\\.v1alpha\\.ServerReflection", grpc_code=~"Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss"}"#
        );
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}

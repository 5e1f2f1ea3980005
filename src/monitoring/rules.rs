//! The PrometheusRule's rule group: one per GrpcService.
//!
//! Every series is selected by `namespace` and `job` (the ServiceMonitor's
//! `jobLabel` makes `job` the GrpcService's name), so rules of different
//! services never mix. Alerts carry `severity`, `summary`, `description` and
//! `runbook_url`.
//!
//! Series the rules create per GrpcService: none without an SLO; with one,
//! two 5m rate recordings and seven ratio recordings (nine series), plus an
//! `ALERTS` series per firing alert and label set.

use grpc_contract::metrics as m;
use serde_json::{Map, Value, json};

use super::promql::{
    self, HistogramSeries, JOB, NAMESPACE, Op, POD, Selector, histogram_quantile, increase, min_by, rate,
    service_selector, sum_by, sum_over_time,
};
use super::{BURN_WINDOWS, MIN_REQUESTS_PER_SECOND, ValidAlerts, ValidSlo, number};
use crate::reconcile::validate::ValidatedService;

/// Error ratio above `errorRatePercent`.
pub const ERROR_RATE_HIGH: &str = "GrpcServiceErrorRateHigh";
/// p99 latency above `latencyP99Seconds`.
pub const LATENCY_HIGH: &str = "GrpcServiceLatencyHigh";
/// A scrape target is down.
pub const TARGET_DOWN: &str = "GrpcServiceTargetDown";
/// Handlers panicked.
pub const PANICS_RECOVERED: &str = "GrpcServicePanicsRecovered";
/// The served certificate is close to expiry.
pub const CERTIFICATE_EXPIRING: &str = "GrpcServiceCertificateExpiring";
/// The SLO's error budget burns too fast.
pub const ERROR_BUDGET_BURN: &str = "GrpcServiceErrorBudgetBurn";

/// Recording: server errors per second over 5m, per GrpcService.
pub const SLI_ERRORS_RATE5M: &str = "grpcservice:sli_errors:rate5m";
/// Recording: calls per second over 5m, per GrpcService.
pub const SLI_REQUESTS_RATE5M: &str = "grpcservice:sli_requests:rate5m";

/// Recording: the server-error ratio over `window`.
pub fn sli_ratio(window: &str) -> String {
    format!("grpcservice:sli_errors:ratio_rate{window}")
}

/// The windows of the ratio recordings: every short and long window of
/// [`BURN_WINDOWS`].
pub const RATIO_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// A window in Prometheus notation (`1h`, `1d`, `30m`).
fn hours(h: u32) -> String {
    if h.is_multiple_of(24) { format!("{}d", h / 24) } else { format!("{h}h") }
}

fn minutes(min: u32) -> String {
    if min.is_multiple_of(60) { hours(min / 60) } else { format!("{min}m") }
}

/// Labels by which per-method alerts aggregate.
const BY_METHOD: [&str; 4] = [NAMESPACE, JOB, m::LABEL_SERVICE, m::LABEL_METHOD];
/// Labels by which per-service recordings aggregate.
const BY_SERVICE: [&str; 2] = [NAMESPACE, JOB];

/// The group's name.
pub fn group_name(svc: &ValidatedService) -> String {
    format!("grpcservice.{}.{}", svc.namespace, svc.name)
}

/// The rule group of `svc`.
pub fn group(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let mut rules = Vec::new();
    if alerts.slo.is_some() {
        rules.extend(slo_recordings(svc));
    }
    rules.push(error_rate(svc, alerts));
    rules.push(latency(svc, alerts));
    rules.push(target_down(svc, alerts));
    rules.push(panics(svc, alerts));
    if svc.tls.enabled() {
        rules.push(certificate_expiring(svc, alerts));
    }
    if let Some(slo) = &alerts.slo {
        rules.extend(burn_alerts(svc, alerts, slo));
    }
    json!({"name": group_name(svc), "rules": rules})
}

struct Alert<'a> {
    name: &'static str,
    expr: String,
    for_: Option<&'a str>,
    page: bool,
    summary: String,
    description: String,
    extra_labels: Vec<(&'static str, String)>,
}

fn alert(alerts: &ValidAlerts, a: Alert<'_>) -> Value {
    let mut labels = Map::new();
    let severity = if a.page { &alerts.page_severity } else { &alerts.ticket_severity };
    labels.insert("severity".to_owned(), json!(severity));
    for (k, v) in a.extra_labels {
        labels.insert(k.to_owned(), json!(v));
    }
    let base = &alerts.runbook_base_url;
    let runbook = match base.chars().last() {
        // GitHub heading anchors are lower case.
        Some('#') => format!("{base}{}", a.name.to_lowercase()),
        Some('/') => format!("{base}{}", a.name),
        _ => format!("{base}/{}", a.name),
    };
    let mut rule = json!({
        "alert": a.name,
        "expr": a.expr,
        "labels": labels,
        "annotations": {
            "summary": a.summary,
            "description": a.description,
            "runbook_url": runbook,
        },
    });
    if let Some(f) = a.for_
        && let Some(obj) = rule.as_object_mut()
    {
        obj.insert("for".to_owned(), json!(f));
    }
    rule
}

fn error_rate(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    let errors = sum_by(&BY_METHOD, &rate(&promql::server_errors(ns, name), "5m"));
    let calls = sum_by(&BY_METHOD, &rate(&promql::handled(ns, name), "5m"));
    let expr = format!(
        "(\n  {errors}\n/\n  {calls}\n) * 100 > {}\nand on ({})\n  {calls} >= {}",
        number(alerts.error_rate_percent),
        BY_METHOD.join(", "),
        number(MIN_REQUESTS_PER_SECOND),
    );
    alert(
        alerts,
        Alert {
            name: ERROR_RATE_HIGH,
            expr,
            for_: Some(&alerts.for_),
            page: true,
            summary: format!(
                "{{{{ $labels.grpc_service }}}}/{{{{ $labels.grpc_method }}}} of {name} fails too often"
            ),
            description: format!(
                "{{{{ $value | humanize }}}}% of the calls to {{{{ $labels.grpc_service }}}}/{{{{ $labels.grpc_method }}}} on GrpcService {ns}/{name} ended in a server error (Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable or DataLoss) over the last 5 minutes; the threshold is {}%.",
                number(alerts.error_rate_percent)
            ),
            extra_labels: Vec::new(),
        },
    )
}

/// Unary calls of the application's services (health `Watch` streams last
/// for hours).
fn unary(metric: &str, series: HistogramSeries, ns: &str, name: &str) -> Selector {
    Selector::histogram(metric, series).eq(NAMESPACE, ns).eq(JOB, name).eq(m::LABEL_TYPE, "unary").with(
        m::LABEL_SERVICE,
        Op::Nre,
        promql::alternatives(m::INFRASTRUCTURE_SERVICES),
    )
}

fn latency(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    let mut by_le: Vec<&str> = BY_METHOD.to_vec();
    by_le.push(promql::LE);
    let buckets = rate(&unary(m::SERVER_HANDLING_SECONDS, HistogramSeries::Bucket, ns, name), "5m");
    let calls =
        sum_by(&BY_METHOD, &rate(&unary(m::SERVER_HANDLING_SECONDS, HistogramSeries::Count, ns, name), "5m"));
    let expr = format!(
        // `>=`: at the largest allowed threshold (10 s, the last finite
        // bucket) a p99 in the +Inf bucket reads exactly 10.
        "{} >= {}\nand on ({})\n  {calls} >= {}",
        histogram_quantile(0.99, &sum_by(&by_le, &buckets)),
        number(alerts.latency_p99_seconds),
        BY_METHOD.join(", "),
        number(MIN_REQUESTS_PER_SECOND),
    );
    alert(
        alerts,
        Alert {
            name: LATENCY_HIGH,
            expr,
            for_: Some(&alerts.for_),
            page: true,
            summary: format!(
                "{{{{ $labels.grpc_service }}}}/{{{{ $labels.grpc_method }}}} of {name} is slow"
            ),
            description: format!(
                "The p99 latency of unary calls to {{{{ $labels.grpc_service }}}}/{{{{ $labels.grpc_method }}}} on GrpcService {ns}/{name} is {{{{ $value | humanizeDuration }}}} over the last 5 minutes; the threshold is {}s (10s means at least 10s).",
                number(alerts.latency_p99_seconds)
            ),
            extra_labels: Vec::new(),
        },
    )
}

fn target_down(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    alert(
        alerts,
        Alert {
            name: TARGET_DOWN,
            expr: format!("{} == 0", service_selector(promql::UP, ns, name)),
            for_: Some(&alerts.for_),
            page: true,
            summary: format!("A target of {name} is down"),
            description: format!(
                "Prometheus cannot scrape {{{{ $labels.instance }}}} ({{{{ $labels.endpoint }}}}) of GrpcService {ns}/{name}: the pod is down, not ready for long, or its admin port does not answer."
            ),
            extra_labels: Vec::new(),
        },
    )
}

fn panics(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    let sel = service_selector(m::PANICS_RECOVERED_TOTAL, ns, name);
    alert(
        alerts,
        Alert {
            name: PANICS_RECOVERED,
            expr: format!("{} > 0", sum_by(&[NAMESPACE, JOB, POD], &increase(&sel, "5m"))),
            // A recovered panic is an event: it alerts at once.
            for_: None,
            page: false,
            summary: format!("Handlers of {name} panicked"),
            description: format!(
                "{{{{ $value | humanize }}}} handler panics in pod {{{{ $labels.pod }}}} of GrpcService {ns}/{name} over the last 5 minutes; each was answered INTERNAL. The log line `handler panicked` has the method and location."
            ),
            extra_labels: Vec::new(),
        },
    )
}

fn certificate_expiring(svc: &ValidatedService, alerts: &ValidAlerts) -> Value {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    let sel = service_selector(m::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, ns, name);
    // Renewal starts `renewBefore` ahead; half of it gone without a new
    // certificate means renewal or its delivery is failing.
    let margin = svc.tls.renew_before_seconds / 2;
    alert(
        alerts,
        Alert {
            name: CERTIFICATE_EXPIRING,
            expr: format!("{} - time() < {margin}", min_by(&[NAMESPACE, JOB, POD], &format!("{sel} > 0"))),
            for_: Some(&alerts.for_),
            page: false,
            summary: format!("The certificate of {name} expires soon"),
            description: format!(
                "Pod {{{{ $labels.pod }}}} of GrpcService {ns}/{name} serves a certificate that expires in {{{{ $value | humanizeDuration }}}}, though it is renewed {}s ahead: check the GrpcService's CertificateReady condition and the runtime's grpc_runtime_tls_reloads_total.",
                svc.tls.renew_before_seconds
            ),
            extra_labels: Vec::new(),
        },
    )
}

fn slo_recordings(svc: &ValidatedService) -> Vec<Value> {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    let mut rules = vec![
        json!({"record": SLI_ERRORS_RATE5M, "expr": sum_by(&BY_SERVICE, &rate(&promql::server_errors(ns, name), "5m"))}),
        json!({"record": SLI_REQUESTS_RATE5M, "expr": sum_by(&BY_SERVICE, &rate(&promql::handled(ns, name), "5m"))}),
    ];
    let errors = service_selector(SLI_ERRORS_RATE5M, ns, name);
    let requests = service_selector(SLI_REQUESTS_RATE5M, ns, name);
    for window in RATIO_WINDOWS {
        // Longer windows from the 5m recordings, weighted by traffic: one
        // sample per evaluation instead of rate() over days of raw series.
        let expr = if window == "5m" {
            format!("{errors}\n/\n{requests}")
        } else {
            format!("{}\n/\n{}", sum_over_time(&errors, window), sum_over_time(&requests, window))
        };
        rules.push(json!({"record": sli_ratio(window), "expr": expr}));
    }
    rules
}

fn burn_alerts(svc: &ValidatedService, alerts: &ValidAlerts, slo: &ValidSlo) -> Vec<Value> {
    let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
    BURN_WINDOWS
        .iter()
        .map(|w| {
            let (long, short) = (hours(w.long_hours), minutes(w.short_minutes));
            let factor = w.factor(slo.window_days);
            let threshold = number(factor * slo.budget());
            let ratio = |window: &str| service_selector(&sli_ratio(window), ns, name);
            let expr = format!(
                "{} > {threshold}\nand on ({})\n{} > {threshold}",
                ratio(&long),
                BY_SERVICE.join(", "),
                ratio(&short)
            );
            alert(
                alerts,
                Alert {
                    name: ERROR_BUDGET_BURN,
                    expr,
                    for_: None,
                    page: w.page,
                    summary: format!("{name} burns its error budget {}x too fast", number(factor)),
                    description: format!(
                        "GrpcService {ns}/{name} failed {{{{ $value | humanizePercentage }}}} of its calls with server errors over the last {long}, and more than {} over the last {short}: at this rate {}% of its {}-day error budget ({}% objective) is gone within {long}.",
                        number(factor * slo.budget() * 100.0) + "%",
                        number(f64::from(w.budget_per_mille) / 10.0),
                        slo.window_days,
                        number(slo.objective),
                    ),
                    extra_labels: vec![("long_window", long.clone()), ("short_window", short.clone())],
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_written_as_prometheus_reads_them() {
        assert_eq!([hours(1), hours(6), hours(24), hours(72)], ["1h", "6h", "1d", "3d"]);
        assert_eq!([minutes(5), minutes(30), minutes(120), minutes(360)], ["5m", "30m", "2h", "6h"]);
        let windows: Vec<String> =
            BURN_WINDOWS.iter().flat_map(|w| [hours(w.long_hours), minutes(w.short_minutes)]).collect();
        for w in windows {
            assert!(RATIO_WINDOWS.contains(&w.as_str()), "{w} is recorded");
        }
    }
}

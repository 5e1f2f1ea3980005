//! Monitoring built from the spec and the runtime's own metric names.
//!
//! - [`promql`]: PromQL from the contract's metric and label names, never
//!   free text, so an alert cannot reference a metric the runtime does not
//!   emit.
//! - [`rules`]: the PrometheusRule's groups: error ratio, p99 latency,
//!   target down, panics, certificate expiry, and multi-window
//!   multi-burn-rate SLO alerts with their recording rules.
//! - [`dashboard`]: the Grafana dashboard.
//! - [`selection`]: whether any Prometheus selects the ServiceMonitor and the
//!   rules (prometheus-operator's selector semantics).
//!
//! The child kinds live in `crate::children` (`service_monitor`,
//! `prometheus_rule`, `grafana_dashboard`); this module holds what they and
//! the tests share.

pub mod dashboard;
pub mod promql;
pub mod rules;
pub mod selection;

use std::collections::BTreeMap;

/// The monitoring API group (prometheus-operator).
pub const GROUP: &str = "monitoring.coreos.com";
/// Condition shared by the ServiceMonitor and the PrometheusRule.
pub const MONITORING_READY: &str = "MonitoringReady";
/// Default scrape interval.
pub const DEFAULT_INTERVAL: &str = "30s";
/// Default `alerts.errorRatePercent`.
pub const DEFAULT_ERROR_RATE_PERCENT: f64 = 5.0;
/// Default `alerts.latencyP99Seconds`.
pub const DEFAULT_LATENCY_P99_SECONDS: f64 = 1.0;
/// Default `alerts.for`.
pub const DEFAULT_FOR: &str = "5m";
/// Default severity of alerts that page.
pub const DEFAULT_PAGE_SEVERITY: &str = "critical";
/// Default severity of alerts that open a ticket.
pub const DEFAULT_TICKET_SEVERITY: &str = "warning";
/// Default `runbook_url` base: the operator's runbooks, one heading per
/// alert.
pub const DEFAULT_RUNBOOK_BASE_URL: &str =
    "https://github.com/grpc-operator/grpc-operator/blob/main/docs/runbooks.md#";
/// Default SLO objective, percent.
pub const DEFAULT_SLO_OBJECTIVE: f64 = 99.9;
/// Default SLO window, days.
pub const DEFAULT_SLO_WINDOW_DAYS: u32 = 30;
/// Calls per second below which a method's error ratio and latency do not
/// alert: a handful of calls says nothing (30 calls in the 5-minute window).
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.1;
/// The label and value the Grafana chart's sidecar finds dashboards by.
pub const DASHBOARD_LABEL: (&str, &str) = ("grafana_dashboard", "1");
/// The annotation the Grafana chart's sidecar reads the folder from
/// (`sidecar.dashboards.folderAnnotation`).
pub const DASHBOARD_FOLDER_ANNOTATION: &str = "grafana_folder";

/// `spec.monitoring` with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidMonitoring {
    /// Labels of every monitoring object.
    pub labels: BTreeMap<String, String>,
    /// The ServiceMonitor, unless disabled.
    pub service_monitor: Option<ValidServiceMonitor>,
    /// The PrometheusRule, unless disabled.
    pub alerts: Option<ValidAlerts>,
    /// The dashboard, when enabled.
    pub dashboard: Option<ValidDashboard>,
}

impl Default for ValidMonitoring {
    /// A missing `spec.monitoring`: ServiceMonitor and alerts on, dashboard
    /// off.
    fn default() -> Self {
        Self {
            labels: BTreeMap::new(),
            service_monitor: Some(ValidServiceMonitor::default()),
            alerts: Some(ValidAlerts::default()),
            dashboard: None,
        }
    }
}

/// `spec.monitoring.serviceMonitor` with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidServiceMonitor {
    /// Scrape interval.
    pub interval: String,
    /// Scrape timeout; `None` leaves Prometheus's default.
    pub scrape_timeout: Option<String>,
    /// Labels of the ServiceMonitor (with `monitoring.labels`).
    pub labels: BTreeMap<String, String>,
}

impl Default for ValidServiceMonitor {
    fn default() -> Self {
        Self { interval: DEFAULT_INTERVAL.to_owned(), scrape_timeout: None, labels: BTreeMap::new() }
    }
}

/// `spec.monitoring.alerts` (and `slo`) with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidAlerts {
    /// Error-ratio threshold, percent.
    pub error_rate_percent: f64,
    /// p99 latency threshold, seconds.
    pub latency_p99_seconds: f64,
    /// `for` of the alerts.
    pub for_: String,
    /// `severity` of paging alerts.
    pub page_severity: String,
    /// `severity` of ticket alerts.
    pub ticket_severity: String,
    /// Base of `runbook_url`.
    pub runbook_base_url: String,
    /// Labels of the PrometheusRule (with `monitoring.labels`).
    pub labels: BTreeMap<String, String>,
    /// The SLO, when set.
    pub slo: Option<ValidSlo>,
}

impl Default for ValidAlerts {
    fn default() -> Self {
        Self {
            error_rate_percent: DEFAULT_ERROR_RATE_PERCENT,
            latency_p99_seconds: DEFAULT_LATENCY_P99_SECONDS,
            for_: DEFAULT_FOR.to_owned(),
            page_severity: DEFAULT_PAGE_SEVERITY.to_owned(),
            ticket_severity: DEFAULT_TICKET_SEVERITY.to_owned(),
            runbook_base_url: DEFAULT_RUNBOOK_BASE_URL.to_owned(),
            labels: BTreeMap::new(),
            slo: None,
        }
    }
}

/// `spec.monitoring.slo` with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValidSlo {
    /// Objective, percent (99.9).
    pub objective: f64,
    /// Window, days.
    pub window_days: u32,
}

impl ValidSlo {
    /// The error budget as a ratio (0.001 for 99.9).
    pub fn budget(&self) -> f64 {
        (100.0 - self.objective) / 100.0
    }
}

/// `spec.monitoring.dashboard` when enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidDashboard {
    /// Grafana folder.
    pub folder: String,
}

/// One pair of windows of a multi-window, multi-burn-rate alert (Google SRE
/// workbook, chapter 5): the alert fires when both windows burn the budget
/// faster than `budget_share` of it per `long` window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurnWindow {
    /// Long window, hours.
    pub long_hours: u32,
    /// Short window, minutes (a twelfth of the long one).
    pub short_minutes: u32,
    /// Share of the whole budget, in per mille, spent in the long window
    /// at the alerting burn rate.
    pub budget_per_mille: u32,
    /// Pages (true) or opens a ticket.
    pub page: bool,
}

/// The workbook's four pairs: 2% of the budget in 1h and 5% in 6h page,
/// 10% in 1d and in 3d open a ticket. At 30 days these are the burn rates
/// 14.4, 6, 3 and 1.
pub const BURN_WINDOWS: [BurnWindow; 4] = [
    BurnWindow { long_hours: 1, short_minutes: 5, budget_per_mille: 20, page: true },
    BurnWindow { long_hours: 6, short_minutes: 30, budget_per_mille: 50, page: true },
    BurnWindow { long_hours: 24, short_minutes: 120, budget_per_mille: 100, page: false },
    BurnWindow { long_hours: 72, short_minutes: 360, budget_per_mille: 100, page: false },
];

impl BurnWindow {
    /// The burn rate for an SLO window of `window_days`: the share of the
    /// budget times the SLO window over the long window (14.4 for 1h at
    /// 30d). Scaling the factor keeps each alert's meaning, a share of the
    /// budget, for any window.
    pub fn factor(&self, window_days: u32) -> f64 {
        f64::from(self.budget_per_mille) / 1000.0 * f64::from(window_days) * 24.0 / f64::from(self.long_hours)
    }
}

/// A number as PromQL and Grafana read it, without float noise
/// (`0.0144`, not `0.014400000000000001`).
pub fn number(value: f64) -> String {
    let rounded = format!("{value:.10}");
    let trimmed = rounded.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-" { "0".to_owned() } else { trimmed.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_rates_at_thirty_days_are_the_workbooks_and_scale_with_the_window() {
        let at = |d| BURN_WINDOWS.map(|w| number(w.factor(d)));
        assert_eq!(at(30), ["14.4", "6", "3", "1"]);
        assert_eq!(at(28), ["13.44", "5.6", "2.8", "0.9333333333"]);
        assert_eq!(at(7), ["3.36", "1.4", "0.7", "0.2333333333"]);
    }

    #[test]
    fn numbers_are_printed_without_float_noise() {
        assert_eq!(number(14.4 * 0.001), "0.0144");
        assert_eq!(number(5.0), "5");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(99.95), "99.95");
    }
}

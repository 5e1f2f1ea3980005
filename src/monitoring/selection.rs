//! Whether any Prometheus selects the ServiceMonitor and the rules.
//!
//! prometheus-operator's semantics: a missing (null) selector selects
//! nothing and `{}` selects everything; a missing namespace selector means
//! the selecting object's own namespace. `Prometheus` selects ServiceMonitors
//! and rules, `PrometheusAgent` ServiceMonitors only, `ThanosRuler` rules
//! only.

use kube::api::DynamicObject;
use serde_json::Value;

use crate::reconcile::status::{Verdict, reason};

/// The verdict prometheus-operator's own report on `live` gives, from its
/// `status.bindings` (published with its `StatusForConfigurationResources`
/// feature): rejected by a Prometheus, selected, or (no bindings) applied
/// without a report.
pub fn applied_verdict(kind: &str, live: Option<&DynamicObject>) -> Verdict {
    let Some(live) = live else {
        return Verdict::not_ok(reason::NOT_FOUND, format!("the {kind} does not exist yet"));
    };
    let kept = crate::children::kept(live);
    let bindings = kept.pointer("/status/bindings").and_then(Value::as_array).cloned().unwrap_or_default();
    let name = |b: &Value| {
        format!(
            "{} {}/{}",
            b["resource"].as_str().unwrap_or("prometheuses"),
            b["namespace"].as_str().unwrap_or_default(),
            b["name"].as_str().unwrap_or_default()
        )
    };
    let accepted = |b: &Value| {
        b["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Accepted")).cloned()
    };
    if let Some((b, c)) =
        bindings.iter().filter_map(|b| accepted(b).map(|c| (b, c))).find(|(_, c)| c["status"] == "False")
    {
        return Verdict::not_ok(
            reason::REJECTED_BY_PROMETHEUS,
            format!(
                "{} rejected the {kind}: {}: {}",
                name(b),
                c["reason"].as_str().unwrap_or("Invalid"),
                c["message"].as_str().unwrap_or_default()
            ),
        );
    }
    let selected: Vec<String> =
        bindings.iter().filter(|b| accepted(b).is_some_and(|c| c["status"] == "True")).map(name).collect();
    if selected.is_empty() {
        Verdict::ok(reason::APPLIED, format!("the {kind} is applied; no Prometheus has reported on it"))
    } else {
        Verdict::ok(reason::SELECTED, format!("the {kind} is selected by {}", selected.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(status: serde_json::Value) -> DynamicObject {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "user-service", "namespace": "shop"},
            "status": status,
        }))
        .expect("object");
        crate::children::slim(&mut obj, &["/status/bindings"]);
        obj
    }

    #[test]
    fn bindings_published_by_prometheus_operator_decide_the_verdict() {
        let rejected = live(serde_json::json!({"bindings": [{
            "group": "monitoring.coreos.com", "resource": "prometheuses", "name": "k8s", "namespace": "monitoring",
            "conditions": [{"type": "Accepted", "status": "False", "reason": "InvalidConfiguration", "message": "bad"}]
        }]}));
        let v = applied_verdict("ServiceMonitor", Some(&rejected));
        assert_eq!((v.ok, v.reason), (false, reason::REJECTED_BY_PROMETHEUS));
        assert!(
            v.message.contains("prometheuses monitoring/k8s") && v.message.contains("bad"),
            "{}",
            v.message
        );

        let accepted = live(serde_json::json!({"bindings": [{
            "resource": "prometheuses", "name": "k8s", "namespace": "monitoring",
            "conditions": [{"type": "Accepted", "status": "True"}]
        }]}));
        let v = applied_verdict("ServiceMonitor", Some(&accepted));
        assert_eq!((v.ok, v.reason), (true, reason::SELECTED));

        let v = applied_verdict("ServiceMonitor", Some(&live(serde_json::json!({}))));
        assert_eq!((v.ok, v.reason), (true, reason::APPLIED));
        assert_eq!(applied_verdict("ServiceMonitor", None).reason, reason::NOT_FOUND);
    }
}

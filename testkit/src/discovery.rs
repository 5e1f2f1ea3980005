//! Legacy (non-aggregated) discovery documents. Clients asking for aggregated discovery
//! get these with `Content-Type: application/json` and fall back to legacy discovery.

use crate::registry::{Registry, ResourceDef};
use serde_json::{Value, json};

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn resource_entries(d: &ResourceDef, version: &str) -> Vec<Value> {
    let mut e = json!({
        "name": d.plural,
        "singularName": d.singular,
        "namespaced": d.namespaced,
        "kind": d.kind,
        "verbs": VERBS,
    });
    if !d.short_names.is_empty() {
        e["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        e["categories"] = json!(d.categories);
    }
    let mut out = vec![e];
    if d.version(version).is_some_and(|v| v.has_status) {
        out.push(json!({
            "name": format!("{}/status", d.plural),
            "singularName": "",
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

fn group_doc(reg: &Registry, group: &str, versions: &[String]) -> Value {
    let preferred =
        reg.preferred_group_version(group).or_else(|| versions.first().cloned()).unwrap_or_default();
    json!({
        "name": group,
        "versions": versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred},
    })
}

/// The discovery document for `path`, or `None` when there is none (answered 404).
pub(crate) fn document(reg: &Registry, path: &str, server_addr: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Some(json!({
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.23.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}],
        })),
        ["apis"] => {
            let groups: Vec<Value> = reg.groups().iter().map(|(g, vs)| group_doc(reg, g, vs)).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g] => {
            let groups = reg.groups();
            let vs = groups.get(*g)?;
            let mut doc = group_doc(reg, g, vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            Some(doc)
        }
        ["api", v] | ["apis", "", v] => resource_list(reg, "", v),
        ["apis", g, v] => resource_list(reg, g, v),
        ["healthz"] | ["livez"] | ["readyz"] => Some(json!("ok")),
        _ => None,
    }
}

fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = reg.resources_in(group, version);
    if defs.is_empty() {
        return None;
    }
    let resources: Vec<Value> = defs.iter().flat_map(|d| resource_entries(d, version)).collect();
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

//! kube-apiserver's audit log: what a service account really asked for.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// One audit event (the fields the harness reads).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub request_uri: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

/// A permission as RBAC spells it: (apiGroup, resource[/subresource], verb).
pub type Permission = (String, String, String);

/// Reads every event of `username` (`system:serviceaccount:NS:NAME`).
pub fn events_of(log: &Path, username: &str) -> anyhow::Result<Vec<AuditEvent>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter(|l| l.contains(username))
        .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok())
        .filter(|e| e.user.username == username)
        .collect())
}

/// The permissions the events exercised. A server-side apply (`patch`) that
/// created its object (201) was also authorized as `create`: the API server
/// checks both, so both count as used.
pub fn permissions_used(events: &[AuditEvent]) -> BTreeSet<Permission> {
    let mut used = BTreeSet::new();
    for e in events {
        let Some(o) = &e.object_ref else { continue };
        let resource = if o.subresource.is_empty() {
            o.resource.clone()
        } else {
            format!("{}/{}", o.resource, o.subresource)
        };
        used.insert((o.api_group.clone(), resource.clone(), e.verb.clone()));
        if e.verb == "patch" && e.response_status.as_ref().is_some_and(|s| s.code == 201) {
            used.insert((o.api_group.clone(), resource, "create".into()));
        }
    }
    used
}

/// The permissions a ClusterRole or Role manifest grants, expanded to one
/// entry per (group, resource, verb).
pub fn permissions_granted(role_yaml: &str) -> anyhow::Result<BTreeSet<Permission>> {
    #[derive(Deserialize)]
    struct Role {
        rules: Vec<Rule>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rule {
        api_groups: Vec<String>,
        resources: Vec<String>,
        verbs: Vec<String>,
    }
    let role: Role = serde_saphyr::from_str(role_yaml)?;
    let mut granted = BTreeSet::new();
    for r in role.rules {
        for g in &r.api_groups {
            for res in &r.resources {
                for v in &r.verbs {
                    granted.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(verb: &str, resource: &str, subresource: &str, code: u16) -> AuditEvent {
        serde_json::from_value(serde_json::json!({
            "verb": verb,
            "user": {"username": "system:serviceaccount:ns:op"},
            "objectRef": {"apiGroup": "apps", "resource": resource, "subresource": subresource},
            "responseStatus": {"code": code},
            "requestURI": "/x",
        }))
        .expect("event parses")
    }

    #[test]
    fn an_apply_that_created_its_object_counts_as_patch_and_create() {
        let used = permissions_used(&[
            event("patch", "deployments", "", 201),
            event("patch", "deployments", "status", 200),
        ]);
        let want: BTreeSet<Permission> = [
            ("apps".into(), "deployments".into(), "patch".into()),
            ("apps".into(), "deployments".into(), "create".into()),
            ("apps".into(), "deployments/status".into(), "patch".into()),
        ]
        .into();
        assert_eq!(used, want);
    }

    #[test]
    fn granted_rules_expand_to_one_permission_per_group_resource_and_verb() {
        let granted = permissions_granted(
            "rules:\n  - apiGroups: [\"\", apps]\n    resources: [services]\n    verbs: [get, list]\n",
        )
        .expect("parses");
        assert_eq!(granted.len(), 4);
        assert!(granted.contains(&("apps".into(), "services".into(), "list".into())));
    }
}

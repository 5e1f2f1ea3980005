//! The resource types the double serves: a fixed set of built-ins plus whatever
//! CustomResourceDefinitions register.

use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub(crate) struct VersionDef {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    /// `openAPIV3Schema`; `None` for built-ins, which are never schema validated.
    pub schema: Option<Value>,
    pub has_status: bool,
    /// `additionalPrinterColumns` of a CRD version (empty for built-ins).
    pub printer_columns: Vec<PrinterColumn>,
}

/// One `additionalPrinterColumns` entry of a CRD version.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PrinterColumn {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub col_type: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

impl PrinterColumn {
    fn from_crd(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Self {
            name: s("name")?,
            col_type: s("type")?,
            format: s("format").unwrap_or_default(),
            description: s("description").unwrap_or_default(),
            priority: v.get("priority").and_then(Value::as_i64).unwrap_or(0),
            json_path: s("jsonPath")?,
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub versions: Vec<VersionDef>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Defined by a CRD (schema validated, name must be a DNS-1123 subdomain).
    pub custom: bool,
}

impl ResourceDef {
    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v)
    }

    pub fn served_versions(&self) -> impl Iterator<Item = &VersionDef> {
        self.versions.iter().filter(|v| v.served)
    }

    /// The version discovery prefers: the storage version when served, else the first served.
    pub fn preferred_version(&self) -> Option<&VersionDef> {
        self.served_versions().find(|v| v.storage).or_else(|| self.served_versions().next())
    }

    /// Whether writes to the main resource ignore `.status` (and generation ignores it).
    pub fn has_status(&self) -> bool {
        self.versions.iter().any(|v| v.has_status)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    has_status: bool,
) -> ResourceDef {
    ResourceDef {
        group: group.to_string(),
        versions: vec![VersionDef {
            name: version.to_string(),
            served: true,
            storage: true,
            schema: None,
            has_status,
            printer_columns: Vec::new(),
        }],
        plural: plural.to_string(),
        singular: kind.to_lowercase(),
        kind: kind.to_string(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        custom: false,
    }
}

/// Registry keyed by (group, plural).
#[derive(Clone, Debug, Default)]
pub(crate) struct Registry {
    pub resources: BTreeMap<(String, String), ResourceDef>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut defs = vec![
            builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true),
            builtin("", "v1", "pods", "Pod", true, &["po"], true),
            builtin("", "v1", "services", "Service", true, &["svc"], true),
            builtin("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
            builtin("", "v1", "secrets", "Secret", true, &[], false),
            builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
            builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
            builtin("", "v1", "events", "Event", true, &["ev"], false),
            builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, &["pvc"], true),
            builtin("", "v1", "nodes", "Node", false, &["no"], true),
            builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"], true),
            builtin("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true),
            builtin("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], true),
            builtin("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
            builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false),
            builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false),
            builtin("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, &[], false),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
                true,
            ),
            builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false),
            builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], false),
            builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], false),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                &[],
                false,
            ),
            builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true),
            builtin(
                "autoscaling",
                "v2",
                "horizontalpodautoscalers",
                "HorizontalPodAutoscaler",
                true,
                &["hpa"],
                true,
            ),
            builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, &["netpol"], false),
            builtin("networking.k8s.io", "v1", "ingresses", "Ingress", true, &["ing"], true),
        ];
        for d in &mut defs {
            if matches!(
                d.plural.as_str(),
                "pods" | "services" | "deployments" | "replicasets" | "statefulsets" | "daemonsets"
            ) {
                d.categories = vec!["all".to_string()];
            }
        }
        // Real singular names differ from lowercased kinds only for Endpoints.
        for d in &mut defs {
            if d.kind == "Endpoints" {
                d.singular = "endpoints".to_string();
            }
        }
        let mut r = Registry::default();
        for d in defs {
            r.resources.insert((d.group.clone(), d.plural.clone()), d);
        }
        r
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources.get(&(group.to_string(), plural.to_string()))
    }

    /// All groups with at least one served version, core ("") excluded, sorted with
    /// built-ins first the way a real server orders them is not important to clients.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.resources.values() {
            if d.group.is_empty() {
                continue;
            }
            let entry = out.entry(d.group.clone()).or_default();
            for v in d.served_versions() {
                if !entry.contains(&v.name) {
                    entry.push(v.name.clone());
                }
            }
        }
        out
    }

    /// Preferred version of a group: the highest-priority storage version among its resources.
    pub fn preferred_group_version(&self, group: &str) -> Option<String> {
        self.resources
            .values()
            .filter(|d| d.group == group)
            .find_map(|d| d.preferred_version().map(|v| v.name.clone()))
    }

    pub fn resources_in(&self, group: &str, version: &str) -> Vec<&ResourceDef> {
        self.resources
            .values()
            .filter(|d| d.group == group && d.version(version).is_some_and(|v| v.served))
            .collect()
    }
}

/// Turns a CustomResourceDefinition object into the resource it defines.
pub(crate) fn crd_to_def(crd: &Value) -> Result<ResourceDef, String> {
    let spec = crd.get("spec").ok_or("spec is required")?;
    let group = spec.get("group").and_then(Value::as_str).ok_or("spec.group is required")?;
    let names = spec.get("names").ok_or("spec.names is required")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let plural = s(names, "plural").ok_or("spec.names.plural is required")?;
    let kind = s(names, "kind").ok_or("spec.names.kind is required")?;
    let singular = s(names, "singular").unwrap_or_else(|| kind.to_lowercase());
    let list_kind = s(names, "listKind").unwrap_or_else(|| format!("{kind}List"));
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut versions = Vec::new();
    for v in spec.get("versions").and_then(Value::as_array).ok_or("spec.versions is required")? {
        let name = s(v, "name").ok_or("spec.versions[].name is required")?;
        versions.push(VersionDef {
            name,
            served: v.get("served").and_then(Value::as_bool).unwrap_or(true),
            storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            has_status: v.pointer("/subresources/status").is_some(),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| cols.iter().filter_map(PrinterColumn::from_crd).collect())
                .unwrap_or_default(),
        });
    }
    if versions.is_empty() {
        return Err("spec.versions must have at least one version".into());
    }
    Ok(ResourceDef {
        group: group.to_string(),
        versions,
        plural,
        singular,
        kind,
        list_kind,
        namespaced,
        short_names: strs(names.get("shortNames")),
        categories: strs(names.get("categories")),
        custom: true,
    })
}

/// The status the real apiextensions controller writes once the names are accepted.
pub(crate) fn crd_status(crd: &Value) -> Value {
    let now = crate::store::now_rfc3339();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if let Some(m) = accepted.as_object_mut() {
        if !m.contains_key("singular")
            && let Some(k) = names.get("kind").and_then(Value::as_str)
        {
            m.insert("singular".into(), json!(k.to_lowercase()));
        }
        if !m.contains_key("listKind")
            && let Some(k) = names.get("kind").and_then(Value::as_str)
        {
            m.insert("listKind".into(), json!(format!("{k}List")));
        }
    }
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    // Keep existing transition times so re-registering an unchanged CRD is a no-op.
    let prev_time = |t: &str| {
        crd.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
                    .and_then(|c| c.get("lastTransitionTime").cloned())
            })
            .unwrap_or(json!(now))
    };
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": prev_time("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": prev_time("Established")},
        ],
        "storedVersions": stored,
    })
}

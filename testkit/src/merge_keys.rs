//! How lists merge: the schema's `x-kubernetes-list-type` for custom resources, and a
//! table of well-known associative lists for built-in types (which carry no schema here).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Scalars merged as a set (`finalizers`).
    Set,
    /// Objects merged by these key fields.
    Map(Vec<String>),
}

/// `parents` are the object field names above the list (e.g. `["spec", "template", "spec",
/// "containers"]` for a container's `ports`); `field` is the list's own field name.
pub(crate) fn list_type(schema: Option<&Value>, parents: &[String], field: &str) -> ListType {
    if let Some(s) = schema {
        return match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                s.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                    .unwrap_or_default(),
            ),
            Some(_) => ListType::Atomic,
            // A schema without list-type is atomic, except where the built-in table knows
            // better (metadata lists embedded in custom objects follow the built-in rules).
            None => builtin_list_type(parents, field).unwrap_or(ListType::Atomic),
        };
    }
    builtin_list_type(parents, field).unwrap_or(ListType::Atomic)
}

fn builtin_list_type(parents: &[String], field: &str) -> Option<ListType> {
    let keys = |k: &[&str]| Some(ListType::Map(k.iter().map(|s| s.to_string()).collect()));
    let in_container = parents
        .last()
        .is_some_and(|p| matches!(p.as_str(), "containers" | "initContainers" | "ephemeralContainers"));
    match field {
        "finalizers" => Some(ListType::Set),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "volumeDevices" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "conditions" => keys(&["type"]),
        "ownerReferences" => keys(&["uid"]),
        "ports" if in_container => keys(&["containerPort"]),
        "ports" if parents.last().map(String::as_str) == Some("spec") => keys(&["port"]),
        "managedFields" => Some(ListType::Atomic),
        _ => None,
    }
}

/// Child schema for an object field (`properties[k]`, else `additionalProperties`).
pub(crate) fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

pub(crate) fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    schema?.get("items")
}

/// The key tuple of a list item, or `None` when the item lacks every key field.
pub(crate) fn item_key(item: &Value, keys: &[String]) -> Option<serde_json::Map<String, Value>> {
    let obj = item.as_object()?;
    let mut out = serde_json::Map::new();
    for k in keys {
        if let Some(v) = obj.get(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

pub(crate) fn matches_key(item: &Value, key: &serde_json::Map<String, Value>) -> bool {
    item.as_object().is_some_and(|o| key.iter().all(|(k, v)| o.get(k) == Some(v)))
}

/// A set-typed list merged with new items: existing order kept, items not
/// yet present appended.
pub(crate) fn union_set(mut existing: Vec<Value>, items: &[Value]) -> Vec<Value> {
    for it in items {
        if !existing.contains(it) {
            existing.push(it.clone());
        }
    }
    existing
}

//! Field ownership (`metadata.managedFields`, FieldsV1) and ownership tracking for
//! non-apply writes.

use crate::merge_keys::{ListType, child_schema, item_key, items_schema, list_type, matches_key};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// One step in a field path, named like FieldsV1 keys (`f:`, `k:`, `v:`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Pe {
    Field(String),
    /// Canonical JSON of the key fields of an associative list item.
    Key(String),
    /// Canonical JSON of a set member.
    Val(String),
}

pub(crate) type FieldPath = Vec<Pe>;
pub(crate) type FieldSet = BTreeSet<FieldPath>;

impl Pe {
    fn encode(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Val(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        if let Some(f) = s.strip_prefix("f:") {
            Some(Pe::Field(f.to_string()))
        } else if let Some(k) = s.strip_prefix("k:") {
            Some(Pe::Key(k.to_string()))
        } else {
            s.strip_prefix("v:").map(|v| Pe::Val(v.to_string()))
        }
    }
}

/// `.spec.containers[name="a"].image`, the form conflict messages use.
pub(crate) fn render_path(p: &FieldPath) -> String {
    let mut out = String::new();
    for pe in p {
        match pe {
            Pe::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Pe::Key(k) => {
                let parsed: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = parsed.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::Val(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `.status` excluded when the type has a status subresource.
    Main {
        exclude_status: bool,
    },
    Status,
}

impl Scope {
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Status => Some("status"),
            Scope::Main { .. } => None,
        }
    }
}

/// The part of an object whose fields are tracked: metadata labels, annotations,
/// finalizers and ownerReferences, plus the body (spec, data, ...) or just the status.
pub(crate) fn tracked_view(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = obj.as_object() else {
        return Value::Object(out);
    };
    match scope {
        Scope::Status => {
            if let Some(s) = m.get("status") {
                out.insert("status".into(), s.clone());
            }
        }
        Scope::Main { exclude_status } => {
            for (k, v) in m {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "status" if exclude_status => {}
                    "metadata" => {
                        let mut md = Map::new();
                        for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                            if let Some(x) = v.get(key) {
                                md.insert(key.into(), x.clone());
                            }
                        }
                        if !md.is_empty() {
                            out.insert("metadata".into(), Value::Object(md));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// Every field set in `v` (leaves, associative-list items and set members).
pub(crate) fn field_set(v: &Value, schema: Option<&Value>) -> FieldSet {
    let mut set = FieldSet::new();
    walk(v, schema, &mut Vec::new(), &mut Vec::new(), &mut set);
    set
}

fn walk(
    v: &Value,
    schema: Option<&Value>,
    parents: &mut Vec<String>,
    path: &mut FieldPath,
    set: &mut FieldSet,
) {
    let Some(m) = v.as_object() else {
        set.insert(path.clone());
        return;
    };
    for (k, child) in m {
        let cs = child_schema(schema, k);
        path.push(Pe::Field(k.clone()));
        match child {
            Value::Object(o) if !o.is_empty() => {
                parents.push(k.clone());
                walk(child, cs, parents, path, set);
                parents.pop();
            }
            Value::Array(items) => match list_type(cs, parents, k) {
                ListType::Set => {
                    for it in items {
                        path.push(Pe::Val(it.to_string()));
                        set.insert(path.clone());
                        path.pop();
                    }
                }
                ListType::Map(keys) if items.iter().all(|i| item_key(i, &keys).is_some()) => {
                    parents.push(k.clone());
                    for it in items {
                        let key = item_key(it, &keys).unwrap_or_default();
                        path.push(Pe::Key(Value::Object(key).to_string()));
                        set.insert(path.clone());
                        walk(it, items_schema(cs), parents, path, set);
                        path.pop();
                    }
                    parents.pop();
                }
                _ => {
                    set.insert(path.clone());
                }
            },
            _ => {
                set.insert(path.clone());
            }
        }
        path.pop();
    }
}

pub(crate) fn get_at<'a>(obj: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = match pe {
            Pe::Field(f) => cur.get(f)?,
            Pe::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|i| matches_key(i, &key))?
            }
            Pe::Val(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
        };
    }
    Some(cur)
}

pub(crate) fn remove_at(obj: &mut Value, path: &[Pe]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for pe in parent_path {
        let next = match pe {
            Pe::Field(f) => cur.get_mut(f),
            Pe::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|i| matches_key(i, &key)))
            }
            Pe::Val(v) => {
                let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|i| **i == want))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Pe::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::Key(k) => {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !matches_key(i, &key));
            }
        }
        Pe::Val(v) => {
            let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| *i != want);
            }
        }
    }
}

pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    // `suffixes` are the remaining path steps below one node; an empty suffix means the
    // node itself is owned, which FieldsV1 marks with "." when the node has children.
    fn build(suffixes: &[&[Pe]]) -> Map<String, Value> {
        let mut groups: std::collections::BTreeMap<String, Vec<&[Pe]>> = Default::default();
        let mut self_owned = false;
        for p in suffixes {
            match p.split_first() {
                None => self_owned = true,
                Some((head, rest)) => groups.entry(head.encode()).or_default().push(rest),
            }
        }
        let mut m = Map::new();
        for (k, subs) in groups {
            m.insert(k, Value::Object(build(&subs)));
        }
        if self_owned && !m.is_empty() {
            m.insert(".".into(), json!({}));
        }
        m
    }
    let all: Vec<&[Pe]> = set.iter().map(Vec::as_slice).collect();
    Value::Object(build(&all))
}

pub(crate) fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut FieldPath, set: &mut FieldSet) {
        let Some(m) = v.as_object() else {
            return;
        };
        for (k, child) in m {
            if k == "." {
                set.insert(path.clone());
                continue;
            }
            let Some(pe) = Pe::decode(k) else {
                continue;
            };
            path.push(pe);
            if child.as_object().is_some_and(|c| !c.is_empty()) {
                rec(child, path, set);
            } else {
                set.insert(path.clone());
            }
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    rec(v, &mut Vec::new(), &mut set);
    set
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub set: FieldSet,
}

impl Entry {
    pub fn same_owner(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }
}

pub(crate) fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(Entry {
                        manager: e.get("manager")?.as_str()?.to_string(),
                        operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                        api_version: e
                            .get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        time: e.get("time").and_then(Value::as_str).unwrap_or_default().to_string(),
                        subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                        set: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.set),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records ownership for a create/update/patch (operation `Update`): the writer takes the
/// fields it changed away from other managers; fields that no longer exist lose owners.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    scope: Scope,
    schema: Option<&Value>,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let new_view = tracked_view(new, scope);
    let new_set = field_set(&new_view, schema);
    let old_view = old.map(|o| tracked_view(o, scope));
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            let before = old_view.as_ref().and_then(|o| get_at(o, p));
            match before {
                None => true,
                // Items and set members are identified by their key: present means unchanged.
                Some(b) => matches!(p.last(), Some(Pe::Field(_))) && Some(b) != get_at(&new_view, p),
            }
        })
        .cloned()
        .collect();
    let full_new = field_set(&tracked_view(new, Scope::Main { exclude_status: false }), schema);
    let now = crate::store::now_rfc3339();
    for e in &mut entries {
        let before = e.set.clone();
        e.set.retain(|p| full_new.contains(p) && !changed.contains(p));
        if e.set != before && e.same_owner(manager, "Update", scope.subresource()) {
            e.time = now.clone();
        }
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.same_owner(manager, "Update", scope.subresource())) {
            Some(e) => {
                e.set.extend(changed);
                e.time = now;
                e.api_version = api_version.to_string();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: now,
                subresource: scope.subresource().map(str::to_string),
                set: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips_keyed_items() {
        let obj = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "x"}]}}}, "metadata": {"finalizers": ["f"]}});
        let set = field_set(&obj, None);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:finalizers": {"v:\"f\"": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
    }
}

//! JSON merge patch, JSON patch and an approximation of strategic merge patch.

use crate::errors::{ApiError, ApiResult};
use crate::merge_keys::{ListType, child_schema, item_key, items_schema, list_type, matches_key, union_set};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies a non-apply patch body to `target`.
pub(crate) fn apply_patch(
    kind: PatchKind,
    target: &mut Value,
    body: &[u8],
    schema: Option<&Value>,
) -> ApiResult<()> {
    match kind {
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            // kube-apiserver (evanphx/json-patch) lets `test` with a null value
            // pass when the path is absent; kube-rs's finalizer helper relies
            // on it. The json-patch crate follows RFC 6902 strictly, so drop
            // such operations when they would pass on the real server.
            let ops: Vec<json_patch::PatchOperation> =
                p.0.into_iter()
                    .filter(|op| match op {
                        json_patch::PatchOperation::Test(t) if t.value.is_null() => {
                            target.pointer(t.path.as_str()).is_some_and(|v| !v.is_null())
                        }
                        _ => true,
                    })
                    .collect();
            json_patch::patch(target, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })
        }
        PatchKind::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
            json_patch::merge(target, &p);
            Ok(())
        }
        PatchKind::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid strategic merge patch: {e}")))?;
            strategic_merge(target, &p, schema, &mut Vec::new());
            Ok(())
        }
        PatchKind::Apply => Err(ApiError::internal("apply patches are handled by apply.rs")),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch using the list-merge table in `merge_keys` (the real server reads
/// patch strategies from Go struct tags; this covers the common associative lists and the
/// `$patch`, `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` directives).
fn strategic_merge(target: &mut Value, patch: &Value, schema: Option<&Value>, parents: &mut Vec<String>) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Default::default());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let mut retain: Option<Vec<String>> = None;
    for (k, v) in pm {
        let Some(tm) = target.as_object_mut() else {
            return;
        };
        if k == "$patch" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if k == "$retainKeys" {
            retain = v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            tm.remove(k);
            continue;
        }
        let sub_schema = child_schema(schema, k);
        match v {
            Value::Array(items) => {
                let lt = list_type(sub_schema, parents, k);
                let existing = tm.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                let merged = match lt {
                    ListType::Atomic => items.iter().map(strip_directives).collect(),
                    ListType::Set => union_set(existing, items),
                    ListType::Map(keys) => {
                        let mut out = existing;
                        parents.push(k.clone());
                        for it in items {
                            let Some(key) = item_key(it, &keys) else {
                                out.push(strip_directives(it));
                                continue;
                            };
                            let pos = out.iter().position(|x| matches_key(x, &key));
                            let directive = it.get("$patch").and_then(Value::as_str);
                            match (pos, directive) {
                                (Some(i), Some("delete")) => {
                                    out.remove(i);
                                }
                                (None, Some("delete")) => {}
                                (Some(i), _) => {
                                    strategic_merge(&mut out[i], it, items_schema(sub_schema), parents)
                                }
                                (None, _) => out.push(strip_directives(it)),
                            }
                        }
                        parents.pop();
                        out
                    }
                };
                tm.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                parents.push(k.clone());
                strategic_merge(entry, v, sub_schema, parents);
                parents.pop();
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
    if let (Some(keys), Some(tm)) = (retain, target.as_object_mut()) {
        tm.retain(|k, _| keys.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() -> ApiResult<()> {
        let mut live = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2"}, {"name": "b", "$patch": "delete"}]}});
        apply_patch(PatchKind::Strategic, &mut live, patch.to_string().as_bytes(), None)?;
        assert_eq!(
            live,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2", "ports": [{"containerPort": 80}]}]}})
        );
        Ok(())
    }
}

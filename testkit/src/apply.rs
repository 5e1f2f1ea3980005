//! Server-side apply, simplified: ownership is tracked per leaf field, associative-list
//! item and set member; see the README for where this differs from structured-merge-diff.

use crate::errors::{ApiError, ApiResult};
use crate::managed_fields::{
    Entry, FieldPath, FieldSet, Pe, Scope, field_set, get_at, read_entries, remove_at, render_path,
    tracked_view, write_entries,
};
use crate::merge_keys::{ListType, child_schema, item_key, items_schema, list_type, matches_key, union_set};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub(crate) struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub api_version: &'a str,
    pub scope: Scope,
    pub schema: Option<&'a Value>,
}

/// Parses an apply body (YAML or JSON, JSON being YAML).
pub(crate) fn parse_apply_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("apply body is not UTF-8: {e}")))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// Computes the object resulting from applying `applied` on top of `live` (or on top of
/// `base` when the object does not exist yet), with updated managedFields.
pub(crate) fn server_side_apply(
    live: Option<&Value>,
    base: Value,
    applied: &Value,
    req: &ApplyRequest<'_>,
) -> ApiResult<Value> {
    if !applied.is_object() {
        return Err(ApiError::bad_request("apply body must be an object"));
    }
    let sub = req.scope.subresource();
    let applied_view = tracked_view(applied, req.scope);
    let s_new = field_set(&applied_view, req.schema);
    let mut obj = live.cloned().unwrap_or(base);
    let mut entries = live.map(read_entries).unwrap_or_default();
    let is_me = |e: &Entry| e.same_owner(req.manager, "Apply", sub);

    // Conflicts: a leaf set to a different value than live that another manager owns.
    let mut conflicts: BTreeMap<String, Vec<FieldPath>> = BTreeMap::new();
    for p in &s_new {
        if !matches!(p.last(), Some(Pe::Field(_))) {
            continue;
        }
        let lv = get_at(&obj, p);
        if lv.is_none() || lv == get_at(&applied_view, p) {
            continue;
        }
        for e in entries.iter().filter(|e| !is_me(e) && e.manager != req.manager) {
            if e.set.contains(p) {
                conflicts.entry(format!("{}\u{0}{}", e.manager, e.api_version)).or_default().push(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(conflict_error(&conflicts));
    }
    if req.force {
        let forced: FieldSet = conflicts.values().flatten().cloned().collect();
        for e in entries.iter_mut().filter(|e| !is_me(e)) {
            e.set.retain(|p| !forced.contains(p));
        }
    }

    // Fields this manager applied before and no longer applies are removed, unless
    // someone else still owns them (or something below them).
    let s_old: FieldSet = entries.iter().find(|e| is_me(e)).map(|e| e.set.clone()).unwrap_or_default();
    let mut kept: FieldSet =
        entries.iter().filter(|e| !is_me(e)).flat_map(|e| e.set.iter().cloned()).collect();
    kept.extend(s_new.iter().cloned());
    let mut removed: Vec<&FieldPath> = s_old.difference(&s_new).collect();
    // Shortest first: removing a list item makes the removal of its fields a no-op
    // (removing the fields first would leave the item without its key).
    removed.sort_by_key(|p| p.len());
    for p in removed {
        let still_owned = kept.iter().any(|k| k.starts_with(p));
        if still_owned {
            continue;
        }
        remove_at(&mut obj, p);
        // Containers emptied by the removal go too, unless someone owns them as a value.
        let mut parent: FieldPath = p[..p.len().saturating_sub(1)].to_vec();
        while matches!(parent.last(), Some(Pe::Field(_))) && !kept.contains(&parent) {
            let empty = match get_at(&obj, &parent) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(m)) => m.is_empty(),
                _ => false,
            };
            if !empty {
                break;
            }
            remove_at(&mut obj, &parent);
            parent.pop();
        }
    }

    merge_applied(&mut obj, &applied_view, req.schema, &mut Vec::new());

    // Ownership bookkeeping.
    let present = field_set(&tracked_view(&obj, Scope::Main { exclude_status: false }), req.schema);
    for e in entries.iter_mut() {
        e.set.retain(|p| present.contains(p));
    }
    let now = crate::store::now_rfc3339();
    match entries.iter_mut().find(|e| is_me(e)) {
        Some(e) => {
            if e.set != s_new || e.api_version != req.api_version {
                e.time = now;
            }
            e.set = s_new;
            e.api_version = req.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: req.manager.to_string(),
            operation: "Apply".into(),
            api_version: req.api_version.to_string(),
            time: now,
            subresource: sub.map(str::to_string),
            set: s_new,
        }),
    }
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    write_entries(&mut obj, &entries);
    Ok(obj)
}

fn conflict_error(conflicts: &BTreeMap<String, Vec<FieldPath>>) -> ApiError {
    let total: usize = conflicts.values().map(Vec::len).sum();
    let mut causes = Vec::new();
    let mut parts = Vec::new();
    for (who, paths) in conflicts {
        let (manager, api_version) = who.split_once('\u{0}').unwrap_or((who, ""));
        let rendered: Vec<String> = paths.iter().map(render_path).collect();
        for r in &rendered {
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{manager}\" using {api_version}"),
                "field": r,
            }));
        }
        if rendered.len() == 1 {
            parts.push(format!("conflict with \"{manager}\" using {api_version}: {}", rendered.join("")));
        } else {
            parts.push(format!(
                "conflicts with \"{manager}\" using {api_version}:\n- {}",
                rendered.join("\n- ")
            ));
        }
    }
    let plural = if total == 1 { "" } else { "s" };
    let mut err = ApiError::new(
        409,
        "Conflict",
        format!("Apply failed with {total} conflict{plural}: {}", parts.join("\n")),
    );
    err.details = Some(json!({"causes": causes}));
    err
}

/// Merges an applied configuration into the live object: maps recursively, associative
/// lists by key, sets by value, everything else replaced.
fn merge_applied(target: &mut Value, src: &Value, schema: Option<&Value>, parents: &mut Vec<String>) {
    let Some(sm) = src.as_object() else {
        *target = src.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, v) in sm {
        let cs = child_schema(schema, k);
        match v {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                parents.push(k.clone());
                merge_applied(entry, v, cs, parents);
                parents.pop();
            }
            Value::Array(items) => {
                let existing = tm.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                let merged = match list_type(cs, parents, k) {
                    ListType::Set => union_set(existing, items),
                    ListType::Map(keys) if items.iter().all(|i| item_key(i, &keys).is_some()) => {
                        let mut out = existing;
                        parents.push(k.clone());
                        for it in items {
                            let key = item_key(it, &keys).unwrap_or_default();
                            match out.iter().position(|x| matches_key(x, &key)) {
                                Some(i) => merge_applied(&mut out[i], it, items_schema(cs), parents),
                                None => out.push(it.clone()),
                            }
                        }
                        parents.pop();
                        out
                    }
                    _ => items.clone(),
                };
                tm.insert(k.clone(), Value::Array(merged));
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
}

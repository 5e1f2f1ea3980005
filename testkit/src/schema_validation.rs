//! Custom-object admission the way the real server does it for CRDs: prune unknown fields
//! (or reject them under `fieldValidation=Strict`), apply defaults, run structural
//! `openAPIV3Schema` validation and then the CEL `x-kubernetes-validations`.

use crate::errors::{ApiError, ApiResult, FieldError};
use kube::core::cel::{ErrorKind, Validator, apply_defaults};
use regex::Regex;
use serde_json::Value;

const DNS1123_SUBDOMAIN: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// What to do with fields the schema does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Strict,
    /// `Warn` (the default) and `Ignore`: prune, and for `Warn` report warnings.
    Prune {
        warn: bool,
    },
}

impl FieldValidation {
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Prune { warn: false },
            _ => Self::Prune { warn: true },
        }
    }
}

pub(crate) struct Target<'a> {
    pub kind: &'a str,
    pub group: &'a str,
    pub name: &'a str,
}

/// Prunes, defaults and validates `obj` in place. Returns warnings (unknown fields under
/// `Warn`).
pub(crate) fn admit_custom_object(
    obj: &mut Value,
    old: Option<&Value>,
    schema: &Value,
    fv: FieldValidation,
    target: &Target<'_>,
) -> ApiResult<Vec<String>> {
    let mut unknown = Vec::new();
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = schema.get("properties").and_then(|p| p.get(k)) {
                prune(v, s, k, &mut unknown);
            }
        }
        let declared = |k: &str| {
            matches!(k, "apiVersion" | "kind" | "metadata")
                || schema.get("properties").and_then(|p| p.get(k)).is_some()
        };
        if !preserves_unknown(schema) {
            let extra: Vec<String> = m.keys().filter(|k| !declared(k)).cloned().collect();
            for k in extra {
                m.remove(&k);
                unknown.push(k);
            }
        }
    }
    if fv == FieldValidation::Strict && !unknown.is_empty() {
        let parts: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
        return Err(ApiError::bad_request(format!("strict decoding error: {}", parts.join(", "))));
    }
    let warnings = match fv {
        FieldValidation::Prune { warn: true } => {
            unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect()
        }
        _ => Vec::new(),
    };

    // Defaults never touch metadata; keep the live metadata untouched by the schema.
    let metadata = obj.get("metadata").cloned();
    *obj = apply_defaults(schema, obj);
    if let (Some(md), Some(m)) = (metadata, obj.as_object_mut()) {
        m.insert("metadata".into(), md);
    }

    let mut errors = Vec::new();
    validate_name(obj, &mut errors);
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = schema.get("properties").and_then(|p| p.get(k)) {
                validate(v, s, k, &mut errors);
            }
        }
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !m.contains_key(r) {
                    errors.push(FieldError::new("FieldValueRequired", r, "Required value"));
                }
            }
        }
    }
    let structural_errors = !errors.is_empty();
    if let Err(cel_errors) = Validator::new().validate(schema, obj, old) {
        for e in cel_errors.into_vec() {
            // A rule evaluated on an ill-typed value fails to evaluate; the type error
            // already explains the problem.
            if structural_errors && e.kind != ErrorKind::ValidationFailure {
                continue;
            }
            let field = e.field_path.trim_start_matches('.').to_string();
            let at = lookup_dotted(obj, &field);
            let reason = e.reason.clone().unwrap_or_else(|| "FieldValueInvalid".into());
            let message = match reason.as_str() {
                "FieldValueForbidden" => format!("Forbidden: {}", e.message),
                "FieldValueRequired" => format!("Required value: {}", e.message),
                "FieldValueDuplicate" => format!("Duplicate value: {}", e.message),
                _ => format!("Invalid value: \"{}\": {}", type_name(at), e.message),
            };
            errors.push(FieldError { reason, field, message });
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(ApiError::invalid(target.kind, target.group, target.name, &errors))
    }
}

fn lookup_dotted<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for idx in rest.split(['[', ']']).filter(|s| !s.is_empty()) {
            cur = match idx.parse::<usize>() {
                Ok(i) => cur.get(i)?,
                Err(_) => cur.get(idx)?,
            };
        }
    }
    Some(cur)
}

fn validate_name(obj: &Value, errors: &mut Vec<FieldError>) {
    let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str) else {
        return;
    };
    let ok =
        name.len() <= 253 && Regex::new(&format!("^{DNS1123_SUBDOMAIN}$")).is_ok_and(|r| r.is_match(name));
    if !ok {
        errors.push(FieldError::new(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')"
            ),
        ));
    }
}

fn preserves_unknown(s: &Value) -> bool {
    s.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true)
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Drops fields the schema does not declare, recording their paths.
fn prune(v: &mut Value, s: &Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let embedded = s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
            let keep_unknown = preserves_unknown(s) || additional.and_then(Value::as_bool) == Some(true);
            let mut drop = Vec::new();
            for (k, child) in m.iter_mut() {
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    prune(child, ps, &child_path(path, k), unknown);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    prune(child, a, &format!("{path}[{k}]"), unknown);
                } else if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                } else if !keep_unknown {
                    drop.push(k.clone());
                }
            }
            for k in drop {
                m.remove(&k);
                unknown.push(child_path(path, &k));
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(it, is, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None | Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => "integer",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// Go's `%v`-ish rendering used in "Invalid value: ..." messages.
fn render(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn num(s: &Value, k: &str) -> Option<f64> {
    s.get(k).and_then(Value::as_f64)
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") }
}

fn validate(v: &Value, s: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let invalid = |errors: &mut Vec<FieldError>, detail: String| {
        errors.push(FieldError::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {detail}", render(v)),
        ));
    };
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            errors.push(FieldError::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: \"null\": {path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            let t = type_name(Some(v));
            errors.push(FieldError::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: \"{t}\": {path} in body must be of type integer,string: \"{t}\""),
            ));
            return;
        }
    } else if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => true,
        };
        if !ok {
            let actual = type_name(Some(v));
            errors.push(FieldError::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(FieldError::new(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
        ));
    }
    if let Some(branches) = s.get("allOf").and_then(Value::as_array) {
        for b in branches {
            validate(v, b, path, errors);
        }
    }
    match v {
        Value::Number(n) => {
            let Some(x) = n.as_f64() else { return };
            let excl = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
            if let Some(max) = num(s, "maximum") {
                if excl("exclusiveMaximum") && x >= max {
                    invalid(errors, format!("{path} in body should be less than {}", fmt_num(max)));
                } else if x > max {
                    invalid(
                        errors,
                        format!("{path} in body should be less than or equal to {}", fmt_num(max)),
                    );
                }
            }
            if let Some(min) = num(s, "minimum") {
                if excl("exclusiveMinimum") && x <= min {
                    invalid(errors, format!("{path} in body should be greater than {}", fmt_num(min)));
                } else if x < min {
                    invalid(
                        errors,
                        format!("{path} in body should be greater than or equal to {}", fmt_num(min)),
                    );
                }
            }
            if let Some(m) = num(s, "multipleOf")
                && m != 0.0
                && (x / m).fract() != 0.0
            {
                invalid(errors, format!("{path} in body should be a multiple of {}", fmt_num(m)));
            }
            match s.get("format").and_then(Value::as_str) {
                Some("int32") if n.as_i64().is_some_and(|i| i32::try_from(i).is_err()) => {
                    invalid(errors, format!("{path} in body must be of type int32: {n}"));
                }
                _ => {}
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as f64;
            if let Some(max) = num(s, "maxLength")
                && len > max
            {
                errors.push(FieldError::new(
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {} bytes", fmt_num(max)),
                ));
            }
            if let Some(min) = num(s, "minLength")
                && len < min
            {
                invalid(errors, format!("{path} in body should be at least {} chars long", fmt_num(min)));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str)
                && let Ok(re) = Regex::new(p)
                && !re.is_match(st)
            {
                invalid(errors, format!("{path} in body should match '{p}'"));
            }
        }
        Value::Array(items) => {
            let n = items.len() as f64;
            if let Some(max) = num(s, "maxItems")
                && n > max
            {
                errors.push(FieldError::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {}: must have at most {} items", items.len(), fmt_num(max)),
                ));
            }
            if let Some(min) = num(s, "minItems")
                && n < min
            {
                invalid(errors, format!("{path} in body should have at least {} items", fmt_num(min)));
            }
            let list_type = s.get("x-kubernetes-list-type").and_then(Value::as_str);
            let unique = s.get("uniqueItems").and_then(Value::as_bool) == Some(true);
            if unique || list_type == Some("set") {
                for (i, it) in items.iter().enumerate() {
                    if items[..i].contains(it) {
                        errors.push(FieldError::new(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {it}"),
                        ));
                    }
                }
            }
            if list_type == Some("map") {
                let keys: Vec<String> = s
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let key_of = |it: &Value| -> Value {
                    Value::Object(
                        keys.iter().filter_map(|k| it.get(k).map(|v| (k.clone(), v.clone()))).collect(),
                    )
                };
                let all: Vec<Value> = items.iter().map(key_of).collect();
                for (i, k) in all.iter().enumerate() {
                    if all[..i].contains(k) {
                        errors.push(FieldError::new(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: map[string]interface {{}}{k}"),
                        ));
                    }
                }
            }
            if let Some(is) = s.get("items") {
                for (i, it) in items.iter().enumerate() {
                    validate(it, is, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(m) => {
            let n = m.len() as f64;
            if let Some(max) = num(s, "maxProperties")
                && n > max
            {
                errors.push(FieldError::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {}: must have at most {} items", m.len(), fmt_num(max)),
                ));
            }
            if let Some(min) = num(s, "minProperties")
                && n < min
            {
                invalid(errors, format!("{path} in body should have at least {} properties", fmt_num(min)));
            }
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errors.push(FieldError::new(
                            "FieldValueRequired",
                            &child_path(path, r),
                            "Required value",
                        ));
                    }
                }
            }
            let embedded = s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in m {
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    validate(child, ps, &child_path(path, k), errors);
                } else if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                } else if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    validate(child, a, &format!("{path}[{k}]"), errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structural_errors_are_collected_with_real_field_paths() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "required": ["image"],
        "properties": {
            "replicas": {"type": "integer", "maximum": 1000},
            "image": {"type": "string"},
            "policy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}
        }}}});
        let mut obj = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "x"},
            "spec": {"replicas": 1001, "policy": "Sometimes", "labels": {"foo": "toolong"}, "extra": 1}});
        let err = admit_custom_object(
            &mut obj,
            None,
            &schema,
            FieldValidation::Prune { warn: true },
            &Target { kind: "K", group: "g", name: "x" },
        )
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
        assert_eq!(
            err,
            "K.g \"x\" is invalid: [spec.image: Required value, \
             spec.labels[foo]: Too long: may not be more than 3 bytes, \
             spec.policy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\", \
             spec.replicas: Invalid value: 1001: spec.replicas in body should be less than or equal to 1000]"
        );
        assert!(obj.pointer("/spec/extra").is_none(), "unknown fields are pruned");
    }
}

//! Server-side printing: `meta.k8s.io/v1` `Table` answers for custom resources, built from
//! the CRD version's `additionalPrinterColumns` the way apiextensions-apiserver's table
//! convertor does (first column Name, then one column per printer column, a default Age
//! column when the CRD declares none).

use crate::errors::{ApiError, ApiResult};
use crate::registry::PrinterColumn;
use serde_json::{Value, json};

/// ObjectMeta's `name` documentation, which the real server uses for the Name column.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating \
resources, although some resources may allow a client to request the generation of an appropriate \
name automatically. Name is primarily intended for creation idempotence and configuration \
definition. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// ObjectMeta's `creationTimestamp` documentation (the default Age column).
const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the \
server time when this object was created. It is not guaranteed to be set in happens-before order \
across separate operations. Clients may not set this value. It is represented in RFC3339 form and \
is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// The Table group version an `Accept` header asks for, if it prefers a Table to plain JSON.
///
/// Media ranges are taken in order (kubectl sends no q-values): the first one the double can
/// serve wins, so `application/json;as=Table;v=v1;g=meta.k8s.io,application/json` is a Table
/// and `application/json` alone (or first) is plain JSON. Unknown `as=` targets (e.g.
/// PartialObjectMetadata) and other media types are skipped.
pub(crate) fn requested(accept: &str) -> Option<&'static str> {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_, mut g, mut v) = (None, None, None);
        for p in parts {
            let Some((k, val)) = p.split_once('=') else { continue };
            let val = val.trim().trim_matches('"');
            match k.trim() {
                "as" => as_ = Some(val),
                "g" => g = Some(val),
                "v" => v = Some(val),
                _ => {}
            }
        }
        match (as_, g, v) {
            (None, _, _) => return None,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Some("meta.k8s.io/v1"),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => return Some("meta.k8s.io/v1beta1"),
            _ => continue,
        }
    }
    None
}

/// What a row's `object` holds (`includeObject` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(v: Option<&str>) -> ApiResult<Self> {
        match v.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            "None" => Ok(Self::None),
            other => Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

/// The columns for a CRD version: the declared ones, or Age when none are declared.
fn effective_columns(columns: &[PrinterColumn]) -> Vec<PrinterColumn> {
    if !columns.is_empty() {
        return columns.to_vec();
    }
    vec![PrinterColumn {
        name: "Age".into(),
        col_type: "date".into(),
        format: String::new(),
        description: CREATION_TIMESTAMP_DESCRIPTION.into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }]
}

/// A Table for `objects` (already carrying the served `apiVersion`).
pub(crate) fn build(
    table_api_version: &str,
    columns: &[PrinterColumn],
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    let columns = effective_columns(columns);
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": NAME_DESCRIPTION, "priority": 0})];
    for c in &columns {
        let description = if c.description.is_empty() {
            format!("Custom resource definition column (in JSONPath format): {}", c.json_path)
        } else {
            c.description.clone()
        };
        defs.push(json!({"name": c.name, "type": c.col_type, "format": c.format,
            "description": description, "priority": c.priority}));
    }
    let paths: Vec<Option<Vec<Step>>> = columns
        .iter()
        .map(|c| match parse_json_path(&c.json_path) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(column = %c.name, path = %c.json_path, error = %e, "unsupported printer column JSONPath");
                None
            }
        })
        .collect();
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            for (c, path) in columns.iter().zip(&paths) {
                let value = path.as_ref().and_then(|p| evaluate(p, obj).into_iter().next());
                cells.push(value.map_or(Value::Null, |v| cell(&c.col_type, v, now)));
            }
            let object = match include {
                IncludeObject::Object => obj.clone(),
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": table_api_version,
                    "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                }),
                IncludeObject::None => Value::Null,
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": table_api_version,
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// One cell, typed like apiextensions-apiserver's `cellForJSONValue`.
fn cell(col_type: &str, v: &Value, now: jiff::Timestamp) -> Value {
    match (col_type, v) {
        (_, Value::Null) => Value::Null,
        // JSONPath text output: strings raw, scalars printed, objects/arrays as compact JSON.
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Number(n)) => json!(n.to_string()),
        ("string", Value::Bool(b)) => json!(b.to_string()),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => {
            n.as_i64().map(Value::from).or_else(|| n.as_f64().map(|f| json!(f as i64))).unwrap_or(Value::Null)
        }
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => json!(age(s, now)),
        _ => Value::Null,
    }
}

/// What `metatable.ConvertToHumanReadableDateType` prints for an RFC3339 timestamp.
fn age(s: &str, now: jiff::Timestamp) -> String {
    if s.is_empty() || s == "null" {
        return "<unknown>".into();
    }
    match s.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now.as_second() - t.as_second()),
        Err(_) => "<invalid>".into(),
    }
}

/// apimachinery's `duration.HumanDuration` for a whole number of seconds.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// One step of the JSONPath subset printer columns use.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// `.name` or `['name']`
    Field(String),
    /// `[3]`, `[-1]`
    Index(i64),
    /// `[*]` or `.*`
    Wildcard,
    /// `[?(@.a.b)]` (existence) or `[?(@.a.b == "x")]` / `!=`
    Filter { path: Vec<String>, op: Option<(FilterOp, Value)> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FilterOp {
    Eq,
    Ne,
}

/// Parses `.a.b[0].c`, `.a[*]`, `.a['b.c']`, `.a[?(@.type=="Ready")].status` (optionally
/// wrapped in `{}`). Recursive descent (`..`), slices and unions are not supported.
pub(crate) fn parse_json_path(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let p = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(p).trim();
    let p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'.') {
                    return Err("recursive descent (..) is not supported".into());
                }
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                match name.as_str() {
                    "" if i >= chars.len() => {} // a lone "." is the whole object
                    "" => return Err(format!("empty field name at {start}")),
                    "*" => steps.push(Step::Wildcard),
                    _ => steps.push(Step::Field(name)),
                }
            }
            '[' => {
                let close = find_bracket_end(&chars, i).ok_or_else(|| format!("unclosed [ at {i}"))?;
                let inner: String = chars[i + 1..close].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = close + 1;
            }
            c => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(steps)
}

/// Index of the `]` closing the `[` at `open`, skipping quoted strings.
fn find_bracket_end(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(s) = unquote(inner) {
        return Ok(Step::Field(s));
    }
    if let Some(f) = inner.strip_prefix('?') {
        let f = f.trim();
        let f = f
            .strip_prefix('(')
            .and_then(|x| x.strip_suffix(')'))
            .ok_or_else(|| format!("filter must be ?(...): {inner}"))?
            .trim();
        let (lhs, op) = match (f.find("=="), f.find("!=")) {
            (Some(at), _) => (&f[..at], Some((FilterOp::Eq, &f[at + 2..]))),
            (None, Some(at)) => (&f[..at], Some((FilterOp::Ne, &f[at + 2..]))),
            (None, None) => (f, None),
        };
        let lhs = lhs.trim().strip_prefix('@').ok_or_else(|| format!("filter must start with @: {f}"))?;
        let mut path = Vec::new();
        for step in parse_json_path(lhs)? {
            match step {
                Step::Field(n) => path.push(n),
                _ => return Err(format!("only field paths are supported in filters: {f}")),
            }
        }
        let op = match op {
            None => None,
            Some((op, rhs)) => Some((op, parse_literal(rhs.trim())?)),
        };
        return Ok(Step::Filter { path, op });
    }
    inner.parse::<i64>().map(Step::Index).map_err(|_| format!("unsupported subscript [{inner}]"))
}

fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next()?;
    if (q == '"' || q == '\'') && s.len() >= 2 && s.ends_with(q) {
        return Some(s[1..s.len() - 1].to_string());
    }
    None
}

fn parse_literal(s: &str) -> Result<Value, String> {
    if let Some(u) = unquote(s) {
        return Ok(json!(u));
    }
    match s {
        "true" => return Ok(json!(true)),
        "false" => return Ok(json!(false)),
        _ => {}
    }
    serde_json::from_str::<serde_json::Number>(s)
        .map(Value::Number)
        .map_err(|_| format!("unsupported filter literal {s}"))
}

fn literal_matches(v: &Value, lit: &Value) -> bool {
    match (v, lit) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => v == lit,
    }
}

/// All values the path selects, in document order; missing keys select nothing.
pub(crate) fn evaluate<'a>(steps: &[Step], obj: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![obj];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(name) => next.extend(v.get(name.as_str())),
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        if let Ok(idx) = usize::try_from(idx) {
                            next.extend(a.get(idx));
                        }
                    }
                }
                Step::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter { path, op } => {
                    let Some(a) = v.as_array() else { continue };
                    for item in a {
                        let found = path.iter().try_fold(item, |cur, k| cur.get(k.as_str()));
                        let keep = match (found, op) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(x), Some((FilterOp::Eq, lit))) => literal_matches(x, lit),
                            (Some(x), Some((FilterOp::Ne, lit))) => !literal_matches(x, lit),
                        };
                        if keep {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod unit_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn eval(path: &str, obj: &Value) -> Vec<Value> {
        evaluate(&parse_json_path(path).unwrap(), obj).into_iter().cloned().collect()
    }

    #[test]
    fn json_path_subset_selects_fields_indexes_and_filtered_conditions() {
        let obj = json!({"spec": {"image": "img:1", "ports": [{"port": 80}, {"port": 81}],
            "labels": {"a.b": "x"}},
            "status": {"conditions": [
                {"type": "Progressing", "status": "False"},
                {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(".spec.image", &obj), vec![json!("img:1")]);
        assert_eq!(eval(".spec.ports[0].port", &obj), vec![json!(80)]);
        assert_eq!(eval(".spec.ports[-1].port", &obj), vec![json!(81)]);
        assert_eq!(eval(".spec.ports[*].port", &obj), vec![json!(80), json!(81)]);
        assert_eq!(eval(".spec.labels['a.b']", &obj), vec![json!("x")]);
        assert_eq!(eval(r#".status.conditions[?(@.type=="Ready")].status"#, &obj), vec![json!("True")]);
        assert_eq!(eval(".status.conditions[?(@.type != 'Ready')].status", &obj), vec![json!("False")]);
        assert!(eval(".status.readyReplicas", &obj).is_empty());
        assert!(eval(".spec.ports[5].port", &obj).is_empty());
        assert!(parse_json_path("..spec").is_err());
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn accept_header_negotiates_table_only_when_preferred() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(requested(kubectl), Some("meta.k8s.io/v1"));
        assert_eq!(
            requested("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("meta.k8s.io/v1beta1")
        );
        assert_eq!(requested("application/json"), None);
        assert_eq!(requested("application/json, application/json;as=Table;v=v1;g=meta.k8s.io"), None);
        assert_eq!(
            requested("application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json"),
            None
        );
        assert_eq!(requested(""), None);
    }
}

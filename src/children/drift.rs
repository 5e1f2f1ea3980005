//! Drift: whether a live child differs from what the operator wants.
//!
//! Two signals, because each misses what the other sees:
//! - the digest annotation, stamped on every desired object, changes when the
//!   operator wants something different, including a field it stopped setting
//!   (a subset comparison cannot see removals);
//! - the subset comparison sees a field someone else changed or removed.

use serde_json::Value;

use super::labels::APPLIED_DIGEST_ANNOTATION;

/// Stamps [`APPLIED_DIGEST_ANNOTATION`] with a digest of `obj` as built.
pub fn with_digest(mut obj: Value) -> Value {
    let digest = serde_json::to_vec(&obj).map(|bytes| fnv1a64(&bytes)).unwrap_or_default();
    insert_pointer(
        &mut obj,
        &format!("/metadata/annotations/{}", APPLIED_DIGEST_ANNOTATION.replace('/', "~1")),
        Value::String(format!("{digest:016x}")),
    );
    obj
}

/// The digest stamped on an object (desired or live), if any.
pub fn digest_of(obj: &Value) -> Option<&str> {
    obj.get("metadata")?.get("annotations")?.get(APPLIED_DIGEST_ANNOTATION)?.as_str()
}

/// A stable digest of a serializable value (see [`fnv1a64`]).
pub fn digest<T: serde::Serialize>(value: &T) -> u64 {
    serde_json::to_vec(value).map(|bytes| fnv1a64(&bytes)).unwrap_or_default()
}

/// FNV-1a, 64 bit. Hand-written because the digest must be stable across Rust
/// releases (std's `DefaultHasher` is not) and is not a security boundary, so
/// a cryptographic hash crate would be weight without benefit. serde_json
/// maps are sorted (no `preserve_order`), so the bytes are deterministic.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// True when applying `desired` would change `live` (a full object).
pub fn needs_apply(desired: &Value, live: &Value) -> bool {
    digest_of(desired) != digest_of(live) || !is_subset(desired, live)
}

/// True when every field of `want` is present in `have` with the same value.
/// Lists match when the elements of `want` match distinct elements of `have`
/// in order, so entries other managers added (sidecars, extra owner
/// references) do not make the operator re-apply forever.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            w.iter().all(|(k, wv)| h.get(k).is_some_and(|hv| is_subset(wv, hv)))
        }
        (Value::Array(w), Value::Array(h)) => {
            let mut rest = h.iter();
            w.iter().all(|wv| rest.any(|hv| is_subset(wv, hv)))
        }
        (Value::Number(w), Value::Number(h)) => w.as_f64() == h.as_f64(),
        _ => want == have,
    }
}

/// Sets the value at a JSON pointer, creating objects on the way. Pointer
/// tokens use `~1` for `/` and `~0` for `~`.
pub fn insert_pointer(target: &mut Value, pointer: &str, value: Value) {
    let tokens: Vec<String> =
        pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, parents)) = tokens.split_last() else { return };
    let mut cur = target;
    for token in parents {
        if !cur.is_object() {
            *cur = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = cur else { return };
        cur = map.entry(token.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = cur {
        map.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_added_by_the_server_or_others_do_not_force_an_apply() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"name": "grpc", "port": 1}]}});
        let have = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "ports": [{"name": "grpc", "port": 1, "protocol": "TCP"}, {"name": "sidecar", "port": 2}]},
            "status": {}});
        assert!(is_subset(&want, &have));
    }

    #[test]
    fn a_changed_or_missing_field_forces_an_apply() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"name": "grpc", "port": 1}]}});
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 3, "ports": [{"name": "grpc", "port": 1}]}})));
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 2}})));
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 2, "ports": []}})));
    }

    #[test]
    fn list_order_matters_because_the_server_keeps_it() {
        let want = json!([{"name": "a"}, {"name": "b"}]);
        assert!(is_subset(&want, &json!([{"name": "a"}, {"name": "x"}, {"name": "b"}])));
        assert!(!is_subset(&want, &json!([{"name": "b"}, {"name": "a"}])));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(is_subset(&json!({"a": 1}), &json!({"a": 1.0})));
    }

    #[test]
    fn digest_changes_when_a_field_is_removed_and_is_deterministic() {
        let with = with_digest(json!({"metadata": {"name": "a"}, "spec": {"env": [{"name": "X"}]}}));
        let without = with_digest(json!({"metadata": {"name": "a"}, "spec": {}}));
        assert_ne!(digest_of(&with), digest_of(&without));
        assert_eq!(
            digest_of(&without),
            digest_of(&with_digest(json!({"metadata": {"name": "a"}, "spec": {}})))
        );
        assert!(needs_apply(&with, &without), "the digest sees the removal");
    }

    #[test]
    fn pointers_are_created_and_unescaped() {
        let mut v = json!({"metadata": {}});
        insert_pointer(&mut v, "/metadata/annotations/a~1b", json!("x"));
        insert_pointer(&mut v, "/spec/replicas", json!(3));
        assert_eq!(v, json!({"metadata": {"annotations": {"a/b": "x"}}, "spec": {"replicas": 3}}));
    }
}

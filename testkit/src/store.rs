//! Object storage with etcd-like semantics: one global resourceVersion counter, a bounded
//! event history for watches, and the write rules every verb shares (generation, status
//! subresource, no-op detection, finalizers, cascading deletion).

use crate::errors::{ApiError, ApiResult, FieldError};
use crate::managed_fields::{Scope, record_update};
use crate::registry::{Registry, ResourceDef, crd_status, crd_to_def};
use crate::schema_validation::{FieldValidation, Target, admit_custom_object};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events kept for watches that resume from a resourceVersion.
pub(crate) const HISTORY_CAPACITY: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub object: Value,
    /// The previous state for MODIFIED, so selector-filtered watches can turn a change that
    /// leaves (enters) the selection into DELETED (ADDED) like the real watch cache does.
    pub old: Option<Value>,
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

fn random_uid() -> String {
    let b: u128 = rand::random();
    // Version 4 / variant 1 bits, so it looks like what the real server hands out.
    let b = (b & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn random_suffix() -> String {
    // The alphabet apimachinery's rand.String uses (no vowels, no confusable digits).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// How a write is checked and recorded.
#[derive(Clone, Debug)]
pub(crate) struct WriteCtx {
    /// `None` for the test helpers, which bypass ownership tracking.
    pub manager: Option<String>,
    /// Ownership already computed (server-side apply).
    pub fields_precomputed: bool,
    pub api_version: String,
    pub scope: Scope,
    pub field_validation: FieldValidation,
    /// Schema validation of custom objects (off for the test helpers).
    pub validate: bool,
    pub warnings: Vec<String>,
}

impl WriteCtx {
    pub fn helper(api_version: String, scope: Scope) -> Self {
        Self {
            manager: None,
            fields_precomputed: false,
            api_version,
            scope,
            field_validation: FieldValidation::Prune { warn: false },
            validate: false,
            warnings: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

type ObjKey = (String, String);

/// Events after the requested resourceVersion, then the live feed.
pub(crate) type Subscription = (Vec<Arc<Event>>, mpsc::UnboundedReceiver<Arc<Event>>);

pub(crate) struct Store {
    pub registry: Registry,
    objects: HashMap<(String, String), BTreeMap<ObjKey, Value>>,
    pub rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub history_floor: u64,
    watchers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    /// uids whose dependents are orphaned when the object is finally removed.
    orphan_on_removal: HashSet<String>,
}

fn md<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get("metadata").and_then(|m| m.get(key))
}

fn md_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    md(obj, key).and_then(Value::as_str)
}

fn md_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was made an object above"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    md(obj, "finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The object with the fields a no-op comparison ignores stripped.
fn normalized(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    o
}

/// What bumps generation: everything outside metadata (and outside status when the type
/// has a status subresource).
fn generation_view(obj: &Value, has_status: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if has_status {
            m.remove("status");
        }
    }
    o
}

impl Store {
    pub fn new() -> Self {
        let mut s = Self {
            registry: Registry::with_builtins(),
            objects: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_floor: 0,
            watchers: Vec::new(),
            orphan_on_removal: HashSet::new(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let ctx = WriteCtx::helper("v1".into(), Scope::Main { exclude_status: false });
            if let Some(def) = s.registry.get("", "namespaces").cloned() {
                // Cannot fail: the namespaces are new and need no parent namespace.
                let _ = s.create(&def, None, obj, &mut ctx.clone());
            }
        }
        s
    }

    /// A copy without watchers, for dry-run writes.
    pub fn scratch_copy(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            objects: self.objects.clone(),
            rv: self.rv,
            history: VecDeque::new(),
            history_floor: self.rv,
            watchers: Vec::new(),
            orphan_on_removal: self.orphan_on_removal.clone(),
        }
    }

    fn bucket(&self, group: &str, resource: &str) -> Option<&BTreeMap<ObjKey, Value>> {
        self.objects.get(&(group.to_string(), resource.to_string()))
    }

    pub fn get(&self, group: &str, resource: &str, ns: Option<&str>, name: &str) -> Option<&Value> {
        self.bucket(group, resource)?.get(&(ns.unwrap_or("").to_string(), name.to_string()))
    }

    pub fn list(&self, group: &str, resource: &str, ns: Option<&str>) -> Vec<Value> {
        self.bucket(group, resource)
            .map(|b| {
                b.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.get("", "namespaces", None, ns).is_some()
    }

    fn emit(&mut self, kind: EventType, def: &ResourceDef, ns: &str, object: &Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            kind,
            group: def.group.clone(),
            resource: def.plural.clone(),
            namespace: ns.to_string(),
            object: object.clone(),
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY_CAPACITY {
            if let Some(dropped) = self.history.pop_front() {
                self.history_floor = dropped.rv;
            }
        }
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }

    /// Registers a watcher that receives every event after `from_rv` (`None`: from now).
    pub fn subscribe(&mut self, from_rv: Option<u64>) -> ApiResult<Subscription> {
        let backlog = match from_rv {
            Some(n) if n < self.history_floor => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {n} ({})",
                    self.history_floor
                )));
            }
            Some(n) => self.history.iter().filter(|e| e.rv > n).cloned().collect(),
            None => Vec::new(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push(tx);
        Ok((backlog, rx))
    }

    pub fn drop_watchers(&mut self) {
        self.watchers.clear();
    }

    /// Forgets the event history, like an etcd compaction at the current revision.
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_floor = self.rv;
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request must be an object"));
        }
        let ns = if def.namespaced {
            let ns = ns
                .map(str::to_string)
                .or_else(|| md_str(&obj, "namespace").map(str::to_string))
                .unwrap_or_else(|| "default".to_string());
            if !self.namespace_exists(&ns) {
                return Err(ApiError::not_found("", "namespaces", &ns));
            }
            Some(ns)
        } else {
            None
        };
        if let (Some(want), Some(got)) = (ns.as_deref(), md_str(&obj, "namespace"))
            && want != got
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = match md_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match md_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        "",
                        &[FieldError::new(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ));
                }
            },
        };
        let nskey = ns.clone().unwrap_or_default();
        if self.get(&def.group, &def.plural, ns.as_deref(), &name).is_some() {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        obj["apiVersion"] = json!(ctx.api_version.clone());
        obj["kind"] = json!(def.kind.clone());
        if def.has_status()
            && ctx.scope == (Scope::Main { exclude_status: true })
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        {
            let m = md_mut(&mut obj);
            m.insert("name".into(), json!(name));
            match &ns {
                Some(n) => m.insert("namespace".into(), json!(n)),
                None => m.remove("namespace"),
            };
            m.insert("uid".into(), json!(random_uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("selfLink");
        }
        if def.plural == "namespaces" && def.group.is_empty() && obj.pointer("/status/phase").is_none() {
            obj["status"] = json!({"phase": "Active"});
        }
        self.admit(def, &mut obj, None, ctx, &name)?;
        if let Some(manager) = ctx.manager.clone().filter(|_| !ctx.fields_precomputed) {
            let schema = self.schema_for(def, &ctx.api_version);
            record_update(None, &mut obj, &manager, &ctx.api_version, ctx.scope, schema.as_ref());
        }
        let rv = self.next_rv();
        md_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.objects
            .entry((def.group.clone(), def.plural.clone()))
            .or_default()
            .insert((nskey.clone(), name.clone()), obj.clone());
        self.emit(EventType::Added, def, &nskey, &obj, None);
        self.after_write(def, &obj);
        Ok(obj)
    }

    pub fn schema_for(&self, def: &ResourceDef, api_version: &str) -> Option<Value> {
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        def.version(version).and_then(|v| v.schema.clone())
    }

    fn admit(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        old: Option<&Value>,
        ctx: &mut WriteCtx,
        name: &str,
    ) -> ApiResult<()> {
        if !ctx.validate || !def.custom {
            return Ok(());
        }
        let Some(schema) = self.schema_for(def, &ctx.api_version) else {
            return Ok(());
        };
        let warnings = admit_custom_object(
            obj,
            old,
            &schema,
            ctx.field_validation,
            &Target { kind: &def.kind, group: &def.group, name },
        )?;
        ctx.warnings.extend(warnings);
        Ok(())
    }

    /// Side effects of a stored write: CRDs register their resource and get their status.
    fn after_write(&mut self, def: &ResourceDef, obj: &Value) {
        if def.group != "apiextensions.k8s.io" || def.plural != "customresourcedefinitions" {
            return;
        }
        if md(obj, "deletionTimestamp").is_some() {
            return;
        }
        if let Ok(new_def) = crd_to_def(obj) {
            self.registry.resources.insert((new_def.group.clone(), new_def.plural.clone()), new_def);
        }
        let status = crd_status(obj);
        if obj.get("status") != Some(&status)
            && let Some(name) = md_str(obj, "name")
        {
            let mut updated = obj.clone();
            updated["status"] = status;
            let mut ctx = WriteCtx::helper("apiextensions.k8s.io/v1".into(), Scope::Status);
            // Cannot conflict: this runs under the same lock as the write that triggered it.
            let _ = self.update(def, None, name, updated, &mut ctx);
        }
    }

    /// Replaces an existing object with `new` (already patched/applied by the caller).
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut new: Value,
        ctx: &mut WriteCtx,
    ) -> ApiResult<Value> {
        let ns = if def.namespaced { ns } else { None };
        let nskey = ns.unwrap_or("").to_string();
        let old = self
            .get(&def.group, &def.plural, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body of the request must be an object"));
        }
        if let Some(got) = md_str(&new, "name")
            && got != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({got}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(want) = md_str(&new, "resourceVersion").filter(|s| !s.is_empty())
            && Some(want) != md_str(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&def.group, &def.plural, name));
        }
        match ctx.scope {
            Scope::Status => {
                let status = new.get("status").cloned();
                let mut merged = old.clone();
                if let Some(m) = merged.as_object_mut() {
                    match status {
                        Some(s) => m.insert("status".into(), s),
                        None => m.remove("status"),
                    };
                }
                // Ownership computed on the request object is carried over.
                if let Some(mf) = md(&new, "managedFields").cloned().filter(|_| ctx.fields_precomputed) {
                    md_mut(&mut merged).insert("managedFields".into(), mf);
                }
                new = merged;
            }
            Scope::Main { exclude_status: true } if def.has_status() => {
                if let Some(m) = new.as_object_mut() {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
            }
            Scope::Main { .. } => {}
        }
        new["apiVersion"] = json!(ctx.api_version.clone());
        new["kind"] = json!(def.kind.clone());
        {
            let old_md = old.get("metadata").cloned().unwrap_or(json!({}));
            let m = md_mut(&mut new);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_md.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.remove("selfLink");
            if !ctx.fields_precomputed && ctx.manager.is_some() {
                // Ownership is derived from the stored object, not from what the client sent.
                match old_md.get("managedFields") {
                    Some(v) => m.insert("managedFields".into(), v.clone()),
                    None => m.remove("managedFields"),
                };
            }
        }
        if md(&old, "deletionTimestamp").is_some() {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                let list: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    name,
                    &[FieldError::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            list.join(", ")
                        ),
                    )],
                ));
            }
        }
        self.admit(def, &mut new, Some(&old), ctx, name)?;
        if let Some(manager) = ctx.manager.clone().filter(|_| !ctx.fields_precomputed) {
            let schema = self.schema_for(def, &ctx.api_version);
            record_update(Some(&old), &mut new, &manager, &ctx.api_version, ctx.scope, schema.as_ref());
        }
        let has_status = def.has_status();
        if generation_view(&old, has_status) != generation_view(&new, has_status) {
            let g = md(&old, "generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            md_mut(&mut new).insert("generation".into(), json!(g));
        }
        md_mut(&mut new).insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
        if normalized(&old) == normalized(&new) {
            // The real server skips no-op writes: no new resourceVersion, no event.
            return Ok(old);
        }
        let rv = self.next_rv();
        md_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        if md(&new, "deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            self.remove(def, &nskey, name, None);
            return Ok(new);
        }
        if let Some(bucket) = self.objects.get_mut(&(def.group.clone(), def.plural.clone())) {
            bucket.insert((nskey.clone(), name.to_string()), new.clone());
        }
        self.emit(EventType::Modified, def, &nskey, &new, Some(old));
        self.after_write(def, &new);
        Ok(new)
    }

    /// DELETE: marks objects with finalizers, removes the others (cascading to dependents).
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        propagation: Propagation,
        preconditions: Option<&Value>,
    ) -> ApiResult<Value> {
        let ns = if def.namespaced { ns } else { None };
        let nskey = ns.unwrap_or("").to_string();
        let obj = self
            .get(&def.group, &def.plural, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        if let Some(pre) = preconditions {
            for (key, field) in [("resourceVersion", "resourceVersion"), ("uid", "uid")] {
                if let Some(want) = pre.get(key).and_then(Value::as_str)
                    && Some(want) != md_str(&obj, field)
                {
                    return Err(ApiError::conflict(
                        &def.group,
                        &def.plural,
                        name,
                        &format!(
                            "Precondition failed: {key}: {want}, {key} in object meta: {}",
                            md_str(&obj, field).unwrap_or("")
                        ),
                    ));
                }
            }
        }
        let uid = md_str(&obj, "uid").unwrap_or("").to_string();
        if propagation == Propagation::Orphan {
            self.orphan_on_removal.insert(uid.clone());
        }
        if finalizers(&obj).is_empty() {
            return Ok(self.remove(def, &nskey, name, None).unwrap_or(obj));
        }
        if md(&obj, "deletionTimestamp").is_some() {
            return Ok(obj);
        }
        let mut marked = obj.clone();
        let g = md(&obj, "generation").and_then(Value::as_i64).unwrap_or(0) + 1;
        let rv = self.next_rv();
        {
            let m = md_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(g));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        if let Some(bucket) = self.objects.get_mut(&(def.group.clone(), def.plural.clone())) {
            bucket.insert((nskey.clone(), name.to_string()), marked.clone());
        }
        self.emit(EventType::Modified, def, &nskey, &marked, Some(obj));
        Ok(marked)
    }

    /// Removes an object for good, then does what the garbage collector and the namespace
    /// and CRD controllers would do about it.
    fn remove(&mut self, def: &ResourceDef, nskey: &str, name: &str, rv: Option<u64>) -> Option<Value> {
        let key = (def.group.clone(), def.plural.clone());
        let mut obj = self.objects.get_mut(&key)?.remove(&(nskey.to_string(), name.to_string()))?;
        let rv = rv.unwrap_or_else(|| self.next_rv());
        md_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.emit(EventType::Deleted, def, nskey, &obj, None);
        let uid = md_str(&obj, "uid").unwrap_or("").to_string();

        if def.group == "apiextensions.k8s.io"
            && def.plural == "customresourcedefinitions"
            && let Ok(crd_def) = crd_to_def(&obj)
        {
            let names: Vec<ObjKey> = self
                .bucket(&crd_def.group, &crd_def.plural)
                .map(|b| b.keys().cloned().collect())
                .unwrap_or_default();
            for (ns, n) in names {
                self.remove(&crd_def, &ns, &n, None);
            }
            self.registry.resources.remove(&(crd_def.group.clone(), crd_def.plural.clone()));
            self.objects.remove(&(crd_def.group, crd_def.plural));
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            let defs: Vec<ResourceDef> =
                self.registry.resources.values().filter(|d| d.namespaced).cloned().collect();
            for d in defs {
                let names: Vec<ObjKey> = self
                    .bucket(&d.group, &d.plural)
                    .map(|b| b.keys().filter(|(ns, _)| ns == name).cloned().collect())
                    .unwrap_or_default();
                for (ns, n) in names {
                    self.remove(&d, &ns, &n, None);
                }
            }
        }

        let orphan = self.orphan_on_removal.remove(&uid);
        let dependents = self.dependents_of(&uid);
        for (d, ns, n) in dependents {
            if orphan {
                if let Some(mut dep) = self.get(&d.group, &d.plural, Some(&ns), &n).cloned() {
                    if let Some(refs) = dep
                        .get_mut("metadata")
                        .and_then(|m| m.get_mut("ownerReferences"))
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    let version = d.preferred_version().map(|v| v.name.clone()).unwrap_or_default();
                    let mut ctx =
                        WriteCtx::helper(d.api_version(&version), Scope::Main { exclude_status: false });
                    let _ = self.update(&d, Some(&ns), &n, dep, &mut ctx);
                }
            } else {
                let _ = self.delete(&d, Some(&ns), &n, Propagation::Background, None);
            }
        }
        Some(obj)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(ResourceDef, String, String)> {
        if uid.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for ((group, plural), bucket) in &self.objects {
            let Some(def) = self.registry.get(group, plural) else {
                continue;
            };
            for ((ns, name), obj) in bucket {
                let owned = md(obj, "ownerReferences").and_then(Value::as_array).is_some_and(|refs| {
                    refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                });
                if owned {
                    out.push((def.clone(), ns.clone(), name.clone()));
                }
            }
        }
        out
    }
}

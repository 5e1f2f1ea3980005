//! HTTP front: classifies each request, records it, applies injected faults and
//! dispatches to the store.

use crate::apply::{ApplyRequest, parse_apply_body, server_side_apply};
use crate::errors::{ApiError, ApiResult};
use crate::faults::{Fault, FaultKind, take_fault};
use crate::managed_fields::Scope;
use crate::patch::{PatchKind, apply_patch};
use crate::registry::ResourceDef;
use crate::request_log::{RequestInfo, RequestRecord, Verb, derive_verb, parse_path, parse_query};
use crate::schema_validation::FieldValidation;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Propagation, Store, WriteCtx};
use crate::watch::{TableWatch, WatchRequest, serve as serve_watch};
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<Vec<Fault>>,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub addr: SocketAddr,
}

/// Locks, ignoring poisoning: a panicking test thread must not wedge the double.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const MAX_BODY: usize = 64 * 1024 * 1024;

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    for w in warnings {
        let v = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(h) = http::HeaderValue::from_str(&v) {
            resp.headers_mut().append(http::header::WARNING, h);
        }
    }
    resp
}

pub(crate) fn error_response(err: &ApiError) -> Response {
    let mut resp = json_response(err.code, &err.status_body(), &[]);
    if let Some(secs) = err.retry_after
        && let Ok(h) = http::HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, h);
    }
    resp
}

struct Ctx {
    path: String,
    query: Vec<(String, String)>,
    info: RequestInfo,
    verb: Verb,
    content_type: String,
    accept: String,
    user_agent: Option<String>,
    body: axum::body::Bytes,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    /// `dryRun=All`: the write runs against a throwaway copy of the store.
    fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }

    fn q_bool(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true") | Some("1"))
    }

    /// The field manager for non-apply writes: `fieldManager`, else the user agent's
    /// program name (what precedes the first `/`), else "unknown".
    fn manager(&self) -> String {
        if let Some(m) = self.q("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        self.user_agent
            .as_deref()
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let header =
        |h: http::header::HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header(http::header::CONTENT_TYPE);
    let user_agent = header(http::header::USER_AGENT);
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let query = parse_query(&raw_query);
    let path = parts.uri.path().to_string();
    let info = parse_path(&path);
    let method = parts.method.as_str().to_string();
    let watch_param = query.iter().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = derive_verb(&method, &info, watch_param, content_type.as_deref().unwrap_or(""));
    let ctx = Ctx {
        path: path.clone(),
        query,
        info: info.clone(),
        verb,
        content_type: content_type.clone().unwrap_or_default(),
        accept: header(http::header::ACCEPT).unwrap_or_default(),
        user_agent: user_agent.clone(),
        body,
    };
    let mut record = RequestRecord {
        method,
        verb,
        path,
        query: raw_query,
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        field_manager: ctx.q("fieldManager").map(str::to_string),
        content_type,
        user_agent,
        status: 0,
    };
    tracing::info!(verb = ?verb, method = %record.method, path = %record.path, query = %record.query, "request");

    let fault = take_fault(&mut lock(&shared.faults), verb, &info.resource, info.subresource.as_deref());
    let resp = match fault {
        Some(FaultKind::Hang) => {
            lock(&shared.requests).push(record);
            let mut rx = shared.shutdown.subscribe();
            // Resolves when shutdown is signalled (or the server is dropped).
            let _ = rx.wait_for(|down| *down).await;
            return error_response(&ApiError::for_status(503));
        }
        Some(FaultKind::Status(code)) => error_response(&ApiError::for_status(code)),
        None => dispatch(&shared, &ctx).unwrap_or_else(|e| error_response(&e)),
    };
    record.status = resp.status().as_u16();
    tracing::debug!(status = record.status, "answered");
    lock(&shared.requests).push(record);
    resp
}

fn dispatch(shared: &Arc<Shared>, ctx: &Ctx) -> ApiResult<Response> {
    if ctx.verb == Verb::Discovery {
        let store = lock(&shared.store);
        return match crate::discovery::document(&store.registry, &ctx.path, &shared.addr.to_string()) {
            Some(doc) => Ok(json_response(200, &doc, &[])),
            None => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
        };
    }
    let info = &ctx.info;
    let def = {
        let store = lock(&shared.store);
        store
            .registry
            .get(&info.group, &info.resource)
            .filter(|d| d.version(&info.version).is_some_and(|v| v.served))
            .cloned()
    }
    .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
    if (def.namespaced && info.namespace.is_none() && info.name.is_some())
        || (!def.namespaced && info.namespace.is_some())
    {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    match &info.subresource {
        None => {}
        Some(s) if s == "status" && def.version(&info.version).is_some_and(|v| v.has_status) => {}
        Some(_) => {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
    }
    let api_version = def.api_version(&info.version);
    let scope = if info.subresource.as_deref() == Some("status") {
        Scope::Status
    } else {
        Scope::Main { exclude_status: def.has_status() }
    };
    let ns = info.namespace.as_deref();
    let versioned = |mut v: Value| {
        v["apiVersion"] = json!(api_version);
        v
    };
    match ctx.verb {
        Verb::Get => {
            let store = lock(&shared.store);
            let name = info.name.as_deref().unwrap_or("");
            let obj = store
                .get(&def.group, &def.plural, ns, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
            if let Some(table_version) = table_wanted(ctx, &def) {
                let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
                let rv = rv.to_string();
                let table = crate::table::build(
                    table_version,
                    &printer_columns(&def, &info.version),
                    &[versioned(obj)],
                    &rv,
                    crate::table::IncludeObject::from_query(ctx.q("includeObject"))?,
                );
                return Ok(json_response(200, &table, &[]));
            }
            Ok(json_response(200, &versioned(obj), &[]))
        }
        Verb::List => {
            let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))?;
            let store = lock(&shared.store);
            let items: Vec<Value> = store
                .list(&def.group, &def.plural, ns)
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(versioned)
                .collect();
            if let Some(table_version) = table_wanted(ctx, &def) {
                let table = crate::table::build(
                    table_version,
                    &printer_columns(&def, &info.version),
                    &items,
                    &store.rv.to_string(),
                    crate::table::IncludeObject::from_query(ctx.q("includeObject"))?,
                );
                return Ok(json_response(200, &table, &[]));
            }
            let list = json!({
                "kind": def.list_kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": store.rv.to_string()},
                "items": items,
            });
            Ok(json_response(200, &list, &[]))
        }
        Verb::Watch => {
            let wr = WatchRequest {
                def: def.clone(),
                api_version: api_version.clone(),
                namespace: ns.map(str::to_string),
                resource_version: ctx.q("resourceVersion").map(str::to_string),
                bookmarks: ctx.q_bool("allowWatchBookmarks"),
                send_initial_events: ctx.q_bool("sendInitialEvents"),
                timeout: ctx.q("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
                labels: LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?,
                fields: FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))?,
                table: match table_wanted(ctx, &def) {
                    Some(api_version) => Some(TableWatch {
                        api_version,
                        columns: printer_columns(&def, &info.version),
                        include: crate::table::IncludeObject::from_query(ctx.q("includeObject"))?,
                        headers_sent: AtomicBool::new(false),
                    }),
                    None => None,
                },
            };
            serve_watch(shared.clone(), wr)
        }
        Verb::Create => {
            if info.name.is_some() {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let obj = parse_body(ctx)?;
            let mut wctx = write_ctx(ctx, &api_version, scope);
            let mut guard = lock(&shared.store);
            let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
            let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
            let created = store.create(&def, ns, obj, &mut wctx)?;
            Ok(json_response(201, &created, &wctx.warnings))
        }
        Verb::Update => {
            let name = info.name.as_deref().unwrap_or("");
            let obj = parse_body(ctx)?;
            let mut wctx = write_ctx(ctx, &api_version, scope);
            let mut guard = lock(&shared.store);
            let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
            let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
            let updated = store.update(&def, ns, name, obj, &mut wctx)?;
            Ok(json_response(200, &versioned(updated), &wctx.warnings))
        }
        Verb::Patch => {
            let name = info.name.as_deref().unwrap_or("");
            let kind = PatchKind::from_content_type(&ctx.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&ctx.content_type))?;
            let mut wctx = write_ctx(ctx, &api_version, scope);
            let mut guard = lock(&shared.store);
            let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
            let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
            let mut obj = store
                .get(&def.group, &def.plural, ns, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
            // The stored resourceVersion is not a precondition unless the patch sets one.
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let schema = store.schema_for(&def, &api_version);
            apply_patch(kind, &mut obj, &ctx.body, schema.as_ref())?;
            let updated = store.update(&def, ns, name, obj, &mut wctx)?;
            Ok(json_response(200, &versioned(updated), &wctx.warnings))
        }
        Verb::Apply => apply(shared, ctx, &def, &api_version, scope),
        Verb::Delete => {
            let name = info.name.as_deref().unwrap_or("");
            let opts: Value = if ctx.body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&ctx.body).unwrap_or(json!({}))
            };
            let policy = propagation(ctx, &opts);
            let mut guard = lock(&shared.store);
            let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
            let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
            let obj = store.delete(&def, ns, name, policy, opts.get("preconditions"))?;
            Ok(json_response(200, &versioned(obj), &[]))
        }
        Verb::DeleteCollection => {
            let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))?;
            let opts: Value = serde_json::from_slice(&ctx.body).unwrap_or(json!({}));
            let policy = propagation(ctx, &opts);
            let mut guard = lock(&shared.store);
            let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
            let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
            let targets: Vec<(Option<String>, String)> = store
                .list(&def.group, &def.plural, ns)
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .filter_map(|o| {
                    let md = o.get("metadata")?;
                    Some((
                        md.get("namespace").and_then(Value::as_str).map(str::to_string),
                        md.get("name")?.as_str()?.to_string(),
                    ))
                })
                .collect();
            let mut items = Vec::new();
            for (n, name) in targets {
                if let Ok(o) = store.delete(&def, n.as_deref(), &name, policy, None) {
                    items.push(versioned(o));
                }
            }
            let list = json!({"kind": def.list_kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
            Ok(json_response(200, &list, &[]))
        }
        Verb::Discovery => Err(ApiError::internal("unreachable: handled above")),
    }
}

/// The Table group version to answer with: only custom resources are printed server-side;
/// built-ins keep answering plain JSON (kubectl then prints NAME and AGE client-side).
fn table_wanted(ctx: &Ctx, def: &ResourceDef) -> Option<&'static str> {
    if !def.custom {
        return None;
    }
    crate::table::requested(&ctx.accept)
}

fn printer_columns(def: &ResourceDef, version: &str) -> Vec<crate::registry::PrinterColumn> {
    def.version(version).map(|v| v.printer_columns.clone()).unwrap_or_default()
}

fn propagation(ctx: &Ctx, opts: &Value) -> Propagation {
    let p = ctx
        .q("propagationPolicy")
        .map(str::to_string)
        .or_else(|| opts.get("propagationPolicy").and_then(Value::as_str).map(str::to_string))
        .or_else(|| {
            // Deprecated orphanDependents=true means Orphan.
            (ctx.q("orphanDependents") == Some("true") || opts.get("orphanDependents") == Some(&json!(true)))
                .then(|| "Orphan".to_string())
        });
    match p.as_deref() {
        Some("Orphan") => Propagation::Orphan,
        Some("Foreground") => Propagation::Foreground,
        _ => Propagation::Background,
    }
}

fn write_ctx(ctx: &Ctx, api_version: &str, scope: Scope) -> WriteCtx {
    WriteCtx {
        manager: Some(ctx.manager()),
        fields_precomputed: false,
        api_version: api_version.to_string(),
        scope,
        field_validation: FieldValidation::from_query(ctx.q("fieldValidation")),
        validate: true,
        warnings: Vec::new(),
    }
}

fn parse_body(ctx: &Ctx) -> ApiResult<Value> {
    // Protobuf and CBOR are not spoken here; client-go falls back to JSON on a 415.
    if ctx.content_type.contains("protobuf") || ctx.content_type.contains("cbor") {
        return Err(ApiError::unsupported_media_type(&ctx.content_type));
    }
    if ctx.content_type.contains("yaml") {
        return parse_apply_body(&ctx.body);
    }
    serde_json::from_slice(&ctx.body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
}

fn apply(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    def: &ResourceDef,
    api_version: &str,
    scope: Scope,
) -> ApiResult<Response> {
    let info = &ctx.info;
    let name = info.name.as_deref().unwrap_or("");
    let manager = ctx
        .q("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("PATCH requests with apply content type must specify a fieldManager")
        })?
        .to_string();
    let applied = parse_apply_body(&ctx.body)?;
    if let Some(n) = applied.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let mut guard = lock(&shared.store);
    let mut scratch = ctx.dry_run().then(|| guard.scratch_copy());
    let store: &mut Store = scratch.as_mut().unwrap_or(&mut guard);
    let ns = info.namespace.as_deref();
    let live = store.get(&def.group, &def.plural, ns, name).cloned();
    if live.is_none() && scope == Scope::Status {
        return Err(ApiError::not_found(&def.group, &def.plural, name));
    }
    let schema = store.schema_for(def, api_version);
    let mut base = json!({"apiVersion": api_version, "kind": def.kind, "metadata": {"name": name}});
    if let Some(n) = ns {
        base["metadata"]["namespace"] = json!(n);
    }
    let req = ApplyRequest {
        manager: &manager,
        force: ctx.q_bool("force"),
        api_version,
        scope,
        schema: schema.as_ref(),
    };
    let mut result = server_side_apply(live.as_ref(), base, &applied, &req)?;
    // The applied resourceVersion, if any, is a precondition like for update.
    match applied.pointer("/metadata/resourceVersion") {
        Some(rv) => result["metadata"]["resourceVersion"] = rv.clone(),
        None => {
            if let Some(m) = result.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        }
    }
    let mut wctx = write_ctx(ctx, api_version, scope);
    wctx.manager = Some(manager);
    wctx.fields_precomputed = true;
    let (code, obj) = match live {
        None => (201, store.create(def, ns, result, &mut wctx)?),
        Some(_) => (200, store.update(def, ns, name, result, &mut wctx)?),
    };
    let mut obj = obj;
    obj["apiVersion"] = json!(api_version);
    Ok(json_response(code, &obj, &wctx.warnings))
}

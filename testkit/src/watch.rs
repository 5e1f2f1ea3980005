//! Watch streams: newline-delimited JSON events over a chunked response.

use crate::errors::ApiError;
use crate::registry::{PrinterColumn, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Shared, lock};
use crate::store::{Event, EventType};
use crate::table::IncludeObject;
use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (the real server
/// sends them roughly every minute; tests want them sooner).
pub(crate) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct WatchRequest {
    pub def: ResourceDef,
    pub api_version: String,
    pub namespace: Option<String>,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Answer each event's object as a one-row Table (`as=Table` watches of custom resources).
    pub table: Option<TableWatch>,
}

pub(crate) struct TableWatch {
    pub api_version: &'static str,
    pub columns: Vec<PrinterColumn>,
    pub include: IncludeObject,
    /// Like the real server, only the first Table carries `columnDefinitions`.
    pub headers_sent: AtomicBool,
}

impl WatchRequest {
    fn selects(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns));
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The object as the watcher receives it: with the served apiVersion, or as a Table.
    fn versioned(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.api_version);
        let Some(t) = &self.table else { return o };
        let rv = o.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let mut table = crate::table::build(t.api_version, &t.columns, &[o], &rv, t.include);
        if t.headers_sent.swap(true, Ordering::Relaxed) {
            table["columnDefinitions"] = Value::Null;
        }
        table
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": self.def.kind, "apiVersion": self.api_version, "metadata": md})
    }

    /// The event this watcher sees for a store event, if any.
    fn translate(&self, ev: &Event) -> Option<(&'static str, Value)> {
        if ev.group != self.def.group
            || ev.resource != self.def.plural
            || self.namespace.as_deref().is_some_and(|ns| ns != ev.namespace)
        {
            return None;
        }
        let now = self.selects(&ev.object);
        let before = ev.old.as_ref().is_some_and(|o| self.selects(o));
        let kind = match (ev.kind, before, now) {
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Modified, false, false) => return None,
            (k, _, true) => k,
            (_, _, false) => return None,
        };
        Some((kind.as_str(), self.versioned(&ev.object)))
    }
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn streaming(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// A watch answered with one ERROR event, as the real server does for a too old
/// resourceVersion (HTTP 200, then the Status in the stream).
fn error_stream(err: &ApiError) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(line("ERROR", err.status_body()));
    streaming(rx)
}

pub(crate) fn serve(shared: Arc<Shared>, req: WatchRequest) -> Result<Response, ApiError> {
    let from = match req.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?,
        ),
    };
    let (initial, backlog, mut events, start_rv) = {
        let mut st = lock(&shared.store);
        let initial: Vec<Value> = if req.send_initial_events {
            st.list(&req.def.group, &req.def.plural, req.namespace.as_deref())
                .into_iter()
                .filter(|o| req.selects(o))
                .collect()
        } else {
            Vec::new()
        };
        let from = if req.send_initial_events { None } else { from };
        match st.subscribe(from) {
            Ok((backlog, rx)) => (initial, backlog, rx, st.rv),
            Err(e) => return Ok(error_stream(&e)),
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut shutdown = shared.shutdown.subscribe();
    tokio::spawn(async move {
        let mut last_rv = from.unwrap_or(start_rv).max(if req.send_initial_events { start_rv } else { 0 });
        for obj in initial {
            if tx.send(line("ADDED", req.versioned(&obj))).await.is_err() {
                return;
            }
        }
        if req.send_initial_events && tx.send(line("BOOKMARK", req.bookmark(start_rv, true))).await.is_err() {
            return;
        }
        for ev in backlog {
            last_rv = ev.rv;
            if let Some((kind, obj)) = req.translate(&ev)
                && tx.send(line(kind, obj)).await.is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        let deadline = tokio::time::sleep(req.timeout.unwrap_or(Duration::from_secs(86_400 * 365)));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        last_rv = ev.rv;
                        if let Some((kind, obj)) = req.translate(&ev)
                            && tx.send(line(kind, obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    // drop_watches() or shutdown dropped our sender.
                    None => return,
                },
                _ = ticker.tick(), if req.bookmarks => {
                    if tx.send(line("BOOKMARK", req.bookmark(last_rv, false))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(rx))
}

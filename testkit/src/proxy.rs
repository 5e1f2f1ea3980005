//! A fault-injecting proxy between the operator under test and the real
//! kube-apiserver. The operator talks plain HTTP to the proxy on loopback;
//! the proxy forwards every request over TLS (trusting the cluster's CA),
//! headers untouched, so the operator still authenticates with its own
//! service-account token and RBAC applies to it.
//!
//! It records every request (verb, resource, answer) and can:
//! - fail the next N requests matching a verb and resource with a status
//!   (409, 429 with `Retry-After`, 500, 503, …), or hang them;
//! - cut every open watch;
//! - black-hole the API for a while: open watches are cut, new requests get
//!   no answer until the outage ends, then their connections are dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::faults::{Fault, FaultKind, take_fault};
use crate::request_log::{RequestRecord, Verb, derive_verb, parse_path, parse_query};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;
struct Shared {
    tls: tokio_rustls::TlsConnector,
    /// host:port of the API server.
    upstream_addr: String,
    requests: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<Fault>>,
    /// Bumped to cut every open watch.
    cut: watch::Sender<u64>,
    /// Until when the API is black-holed.
    outage_until: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` in front of the API server of `upstream`
    /// (a kube config, usually the admin kubeconfig: only its URL and CA are used).
    pub async fn start(upstream: &kube::Config) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for der in upstream.root_cert.iter().flatten() {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .context("cluster CA certificate")?;
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let host = upstream.cluster_url.host().context("API server URL has no host")?;
        let port = upstream.cluster_url.port_u16().unwrap_or(443);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            upstream_addr: format!("{host}:{port}"),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            cut: watch::channel(0).0,
            outage_until: Mutex::new(None),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let s = s.clone();
                conns.spawn(async move {
                    // One upstream connection per downstream connection, as a
                    // transparent proxy would have: no pool shared between clients.
                    let upstream = Arc::new(tokio::sync::Mutex::new(None));
                    let service =
                        hyper::service::service_fn(move |req| handle(s.clone(), upstream.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { shared, addr, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails or hangs the next matching requests.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Cuts every open watch connection; the clients must re-watch.
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// Simulates an API outage for `duration`: open watches are cut, and
    /// requests made meanwhile get no answer; when the outage ends, their
    /// connections are dropped.
    pub fn black_hole(&self, duration: Duration) {
        *lock(&self.shared.outage_until) = Some(Instant::now() + duration);
        self.cut_watches();
    }

    /// Every request proxied since the start or the last [`Self::clear_requests`].
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Write requests (create, update, patch, apply, delete), Events excluded.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(|r| r.verb.is_write() && r.resource != "events").collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    if code == 429 || code == 503 {
        resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    resp
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed()
}

fn reason_for(code: u16) -> &'static str {
    match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

type UpstreamConn = Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>>;

/// Opens a TLS connection to the API server and an HTTP/1.1 session on it.
async fn connect(s: &Shared) -> anyhow::Result<SendRequest<Incoming>> {
    let tcp = tokio::net::TcpStream::connect(&s.upstream_addr).await?;
    let host = s.upstream_addr.rsplit_once(':').map_or(s.upstream_addr.as_str(), |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let tls = s.tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` on the downstream connection's upstream connection, opening
/// one when there is none or the last one closed.
async fn forward(
    s: &Shared,
    upstream: &UpstreamConn,
    req: Request<Incoming>,
    watch: bool,
) -> anyhow::Result<Response<Incoming>> {
    if watch {
        // A watch gets a connection of its own, so cutting it cuts nothing else.
        return Ok(connect(s).await?.send_request(req).await?);
    }
    let mut slot = upstream.lock().await;
    let reusable = match slot.take() {
        Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
        None => None,
    };
    let mut sender = match reusable {
        Some(sender) => sender,
        None => connect(s).await?,
    };
    let resp = sender.send_request(req);
    *slot = Some(sender);
    drop(slot);
    Ok(resp.await?)
}

async fn handle(
    s: Arc<Shared>,
    upstream: UpstreamConn,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type");
    let info = parse_path(&path);
    let params = parse_query(&query);
    let watch_param = params.iter().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = derive_verb(req.method().as_str(), &info, watch_param, content_type.as_deref().unwrap_or(""));
    let mut record = RequestRecord {
        method: req.method().to_string(),
        verb,
        path: path.clone(),
        query: query.clone(),
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        field_manager: params.iter().find(|(k, _)| k == "fieldManager").map(|(_, v)| v.clone()),
        content_type,
        user_agent: header("user-agent"),
        status: 0,
    };

    let outage = *lock(&s.outage_until);
    if let Some(until) = outage.filter(|u| *u > Instant::now()) {
        lock(&s.requests).push(record);
        drop(req);
        tokio::time::sleep_until(until.into()).await;
        // The connection is dropped without an answer, like a dead server.
        return Ok(aborted());
    }
    let fault = take_fault(&mut lock(&s.faults), verb, &info.resource, info.subresource.as_deref());
    match fault {
        Some(FaultKind::Status(code)) => {
            record.status = code;
            lock(&s.requests).push(record);
            return Ok(status_body(code, reason_for(code), &format!("injected fault: {code}")));
        }
        Some(FaultKind::Hang) => {
            lock(&s.requests).push(record);
            return std::future::pending().await;
        }
        None => {}
    }

    // Subscribed before the request goes out, so a cut that happens while the
    // watch is being opened still cuts it.
    let cut = s.cut.subscribe();
    let (mut parts, body) = req.into_parts();
    // Origin-form request line; Host names the API server.
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    if let Ok(host) = http::HeaderValue::from_str(&s.upstream_addr) {
        parts.headers.insert(http::header::HOST, host);
    }
    let resp = match forward(&s, &upstream, Request::from_parts(parts, body), verb == Verb::Watch).await {
        Ok(r) => r,
        Err(e) => {
            record.status = 502;
            lock(&s.requests).push(record);
            return Ok(status_body(502, "BadGateway", &format!("proxy: upstream: {e}")));
        }
    };
    record.status = resp.status().as_u16();
    lock(&s.requests).push(record);
    let (parts, body) = resp.into_parts();
    let body = if verb == Verb::Watch { cuttable(body, cut) } else { body.map_err(Into::into).boxed() };
    Ok(Response::from_parts(parts, body))
}

/// A response whose body fails at once: hyper then drops the connection
/// without a complete answer.
fn aborted() -> Response<ProxyBody> {
    let stream = futures::stream::once(async { Err::<Frame<Bytes>, BoxError>("black-holed".into()) });
    Response::new(BoxBody::new(StreamBody::new(stream)))
}

/// Streams `body` until the cut generation changes; then fails the body, so
/// hyper drops the connection mid-watch as a network cut would.
fn cuttable(mut body: Incoming, mut cut: watch::Receiver<u64>) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(f)) => { if tx.send(Ok(f)).await.is_err() { return; } }
                    Some(Err(e)) => { let _ = tx.send(Err(e.into())).await; return; }
                    None => return,
                },
                changed = cut.changed() => {
                    if changed.is_ok() {
                        let _ = tx.send(Err("watch cut by the test".into())).await;
                    }
                    return;
                }
            }
        }
    });
    BoxBody::new(StreamBody::new(tokio_stream_from(rx)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

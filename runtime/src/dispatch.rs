//! The front door of every request, before the interceptor chain: only gRPC gets in.
//!
//! | request | answer |
//! |---|---|
//! | `POST`, `content-type: application/grpc[+codec]`, HTTP/2 | the chain |
//! | the same over HTTP/1.1 | `505 HTTP Version Not Supported`: gRPC needs HTTP/2 |
//! | `POST`, `content-type: application/grpc-web[-text][+codec]`, gRPC-Web on | CORS and the gRPC-Web translation, then the chain |
//! | the same with an `Origin` that is not allowed | `403 Forbidden`, before any handler runs |
//! | the same with gRPC-Web off (`GRPC_WEB_ORIGINS` unset) | `415 Unsupported Media Type` |
//! | `OPTIONS` (CORS preflight), gRPC-Web on | answered by CORS, never by a handler |
//! | any other content type (a browser's `no-cors` `text/plain` POST, a form) | `415 Unsupported Media Type` |
//! | any other method | `405 Method Not Allowed` |
//!
//! A gRPC-Web request without `Origin` (buf curl, a proxy, a server-side client) is served: CORS
//! protects browsers, and browsers always send `Origin` on cross-origin and non-`GET` requests.
//! HTTP/1.1 itself is offered only when gRPC-Web is on (see `connection`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::WebOrigins;

/// Request headers browsers may send on gRPC-Web calls (CORS `Access-Control-Allow-Headers`).
pub const GRPC_WEB_ALLOW_HEADERS: [&str; 8] = grpc_contract::web::ALLOW_HEADERS;
/// Response headers browsers may read on gRPC-Web calls (CORS `Access-Control-Expose-Headers`).
pub const GRPC_WEB_EXPOSE_HEADERS: [&str; 4] = grpc_contract::web::EXPOSE_HEADERS;

/// How a request is handled.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Grpc,
    Web,
    Refuse(StatusCode, &'static str),
}

fn route<B>(req: &http::Request<B>, origins: &WebOrigins) -> Route {
    let web = origins.enabled();
    if req.method() == Method::OPTIONS {
        let preflight = req.headers().contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        return if web && preflight {
            Route::Web
        } else {
            Route::Refuse(StatusCode::METHOD_NOT_ALLOWED, "gRPC accepts POST only\n")
        };
    }
    if req.method() != Method::POST {
        return Route::Refuse(StatusCode::METHOD_NOT_ALLOWED, "gRPC accepts POST only\n");
    }
    let content_type =
        req.headers().get(http::header::CONTENT_TYPE).map(HeaderValue::as_bytes).unwrap_or(b"");
    match grpc_content_type(content_type) {
        Some(Protocol::Grpc) if req.version() == http::Version::HTTP_2 => Route::Grpc,
        Some(Protocol::Grpc) => Route::Refuse(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "gRPC needs HTTP/2; browsers use gRPC-Web\n",
        ),
        Some(Protocol::Web) if !web => {
            Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "this server does not serve gRPC-Web\n")
        }
        Some(Protocol::Web) => match req.headers().get(http::header::ORIGIN) {
            Some(origin) if !origins.allows(origin.as_bytes()) => {
                Route::Refuse(StatusCode::FORBIDDEN, "this origin may not call the server\n")
            }
            _ => Route::Web,
        },
        None => Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type must be application/grpc\n"),
    }
}

enum Protocol {
    Grpc,
    Web,
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc;…` are gRPC;
/// `application/grpc-web`, `application/grpc-web-text` (with the same suffixes) gRPC-Web.
fn grpc_content_type(value: &[u8]) -> Option<Protocol> {
    let rest = value.strip_prefix(b"application/grpc")?;
    let ends_type = |r: &[u8]| r.is_empty() || r[0] == b'+' || r[0] == b';';
    if ends_type(rest) {
        return Some(Protocol::Grpc);
    }
    let web = rest.strip_prefix(b"-web")?;
    let web = web.strip_prefix(b"-text").unwrap_or(web);
    ends_type(web).then_some(Protocol::Web)
}

/// The CORS layer for gRPC-Web: the allowed origins (wildcard patterns included), `POST`, the
/// contract's header lists, and a day of preflight caching.
pub(crate) fn cors_layer(origins: &WebOrigins) -> CorsLayer {
    let allow_origin = match origins {
        WebOrigins::Any => AllowOrigin::any(),
        WebOrigins::None => AllowOrigin::list(std::iter::empty::<HeaderValue>()),
        WebOrigins::List(_) => {
            let origins = Arc::new(origins.clone());
            AllowOrigin::predicate(move |origin: &HeaderValue, _| origins.allows(origin.as_bytes()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(GRPC_WEB_ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(GRPC_WEB_EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// Routes a request to the gRPC chain, the gRPC-Web stack, or a refusal.
#[derive(Clone)]
pub(crate) struct Dispatch<G, W> {
    pub(crate) grpc: G,
    pub(crate) web: W,
    pub(crate) origins: Arc<WebOrigins>,
}

type Refusal = Full<Bytes>;

fn refusal<B>(status: StatusCode, message: &'static str) -> http::Response<Either<B, Refusal>> {
    let mut response = http::Response::new(Either::Right(Full::new(Bytes::from_static(message.as_bytes()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

// hyper's `Service` (`call(&self)`) rather than tower's through `TowerToHyperService`, which
// clones the whole service for every request: here only the stack the request goes to is
// cloned, and `oneshot` still calls `poll_ready` first (your layers may rely on it).
impl<G, W, GB, WB> hyper::service::Service<http::Request<hyper::body::Incoming>> for Dispatch<G, W>
where
    G: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<GB>,
            Error = Infallible,
        > + Clone,
    W: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<WB>,
            Error = Infallible,
        > + Clone,
{
    type Response = http::Response<Either<GB, Either<WB, Refusal>>>;
    type Error = Infallible;
    type Future = DispatchFuture<
        tower::util::Oneshot<G, http::Request<hyper::body::Incoming>>,
        tower::util::Oneshot<W, http::Request<hyper::body::Incoming>>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt;
        match route(&req, &self.origins) {
            Route::Grpc => DispatchFuture::Grpc { future: self.grpc.clone().oneshot(req) },
            Route::Web => DispatchFuture::Web { future: self.web.clone().oneshot(req) },
            Route::Refuse(status, message) => {
                tracing::debug!(
                    status = status.as_u16(),
                    method = %req.method(),
                    version = ?req.version(),
                    "refused a request that is not gRPC"
                );
                // The refusal goes out once the request has ended (its body read and dropped,
                // at most REFUSAL_DRAIN_BYTES or REFUSAL_DRAIN_TIME), as a server that reads
                // requests does: answering a stream the client is still sending on would make
                // its next frames arrive on a closed stream.
                let body = req.into_body();
                DispatchFuture::Refused { drain: Box::pin(drain(body)), response: Some((status, message)) }
            }
        }
    }
}

/// Most of a refused request's body read before answering.
const REFUSAL_DRAIN_BYTES: usize = 64 << 10;
/// Longest wait for a refused request to end before answering.
const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(1);

async fn drain(mut body: hyper::body::Incoming) {
    use http_body_util::BodyExt;
    let read = async {
        let mut total = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, Bytes::len);
            if total > REFUSAL_DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, read).await;
}

pin_project! {
    #[project = DispatchProj]
    pub(crate) enum DispatchFuture<G, W> {
        Grpc { #[pin] future: G },
        Web { #[pin] future: W },
        Refused {
            drain: Pin<Box<dyn Future<Output = ()> + Send>>,
            response: Option<(StatusCode, &'static str)>,
        },
    }
}

impl<G, W, GB, WB> Future for DispatchFuture<G, W>
where
    G: Future<Output = Result<http::Response<GB>, Infallible>>,
    W: Future<Output = Result<http::Response<WB>, Infallible>>,
{
    type Output = Result<http::Response<Either<GB, Either<WB, Refusal>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DispatchProj::Grpc { future } => future.poll(cx).map_ok(|r| r.map(Either::Left)),
            DispatchProj::Web { future } => {
                future.poll(cx).map_ok(|r| r.map(|b| Either::Right(Either::Left(b))))
            }
            DispatchProj::Refused { drain, response } => {
                // Polled after completion (a caller bug): stay pending rather than resume the
                // finished drain, which would panic.
                if response.is_none() {
                    return Poll::Pending;
                }
                std::task::ready!(drain.as_mut().poll(cx));
                match response.take() {
                    Some((status, message)) => {
                        Poll::Ready(Ok(refusal::<WB>(status, message).map(Either::Right)))
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        method: Method,
        version: http::Version,
        content_type: &str,
        origin: Option<&str>,
    ) -> http::Request<()> {
        let preflight = method == Method::OPTIONS;
        let mut builder = http::Request::builder().method(method).version(version).uri("/a.B/C");
        if !content_type.is_empty() {
            builder = builder.header("content-type", content_type);
        }
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        if preflight {
            builder = builder.header("access-control-request-method", "POST");
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_grpc_over_http2_and_allowed_grpc_web_reach_the_chain() {
        const HTTP_11: http::Version = http::Version::HTTP_11;
        const HTTP_2: http::Version = http::Version::HTTP_2;
        let web = WebOrigins::List(vec!["https://*.example.com".into()]);
        let off = WebOrigins::None;
        type Case<'a> = (&'a WebOrigins, Method, http::Version, &'a str, Option<&'a str>, Route);
        let cases: &[Case] = &[
            (&off, Method::POST, HTTP_2, "application/grpc", None, Route::Grpc),
            (&off, Method::POST, HTTP_2, "application/grpc+proto", None, Route::Grpc),
            (&off, Method::POST, HTTP_2, "application/grpc;charset=x", None, Route::Grpc),
            (
                &off,
                Method::POST,
                HTTP_2,
                "application/grpcx",
                None,
                Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
            ),
            (
                &off,
                Method::POST,
                HTTP_2,
                "text/plain",
                None,
                Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
            ),
            (&off, Method::POST, HTTP_2, "", None, Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "")),
            (
                &off,
                Method::GET,
                HTTP_2,
                "application/grpc",
                None,
                Route::Refuse(StatusCode::METHOD_NOT_ALLOWED, ""),
            ),
            (&off, Method::OPTIONS, HTTP_11, "", None, Route::Refuse(StatusCode::METHOD_NOT_ALLOWED, "")),
            (
                &off,
                Method::POST,
                HTTP_11,
                "application/grpc",
                None,
                Route::Refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED, ""),
            ),
            (
                &off,
                Method::POST,
                HTTP_11,
                "application/grpc-web+proto",
                None,
                Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
            ),
            (&web, Method::POST, HTTP_11, "application/grpc-web+proto", None, Route::Web),
            (
                &web,
                Method::POST,
                HTTP_11,
                "application/grpc-web-text",
                Some("https://app.example.com"),
                Route::Web,
            ),
            (
                &web,
                Method::POST,
                HTTP_2,
                "application/grpc-web",
                Some("https://evil.io"),
                Route::Refuse(StatusCode::FORBIDDEN, ""),
            ),
            (
                &web,
                Method::POST,
                HTTP_11,
                "text/plain",
                Some("https://app.example.com"),
                Route::Refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
            ),
            (&web, Method::OPTIONS, HTTP_11, "", Some("https://evil.io"), Route::Web),
        ];
        for (origins, method, version, content_type, origin, expected) in cases {
            let got = route(&request(method.clone(), *version, content_type, *origin), origins);
            let same = match (&got, expected) {
                (Route::Refuse(a, _), Route::Refuse(b, _)) => a == b,
                (a, b) => a == b,
            };
            assert!(same, "{method} {version:?} {content_type:?} {origin:?} with {origins:?}: {got:?}");
        }
    }
}

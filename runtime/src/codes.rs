//! gRPC status codes as the metrics spell them, and the trailers-only error responses the layers send.

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::Code;

// Header names as constants: looking a header up by `&str` parses the name on every call.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The go-grpc-prometheus spelling of a status code (`OK`, `NotFound`, `DeadlineExceeded`, …).
///
/// These are Go's `codes.Code.String()` values, which existing dashboards and alert rules match
/// on; note `Canceled` with one `l`, as in Go.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Every status code, in numeric order; metrics pre-create one child per code.
pub const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// Reads `grpc-status` from a header map (response headers of a trailers-only response, or
/// trailers). `None` when absent; an unparsable value counts as `Unknown`, as gRPC clients do.
pub fn status_code_in(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS)?;
    let code =
        value.to_str().ok().and_then(|s| s.parse::<i32>().ok()).map(Code::from_i32).unwrap_or(Code::Unknown);
    Some(code)
}

/// The status carried by a body error: tonic boxes a `Status` into its body errors, anything
/// else (an I/O failure, a reset) is `Unknown`, as a gRPC client would see it.
pub fn code_of_error<E: std::fmt::Display + 'static>(err: &E) -> Code {
    if let Some(status) = (err as &dyn std::any::Any).downcast_ref::<tonic::Status>() {
        return status.code();
    }
    Code::Unknown
}

/// A trailers-only gRPC error response (HTTP 200, `grpc-status` in the headers), which is what a
/// layer that short-circuits a call sends.
pub fn error_response<B: Default>(status: tonic::Status) -> http::Response<B> {
    status.into_http()
}

/// Trailers ending a response stream early with `code` (used when a deadline or a size limit
/// cuts a stream that already sent headers).
pub fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS.clone(), HeaderValue::from(code as i32));
    if let Ok(value) = HeaderValue::from_str(&percent_encode_message(message)) {
        trailers.insert(GRPC_MESSAGE.clone(), value);
    }
    trailers
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): bytes outside printable ASCII and
/// `%` itself are escaped.
fn percent_encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_go_grpc_prometheus_spells_them() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::Cancelled), "Canceled");
        assert_eq!(code_label(Code::NotFound), "NotFound");
        assert_eq!(code_label(Code::DeadlineExceeded), "DeadlineExceeded");
        assert_eq!(ALL_CODES.iter().map(|c| *c as i32).collect::<Vec<_>>(), (0..17).collect::<Vec<_>>());
    }

    #[test]
    fn code_labels_are_the_contracts_in_numeric_order() {
        let labels: Vec<&str> = ALL_CODES.iter().map(|c| code_label(*c)).collect();
        assert_eq!(labels, grpc_contract::metrics::ALL_CODES);
    }

    #[test]
    fn grpc_status_is_read_from_headers_and_garbage_counts_as_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code_in(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(status_code_in(&headers), Some(Code::NotFound));
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(status_code_in(&headers), Some(Code::Unknown));
    }

    #[test]
    fn status_trailers_percent_encode_the_message() {
        let trailers = status_trailers(Code::DeadlineExceeded, "100% late\n");
        assert_eq!(trailers["grpc-status"], "4");
        assert_eq!(trailers["grpc-message"], "100%25 late%0A");
    }

    #[test]
    fn a_status_inside_a_body_error_gives_its_code() {
        assert_eq!(code_of_error(&tonic::Status::not_found("x")), Code::NotFound);
        assert_eq!(code_of_error(&std::io::Error::other("reset")), Code::Unknown);
    }
}

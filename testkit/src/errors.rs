//! API errors, answered as `metav1.Status` bodies like the real server does.

use serde_json::{Value, json};

/// An error the double answers with a `metav1.Status` body.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for the `Retry-After` header (429 / 503 answers).
    pub retry_after: Option<u64>,
}

/// One field error, rendered like apimachinery's `field.Error`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    /// e.g. `spec.replicas`
    pub field: String,
    /// Message without the field prefix, e.g. `Required value`.
    pub message: String,
}

impl FieldError {
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_string(), field: field.to_string(), message: message.into() }
    }
}

/// `group.resource` the way apimachinery prints a GroupResource (`deployments.apps`, `pods`).
pub(crate) fn group_resource(group: &str, resource: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self { code, reason: reason.to_string(), message: message.into(), details: None, retry_after: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", group_resource(group, resource)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", group_resource(group, resource)),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn conflict(group: &str, resource: &str, name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                group_resource(group, resource)
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 422 with one cause per field error, message formatted like `errors.NewInvalid`.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let rendered: Vec<String> =
            errors
                .iter()
                .map(|e| {
                    if e.field.is_empty() { e.message.clone() } else { format!("{}: {}", e.field, e.message) }
                })
                .collect();
        let joined =
            if rendered.len() == 1 { rendered.join("") } else { format!("[{}]", rendered.join(", ")) };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {joined}"))
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    /// An injected or synthetic failure for a bare status code, with the reason the real
    /// server would use for it.
    pub fn for_status(code: u16) -> Self {
        let (reason, message, retry) = match code {
            400 => ("BadRequest", "injected bad request", None),
            401 => ("Unauthorized", "Unauthorized", None),
            403 => ("Forbidden", "forbidden (injected)", None),
            404 => ("NotFound", "the server could not find the requested resource", None),
            409 => (
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                None,
            ),
            410 => ("Expired", "too old resource version", None),
            422 => ("Invalid", "injected invalid", None),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
                Some(1),
            ),
            500 => ("InternalError", "Internal error occurred: injected failure", None),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request", Some(1)),
            504 => ("Timeout", "the server was unable to return a response in the time allotted", None),
            _ => ("Unknown", "injected failure", None),
        };
        let mut err = Self::new(code, reason, message);
        err.retry_after = retry;
        if code == 429 || code == 503 || code == 500 {
            err.details = Some(json!({"retryAfterSeconds": 1}));
        }
        err
    }

    pub fn status_body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

//! Request classification (like the real server's RequestInfo) and the request log.

/// What a request does, derived the way kube-apiserver's RequestInfo derives its verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    /// PATCH with `application/apply-patch+yaml`.
    Apply,
    Delete,
    DeleteCollection,
    /// `/api`, `/apis`, `/version`, `/openapi/...` and other non-resource paths.
    Discovery,
}

impl Verb {
    /// create, update, patch, apply, delete, deletecollection.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Apply | Verb::Delete | Verb::DeleteCollection
        )
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub verb: Verb,
    pub path: String,
    pub query: String,
    /// API group, "" for core and for non-resource requests.
    pub group: String,
    /// Plural resource name, e.g. "deployments"; "" for non-resource requests.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field_manager: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// HTTP status answered; 0 for a request that got no answer (hung by a
    /// fault, or made during a black-holed outage).
    pub status: u16,
}

/// The parsed request path.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestInfo {
    pub is_resource: bool,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Legacy `/watch/` path prefix.
    pub watch_path: bool,
}

pub(crate) fn parse_path(path: &str) -> RequestInfo {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, mut rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest.to_vec()),
        ["apis", g, _version, rest @ ..] if !rest.is_empty() => (*g, rest.to_vec()),
        _ => return RequestInfo::default(),
    };
    let mut info = RequestInfo { is_resource: true, group: group.to_string(), ..Default::default() };
    if rest.first() == Some(&"watch") {
        info.watch_path = true;
        rest.remove(0);
    }
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        // `/namespaces/x/status` and `/namespaces/x/finalize` are subresources of the
        // namespace itself; anything else below a namespace is a namespaced resource.
        if rest.len() >= 3 && !matches!(rest[2], "status" | "finalize") {
            info.namespace = Some(rest[1].to_string());
            rest.drain(0..2);
        }
    }
    info.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
    info.name = rest.get(1).map(|s| s.to_string());
    info.subresource = rest.get(2).map(|s| s.to_string());
    info
}

pub(crate) fn derive_verb(method: &str, info: &RequestInfo, watch_param: bool, content_type: &str) -> Verb {
    if !info.is_resource {
        return Verb::Discovery;
    }
    match method {
        "GET" | "HEAD" => {
            if info.watch_path || watch_param {
                Verb::Watch
            } else if info.name.is_some() {
                Verb::Get
            } else {
                Verb::List
            }
        }
        "POST" => Verb::Create,
        "PUT" => Verb::Update,
        "PATCH" => {
            if content_type.starts_with("application/apply-patch") {
                Verb::Apply
            } else {
                Verb::Patch
            }
        }
        "DELETE" => {
            if info.name.is_some() {
                Verb::Delete
            } else {
                Verb::DeleteCollection
            }
        }
        _ => Verb::Discovery,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_request_info() {
        let i = parse_path("/apis/apps/v1/namespaces/ns/deployments/web/status");
        assert_eq!(
            (
                i.group.as_str(),
                i.resource.as_str(),
                i.namespace.as_deref(),
                i.name.as_deref(),
                i.subresource.as_deref()
            ),
            ("apps", "deployments", Some("ns"), Some("web"), Some("status"))
        );
        let n = parse_path("/api/v1/namespaces/foo");
        assert_eq!((n.resource.as_str(), n.name.as_deref(), n.namespace), ("namespaces", Some("foo"), None));
        assert_eq!(derive_verb("GET", &parse_path("/api/v1/watch/pods"), false, ""), Verb::Watch);
        assert_eq!(
            parse_query("labelSelector=a%3Db%2Cc+in+(x)"),
            vec![("labelSelector".to_string(), "a=b,c in (x)".to_string())]
        );
    }
}

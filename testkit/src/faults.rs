//! Fault injection: make the next matching requests fail or hang.

use crate::request_log::Verb;

/// Fails the next `times` requests that match every `Some` filter.
#[derive(Clone, Debug)]
pub struct Fault {
    pub verb: Option<Verb>,
    /// Plural resource name, e.g. "deployments".
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub kind: FaultKind,
    pub times: usize,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with this status and a matching metav1.Status body (429 and 503 carry
    /// `Retry-After: 1`).
    Status(u16),
    /// Never answer (until shutdown).
    Hang,
}

impl Fault {
    fn matches(&self, verb: Verb, resource: &str, subresource: Option<&str>) -> bool {
        self.verb.is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.subresource.as_deref().is_none_or(|s| Some(s) == subresource)
    }
}

/// Takes one use of the first matching fault.
pub(crate) fn take_fault(
    faults: &mut Vec<Fault>,
    verb: Verb,
    resource: &str,
    subresource: Option<&str>,
) -> Option<FaultKind> {
    let i = faults.iter().position(|f| f.times > 0 && f.matches(verb, resource, subresource))?;
    let kind = faults[i].kind.clone();
    faults[i].times -= 1;
    if faults[i].times == 0 {
        faults.remove(i);
    }
    Some(kind)
}

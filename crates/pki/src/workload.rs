//! Workload identities: each task's own X.509-SVID (SPIFFE's format), so two services
//! can authenticate each other with mutual TLS and authorize by service name. Its names
//! cannot pass for a node's or a user's.

use crate::{ClusterId, PkiError};

/// The OU of a workload certificate.
pub const WORKLOAD_OU: &str = "shoal-workload";
/// The stack segment of a task in no stack.
pub const NO_STACK: &str = "_";

/// The SPIFFE ID of a service's tasks: `spiffe://<cluster>/stack/<stack or _>/service/<name>`.
pub fn spiffe_id(cluster: &ClusterId, stack: Option<&str>, service: &str) -> String {
    format!(
        "spiffe://{cluster}/stack/{}/service/{service}",
        stack.filter(|s| !s.is_empty()).unwrap_or(NO_STACK)
    )
}

/// Checks a stack or service name for a SPIFFE ID's path: letters, digits, `.`, `-`
/// and `_` (SPIFFE's path segment characters).
pub fn check_segment(what: &str, s: &str) -> Result<(), PkiError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadCsr(format!(
            "{what} {s:?} cannot name a workload identity: use letters, digits, '.', '-' and '_'"
        )))
    }
}

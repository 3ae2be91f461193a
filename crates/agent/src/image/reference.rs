//! Image references and registry names: how `busybox` becomes `busybox:latest`, which
//! registry a reference lives in, and whether that registry is spoken to over plain HTTP.

use std::net::IpAddr;

use super::ImageError;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Normalizes a user-given reference for the index: validates it, drops Docker Hub's
/// implicit prefixes (`docker.io/library/busybox` → `busybox`) and adds `:latest` when
/// neither a tag nor a digest is given. Anything else, a registry host included, is kept
/// exactly as given (`10.0.0.1:5000/app:1`).
pub(crate) fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    let r = reference.trim();
    if r.is_empty() {
        return Err(ImageError::BadReference(
            "empty image reference: give NAME[:TAG], e.g. busybox:latest".into(),
        ));
    }
    if let Err(e) = r.parse::<oci_client::Reference>() {
        return Err(ImageError::BadReference(format!(
            "invalid image reference {r:?} ({e}): use NAME[:TAG] with a lowercase name, \
             e.g. busybox:latest or 10.0.0.1:5000/app:1"
        )));
    }
    let mut r = r.to_string();
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "registry-1.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
        "registry-1.docker.io/",
    ] {
        if let Some(rest) = r.strip_prefix(prefix) {
            r = rest.to_string();
            break;
        }
    }
    if !r.contains('@') && !has_tag(&r) {
        r.push_str(":latest");
    }
    Ok(r)
}

/// A tag is a `:` after the last `/` (a `:` before it belongs to a registry port).
fn has_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.contains(':')
}

/// The registry host of a reference, as used for credentials: `docker.io` for references
/// that name no registry (and for Docker Hub's other host names).
pub fn registry_of(reference: &str) -> String {
    let r = reference.trim();
    match r.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            canonical_registry(first)
        }
        _ => DEFAULT_REGISTRY.to_string(),
    }
}

/// Docker Hub has several host names; credentials are kept under one.
pub(crate) fn canonical_registry(registry: &str) -> String {
    // Docker's own key for the Hub is "https://index.docker.io/v1/": keep the host.
    let r = registry
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let r = r.split('/').next().unwrap_or(r);
    match r {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        other => other.to_string(),
    }
}

/// The host that serves the registry API for a registry name.
pub(crate) fn api_host(registry: &str) -> String {
    match canonical_registry(registry).as_str() {
        DEFAULT_REGISTRY => "registry-1.docker.io".to_string(),
        other => other.to_string(),
    }
}

/// The plain-HTTP rule: a registry named by `localhost` or by an IP address literal (with
/// or without a port: `127.0.0.1:5000`, `10.0.0.1:5000`, `[fd00::1]:5000`) is spoken to over
/// plain HTTP, as such registries are private ones on the cluster's network that rarely
/// have a certificate. Every registry named by a DNS name is spoken to over HTTPS, verified
/// against the system's roots, with no fallback. Credentials sent to a plain-HTTP registry
/// travel unencrypted: give a registry that leaves a trusted network a DNS name and TLS.
pub fn uses_plain_http(registry: &str) -> bool {
    let r = canonical_registry(registry);
    let host = if let Some(rest) = r.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match r.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => r.as_str(),
        }
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok()
}

/// `http` or `https` for a registry, by [`uses_plain_http`].
pub(crate) fn scheme_for(registry: &str) -> &'static str {
    if uses_plain_http(registry) {
        "http"
    } else {
        "https"
    }
}

/// Checks a `sha256:<hex>` digest and returns its hex part, which is safe to use as a
/// file name. Other algorithms are refused.
pub(crate) fn digest_hex(digest: &str, what: &str) -> Result<String, ImageError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        if digest.contains(':') {
            ImageError::Unsupported(format!(
                "{what}: digest {digest:?} does not use sha256, the only algorithm supported"
            ))
        } else {
            ImageError::Corrupt(format!(
                "{what}: {digest:?} is not a digest (expected sha256:<64 hex digits>)"
            ))
        }
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::Corrupt(format!(
            "{what}: {digest:?} is not a digest (expected sha256:<64 lowercase hex digits>)"
        )));
    }
    Ok(hex.to_string())
}

/// The architecture of this host, in Go's naming that images use.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_like_docker_does() {
        assert_eq!(normalize_reference("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_reference("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize_reference("docker.io/library/busybox").unwrap(),
            "busybox:latest"
        );
        assert_eq!(
            normalize_reference("10.0.0.1:5000/app:1").unwrap(),
            "10.0.0.1:5000/app:1"
        );
        assert_eq!(
            normalize_reference("10.0.0.1:5000/app").unwrap(),
            "10.0.0.1:5000/app:latest"
        );
        assert!(matches!(
            normalize_reference("Busybox"),
            Err(ImageError::BadReference(_))
        ));
        assert!(matches!(
            normalize_reference(""),
            Err(ImageError::BadReference(_))
        ));
    }

    #[test]
    fn registry_and_plain_http_rule() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("10.0.0.1:5000/app:1"), "10.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/app"), "ghcr.io");
        assert_eq!(registry_of("index.docker.io/library/busybox"), "docker.io");
        assert_eq!(
            canonical_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(canonical_registry("http://10.0.0.1:5000/"), "10.0.0.1:5000");
        assert!(uses_plain_http("127.0.0.1:5000"));
        assert!(uses_plain_http("10.0.0.1"));
        assert!(uses_plain_http("localhost:5000"));
        assert!(uses_plain_http("[::1]:5000"));
        assert!(!uses_plain_http("docker.io"));
        assert!(!uses_plain_http("registry.example.com:5000"));
    }

    #[test]
    fn digests_are_checked_before_becoming_file_names() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(digest_hex(&good, "x").unwrap(), "a".repeat(64));
        assert!(digest_hex("sha256:../../etc", "x").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(128)), "x").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64)), "x").is_err());
    }
}

//! Talking to OCI / Docker registries: `shoal image pull` (through `oci-client`) and
//! `shoal registry login`. Downloads are async; verifying, unpacking and recording the
//! image run on a blocking thread. Plain HTTP or HTTPS is chosen by
//! [`uses_plain_http`](super::uses_plain_http).

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::index::StoredImage;
use super::reference::{api_host, digest_hex, normalize_reference, registry_of, scheme_for};
use super::spec::{self, Descriptor, Manifest, Parsed, ParsedConfig};
use super::store::Txn;
use super::{Credentials, ImageError, ImageInfo, ImageStore};

const ACCEPT: &[&str] = &[
    spec::OCI_MANIFEST,
    spec::DOCKER_MANIFEST,
    spec::OCI_INDEX,
    spec::DOCKER_LIST,
];

fn oci_client(registry: &str) -> Result<Client, ImageError> {
    shoal_pki::install_crypto_provider();
    let config = ClientConfig {
        protocol: if scheme_for(registry) == "http" {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // Indexes are resolved here, to keep their raw bytes; see `resolve_manifest`.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| {
        ImageError::Registry(format!("cannot set up an HTTP client for {registry}: {e}"))
    })
}

fn http_client() -> Result<reqwest::Client, ImageError> {
    shoal_pki::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImageError::Registry(format!("cannot set up an HTTP client: {e}")))
}

/// The error text a registry (or its token service) sends, always starting with
/// "unauthorized" as Docker shows it: `unauthorized: authentication required`.
fn unauthorized_reason(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<E>,
        #[serde(default)]
        details: Option<String>,
    }
    let text = match serde_json::from_slice::<Envelope>(body) {
        Ok(env) if !env.errors.is_empty() => env
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code.to_lowercase(), e.message))
            .collect::<Vec<_>>()
            .join("; "),
        Ok(Envelope {
            details: Some(d), ..
        }) => d,
        _ => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect(),
    };
    if text.to_lowercase().starts_with("unauthorized") {
        text
    } else if text.is_empty() {
        "unauthorized".to_string()
    } else {
        format!("unauthorized: {text}")
    }
}

/// Asks the registry why it refuses (oci-client drops the body of a 401).
async fn probe_reason(registry: &str, creds: Option<&Credentials>) -> String {
    let url = format!("{}://{}/v2/", scheme_for(registry), api_host(registry));
    let Ok(client) = http_client() else {
        return "unauthorized".into();
    };
    let mut req = client.get(&url);
    if let Some(c) = creds {
        req = req.basic_auth(&c.username, Some(&c.password));
    }
    match req.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => match r.bytes().await {
            Ok(b) => unauthorized_reason(&b),
            Err(_) => "unauthorized".into(),
        },
        // /v2/ lets us in: the repository itself is what is refused.
        _ => "unauthorized: access to the repository is denied".into(),
    }
}

fn unauthorized(
    registry: &str,
    what: &str,
    reason: &str,
    creds: Option<&Credentials>,
) -> ImageError {
    let hint = match creds {
        None => format!("log in first with 'shoal registry login {registry}'"),
        Some(c) => format!(
            "check the username ({}) and password, then 'shoal registry login {registry}' again",
            c.username
        ),
    };
    ImageError::Unauthorized(format!(
        "registry {registry} refused access to {what}: {reason}: {hint}"
    ))
}

async fn map_error(
    e: OciDistributionError,
    registry: &str,
    what: &str,
    creds: Option<&Credentials>,
) -> ImageError {
    match e {
        OciDistributionError::UnauthorizedError { .. } => {
            let reason = probe_reason(registry, creds).await;
            unauthorized(registry, what, &reason, creds)
        }
        OciDistributionError::AuthenticationFailure(body) => {
            unauthorized(registry, what, &unauthorized_reason(body.as_bytes()), creds)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code).to_lowercase()
                    } else {
                        e.message.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(registry, what, &format!("unauthorized: {text}"), creds)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound(format!(
                    "{what} does not exist in registry {registry} ({text}): check the name and tag"
                ))
            } else {
                ImageError::Registry(format!("registry {registry} refused {what}: {text}"))
            }
        }
        OciDistributionError::ImageManifestNotFoundError(m) => ImageError::NotFound(format!(
            "{what} does not exist in registry {registry} ({m}): check the name and tag"
        )),
        OciDistributionError::DigestError(d) => ImageError::Corrupt(format!(
            "{what}: content from registry {registry} does not match its digest ({d}); \
             nothing was stored, pull again"
        )),
        OciDistributionError::RequestError(r) => {
            let mut msg = r.to_string();
            let mut src = std::error::Error::source(&r);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            ImageError::Registry(format!(
                "cannot reach registry {registry} over {} for {what}: {msg}",
                scheme_for(registry)
            ))
        }
        other => ImageError::Registry(format!("pulling {what} from registry {registry}: {other}")),
    }
}

/// What the download phase hands to the blocking phase.
struct Downloaded {
    reference: String,
    manifest_digest: String,
    manifest_bytes: Vec<u8>,
    config_digest: String,
    config_bytes: Vec<u8>,
    parsed: ParsedConfig,
    /// Layer blob digests, and where the download went (None: already stored).
    layers: Vec<(String, Option<PathBuf>)>,
    /// Owns the downloaded files until they are stored.
    _staging: tempfile::TempDir,
}

impl ImageStore {
    /// `shoal image pull REF`. See the module docs for the plain-HTTP rule.
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<ImageInfo, ImageError> {
        let normalized = normalize_reference(reference)?;
        let registry = registry_of(&normalized);
        let oref: Reference = normalized.parse().map_err(|e| {
            ImageError::BadReference(format!("invalid image reference {normalized:?}: {e}"))
        })?;
        let client = oci_client(&registry)?;
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let what = normalized.as_str();
        let fail = |e| map_error(e, &registry, what, creds);

        let (manifest_bytes, manifest_digest, manifest) =
            match resolve_manifest(&client, &oref, &auth, what).await {
                Ok(m) => m,
                Err(PullError::Oci(e)) => return Err(fail(e).await),
                Err(PullError::Image(e)) => return Err(e),
            };
        let config_digest = manifest.config.digest.clone();
        digest_hex(&config_digest, what)?;
        let mut config_bytes = Vec::new();
        if let Err(e) = client
            .pull_blob(&oref, config_digest.as_str(), &mut config_bytes)
            .await
        {
            return Err(fail(e).await);
        }
        let parsed = spec::parse_config(&config_bytes, &format!("config of {what}"))?;
        if parsed.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Corrupt(format!(
                "{what}: its config lists {} layers but its manifest has {}",
                parsed.diff_ids.len(),
                manifest.layers.len()
            )));
        }

        let staging = self.inner.staging("pull-")?;
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            let hex = digest_hex(&layer.digest, &format!("layer of {what}"))?;
            let stored = self.inner.blob_path(&hex);
            if tokio::fs::try_exists(&stored).await.unwrap_or(false) {
                layers.push((layer.digest.clone(), None));
                continue;
            }
            let path = staging.path().join(&hex);
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(ImageError::io_at("creating", &path))?;
            if let Err(e) = client
                .pull_blob(&oref, layer.digest.as_str(), &mut file)
                .await
            {
                return Err(fail(e).await);
            }
            file.sync_all()
                .await
                .map_err(ImageError::io_at("syncing", &path))?;
            layers.push((layer.digest.clone(), Some(path)));
        }

        let downloaded = Downloaded {
            reference: normalized.clone(),
            manifest_digest,
            manifest_bytes,
            config_digest,
            config_bytes,
            parsed,
            layers,
            _staging: staging,
        };
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let txn = Txn::begin(&store.inner)?;
            record_pull(txn, downloaded)
        })
        .await
        .map_err(|e| ImageError::Registry(format!("storing {what} failed: {e}")))?
    }
}

enum PullError {
    Oci(OciDistributionError),
    Image(ImageError),
}

impl From<OciDistributionError> for PullError {
    fn from(e: OciDistributionError) -> Self {
        PullError::Oci(e)
    }
}

impl From<ImageError> for PullError {
    fn from(e: ImageError) -> Self {
        PullError::Image(e)
    }
}

/// The image manifest for this host: the reference's own, or its index's entry for
/// linux and this architecture.
async fn resolve_manifest(
    client: &Client,
    oref: &Reference,
    auth: &RegistryAuth,
    what: &str,
) -> Result<(Vec<u8>, String, Manifest), PullError> {
    let (bytes, digest) = client.pull_manifest_raw(oref, auth, ACCEPT).await?;
    let chosen: Descriptor = match spec::parse_manifest(&bytes, what)? {
        Parsed::Manifest(m) => return Ok((bytes.to_vec(), digest, m)),
        Parsed::Index(entries) => spec::choose_platform(&entries, what)?.clone(),
    };
    digest_hex(&chosen.digest, what)?;
    let by_digest = Reference::with_digest(
        oref.registry().to_string(),
        oref.repository().to_string(),
        chosen.digest.clone(),
    );
    let (bytes, digest) = client.pull_manifest_raw(&by_digest, auth, ACCEPT).await?;
    if digest != chosen.digest {
        return Err(ImageError::Corrupt(format!(
            "{what}: the registry served manifest {digest} for {}; nothing was stored",
            chosen.digest
        ))
        .into());
    }
    match spec::parse_manifest(&bytes, what)? {
        Parsed::Manifest(m) => Ok((bytes.to_vec(), digest, m)),
        Parsed::Index(_) => Err(ImageError::Unsupported(format!(
            "{what}: an index inside an index; not supported"
        ))
        .into()),
    }
}

/// The blocking half of a pull: store the blobs, unpack the layers, record the image.
fn record_pull(mut txn: Txn, d: Downloaded) -> Result<ImageInfo, ImageError> {
    let what = d.reference.as_str();
    let (manifest_digest, _) = txn.put_blob_bytes(
        &d.manifest_bytes,
        Some(&d.manifest_digest),
        &format!("manifest of {what}"),
    )?;
    let (config_digest, _) = txn.put_blob_bytes(
        &d.config_bytes,
        Some(&d.config_digest),
        &format!("config of {what}"),
    )?;
    let mut blobs = vec![config_digest.clone(), manifest_digest];
    let mut size = 0;
    for ((digest, file), diff) in d.layers.iter().zip(&d.parsed.diff_ids) {
        let layer_what = format!("layer {digest} of {what}");
        let n = match file {
            Some(path) => txn.put_blob_file(path, Some(digest), &layer_what)?.1,
            None => txn.hold_blob(digest, &layer_what)?,
        };
        let blob = txn.blob_path(digest)?;
        txn.ensure_layer(&blob, Some(diff), &layer_what)?;
        blobs.push(digest.clone());
        size += n;
    }
    let info = ImageInfo {
        id: config_digest,
        references: vec![d.reference.clone()],
        layers: d.parsed.diff_ids,
        config: d.parsed.config,
        size,
        created_unix: d.parsed.created_unix,
    };
    let mut infos = txn.commit(vec![StoredImage { info, blobs }])?;
    infos.pop().ok_or_else(|| {
        ImageError::NotFound(format!("the image pulled as {what} vanished: pull again"))
    })
}

/// Verifies credentials against a registry: `GET /v2/` with basic auth, and for
/// registries that hand out bearer tokens (Docker Hub), a token request with them.
pub async fn login(registry: &str, c: &Credentials) -> Result<(), ImageError> {
    let scheme = scheme_for(registry);
    let url = format!("{scheme}://{}/v2/", api_host(registry));
    let client = http_client()?;
    let unreachable = |e: reqwest::Error| {
        ImageError::Registry(format!("cannot reach registry {registry} at {url}: {e}"))
    };
    let resp = client
        .get(&url)
        .basic_auth(&c.username, Some(&c.password))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(ImageError::Registry(format!(
            "registry {registry} answered {status} at {url}: is it an OCI registry?"
        )));
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.map_err(unreachable)?;
    let Some(bearer) = challenge.as_deref().and_then(parse_bearer) else {
        return Err(unauthorized(
            registry,
            "its API",
            &unauthorized_reason(&body),
            Some(c),
        ));
    };
    let mut query = vec![("account", c.username.clone())];
    if let Some(service) = bearer.service {
        query.push(("service", service));
    }
    let resp = client
        .get(&bearer.realm)
        .query(&query)
        .basic_auth(&c.username, Some(&c.password))
        .send()
        .await
        .map_err(|e| {
            ImageError::Registry(format!(
                "cannot reach the token service {} of registry {registry}: {e}",
                bearer.realm
            ))
        })?;
    if resp.status().is_success() {
        return Ok(());
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(unauthorized(
        registry,
        "its API",
        &unauthorized_reason(&body),
        Some(c),
    ))
}

struct Bearer {
    realm: String,
    service: Option<String>,
}

/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io"` (quoted
/// values may hold commas: `scope="repository:x:pull,push"`).
fn parse_bearer(header: &str) -> Option<Bearer> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut params = Vec::new();
    let (mut key, mut val, mut in_key, mut quoted) = (String::new(), String::new(), true, false);
    for ch in rest.chars().chain(std::iter::once(',')) {
        match ch {
            '"' => quoted = !quoted,
            '=' if in_key && !quoted => in_key = false,
            ',' if !quoted => {
                params.push((key.trim().to_string(), std::mem::take(&mut val)));
                key.clear();
                in_key = true;
            }
            c if in_key => key.push(c),
            c => val.push(c),
        }
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    };
    Some(Bearer {
        realm: get("realm")?,
        service: get("service"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_like_dockers() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(
            unauthorized_reason(body),
            "unauthorized: authentication required"
        );
        assert_eq!(
            unauthorized_reason(br#"{"details":"incorrect username or password"}"#),
            "unauthorized: incorrect username or password"
        );
        assert_eq!(unauthorized_reason(b""), "unauthorized");
    }

    #[test]
    fn bearer_challenges_parse() {
        let b = parse_bearer(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        )
        .unwrap();
        assert_eq!(b.realm, "https://auth.docker.io/token");
        assert_eq!(b.service.as_deref(), Some("registry.docker.io"));
        assert!(parse_bearer(r#"Basic realm="x""#).is_none());
        let b = parse_bearer(
            r#"Bearer realm="https://r/t",scope="repository:a:pull,push",service="s""#,
        )
        .unwrap();
        assert_eq!(b.service.as_deref(), Some("s"));
    }
}

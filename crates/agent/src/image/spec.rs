//! The few fields of OCI / Docker image JSON this store reads: manifests, indexes, image
//! configs and `docker save`'s manifest.json. Lenient on purpose: unknown fields are
//! ignored and Docker's `null`s accepted, so that any image a registry serves loads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{host_arch, ImageConfig, ImageError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub digest: String,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest or an index: which one is told by `manifests` vs `layers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestOrIndex {
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// An image manifest: a config and layers, lowest first.
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest-or-index document turned out to be.
pub(crate) enum Parsed {
    Manifest(Manifest),
    Index(Vec<Descriptor>),
}

pub(crate) fn parse_manifest(bytes: &[u8], what: &str) -> Result<Parsed, ImageError> {
    let m: ManifestOrIndex = serde_json::from_slice(bytes).map_err(|e| {
        ImageError::Corrupt(format!("{what}: not a valid manifest or index JSON: {e}"))
    })?;
    if m.schema_version == Some(1) {
        return Err(ImageError::Unsupported(format!(
            "{what}: Docker schema 1 manifests are not supported: push the image again \
             with a current Docker or any OCI tool"
        )));
    }
    if let Some(manifests) = m.manifests {
        return Ok(Parsed::Index(manifests));
    }
    match (m.config, m.layers) {
        (Some(config), Some(layers)) => Ok(Parsed::Manifest(Manifest { config, layers })),
        _ => Err(ImageError::Corrupt(format!(
            "{what}: a manifest of type {:?} without config or layers",
            m.media_type.unwrap_or_default()
        ))),
    }
}

/// Picks the entry of an index for this host: linux and the host's architecture.
pub(crate) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    what: &str,
) -> Result<&'a Descriptor, ImageError> {
    let arch = host_arch();
    let matching: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .collect();
    // arm64 images may say variant v8 or nothing; prefer v8 (Docker does the same).
    let best = matching
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.variant.as_deref())
                .is_some_and(|v| arch == "arm64" && v == "v8")
        })
        .or(matching.first());
    best.copied().ok_or_else(|| {
        let offered: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        ImageError::NotFound(format!(
            "{what} has no image for linux/{arch} (it offers: {}): use an image built for \
             this host's platform",
            if offered.is_empty() {
                "nothing with a platform".to_string()
            } else {
                offered.join(", ")
            }
        ))
    })
}

/// An image config (`application/vnd.oci.image.config.v1+json` and Docker's).
#[derive(Debug, Default, Deserialize, Serialize)]
pub(crate) struct ImageConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub(crate) struct RunConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<super::ImageHealthcheck>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// What the store keeps of an image config.
pub(crate) struct ParsedConfig {
    pub config: ImageConfig,
    pub diff_ids: Vec<String>,
    pub created_unix: i64,
}

pub(crate) fn parse_config(bytes: &[u8], what: &str) -> Result<ParsedConfig, ImageError> {
    let c: ImageConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Corrupt(format!("{what}: not a valid image config: {e}")))?;
    if !c.os.is_empty() && c.os != "linux" {
        return Err(ImageError::Unsupported(format!(
            "{what}: an image for {:?}; only linux images run here",
            c.os
        )));
    }
    let diff_ids = c.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    for d in &diff_ids {
        super::reference::digest_hex(d, what)?;
    }
    let run = c.config.unwrap_or_default();
    let created_unix = c
        .created
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp())
        .unwrap_or(0);
    Ok(ParsedConfig {
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            healthcheck: run.healthcheck,
            stop_signal: run.stop_signal.unwrap_or_default(),
        },
        diff_ids,
        created_unix,
    })
}

/// The config of an imported rootfs: one layer, nothing to run by default.
pub(crate) fn rootfs_config(diff_id: &str) -> Result<Vec<u8>, ImageError> {
    let c = ImageConfigFile {
        created: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        architecture: host_arch().to_string(),
        os: "linux".into(),
        config: Some(RunConfig::default()),
        rootfs: Some(RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.to_string()],
        }),
    };
    serde_json::to_vec(&c)
        .map_err(|e| ImageError::Corrupt(format!("encoding an image config: {e}")))
}

/// One entry of a `docker save` archive's manifest.json.
#[derive(Debug, Deserialize)]
pub(crate) struct DockerSaveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// An OCI layout's index.json.
#[derive(Debug, Deserialize)]
pub(crate) struct OciIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_healthcheck_is_kept_from_its_config() {
        let cfg = br#"{"os":"linux","config":{"Cmd":["httpd"],"Healthcheck":{"Test":["CMD-SHELL","wget -q -O- localhost"],"Interval":2000000000,"Retries":4}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let p = parse_config(cfg, "test").unwrap();
        let h = p.config.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -q -O- localhost"]);
        assert_eq!(h.interval, 2_000_000_000);
        assert_eq!(h.retries, 4);
        // An image stored before health checks were kept still reads.
        let old: super::super::ImageConfig = serde_json::from_str(
            r#"{"env":[],"entrypoint":[],"cmd":[],"working_dir":"","user":""}"#,
        )
        .unwrap();
        assert_eq!(old.healthcheck, None);
    }
}

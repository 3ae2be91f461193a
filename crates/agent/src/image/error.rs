//! What can go wrong with images. Every message names the offending thing (a file, a
//! reference, a digest) and says what to do about it.

use std::path::Path;

/// An image store failure.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image, reference or file.
    #[error("{0}")]
    NotFound(String),
    /// Damaged or malformed input (archive, tar, manifest, digest mismatch) or a damaged
    /// store file. Nothing was stored.
    #[error("{0}")]
    Corrupt(String),
    /// The registry refused the credentials (or their absence). The message carries the
    /// registry's reason, e.g. "unauthorized: authentication required".
    #[error("{0}")]
    Unauthorized(String),
    /// The registry could not be reached or answered something unusable.
    #[error("{0}")]
    Registry(String),
    /// A malformed or ambiguous image reference.
    #[error("{0}")]
    BadReference(String),
    /// Valid input this store does not handle (zstd layers, schema 1 manifests, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// A closure for `map_err` that wraps an io::Error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Io { what, source }
    }

    /// An io::Error on a named path.
    pub(crate) fn io_at(doing: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
        Self::io(format!("{doing} {}", path.display()))
    }
}

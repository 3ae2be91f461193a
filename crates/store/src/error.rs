//! The store's error type: what callers of [`crate::Store`] can see go wrong.
//!
//! No openraft or redb type leaks through here: consensus and disk errors are
//! flattened into messages that say what happened and what to do.

use std::path::Path;
use std::time::Duration;

use crate::batch::Expect;

/// Everything that can go wrong in the store.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// An optimistic-concurrency check of a batch failed; nothing of the batch
    /// was written.
    #[error(
        "write conflict on {table}/{id}: expected {expected}, found {}; \
         nothing of the batch was written, re-read the object and retry",
        describe_actual(*actual)
    )]
    Conflict {
        table: String,
        id: String,
        expected: Expect,
        /// The version found, `None` if the object does not exist.
        actual: Option<u64>,
    },

    /// This member is not the Raft leader, so it cannot commit.
    #[error("this manager is not the Raft leader; retry on the leader")]
    NotLeader,

    /// Too few managers can be reached for a majority: writes cannot commit.
    #[error("no leader: {reachable} of {voters} managers reachable, {} needed", voters / 2 + 1)]
    NoQuorum { reachable: usize, voters: usize },

    /// `bootstrap` was called on a store that already has a Raft membership.
    #[error(
        "the store is already initialized (it is part of a cluster); do not bootstrap it again"
    )]
    AlreadyInitialized,

    /// No leader was elected within the time asked for.
    #[error("no Raft leader was elected within {0:?}; is the store bootstrapped?")]
    LeaderTimeout(Duration),

    /// The on-disk state cannot be trusted; the message names the file and
    /// what to do.
    #[error("{0}")]
    Corrupt(String),

    /// Another process (or another `Store` in this process) holds the file.
    #[error(
        "state database {0} is already open by another process; \
         stop the other shoal process using this state directory"
    )]
    Locked(String),

    /// The store's data key is wrapped by the cluster's unlock key (autolock), and
    /// none was given.
    #[error("this manager is locked: its store is encrypted with the cluster's unlock key (autolock is on); run 'shoal unlock' and enter the key")]
    NeedsUnlock,

    /// The unlock key given does not unwrap the store's data key.
    #[error("invalid unlock key: it does not unlock this manager's store; enter the key 'shoal unlock-key' prints on an unlocked manager (after a rotation this manager missed, the key before it)")]
    WrongUnlockKey,

    /// The store's directory is (nearly) full: the write was refused, nothing of it
    /// was stored.
    #[error("cannot store the change: {dir} has only {} free ({} needed); nothing was written. Free space there and try again: this manager takes writes again as soon as there is room", human_bytes(*free), human_bytes(*need))]
    NoSpace { dir: String, free: u64, need: u64 },

    /// An I/O error outside the database (e.g. creating the state directory).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The embedded database failed for a reason other than corruption.
    #[error("state database error: {0}")]
    Database(String),

    /// Consensus failed.
    #[error("raft: {0}")]
    Raft(String),

    /// A stored object did not decode as the type asked for.
    #[error("object {table}/{id} does not decode as the requested type: {message}")]
    Decode {
        table: String,
        id: String,
        message: String,
    },

    /// The store was shut down.
    #[error("the store is shut down")]
    Shutdown,
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        None => "no object".to_string(),
        Some(v) => format!("version {v}"),
    }
}

/// What to tell an operator when the state file cannot be read.
fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

pub(crate) fn corrupt(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "state database {} is corrupt or not a shoal store ({detail}); this manager cannot \
         start from it, and the file is kept as it is. If other managers still run: \
         'shoal leave --force' here, then join this node again with a manager token (it \
         copies the state from them). If this was the last manager: 'shoal leave --force', \
         then 'shoal init --restore FILE' with a backup made by 'shoal backup'",
        path.display()
    ))
}

/// Maps a redb error, naming `path` where the file itself is at fault.
pub(crate) fn db_error(path: &Path, err: impl Into<redb::Error>) -> StoreError {
    use redb::Error as E;
    match err.into() {
        E::Corrupted(msg) => corrupt(path, msg),
        E::UpgradeRequired(v) => corrupt(path, format!("old redb file format {v}")),
        e @ (E::TableTypeMismatch { .. }
        | E::TypeDefinitionChanged { .. }
        | E::TableIsMultimap(_)
        | E::TableIsNotMultimap(_)) => corrupt(path, e),
        E::DatabaseAlreadyOpen => StoreError::Locked(path.display().to_string()),
        E::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            corrupt(path, e)
        }
        E::Io(source) => StoreError::Io {
            context: format!("state database {}", path.display()),
            source,
        },
        other => StoreError::Database(format!("{}: {other}", path.display())),
    }
}

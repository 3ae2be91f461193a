//! What callers write: objects, optimistic checks, and batches of operations.
//!
//! A [`Batch`] becomes one Raft log entry ([`Request`]); the state machine
//! answers it with a [`Response`]. The wire types are crate-private so that the
//! log format can change without touching callers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Implemented by each object type stored (prost messages defined elsewhere).
pub trait Object: prost::Message + Default + Clone + Send + Sync + 'static {
    /// The table the objects of this type live in, e.g. `"nodes"`.
    const TABLE: &'static str;
    /// The object's id, unique within its table.
    fn id(&self) -> &str;
}

/// An object with the version of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The Raft log index of the last write of this object.
    pub version: u64,
    pub value: T,
}

/// The optimistic-concurrency check of one operation of a batch.
///
/// Checks run in the order of the batch, against the state left by the
/// operations before them in the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// No check.
    Any,
    /// The object must not exist.
    Absent,
    /// The object must exist at exactly this version.
    Version(u64),
}

impl Expect {
    /// Whether an object at `actual` (`None`: absent) passes the check.
    pub(crate) fn accepts(self, actual: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => actual.is_none(),
            Expect::Version(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any version"),
            Expect::Absent => f.write_str("no object"),
            Expect::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// Operations committed together, atomically, as one Raft entry.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    /// Writes `obj` (in `T::TABLE` under `obj.id()`).
    pub fn put<T: Object>(&mut self, obj: &T, expect: Expect) -> &mut Self {
        self.ops.push(Op {
            table: T::TABLE.to_string(),
            id: obj.id().to_string(),
            expect,
            action: Action::Put(obj.encode_to_vec()),
        });
        self
    }

    /// Writes an object as raw bytes (restoring objects exported with
    /// [`crate::Store::export`]).
    pub fn put_raw(&mut self, table: &str, id: &str, data: Vec<u8>) -> &mut Self {
        self.ops.push(Op {
            table: table.to_string(),
            id: id.to_string(),
            expect: Expect::Any,
            action: Action::Put(data),
        });
        self
    }

    /// Deletes the object `id` of type `T`. Deleting an absent object with
    /// [`Expect::Any`] is a no-op.
    pub fn delete<T: Object>(&mut self, id: &str, expect: Expect) -> &mut Self {
        self.ops.push(Op {
            table: T::TABLE.to_string(),
            id: id.to_string(),
            expect,
            action: Action::Delete,
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Appends the operations of `other`, keeping their order.
    pub fn extend(&mut self, other: Batch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }
}

/// The Raft log payload of one committed batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) ops: Vec<Op>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Op {
    pub(crate) table: String,
    pub(crate) id: String,
    pub(crate) expect: Expect,
    pub(crate) action: Action,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Action {
    Put(#[serde(with = "crate::hex")] Vec<u8>),
    Delete,
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The entry was applied (or had nothing to apply: blank, membership).
    Applied,
    /// A check failed; nothing of the batch was written.
    Conflict {
        table: String,
        id: String,
        expected: Expect,
        actual: Option<u64>,
    },
}

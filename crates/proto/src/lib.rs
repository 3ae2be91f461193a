//! The wire: gRPC services and messages, and the object model the store keeps.
//!
//! Generated from `proto/shoal/*.proto`. Services: `ca` (join), `dispatcher` (every
//! node's link to the managers), `control` (the CLI's API on managers) and `local` (the
//! node's own admin API on its unix socket). [`caps`] is the capability vocabulary that
//! `ContainerSpec` carries, shared by the CLI, the manager and the agent; [`options`] the
//! vocabulary of its process options (sysctls, ulimits, signals, hosts, resolver).

#![allow(clippy::all, missing_docs)]

pub mod caps;
pub mod codec;

pub mod objects {
    tonic::include_proto!("shoal.objects");
}
pub mod ca {
    tonic::include_proto!("shoal.ca");
}
pub mod dispatcher {
    tonic::include_proto!("shoal.dispatcher");
}
pub mod control {
    tonic::include_proto!("shoal.control");
}
pub mod local {
    tonic::include_proto!("shoal.local");
}
pub mod raft {
    tonic::include_proto!("shoal.raft");
}

pub mod limits;
pub mod options;

/// Every message and service of shoal's protocol, as an encoded `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shoal.fds"));

/// The network a service names to keep its tasks in their node's own network namespace
/// (the manager allocates nothing for it; the agent attaches nothing).
pub const HOST_NETWORK: &str = "host";

/// The label that puts an object (service, network, secret, config, one-off task) in a
/// stack: `stack deploy` sets it on everything it makes, and a user's scope is a list
/// of stacks by this label.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// An error and the chain of its causes, for a message (each cause once).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A secret's data in a Debug line (a log, a panic message): its size, never its bytes.
impl std::fmt::Debug for objects::SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("version", &self.version)
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .field("created_at_unix", &self.created_at_unix)
            .field("size", &self.size)
            .field("digest", &self.digest)
            .finish()
    }
}

impl std::fmt::Debug for dispatcher::SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("key", &self.key)
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_data_never_shows_in_debug_output() {
        let v = super::objects::SecretVersion {
            version: 2,
            data: b"hunter2-marker".to_vec(),
            ..Default::default()
        };
        let d = super::dispatcher::SecretData {
            key: None,
            data: b"hunter2-marker".to_vec(),
        };
        for text in [format!("{v:?}"), format!("{d:?}"), format!("{:?}", vec![v])] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("14 bytes redacted"), "{text}");
        }
    }
}

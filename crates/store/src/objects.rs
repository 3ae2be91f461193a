//! The object types of `shoal-proto` that the store keeps, and their tables.

use crate::Object;
use shoal_proto::objects::{Cluster, Node};

impl Object for Cluster {
    const TABLE: &'static str = "cluster";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for Node {
    const TABLE: &'static str = "nodes";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for shoal_proto::objects::Task {
    const TABLE: &'static str = "tasks";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for shoal_proto::objects::Service {
    const TABLE: &'static str = "services";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for shoal_proto::objects::Network {
    const TABLE: &'static str = "networks";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for shoal_proto::objects::LimitedToken {
    const TABLE: &'static str = "join_tokens";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for shoal_proto::objects::RevokedCert {
    const TABLE: &'static str = "revoked_certs";
    fn id(&self) -> &str {
        &self.serial
    }
}

impl Object for shoal_proto::objects::User {
    const TABLE: &'static str = "users";
    fn id(&self) -> &str {
        &self.name
    }
}

/// Secrets and configs, both (`kind` tells them apart).
impl Object for shoal_proto::objects::Secret {
    const TABLE: &'static str = "secrets";
    fn id(&self) -> &str {
        &self.id
    }
}

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

//! Nodes: their list and details, availability and labels, promotion, demotion and
//! removal.
use super::{ControlApi, ControlCaller, ControlError};
use crate::time::unix_now;
use shoal_proto::control::{NodeView, UpdateNodeRequest};
use shoal_proto::objects::{Availability, Node, NodeRole, NodeState};
use shoal_store::{Batch, Expect, StoreError};

impl ControlApi {
    fn view(&self, node: Node) -> NodeView {
        let raft_id = crate::bootstrap::node_raft_id(&node);
        let manager_status = if node.role != NodeRole::Manager as i32 {
            String::new()
        } else if self.store.leader() == Some(raft_id) {
            "Leader".to_string()
        } else if self.store.members().iter().any(|m| m.id == raft_id)
            && if self.store.is_leader() {
                // The leader hears from every manager several times a second.
                self.store.heard_from(raft_id)
            } else {
                node.state == shoal_proto::objects::NodeState::Ready as i32
            }
        {
            "Reachable".to_string()
        } else {
            "Unreachable".to_string()
        };
        NodeView {
            node: Some(node),
            manager_status,
        }
    }

    pub fn list_nodes(&self, _caller: &ControlCaller) -> Result<Vec<NodeView>, ControlError> {
        let mut nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|v| v.value).collect();
        nodes.sort_by(|a, b| {
            let host = |n: &Node| {
                n.description
                    .as_ref()
                    .map(|d| d.hostname.clone())
                    .unwrap_or_default()
            };
            host(a).cmp(&host(b)).then(a.id.cmp(&b.id))
        });
        Ok(nodes.into_iter().map(|n| self.view(n)).collect())
    }

    /// A node by ID, unique ID prefix, or hostname.
    pub fn get_node(
        &self,
        _caller: &ControlCaller,
        reference: &str,
    ) -> Result<NodeView, ControlError> {
        if let Some(n) = self.get::<Node>(reference)? {
            return Ok(self.view(n.value));
        }
        let nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|v| v.value).collect();
        let by_host: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.description.as_ref().map(|d| d.hostname.as_str()) == Some(reference))
            .collect();
        if by_host.len() > 1 {
            // Hostnames are what nodes said when they joined: two nodes may share one,
            // and neither may then be picked by it.
            let ids: Vec<&str> = by_host.iter().map(|n| n.id.as_str()).collect();
            return Err(ControlError::AmbiguousHostname(
                reference.to_string(),
                ids.join(", "),
            ));
        }
        let found: Vec<&Node> = if by_host.is_empty() && !reference.is_empty() {
            nodes
                .iter()
                .filter(|n| n.id.starts_with(reference))
                .collect()
        } else {
            by_host
        };
        match found.as_slice() {
            [one] => Ok(self.view((*one).clone())),
            [] => Err(ControlError::NoSuchNode(reference.to_string())),
            many => Err(ControlError::Ambiguous(reference.to_string(), many.len())),
        }
    }

    pub async fn update_node(
        &self,
        caller: &ControlCaller,
        req: UpdateNodeRequest,
    ) -> Result<NodeView, ControlError> {
        let availability = match req.availability.as_str() {
            "" => None,
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            other => {
                return Err(ControlError::BadRequest(format!(
                    "availability {:?}: use active, pause or drain",
                    shoal_proto::limits::short(other)
                )))
            }
        };
        for k in req.labels_add.keys().chain(req.labels_rm.iter()) {
            if k.is_empty() {
                return Err(ControlError::BadRequest(
                    "a label key cannot be empty".into(),
                ));
            }
        }
        loop {
            let id = self
                .get_node(caller, &req.reference)?
                .node
                .unwrap_or_default()
                .id;
            let Some(cur) = self.get::<Node>(&id)? else {
                return Err(ControlError::NoSuchNode(req.reference.clone()));
            };
            let mut n = cur.value.clone();
            if let Some(a) = availability {
                n.availability = a as i32;
            }
            for (k, v) in &req.labels_add {
                n.labels.insert(k.clone(), v.clone());
            }
            for k in &req.labels_rm {
                n.labels.remove(k);
            }
            shoal_proto::limits::check_labels("node label", &n.labels)
                .map_err(|e| ControlError::BadRequest(e.0))?;
            n.updated_at_unix = unix_now();
            let mut b = Batch::default();
            b.put(&n, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => return self.get_node(caller, &id),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Refuses taking manager `n` out of the Raft group when that would leave no manager,
    /// or fewer reachable managers than a quorum of those left needs. `what` is the
    /// operation, for the message.
    fn refuse_losing_quorum(
        &self,
        n: &Node,
        reference: &str,
        what: &str,
    ) -> Result<(), ControlError> {
        let managers = self
            .list::<Node>()?
            .into_iter()
            .filter(|m| m.value.role == NodeRole::Manager as i32)
            .count();
        if managers <= 1 {
            return Err(ControlError::Refused(format!(
                "node {reference} is the last manager: a cluster needs one; join or promote another manager first"
            )));
        }
        let id = crate::bootstrap::node_raft_id(n);
        let left: Vec<u64> = self
            .store()
            .members()
            .into_iter()
            .filter(|m| m.voter && m.id != id)
            .map(|m| m.id)
            .collect();
        let reachable = left.iter().filter(|m| self.store().heard_from(**m)).count();
        let needed = left.len() / 2 + 1;
        if reachable < needed {
            return Err(ControlError::Refused(format!(
                "{what} {reference} would leave {reachable} of {} managers reachable, {needed} needed for a quorum: bring the unreachable managers back first",
                left.len()
            )));
        }
        Ok(())
    }

    /// Makes a manager a worker: the managers hold its role as worker, its manager
    /// certificate is refused at once for everything but exchanging it (by renewal) for
    /// a worker certificate, and it leaves the Raft group.
    pub async fn demote_node(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<NodeView, ControlError> {
        let n = self.get_node(caller, reference)?.node.unwrap_or_default();
        if n.role != NodeRole::Manager as i32 {
            return Err(ControlError::BadRequest(format!(
                "node {reference} is not a manager"
            )));
        }
        self.refuse_losing_quorum(&n, reference, "demoting")?;
        loop {
            let Some(cur) = self.get::<Node>(&n.id)? else {
                return Err(ControlError::NoSuchNode(reference.to_string()));
            };
            let mut node = cur.value.clone();
            node.role = NodeRole::Worker as i32;
            node.raft_id = 0;
            node.updated_at_unix = unix_now();
            let c = node.certificate.clone().unwrap_or_default();
            let mut revoked = crate::security::revocation::record(
                &c.serial,
                &n.id,
                c.not_after_unix,
                "certificate revoked: the node was demoted",
            );
            revoked.renewal_allowed = true;
            let mut b = Batch::default();
            b.put(&node, Expect::Version(cur.version));
            if !c.serial.is_empty() {
                b.put(&revoked, Expect::Any);
            }
            match self.commit(b).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // A membership change still settling refuses another for a moment: retry.
        let id = crate::bootstrap::node_raft_id(&n);
        let mut tries = 0;
        while let Err(e) = self.store().remove_member(id).await {
            tries += 1;
            if tries >= 10 {
                return Err(ControlError::Refused(format!(
                    "node {reference} is a worker now, but it could not leave the managers' raft group ({e}): run 'shoal node demote {reference}' again"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        tracing::info!(node_id = %n.id, by = %caller, "manager demoted");
        self.get_node(caller, &n.id)
    }

    /// Makes a running worker a manager. The managers hold its role as manager; its next
    /// heartbeat tells it so, it renews into a manager certificate and joins the Raft
    /// group itself (as a learner, then a voter once caught up).
    pub async fn promote_node(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<NodeView, ControlError> {
        let n = self.get_node(caller, reference)?.node.unwrap_or_default();
        if n.role == NodeRole::Manager as i32 {
            return Err(ControlError::BadRequest(format!(
                "node {reference} is already a manager"
            )));
        }
        if n.state != NodeState::Ready as i32 {
            return Err(ControlError::Refused(format!(
                "node {reference} is down: a node must be running to become a manager (it has to join the managers' raft group); start its daemon and promote it again"
            )));
        }
        loop {
            let Some(cur) = self.get::<Node>(&n.id)? else {
                return Err(ControlError::NoSuchNode(reference.to_string()));
            };
            let mut node = cur.value.clone();
            node.role = NodeRole::Manager as i32;
            // A new member ID: one it had as a manager before is never used again.
            node.raft_id = crate::bootstrap::new_raft_id();
            node.updated_at_unix = unix_now();
            let mut b = Batch::default();
            b.put(&node, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(node_id = %n.id, by = %caller, "node promoted to manager");
        self.get_node(caller, &n.id)
    }

    pub async fn remove_node(
        &self,
        caller: &ControlCaller,
        reference: &str,
        force: bool,
    ) -> Result<(), ControlError> {
        let view = self.get_node(caller, reference)?;
        let n = view.node.unwrap_or_default();
        if n.role == NodeRole::Manager as i32 {
            if !force || n.state != NodeState::Down as i32 {
                return Err(ControlError::Refused(format!(
                    "node {reference} is a manager: demote it first with 'shoal node demote {reference}' (a manager that is down can be removed with --force)"
                )));
            }
            self.refuse_losing_quorum(&n, reference, "removing")?;
            self.store()
                .remove_member(crate::bootstrap::node_raft_id(&n))
                .await?;
        }
        if n.state != NodeState::Down as i32 && !force {
            return Err(ControlError::Refused(format!(
                "node {reference} is not down (it may still be running): stop its daemon first, or remove it anyway with --force"
            )));
        }
        // A heartbeat may update the node between our read and our write: re-read and
        // retry rather than fail the operator's command.
        loop {
            let Some(cur) = self.get::<Node>(&n.id)? else {
                return Ok(());
            };
            let mut b = Batch::default();
            b.delete::<Node>(&n.id, Expect::Version(cur.version));
            crate::security::revocation::revoke_all(&mut b, &cur.value, crate::cluster::REMOVED);
            match self.commit(b).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(node_id = %n.id, by = %caller, "node removed; its certificates are revoked");
        Ok(())
    }
}

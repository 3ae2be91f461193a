//! The root CA: its state and rotation, and revoking one certificate.
use super::{ControlApi, ControlCaller, ControlError};
use crate::security::revocation::record;
use crate::security::rootca::{progress, root_summary};
use crate::time::unix_now;
use shoal_pki::RootCa;
use shoal_proto::control::CaStatus;
use shoal_proto::objects::{Node, RootRotation};
use shoal_store::{Batch, Expect, StoreError};

impl ControlApi {
    /// The root CA and the state of its rotation.
    pub fn ca_status(&self, _caller: &ControlCaller) -> Result<CaStatus, ControlError> {
        let c = self.cluster()?.value;
        let root = c.root_ca.clone().unwrap_or_default();
        let der = shoal_pki::pem_certs(&root.cert_pem)
            .ok()
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default();
        let (subject, not_after) = root_summary(&der);
        let nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|n| n.value).collect();
        let mut s = CaStatus {
            root_pem: root.cert_pem,
            root_digest: root.digest,
            root_subject: subject,
            root_not_after_unix: not_after,
            last_rotation_unix: c.last_rotation_unix,
            last_rotation_left_out: c.last_rotation_left_out.clone(),
            ..Default::default()
        };
        if let Some(rot) = &c.root_rotation {
            let (converged, total, list) = progress(&c, &nodes);
            s.rotating = true;
            s.new_root_pem = rot.cert_pem.clone();
            s.new_root_digest = rot.digest.clone();
            s.rotation_started_at_unix = rot.started_at_unix;
            s.force = rot.force;
            s.converged = converged;
            s.total = total;
            s.nodes = list;
        }
        Ok(s)
    }

    /// Starts a root rotation to a new root (generated, or the operator's), or with
    /// `force` lets the running one finish without the nodes that are down.
    pub async fn rotate_ca(
        &self,
        caller: &ControlCaller,
        force: bool,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<CaStatus, ControlError> {
        if cert_pem.is_empty() != key_pem.is_empty() {
            return Err(ControlError::BadRequest(
                "--ca-cert and --ca-key go together: give both, or neither to generate a new root"
                    .into(),
            ));
        }
        let supplied = if cert_pem.is_empty() {
            None
        } else {
            Some(
                RootCa::from_operator_pem(cert_pem, key_pem)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?,
            )
        };
        loop {
            let cur = self.cluster()?;
            let mut c = cur.value.clone();
            if let Some(rot) = c.root_rotation.as_mut() {
                if supplied.is_some() || !force {
                    let s = self.ca_status(caller)?;
                    return Err(ControlError::Refused(format!(
                        "a root CA rotation is already running ({}/{} nodes): wait for it ('shoal ca' shows its progress), or finish it without the nodes that are down with 'shoal ca --rotate --force'",
                        s.converged, s.total
                    )));
                }
                rot.force = true;
            } else {
                let r = c.root_ca.clone().unwrap_or_default();
                let old = RootCa::from_pem(&r.cert_pem, &r.key_pem)
                    .map_err(|e| ControlError::Refused(format!("the current root CA: {e}")))?;
                let generated;
                let new: &RootCa = match &supplied {
                    Some(s) => {
                        if s.same_key(&old) {
                            return Err(ControlError::BadRequest(
                                "the supplied root uses the current root's key: a rotation needs a new key".into(),
                            ));
                        }
                        let subject =
                            |r: &RootCa| shoal_pki::root_subject(r.cert_der()).unwrap_or_default();
                        if subject(s) == subject(&old) {
                            return Err(ControlError::BadRequest(format!(
                                "the supplied root has the same subject as the current root ({}): give the new root a name of its own, so certificates of the two roots are told apart",
                                subject(&old)
                            )));
                        }
                        s
                    }
                    None => {
                        generated = RootCa::generate_named(
                            crate::bootstrap::ROOT_CA_EXPIRY,
                            &format!("shoal-ca {}", &shoal_pki::random_id()[..8]),
                        )
                        .map_err(|e| ControlError::Refused(e.to_string()))?;
                        &generated
                    }
                };
                let cross = old
                    .cross_sign(new)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                c.root_rotation = Some(RootRotation {
                    cert_pem: new.cert_pem(),
                    key_pem: new.key_pem(),
                    cross_signed_pem: shoal_pki::cert_pem(&cross),
                    digest: new.digest(),
                    started_at_unix: unix_now(),
                    force,
                });
            }
            let mut b = Batch::default();
            b.put(&c, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(force, by = %caller, "root CA rotation started or forced");
        self.ca_status(caller)
    }

    /// Revokes one certificate of a node: its current one, one it superseded, or any
    /// other serial issued to it (those are refused anyway, since a node may only use its
    /// current certificate; the record makes that explicit and survives a renewal).
    pub async fn revoke_certificate(
        &self,
        caller: &ControlCaller,
        node: &str,
        serial: &str,
    ) -> Result<(), crate::controlapi::ControlError> {
        use crate::controlapi::ControlError;
        let serial = serial.trim().to_lowercase();
        if serial.is_empty() || serial.len() > 64 || !serial.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(ControlError::BadRequest(format!(
                "certificate serial {serial:?} is not a serial: give the hexadecimal serial that 'shoal node inspect {node}' shows"
            )));
        }
        let n = self.get_node(caller, node)?.node.unwrap_or_default();
        let c = n.certificate.clone().unwrap_or_default();
        let not_after = if c.serial == serial {
            c.not_after_unix
        } else if let Some(p) = c.previous.iter().find(|p| p.serial == serial) {
            p.not_after_unix
        } else {
            // Not a certificate the managers list any more: it cannot outlive the
            // longest life a certificate may have.
            unix_now() + shoal_pki::MAX_CERT_EXPIRY.as_secs() as i64
        };
        let mut b = Batch::default();
        b.put(
            &record(&serial, &n.id, not_after, "certificate revoked"),
            Expect::Any,
        );
        self.commit(b).await?;
        tracing::info!(node_id = %n.id, serial = %serial, by = %caller, "certificate revoked");
        Ok(())
    }
}

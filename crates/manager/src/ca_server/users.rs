//! User certificates: issued for a user's one-time enrollment token (`shoal login`),
//! renewed with the current one. The user's name, role and scopes come from the store;
//! the CSR contributes only its public key.

use super::CaServer;
use crate::cluster::store_status;
use crate::controlapi::users::{role_name, DEFAULT_USER_CERT_EXPIRY};
use crate::time::{unix, unix_now};
use shoal_pki::{EnrollmentToken, UserName};
use shoal_proto::ca::IssueUserCertificateResponse;
use shoal_proto::objects::{User, UserCert};
use shoal_store::{Batch, Expect, StoreError, Versioned};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tonic::Status;

/// Certificates kept on a user's record (each a machine or a renewal not yet expired):
/// the oldest goes first.
const CERTS_KEPT: usize = 8;

fn when(unix: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|d| {
            d.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl CaServer {
    fn user_cert_expiry(&self) -> Duration {
        let secs = self
            .view
            .current()
            .cluster()
            .and_then(|c| c.value.spec.as_ref().map(|s| s.user_cert_expiry_secs))
            .unwrap_or(0);
        if secs == 0 {
            DEFAULT_USER_CERT_EXPIRY
        } else {
            Duration::from_secs(secs)
        }
    }

    /// The user whose enrollment token `token` is, compared in constant time.
    fn user_of(&self, token: &EnrollmentToken) -> Option<Versioned<User>> {
        let want = token.secret_sha256();
        let state = self.view.current();
        let mut found = None;
        for u in state.iter::<User>() {
            let same = u.value.token_sha256.len() == want.len()
                && bool::from(u.value.token_sha256.as_bytes().ct_eq(want.as_bytes()));
            if same {
                found = Some(u.clone());
            }
        }
        found
    }

    /// Signs `csr` for `user`, records the certificate on the user in one write (with
    /// `also`, e.g. the token marked used), and answers.
    async fn issue_for(
        &self,
        user: Versioned<User>,
        csr: &[u8],
        also: impl FnOnce(&mut User),
    ) -> Result<IssueUserCertificateResponse, Status> {
        let name = UserName::parse(&user.value.name)
            .map_err(|e| Status::internal(format!("the store holds {e}")))?;
        let ca = self.ca.get();
        let cert = ca
            .signer
            .sign_user(csr, &name, &ca.cluster_id, self.user_cert_expiry())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = unix_now();
        let mut u = user.value.clone();
        also(&mut u);
        u.certs.retain(|c| c.not_after_unix > now);
        u.certs.push(UserCert {
            serial: cert.serial.clone(),
            not_after_unix: unix(cert.not_after),
            issued_at_unix: now,
        });
        let extra = u.certs.len().saturating_sub(CERTS_KEPT);
        u.certs.drain(..extra);
        let mut b = Batch::default();
        b.put(&u, Expect::Version(user.version));
        let index = self.store.commit(b).await.map_err(|e| match e {
            StoreError::Conflict { .. } => Status::aborted(format!(
                "user {name} changed at the same moment (another login or an administrator): try again"
            )),
            StoreError::NotLeader => crate::cluster::not_leader(&self.store),
            e => store_status(e),
        })?;
        self.applied(index).await;
        tracing::info!(user = %name, serial = %cert.serial, "issued a user certificate");
        Ok(IssueUserCertificateResponse {
            user: u.name.clone(),
            role: role_name(u.role()).into(),
            scopes: u.scopes.clone(),
            cluster_id: ca.cluster_id.to_string(),
            cert_der: cert.cert_der,
            roots_der: ca.roots.clone(),
            intermediates_der: ca.intermediates.clone(),
            managers: self.view.current().manager_addrs(),
        })
    }

    /// `shoal login`: the token must be this cluster's, unused and unexpired.
    pub(super) async fn issue_user(
        &self,
        remote: Option<std::net::SocketAddr>,
        csr: &[u8],
        token: &str,
    ) -> Result<IssueUserCertificateResponse, Status> {
        let token =
            EnrollmentToken::parse(token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ours = self.ca.get().root.digest();
        if token.ca_digest() != ours {
            return Err(Status::permission_denied(format!(
                "enrollment token does not match this cluster's CA (token digest {}, CA digest {ours}): it was made for another cluster, or the CA was rotated since; ask an administrator for a new one ('shoal user token NAME')",
                token.ca_digest()
            )));
        }
        let Some(user) = self.user_of(&token) else {
            tracing::warn!(?remote, "refused a login with an unknown enrollment token");
            return Err(Status::permission_denied(
                "invalid enrollment token: it is no user's current token (a newer one replaced it, or the user was removed); ask an administrator for a new one ('shoal user token NAME')",
            ));
        };
        let name = user.value.name.clone();
        let used = user.value.token_used_at_unix;
        if used != 0 {
            tracing::warn!(?remote, user = %name, "refused a login with a used enrollment token");
            return Err(Status::permission_denied(format!(
                "this enrollment token of user {name} was already used at {}: a token works once; ask an administrator for a new one ('shoal user token {name}')",
                when(used)
            )));
        }
        let expires = user.value.token_expires_at_unix;
        if unix_now() > expires {
            return Err(Status::permission_denied(format!(
                "this enrollment token of user {name} expired at {}: ask an administrator for a new one ('shoal user token {name}')",
                when(expires)
            )));
        }
        self.issue_for(user, csr, |u| u.token_used_at_unix = unix_now())
            .await
    }

    /// A renewal, by a user whose current certificate still works.
    pub(super) async fn renew_user(
        &self,
        caller: crate::security::auth::UserCaller,
        csr: &[u8],
    ) -> Result<IssueUserCertificateResponse, Status> {
        let name = caller.id.name().to_string();
        Self::limit(&self.renewals, &format!("user {name}"), || {
            format!(
                "RenewUserCertificate refused: user {name} renews too often (limit {} per minute)",
                super::RENEWALS_PER_MINUTE
            )
        })?;
        let user = self
            .view
            .current()
            .get::<User>(&name)
            .cloned()
            .ok_or_else(|| Status::permission_denied(format!("user {name} was removed")))?;
        self.issue_for(user, csr, |_| {}).await
    }
}

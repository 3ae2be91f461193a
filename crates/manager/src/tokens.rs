//! Join tokens with limits: `shoal join-token --ttl D --max-uses N` makes a new token
//! beside the role's standing one; `--list` shows what is live (never a secret);
//! `--rotate` replaces the standing token and cancels the role's limited ones.

use crate::controlapi::{ControlApi, ControlError};
use crate::time::unix_now;
use shoal_pki::{JoinToken, Role};
use shoal_proto::control::{GetJoinTokenRequest, GetJoinTokenResponse, TokenInfo};
use shoal_proto::objects::LimitedToken;
use shoal_store::{Batch, Expect, Store, StoreError, Versioned};

/// How long an expired limited token is kept (a join that uses it hears "expired", not
/// "invalid"), before the leader deletes it.
pub const EXPIRED_KEPT: i64 = 24 * 3600;

/// Deletes limited tokens that expired more than [`EXPIRED_KEPT`] before `now`.
pub async fn prune_expired(store: &Store, now: i64) {
    let Ok(list) = store.list::<LimitedToken>() else {
        return;
    };
    let mut b = Batch::default();
    for t in list {
        if t.value.expires_at_unix != 0 && t.value.expires_at_unix + EXPIRED_KEPT < now {
            b.delete::<LimitedToken>(&t.value.id, Expect::Version(t.version));
        }
    }
    if !b.is_empty() {
        if let Err(e) = store.commit(b).await {
            tracing::debug!(error = %e, "pruning expired join tokens will be retried");
        }
    }
}

/// Why a limited token no longer admits anyone, if it does not.
pub fn exhausted(t: &LimitedToken, now: i64) -> Option<String> {
    if t.expires_at_unix != 0 && now >= t.expires_at_unix {
        let at = ::time::OffsetDateTime::from_unix_timestamp(t.expires_at_unix)
            .ok()
            .and_then(|d| {
                d.format(&::time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        return Some(format!(
            "this join token expired at {at} (its --ttl has passed): ask a manager for a new one with 'shoal join-token'"
        ));
    }
    if t.max_uses != 0 && t.uses >= t.max_uses {
        return Some(format!(
            "this join token has been used {} time(s), its --max-uses limit: ask a manager for a new one with 'shoal join-token'",
            t.uses
        ));
    }
    None
}

/// The limited token matching `token`, if any (constant-time comparison of each).
pub fn find(
    store: &Store,
    token: &JoinToken,
) -> Result<Option<Versioned<LimitedToken>>, StoreError> {
    Ok(store.list::<LimitedToken>()?.into_iter().find(|t| {
        JoinToken::parse(&t.value.token)
            .map(|x| x.matches(token))
            .unwrap_or(false)
    }))
}

impl ControlApi {
    pub async fn join_token_req(
        &self,
        req: GetJoinTokenRequest,
    ) -> Result<GetJoinTokenResponse, ControlError> {
        let managers = self.managers()?;
        if req.list {
            let cluster = crate::bootstrap::load_cluster(self.store())?.value;
            let mut tokens = vec![];
            if cluster.join_tokens.is_some() {
                for role in ["worker", "manager"] {
                    tokens.push(TokenInfo {
                        id: format!("{role}-standing"),
                        role: role.into(),
                        kind: "standing".into(),
                        ..Default::default()
                    });
                }
            }
            let now = unix_now();
            for t in self.store().list::<LimitedToken>()? {
                let t = t.value;
                if exhausted(&t, now).is_some() {
                    continue;
                }
                tokens.push(TokenInfo {
                    id: t.id,
                    role: t.role,
                    kind: "limited".into(),
                    expires_at_unix: t.expires_at_unix,
                    max_uses: t.max_uses,
                    uses: t.uses,
                });
            }
            return Ok(GetJoinTokenResponse {
                token: String::new(),
                managers,
                tokens,
            });
        }
        let role = Role::parse(&req.role).ok_or_else(|| ControlError::BadRole(req.role.clone()))?;
        if req.ttl_secs > 0 || req.max_uses > 0 {
            if req.rotate {
                return Err(ControlError::BadSpec(
                    "--rotate cannot be combined with --ttl or --max-uses".into(),
                ));
            }
            let cluster = crate::bootstrap::load_cluster(self.store())?.value;
            let digest = cluster.root_ca.map(|r| r.digest).unwrap_or_default();
            let now = unix_now();
            let t = LimitedToken {
                id: shoal_pki::random_id()[..12].to_string(),
                role: role.as_str().into(),
                token: JoinToken::generate(&digest).to_string(),
                expires_at_unix: if req.ttl_secs > 0 {
                    now + req.ttl_secs as i64
                } else {
                    0
                },
                max_uses: req.max_uses,
                uses: 0,
                created_at_unix: now,
            };
            let mut b = Batch::default();
            b.put(&t, Expect::Absent);
            self.store().commit(b).await?;
            tracing::info!(token_id = %t.id, role = %role, "limited join token created");
            return Ok(GetJoinTokenResponse {
                token: t.token,
                managers,
                tokens: vec![],
            });
        }
        let token = self.join_token(role.as_str(), req.rotate).await?;
        if req.rotate {
            // Rotation also cancels the role's limited tokens.
            let mut b = Batch::default();
            for t in self.store().list::<LimitedToken>()? {
                if t.value.role == role.as_str() {
                    b.delete::<LimitedToken>(&t.value.id, Expect::Version(t.version));
                }
            }
            if !b.is_empty() {
                self.store().commit(b).await?;
            }
        }
        Ok(GetJoinTokenResponse {
            token,
            managers,
            tokens: vec![],
        })
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_are_deleted_a_day_after_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1, "m1").await.unwrap();
        store.bootstrap().await.unwrap();
        store
            .wait_leader(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let now = 1_000_000;
        let mut b = Batch::default();
        for (id, expires) in [
            ("old", now - EXPIRED_KEPT - 1),
            ("recent", now - 60),
            ("forever", 0),
        ] {
            b.put(
                &LimitedToken {
                    id: id.into(),
                    expires_at_unix: expires,
                    ..Default::default()
                },
                Expect::Absent,
            );
        }
        store.commit(b).await.unwrap();
        prune_expired(&store, now).await;
        let mut left: Vec<String> = store
            .list::<LimitedToken>()
            .unwrap()
            .into_iter()
            .map(|t| t.value.id)
            .collect();
        left.sort();
        assert_eq!(left, ["forever", "recent"]);
        store.shutdown().await.unwrap();
    }
}

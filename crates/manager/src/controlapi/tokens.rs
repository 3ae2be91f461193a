//! Join tokens: the standing token of each role, its rotation, and limited tokens.
use super::{ControlApi, ControlCaller, ControlError};
use crate::security::tokens::exhausted;
use crate::time::unix_now;
use shoal_pki::{JoinToken, Role};
use shoal_proto::control::{GetJoinTokenRequest, GetJoinTokenResponse, TokenInfo};
use shoal_proto::objects::LimitedToken;
use shoal_store::{Batch, Expect, StoreError};

impl ControlApi {
    /// The join token of a role, after replacing it if `rotate`.
    pub async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ControlError> {
        let role = Role::parse(role).ok_or_else(|| ControlError::BadRole(role.to_string()))?;
        loop {
            let cur = self.cluster()?;
            let mut cluster = cur.value.clone();
            let digest = cluster
                .root_ca
                .as_ref()
                .map(|r| r.digest.clone())
                .unwrap_or_default();
            let tokens = cluster.join_tokens.get_or_insert_with(Default::default);
            let slot = match role {
                Role::Worker => &mut tokens.worker,
                Role::Manager => &mut tokens.manager,
            };
            if !rotate {
                return Ok(slot.clone());
            }
            *slot = JoinToken::generate(&digest).to_string();
            let token = slot.clone();
            let mut b = Batch::default();
            b.put(&cluster, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => {
                    tracing::info!(role = %role, "join token rotated");
                    return Ok(token);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn managers(&self) -> Result<Vec<String>, ControlError> {
        Ok(self.view.current().manager_addrs())
    }

    pub async fn join_token_req(
        &self,
        caller: &ControlCaller,
        req: GetJoinTokenRequest,
    ) -> Result<GetJoinTokenResponse, ControlError> {
        let managers = self.managers()?;
        if req.list {
            let cluster = self.cluster()?.value;
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
            for t in self.list::<LimitedToken>()? {
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
            let cluster = self.cluster()?.value;
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
            self.commit(b).await?;
            tracing::info!(token_id = %t.id, role = %role, by = %caller, "limited join token created");
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
            for t in self.list::<LimitedToken>()? {
                if t.value.role == role.as_str() {
                    b.delete::<LimitedToken>(&t.value.id, Expect::Version(t.version));
                }
            }
            if !b.is_empty() {
                self.commit(b).await?;
            }
        }
        Ok(GetJoinTokenResponse {
            token,
            managers,
            tokens: vec![],
        })
    }
}

//! Users: made, listed, changed and removed by an administrator. A user is a name, a
//! role and scopes; making one (or a new token for one) answers with a one-time
//! enrollment token, of which the store keeps only a hash. Removing a user revokes the
//! certificates issued to them, so their next call (on any manager) is refused.

use super::{ControlApi, ControlCaller, ControlError};
use crate::time::unix_now;
use shoal_pki::{EnrollmentToken, UserName};
use shoal_proto::control::{
    CreateUserRequest, NewUserTokenRequest, UpdateUserRequest, UserTokenResponse, UserView,
};
use shoal_proto::objects::{User, UserRole};
use shoal_store::{Batch, Expect, StoreError};
use std::time::Duration;

/// An enrollment token's life unless `--ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest an enrollment token may live.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A user certificate's life unless the cluster setting says otherwise.
pub const DEFAULT_USER_CERT_EXPIRY: Duration = Duration::from_secs(12 * 3600);
/// The longest life `--user-cert-expiry` may give a user certificate.
pub const MAX_USER_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The scope that covers everything.
pub const ALL: &str = "*";

/// A role's name, as the CLI writes it.
pub fn role_name(r: UserRole) -> &'static str {
    match r {
        UserRole::Viewer => "viewer",
        UserRole::Deployer => "deployer",
        UserRole::Operator => "operator",
        UserRole::Admin => "admin",
        UserRole::Unspecified => "none",
    }
}

fn parse_role(s: &str) -> Result<UserRole, ControlError> {
    Ok(match s {
        "viewer" => UserRole::Viewer,
        "deployer" => UserRole::Deployer,
        "operator" => UserRole::Operator,
        "admin" => UserRole::Admin,
        other => {
            return Err(ControlError::BadRequest(format!(
                "unknown role {other:?}: use viewer, deployer, operator or admin"
            )))
        }
    })
}

/// `*`, or a stack name as `stack deploy` takes it (a letter or digit, then letters,
/// digits, `-` and `_`).
fn check_scope(s: &str) -> Result<(), ControlError> {
    let stack = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if s == ALL || stack {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "invalid scope {s:?}: a scope is '*' (everything) or a stack name"
        )))
    }
}

/// The scopes a user ends up with: sorted, without duplicates; `*` alone if present.
fn normalize_scopes(mut scopes: Vec<String>) -> Vec<String> {
    if scopes.iter().any(|s| s == ALL) {
        return vec![ALL.into()];
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

fn token_ttl(ttl_secs: u64) -> Result<Duration, ControlError> {
    if ttl_secs == 0 {
        return Ok(DEFAULT_TOKEN_TTL);
    }
    let d = Duration::from_secs(ttl_secs);
    if d > MAX_TOKEN_TTL {
        return Err(ControlError::BadRequest(format!(
            "--ttl {ttl_secs}s: an enrollment token lives at most 30 days"
        )));
    }
    Ok(d)
}

/// What the API shows of a user: never the token or its hash.
pub fn view(u: &User) -> UserView {
    UserView {
        name: u.name.clone(),
        role: role_name(u.role()).into(),
        scopes: u.scopes.clone(),
        token_expires_at_unix: u.token_expires_at_unix,
        token_used_at_unix: u.token_used_at_unix,
        certs: u.certs.clone(),
        created_at_unix: u.created_at_unix,
        updated_at_unix: u.updated_at_unix,
    }
}

impl ControlApi {
    /// A fresh enrollment token for this cluster's root; `u` keeps its hash.
    fn new_token(&self, u: &mut User, ttl: Duration) -> Result<EnrollmentToken, ControlError> {
        let digest = self
            .cluster()?
            .value
            .root_ca
            .map(|r| r.digest)
            .unwrap_or_default();
        let token = EnrollmentToken::generate(&digest);
        let now = unix_now();
        u.token_sha256 = token.secret_sha256();
        u.token_expires_at_unix = now + ttl.as_secs() as i64;
        u.token_used_at_unix = 0;
        Ok(token)
    }

    pub async fn create_user(
        &self,
        caller: &ControlCaller,
        req: CreateUserRequest,
    ) -> Result<UserTokenResponse, ControlError> {
        let name =
            UserName::parse(&req.name).map_err(|e| ControlError::BadRequest(e.to_string()))?;
        let role = parse_role(&req.role)?;
        for s in &req.scopes {
            check_scope(s)?;
        }
        let scopes = if req.scopes.is_empty() {
            vec![ALL.to_string()]
        } else {
            normalize_scopes(req.scopes)
        };
        let ttl = token_ttl(req.ttl_secs)?;
        let now = unix_now();
        let mut u = User {
            name: name.to_string(),
            role: role as i32,
            scopes,
            created_at_unix: now,
            updated_at_unix: now,
            ..Default::default()
        };
        let token = self.new_token(&mut u, ttl)?;
        let mut b = Batch::default();
        b.put(&u, Expect::Absent);
        match self.commit(b).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Exists(format!(
                    "user {name} already exists: 'shoal user token {name}' makes a new enrollment token, 'shoal user update' changes the role"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user = %name, role = role_name(role), by = %caller, "user created");
        Ok(UserTokenResponse {
            user: Some(view(&u)),
            token: token.to_string(),
        })
    }

    fn user(&self, name: &str) -> Result<shoal_store::Versioned<User>, ControlError> {
        self.get::<User>(name)?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no such user: {name} ('shoal user ls' lists the users)"
            ))
        })
    }

    pub fn list_users(&self) -> Result<Vec<UserView>, ControlError> {
        Ok(self
            .list::<User>()?
            .iter()
            .map(|u| view(&u.value))
            .collect())
    }

    pub fn get_user(&self, name: &str) -> Result<UserView, ControlError> {
        Ok(view(&self.user(name)?.value))
    }

    pub async fn update_user(
        &self,
        caller: &ControlCaller,
        req: UpdateUserRequest,
    ) -> Result<UserView, ControlError> {
        let role = (!req.role.is_empty())
            .then(|| parse_role(&req.role))
            .transpose()?;
        for s in req.scopes_add.iter().chain(&req.scopes_rm) {
            check_scope(s)?;
        }
        loop {
            let cur = self.user(&req.name)?;
            let mut u = cur.value.clone();
            if let Some(r) = role {
                u.role = r as i32;
            }
            let mut scopes: Vec<String> = u
                .scopes
                .iter()
                .filter(|s| !req.scopes_rm.contains(s))
                .cloned()
                .collect();
            scopes.extend(req.scopes_add.iter().cloned());
            if scopes.is_empty() && !u.scopes.is_empty() {
                return Err(ControlError::BadRequest(format!(
                    "user {} would have no scope left: add one with --scope-add, or remove the user",
                    u.name
                )));
            }
            u.scopes = normalize_scopes(scopes);
            if u == cur.value {
                return Ok(view(&u));
            }
            u.updated_at_unix = unix_now();
            let mut b = Batch::default();
            b.put(&u, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => {
                    tracing::info!(user = %u.name, role = role_name(u.role()), scopes = ?u.scopes, by = %caller, "user updated");
                    return Ok(view(&u));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Removes the user and revokes every certificate issued to them that has not
    /// expired; returns their serials.
    pub async fn remove_user(
        &self,
        caller: &ControlCaller,
        name: &str,
    ) -> Result<Vec<String>, ControlError> {
        loop {
            let cur = self.user(name)?;
            let now = unix_now();
            let mut b = Batch::default();
            let mut revoked = Vec::new();
            for c in cur.value.certs.iter().filter(|c| c.not_after_unix > now) {
                let mut r = crate::security::revocation::record(
                    &c.serial,
                    "",
                    c.not_after_unix,
                    &format!("user {name} was removed"),
                );
                r.user = name.to_string();
                b.put(&r, Expect::Any);
                revoked.push(c.serial.clone());
            }
            b.delete::<User>(name, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => {
                    tracing::info!(user = %name, certificates = revoked.len(), by = %caller, "user removed");
                    return Ok(revoked);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Revokes one certificate issued to a user (as `user inspect` lists them): refused on
    /// every manager from the next call, and open streams end.
    pub async fn revoke_user_certificate(
        &self,
        caller: &ControlCaller,
        name: &str,
        serial: &str,
    ) -> Result<(), ControlError> {
        let serial = serial.trim().to_lowercase();
        let u = self.user(name)?.value;
        let Some(cert) = u.certs.iter().find(|c| c.serial == serial) else {
            return Err(ControlError::NotFound(format!(
                "certificate {serial:?} is not one of user {name}'s: 'shoal user inspect {name}' lists them"
            )));
        };
        let mut r = crate::security::revocation::record(
            &serial,
            "",
            cert.not_after_unix,
            "certificate revoked",
        );
        r.user = name.to_string();
        let mut b = Batch::default();
        b.put(&r, Expect::Any);
        self.commit(b).await?;
        tracing::info!(user = %name, serial = %serial, by = %caller, "user certificate revoked");
        Ok(())
    }

    /// A new enrollment token for an existing user (the last one no longer works).
    pub async fn new_user_token(
        &self,
        caller: &ControlCaller,
        req: NewUserTokenRequest,
    ) -> Result<UserTokenResponse, ControlError> {
        let ttl = token_ttl(req.ttl_secs)?;
        loop {
            let cur = self.user(&req.name)?;
            let mut u = cur.value.clone();
            let token = self.new_token(&mut u, ttl)?;
            u.updated_at_unix = unix_now();
            let mut b = Batch::default();
            b.put(&u, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => {
                    tracing::info!(user = %u.name, by = %caller, "user enrollment token made");
                    return Ok(UserTokenResponse {
                        user: Some(view(&u)),
                        token: token.to_string(),
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_scopes_and_token_lives_are_checked() {
        assert_eq!(parse_role("deployer").unwrap(), UserRole::Deployer);
        let e = parse_role("root").unwrap_err().to_string();
        assert!(
            e.contains("unknown role \"root\"") && e.contains("viewer"),
            "{e}"
        );
        for ok in ["*", "shop", "my-app_2"] {
            check_scope(ok).unwrap();
        }
        for bad in ["", "shop!", "-x", "a b", "**"] {
            let e = check_scope(bad).unwrap_err().to_string();
            assert!(e.contains("invalid scope"), "{bad}: {e}");
        }
        assert_eq!(
            normalize_scopes(vec!["shop".into(), "blog".into(), "shop".into()]),
            ["blog", "shop"]
        );
        assert_eq!(normalize_scopes(vec!["shop".into(), "*".into()]), ["*"]);
        assert_eq!(token_ttl(0).unwrap(), DEFAULT_TOKEN_TTL);
        assert_eq!(token_ttl(60).unwrap(), Duration::from_secs(60));
        assert!(token_ttl(31 * 86400).is_err());
    }

    #[test]
    fn the_view_of_a_user_never_holds_the_token_hash() {
        let u = User {
            name: "alice".into(),
            role: UserRole::Admin as i32,
            token_sha256: "deadbeef".into(),
            ..Default::default()
        };
        let v = view(&u);
        assert_eq!(v.role, "admin");
        assert!(!format!("{v:?}").contains("deadbeef"));
    }
}

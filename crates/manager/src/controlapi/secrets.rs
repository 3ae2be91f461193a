//! Secrets and configs (`secret|config create/ls/inspect/update/rm`): named data in
//! versions, kept only in the store (so encrypted at rest, #7). A secret's data never
//! leaves through this API; a config's may (`config inspect --pretty`). Services name
//! them with `--secret`/`--config`; the names are kept as IDs and versions.

use crate::controlapi::{ControlApi, ControlCaller, ControlError};
use sha2::Digest;
use shoal_proto::control::{SecretUse, SecretView};
use shoal_proto::objects::{
    ContainerSpec, Secret, SecretReference, SecretSpec, SecretVersion, Service,
};
use shoal_store::{Batch, Expect};

/// Swarm mode's limits: a secret's data below 500 KiB, a config's below 1000 KiB.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;
/// Docker's longest secret or config name.
const MAX_NAME: usize = 64;
/// Read-only for everyone: what a file gets unless `mode=` says otherwise.
pub const DEFAULT_MODE: u32 = 0o444;

fn bad(m: String) -> ControlError {
    ControlError::BadRequest(m)
}

/// "secret" or "config".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, ControlError> {
        match s {
            "secret" | "" => Ok(Kind::Secret),
            "config" => Ok(Kind::Config),
            k => Err(bad(format!("unknown kind {k:?}: secret or config"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
    fn limit(self) -> usize {
        match self {
            Kind::Secret => MAX_SECRET_BYTES,
            Kind::Config => MAX_CONFIG_BYTES,
        }
    }
    /// The references of this kind in a task template.
    pub fn refs(self, c: &ContainerSpec) -> &[SecretReference] {
        match self {
            Kind::Secret => &c.secrets,
            Kind::Config => &c.configs,
        }
    }
    fn refs_mut(self, c: &mut ContainerSpec) -> &mut Vec<SecretReference> {
        match self {
            Kind::Secret => &mut c.secrets,
            Kind::Config => &mut c.configs,
        }
    }
}

/// Docker's rule for secret and config names: letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit, at most 64 characters.
pub fn check_name(kind: Kind, name: &str) -> Result<(), String> {
    let k = kind.name();
    let ok_inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() {
        return Err(format!("a {k} needs a name"));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{k} name {:?} is {} characters long: the limit is {MAX_NAME}",
            shoal_proto::limits::short(name),
            name.len()
        ));
    }
    let first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let last = name
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first || !last || !name.chars().all(ok_inner) {
        return Err(format!(
            "{k} name {:?} is not valid: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            shoal_proto::limits::short(name)
        ));
    }
    Ok(())
}

/// A version's data: not empty, and under the kind's limit. The message gives sizes,
/// never content.
pub fn check_data(kind: Kind, data: &[u8]) -> Result<(), String> {
    let k = kind.name();
    if data.is_empty() {
        return Err(format!(
            "the {k}'s data is empty: give a file or standard input with at least one byte"
        ));
    }
    let limit = kind.limit();
    if data.len() > limit {
        return Err(format!(
            "the {k}'s data is {} KB ({} bytes): the limit is {} KB ({limit} bytes)",
            data.len().div_ceil(1024),
            data.len(),
            limit / 1024
        ));
    }
    Ok(())
}

/// Checks a reference's target, mode and the other references' targets; fills the
/// default target (a secret's name under /run/secrets, a config's `/<name>`).
fn check_reference(kind: Kind, r: &mut SecretReference) -> Result<(), String> {
    let k = kind.name();
    if r.target.is_empty() {
        r.target = match kind {
            Kind::Secret => r.secret_name.clone(),
            Kind::Config => format!("/{}", r.secret_name),
        };
    }
    let t = r.target.as_str();
    let dotdot = t.split('/').any(|p| p == ".." || p == ".");
    match kind {
        Kind::Secret => {
            if t.starts_with('/') || dotdot || t.split('/').any(str::is_empty) || t.contains('\0') {
                return Err(format!(
                    "{k} target {:?} is not valid: give a file name under /run/secrets (such as db_password or app/key.pem), without '..'",
                    shoal_proto::limits::short(t)
                ));
            }
        }
        Kind::Config => {
            if !t.starts_with('/') || t == "/" || dotdot || t.contains('\0') || t.ends_with('/') {
                return Err(format!(
                    "{k} target {:?} is not valid: give an absolute file path (such as /etc/app.conf), without '..'",
                    shoal_proto::limits::short(t)
                ));
            }
        }
    }
    if let Some(m) = r.mode {
        if m > 0o777 {
            return Err(format!(
                "{k} mode {m:o} is not a file mode: use 0000 to 0777 (octal)"
            ));
        }
    }
    Ok(())
}

/// A secret with its data out of reach: a secret's versions lose their data, a
/// config's keep it.
fn shown(mut s: Secret) -> Secret {
    if s.kind != Kind::Config.name() {
        for v in &mut s.versions {
            v.data.clear();
        }
    }
    s
}

/// Which services use which version of secret `id`: their current spec, and the
/// previous one (what a rollback returns to).
fn uses_of(kind: Kind, id: &str, services: &[Service]) -> Vec<SecretUse> {
    let mut out = Vec::new();
    for s in services {
        let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
        for (spec, previous) in [(s.spec.as_ref(), false), (s.previous_spec.as_ref(), true)] {
            let Some(c) = spec.and_then(|x| x.container.as_ref()) else {
                continue;
            };
            for r in kind.refs(c).iter().filter(|r| r.secret_id == id) {
                let u = SecretUse {
                    service_id: s.id.clone(),
                    service_name: name.clone(),
                    version: r.version,
                    previous,
                };
                if !out.contains(&u) {
                    out.push(u);
                }
            }
        }
    }
    out
}

impl ControlApi {
    fn secrets_of(&self, kind: Kind) -> Result<Vec<Secret>, ControlError> {
        Ok(self
            .list::<Secret>()?
            .into_iter()
            .map(|v| v.value)
            .filter(|s| s.kind == kind.name())
            .collect())
    }

    fn services(&self) -> Result<Vec<Service>, ControlError> {
        Ok(self
            .list::<Service>()?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// A secret (or config) by name, ID or unique ID prefix, data included: for the
    /// managers' own use only.
    pub fn find_secret(&self, kind: Kind, reference: &str) -> Result<Secret, ControlError> {
        let k = kind.name();
        let all = self.secrets_of(kind)?;
        if let Some(s) = all.iter().find(|s| s.id == reference) {
            return Ok(s.clone());
        }
        if let Some(s) = all
            .iter()
            .find(|s| s.spec.as_ref().is_some_and(|x| x.name == reference))
        {
            return Ok(s.clone());
        }
        let by_prefix: Vec<&Secret> = all
            .iter()
            .filter(|s| !reference.is_empty() && s.id.starts_with(reference))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ControlError::NotFound(format!(
                "{k} {:?} not found: see 'shoal {k} ls', or create it with 'shoal {k} create NAME FILE'",
                shoal_proto::limits::short(reference)
            ))),
            many => Err(bad(format!(
                "{k} reference {reference:?} is ambiguous (it matches {} {k}s): use more characters of the ID",
                many.len()
            ))),
        }
    }

    /// A secret or config by name, ID or unique ID prefix, if in the caller's scope.
    fn find_secret_for(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        reference: &str,
    ) -> Result<Secret, ControlError> {
        let s = self.find_secret(kind, reference)?;
        let spec = s.spec.clone().unwrap_or_default();
        caller.in_scope(kind.name(), &s.id, &spec.name, &spec.labels)?;
        Ok(s)
    }

    /// The services the caller may see (a secret's uses name no service outside their
    /// scope).
    fn services_seen(&self, caller: &ControlCaller) -> Result<Vec<Service>, ControlError> {
        let mut all = self.services()?;
        all.retain(|s| {
            caller.limits().is_none()
                || caller.sees(
                    &s.spec
                        .as_ref()
                        .map(|x| x.labels.clone())
                        .unwrap_or_default(),
                )
        });
        Ok(all)
    }

    fn secret_view(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        s: Secret,
    ) -> Result<SecretView, ControlError> {
        let uses = uses_of(kind, &s.id, &self.services_seen(caller)?);
        Ok(SecretView {
            secret: Some(shown(s)),
            uses,
        })
    }

    pub fn get_secret(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        reference: &str,
    ) -> Result<SecretView, ControlError> {
        let s = self.find_secret_for(caller, kind, reference)?;
        self.secret_view(caller, kind, s)
    }

    pub fn list_secrets(
        &self,
        caller: &ControlCaller,
        kind: Kind,
    ) -> Result<Vec<SecretView>, ControlError> {
        let services = self.services_seen(caller)?;
        let mut all = self.secrets_of(kind)?;
        all.retain(|s| {
            caller.sees(
                &s.spec
                    .as_ref()
                    .map(|x| x.labels.clone())
                    .unwrap_or_default(),
            )
        });
        let name = |s: &Secret| s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
        all.sort_by_key(name);
        Ok(all
            .into_iter()
            .map(|s| SecretView {
                uses: uses_of(kind, &s.id, &services),
                secret: Some(shown(s)),
            })
            .collect())
    }

    pub async fn create_secret(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        spec: SecretSpec,
        data: Vec<u8>,
    ) -> Result<SecretView, ControlError> {
        let k = kind.name();
        check_name(kind, &spec.name).map_err(bad)?;
        shoal_proto::limits::check_labels(&format!("{k} label"), &spec.labels)
            .map_err(|e| bad(e.0))?;
        check_data(kind, &data).map_err(bad)?;
        caller.may_name(k, &spec.name, &spec.labels)?;
        if self
            .secrets_of(kind)?
            .iter()
            .any(|s| s.spec.as_ref().is_some_and(|x| x.name == spec.name))
        {
            return Err(ControlError::Exists(format!(
                "a {k} named {} already exists: give it new data with 'shoal {k} update {} FILE'",
                spec.name, spec.name
            )));
        }
        let now = crate::time::unix_now();
        let secret = Secret {
            id: shoal_pki::random_id(),
            spec: Some(spec),
            kind: k.into(),
            created_at_unix: now,
            updated_at_unix: now,
            versions: vec![version(kind, 1, data, now)],
        };
        let mut b = Batch::default();
        b.put(&secret, Expect::Absent);
        self.commit(b).await?;
        tracing::info!(kind = k, id = %secret.id, by = %caller, "{k} created");
        self.secret_view(caller, kind, secret)
    }

    /// A new version of a secret's data; every service whose current spec uses the
    /// secret moves onto it by a rolling update, with its own update settings (and its
    /// failure action: a failed update rolls back to the old version if it says so).
    pub async fn update_secret(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        reference: &str,
        data: Vec<u8>,
        only_if_changed: bool,
    ) -> Result<SecretView, ControlError> {
        let k = kind.name();
        check_data(kind, &data).map_err(bad)?;
        let id = self.find_secret_for(caller, kind, reference)?.id;
        let cur = self
            .get::<Secret>(&id)?
            .ok_or_else(|| ControlError::Conflict(format!("the {k} was removed meanwhile")))?;
        if only_if_changed
            && cur.value.versions.last().is_some_and(|v| {
                // In constant time: a caller may replace a secret, never learn it.
                use subtle::ConstantTimeEq;
                v.data.len() == data.len() && bool::from(v.data.ct_eq(&data))
            })
        {
            return self.secret_view(caller, kind, cur.value.clone());
        }
        let mut next = cur.value.clone();
        let name = next
            .spec
            .as_ref()
            .map(|x| x.name.clone())
            .unwrap_or_default();
        let now = crate::time::unix_now();
        let n = next.versions.last().map_or(0, |v| v.version) + 1;
        next.versions.push(version(kind, n, data, now));
        next.updated_at_unix = now;
        let mut b = Batch::default();
        b.put(&next, Expect::Version(cur.version));
        match self.commit(b).await {
            Ok(_) => {}
            Err(shoal_store::StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict(format!(
                    "{k} {name} changed meanwhile: run the update again"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(kind = k, id = %id, version = n, by = %caller, "{k} updated");
        let mut failed = Vec::new();
        for svc in self.services()? {
            let Some(mut spec) = svc.spec.clone() else {
                continue;
            };
            let Some(c) = spec.container.as_mut() else {
                continue;
            };
            let mut uses = false;
            for r in kind.refs_mut(c).iter_mut().filter(|r| r.secret_id == id) {
                r.version = n;
                uses = true;
            }
            if !uses {
                continue;
            }
            let req = shoal_proto::control::UpdateServiceRequest {
                reference: svc.id.clone(),
                spec: Some(spec.clone()),
                spec_version: svc.spec_version,
                force: false,
                rollback: false,
            };
            if let Err(e) = self.update_service(caller, req).await {
                tracing::warn!(service = %spec.name, error = %e, "cannot move a service onto the new {k} version");
                failed.push(format!("{} ({e})", spec.name));
            }
        }
        self.prune_versions().await?;
        if !failed.is_empty() {
            return Err(ControlError::Conflict(format!(
                "{k} {name} has version {n}, but these services stay on the old one: {}; move them with 'shoal service update --{k}-rm {name} --{k}-add {name} SERVICE'",
                failed.join(", ")
            )));
        }
        let now = self.find_secret(kind, &id)?;
        self.secret_view(caller, kind, now)
    }

    /// Deletes every old version (not a secret's newest) that nothing uses any more:
    /// no service's spec or previous spec, and no task meant to run.
    pub async fn prune_versions(&self) -> Result<(), ControlError> {
        let secrets: Vec<_> = self
            .list::<Secret>()?
            .into_iter()
            .filter(|s| s.value.versions.len() > 1)
            .collect();
        if secrets.is_empty() {
            return Ok(());
        }
        let mut used: std::collections::HashSet<(String, u64)> = Default::default();
        let mut note = |c: Option<&ContainerSpec>| {
            for r in c
                .iter()
                .flat_map(|c| c.secrets.iter().chain(c.configs.iter()))
            {
                used.insert((r.secret_id.clone(), r.version));
            }
        };
        for svc in self.services()? {
            note(svc.spec.as_ref().and_then(|x| x.container.as_ref()));
            note(
                svc.previous_spec
                    .as_ref()
                    .and_then(|x| x.container.as_ref()),
            );
        }
        for t in self.list::<shoal_proto::objects::Task>()? {
            if t.value.desired_state <= shoal_proto::objects::TaskState::Running as i32 {
                note(t.value.spec.as_ref());
            }
        }
        let mut b = Batch::default();
        let mut any = false;
        for cur in secrets {
            let mut next = cur.value.clone();
            let newest = next.versions.last().map_or(0, |v| v.version);
            next.versions
                .retain(|v| v.version == newest || used.contains(&(next.id.clone(), v.version)));
            if next.versions.len() != cur.value.versions.len() {
                tracing::info!(id = %next.id, kept = next.versions.len(), "old versions nothing uses deleted");
                b.put(&next, Expect::Version(cur.version));
                any = true;
            }
        }
        if any {
            // A conflict means someone changed a secret meanwhile: the next pass prunes.
            match self.commit(b).await {
                Ok(_) | Err(shoal_store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes a secret no service uses.
    pub async fn remove_secret(
        &self,
        caller: &ControlCaller,
        kind: Kind,
        reference: &str,
    ) -> Result<(), ControlError> {
        let k = kind.name();
        let s = self.find_secret_for(caller, kind, reference)?;
        let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
        let mut users: Vec<String> = uses_of(kind, &s.id, &self.services()?)
            .into_iter()
            .filter(|u| !u.previous)
            .map(|u| u.service_name)
            .collect();
        users.dedup();
        if !users.is_empty() {
            let one = users.len() == 1;
            return Err(ControlError::Refused(format!(
                "{k} {name} is in use by service{} {}: remove {} or detach with 'shoal service update --{k}-rm {name} SERVICE'",
                if one { "" } else { "s" },
                users.join(", "),
                if one { "it" } else { "them" },
            )));
        }
        let mut b = Batch::default();
        b.delete::<Secret>(&s.id, Expect::Any);
        self.commit(b).await?;
        tracing::info!(kind = k, id = %s.id, by = %caller, "{k} removed");
        Ok(())
    }

    /// Replaces the secret and config names a task template gives by IDs and versions
    /// (the newest, unless the reference already names a version that exists: an update
    /// that leaves a secret alone keeps its tasks), refusing names that do not exist.
    pub fn resolve_secrets(&self, spec: &mut ContainerSpec) -> Result<(), ControlError> {
        for kind in [Kind::Secret, Kind::Config] {
            let k = kind.name();
            if kind.refs(spec).is_empty() {
                continue;
            }
            let all = self.secrets_of(kind)?;
            let mut targets = std::collections::HashSet::new();
            for r in kind.refs_mut(spec).iter_mut() {
                let by_id = all
                    .iter()
                    .find(|s| !r.secret_id.is_empty() && s.id == r.secret_id);
                let found = by_id.or_else(|| {
                    all.iter()
                        .find(|s| s.spec.as_ref().is_some_and(|x| x.name == r.secret_name))
                });
                let Some(s) = found else {
                    let name = if r.secret_name.is_empty() {
                        &r.secret_id
                    } else {
                        &r.secret_name
                    };
                    return Err(bad(format!(
                        "{k} {:?} not found: create it with 'shoal {k} create {} FILE'",
                        shoal_proto::limits::short(name),
                        shoal_proto::limits::short(name)
                    )));
                };
                let newest = s.versions.last().map_or(1, |v| v.version);
                let keep = r.secret_id == s.id
                    && r.version != 0
                    && s.versions.iter().any(|v| v.version == r.version);
                r.secret_id = s.id.clone();
                r.secret_name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
                if !keep {
                    r.version = newest;
                }
                check_reference(kind, r).map_err(bad)?;
                if !targets.insert(r.target.clone()) {
                    return Err(bad(format!(
                        "two {k}s have the target {}: give one another with target=",
                        r.target
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A new version of `data`.
fn version(kind: Kind, n: u64, data: Vec<u8>, now: i64) -> SecretVersion {
    let digest = match kind {
        Kind::Config => hex::encode(sha2::Sha256::digest(&data)),
        Kind::Secret => String::new(),
    };
    SecretVersion {
        version: n,
        size: data.len() as u64,
        data,
        created_at_unix: now,
        digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rules() {
        for ok in ["db", "db_password", "a.b-c_d", "x1", &"a".repeat(64)] {
            assert!(check_name(Kind::Secret, ok).is_ok(), "{ok}");
        }
        for bad in ["", "-db", "db-", ".x", "a b", "a/b", "ünï", &"a".repeat(65)] {
            let e = check_name(Kind::Secret, bad).unwrap_err();
            assert!(e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn data_must_be_there_and_under_the_limit_and_errors_never_show_it() {
        assert!(check_data(Kind::Secret, b"x").is_ok());
        assert!(check_data(Kind::Secret, &vec![b'q'; MAX_SECRET_BYTES]).is_ok());
        let e = check_data(Kind::Secret, &vec![b'q'; MAX_SECRET_BYTES + 1]).unwrap_err();
        assert!(e.contains("the limit is 500 KB"), "{e}");
        assert!(!e.contains("qqq"), "{e}");
        assert!(check_data(Kind::Config, &vec![b'q'; MAX_SECRET_BYTES + 1]).is_ok());
        let e = check_data(Kind::Config, &vec![b'q'; MAX_CONFIG_BYTES + 1]).unwrap_err();
        assert!(e.contains("the limit is 1000 KB"), "{e}");
        assert!(check_data(Kind::Config, b"").unwrap_err().contains("empty"));
    }

    #[test]
    fn targets_default_to_the_name_and_are_checked() {
        let r = |name: &str, target: &str| SecretReference {
            secret_name: name.into(),
            target: target.into(),
            ..Default::default()
        };
        let mut s = r("db", "");
        check_reference(Kind::Secret, &mut s).unwrap();
        assert_eq!(s.target, "db");
        let mut c = r("app", "");
        check_reference(Kind::Config, &mut c).unwrap();
        assert_eq!(c.target, "/app");
        for t in ["/etc/x", "../x", "a/../b", "a//b"] {
            assert!(
                check_reference(Kind::Secret, &mut r("db", t)).is_err(),
                "{t}"
            );
        }
        for t in ["etc/x", "/etc/../x", "/", "/etc/"] {
            assert!(
                check_reference(Kind::Config, &mut r("db", t)).is_err(),
                "{t}"
            );
        }
        let mut m = r("db", "");
        m.mode = Some(0o1777);
        assert!(check_reference(Kind::Secret, &mut m).is_err());
    }

    #[test]
    fn a_secrets_data_is_cleared_before_it_is_shown_and_a_configs_is_not() {
        let s = |kind: Kind| Secret {
            kind: kind.name().into(),
            versions: vec![version(kind, 1, b"marker".to_vec(), 0)],
            ..Default::default()
        };
        assert!(shown(s(Kind::Secret)).versions[0].data.is_empty());
        assert_eq!(shown(s(Kind::Secret)).versions[0].size, 6);
        assert!(shown(s(Kind::Secret)).versions[0].digest.is_empty());
        assert_eq!(shown(s(Kind::Config)).versions[0].data, b"marker");
    }
}

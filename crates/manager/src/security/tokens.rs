//! Join tokens with limits: `shoal join-token --ttl D --max-uses N` makes a new token
//! beside the role's standing one; `--list` shows what is live (never a secret);
//! `--rotate` replaces the standing token and cancels the role's limited ones.

use shoal_pki::JoinToken;
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

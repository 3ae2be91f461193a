//! Three real stores (openraft over redb files) replicating through an in-process
//! transport that calls the receiving store's `handle_raft`, as the manager's gRPC
//! transport does over mTLS: membership changes, replication, and a new leader after the
//! old one stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_store::{
    Batch, Expect, Leadership, Object, RaftRpc, RaftTransport, Store, TransportError,
    TransportFuture,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Item {
    #[prost(string, tag = "1")]
    id: String,
}

impl Object for Item {
    const TABLE: &'static str = "items";
    fn id(&self) -> &str {
        &self.id
    }
}

/// An object with a body, to look for on disk.
#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    text: String,
}

impl Object for Note {
    const TABLE: &'static str = "notes";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Delivers each call to the store registered under the target's ID; a missing store
/// is unreachable (a stopped manager).
#[derive(Default, Clone)]
struct InProcess {
    stores: Arc<Mutex<HashMap<u64, Store>>>,
}

impl RaftTransport for InProcess {
    fn call(&self, target: u64, _addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture {
        let store = self.stores.lock().unwrap().get(&target).cloned();
        Box::pin(async move {
            let store =
                store.ok_or_else(|| TransportError::Unreachable(format!("{target} is down")))?;
            store
                .handle_raft(rpc, &body, None)
                .await
                .map_err(|e| TransportError::Refused(e.to_string()))
        })
    }
}

/// Three stores on one in-process network (IDs 1-3, addresses m1-m3), the first
/// bootstrapped and leading; the directories live as long as the first element.
async fn three_stores() -> (Vec<tempfile::TempDir>, InProcess, Vec<Store>) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = InProcess::default();
    let mut stores = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let s = Store::open_with(
            d.path(),
            id,
            &format!("m{id}"),
            Arc::new(net.clone()),
            Default::default(),
        )
        .await
        .unwrap();
        net.stores.lock().unwrap().insert(id, s.clone());
        stores.push(s);
    }
    stores[0].bootstrap().await.unwrap();
    stores[0].wait_leader(Duration::from_secs(5)).await.unwrap();
    (dirs, net, stores)
}

async fn put(store: &Store, id: &str) -> Result<u64, shoal_store::StoreError> {
    let mut b = Batch::default();
    b.put(&Item { id: id.into() }, Expect::Absent);
    store.commit(b).await
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_and_elect_a_new_leader_when_one_stops() {
    let (_dirs, net, stores) = three_stores().await;
    put(&stores[0], "before-join").await.unwrap();
    stores[0].add_voter(2, "m2").await.unwrap();
    stores[0].add_voter(3, "m3").await.unwrap();
    let members = stores[0].members();
    assert_eq!(members.iter().filter(|m| m.voter).count(), 3, "{members:?}");

    // Writes reach every member, the ones from before the join too.
    put(&stores[0], "after-join").await.unwrap();
    for s in &stores {
        wait_until("replication", Duration::from_secs(5), || {
            s.get::<Item>("after-join").unwrap().is_some()
                && s.get::<Item>("before-join").unwrap().is_some()
        })
        .await;
    }
    // A follower refuses writes: they go through the leader.
    assert!(matches!(
        put(&stores[1], "on-a-follower").await,
        Err(shoal_store::StoreError::NotLeader)
    ));
    assert_eq!(stores[1].leader(), Some(1));

    // The leader stops: one of the other two leads within a few seconds and takes writes.
    net.stores.lock().unwrap().remove(&1);
    stores[0].shutdown().await.unwrap();
    let started = Instant::now();
    let mut new_leader = None;
    while new_leader.is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "no new leader");
        new_leader = stores[1..]
            .iter()
            .find(|s| matches!(s.leadership().current(), Leadership::Leader { .. }))
            .cloned();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = new_leader.unwrap();
    put(&leader, "after-failover").await.unwrap();
    for s in &stores[1..] {
        wait_until("replication after failover", Duration::from_secs(5), || {
            s.get::<Item>("after-failover").unwrap().is_some()
        })
        .await;
    }
    for s in &stores[1..] {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_majority_fails_writes_fast_and_says_why() {
    let (_dirs, net, stores) = three_stores().await;
    stores[0].add_voter(2, "m2").await.unwrap();
    stores[0].add_voter(3, "m3").await.unwrap();
    put(&stores[0], "with-quorum").await.unwrap();

    // Both followers stop.
    net.stores.lock().unwrap().retain(|id, _| *id == 1);
    stores[1].shutdown().await.unwrap();
    stores[2].shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = put(&stores[0], "without-quorum").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.to_string(),
        "no leader: 1 of 3 managers reachable, 2 needed"
    );
    stores[0].shutdown().await.unwrap();
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            return any_file_contains(&p, needle);
        }
        std::fs::read(&p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_compaction_catches_up_from_a_snapshot_and_nothing_is_plaintext() {
    let (dirs, _net, stores) = three_stores().await;
    stores[0].set_snapshot_interval(100);
    // Object ids are keys, kept in clear; what an object holds is not.
    let marker = format!("marker-{}", std::process::id());
    let mut b = Batch::default();
    b.put(
        &Note {
            id: "n1".into(),
            text: marker.clone(),
        },
        Expect::Absent,
    );
    stores[0].commit(b).await.unwrap();
    for i in 0..250 {
        put(&stores[0], &format!("item-{i}")).await.unwrap();
    }
    // Snapshotted at least twice; the log before the last snapshot is compacted.
    wait_until("a snapshot", Duration::from_secs(10), || {
        stores[0].snapshot_index().is_some_and(|i| i >= 200)
    })
    .await;

    // The new member's log starts empty; the leader no longer has the first entries,
    // so the member can only catch up from the snapshot.
    stores[0].add_voter(2, "m2").await.unwrap();
    wait_until("the new member catches up", Duration::from_secs(10), || {
        stores[1].get::<Item>("item-249").unwrap().is_some()
            && stores[1]
                .get::<Note>("n1")
                .unwrap()
                .is_some_and(|n| n.value.text == marker)
    })
    .await;
    assert!(
        stores[1].snapshot_index().is_some(),
        "installed from a snapshot"
    );
    assert_eq!(stores[1].list::<Item>().unwrap().len(), 250);

    // Encrypted at rest: the marker is in no file of either store, log or snapshot.
    for d in &dirs[..2] {
        assert!(
            !any_file_contains(d.path(), marker.as_bytes()),
            "plaintext in {}",
            d.path().display()
        );
    }
}

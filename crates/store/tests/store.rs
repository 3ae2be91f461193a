//! The store end to end: a real one-member openraft node over a redb file in a
//! temporary directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_store::{Batch, Change, Expect, Object, Store, StoreError, Versioned};
use tokio::sync::broadcast::error::RecvError;

#[derive(Clone, PartialEq, prost::Message)]
struct Node {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    name: String,
}

impl Object for Node {
    const TABLE: &'static str = "nodes";
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct Service {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint32, tag = "2")]
    replicas: u32,
}

impl Object for Service {
    const TABLE: &'static str = "services";
    fn id(&self) -> &str {
        &self.id
    }
}

fn node(id: &str, name: &str) -> Node {
    Node {
        id: id.to_string(),
        name: name.to_string(),
    }
}

const LEADER_TIMEOUT: Duration = Duration::from_secs(5);

async fn bootstrapped(dir: &Path) -> Store {
    let store = Store::open(dir, 1, "127.0.0.1:4242")
        .await
        .expect("open store");
    store.bootstrap().await.expect("bootstrap");
    store.wait_leader(LEADER_TIMEOUT).await.expect("leader");
    store
}

async fn put(store: &Store, obj: &Node, expect: Expect) -> Result<u64, StoreError> {
    let mut batch = Batch::default();
    batch.put(obj, expect);
    store.commit(batch).await
}

#[tokio::test]
async fn committed_objects_are_read_back_with_the_commit_index_as_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    assert!(store.is_leader());

    let mut batch = Batch::default();
    batch
        .put(&node("n2", "beta"), Expect::Absent)
        .put(&node("n1", "alpha"), Expect::Absent)
        .put(
            &Service {
                id: "web".into(),
                replicas: 3,
            },
            Expect::Any,
        );
    assert!(!batch.is_empty());
    let index = store.commit(batch).await.expect("commit");

    let n1 = store.get::<Node>("n1").expect("get").expect("n1 exists");
    assert_eq!(
        n1,
        Versioned {
            version: index,
            value: node("n1", "alpha")
        }
    );
    assert_eq!(store.get::<Node>("missing").expect("get"), None);
    // Tables are separate namespaces.
    assert_eq!(store.get::<Node>("web").expect("get"), None);

    let nodes = store.list::<Node>().expect("list");
    let ids: Vec<_> = nodes.iter().map(|n| n.value.id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2"]);
    assert!(nodes.iter().all(|n| n.version == index));
    let services = store.list::<Service>().expect("list");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].value.replicas, 3);

    let index2 = put(&store, &node("n1", "alpha2"), Expect::Version(index))
        .await
        .expect("update at current version");
    assert!(index2 > index);
    let n1 = store.get::<Node>("n1").expect("get").expect("n1");
    assert_eq!((n1.version, n1.value.name.as_str()), (index2, "alpha2"));
    // The untouched object keeps its version.
    let n2 = store.get::<Node>("n2").expect("get").expect("n2");
    assert_eq!(n2.version, index);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn failed_expectation_writes_nothing_of_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    let v1 = put(&store, &node("n1", "alpha"), Expect::Absent)
        .await
        .expect("create");

    // Absent on an existing object.
    let err = put(&store, &node("n1", "other"), Expect::Absent)
        .await
        .expect_err("exists");
    match &err {
        StoreError::Conflict {
            table,
            id,
            expected,
            actual,
        } => {
            assert_eq!((table.as_str(), id.as_str()), ("nodes", "n1"));
            assert_eq!(*expected, Expect::Absent);
            assert_eq!(*actual, Some(v1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("nodes/n1"), "{text}");
    assert!(text.contains(&format!("version {v1}")), "{text}");

    // A stale version in the last op of a batch: the earlier ops are not
    // written either.
    let mut batch = Batch::default();
    batch
        .put(&node("n2", "beta"), Expect::Absent)
        .delete::<Node>("n1", Expect::Any)
        .put(&node("n1", "stale"), Expect::Version(v1 + 100));
    let err = store.commit(batch).await.expect_err("stale version");
    assert!(
        matches!(
            &err,
            StoreError::Conflict {
                actual: None,
                expected: Expect::Version(_),
                ..
            }
        ),
        "the delete earlier in the batch counts for the check: {err:?}"
    );
    assert_eq!(store.get::<Node>("n2").expect("get"), None);
    let n1 = store.get::<Node>("n1").expect("get").expect("n1 kept");
    assert_eq!((n1.version, n1.value.name.as_str()), (v1, "alpha"));

    // Version on an absent object.
    let err = put(&store, &node("n9", "x"), Expect::Version(v1))
        .await
        .expect_err("absent");
    assert!(err.to_string().contains("found no object"), "{err}");
    assert_eq!(store.list::<Node>().expect("list").len(), 1);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn delete_removes_an_object_and_checks_its_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    let v1 = put(&store, &node("n1", "alpha"), Expect::Absent)
        .await
        .expect("create");

    let mut stale = Batch::default();
    stale.delete::<Node>("n1", Expect::Version(v1 - 1));
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.get::<Node>("n1").expect("get").is_some());

    let mut delete = Batch::default();
    delete.delete::<Node>("n1", Expect::Version(v1));
    store.commit(delete).await.expect("delete");
    assert_eq!(store.get::<Node>("n1").expect("get"), None);
    assert!(store.list::<Node>().expect("list").is_empty());

    // Deleting an absent object without a check is a no-op, with a check it
    // is a conflict.
    let mut again = Batch::default();
    again.delete::<Node>("n1", Expect::Any);
    store.commit(again).await.expect("no-op delete");
    let mut checked = Batch::default();
    checked.delete::<Node>("n1", Expect::Version(v1));
    assert!(matches!(
        store.commit(checked).await,
        Err(StoreError::Conflict { actual: None, .. })
    ));
    store.shutdown().await.expect("shutdown");
}

/// Applies a watch to a model of the table, checking order on the way.
fn follow(
    model: &mut BTreeMap<String, (u64, String)>,
    last: &mut u64,
    index: u64,
    changes: &[Change],
) {
    assert!(
        index > *last,
        "event {index} after {last}: gap-free order broken"
    );
    *last = index;
    for change in changes {
        match change {
            Change::Put { .. } => {
                let n = change
                    .decode::<Node>()
                    .expect("nodes only")
                    .expect("decodes");
                assert_eq!(n.version, index);
                model.insert(n.value.id.clone(), (n.version, n.value.name));
            }
            Change::Delete { id, .. } => {
                assert!(change.decode::<Node>().is_none());
                model.remove(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_a_snapshot_then_every_later_commit_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    for i in 0..10 {
        put(&store, &node(&format!("n{i}"), "seed"), Expect::Any)
            .await
            .expect("seed");
    }

    const ROUNDS: usize = 150;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..ROUNDS {
                let mut batch = Batch::default();
                batch.put(
                    &node(&format!("n{}", i % 13), &format!("r{i}")),
                    Expect::Any,
                );
                if i % 7 == 0 {
                    batch.delete::<Node>(&format!("n{}", (i + 3) % 13), Expect::Any);
                }
                last = store.commit(batch).await.expect("commit");
            }
            last
        })
    };

    // Watches taken at different points while the writer runs.
    let mut watches = Vec::new();
    for _ in 0..5 {
        watches.push(store.watch().expect("watch"));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let last = writer.await.expect("writer");
    let expected: BTreeMap<String, (u64, String)> = store
        .list::<Node>()
        .expect("list")
        .into_iter()
        .map(|n| (n.value.id.clone(), (n.version, n.value.name)))
        .collect();

    let indexes: Vec<u64> = watches.iter().map(|w| w.snapshot.index()).collect();
    assert!(indexes.windows(2).all(|w| w[0] <= w[1]), "{indexes:?}");
    for mut watch in watches {
        let mut model: BTreeMap<String, (u64, String)> = watch
            .snapshot
            .list::<Node>()
            .expect("snapshot list")
            .into_iter()
            .map(|n| (n.value.id.clone(), (n.version, n.value.name)))
            .collect();
        assert!(model.values().all(|(v, _)| *v <= watch.snapshot.index()));
        let mut seen = watch.snapshot.index();
        while seen < last {
            let event = tokio::time::timeout(Duration::from_secs(5), watch.events.recv())
                .await
                .expect("event in time")
                .expect("no lag");
            follow(&mut model, &mut seen, event.index, &event.changes);
        }
        assert_eq!(model, expected, "snapshot + events == final state");
    }
    store.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_snapshot_reads_objects_and_events_close_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    let v = put(&store, &node("n1", "alpha"), Expect::Absent)
        .await
        .expect("create");
    let mut watch = store.watch().expect("watch");
    assert!(watch.snapshot.index() >= v);
    let got = watch.snapshot.get::<Node>("n1").expect("get").expect("n1");
    assert_eq!(got.version, v);
    assert_eq!(watch.snapshot.get::<Service>("n1").expect("get"), None);

    let mut batch = Batch::default();
    batch.delete::<Node>("n1", Expect::Version(v));
    let index = store.commit(batch).await.expect("delete");
    let event = watch.events.recv().await.expect("delete event");
    assert_eq!(event.index, index);
    assert!(
        matches!(&event.changes[..], [Change::Delete { table, id }] if table == "nodes" && id == "n1")
    );

    store.shutdown().await.expect("shutdown");
    assert!(matches!(watch.events.recv().await, Err(RecvError::Closed)));
    assert!(matches!(store.get::<Node>("n1"), Err(StoreError::Shutdown)));
    assert!(matches!(store.watch(), Err(StoreError::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_store_keeps_data_and_versions_and_leads_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    let v1 = put(&store, &node("n1", "alpha"), Expect::Absent)
        .await
        .expect("n1");
    let v2 = put(&store, &node("n2", "beta"), Expect::Absent)
        .await
        .expect("n2");
    store.shutdown().await.expect("shutdown");
    drop(store);

    let started = Instant::now();
    let store = Store::open(dir.path(), 1, "127.0.0.1:4242")
        .await
        .expect("reopen");
    store
        .wait_leader(Duration::from_secs(1))
        .await
        .expect("leader again without bootstrap");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "took {took:?} to lead again"
    );

    assert_eq!(
        store.get::<Node>("n1").expect("get"),
        Some(Versioned {
            version: v1,
            value: node("n1", "alpha")
        })
    );
    assert_eq!(
        store.get::<Node>("n2").expect("get").map(|n| n.version),
        Some(v2)
    );
    assert!(matches!(
        store.bootstrap().await,
        Err(StoreError::AlreadyInitialized)
    ));
    let v3 = put(&store, &node("n1", "alpha2"), Expect::Version(v1))
        .await
        .expect("write after restart");
    assert!(v3 > v2);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bootstrap_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    assert!(matches!(
        store.bootstrap().await,
        Err(StoreError::AlreadyInitialized)
    ));
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unbootstrapped_store_has_no_leader_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 1, "127.0.0.1:4242")
        .await
        .expect("open");
    assert!(!store.is_leader());
    assert!(matches!(
        store.wait_leader(Duration::from_millis(700)).await,
        Err(StoreError::LeaderTimeout(_))
    ));
    let err = put(&store, &node("n1", "alpha"), Expect::Any)
        .await
        .expect_err("no leader");
    assert!(matches!(err, StoreError::NotLeader), "{err:?}");
    store.shutdown().await.expect("shutdown");
}

async fn assert_corrupt(dir: &Path) {
    let err = match Store::open(dir, 1, "127.0.0.1:4242").await {
        Ok(_) => panic!("a damaged store must not open"),
        Err(err) => err,
    };
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let file = dir.join("store.redb");
    assert!(
        text.contains(&file.display().to_string()),
        "names the file: {text}"
    );
    assert!(text.contains("restore"), "says what to do: {text}");
}

#[tokio::test]
async fn garbled_file_is_reported_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("store.redb"), garbage).expect("write garbage");
    assert_corrupt(dir.path()).await;
}

#[tokio::test]
async fn truncated_file_is_reported_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bootstrapped(dir.path()).await;
    put(&store, &node("n1", "alpha"), Expect::Absent)
        .await
        .expect("n1");
    store.shutdown().await.expect("shutdown");
    drop(store);

    let path = dir.path().join("store.redb");
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len / 3).expect("truncate");
    drop(file);
    assert_corrupt(dir.path()).await;
}

#[tokio::test]
async fn file_garbled_in_the_middle_is_reported_corrupt_not_a_panic() {
    let mut corrupt = 0;
    for (at, seed) in [(0.1f64, 1u32), (0.3, 2), (0.5, 3), (0.7, 4), (0.9, 5)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = bootstrapped(dir.path()).await;
        for i in 0..50 {
            put(
                &store,
                &node(&format!("n{i}"), &"x".repeat(200)),
                Expect::Any,
            )
            .await
            .expect("put");
        }
        store.shutdown().await.expect("shutdown");
        drop(store);

        let path = dir.path().join("store.redb");
        let mut bytes = std::fs::read(&path).expect("read");
        let start = (bytes.len() as f64 * at) as usize;
        for (i, b) in bytes[start..].iter_mut().enumerate().take(8192) {
            *b = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8;
        }
        std::fs::write(&path, bytes).expect("write");
        // Garbage in unused pages may go unnoticed; garbage in live ones must
        // be reported, never panic.
        match Store::open(dir.path(), 1, "127.0.0.1:4242").await {
            Ok(store) => {
                store
                    .list::<Node>()
                    .expect("an undetected garble left the data readable");
                store.shutdown().await.expect("shutdown");
            }
            Err(StoreError::Corrupt(text)) => {
                assert!(text.contains(&path.display().to_string()), "{text}");
                corrupt += 1;
            }
            Err(other) => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert!(corrupt > 0, "no garble was detected");
}

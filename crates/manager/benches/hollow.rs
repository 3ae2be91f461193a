//! Scheduler scale with HOLLOW nodes: simulated node records in a real store (no agents,
//! no containers), a service with many replicas, and the real orchestrator and scheduler
//! placing every task and committing it through Raft. Run: `cargo bench -p shoal-manager
//! --bench hollow` (args: NODES TASKS). Prints a Markdown table row set.

use shoal_manager::orchestrator;
use shoal_proto::objects::{
    Availability, ContainerSpec, Node, NodeDescription, NodeRole, NodeState, Placement, Resources,
    Service, ServiceMode, ServiceSpec, Task, TaskState,
};
use shoal_store::{Batch, Expect, Store};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let nodes: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let tasks: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, "127.0.0.1:4377").await.expect("store");
        store.bootstrap().await.expect("bootstrap");
        store.wait_leader(Duration::from_secs(5)).await.expect("leader");

        // Hollow nodes: records only, Ready and active, 4 CPUs and 16 GiB each, in 3 zones.
        let mut b = Batch::default();
        for i in 0..nodes {
            let mut labels = std::collections::HashMap::new();
            labels.insert("zone".to_string(), format!("z{}", i % 3));
            let n = Node {
                id: format!("hollow{i:019}"),
                role: NodeRole::Worker as i32,
                availability: Availability::Active as i32,
                state: NodeState::Ready as i32,
                labels,
                description: Some(NodeDescription {
                    hostname: format!("hollow-{i}"),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    cpus: 4,
                    memory_bytes: 16 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            };
            b.put(&n, Expect::Absent);
        }
        store.commit(b).await.expect("nodes");
        let rss_before = rss_kib();

        let service = Service {
            id: "hollowservice0000000000000".into(),
            spec: Some(ServiceSpec {
                name: "hollow".into(),
                mode: ServiceMode::Replicated as i32,
                replicas: tasks,
                container: Some(ContainerSpec { image: "busybox".into(), ..Default::default() }),
                reservations: Some(Resources { memory_bytes: 64 << 20, ..Default::default() }),
                placement: Some(Placement { spread: vec!["node.labels.zone".into()], ..Default::default() }),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        };
        let (view, watch) = shoal_manager::view::ClusterView::start(&store).expect("view");
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(view.clone().run(store.clone(), watch, cancel.clone()));
        let started = Instant::now();
        let mut b = Batch::default();
        b.put(&service, Expect::Absent);
        let index = store.commit(b).await.expect("service");
        view.wait_index(index, Duration::from_secs(10)).await.expect("the view has the service");
        let mut passes = 0;
        loop {
            passes += 1;
            let (wrote, _) = orchestrator::reconcile_once(&store, &view).await.expect("reconcile");
            if !wrote {
                break;
            }
        }
        let took = started.elapsed();
        let all = store.list::<Task>().expect("tasks");
        let assigned = all
            .iter()
            .filter(|t| !t.value.node_id.is_empty() && t.value.status.as_ref().map(|s| s.state) == Some(TaskState::Assigned as i32))
            .count();
        let rss_after = rss_kib();
        println!("| hollow nodes | tasks placed and committed | time | tasks/s | passes | process RSS before / after |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {nodes} | {assigned} of {tasks} | {:.2} s | {:.0} | {passes} | {:.0} MiB / {:.0} MiB |",
            took.as_secs_f64(),
            assigned as f64 / took.as_secs_f64(),
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0
        );
        store.shutdown().await.ok();
    });
}

//! What authorization and the audit log add to one control call, measured on the work
//! itself: there is no unaudited, unchecked path to compare against (security is not
//! configurable downward), so this times exactly what `ControlService::audited` adds
//! around a handler, on a real store's view and a real audit file.
//!
//! Per call: the user's record checked (`check_user_serial`, as for a forwarded user),
//! the role (`Limits::check_role`), the scope and name (`may_name`) and host reach of a
//! service spec; then the audit work: the request encoded and read by its schema with
//! secrets redacted, the record filled, room checked (`admit`) and the line written.
//!
//! Run: `cargo bench -p shoal-manager --bench authz_audit` (args: ITERATIONS). The audit
//! file goes to `$AUDIT_BENCH_DIR` (default: a temporary directory under /var/tmp, on
//! disk). Prints Markdown rows.

use prost::Message;
use shoal_manager::audit::{self, AuditLog, Record};
use shoal_manager::controlapi::roles::{host_reach, Limits};
use shoal_proto::control::{CreateServiceRequest, ListServicesRequest};
use shoal_proto::objects::{ContainerSpec, ServiceSpec, User, UserCert, UserRole};
use shoal_store::{Batch, Expect, Store};
use std::time::{Duration, Instant};

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, "127.0.0.1:4377")
            .await
            .expect("store");
        store.bootstrap().await.expect("bootstrap");
        store
            .wait_leader(Duration::from_secs(5))
            .await
            .expect("leader");
        let user = User {
            name: "alice".into(),
            role: UserRole::Deployer as i32,
            scopes: vec!["shop".into()],
            certs: vec![UserCert {
                serial: "4f00aa".into(),
                not_after_unix: i64::MAX / 2,
                issued_at_unix: 0,
            }],
            ..Default::default()
        };
        let mut b = Batch::default();
        b.put(&user, Expect::Absent);
        store.commit(b).await.expect("user");
        let (view, _watch) = shoal_manager::view::ClusterView::start(&store).expect("view");
        let access = shoal_manager::security::access::AccessList::start(&view.current());

        let audit_root = std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
        let audit_dir = tempfile::tempdir_in(&audit_root).expect("audit dir");
        let log = AuditLog::open(audit_dir.path()).expect("audit log");

        let spec = ServiceSpec {
            name: "shop_web".into(),
            labels: [(shoal_proto::STACK_LABEL.to_string(), "shop".to_string())].into(),
            container: Some(ContainerSpec {
                image: "registry.example/shop/web:1.4".into(),
                env: vec!["MODE=prod".into(), "DB_PASSWORD=hunter2".into()],
                args: vec!["--port".into(), "8080".into()],
                ..Default::default()
            }),
            replicas: 3,
            ..Default::default()
        };
        let create = CreateServiceRequest {
            spec: Some(spec.clone()),
        };
        let list = ListServicesRequest {};

        println!("| call | authorization p50 / p99 | audit p50 / p99 | both p50 / p99 |");
        println!("|---|---|---|---|");
        for (call, write) in [("CreateService", true), ("ListServices", false)] {
            let (mut authz, mut aud, mut both) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                let t0 = Instant::now();
                let grant = access.check_user_serial("alice", "4f00aa").expect("user");
                let limits = Limits {
                    name: "alice".into(),
                    grant,
                };
                limits.check_role(call).expect("role");
                if write {
                    limits
                        .may_name(call, "service", &spec.name, &spec.labels)
                        .expect("scope");
                    assert!(host_reach(&spec, &[]).is_none());
                }
                let t1 = Instant::now();
                let body = if write {
                    create.encode_to_vec()
                } else {
                    list.encode_to_vec()
                };
                let request = audit::request_json(call, &body);
                log.admit().expect("room");
                let rec = Record {
                    time: audit::now(),
                    audit_id: audit::new_id(),
                    principal: "user alice".into(),
                    serial: "4f00aa".into(),
                    peer: "10.0.0.9:51234".into(),
                    method: call.into(),
                    kind: "service".into(),
                    object: if write {
                        "shop_web".into()
                    } else {
                        String::new()
                    },
                    stack: if write { "shop".into() } else { String::new() },
                    decision: "allow",
                    rule: "role deployer (scope shop) may make it".into(),
                    outcome: "ok".into(),
                    latency_us: i as u64 % 900,
                    request: if write { request } else { None },
                    ..Default::default()
                };
                log.write(&rec, 64 << 20, 10).expect("write");
                let t2 = Instant::now();
                authz.push((t1 - t0).as_nanos() as u64);
                aud.push((t2 - t1).as_nanos() as u64);
                both.push((t2 - t0).as_nanos() as u64);
            }
            println!(
                "| {call} | {:.1} / {:.1} µs | {:.1} / {:.1} µs | {:.1} / {:.1} µs |",
                pct(&mut authz, 0.5),
                pct(&mut authz, 0.99),
                pct(&mut aud, 0.5),
                pct(&mut aud, 0.99),
                pct(&mut both, 0.5),
                pct(&mut both, 0.99),
            );
        }
        let bytes = std::fs::metadata(audit_dir.path().join(audit::FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "\n{} records, {:.0} bytes each on average ({} iterations per call)",
            2 * n,
            bytes as f64 / (2 * n) as f64,
            n
        );
    });
}

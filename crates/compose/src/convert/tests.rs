use super::*;
use crate::{load, Source};

fn plan_of(text: &str, dir: &Path) -> Result<Plan, Error> {
    let env = |n: &str| match n {
        "FROM_SHELL" => Some("shell".to_string()),
        "HOME" => Some("/home/u".to_string()),
        _ => None,
    };
    let l = load(
        &[Source {
            name: "stack.yml".into(),
            text: text.into(),
        }],
        dir,
        &env,
        None,
        true,
    )?;
    plan(&l, "app", &env)
}

fn svc<'a>(p: &'a Plan, short: &str) -> &'a ServiceSpec {
    &p.services.iter().find(|s| s.short == short).unwrap().spec
}

#[test]
fn a_three_service_application() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("redis.conf"), "appendonly yes\n").unwrap();
    std::fs::write(dir.path().join("pw.txt"), "s3cret").unwrap();
    std::fs::write(dir.path().join("web.env"), "# c\nA=1\nB=2\nFROM_SHELL\n").unwrap();
    let text = r#"
version: "3.8"
services:
  proxy:
    image: app/nginx
    ports: ["8080:80"]
    depends_on: [web]
  web:
    image: app/web
    command: sh -c 'exec httpd -f -p 80'
    env_file: web.env
    environment:
      B: "3"
      REDIS: db
    deploy:
      replicas: 2
      update_config: {parallelism: 1, delay: 1s, order: start-first}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}
    depends_on:
      db: {condition: service_healthy}
  db:
    image: app/redis
    entrypoint: ["redis-server", "/etc/redis.conf"]
    configs:
      - source: redis_conf
        target: /etc/redis.conf
        mode: 0440
    secrets: [db_password]
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 1s
      timeout: 500ms
      retries: 5
      start_period: 1m30s
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 256M, pids: 100}
        reservations: {memory: 64M}
      placement:
        constraints: [node.role==worker]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 1
configs:
  redis_conf: {file: ./redis.conf}
secrets:
  db_password: {file: pw.txt}
"#;
    let p = plan_of(text, dir.path()).unwrap();
    let names: Vec<&str> = p.services.iter().map(|s| s.short.as_str()).collect();
    assert_eq!(names, ["db", "web", "proxy"], "dependencies first");
    assert_eq!(p.networks.len(), 1);
    assert_eq!(p.networks[0].name, "app_default");
    assert_eq!(p.networks[0].spec.labels[NAMESPACE_LABEL], "app");
    assert_eq!(p.secrets[0].name, "app_db_password");
    assert_eq!(p.secrets[0].data, b"s3cret");
    assert_eq!(p.configs[0].name, "app_redis_conf");

    let web = svc(&p, "web");
    assert_eq!(web.name, "app_web");
    assert_eq!(web.replicas, 2);
    let c = web.container.as_ref().unwrap();
    assert_eq!(c.args, ["sh", "-c", "exec httpd -f -p 80"]);
    assert_eq!(c.env, ["A=1", "B=3", "FROM_SHELL=shell", "REDIS=db"]);
    assert_eq!(c.networks[0].target, "app_default");
    assert_eq!(c.networks[0].aliases, ["web"]);
    assert_eq!(c.labels[NAMESPACE_LABEL], "app");
    assert_eq!(web.labels[NAMESPACE_LABEL], "app");
    assert_eq!(web.labels[IMAGE_LABEL], "app/web");
    let u = web.update.as_ref().unwrap();
    assert_eq!(
        (u.parallelism, u.delay_ms, u.order),
        (Some(1), 1000, UpdateOrder::StartFirst as i32)
    );
    let r = web.restart.as_ref().unwrap();
    assert_eq!(
        (r.condition, r.delay_ms, r.max_attempts),
        (RestartCondition::OnFailure as i32, Some(2000), 3)
    );
    let deps = &p.services[1].depends_on;
    assert_eq!(deps, &[("app_db".to_string(), Condition::Healthy)]);

    let db = svc(&p, "db");
    let c = db.container.as_ref().unwrap();
    assert_eq!(c.command, ["redis-server", "/etc/redis.conf"]);
    assert_eq!(c.configs[0].secret_name, "app_redis_conf");
    assert_eq!(c.configs[0].target, "/etc/redis.conf");
    assert_eq!(c.configs[0].mode, Some(0o440));
    assert_eq!(c.secrets[0].secret_name, "app_db_password");
    assert_eq!(c.secrets[0].target, "db_password");
    let h = c.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, ["CMD", "redis-cli", "ping"]);
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (1000, 500, 5, 90_000)
    );
    let l = c.limits.as_ref().unwrap();
    assert_eq!(
        (l.nano_cpus, l.memory_bytes, l.pids),
        (500_000_000, 256 << 20, 100)
    );
    assert_eq!(db.reservations.as_ref().unwrap().memory_bytes, 64 << 20);
    let pl = db.placement.as_ref().unwrap();
    assert_eq!(pl.constraints, ["node.role==worker"]);
    assert_eq!(pl.spread, ["node.labels.zone"]);
    assert_eq!(pl.max_replicas_per_node, 1);

    let proxy = svc(&p, "proxy");
    assert_eq!(proxy.ports.len(), 1);
    assert_eq!(
        (proxy.ports[0].published, proxy.ports[0].target),
        (8080, 80)
    );
    assert_eq!(proxy.replicas, 1);
}

#[test]
fn names_externals_networks_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
services:
  a:
    image: busybox
    networks:
      front: {aliases: [api]}
      outside: {}
    deploy: {mode: global}
    restart: on-failure:4
  b:
    image: busybox
    networks: [default]
    deploy: {mode: replicated-job, replicas: 3}
  c:
    image: busybox
    volumes: ["/srv/data:/data:ro", "./rel:/rel", "~/h:/h", {type: tmpfs, target: /t, tmpfs: {size: 1m}}]
    tmpfs: ["/run:size=64k"]
    ports: ["9000-9001:8000-8001/udp", {target: 53, published: 53, protocol: udp, mode: host}, "7000"]
    init: false
    read_only: true
    stop_grace_period: 1m
    cap_add: [NET_ADMIN]
networks:
  front: {name: shared-front, driver_opts: {mtu: "1400"}, ipam: {config: [{subnet: 10.9.0.0/24}]}}
  outside: {external: true}
  unused: {}
secrets:
  ext: {external: {name: prod-key}}
"#;
    let p = plan_of(text, dir.path()).unwrap();
    let a = svc(&p, "a");
    assert_eq!(a.mode, ServiceMode::Global as i32);
    assert_eq!(a.replicas, 0);
    let r = a.restart.as_ref().unwrap();
    assert_eq!(
        (r.condition, r.max_attempts),
        (RestartCondition::OnFailure as i32, 4)
    );
    let nets = &a.container.as_ref().unwrap().networks;
    assert_eq!(nets[0].target, "outside");
    assert_eq!(nets[1].target, "shared-front");
    assert_eq!(nets[1].aliases, ["a", "api"]);
    let b = svc(&p, "b");
    assert_eq!(
        (b.mode, b.replicas, b.max_concurrent),
        (ServiceMode::ReplicatedJob as i32, 3, 3)
    );
    let mut names: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["app_default", "outside", "shared-front"],
        "unused networks are not created"
    );
    let front = p
        .networks
        .iter()
        .find(|n| n.name == "shared-front")
        .unwrap();
    assert_eq!(front.spec.subnet, "10.9.0.0/24");
    assert_eq!(front.spec.options["mtu"], "1400");
    assert!(
        p.networks
            .iter()
            .find(|n| n.name == "outside")
            .unwrap()
            .external
    );
    assert_eq!(p.secrets[0].name, "prod-key");
    assert!(p.secrets[0].external);

    let c = svc(&p, "c").container.clone().unwrap();
    let m: Vec<(String, String, String, bool, u64)> = c
        .mounts
        .iter()
        .map(|m| {
            (
                m.r#type.clone(),
                m.source.clone(),
                m.target.clone(),
                m.readonly,
                m.size_bytes,
            )
        })
        .collect();
    assert_eq!(
        m[0],
        ("tmpfs".into(), "".into(), "/run".into(), false, 64 << 10)
    );
    assert_eq!(
        m[1],
        ("bind".into(), "/srv/data".into(), "/data".into(), true, 0)
    );
    assert_eq!(m[2].1, dir.path().join("./rel").display().to_string());
    assert_eq!(m[3].1, "/home/u/h");
    assert_eq!(
        m[4],
        ("tmpfs".into(), "".into(), "/t".into(), false, 1 << 20)
    );
    let ports: Vec<(u32, u32, &str, &str)> = svc(&p, "c")
        .ports
        .iter()
        .map(|p| (p.published, p.target, p.protocol.as_str(), p.mode.as_str()))
        .collect();
    assert_eq!(
        ports,
        [
            (0, 7000, "tcp", "ingress"),
            (53, 53, "udp", "host"),
            (9000, 8000, "udp", "ingress"),
            (9001, 8001, "udp", "ingress")
        ]
    );
    assert!(c.no_init && c.readonly_rootfs);
    assert_eq!(c.stop_grace_period_ms, 60_000);
    assert_eq!(c.cap_add, ["CAP_NET_ADMIN"]);
}

#[test]
fn volumes_are_named_for_the_stack_unless_external_or_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
services:
  db:
    image: x
    volumes:
      - data:/var/lib/db
      - {type: volume, source: shared, target: /shared, read_only: true, volume: {nocopy: true}}
      - named:/n
      - /anon
volumes:
  data:
    labels: {tier: db}
  shared: {external: true}
  named: {name: exact-name}
"#;
    let p = plan_of(text, dir.path()).unwrap();
    let m = &svc(&p, "db").container.as_ref().unwrap().mounts;
    let view: Vec<_> = m
        .iter()
        .map(|m| {
            (
                m.r#type.as_str(),
                m.source.as_str(),
                m.target.as_str(),
                m.readonly,
                m.volume_nocopy,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("volume", "app_data", "/var/lib/db", false, false),
            ("volume", "shared", "/shared", true, true),
            ("volume", "exact-name", "/n", false, false),
            ("volume", "", "/anon", false, false),
        ]
    );
    assert_eq!(
        m[0].volume_labels.get("tier").map(String::as_str),
        Some("db")
    );
    assert_eq!(
        m[0].volume_labels
            .get("com.docker.stack.namespace")
            .map(String::as_str),
        Some("app")
    );
    assert!(
        m[1].volume_labels.is_empty(),
        "an external volume gets no labels"
    );
    let e = plan_of(
        "services:\n  a:\n    image: x\nvolumes:\n  v: {driver: nfs}\n",
        dir.path(),
    )
    .unwrap_err()
    .0;
    assert!(e.contains("driver \"nfs\" is not supported"), "{e}");
}

#[test]
fn process_options_reach_the_container_spec() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
services:
  a:
    image: x
    dns: 10.0.0.2
    dns_search: [corp.example, example]
    extra_hosts: ["db.local:10.0.0.5", "v6:fd00::1"]
    sysctls: [net.core.somaxconn=1024]
    ulimits:
      nproc: 512
      nofile: {soft: 1024, hard: 2048}
    stop_signal: quit
    tty: true
    stdin_open: true
    tmpfs: ["/run:size=64m,mode=1770"]
  b:
    image: x
    extra_hosts: {db.local: 10.0.0.6}
    sysctls: {kernel.shmmax: "1000000"}
"#;
    let p = plan_of(text, dir.path()).unwrap();
    let c = svc(&p, "a").container.clone().unwrap();
    assert_eq!(c.dns_nameservers, ["10.0.0.2"]);
    assert_eq!(c.dns_search, ["corp.example", "example"]);
    assert_eq!(c.hosts, ["10.0.0.5 db.local", "fd00::1 v6"]);
    assert_eq!(
        c.sysctls.get("net.core.somaxconn").map(String::as_str),
        Some("1024")
    );
    let u: Vec<_> = c
        .ulimits
        .iter()
        .map(|u| (u.name.as_str(), u.soft, u.hard))
        .collect();
    assert_eq!(u, [("nproc", 512, 512), ("nofile", 1024, 2048)]);
    assert_eq!(c.stop_signal, "SIGQUIT");
    assert!(c.tty);
    assert_eq!(c.mounts[0].tmpfs_mode, 0o1770);
    assert_eq!(
        p.warnings,
        ["Ignoring options shoal does not use: stdin_open\n"]
    );
    let b = svc(&p, "b").container.clone().unwrap();
    assert_eq!(b.hosts, ["10.0.0.6 db.local"]);
    assert_eq!(
        b.sysctls.get("kernel.shmmax").map(String::as_str),
        Some("1000000")
    );
}

#[test]
fn errors_name_the_service_the_key_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("services:\n  a:\n    command: x\n", "invalid image reference for service a: no image specified"),
        ("services:\n  a:\n    image: x\n    networks: [nope]\n", "services.a.networks: undefined network \"nope\" (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    secrets: [nope]\n", "services.a.secrets.0: undefined secret \"nope\" (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    deploy: {replicas: lots}\n", "services.a.deploy.replicas: must be a whole number, 0 or more (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    deploy: {mode: global, replicas: 2}\n", "services.a.deploy: replicas can only be used with replicated or replicated-job mode (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    deploy: {mode: daemon}\n", "services.a.deploy: unknown mode: daemon (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    depends_on: [b]\n", "services.a.depends_on: unknown service \"b\" (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n", "depends_on makes a cycle among the services a, b"),
        ("services:\n  a:\n    image: x\n    healthcheck: {test: [CMD, x], disable: true}\n", "services.a.healthcheck: test and disable can't be set at the same time (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    deploy: {restart_policy: {condition: sometimes}}\n", "services.a.deploy.restart_policy.condition: \"sometimes\" is not none, on-failure or any (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    dns: one.one\n", "services.a: --dns \"one.one\" is not an IP address (stack.yml, line 3)"),
        ("services:\n  a:\n    image: x\n    sysctls: {kernel.panic: 1}\n", "services.a: --sysctl: sysctl kernel.panic is refused: it is not in the namespaced, safe set a task may change (kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni, kernel.shm_rmid_forced, fs.mqueue.*, and, for a task with a network namespace of its own, net.ipv4.*, net.ipv6.*, net.core.somaxconn and net.unix.max_dgram_qlen) (stack.yml, line 3)"),
        ("services:\n  a:\n    image: x\n    ulimits: {nofile: {soft: 10}}\n", "services.a.ulimits.nofile: hard is required (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    ulimits:\n      nofile: {soft: 20, hard: 10}\n", "services.a.ulimits.nofile: ulimit nofile: the soft limit 20 is above the hard limit 10 (stack.yml, line 5)"),
        ("services:\n  a:\n    image: x\n    stop_signal: SIGNOPE\n", "services.a.stop_signal: stop signal \"SIGNOPE\" is not a signal name like SIGINT or a number like 2 (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    extra_hosts: [\"db:nowhere\"]\n", "services.a.extra_hosts: host entry \"nowhere db\": \"nowhere\" is not an IP address (give HOSTNAME:IP) (stack.yml, line 4)"),
        ("services:\n  a:\n    image: x\n    stop_grace_period: soon\n", "services.a.stop_grace_period: \"soon\" is not a duration like 10s, 1m30s or 500ms (stack.yml, line 4)"),
        ("secrets:\n  s: {labels: {a: b}}\n", "secrets.s: needs file: (the data) or external: true (one that exists already) (stack.yml, line 2)"),
        ("networks:\n  n: {driver: bridge}\n", "networks.n.driver: driver \"bridge\" is not supported: shoal's networks are overlay networks (stack.yml, line 2)"),
        ("services:\n  a:\n    image: x\n    volumes: [data:/d]\n", "services.a.volumes.0: undefined volume \"data\" (stack.yml, line 4)"),
    ];
    for (text, want) in cases {
        let got = plan_of(text, dir.path()).err().map(|e| e.0);
        assert_eq!(got.as_deref(), Some(want), "for {text}");
    }
    assert_eq!(
        plan(
            &load(
                &[Source {
                    name: "s".into(),
                    text: "services: {}\n".into()
                }],
                dir.path(),
                &|_| None,
                None,
                true
            )
            .unwrap(),
            "bad name!",
            &|_| None
        )
        .err()
        .unwrap()
        .0,
        "invalid stack name: \"bad name!\""
    );
}

#[test]
fn durations_and_sizes() {
    assert_eq!(go_duration_ms("1h2m3.5s"), Some(3_723_500));
    assert_eq!(go_duration_ms("500ms"), Some(500));
    assert_eq!(go_duration_ms("0"), Some(0));
    assert_eq!(go_duration_ms("10"), None);
    assert_eq!(go_duration_ms("1d"), None);
    assert_eq!(parse_bytes("512M"), Some(512 << 20));
    assert_eq!(parse_bytes("1gb"), Some(1 << 30));
    assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
    assert_eq!(parse_bytes("lots"), None);
}

//! The testbed: real `shoal daemon` processes, each in its own network namespace (with
//! its own address) and UTS namespace (its own hostname), joined by a bridge that lives
//! in a namespace of its own, so test traffic never touches the host's network.
//!
//! ```text
//!   ns shoal-<tag>-hub:  bridge sb<tag> ── veth ──┬── ns shoal-<tag>-1: eth0 10.x.y.1
//!                                               ├── ns shoal-<tag>-2: eth0 10.x.y.2
//!                                               └── ...
//! ```
//!
//! Everything made here is removed on drop, also when the test panics; a testbed left
//! behind by a killed test process is removed by the next one that starts.

pub mod app;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "shoal-";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cmd(args: &[&str]) -> Result<String> {
    run(Command::new(args[0]).args(&args[1..]))
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// What a CLI call printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// What a run of the CLI gave, or why it could not run.
    fn from_run(out: std::io::Result<Output>) -> CliOutput {
        match out {
            Ok(o) => o.into(),
            Err(e) => CliOutput {
                success: false,
                stdout: String::new(),
                stderr: format!("cannot run shoal: {e}"),
            },
        }
    }
}

impl From<Output> for CliOutput {
    fn from(o: Output) -> Self {
        CliOutput {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    host_veth: String,
    /// The node's mount namespace, kept (bind-mounted here) across daemon restarts as
    /// a machine keeps its mounts: containers' root filesystems and the bind mounts
    /// that keep tasks' network namespaces stay in it.
    mnt_ns: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// `ip:4377`, the address other nodes reach this one at.
    pub fn addr(&self) -> String {
        format!("{}:4377", self.ip)
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct Testbed {
    pub tag: String,
    hub: String,
    bridge: String,
    subnet: (u8, u8),
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Extra arguments given to every daemon.
    pub daemon_args: Vec<String>,
    /// Environment (`NAME=value`) given to one node's daemon, by node index.
    pub node_env: std::collections::HashMap<usize, Vec<String>>,
    /// Namespaces on the bridge with no daemon: users' machines (`add_workstation`).
    pub workstations: Vec<Workstation>,
}

/// A user's machine: a network namespace on the test's bridge with no shoal daemon, and
/// a home directory of its own (where `shoal login` keeps the user's key).
pub struct Workstation {
    pub netns: String,
    pub ip: String,
    pub home: PathBuf,
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces left by test processes that no longer exist.
fn sweep_stale() {
    // Testbed directories whose process died without cleaning up: their mounts (the
    // nodes' mount namespaces) first, then the files.
    if let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) {
        for d in dirs.flatten() {
            let path = d.path();
            let owner = std::fs::read_to_string(path.join("owner"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if !d
                .file_name()
                .to_string_lossy()
                .starts_with("shoal-testbed-")
                || owner.is_none_or(pid_alive)
            {
                continue;
            }
            for m in std::fs::read_dir(path.join("ns"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = cmd(&["umount", "-l", &m.path().display().to_string()]);
            }
            let _ = cmd(&["umount", "-l", &path.join("ns").display().to_string()]);
            let _ = cmd(&["umount", "-l", &path.display().to_string()]);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(tag) = rest.split('-').next() else {
            continue;
        };
        // The tag starts with the creating process's pid, in hex, before an 'x'.
        let Some(pid) = tag
            .split('x')
            .next()
            .and_then(|p| i32::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            kill_ns_processes(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The cgroup under which a testbed's containers live (one sub-cgroup per node).
pub fn cgroup_root(tag: &str) -> String {
    format!("shoal-{tag}")
}

/// Removes a cgroup subtree (its processes must be gone) in every hierarchy.
fn remove_cgroup_tree(rel: &str) {
    fn rm(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        rm(&base.join(rel));
    } else if let Ok(hier) = std::fs::read_dir(base) {
        for h in hier.flatten() {
            rm(&h.path().join(rel));
        }
    }
}

/// Every process in network namespace `ns`.
fn ns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Every process in cgroup `rel` (as given to runc) and below: a node's containers,
/// which have network namespaces of their own.
pub fn cgroup_pids(rel: &str) -> Vec<u32> {
    fn walk(dir: &Path, out: &mut Vec<u32>) {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(t.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&pids_cgroup(rel), &mut out);
    out
}

/// The directory of cgroup `rel` (as given to runc) in the hierarchy that has the pids
/// controller: the one hierarchy on cgroup v2, `pids/` on v1.
pub fn pids_cgroup(rel: &str) -> PathBuf {
    let base = Path::new("/sys/fs/cgroup");
    let rel = rel.trim_start_matches('/');
    match base.join("cgroup.controllers").exists() {
        true => base.join(rel),
        false => base.join("pids").join(rel),
    }
}

fn kill_pids(pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills every process inside network namespace `ns`.
fn kill_ns_processes(ns: &str) {
    kill_pids(ns_pids(ns));
}

impl Testbed {
    /// An empty testbed: the hub namespace and its bridge. `binary` is the shoal binary.
    pub fn new(binary: &Path) -> Result<Testbed> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the testbed needs root (network namespaces); run the tests as root");
        }
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{pid:x}x{n}");
        let hub = format!("{PREFIX}{tag}-hub");
        let bridge = "br0".to_string();
        // A /24 per testbed, distinct within this process and very likely across processes.
        let subnet = (100 + (pid % 100) as u8, (n % 250) as u8 + 1);
        let dir = tempfile::Builder::new()
            .prefix("shoal-testbed-")
            .tempdir()?;
        std::fs::write(dir.path().join("owner"), pid.to_string())?;
        let tb = Testbed {
            tag,
            hub,
            bridge,
            subnet,
            binary: binary.to_path_buf(),
            dir,
            nodes: Vec::new(),
            daemon_args: Vec::new(),
            node_env: Default::default(),
            workstations: Vec::new(),
        };
        ip(&["netns", "add", &tb.hub])?;
        in_ns(
            &tb.hub,
            &["ip", "link", "add", &tb.bridge, "type", "bridge"],
        )?;
        in_ns(&tb.hub, &["ip", "link", "set", &tb.bridge, "up"])?;
        in_ns(&tb.hub, &["ip", "link", "set", "lo", "up"])?;
        Ok(tb)
    }

    /// A testbed with `n` nodes started (not yet in a cluster).
    pub fn with_nodes(binary: &Path, n: usize) -> Result<Testbed> {
        let mut tb = Testbed::new(binary)?;
        for _ in 0..n {
            tb.add_node()?;
        }
        Ok(tb)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a node: its namespace, its link to the bridge, and its daemon. Returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len() + 1;
        let name = format!("node{i}");
        let netns = format!("{PREFIX}{}-{i}", self.tag);
        let ip_addr = format!("10.{}.{}.{i}", self.subnet.0, self.subnet.1);
        let host_veth = format!("v{i}");
        self.plug(&netns, &host_veth, &ip_addr)?;
        let nd = self.dir.path().join(&name);
        std::fs::create_dir_all(&nd)?;
        let mnt_ns = self.mount_namespace(i)?;
        self.nodes.push(Node {
            name,
            netns,
            ip: ip_addr,
            state_dir: nd.join("state"),
            socket: nd.join("shoal.sock"),
            log: nd.join("daemon.log"),
            host_veth,
            mnt_ns,
            child: None,
        });
        let idx = self.nodes.len() - 1;
        self.start(idx)?;
        Ok(idx)
    }

    /// A new network namespace `netns` on the bridge: its `eth0` at `ip_addr`/24, the
    /// other end (`host_veth`) on the bridge in the hub.
    fn plug(&self, netns: &str, host_veth: &str, ip_addr: &str) -> Result<()> {
        ip(&["netns", "add", netns])?;
        in_ns(
            &self.hub,
            &[
                "ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns",
                netns,
            ],
        )?;
        in_ns(
            &self.hub,
            &["ip", "link", "set", host_veth, "master", &self.bridge, "up"],
        )?;
        in_ns(
            netns,
            &["ip", "addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"],
        )?;
        in_ns(netns, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(netns, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A workstation on the bridge (at `.200 + j`, with no daemon); its index.
    pub fn add_workstation(&mut self) -> Result<usize> {
        let j = self.workstations.len() + 1;
        let netns = format!("{PREFIX}{}-ws{j}", self.tag);
        let ip_addr = format!("10.{}.{}.{}", self.subnet.0, self.subnet.1, 200 + j);
        let host_veth = format!("w{j}");
        self.plug(&netns, &host_veth, &ip_addr)?;
        let home = self.dir.path().join(format!("ws{j}-home"));
        std::fs::create_dir_all(&home)?;
        self.workstations.push(Workstation {
            netns,
            ip: ip_addr,
            home,
        });
        Ok(self.workstations.len() - 1)
    }

    /// `shoal ARGS` on workstation `w`, as its user (HOME is the workstation's).
    pub fn ws_cli(&self, w: usize, args: &[&str]) -> CliOutput {
        CliOutput::from_run(self.ws_command(w, args).output())
    }

    /// The command `ws_cli` runs, to spawn (a stream that runs on).
    pub fn ws_command(&self, w: usize, args: &[&str]) -> Command {
        let ws = &self.workstations[w];
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &ws.netns,
            "env",
            "-u",
            "SHOAL_HOST",
            "-u",
            "SHOAL_CONFIG",
        ])
        .arg(format!("HOME={}", ws.home.display()))
        .arg("XDG_CONFIG_HOME=")
        .arg(&self.binary)
        .args(args);
        c
    }

    /// A new mount namespace for node `i`, kept by a bind mount on a file under the
    /// testbed's private `ns` directory. Its mounts are slaves of the host's: what a test
    /// mounts in the testbed's directory (a shared mount) reaches the node, and nothing
    /// the node mounts comes back.
    fn mount_namespace(&self, i: usize) -> Result<PathBuf> {
        let top = self.dir.path().display().to_string();
        let dir = self.dir.path().join("ns");
        if !dir.exists() {
            cmd(&["mount", "--bind", &top, &top])?;
            cmd(&["mount", "--make-shared", &top])?;
            std::fs::create_dir_all(&dir)?;
            // Namespace files must sit on a private mount.
            let d = dir.display().to_string();
            cmd(&["mount", "--bind", &d, &d])?;
            cmd(&["mount", "--make-private", &d])?;
        }
        let file = dir.join(format!("mnt-{i}"));
        std::fs::File::create(&file)?;
        cmd(&[
            "unshare",
            &format!("--mount={}", file.display()),
            "--propagation",
            "slave",
            "true",
        ])?;
        Ok(file)
    }

    /// Starts node `i`'s daemon (in its namespaces, with its hostname) and waits for its socket.
    pub fn start(&mut self, i: usize) -> Result<()> {
        let binary = self.binary.clone();
        let extra = self.daemon_args.join(" ");
        let env = self
            .node_env
            .get(&i)
            .map(|v| v.join(" "))
            .unwrap_or_default();
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let cgroup = format!("{}/{}", cgroup_root(&self.tag), n.name);
        let script = format!(
            "hostname {host} && exec env {env} {bin} daemon --state-dir {state} --socket {sock} --listen-addr 0.0.0.0:4377 --cgroup-parent {cg} {extra}",
            cg = cgroup,
            host = n.name,
            bin = binary.display(),
            state = n.state_dir.display(),
            sock = n.socket.display(),
        );
        // nsenter, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
        // hierarchies runc needs. The daemon runs in its node's own mount namespace,
        // the same one at every start.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", n.netns))
            .arg(format!("--mount={}", n.mnt_ns.display()))
            .args(["--", "unshare", "--uts", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start shoal daemon")?;
        n.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&n.socket).is_ok() {
                return Ok(());
            }
            if !n.is_running() {
                bail!(
                    "daemon of {} exited at start:\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("daemon of {} did not open its socket within 20 s", n.name)
    }

    fn signal(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Result<()> {
        let n = &mut self.nodes[i];
        if let Some(mut c) = n.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// SIGKILL node `i`'s daemon.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGKILL)
    }

    /// SIGTERM node `i`'s daemon and wait for it to exit.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGTERM)
    }

    /// Kills node `i` outright: its daemon and every process in its namespace (its
    /// supervisors and containers), like a machine that loses power.
    pub fn kill_all(&mut self, i: usize) -> Result<()> {
        self.kill(i)?;
        kill_ns_processes(&self.nodes[i].netns);
        kill_pids(cgroup_pids(&self.node_cgroup(i)));
        Ok(())
    }

    /// The cgroup under which node `i`'s containers live.
    pub fn node_cgroup(&self, i: usize) -> String {
        format!("{}/{}", cgroup_root(&self.tag), self.nodes[i].name)
    }

    /// Processes in node `i`'s namespace whose name (comm) is `name`.
    pub fn processes_named(&self, i: usize, name: &str) -> usize {
        self.pids(i)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == name)
                    .unwrap_or(false)
            })
            .count()
    }

    /// Every process of node `i`: those in its network namespace (its daemon and
    /// supervisors, and containers on the host network) and its containers' (in their
    /// cgroups, whatever their namespace).
    pub fn pids(&self, i: usize) -> Vec<u32> {
        let mut all = ns_pids(&self.nodes[i].netns);
        for p in cgroup_pids(&self.node_cgroup(i)) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        all
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.stop(i)?;
        self.start(i)
    }

    /// Cuts node `i` off the network (its link to the bridge goes down).
    pub fn cut(&self, i: usize) -> Result<()> {
        in_ns(
            &self.hub,
            &["ip", "link", "set", &self.nodes[i].host_veth, "down"],
        )
        .map(|_| ())
    }

    pub fn heal(&self, i: usize) -> Result<()> {
        in_ns(
            &self.hub,
            &["ip", "link", "set", &self.nodes[i].host_veth, "up"],
        )
        .map(|_| ())
    }

    /// The manager that `node ls` on node `via` shows as Leader (its index here).
    pub fn leader_index(&self, via: usize) -> Option<usize> {
        let out = self.cli_ok(via, &["node", "ls", "--format", "json"]).ok()?;
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|n| n["ManagerStatus"] == "Leader")
            .and_then(|n| {
                let host = n["Hostname"].as_str()?;
                self.nodes.iter().position(|x| x.name == host)
            })
    }

    /// `shoal -H <node i's socket> ARGS`.
    fn command(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-H")
            .arg(format!("unix://{}", self.nodes[i].socket.display()))
            .args(args);
        c
    }

    /// The command `shoal -H <node i's socket> ARGS`, for a test that runs it its own way
    /// (in the background, under `script`, to read its exit code).
    pub fn cli_command(&self, i: usize, args: &[&str]) -> Command {
        self.command(i, args)
    }

    /// Runs `shoal ARGS` against node `i`'s daemon.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let out = self.command(i, args).output();
        CliOutput::from_run(out)
    }

    /// Runs `shoal ARGS` against node `i`'s daemon with `input` on its standard input.
    pub fn cli_stdin(&self, i: usize, args: &[&str], input: &str) -> CliOutput {
        use std::io::Write;
        let child = self
            .command(i, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let out = child.and_then(|mut c| {
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(input.as_bytes())?;
            }
            c.wait_with_output()
        });
        CliOutput::from_run(out)
    }

    /// Like [`Testbed::cli`], failing with both outputs if the command fails.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let o = self.cli(i, args);
        if !o.success {
            bail!(
                "shoal {} on {} failed:\n{}{}",
                args.join(" "),
                self.nodes[i].name,
                o.stdout,
                o.stderr
            );
        }
        Ok(o.stdout)
    }

    /// Runs a command inside node `i`'s network namespace.
    pub fn exec_in(&self, i: usize, args: &[&str]) -> Result<String> {
        in_ns(&self.nodes[i].netns, args)
    }

    /// A command run as node `i`'s daemon runs: in its network and mount namespaces
    /// (so the bind mounts of its tasks' and overlays' namespaces are there).
    pub fn command_in(&self, i: usize, args: &[&str]) -> Command {
        let n = &self.nodes[i];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", n.netns))
            .arg(format!("--mount={}", n.mnt_ns.display()))
            .arg("--")
            .args(args);
        c
    }

    /// A command run in the hub's namespace, where the bridge joining the nodes is (the
    /// test's wire).
    pub fn command_on_wire(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hub]).args(args);
        c
    }

    /// The name of the bridge joining the nodes, in the hub's namespace.
    pub fn wire(&self) -> &str {
        &self.bridge
    }

    /// Runs `f` on a thread that has entered node `i`'s network namespace, so sockets it
    /// opens see what the node sees (for tests that speak to a node's listener directly).
    pub fn in_netns<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.nodes[i].netns);
        std::thread::spawn(move || -> Result<T> {
            let ns = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the node's namespace panicked"))?
    }

    /// `shoal init` on node `i`, with extra flags.
    pub fn init(&self, i: usize, extra: &[&str]) -> Result<String> {
        let mut args = vec!["init", "--advertise-addr", &self.nodes[i].ip];
        args.extend_from_slice(extra);
        self.cli_ok(i, &args)
    }

    /// Joins node `i` to the manager at node `manager` with the worker token.
    pub fn join_worker(&self, i: usize, manager: usize) -> Result<String> {
        let token = self.cli_ok(manager, &["join-token", "-q", "worker"])?;
        self.cli_ok(
            i,
            &["join", "--token", token.trim(), &self.nodes[manager].addr()],
        )
    }

    /// The daemon log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every node's log, for a failure message.
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "===== {} ({}) =====\n{}\n",
                n.name,
                n.ip,
                self.log(i)
            ));
        }
        s
    }
}

/// A busybox root filesystem tarball in `dir` (made once), from Debian's busybox-static:
/// the sample image of tests, benchmarks and the quickstart.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("busybox-rootfs");
    let tar = dir.join("busybox.tar");
    if tar.exists() {
        return Ok(tar);
    }
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox is missing: install Debian's busybox-static")?;
    for app in [
        "sh", "echo", "sleep", "cat", "ls", "dd", "head", "hostname", "id", "env", "true", "false",
        "touch", "test", "[", "httpd", "wget", "date", "mkdir", "ip", "nc", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    tar_of(&root, &tar)
}

/// Packs directory `root` into the tar `tar`, for `image import`.
fn tar_of(root: &Path, tar: &Path) -> Result<PathBuf> {
    run(Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar)
        .arg("."))?;
    Ok(tar.to_path_buf())
}

/// A root filesystem tar `NAME.tar` in `dir` (made once) from Debian's `packages`
/// (`apt-get download`, unpacked with `dpkg -x`: no maintainer scripts run), with
/// busybox for a shell and the usual tools, and `passwd`/`group` files.
pub fn debian_rootfs_tar(dir: &Path, name: &str, packages: &[&str]) -> Result<PathBuf> {
    let root = dir.join(format!("{name}-rootfs"));
    let debs = dir.join(format!("{name}-debs"));
    let tar = dir.join(format!("{name}.tar"));
    if tar.exists() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&debs)?;
    let all = with_libraries(packages)?;
    run(Command::new("apt-get")
        .current_dir(&debs)
        .arg("download")
        .args(&all))
    .with_context(|| {
        format!(
            "apt-get download {} (Debian's package mirror)",
            all.join(" ")
        )
    })?;
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for deb in std::fs::read_dir(&debs)? {
        run(Command::new("dpkg").arg("-x").arg(deb?.path()).arg(&root))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox is missing: install Debian's busybox-static")?;
    for app in [
        "sh", "echo", "sleep", "cat", "ls", "mkdir", "chmod", "grep", "wget", "httpd", "id",
        "hostname", "printf", "test", "[", "true", "tr",
    ] {
        let link = root.join("bin").join(app);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:
nogroup:x:65534:
",
    )?;
    tar_of(&root, &tar)
}

/// `packages` and the libraries they need: their dependencies in Debian's `libs`
/// section, followed through libraries only (a package's other dependencies, scripts and
/// tools, are left out; of alternatives `a | b`, the first).
fn with_libraries(packages: &[&str]) -> Result<Vec<String>> {
    let mut all: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let mut todo = all.clone();
    while let Some(p) = todo.pop() {
        let out = Command::new("apt-cache")
            .args([
                "depends",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
            ])
            .args(["--no-breaks", "--no-replaces", "--no-enhances", &p])
            .output()
            .context("apt-cache depends")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `a | b` is printed as " |Depends: a" then "  Depends: b": b is skipped.
        let mut after_bar = false;
        for line in text.lines().skip(1) {
            let t = line.trim_start();
            let bar = t.starts_with('|');
            let t = t.trim_start_matches('|');
            let dep = t
                .strip_prefix("Depends: ")
                .or_else(|| t.strip_prefix("PreDepends: "))
                .map(str::trim);
            let Some(d) = dep else { continue };
            let skip = after_bar;
            after_bar = bar;
            if skip || all.iter().any(|x| x == d) || !(d.starts_with("lib") || is_library(d)) {
                continue;
            }
            all.push(d.to_string());
            todo.push(d.to_string());
        }
    }
    Ok(all)
}

/// Whether Debian files package `p` under `libs` (shared libraries: libc6, zlib1g, ...).
fn is_library(p: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", p])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "Section: libs")
        })
        .unwrap_or(false)
}

/// A root filesystem tar with iperf3, built from Debian's packages (`apt-get download`,
/// unpacked with `dpkg -x`: iperf3, its libraries and the C library they link to), for
/// the throughput benchmark. Made once per directory.
pub fn iperf3_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("iperf3-rootfs");
    let debs = dir.join("iperf3-debs");
    let tar = dir.join("iperf3.tar");
    if tar.exists() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").current_dir(&debs).args([
        "download",
        "iperf3",
        "libiperf0",
        "libsctp1",
        "libssl3",
        "libc6",
    ]))
    .context("apt-get download iperf3 and its libraries (Debian's package mirror)")?;
    for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for deb in std::fs::read_dir(&debs)? {
        run(Command::new("dpkg").arg("-x").arg(deb?.path()).arg(&root))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    tar_of(&root, &tar)
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
        for i in 0..self.nodes.len() {
            kill_ns_processes(&self.nodes[i].netns);
            kill_pids(cgroup_pids(&self.node_cgroup(i)));
        }
        // Once their processes are gone, the cgroups can go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && (0..self.nodes.len()).any(|i| !self.pids(i).is_empty()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The nodes' mount namespaces, and with them every mount their daemons made.
        for n in &self.nodes {
            let _ = cmd(&["umount", "-l", &n.mnt_ns.display().to_string()]);
        }
        let _ = cmd(&[
            "umount",
            "-l",
            &self.dir.path().join("ns").display().to_string(),
        ]);
        let _ = cmd(&["umount", "-l", &self.dir.path().display().to_string()]);
        // A cgroup whose last task just died can stay busy for a moment.
        let root = cgroup_root(&self.tag);
        for _ in 0..50 {
            remove_cgroup_tree(&root);
            if !Path::new("/sys/fs/cgroup/pids").join(&root).exists()
                && !Path::new("/sys/fs/cgroup").join(&root).exists()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for n in &self.nodes {
            let _ = ip(&["netns", "del", &n.netns]);
        }
        for w in &self.workstations {
            let _ = ip(&["netns", "del", &w.netns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
        if std::env::var_os("SHOAL_TESTBED_KEEP").is_some() {
            eprintln!("keeping testbed files in {}", self.dir.path().display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        }
    }
}

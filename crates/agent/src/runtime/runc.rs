//! The runc backend. Per container, under `<root>/<id>/`:
//!
//! ```text
//! bundle/config.json   the OCI runtime config
//! bundle/rootfs        overlayfs: image layers (read-only) + upper/ (the container's writes)
//! upper/ work/         overlayfs upper and work dirs
//! container.log        output, one line per line: <unix nanos> <stdout|stderr> <text>
//! pid                  the container's init pid, written by the supervisor once it runs
//! exit.json            how it ended, written by the supervisor
//! supervisor.pid       the supervisor's pid
//! ```

use super::hardening::{self, Hardening};
use super::supervisor::{self, SupervisorArgs};
use super::{
    io_err, ContainerConfig, ContainerStatus, ExecProcess, ExecSpec, Exit, MountKind, Runtime,
    RuntimeError,
};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Runc {
    root: PathBuf,
    runc_root: PathBuf,
    runc_bin: String,
    cgroup_parent: String,
    self_exe: PathBuf,
    starts: StartGate,
}

/// Bounds how many containers this node starts at once: as many as it has CPUs (at
/// least 2). A start is mostly runc's CPU (two Go programs, the seccomp filter, the
/// mounts); when a node is given many tasks at once, running every runc side by side
/// only makes them share the CPU, so all of them come up late together. Through the gate
/// they come up one after another from the start, and the batch as a whole no later. A
/// start that finds no free slot waits at most `wait`, then goes ahead anyway: a hung
/// runc holds up the others by that much, never more.
struct StartGate {
    limit: usize,
    wait: Duration,
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

struct StartSlot<'a>(&'a StartGate);

impl StartGate {
    fn new(limit: usize, wait: Duration) -> StartGate {
        StartGate {
            limit: limit.max(1),
            wait,
            running: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    fn for_this_host() -> StartGate {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        StartGate::new(cpus.max(2), Duration::from_secs(2))
    }

    fn enter(&self) -> StartSlot<'_> {
        let deadline = Instant::now() + self.wait;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.limit {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            running = self
                .freed
                .wait_timeout(running, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *running += 1;
        StartSlot(self)
    }
}

impl Drop for StartSlot<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running = running.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The read end of a fresh [`supervisor::STARTED_FIFO`] in `dir`, opened before the
/// supervisor starts so its word is not lost.
fn started_signal(dir: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(supervisor::STARTED_FIFO);
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).ok()?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .ok()
}

/// Whether `f` turned readable (or its writer hung up) within `timeout`.
fn wait_readable(f: &impl std::os::fd::AsFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

fn failed(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed(msg.into())
}

/// The runc binary this node uses: `SHOAL_RUNC`, else `runc` from PATH.
fn runc_bin() -> String {
    std::env::var("SHOAL_RUNC").unwrap_or_else(|_| "runc".into())
}

/// Why this node cannot run containers, if it cannot: its runc is missing.
pub fn runtime_error() -> Option<String> {
    let bin = runc_bin();
    let runnable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.contains('/') {
        return (!runnable(Path::new(&bin))).then(|| {
            format!(
                "runc not found at {bin} (SHOAL_RUNC): install the runc package or fix SHOAL_RUNC"
            )
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| runnable(&d.join(&bin))) {
        return None;
    }
    Some(format!("{bin} not found in PATH: install the runc package"))
}

impl Runc {
    /// `root`: where containers live (`<state>/containers`); `cgroup_parent`: the cgroup
    /// every container of this node goes under.
    pub fn new(root: &Path, cgroup_parent: &str) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(root)
            .map_err(io_err(format!("cannot create {}", root.display())))?;
        let runc_root = root.join(".runc");
        std::fs::create_dir_all(&runc_root).map_err(io_err("cannot create the runc state dir"))?;
        let self_exe = std::env::current_exe().map_err(io_err("cannot find our own executable"))?;
        Ok(Runc {
            root: root.to_path_buf(),
            runc_root,
            runc_bin: runc_bin(),
            cgroup_parent: cgroup_parent.trim_matches('/').to_string(),
            self_exe,
            starts: StartGate::for_this_host(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent)
    }

    /// Resolves `user` to uid/gid, reading names from the image's /etc/passwd.
    fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), RuntimeError> {
        if user.is_empty() || user == "root" {
            return Ok((0, 0));
        }
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        // name:x:id:gid:... in both /etc/passwd and /etc/group (where gid is unused).
        fn lookup(file: &str, name: &str) -> Option<(u32, u32)> {
            file.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.first() != Some(&name) {
                    return None;
                }
                let id = f.get(2)?.parse().ok()?;
                Some((id, f.get(3).and_then(|v| v.parse().ok()).unwrap_or(0)))
            })
        }
        let (uid, default_gid) = match u.parse::<u32>() {
            Ok(n) => (n, n),
            Err(_) => lookup(&passwd, u).ok_or_else(|| {
                failed(format!(
                    "user {u:?} is not in the image's /etc/passwd: use a numeric uid[:gid]"
                ))
            })?,
        };
        let gid = match g {
            None => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let group =
                        std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                    lookup(&group, g).map(|(gid, _)| gid).ok_or_else(|| {
                        failed(format!("group {g:?} is not in the image's /etc/group"))
                    })?
                }
            },
        };
        Ok((uid, gid))
    }

    /// Resolves supplementary groups (`--group`): numbers, or names in the image's
    /// /etc/group.
    fn resolve_groups(rootfs: &Path, groups: &[String]) -> Result<Vec<u32>, RuntimeError> {
        let file = match groups.iter().all(|g| g.parse::<u32>().is_ok()) {
            true => String::new(),
            false => std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default(),
        };
        groups
            .iter()
            .map(|g| {
                g.parse::<u32>().or_else(|_| {
                    file.lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.first() == Some(&g.as_str()))
                                .then(|| f.get(2)?.parse().ok())
                                .flatten()
                        })
                        .ok_or_else(|| {
                            failed(format!(
                                "group {g:?} is not in the image's /etc/group: use a number"
                            ))
                        })
                })
            })
            .collect()
    }

    fn spec(&self, cfg: &ContainerConfig, rootfs: &Path) -> Result<Spec, RuntimeError> {
        let e = |x: oci_spec::OciSpecError| failed(format!("building the container config: {x}"));
        let (uid, gid) = Self::resolve_user(rootfs, &cfg.user)?;
        let groups = Self::resolve_groups(rootfs, &cfg.groups)?;
        let mut rlimits = Vec::new();
        for (name, soft, hard) in &cfg.rlimits {
            let typ: PosixRlimitType = name
                .parse()
                .map_err(|_| failed(format!("{name} is not a resource limit")))?;
            let v = |x: i64| if x < 0 { u64::MAX } else { x as u64 };
            rlimits.push(
                PosixRlimitBuilder::default()
                    .typ(typ)
                    .soft(v(*soft))
                    .hard(v(*hard))
                    .build()
                    .map_err(e)?,
            );
        }
        let hardening =
            Hardening::of(&cfg.cap_add, &cfg.cap_drop).map_err(|x| failed(x.to_string()))?;
        let mut env = cfg.env.clone();
        if !env.iter().any(|v| v.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let (args, init) = match cfg.init {
            true => {
                let bin = super::init_binary().map_err(failed)?;
                let args = [super::INIT_PATH, "--"]
                    .into_iter()
                    .map(String::from)
                    .chain(cfg.args.iter().cloned())
                    .collect();
                (args, Some(bin))
            }
            false => (cfg.args.clone(), None),
        };
        // A terminal (`tty`) is made by runc inside the container's own /dev/pts and
        // handed to the supervisor over a console socket.
        let mut process = ProcessBuilder::default()
            .terminal(cfg.tty)
            .args(args)
            .env(env)
            .cwd(if cfg.cwd.is_empty() {
                "/".to_string()
            } else {
                cfg.cwd.clone()
            })
            .user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .additional_gids(groups)
                    .build()
                    .map_err(e)?,
            )
            .no_new_privileges(true)
            .capabilities(
                hardening
                    .oci_capabilities()
                    .map_err(|x| failed(x.to_string()))?,
            )
            .build()
            .map_err(e)?;
        if !rlimits.is_empty() {
            process.set_rlimits(Some(rlimits));
        }
        let mut resources =
            LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .map_err(e)?]);
        if cfg.memory_bytes > 0 {
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(cfg.memory_bytes)
                    .swap(cfg.memory_bytes)
                    .build()
                    .map_err(e)?,
            );
        }
        if cfg.nano_cpus > 0 {
            let period: u64 = 100_000;
            let quota = (cfg.nano_cpus as u128 * period as u128 / 1_000_000_000) as i64;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota(quota.max(1000))
                    .build()
                    .map_err(e)?,
            );
        }
        if cfg.pids > 0 {
            resources = resources.pids(
                LinuxPidsBuilder::default()
                    .limit(cfg.pids)
                    .build()
                    .map_err(e)?,
            );
        }
        let defaults = oci_spec::runtime::Linux::default();
        let namespaces: Vec<_> = defaults
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|mut n| {
                if n.typ() != oci_spec::runtime::LinuxNamespaceType::Network {
                    return Some(n);
                }
                // The task's own namespace, made by the network module; without one
                // the container shares the node's network (`--network host`).
                let path = cfg.netns.clone()?;
                n.set_path(Some(path));
                Some(n)
            })
            .collect();
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .resources(resources.build().map_err(e)?)
            .cgroups_path(PathBuf::from(self.cgroup_path(&cfg.id)))
            .masked_paths(hardening::host_masked_paths())
            .readonly_paths(hardening.readonly_paths())
            .seccomp(hardening.seccomp_profile().map_err(e)?)
            .sysctl(cfg.sysctls.clone())
            .build()
            .map_err(e)?;
        let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
        if let Some(bin) = init {
            mounts.push(
                MountBuilder::default()
                    .typ("bind")
                    .source(bin)
                    .destination(PathBuf::from(super::INIT_PATH))
                    .options(["bind", "ro", "nosuid", "nodev"].map(String::from).to_vec())
                    .build()
                    .map_err(e)?,
            );
        }
        for m in &cfg.mounts {
            let mut options = vec![];
            let b = match m.kind {
                MountKind::Bind | MountKind::Volume { .. } => {
                    options.push("rbind".to_string());
                    options.push("rprivate".to_string());
                    MountBuilder::default()
                        .typ("bind")
                        .source(PathBuf::from(&m.source))
                }
                MountKind::Tmpfs => {
                    options.extend(["nosuid", "nodev", "noexec"].map(String::from));
                    if m.size_bytes > 0 {
                        options.push(format!("size={}", m.size_bytes));
                    }
                    if m.mode > 0 {
                        options.push(format!("mode={:o}", m.mode));
                    }
                    MountBuilder::default()
                        .typ("tmpfs")
                        .source(PathBuf::from("tmpfs"))
                }
            };
            options.push(if m.readonly { "ro" } else { "rw" }.to_string());
            mounts.push(
                b.destination(PathBuf::from(&m.target))
                    .options(options)
                    .build()
                    .map_err(e)?,
            );
        }
        let mut spec = Spec::default();
        spec.set_hostname(Some(if cfg.hostname.is_empty() {
            cfg.id.chars().take(12).collect()
        } else {
            cfg.hostname.clone()
        }));
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path(PathBuf::from("rootfs"))
                .readonly(cfg.readonly_rootfs)
                .build()
                .map_err(e)?,
        ));
        spec.set_linux(Some(linux));
        spec.set_mounts(Some(mounts));
        Ok(spec)
    }

    fn read_pid(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn read_exit(dir: &Path) -> Option<Exit> {
        let text = std::fs::read(dir.join("exit.json")).ok()?;
        match serde_json::from_slice(&text) {
            Ok(x) => Some(x),
            Err(e) => Some(Exit {
                code: -1,
                oom: false,
                error: Some(format!(
                    "{} is damaged: {e}",
                    dir.join("exit.json").display()
                )),
            }),
        }
    }
}

/// This boot of the host: pids recorded under another boot mean nothing now.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `pid` is one of our supervisors (not some process that reused its pid).
fn is_supervisor(pid: u32) -> bool {
    if !alive(pid) {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.trim() == "shoal-supervise"
        || String::from_utf8_lossy(&cmdline).contains(supervisor::SUBCOMMAND)
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie counts as gone.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    if layers.is_empty() {
        return Err(failed("the image has no layers"));
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| {
        failed(format!(
            "cannot mount the container's root filesystem (overlayfs): {e}"
        ))
    })
}

impl Runtime for Runc {
    fn prepare(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError> {
        if let Some(e) = runtime_error() {
            return Err(failed(e));
        }
        let dir = self.dir(&cfg.id);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [&rootfs, &dir.join("upper"), &dir.join("work")] {
            std::fs::create_dir_all(d).map_err(io_err(format!("cannot create {}", d.display())))?;
        }
        // The upper dir gives the container's / its mode: it must be enterable by any user.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("upper"), std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("cannot set up the container's root directory"))?;
        }
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        mount_overlay(&cfg.layers, &dir.join("upper"), &dir.join("work"), &rootfs)?;
        for m in &cfg.mounts {
            if m.kind == (MountKind::Volume { copy_up: true }) {
                if let Err(e) = super::copyup::fill(&rootfs, &m.target, Path::new(&m.source)) {
                    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                    return Err(failed(format!(
                        "cannot fill the volume at {} from the image: {e}",
                        m.target
                    )));
                }
            }
        }
        let spec = match self.spec(cfg, &rootfs) {
            Ok(s) => s,
            Err(e) => {
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                return Err(e);
            }
        };
        if let Err(e) = spec.save(bundle.join("config.json")) {
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            return Err(failed(format!("cannot write config.json: {e}")));
        }
        let marker = dir.join(supervisor::TTY_MARKER);
        match cfg.tty {
            true => std::fs::write(&marker, b"")
                .map_err(io_err("cannot note that the container has a terminal"))?,
            false => drop(std::fs::remove_file(&marker)),
        }
        Ok(())
    }

    fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let _slot = self.starts.enter();
        let dir = self.dir(id);
        std::fs::write(dir.join("boot_id"), boot_id())
            .map_err(io_err("cannot record the boot of the container"))?;
        let args = SupervisorArgs {
            id: id.to_string(),
            dir: dir.clone(),
            runc_root: self.runc_root.clone(),
            runc_bin: self.runc_bin.clone(),
            cgroup_path: self.cgroup_path(id),
        };
        let mut signal = started_signal(&dir);
        let forked = match super::zygote::get() {
            Some(z) => match z.spawn(&args) {
                Ok(_) => true,
                // The zygote may still fork it: a second supervisor for the same
                // container must not race it. The start waits for the one it may make.
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::warn!(error = %e, "supervisor zygote did not answer; waiting for the supervisor it may have started");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "supervisor zygote failed; re-executing instead");
                    false
                }
            },
            None => false,
        };
        let mut child = match forked {
            true => None,
            false => {
                let mut cmd = Command::new(&self.self_exe);
                cmd.arg(supervisor::SUBCOMMAND)
                    .args(args.to_args())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // Its own session: the supervisor and its container outlive the daemon.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                        nix::unistd::setsid()
                            .map(|_| ())
                            .map_err(std::io::Error::from)
                    });
                }
                Some(
                    cmd.spawn()
                        .map_err(io_err("cannot start the container supervisor"))?,
                )
            }
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut poll = Duration::from_millis(1);
        let result = loop {
            if let Some(pid) = Self::read_pid(&dir.join("pid")) {
                break Ok(pid);
            }
            if let Some(x) = Self::read_exit(&dir) {
                break Err(failed(x.error.unwrap_or_else(|| {
                    format!("container exited at start with code {}", x.code)
                })));
            }
            if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                if Self::read_pid(&dir.join("pid")).is_none() && Self::read_exit(&dir).is_none() {
                    break Err(failed(format!(
                        "the container supervisor exited early ({st})"
                    )));
                }
                continue;
            }
            if Instant::now() > deadline {
                break Err(failed("the container did not start within 30 s"));
            }
            // The supervisor's word wakes us; the timeout only covers one that died
            // before it could say anything.
            match signal.take() {
                Some(f) if wait_readable(&f, Duration::from_millis(100)) => {}
                Some(f) => signal = Some(f),
                None => {
                    std::thread::sleep(poll);
                    poll = (poll * 2).min(Duration::from_millis(20));
                }
            }
        };
        // A re-executed supervisor stays our child until we exit; reap it in the background.
        if let Some(mut c) = child {
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
        result
    }

    fn status(&self, id: &str) -> ContainerStatus {
        let dir = self.dir(id);
        if !dir.exists() {
            return ContainerStatus::Missing;
        }
        if let Some(x) = Self::read_exit(&dir) {
            return ContainerStatus::Exited(x);
        }
        let booted = std::fs::read_to_string(dir.join("boot_id")).unwrap_or_default();
        if !booted.is_empty() && booted.trim() != boot_id() {
            return ContainerStatus::Exited(Exit {
                code: -1,
                oom: false,
                error: Some("the host restarted while the container ran: it is gone".into()),
            });
        }
        let Some(pid) = Self::read_pid(&dir.join("pid")) else {
            return ContainerStatus::Created;
        };
        let sup = Self::read_pid(&dir.join("supervisor.pid"));
        if sup.is_some_and(is_supervisor) {
            return ContainerStatus::Running { pid };
        }
        // The supervisor died without recording an exit: it may have been killed with the
        // container, or crashed. Check the exit file once more (it may just have landed).
        if let Some(x) = Self::read_exit(&dir) {
            return ContainerStatus::Exited(x);
        }
        ContainerStatus::Exited(Exit {
            code: -1,
            oom: false,
            error: Some(if alive(pid) {
                "the container's supervisor died; the container was left running".into()
            } else {
                "the container's supervisor died before recording the exit code".into()
            }),
        })
    }

    fn signal(&self, id: &str, signal: nix::sys::signal::Signal) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        // Only a container this boot's live supervisor still watches is signalled: a
        // recorded pid may since belong to anything.
        if !matches!(self.status(id), ContainerStatus::Running { .. }) {
            return Ok(());
        }
        let Some(pid) = Self::read_pid(&dir.join("pid")) else {
            return Ok(());
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(failed(format!("cannot signal container {id}: {e}"))),
        }
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(());
        }
        // A container that never started (or whose supervisor died) may still be known to runc.
        let _ = Command::new(&self.runc_bin)
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let rootfs = dir.join("bundle/rootfs");
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(failed(format!("cannot unmount {}: {e}", rootfs.display()))),
        }
        super::cgroup::remove_tree(&self.cgroup_path(id));
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("cannot remove {}", dir.display())))
    }

    fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("container.log")
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<(i32, String), RuntimeError> {
        use std::io::Read;
        if !matches!(self.status(id), ContainerStatus::Running { .. }) {
            return Err(failed("the container is not running"));
        }
        let (mut out_r, out_w) = std::io::pipe().map_err(io_err("cannot make a pipe"))?;
        let err_w = out_w.try_clone().map_err(io_err("cannot make a pipe"))?;
        let mut child = Command::new(&self.runc_bin)
            .arg("--root")
            .arg(&self.runc_root)
            .arg("exec")
            .arg(id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out_w)
            .stderr(err_w)
            .spawn()
            .map_err(io_err("cannot run runc exec"))?;
        // The output is read on its own thread so a chatty check cannot block on a
        // full pipe; only its last 4 KiB are kept.
        let reader = std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out_r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                let extra = kept.len().saturating_sub(4096);
                kept.drain(..extra);
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        // A pidfd of runc turns readable when it exits: the wait sleeps until then or
        // the timeout (a kernel without pidfds gets a 10 ms check instead).
        let exited = super::pidfd_open(child.id()).ok();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().map_err(io_err("waiting for runc exec"))? {
                break Some(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            match &exited {
                Some(fd) => {
                    wait_readable(fd, left);
                }
                None => std::thread::sleep(left.min(Duration::from_millis(10))),
            }
        };
        let Some(status) = status else {
            // The command inside may live on; the reader ends once it does.
            return Err(failed(format!(
                "the health check timed out after {timeout:?}"
            )));
        };
        let output = reader.join().unwrap_or_default();
        Ok((status.code().unwrap_or(-1), output))
    }

    fn exec_process(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        use std::os::unix::process::CommandExt;
        if !matches!(self.status(id), ContainerStatus::Running { .. }) {
            return Err(failed("the task's container is not running"));
        }
        let dir = self.dir(id);
        let pid_file = dir.join(format!("exec-{}.pid", shoal_pki::random_id()));
        let mut cmd = Command::new(&self.runc_bin);
        cmd.arg("--root").arg(&self.runc_root).arg("exec");
        cmd.arg("--pid-file").arg(&pid_file);
        if !spec.cwd.is_empty() {
            cmd.arg("--cwd").arg(&spec.cwd);
        }
        for e in &spec.env {
            cmd.arg("--env").arg(e);
        }
        if !spec.user.is_empty() {
            let (uid, gid) = Self::resolve_user(&dir.join("bundle/rootfs"), &spec.user)?;
            cmd.arg("--user").arg(format!("{uid}:{gid}"));
        }
        let pipe = || std::io::pipe().map_err(io_err("cannot make a pipe"));
        if spec.tty {
            // runc makes the command's terminal inside the container and relays it to
            // its own: a terminal we make, which runc has as its controlling terminal
            // (so it hears of window changes and passes them on).
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| failed(format!("cannot make a terminal: {e}")))?;
            let master = std::fs::File::from(pty.master);
            super::supervisor::set_window(&master, spec.rows.max(1), spec.cols.max(1));
            let slave = std::fs::File::from(pty.slave);
            cmd.arg("--tty")
                .stdin(
                    slave
                        .try_clone()
                        .map_err(io_err("cannot share the terminal"))?,
                )
                .stdout(
                    slave
                        .try_clone()
                        .map_err(io_err("cannot share the terminal"))?,
                )
                .stderr(slave);
            // SAFETY: setsid and TIOCSCTTY are async-signal-safe and touch only the child.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.arg(id).args(&spec.args);
            let runc = cmd.spawn().map_err(io_err("cannot run runc exec"))?;
            let input = match spec.stdin {
                true => Some(
                    master
                        .try_clone()
                        .map_err(io_err("cannot share the terminal"))?,
                ),
                false => None,
            };
            return Ok(ExecProcess {
                runc,
                input,
                stdout: master
                    .try_clone()
                    .map_err(io_err("cannot share the terminal"))?,
                stderr: None,
                master: Some(master),
                pid_file,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let input = match spec.stdin {
            true => {
                let (in_r, in_w) = pipe()?;
                cmd.stdin(in_r);
                Some(std::fs::File::from(std::os::fd::OwnedFd::from(in_w)))
            }
            false => {
                cmd.stdin(Stdio::null());
                None
            }
        };
        cmd.stdout(out_w).stderr(err_w).arg(id).args(&spec.args);
        let runc = cmd.spawn().map_err(io_err("cannot run runc exec"))?;
        Ok(ExecProcess {
            runc,
            input,
            stdout: std::fs::File::from(std::os::fd::OwnedFd::from(out_r)),
            stderr: Some(std::fs::File::from(std::os::fd::OwnedFd::from(err_r))),
            master: None,
            pid_file,
        })
    }

    fn exit_fd(&self, id: &str) -> Option<std::os::fd::OwnedFd> {
        // The supervisor exits right after recording the container's end.
        let sup = Self::read_pid(&self.dir(id).join("supervisor.pid"))?;
        if !is_supervisor(sup) {
            return None;
        }
        let fd = super::pidfd_open(sup).ok()?;
        // Checked again: the pid may have been reused between the check and the open.
        is_supervisor(sup).then_some(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_json(cap_add: &[&str]) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new(dir.path(), "shoal-test").unwrap();
        let cfg = ContainerConfig {
            id: "c1".into(),
            args: vec!["true".into()],
            cap_add: cap_add.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        let spec = runc.spec(&cfg, dir.path()).unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    #[test]
    fn the_start_gate_admits_its_limit_and_never_holds_a_start_past_its_wait() {
        let gate = std::sync::Arc::new(StartGate::new(2, Duration::from_millis(300)));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, peak, now) = (gate.clone(), peak.clone(), now.clone());
                std::thread::spawn(move || {
                    let _slot = gate.enter();
                    let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Two starts that never end: a third waits the gate's wait, then goes ahead.
        let a = gate.enter();
        let b = gate.enter();
        let t = Instant::now();
        let c = gate.enter();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        drop((a, b, c));
        assert_eq!(*gate.running.lock().unwrap(), 0);
    }

    #[test]
    fn a_container_joins_its_tasks_namespace_or_shares_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new(dir.path(), "shoal-test").unwrap();
        let net = |netns: Option<&str>| {
            let cfg = ContainerConfig {
                id: "c1".into(),
                args: vec!["true".into()],
                netns: netns.map(PathBuf::from),
                ..Default::default()
            };
            let c = serde_json::to_value(runc.spec(&cfg, dir.path()).unwrap()).unwrap();
            c["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["type"] == "network")
                .cloned()
        };
        assert_eq!(net(None), None, "host network: no namespace of its own");
        assert_eq!(
            net(Some("/state/network/tasks/c1/netns")).unwrap()["path"],
            "/state/network/tasks/c1/netns"
        );
    }

    #[test]
    fn every_container_gets_seccomp_masked_paths_and_few_capabilities() {
        let c = config_json(&[]);
        let linux = &c["linux"];
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let masked = linux["maskedPaths"].as_array().unwrap();
        for p in hardening::MASKED_PATHS {
            assert!(masked.contains(&p.into()), "{p} masked");
        }
        assert_eq!(
            linux["readonlyPaths"],
            serde_json::json!(hardening::READONLY_PATHS)
        );
        let caps = &c["process"]["capabilities"];
        let mut bounding: Vec<&str> = caps["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        bounding.sort();
        assert_eq!(
            bounding,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(caps["ambient"], serde_json::json!([]));
        assert_eq!(caps["inheritable"], serde_json::json!([]));
        assert_eq!(c["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn an_added_capability_reaches_the_config_and_an_unknown_one_is_refused() {
        let c = config_json(&["SYS_ADMIN"]);
        let effective = c["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(effective.contains(&"CAP_SYS_ADMIN".into()));
        let syscalls = c["linux"]["seccomp"]["syscalls"].to_string();
        assert!(syscalls.contains("\"mount\""), "SYS_ADMIN unlocks mount");

        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new(dir.path(), "shoal-test").unwrap();
        let cfg = ContainerConfig {
            cap_add: vec!["CAP_FLY".into()],
            ..Default::default()
        };
        let err = runc.spec(&cfg, dir.path()).unwrap_err().to_string();
        assert!(err.contains("\"CAP_FLY\""), "{err}");
    }
}

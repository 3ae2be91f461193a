//! Running containers. [`Runtime`] is what the task controllers need; [`runc::Runc`] is
//! the backend: an OCI bundle (config.json from `oci-spec`) on an overlayfs rootfs, run
//! by the `runc` binary under a small supervisor process per container
//! ([`supervisor`]), our own binary re-executed. The supervisor holds the container's
//! stdio, writes its log, and records its exit, so containers outlive the daemon.
//! Every container is confined as Docker confines its own ([`hardening`]): a seccomp
//! profile ([`seccomp`]), masked and read-only /proc and /sys paths, few capabilities.

pub mod cgroup;
pub mod copyup;
pub mod hardening;
pub mod runc;
pub mod seccomp;
pub mod supervisor;
pub mod zygote;

use std::path::PathBuf;

/// A bind, tmpfs or volume mount.
#[derive(Clone, Debug, PartialEq)]
pub struct MountSpec {
    pub kind: MountKind,
    pub source: String,
    pub target: String,
    pub readonly: bool,
    pub size_bytes: u64,
    /// A tmpfs's mode (0: the kernel's 1777).
    pub mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MountKind {
    Bind,
    Tmpfs,
    /// A volume's directory (the source), bind-mounted; `copy_up`: an empty one is first
    /// filled from the image's content at the target ([`copyup`]).
    Volume {
        copy_up: bool,
    },
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub id: String,
    /// Image layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `uid[:gid]`, or a user name from the image's /etc/passwd; empty is root.
    pub user: String,
    pub hostname: String,
    pub readonly_rootfs: bool,
    pub mounts: Vec<MountSpec>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    /// Capabilities added to and dropped from the defaults (see [`hardening`]).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Run a minimal init ([`init_binary`]) as PID 1, with the workload as its child.
    pub init: bool,
    /// The network namespace to join (see [`crate::network`]); None shares the node's.
    pub netns: Option<PathBuf>,
    /// Kernel parameters of its namespaces (the manager let only namespaced, safe ones
    /// through: see `shoal_proto::options`).
    pub sysctls: std::collections::HashMap<String, String>,
    /// Resource limits of its processes: (`RLIMIT_NOFILE`, soft, hard); -1 is unlimited.
    pub rlimits: Vec<(String, i64, i64)>,
    /// Supplementary groups: names in the image's /etc/group, or numbers.
    pub groups: Vec<String>,
    /// Its stdin, stdout and stderr are a pseudo-terminal (its output comes through it).
    pub tty: bool,
}

/// Where the init a container runs as PID 1 is mounted, read-only, inside it.
pub const INIT_PATH: &str = "/sbin/shoal-init";

/// The static init binary this node mounts into containers: `SHOAL_INIT`, else tini's
/// static build from Debian's tini package (or Docker's copy of it). It must be static:
/// it runs inside the container's filesystem, whatever libraries the image has.
pub fn init_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("SHOAL_INIT") {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(format!(
                "the init {} (SHOAL_INIT) does not exist: fix SHOAL_INIT, or run the service with --no-init",
                p.display()
            )),
        };
    }
    [
        "/usr/bin/tini-static",
        "/usr/bin/docker-init",
        "/usr/libexec/docker/docker-init",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        "this node has no init for containers (/usr/bin/tini-static): install the tini \
             package, or run the service with --no-init"
            .to_string()
    })
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    pub code: i32,
    /// Killed by the kernel's OOM killer for exceeding its memory limit.
    pub oom: bool,
    /// Set when the container could not run at all (runc refused it, the supervisor died).
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ContainerStatus {
    /// No trace of it on this node.
    Missing,
    /// Prepared, not started.
    Created,
    Running {
        pid: u32,
    },
    Exited(Exit),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// A command to run in a running container for a user (`task exec`).
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// KEY=VALUE, over the container's environment.
    pub env: Vec<String>,
    /// Empty: the container's user.
    pub user: String,
    /// Empty: the container's working directory.
    pub cwd: String,
    pub tty: bool,
    pub stdin: bool,
    pub rows: u16,
    pub cols: u16,
}

/// A running exec: `runc exec` in the foreground (it exits with the command's code),
/// and the ends of the command's input and output.
pub struct ExecProcess {
    pub runc: std::process::Child,
    /// Where the user's input goes (None without `stdin`).
    pub input: Option<std::fs::File>,
    /// The command's output (with a terminal, everything it writes).
    pub stdout: std::fs::File,
    pub stderr: Option<std::fs::File>,
    /// The terminal's master end, for its window size.
    pub master: Option<std::fs::File>,
    /// Where runc writes the command's pid (on the node), once it runs.
    pub pid_file: PathBuf,
}

/// What task controllers need from a container runtime. Calls block (disk, processes):
/// callers in async code use `spawn_blocking`.
pub trait Runtime: Send + Sync + 'static {
    /// Creates the container's filesystem and configuration.
    fn prepare(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError>;
    /// Starts a prepared container and returns its pid once it runs.
    fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    fn status(&self, id: &str) -> ContainerStatus;
    /// Sends a signal to the container's init process.
    fn signal(&self, id: &str, signal: nix::sys::signal::Signal) -> Result<(), RuntimeError>;
    /// Removes a stopped container and everything it left (rootfs mount, bundle, log).
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// IDs of the containers this node has on disk (for re-adoption after a restart).
    fn list(&self) -> Vec<String>;
    /// The container's log file (lines of `<unix nanos> <stream> <text>`).
    fn log_path(&self, id: &str) -> PathBuf;
    /// A descriptor that becomes readable once the running container has ended and its
    /// end is recorded (a pidfd of its supervisor), so callers learn of exits without
    /// polling. None if the container is not running (or the kernel has no pidfds).
    fn exit_fd(&self, id: &str) -> Option<std::os::fd::OwnedFd>;
    /// Runs `args` inside the running container (a health check) and returns its exit
    /// code and output (stdout and stderr, the last 4 KiB). A command still running
    /// after `timeout` is killed and reported as an error.
    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<(i32, String), RuntimeError>;
    /// Starts `spec` inside the running container, with the container's namespaces,
    /// cgroup, seccomp profile and capabilities (never more), for a user to talk to.
    fn exec_process(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError>;
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited.
pub fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

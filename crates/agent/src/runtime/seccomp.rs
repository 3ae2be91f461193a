//! The seccomp profile every container runs under. There is one, and no way to turn it
//! off.
//!
//! It is Docker's default profile, rewritten as a table: `DefaultProfile()` in
//! `github.com/moby/profiles/seccomp` v0.2.3 (`default_linux.go`, the profile moby's
//! daemon applies; read as vendored in moby/moby at commit b985e2313a86, August 2026).
//! The same semantics:
//! - anything not listed fails with EPERM;
//! - the allowlist of ordinary syscalls;
//! - syscalls that need a capability are allowed only when that capability is in the
//!   container's bounding set: `mount`, `unshare`, `setns`, `bpf`, `perf_event_open`…
//!   with CAP_SYS_ADMIN, `ptrace` and friends with CAP_SYS_PTRACE, module loading with
//!   CAP_SYS_MODULE, and so on. So `--cap-add SYS_ADMIN` unlocks what it unlocks in
//!   Docker, and nothing else does;
//! - `clone` only without namespace flags (so no new user namespace) unless
//!   CAP_SYS_ADMIN; `clone3` fails with ENOSYS, whose flags seccomp cannot read, so
//!   libc falls back to `clone`;
//! - `personality` only for the harmless personas; `socket` for every family but
//!   AF_ALG and AF_VSOCK;
//! - never allowed at all: `kexec_load`, `open_by_handle_at` (without
//!   CAP_DAC_READ_SEARCH), `add_key`/`keyctl`/`request_key`, `userfaultfd`, `swapon`…
//!
//! Architectures: the host's own ABI only (x86_64, aarch64, s390x, riscv64…). One
//! departure from Docker, which also lists the compat ABIs (x86 and x32 on x86_64, arm on
//! aarch64): a container may not make 32-bit system calls. shoal pulls only images built
//! for the host's platform, so only a 32-bit program inside such an image needs them;
//! the 32-bit entry points are a part of the kernel with a history of their own bugs
//! (kernels since 6.7 can even be booted with `ia32_emulation=0`); and every ABI listed
//! makes runc's libseccomp compile the whole filter once more on every container start
//! (x86 cost 0.6 to 0.9 s of a 150-container scale on a 2-core machine). A 32-bit call
//! meets the filter's bad-architecture action: the process is killed with SIGSYS, and
//! the task's error says why.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;
use std::sync::OnceLock;

/// The name `inspect` shows for the profile below.
pub const PROFILE_NAME: &str = "default";

#[derive(Clone, Copy)]
enum Action {
    Allow,
    Errno(i32),
}

#[derive(Clone, Copy)]
enum Op {
    Eq,
    Lt,
    Gt,
    /// `(arg & value) == value_two`.
    MaskedEq(u64),
}

#[derive(Clone, Copy)]
struct Arg {
    index: usize,
    value: u64,
    op: Op,
}

/// Docker's `Filter`: `caps` must all be held (includes) or any one held (excludes);
/// `arches` in Docker's names (`amd64`, `arm64`, `x86`…); a minimum kernel version.
#[derive(Clone, Copy)]
struct Filter {
    caps: &'static [&'static str],
    arches: &'static [&'static str],
    min_kernel: Option<(u32, u32)>,
}

const ANY: Filter = Filter {
    caps: &[],
    arches: &[],
    min_kernel: None,
};

#[derive(Clone, Copy)]
struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    /// The rule applies only when this holds (Docker's `includes`).
    when: Filter,
    /// The rule does not apply when this holds (Docker's `excludes`).
    unless: Filter,
}

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        args: &[],
        when: ANY,
        unless: ANY,
    }
}

impl Rule {
    const fn with_cap(self, cap: &'static [&'static str]) -> Rule {
        Rule {
            when: Filter { caps: cap, ..ANY },
            ..self
        }
    }
    const fn on(self, arches: &'static [&'static str]) -> Rule {
        Rule {
            when: Filter {
                arches,
                ..self.when
            },
            ..self
        }
    }
    const fn args(self, args: &'static [Arg]) -> Rule {
        Rule { args, ..self }
    }
}

const fn arg0(op: Op, value: u64) -> Arg {
    Arg {
        index: 0,
        value,
        op,
    }
}

/// The namespace flags of `clone`: none of them may be set without CAP_SYS_ADMIN.
const NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

const AF_ALG: u64 = libc::AF_ALG as u64;
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
// The socket rules rely on AF_ALG and AF_VSOCK being two apart, as Docker's do.
const _: () = assert!(AF_VSOCK == AF_ALG + 2);

/// Allowed whatever the container's capabilities.
#[rustfmt::skip]
const ALWAYS: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr",
    "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall",
    "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
    "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open",
    "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
    "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl",
    "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
    "write", "writev",
];

/// Docker's rules, in Docker's order.
const RULES: &[Rule] = &[
    allow(ALWAYS),
    Rule {
        when: Filter {
            min_kernel: Some((4, 8)),
            ..ANY
        },
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    },
    allow(&["socket"]).args(&[arg0(Op::Lt, AF_ALG)]),
    allow(&["socket"]).args(&[arg0(Op::Eq, AF_ALG + 1)]),
    allow(&["socket"]).args(&[arg0(Op::Gt, AF_VSOCK)]),
    // PER_LINUX, UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and the query 0xffffffff.
    allow(&["personality"]).args(&[arg0(Op::Eq, 0x0)]),
    allow(&["personality"]).args(&[arg0(Op::Eq, 0x0008)]),
    allow(&["personality"]).args(&[arg0(Op::Eq, 0x20000)]),
    allow(&["personality"]).args(&[arg0(Op::Eq, 0x20008)]),
    allow(&["personality"]).args(&[arg0(Op::Eq, 0xffff_ffff)]),
    allow(&["sync_file_range2", "swapcontext"]).on(&["ppc64le"]),
    allow(&[
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ])
    .on(&["arm", "arm64"]),
    allow(&["arch_prctl"]).on(&["amd64", "x32"]),
    allow(&["modify_ldt"]).on(&["amd64", "x32", "x86"]),
    allow(&[
        "s390_pci_mmio_read",
        "s390_pci_mmio_write",
        "s390_runtime_instr",
    ])
    .on(&["s390", "s390x"]),
    allow(&["riscv_flush_icache"]).on(&["riscv64"]),
    allow(&["open_by_handle_at"]).with_cap(&["CAP_DAC_READ_SEARCH"]),
    allow(&[
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "lsm_get_self_attr",
        "lsm_list_modules",
        "lsm_set_self_attr",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ])
    .with_cap(&["CAP_SYS_ADMIN"]),
    // clone without namespace flags; s390 has the flags in the second argument.
    Rule {
        unless: Filter {
            caps: &["CAP_SYS_ADMIN"],
            arches: &["s390", "s390x"],
            min_kernel: None,
        },
        ..allow(&["clone"]).args(&[Arg {
            index: 0,
            value: NS_FLAGS,
            op: Op::MaskedEq(0),
        }])
    },
    Rule {
        unless: Filter {
            caps: &["CAP_SYS_ADMIN"],
            ..ANY
        },
        ..allow(&["clone"])
            .args(&[Arg {
                index: 1,
                value: NS_FLAGS,
                op: Op::MaskedEq(0),
            }])
            .on(&["s390", "s390x"])
    },
    Rule {
        action: Action::Errno(libc::ENOSYS),
        unless: Filter {
            caps: &["CAP_SYS_ADMIN"],
            ..ANY
        },
        ..allow(&["clone3"])
    },
    allow(&["reboot"]).with_cap(&["CAP_SYS_BOOT"]),
    allow(&["chroot"]).with_cap(&["CAP_SYS_CHROOT"]),
    allow(&["delete_module", "init_module", "finit_module"]).with_cap(&["CAP_SYS_MODULE"]),
    allow(&["acct"]).with_cap(&["CAP_SYS_PACCT"]),
    allow(&[
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ])
    .with_cap(&["CAP_SYS_PTRACE"]),
    allow(&["iopl", "ioperm"]).with_cap(&["CAP_SYS_RAWIO"]),
    allow(&["settimeofday", "stime", "clock_settime", "clock_settime64"])
        .with_cap(&["CAP_SYS_TIME"]),
    allow(&["vhangup"]).with_cap(&["CAP_SYS_TTY_CONFIG"]),
    allow(&[
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
    ])
    .with_cap(&["CAP_SYS_NICE"]),
    allow(&["syslog"]).with_cap(&["CAP_SYSLOG"]),
    allow(&["bpf"]).with_cap(&["CAP_BPF"]),
    allow(&["perf_event_open"]).with_cap(&["CAP_PERFMON"]),
];

/// What a rule is checked against: the host, as Docker sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Host {
    /// Docker's name for the architecture: `amd64`, `arm64`, `x86`, `arm`, `s390x`…
    pub arch: &'static str,
    /// (major, minor) of the running kernel; (0, 0) if it cannot be read.
    pub kernel: (u32, u32),
}

impl Host {
    /// This machine (read once).
    pub fn current() -> Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        *HOST.get_or_init(|| Host {
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
                other => other,
            },
            kernel: kernel_version(
                &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
            ),
        })
    }
}

/// `6.1.0-18-amd64` → (6, 1).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The seccomp architecture of a host: its own ABI, and no compat one (see the top).
fn architectures(host: Host) -> Vec<Arch> {
    match host.arch {
        "amd64" => vec![Arch::ScmpArchX86_64],
        "arm64" => vec![Arch::ScmpArchAarch64],
        "s390x" => vec![Arch::ScmpArchS390x],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        // Elsewhere runc filters the native architecture only.
        _ => vec![],
    }
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

impl Rule {
    /// Docker's `setupSeccomp`: a rule is skipped when any exclusion holds, or when any
    /// inclusion does not.
    fn applies(&self, caps: &[&str], host: Host) -> bool {
        let held = |c: &&str| caps.contains(c);
        let u = &self.unless;
        if !u.is_empty()
            && (u.arches.contains(&host.arch)
                || u.caps.iter().any(held)
                || u.min_kernel.is_some_and(|k| host.kernel >= k))
        {
            return false;
        }
        let w = &self.when;
        (w.arches.is_empty() || w.arches.contains(&host.arch))
            && w.caps.iter().all(held)
            && w.min_kernel.is_none_or(|k| host.kernel >= k)
    }

    fn build(&self) -> Result<LinuxSyscall, OciSpecError> {
        let mut b = LinuxSyscallBuilder::default()
            .names(self.names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        b = match self.action {
            Action::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
            Action::Errno(e) => b
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(e as u32),
        };
        if !self.args.is_empty() {
            let args = self
                .args
                .iter()
                .map(|a| {
                    let (op, two) = match a.op {
                        Op::Eq => (LinuxSeccompOperator::ScmpCmpEq, None),
                        Op::Lt => (LinuxSeccompOperator::ScmpCmpLt, None),
                        Op::Gt => (LinuxSeccompOperator::ScmpCmpGt, None),
                        Op::MaskedEq(v) => (LinuxSeccompOperator::ScmpCmpMaskedEq, Some(v)),
                    };
                    let b = LinuxSeccompArgBuilder::default()
                        .index(a.index)
                        .value(a.value)
                        .op(op);
                    match two {
                        Some(v) => b.value_two(v).build(),
                        None => b.build(),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            b = b.args(args);
        }
        b.build()
    }
}

/// The profile for a container whose bounding set is `caps` (`CAP_…` names), on `host`.
pub fn profile(caps: &[&str], host: Host) -> Result<LinuxSeccomp, OciSpecError> {
    let syscalls = RULES
        .iter()
        .filter(|r| r.applies(caps, host))
        .map(Rule::build)
        .collect::<Result<Vec<_>, _>>()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(architectures(host))
        .syscalls(syscalls)
        .build()
}

/// [`profile`] on this machine.
pub fn default_profile(caps: &[&str]) -> Result<LinuxSeccomp, OciSpecError> {
    profile(caps, Host::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD64: Host = Host {
        arch: "amd64",
        kernel: (6, 1),
    };

    /// What the kernel would do with `name(args…)` under `p`, as libseccomp builds it:
    /// the action of a rule for `name` whose argument checks all pass, else the default.
    fn verdict(p: &LinuxSeccomp, name: &str, args: &[u64]) -> (LinuxSeccompAction, u32) {
        for s in p.syscalls().as_deref().unwrap_or_default() {
            if !s.names().iter().any(|n| n == name) {
                continue;
            }
            let pass = s.args().as_deref().unwrap_or_default().iter().all(|a| {
                let v = args.get(a.index()).copied().unwrap_or(0);
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => v == a.value(),
                    LinuxSeccompOperator::ScmpCmpLt => v < a.value(),
                    LinuxSeccompOperator::ScmpCmpGt => v > a.value(),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        v & a.value() == a.value_two().unwrap_or(0)
                    }
                    op => panic!("operator {op:?} not used by the profile"),
                }
            });
            if pass {
                return (s.action(), s.errno_ret().unwrap_or(0));
            }
        }
        (p.default_action(), p.default_errno_ret().unwrap_or(0))
    }

    const ALLOW: (LinuxSeccompAction, u32) = (LinuxSeccompAction::ScmpActAllow, 0);
    const EPERM: (LinuxSeccompAction, u32) = (LinuxSeccompAction::ScmpActErrno, libc::EPERM as u32);
    const ENOSYS: (LinuxSeccompAction, u32) =
        (LinuxSeccompAction::ScmpActErrno, libc::ENOSYS as u32);

    fn default_caps() -> Vec<&'static str> {
        shoal_proto::caps::DEFAULT.to_vec()
    }

    #[test]
    fn the_default_profile_blocks_what_docker_blocks() {
        let p = profile(&default_caps(), AMD64).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(libc::EPERM as u32));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..]),
            "the native ABI only: no 32-bit system calls"
        );
        for name in [
            "kexec_load",
            "kexec_file_load",
            "open_by_handle_at",
            "add_key",
            "keyctl",
            "request_key",
            "bpf",
            "perf_event_open",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "init_module",
            "finit_module",
            "reboot",
            "swapon",
            "userfaultfd",
            "clock_settime",
            "chroot",
            "acct",
            "iopl",
        ] {
            assert_eq!(verdict(&p, name, &[]), EPERM, "{name}");
        }
        // New namespaces through clone: each flag alone is refused.
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
        ] {
            let flags = (flag | libc::SIGCHLD) as u64;
            assert_eq!(verdict(&p, "clone", &[flags]), EPERM, "clone {flag:#x}");
        }
        assert_eq!(verdict(&p, "clone3", &[]), ENOSYS);
        assert_eq!(verdict(&p, "personality", &[0x0040_0000]), EPERM);
        assert_eq!(verdict(&p, "socket", &[AF_ALG]), EPERM);
        assert_eq!(verdict(&p, "socket", &[AF_VSOCK]), EPERM);
    }

    #[test]
    fn the_default_profile_allows_ordinary_programs() {
        let p = profile(&default_caps(), AMD64).unwrap();
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "mmap",
            "futex",
            "exit_group",
            "wait4",
            "arch_prctl",
            "modify_ldt",
            "ptrace",
            "rseq",
        ] {
            assert_eq!(verdict(&p, name, &[]), ALLOW, "{name}");
        }
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        assert_eq!(verdict(&p, "clone", &[thread]), ALLOW);
        assert_eq!(verdict(&p, "clone", &[libc::SIGCHLD as u64]), ALLOW);
        assert_eq!(verdict(&p, "personality", &[0xffff_ffff]), ALLOW);
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(verdict(&p, "socket", &[family as u64]), ALLOW, "{family}");
        }
        assert_eq!(verdict(&p, "socket", &[39]), ALLOW);
    }

    #[test]
    fn adding_a_capability_unlocks_what_it_unlocks_in_docker() {
        let mut caps = default_caps();
        caps.push("CAP_SYS_ADMIN");
        let p = profile(&caps, AMD64).unwrap();
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
        ] {
            assert_eq!(verdict(&p, name, &[]), ALLOW, "{name}");
        }
        let newuser = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        assert_eq!(verdict(&p, "clone", &[newuser]), ALLOW);
        assert_eq!(verdict(&p, "clone3", &[]), ALLOW);
        // Still blocked: what no capability unlocks, and what another one does.
        for name in ["kexec_load", "keyctl", "add_key", "init_module", "reboot"] {
            assert_eq!(verdict(&p, name, &[]), EPERM, "{name}");
        }

        for (cap, name) in [
            ("CAP_SYS_MODULE", "init_module"),
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYS_TIME", "clock_settime"),
            ("CAP_SYS_CHROOT", "chroot"),
            ("CAP_SYS_PTRACE", "kcmp"),
            ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
        ] {
            let mut caps = default_caps();
            assert_eq!(verdict(&profile(&caps, AMD64).unwrap(), name, &[]), EPERM);
            caps.push(cap);
            let p = profile(&caps, AMD64).unwrap();
            assert_eq!(verdict(&p, name, &[]), ALLOW, "{cap} unlocks {name}");
            assert_eq!(
                verdict(&p, "mount", &[]),
                EPERM,
                "{cap} does not unlock mount"
            );
        }
    }

    #[test]
    fn rules_follow_the_architecture_and_kernel() {
        let arm = Host {
            arch: "arm64",
            kernel: (6, 1),
        };
        let p = profile(&default_caps(), arm).unwrap();
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64][..])
        );
        assert_eq!(verdict(&p, "arch_prctl", &[]), EPERM);
        assert_eq!(verdict(&p, "set_tls", &[]), ALLOW);
        let s390 = Host {
            arch: "s390x",
            kernel: (6, 1),
        };
        let p = profile(&default_caps(), s390).unwrap();
        let newuser = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        assert_eq!(verdict(&p, "clone", &[0, newuser]), EPERM);
        assert_eq!(verdict(&p, "clone", &[0, libc::SIGCHLD as u64]), ALLOW);
        // ptrace needs 4.8 (earlier kernels let it bypass seccomp) or CAP_SYS_PTRACE.
        let old = Host {
            arch: "amd64",
            kernel: (4, 4),
        };
        let p = profile(&default_caps(), old).unwrap();
        assert_eq!(verdict(&p, "ptrace", &[]), EPERM);
        assert_eq!(kernel_version("6.18.44-fc-v595"), (6, 18));
        assert_eq!(kernel_version("4.8"), (4, 8));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }

    #[test]
    fn this_host_is_read() {
        let h = Host::current();
        assert!(h.kernel >= (3, 17), "{h:?}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.arch, "amd64");
        }
        assert!(!profile(&default_caps(), h)
            .unwrap()
            .architectures()
            .as_ref()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_profile_serializes_as_runc_reads_it() {
        let p = profile(&default_caps(), AMD64).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], libc::EPERM);
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
        let clone = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], NS_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
    }
}

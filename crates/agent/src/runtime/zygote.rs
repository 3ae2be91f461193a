//! The supervisor zygote. The daemon forks it at start, while it is still one thread;
//! the zygote forks one supervisor per container on request. Forked supervisors share
//! the daemon's already-relocated code and data pages copy-on-write instead of each
//! re-executing (and re-relocating) the whole binary, which keeps a supervisor near
//! 100 KB of its own memory rather than ~1 MB. If the zygote is not available the
//! runtime re-executes the binary instead.

use super::supervisor::{self, SupervisorArgs};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{fork, setsid, ForkResult};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

pub struct Zygote {
    sock: Mutex<(UnixStream, BufReader<UnixStream>)>,
}

static ZYGOTE: OnceLock<Zygote> = OnceLock::new();

static DEAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The zygote, if [`start`] ran and it is still alive.
pub fn get() -> Option<&'static Zygote> {
    if DEAD.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    ZYGOTE.get()
}

/// Forks the zygote. Call only while the process has a single thread (first thing in
/// the daemon, before any async runtime exists).
pub fn start() -> std::io::Result<()> {
    let (parent, child) = UnixStream::pair()?;
    // SAFETY: the caller guarantees the process is single-threaded, so the child may
    // run arbitrary code.
    match unsafe { fork() }.map_err(std::io::Error::from)? {
        ForkResult::Child => {
            drop(parent);
            zygote_main(child)
        }
        ForkResult::Parent { .. } => {
            drop(child);
            // A zygote that stops answering must not hang container starts.
            parent.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            let reader = BufReader::new(parent.try_clone()?);
            let _ = ZYGOTE.set(Zygote {
                sock: Mutex::new((parent, reader)),
            });
            Ok(())
        }
    }
}

impl Zygote {
    /// Starts a supervisor for `args`; returns its pid. An error of kind `TimedOut`
    /// means the request was sent and not answered: the supervisor may be starting.
    pub fn spawn(&self, args: &SupervisorArgs) -> std::io::Result<u32> {
        let mut guard = self
            .sock
            .lock()
            .map_err(|_| std::io::Error::other("zygote lock poisoned"))?;
        let (w, r) = &mut *guard;
        let line = serde_json::to_string(&args.to_args()).map_err(std::io::Error::other)?;
        let sent = w
            .write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"));
        if let Err(e) = sent {
            DEAD.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
        let mut reply = String::new();
        let read = r.read_line(&mut reply).map_err(|e| {
            // The request went out and may be acted on; a late answer would be read as
            // the answer to the next request. This zygote is done: later starts
            // re-execute, and this one must not start a second supervisor.
            DEAD.store(true, std::sync::atomic::Ordering::SeqCst);
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the supervisor zygote did not answer: {e}"),
            )
        })?;
        if read == 0 {
            DEAD.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("the supervisor zygote is gone"));
        }
        reply
            .trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("zygote: {}", reply.trim())))
    }
}

fn zygote_main(sock: UnixStream) -> ! {
    // Supervisors are reaped by the kernel; their exit codes do not matter here.
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGCHLD, SigHandler::SigIgn);
        libc::prctl(
            libc::PR_SET_NAME,
            c"shoal-zygote".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let Ok(write_half) = sock.try_clone() else {
        std::process::exit(1)
    };
    let mut out = write_half;
    let reader = BufReader::new(sock);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let reply = match serde_json::from_str::<Vec<String>>(&line)
            .ok()
            .and_then(|v| SupervisorArgs::parse(&v))
        {
            None => "error: bad request".to_string(),
            // SAFETY: the zygote is single-threaded.
            Some(args) => match unsafe { fork() } {
                Ok(ForkResult::Child) => supervisor_child(&args, out.as_raw_fd()),
                Ok(ForkResult::Parent { child }) => child.as_raw().to_string(),
                Err(e) => format!("error: fork: {e}"),
            },
        };
        if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
            break;
        }
    }
    // The daemon went away: supervisors live on, re-parented.
    std::process::exit(0)
}

fn supervisor_child(args: &SupervisorArgs, sock_fd: i32) -> ! {
    // SAFETY: plain syscalls in a fresh single-threaded child.
    unsafe {
        // The supervisor waits for its container: it needs SIGCHLD back.
        let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
        libc::close(sock_fd);
        // Nothing of the zygote's (its socket to the daemon above all) stays open here, or
        // a dead zygote would never look dead to the daemon.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if devnull >= 0 {
            libc::dup2(devnull, 0);
            libc::dup2(devnull, 1);
            libc::dup2(devnull, 2);
            if devnull > 2 {
                libc::close(devnull);
            }
        }
        libc::prctl(
            libc::PR_SET_NAME,
            c"shoal-supervise".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let _ = setsid();
    std::process::exit(supervisor::run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_request_is_told_apart_and_retires_the_zygote() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .expect("timeout");
        let z = Zygote {
            sock: Mutex::new((ours.try_clone().expect("clone"), BufReader::new(ours))),
        };
        let args = SupervisorArgs {
            id: "c1".into(),
            dir: "/nonexistent".into(),
            runc_root: "/nonexistent".into(),
            runc_bin: "runc".into(),
            cgroup_path: String::new(),
        };
        let e = z.spawn(&args).expect_err("nobody answers");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(DEAD.load(std::sync::atomic::Ordering::SeqCst));
        drop(theirs);
    }
}

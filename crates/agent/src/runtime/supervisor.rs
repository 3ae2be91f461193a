//! The per-container supervisor: `shoal supervise-container ...`, started detached by the
//! runtime. It becomes the subreaper of its container, starts it with one `runc run
//! --detach` (not `create` then `start`: a second runc process would add several ms to
//! every start), writes its output to the log with timestamps, waits for it, records how
//! it ended
//! (exit code, OOM) in `exit.json`, and removes it from runc. Plain blocking code with no
//! async runtime: it stays small, one per container.

use super::Exit;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

pub const SUBCOMMAND: &str = "supervise-container";

#[derive(Clone, Debug)]
pub struct SupervisorArgs {
    pub id: String,
    pub dir: PathBuf,
    pub runc_root: PathBuf,
    pub runc_bin: String,
    pub cgroup_path: String,
}

impl SupervisorArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.dir.display().to_string(),
            self.runc_root.display().to_string(),
            self.runc_bin.clone(),
            self.cgroup_path.clone(),
        ]
    }

    pub fn parse(args: &[String]) -> Option<Self> {
        match args {
            [id, dir, root, bin, cg] => Some(SupervisorArgs {
                id: id.clone(),
                dir: dir.into(),
                runc_root: root.into(),
                runc_bin: bin.clone(),
                cgroup_path: cg.clone(),
            }),
            _ => None,
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, data).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn record_exit(dir: &Path, exit: &Exit) {
    let data = serde_json::to_vec(exit).unwrap_or_default();
    write_atomic(&dir.join("exit.json"), &data);
}

/// The FIFO in a container's directory that the daemon waits on while it starts: the
/// supervisor writes a byte once `pid` or `exit.json` is there.
pub const STARTED_FIFO: &str = "started";

/// Wakes the daemon waiting for the start, if it still waits.
fn notify_started(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join(STARTED_FIFO))
    {
        let _ = f.write_all(b"1");
    }
}

fn runc(a: &SupervisorArgs) -> Command {
    let mut c = Command::new(&a.runc_bin);
    c.arg("--root").arg(&a.runc_root);
    c
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A line longer than this is cut into several log lines (so a container that never
/// writes a newline cannot grow the supervisor).
const MAX_LINE: usize = 16 * 1024;

/// Appends complete lines from `buf` to the log; keeps a partial last line in `buf`.
fn flush_lines(log: &mut File, stream: &str, buf: &mut Vec<u8>, all: bool) {
    let all = all || (buf.len() >= MAX_LINE && !buf.contains(&b'\n'));
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let _ = write!(log, "{} {stream} ", now_nanos());
        let _ = log.write_all(&line);
    }
    if all && !buf.is_empty() {
        let _ = write!(log, "{} {stream} ", now_nanos());
        let _ = log.write_all(buf);
        let _ = log.write_all(b"\n");
        buf.clear();
    }
}

/// The file in a container's directory that asks for a terminal (`tty`): the
/// container's stdio is a pseudo-terminal runc makes inside it, whose master end comes
/// to the supervisor over a console socket.
pub const TTY_MARKER: &str = "tty";

/// A listening console socket for runc (`--console-socket`). Abstract (no file, gone
/// with the supervisor, and no length limit from the container directory's path).
struct ConsoleSocket {
    listener: std::os::unix::net::UnixListener,
    name: String,
}

impl ConsoleSocket {
    fn bind(id: &str) -> Result<ConsoleSocket, String> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("shoal-console-{id}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("cannot name the console socket: {e}"))?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
            .map_err(|e| format!("cannot make the console socket: {e}"))?;
        Ok(ConsoleSocket {
            listener,
            name: format!("@{name}"),
        })
    }

    /// The terminal's master end, which runc sent while it created the container
    /// (it has exited by now: nothing here blocks).
    fn receive(&self) -> Result<File, String> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let _ = self.listener.set_nonblocking(true);
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| format!("runc sent no terminal: {e}"))?;
        let _ = conn.set_nonblocking(false);
        let mut name = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot receive the terminal from runc: {e}"))?;
        for c in msg.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let f = unsafe { File::from_raw_fd(fd) };
                    for &extra in &fds[1..] {
                        // SAFETY: as above; we own and close the ones we do not use.
                        drop(unsafe { File::from_raw_fd(extra) });
                    }
                    set_window(&f, 24, 80);
                    return Ok(f);
                }
            }
        }
        Err("runc sent no terminal".into())
    }
}

/// Sets a terminal's window size (a new one is 0×0, which confuses programs that lay
/// out their output); its foreground processes hear of it (SIGWINCH).
pub fn set_window(master: &impl std::os::fd::AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// Entry point; never returns.
pub fn main(args: &[String]) -> ! {
    let Some(a) = SupervisorArgs::parse(args) else {
        eprintln!("usage: shoal {SUBCOMMAND} ID DIR RUNC_ROOT RUNC CGROUP");
        std::process::exit(2);
    };
    let code = run(&a);
    std::process::exit(code)
}

fn fail(a: &SupervisorArgs, msg: String) -> i32 {
    record_exit(
        &a.dir,
        &Exit {
            code: -1,
            oom: false,
            error: Some(msg),
        },
    );
    notify_started(&a.dir);
    let _ = runc(a)
        .args(["delete", "--force", &a.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    1
}

/// Supervises one container; returns the process exit code.
pub fn run(a: &SupervisorArgs) -> i32 {
    // Orphans of the container (its init once runc exits) become our children.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    write_atomic(
        &a.dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.dir.join("container.log"))
    {
        Ok(f) => f,
        Err(e) => return fail(a, format!("cannot open the container log: {e}")),
    };
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))
    };
    let ((out_r, out_w), (err_r, err_w)) = match (pipe(), pipe()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return fail(a, e),
    };
    let pid_file = a.dir.join("init.pid");
    let console = match a.dir.join(TTY_MARKER).exists() {
        true => match ConsoleSocket::bind(&a.id) {
            Ok(c) => Some(c),
            Err(e) => return fail(a, e),
        },
        false => None,
    };
    let mut cmd = runc(a);
    cmd.arg("run").arg("--detach");
    if let Some(c) = &console {
        cmd.arg("--console-socket").arg(&c.name);
    }
    let started = cmd
        .arg("--bundle")
        .arg(a.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .output();
    // runc is gone; only the container holds the write ends now.
    let out_r = File::from(out_r);
    let mut err_r = File::from(err_r);
    match started {
        Ok(o) if o.status.success() => {}
        Ok(_) | Err(_) => {
            // runc's own complaint went to the stderr pipe.
            let mut msg = String::new();
            let _ = nix::fcntl::fcntl(
                err_r.as_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            let _ = err_r.read_to_string(&mut msg);
            return fail(
                a,
                format!("the container could not be created: {}", runc_error(&msg)),
            );
        }
    }
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return fail(a, "runc did not report the container's pid".into());
    };
    // With a terminal, the container's output is the terminal's (runc's pipes closed
    // with runc).
    let mut streams = match &console {
        Some(c) => match c.receive() {
            Ok(master) => vec![Stream::new(master, "stdout", true)],
            Err(e) => return fail(a, e),
        },
        None => vec![
            Stream::new(out_r, "stdout", false),
            Stream::new(err_r, "stderr", false),
        ],
    };
    drop(console);
    write_atomic(&a.dir.join("pid"), pid.to_string().as_bytes());
    notify_started(&a.dir);

    let status = pump(&mut log, &mut streams, pid);
    let oom = super::cgroup::oom_kills(&a.cgroup_path) > 0;
    let _ = runc(a)
        .args(["delete", "--force", &a.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = log.sync_all();
    record_exit(
        &a.dir,
        &Exit {
            code: status,
            oom,
            error: None,
        },
    );
    0
}

/// The reason in runc's last complaint, without its logrus dressing:
/// `time=… level=error msg="runc run failed: exec: \"x\": not found"` → `exec: "x": not found`.
fn runc_error(stderr: &str) -> String {
    let last = stderr.trim().lines().last().unwrap_or("").trim();
    let msg = match last.split_once("msg=\"") {
        Some((_, rest)) => rest.strip_suffix('"').unwrap_or(rest).replace("\\\"", "\""),
        None => last.to_string(),
    };
    match msg.trim_start_matches("runc run failed: ") {
        "" => "runc run failed".to_string(),
        m => m.to_string(),
    }
}

/// One output of a container: a pipe, or a terminal's master end.
struct Stream {
    file: File,
    name: &'static str,
    /// A terminal's lines end in \r\n: the log keeps them as lines.
    tty: bool,
    buf: Vec<u8>,
    open: bool,
}

impl Stream {
    fn new(file: impl Into<File>, name: &'static str, tty: bool) -> Stream {
        Stream {
            file: file.into(),
            name,
            tty,
            buf: Vec::new(),
            open: true,
        }
    }

    fn flush(&mut self, log: &mut File, all: bool) {
        if self.tty {
            // "\r\n" → "\n" (a lone \r stays: progress bars redraw with it).
            let mut out = Vec::with_capacity(self.buf.len());
            for (i, &b) in self.buf.iter().enumerate() {
                if !(b == b'\r' && self.buf.get(i + 1) == Some(&b'\n')) {
                    out.push(b);
                }
            }
            self.buf = out;
        }
        flush_lines(log, self.name, &mut self.buf, all);
    }
}

/// Copies output to the log until the container exits, then returns its exit code
/// (128 + signal if killed). Sleeps in poll(2) until there is output or the container
/// ends (a pidfd of its init turns readable): an idle container costs no wake-ups.
fn pump(log: &mut File, streams: &mut [Stream], pid: i32) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let ended = super::pidfd_open(pid as u32).ok();
    let mut exit: Option<i32> = None;
    let mut chunk = [0u8; 8192];
    loop {
        // Reap everything that ended; note our container's status.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => exit = Some(c),
                Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                    exit = Some(128 + s as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if streams.iter().all(|s| !s.open) && exit.is_some() {
            break;
        }
        // Once the container has ended, its output gets a moment to drain; while it
        // runs, poll waits for an event (or, without a pidfd, checks every 200 ms).
        let timeout = match (exit, &ended) {
            (Some(_), _) => PollTimeout::from(50u16),
            (None, Some(_)) => PollTimeout::NONE,
            (None, None) => PollTimeout::from(200u16),
        };
        let mut fds = Vec::new();
        let mut which = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            if s.open {
                fds.push(PollFd::new(s.file.as_fd(), PollFlags::POLLIN));
                which.push(Some(i));
            }
        }
        if let (Some(fd), None) = (&ended, exit) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(None);
        }
        if fds.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => 0,
        };
        if n <= 0 {
            if exit.is_some() {
                // The container is gone but something else holds its output open.
                break;
            }
            continue;
        }
        let ready: Vec<usize> = fds
            .iter()
            .zip(&which)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .filter_map(|(_, w)| *w)
            .collect();
        drop(fds);
        for i in ready {
            let s = &mut streams[i];
            match s.file.read(&mut chunk) {
                // A terminal's master reads EIO once no process holds the terminal.
                Ok(0) | Err(_) => s.open = false,
                Ok(n) => s.buf.extend_from_slice(&chunk[..n]),
            }
            let all = !s.open;
            s.flush(log, all);
        }
    }
    for s in streams.iter_mut() {
        s.flush(log, true);
    }
    exit.unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::runc_error;

    #[test]
    fn runc_errors_lose_their_logrus_dressing() {
        let line = "time=\"2026-11-27T16:01:30Z\" level=error msg=\"runc run failed: unable to \
            start container process: exec: \\\"/no/such\\\": stat /no/such: no such file or directory\"\n";
        assert_eq!(
            runc_error(line),
            "unable to start container process: exec: \"/no/such\": stat /no/such: no such file or directory"
        );
        assert_eq!(runc_error("runc run failed: boom\n"), "boom");
        assert_eq!(runc_error(""), "runc run failed");
    }
}

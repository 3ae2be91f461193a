//! Serving an exec the managers asked for (`task exec`): the command runs in the task's
//! container through the runtime, and its output goes up, and the user's input comes
//! down, on one `Dispatcher.Exec` stream over the node's mTLS channel. When the user goes
//! (their stream ends without closing stdin first) or the manager's stream breaks, the
//! command and everything it started are killed: an exec never leaves a process behind.

use crate::runtime::{ExecProcess, ExecSpec, Runtime};
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{ExecInput, ExecOutput, ExecRequest};
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Serves exec `req` on this node; `known`: the task is this node's.
pub async fn serve(
    channels: crate::managers::Channels,
    runtime: Arc<dyn Runtime>,
    req: ExecRequest,
    known: bool,
) {
    let (up, up_rx) = mpsc::channel::<ExecOutput>(64);
    let _ = up
        .send(ExecOutput {
            exec_id: req.id.clone(),
            ..Default::default()
        })
        .await;
    let mut client = DispatcherClient::new(channels.borrow().clone());
    let down = match client
        .exec(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::warn!(exec = %req.id, error = %e.message(), "cannot attach to an exec");
            return;
        }
    };
    let start = req.start.unwrap_or_default();
    let fail = |error: String| ExecOutput {
        error,
        ..Default::default()
    };
    if !known {
        let _ = up
            .send(fail(format!("task {} is not on this node", start.task)))
            .await;
        return close(up, down).await;
    }
    let spec = ExecSpec {
        args: start.cmd.clone(),
        env: start.env.clone(),
        user: start.user.clone(),
        cwd: start.workdir.clone(),
        tty: start.tty,
        stdin: start.stdin,
        rows: start.rows.min(u16::MAX as u32) as u16,
        cols: start.cols.min(u16::MAX as u32) as u16,
    };
    let (rt, id) = (runtime.clone(), start.task.clone());
    let started = tokio::task::spawn_blocking(move || rt.exec_process(&id, &spec)).await;
    let process = match started {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = up.send(fail(e.to_string())).await;
            return close(up, down).await;
        }
        Err(e) => {
            let _ = up.send(fail(e.to_string())).await;
            return close(up, down).await;
        }
    };
    run(process, up, down).await;
}

/// Relays until the command ends (or the user goes, which kills it).
async fn run(
    mut p: ExecProcess,
    up: mpsc::Sender<ExecOutput>,
    mut down: tonic::Streaming<ExecInput>,
) {
    // The output, read on threads (blocking reads), each chunk sent as it comes.
    let mut readers = Vec::new();
    let outputs = [(Some(p.stdout), false), (p.stderr.take(), true)];
    for (f, is_err) in outputs {
        let Some(mut f) = f else { continue };
        let up = up.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match f.read(&mut buf) {
                    // A terminal's master reads EIO once no process holds the terminal.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        let m = match is_err {
                            true => ExecOutput {
                                stderr: data,
                                ..Default::default()
                            },
                            false => ExecOutput {
                                stdout: data,
                                ..Default::default()
                            },
                        };
                        if up.blocking_send(m).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    // The user's input, written on a thread (a blocking write may wait on the command).
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    if let Some(mut input) = p.input.take() {
        std::thread::spawn(move || {
            while let Ok(Some(data)) = in_rx.recv() {
                if input.write_all(&data).is_err() {
                    break;
                }
            }
        });
    }
    let master = p.master.take();
    let pid_file = p.pid_file.clone();
    let runc_pid = p.runc.id();
    let mut runc = p.runc;
    // If this future is dropped before the command ends (the agent stopping), the
    // command goes too.
    let mut guard = Running {
        pid_file: pid_file.clone(),
        runc_pid,
        ended: false,
    };
    let waited = tokio::task::spawn_blocking(move || runc.wait());
    tokio::pin!(waited);
    let mut user_gone = false;
    let status = loop {
        tokio::select! {
            st = &mut waited => break st.ok().and_then(|r| r.ok()),
            m = down.message(), if !user_gone => match m {
                Ok(Some(m)) => {
                    if !m.stdin.is_empty() {
                        let _ = in_tx.send(Some(m.stdin));
                    }
                    if m.stdin_closed {
                        let _ = in_tx.send(None);
                    }
                    if let (Some(t), true) = (&master, m.rows > 0 && m.cols > 0) {
                        crate::runtime::supervisor::set_window(
                            t,
                            m.rows.min(u16::MAX as u32) as u16,
                            m.cols.min(u16::MAX as u32) as u16,
                        );
                    }
                }
                // The user went (or the manager's stream broke): nothing is left behind.
                Ok(None) | Err(_) => {
                    user_gone = true;
                    let pf = pid_file.clone();
                    tokio::task::spawn_blocking(move || kill_exec(&pf, runc_pid));
                }
            },
        }
    };
    guard.ended = true;
    drop(in_tx);
    drop(master);
    // The output drains before the exit code goes up; a process the command left in the
    // background holding its output does not hold the exec up for more than a moment.
    let drained = tokio::task::spawn_blocking(move || {
        for r in readers {
            let _ = r.join();
        }
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drained).await;
    let _ = std::fs::remove_file(&pid_file);
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    let _ = up
        .send(ExecOutput {
            exited: true,
            exit_code: code,
            ..Default::default()
        })
        .await;
    close(up, down).await;
}

/// Ends the node's side of the call, keeping it open until the manager is done with
/// it: dropping it at once could cut the last message (the exit code, the error) off
/// before it went out.
async fn close(up: mpsc::Sender<ExecOutput>, mut down: tonic::Streaming<ExecInput>) {
    drop(up);
    let rest = async { while let Ok(Some(_)) = down.message().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rest).await;
}

/// An exec's command while it runs: killed when dropped before it ended.
struct Running {
    pid_file: std::path::PathBuf,
    runc_pid: u32,
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            let (pf, pid) = (self.pid_file.clone(), self.runc_pid);
            // Off the dropping thread: the kill may wait a moment for the pid file.
            std::thread::spawn(move || kill_exec(&pf, pid));
        }
    }
}

/// Kills the exec's command and every process under it, and runc (`runc_pid`), while
/// runc still waits for the command (so its pid is still the command's). Blocking.
fn kill_exec(pid_file: &std::path::Path, runc_pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // runc writes the pid once the command runs; a moment after the start it may not
    // have yet.
    let pid = (0..50).find_map(|_| {
        let p = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if p.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p
    });
    if let Some(pid) = pid.filter(|p| *p > 1) {
        for p in descendants(pid).into_iter().chain([pid]) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    let _ = kill(Pid::from_raw(runc_pid as i32), Signal::SIGKILL);
}

/// Every process whose chain of parents reaches `root` (read from /proc).
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
        }
    }
    let mut out = Vec::new();
    for (&pid, _) in parent_of.iter() {
        let mut cur = pid;
        for _ in 0..64 {
            match parent_of.get(&cur) {
                Some(&pp) if pp == root => {
                    out.push(pid);
                    break;
                }
                Some(&pp) if pp > 1 => cur = pp,
                _ => break,
            }
        }
    }
    out
}

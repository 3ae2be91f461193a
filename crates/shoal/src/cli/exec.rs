//! `shoal task exec` / `service exec`: a command in a running task's container, from
//! any manager, relayed over the task's node session. With `-t` the command gets a real
//! terminal (this one's size, followed); with `-i` it gets this one's input; the CLI
//! exits with the command's exit code.

use crate::cli::{status_err, Client};
use anyhow::{bail, Result};
use clap::Args;
use shoal_proto::control::{GetServiceRequest, ListTasksRequest};
use shoal_proto::dispatcher::{ExecInput, ExecStart};
use shoal_proto::objects::TaskState;
use std::io::{IsTerminal, Read, Write};
use tokio::sync::mpsc;

#[derive(Args)]
pub struct ExecArgs {
    /// Pass this terminal's input to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Run as this user (name or uid[:gid]); default: the task's.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory; default: the task's.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// The task (ID, prefix or name), or for `service exec` the service.
    target: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// This terminal in raw mode while the exec runs (input goes through as typed: Ctrl-C
/// reaches the command); restored when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// This terminal's size (rows, cols), if stdout is one.
fn window() -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer we pass.
    let r = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row as u32, ws.ws_col as u32))
}

impl Client {
    /// `service exec`: the first running task of the service (lowest slot).
    pub async fn service_exec(&self, mut a: ExecArgs) -> Result<i32> {
        let svc = self
            .control()
            .get_service(GetServiceRequest {
                reference: a.target.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let mut tasks = self
            .control()
            .list_tasks(ListTasksRequest {
                node: String::new(),
                service_id: svc.id.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .tasks;
        tasks.retain(|t| {
            t.service_id == svc.id
                && t.status.as_ref().map_or(0, |s| s.state) == TaskState::Running as i32
                && t.desired_state <= TaskState::Running as i32
        });
        tasks.sort_by_key(|t| (t.slot, t.id.clone()));
        let Some(t) = tasks.first() else {
            bail!("service {} has no running task to exec in", a.target);
        };
        a.target = t.id.clone();
        self.task_exec(a).await
    }

    /// Runs the exec; returns the command's exit code.
    pub async fn task_exec(&self, a: ExecArgs) -> Result<i32> {
        let tty = a.tty;
        let size = if tty { window() } else { None };
        let (rows, cols) = size.unwrap_or((24, 80));
        let start = ExecStart {
            task: a.target.clone(),
            cmd: a.cmd.clone(),
            env: a.env.clone(),
            user: a.user.clone().unwrap_or_default(),
            workdir: a.workdir.clone().unwrap_or_default(),
            tty,
            stdin: a.interactive,
            rows,
            cols,
        };
        let (tx, rx) = mpsc::channel::<ExecInput>(64);
        tx.send(ExecInput {
            start: Some(start),
            ..Default::default()
        })
        .await?;
        let resp = self
            .control()
            .task_exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(status_err)?;
        let mut out = resp.into_inner();
        let _raw = (tty && a.interactive && std::io::stdin().is_terminal()).then(RawMode::enter);
        if a.interactive {
            // Input read on a thread (stdin blocks); its end closes the command's.
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin();
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = tx.blocking_send(ExecInput {
                                stdin_closed: true,
                                ..Default::default()
                            });
                            break;
                        }
                        Ok(n) => {
                            let m = ExecInput {
                                stdin: buf[..n].to_vec(),
                                ..Default::default()
                            };
                            if tx.blocking_send(m).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        if size.is_some() {
            // The terminal's size, followed.
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut winch) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                else {
                    return;
                };
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = window() {
                        let m = ExecInput {
                            rows,
                            cols,
                            ..Default::default()
                        };
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
        // `tx` stays open until the command ends: its end would kill the command.
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        loop {
            match out.message().await {
                Ok(Some(m)) => {
                    if !m.stdout.is_empty() {
                        stdout.write_all(&m.stdout)?;
                        stdout.flush()?;
                    }
                    if !m.stderr.is_empty() {
                        stderr.write_all(&m.stderr)?;
                        stderr.flush()?;
                    }
                    if m.exited {
                        drop(tx);
                        return Ok(m.exit_code);
                    }
                }
                Ok(None) => bail!("the exec ended without an exit code"),
                Err(s) => return Err(status_err(s)),
            }
        }
    }
}

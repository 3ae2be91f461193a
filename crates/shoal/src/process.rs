//! The daemon's process: logging, the state directory, the socket, and the loops that
//! act on what the managers decide about this node.

use crate::daemon::{Daemon, DaemonOpts};
use anyhow::{Context, Result};
use std::sync::Arc;

/// `shoal daemon`: serves the node's socket, resumes its membership, and follows the
/// managers' verdicts (removed, untrusted, role changed) until SIGTERM or Ctrl-C; then
/// stops everything it started and waits for it.
pub async fn run(opts: DaemonOpts) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(e) = shoal_agent::runtime::runc::runtime_error() {
        tracing::error!("this node cannot run containers until that is fixed: {e}");
    }
    // A known umask: image layers must keep the modes their archives give (a container
    // running as another user must be able to enter them). What is secret is made
    // private explicitly: the state dir is 0700, keys and the store are 0600.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("cannot create state dir {}", opts.state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", opts.state_dir.display()))?;
    }
    let listener = crate::socket::bind(&opts.socket)?;
    let socket = opts.socket.clone();
    let daemon = Arc::new(Daemon::new(opts)?);
    if let Err(e) = daemon.resume().await {
        // Keep serving the socket so the operator can see the error with 'shoal info' and fix it.
        tracing::error!("cannot resume this node's cluster membership: {e:#}");
        daemon.set_damaged(format!("{e:#}")).await;
    }
    tracing::info!(socket = %socket.display(), "shoal daemon ready");
    // What the managers decide about this node, acted on one at a time per kind; and
    // memory freed by bursts (image unpacking, many task starts) handed back.
    let mut loops = tokio::task::JoinSet::new();
    {
        let d = daemon.clone();
        loops.spawn(async move {
            loop {
                d.removed.notified().await;
                d.handle_removed().await;
            }
        });
        let d = daemon.clone();
        loops.spawn(async move {
            loop {
                d.untrusted.notified().await;
                d.handle_untrusted().await;
            }
        });
        let d = daemon.clone();
        loops.spawn(async move {
            loop {
                d.role_changed.notified().await;
                d.handle_role_change().await;
            }
        });
    }
    loops.spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    crate::socket::serve(listener, daemon.clone(), stop).await?;
    tracing::info!("shutting down");
    loops.shutdown().await;
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

//! One task controller per task: drives a task from ASSIGNED to a final state on this
//! node, reporting each step. Errors before the container starts make the task
//! REJECTED, after it FAILED. A controller started after a daemon restart first looks
//! for the task's container and re-adopts it.

use crate::image::{registry_of, CredentialStore, ImageStore};
use crate::network::Networks;
use crate::reporter::StatusSender;
use crate::runtime::{ContainerConfig, ContainerStatus, Exit, MountKind, MountSpec, Runtime};
use crate::state::TaskProgress;
use crate::volumes::Volumes;
use nix::sys::signal::Signal;
use shoal_proto::objects::{HealthState, Task, TaskAddress, TaskState, TaskStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a container is checked when the kernel gives no exit descriptor (pidfds
/// came with Linux 5.3); otherwise the controller sleeps until its container ends.
const FALLBACK_CHECK: Duration = Duration::from_secs(1);

/// The exit code of a container whose process was killed by SIGSYS (128 + 31), as the
/// supervisor and the init report it. The seccomp filter's only killing action is the
/// one for a foreign architecture: a 32-bit system call.
const SIGSYS_EXIT: i32 = 128 + libc::SIGSYS;

#[derive(Clone)]
pub struct Deps {
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageStore,
    pub creds: Arc<CredentialStore>,
    pub status: StatusSender,
    pub network: Arc<Networks>,
    pub secrets: Arc<crate::secrets::Secrets>,
    pub volumes: Arc<Volumes>,
    /// Where tasks' workload identities come from (none: tasks get none, as on a node
    /// that is not a cluster member).
    pub identities: Option<Arc<crate::identity::Identities>>,
}

/// Removes everything a task left on this node: its container, its secrets' tmpfs, its
/// hold on its volumes (its anonymous ones go), then its network namespace and address.
/// Blocks (use `spawn_blocking`).
pub fn remove_task(
    runtime: &dyn Runtime,
    network: &Networks,
    secrets: &crate::secrets::Secrets,
    volumes: &Volumes,
    id: &str,
) -> Result<(), String> {
    let container = runtime.remove(id).map_err(|e| e.to_string());
    secrets.remove(id);
    if container.is_ok() {
        volumes.release(id);
    }
    network.release(id)?;
    container
}

/// The task takes the volumes its mounts name (each created on first use; a mount
/// without a source gets an anonymous one): their sources become their directories.
/// On failure it holds none.
fn take_volumes(
    volumes: &Volumes,
    container: &mut ContainerConfig,
    task_name: &str,
    labels: &[std::collections::HashMap<String, String>],
) -> Result<(), String> {
    for (i, m) in container.mounts.iter_mut().enumerate() {
        if !matches!(m.kind, MountKind::Volume { .. }) {
            continue;
        }
        let anonymous = m.source.is_empty();
        let name = match anonymous {
            true => crate::volumes::anonymous_name(&container.id, i),
            false => m.source.clone(),
        };
        let l = labels
            .get(i)
            .map(|l| l.clone().into_iter().collect())
            .unwrap_or_default();
        match volumes.take(&container.id, task_name, &name, &l, anonymous) {
            Ok((dir, _)) => m.source = dir.display().to_string(),
            Err(e) => {
                volumes.release(&container.id);
                return Err(format!("volume {name}: {e}"));
            }
        }
    }
    Ok(())
}

/// How a task is networked, from its spec and the addresses the managers gave it.
enum NetMode {
    /// `--network host`: the node's own namespace.
    Host,
    /// A namespace of its own, on its overlay networks (none: only the node's bridge),
    /// and on the node's bridge for its way out unless all its networks are internal.
    Own {
        overlays: Vec<crate::network::OverlayLeg>,
        outbound: bool,
    },
}

fn net_mode(task: &shoal_proto::objects::Task) -> Result<NetMode, String> {
    let spec = task.spec.clone().unwrap_or_default();
    if let [n] = spec.networks.as_slice() {
        if n.target == crate::network::HOST_NETWORK {
            return Ok(NetMode::Host);
        }
    }
    let mut overlays = Vec::new();
    for a in &task.networks {
        let Some(network) = a.network.clone() else {
            continue;
        };
        let address = a
            .addresses
            .first()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| {
                format!(
                    "the managers gave this task no address on network {}",
                    network.spec.as_ref().map_or("", |s| s.name.as_str())
                )
            })?;
        overlays.push(crate::network::OverlayLeg { network, address });
    }
    if overlays.len() < spec.networks.len() {
        return Err("the managers gave this task no address on some of its networks".into());
    }
    let outbound = overlays.is_empty()
        || overlays
            .iter()
            .any(|o| !o.network.spec.as_ref().is_some_and(|s| s.internal));
    Ok(NetMode::Own { overlays, outbound })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Ctl {
    task: Task,
    /// When this node received the assignment (for the start-latency figure).
    received: std::time::Instant,
    deps: Deps,
    progress: TaskProgress,
    desired: watch::Receiver<i32>,
    /// When the container started running (unix ms), reported with every later state.
    started_ms: i64,
    /// The health check in force, once known.
    health: Option<crate::health::Check>,
    /// The last health reported, kept in the task's final state.
    last_health: Option<(HealthState, String)>,
    /// The task's addresses, reported with every state once known.
    addresses: Vec<TaskAddress>,
    /// The signal that asks it to stop: its spec's, else its image's, else SIGTERM.
    stop_signal: Signal,
}

/// The signal that asks a task to stop: its spec's `--stop-signal`, else its image's
/// STOPSIGNAL, else SIGTERM (the manager checked the spec's; an image's that names no
/// signal is passed over).
fn stop_signal(spec: &str, image: Option<&str>) -> Signal {
    [spec, image.unwrap_or("")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .find_map(|s| shoal_proto::options::signal_number(s).and_then(|n| Signal::try_from(n).ok()))
        .unwrap_or(Signal::SIGTERM)
}

impl Ctl {
    async fn report(
        &mut self,
        state: TaskState,
        message: &str,
        err: &str,
        exit: Option<&Exit>,
        pid: u32,
    ) {
        if self.progress.advance(state).is_err() {
            return;
        }
        if state == TaskState::Running && self.started_ms == 0 {
            self.started_ms = now_ms();
        }
        let (mut message, mut err) = (message.to_string(), err.to_string());
        shoal_proto::limits::truncate(&mut message, shoal_proto::limits::MAX_STATUS_TEXT);
        shoal_proto::limits::truncate(&mut err, shoal_proto::limits::MAX_STATUS_TEXT);
        let st = TaskStatus {
            state: state as i32,
            message,
            err,
            exit_code: exit.map(|x| x.code).unwrap_or(0),
            timestamp_unix_ms: now_ms(),
            pid,
            started_at_ms: self.started_ms,
            health: match (&self.last_health, self.health.is_some()) {
                (Some((h, _)), _) => *h as i32,
                (None, true) if state == TaskState::Running => HealthState::Starting as i32,
                _ => HealthState::None as i32,
            },
            health_output: self
                .last_health
                .as_ref()
                .map(|h| h.1.clone())
                .unwrap_or_default(),
            addresses: self.addresses.clone(),
            ..Default::default()
        };
        tracing::debug!(task_id = %self.task.id, ?state, "task state");
        let _ = self.deps.status.send((self.task.id.clone(), st)).await;
    }

    /// Reports a change of health while the task runs.
    async fn report_health(&mut self, h: &crate::health::Tracker, pid: u32) {
        self.last_health = Some((h.state, h.output.clone()));
        let st = TaskStatus {
            state: TaskState::Running as i32,
            message: "running".into(),
            timestamp_unix_ms: now_ms(),
            pid,
            started_at_ms: self.started_ms,
            health: h.state as i32,
            health_output: h.output.clone(),
            addresses: self.addresses.clone(),
            ..Default::default()
        };
        tracing::debug!(task_id = %self.task.id, health = ?h.state, "task health");
        let _ = self.deps.status.send((self.task.id.clone(), st)).await;
    }

    /// The task's health check and stop signal: its own, else its image's. For a
    /// re-adopted container; a new one learns them in [`Self::prepare`], from the image
    /// it resolved.
    async fn find_image_defaults(&mut self) {
        let spec = self.task.spec.clone().unwrap_or_default();
        let images = self.deps.images.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&spec.image))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let spec = self.task.spec.clone().unwrap_or_default();
        self.health = crate::health::effective(
            spec.healthcheck.as_ref(),
            image.as_ref().and_then(|i| i.config.healthcheck.as_ref()),
        );
        self.stop_signal = stop_signal(
            &spec.stop_signal,
            image.as_ref().map(|i| i.config.stop_signal.as_str()),
        );
    }

    fn wants_stop(&self) -> bool {
        *self.desired.borrow() >= TaskState::Shutdown as i32
    }

    /// Notes the task's addresses, if it has any (a re-adopted container), and starts
    /// its discovery again (its DNS server went with the previous daemon).
    async fn find_addresses(&mut self) {
        let (net, id) = (self.deps.network.clone(), self.task.id.clone());
        // Blocking work (files, a thread in the task's namespace, an nft run).
        let found =
            tokio::task::spawn_blocking(move || (net.addresses(&id), net.resume(&id))).await;
        let Ok((a, resumed)) = found else { return };
        self.set_addresses(a);
        if let Err(e) = resumed {
            tracing::warn!(task = %self.task.id, error = %e, "cannot resume the task's service discovery");
        }
    }

    fn set_addresses(&mut self, a: Vec<(String, ipnet::Ipv4Net)>) {
        self.addresses = a
            .into_iter()
            .map(|(network, address)| TaskAddress {
                network,
                address: address.to_string(),
            })
            .collect();
    }

    /// Renews the running task's workload identity, if it has one, until the returned
    /// guard is dropped (the task ended) or the managers refuse (it was removed).
    fn keep_identity_renewed(&self) -> Option<AbortOnDrop> {
        let ids = self.deps.identities.clone()?;
        let dir = self.deps.secrets.identity_dir(&self.task.id);
        if !dir.join("current").exists() {
            return None;
        }
        Some(AbortOnDrop(tokio::spawn(crate::identity::keep_renewed(
            ids,
            self.task.id.clone(),
            dir,
        ))))
    }

    /// Removes the task's container and network state.
    async fn remove(&self) -> Result<(), String> {
        let (rt, net, sec, vol, id) = (
            self.deps.runtime.clone(),
            self.deps.network.clone(),
            self.deps.secrets.clone(),
            self.deps.volumes.clone(),
            self.task.id.clone(),
        );
        tokio::task::spawn_blocking(move || remove_task(rt.as_ref(), &net, &sec, &vol, &id))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<dyn Runtime>) -> T + Send + 'static,
    ) -> T {
        let rt = self.deps.runtime.clone();
        match tokio::task::spawn_blocking(move || f(rt)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Image present or pulled, container prepared. Err is a message for REJECTED.
    async fn prepare(&mut self) -> Result<(), String> {
        let spec = self.task.spec.clone().unwrap_or_default();
        let mode = net_mode(&self.task)?;
        // Only this task's own secrets and configs, from what the node holds.
        let files = self.deps.secrets.files_for(&spec)?;
        let images = self.deps.images.clone();
        let reference = spec.image.clone();
        let image = async {
            let found = tokio::task::spawn_blocking({
                let images = images.clone();
                let r = reference.clone();
                move || images.resolve(&r)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            match found {
                Some(i) => Ok::<_, String>(i),
                None => {
                    let creds = self.deps.creds.get(&registry_of(&reference));
                    images
                        .pull(&reference, creds.as_ref())
                        .await
                        .map_err(|e| format!("cannot pull image {reference}: {e}"))
                }
            }
        };
        // The task's workload identity is issued while the image is found.
        let identity = async {
            match self.deps.identities.as_ref().filter(|_| !spec.no_identity) {
                Some(ids) => ids
                    .issue(&self.task.id)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string()),
                None => Ok(None),
            }
        };
        let (image, issued) = tokio::join!(image, identity);
        let (image, issued) = (image?, issued?);
        let cfg = &image.config;
        self.health = crate::health::effective(spec.healthcheck.as_ref(), cfg.healthcheck.as_ref());
        self.stop_signal = stop_signal(&spec.stop_signal, Some(&cfg.stop_signal));
        let entrypoint = if spec.command.is_empty() {
            cfg.entrypoint.clone()
        } else {
            spec.command.clone()
        };
        let cmd = if spec.command.is_empty() && spec.args.is_empty() {
            cfg.cmd.clone()
        } else {
            spec.args.clone()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(format!(
                "no command to run: image {reference} has no default command; give one"
            ));
        }
        let mut env = cfg.env.clone();
        for e in &spec.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        let limits = spec.limits.unwrap_or_default();
        let container = ContainerConfig {
            id: self.task.id.clone(),
            layers: images.layer_dirs(&image),
            args,
            env,
            cwd: if spec.workdir.is_empty() {
                cfg.working_dir.clone()
            } else {
                spec.workdir.clone()
            },
            user: if spec.user.is_empty() {
                cfg.user.clone()
            } else {
                spec.user.clone()
            },
            hostname: if spec.hostname.is_empty() {
                self.task.id.chars().take(12).collect()
            } else {
                spec.hostname.clone()
            },
            readonly_rootfs: spec.readonly_rootfs,
            mounts: spec
                .mounts
                .iter()
                .map(|m| MountSpec {
                    kind: match m.r#type.as_str() {
                        "tmpfs" => MountKind::Tmpfs,
                        "volume" => MountKind::Volume {
                            copy_up: !m.volume_nocopy,
                        },
                        _ => MountKind::Bind,
                    },
                    // A volume's name here; its directory once the task takes it.
                    source: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.readonly,
                    size_bytes: m.size_bytes,
                    mode: m.tmpfs_mode,
                })
                .collect(),
            memory_bytes: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            pids: limits.pids,
            cap_add: spec.cap_add.clone(),
            cap_drop: spec.cap_drop.clone(),
            init: !spec.no_init,
            netns: None,
            sysctls: spec.sysctls.clone().into_iter().collect(),
            rlimits: spec
                .ulimits
                .iter()
                .filter_map(|u| {
                    let r = shoal_proto::options::rlimit_of(&u.name)?;
                    Some((r.to_string(), u.soft, u.hard))
                })
                .collect(),
            groups: spec.groups.clone(),
            tty: spec.tty,
        };
        let etc = crate::network::EtcOptions {
            hostname: container.hostname.clone(),
            nameservers: spec.dns_nameservers.clone(),
            search: spec.dns_search.clone(),
            options: spec.dns_options.clone(),
            hosts: spec.hosts.clone(),
        };
        let network = self.deps.network.clone();
        let secrets = self.deps.secrets.clone();
        let volumes = self.deps.volumes.clone();
        let task_name = self.task.name.clone();
        let volume_labels: Vec<_> = spec
            .mounts
            .iter()
            .map(|m| m.volume_labels.clone())
            .collect();
        let attached = self
            .blocking(move |rt| {
                let mut container = container;
                take_volumes(&volumes, &mut container, &task_name, &volume_labels)?;
                for (file, target) in secrets.materialize(&container.id, &files)? {
                    container.mounts.push(MountSpec {
                        kind: MountKind::Bind,
                        source: file.display().to_string(),
                        target,
                        readonly: true,
                        size_bytes: 0,
                        mode: 0,
                    });
                }
                drop(files);
                if let Some(issued) = &issued {
                    let dir = secrets.install_identity(&container.id, issued)?;
                    container.mounts.push(MountSpec {
                        kind: MountKind::Bind,
                        source: dir.display().to_string(),
                        target: crate::identity::IDENTITY_DIR.to_string(),
                        readonly: true,
                        size_bytes: 0,
                        mode: 0,
                    });
                }
                drop(issued);
                let attached = match mode {
                    NetMode::Host => None,
                    NetMode::Own { overlays, outbound } => {
                        let a = network
                            .attach(&container.id, &etc, &overlays, outbound)
                            .inspect_err(|_| {
                                secrets.remove(&container.id);
                                volumes.release(&container.id);
                            })?;
                        container.netns = Some(a.netns.clone());
                        container.mounts.extend(a.mounts.iter().cloned());
                        Some(a.addresses)
                    }
                };
                match rt.prepare(&container) {
                    Ok(()) => Ok(attached),
                    Err(e) => {
                        secrets.remove(&container.id);
                        volumes.release(&container.id);
                        let _ = network.release(&container.id);
                        Err(e.to_string())
                    }
                }
            })
            .await?;
        if let Some(a) = attached {
            self.set_addresses(a);
        }
        Ok(())
    }

    async fn finish(&mut self, exit: Exit, stopped: bool) {
        self.finish_with(exit, stopped, None).await
    }

    /// `unhealthy`: the container was stopped because its health check failed.
    async fn finish_with(&mut self, exit: Exit, stopped: bool, unhealthy: Option<String>) {
        // Its addresses are free again once it has finished (the managers give them
        // out again): its namespace goes now, not with its container.
        let (net, sec, id) = (
            self.deps.network.clone(),
            self.deps.secrets.clone(),
            self.task.id.clone(),
        );
        // Its secrets go as it ends, not with its container.
        let released = tokio::task::spawn_blocking(move || {
            sec.remove(&id);
            net.release(&id)
        });
        if let Ok(Err(e)) = released.await {
            tracing::warn!(task = %self.task.id, error = %e, "cannot release the task's network");
        }
        if let Some(why) = unhealthy {
            let e = format!("unhealthy container: {why}");
            self.report(TaskState::Failed, "failed", &e, Some(&exit), 0)
                .await;
        } else if let Some(err) = &exit.error {
            self.report(TaskState::Failed, "failed", err, Some(&exit), 0)
                .await;
        } else if stopped {
            self.report(TaskState::Shutdown, "shutdown", "", Some(&exit), 0)
                .await;
        } else if exit.oom {
            let e = format!(
                "OOM: killed for using more memory than its limit (exit code {})",
                exit.code
            );
            self.report(TaskState::Failed, "failed", &e, Some(&exit), 0)
                .await;
        } else if exit.code == 0 {
            self.report(TaskState::Complete, "finished", "", Some(&exit), 0)
                .await;
        } else if let Some(why) = self.init_exec_failure(&exit).await {
            let e = format!("the container could not be created: {why}");
            self.report(TaskState::Failed, "failed", &e, Some(&exit), 0)
                .await;
        } else {
            let e = match exit.code {
                SIGSYS_EXIT => format!(
                    "task: non-zero exit ({}): killed by SIGSYS, a system call the \
                     container's seccomp filter does not allow (32-bit system calls are not \
                     allowed: build the program for this host's architecture)",
                    exit.code
                ),
                code => format!("task: non-zero exit ({code})"),
            };
            self.report(TaskState::Failed, "failed", &e, Some(&exit), 0)
                .await;
        }
    }

    /// Under the init, a command that cannot be run is the init's complaint (exit code
    /// 126 or 127 and a `[FATAL tini (N)] exec X failed: why` line) rather than runc's.
    async fn init_exec_failure(&self, exit: &Exit) -> Option<String> {
        let no_init = self.task.spec.as_ref().is_some_and(|s| s.no_init);
        if no_init || !(exit.code == 126 || exit.code == 127) {
            return None;
        }
        let id = self.task.id.clone();
        let tail = self
            .blocking(move |rt| crate::logs::last_lines(&rt.log_path(&id), 4))
            .await;
        tail.iter().rev().find_map(|l| {
            let (_, rest) = l.split_once("[FATAL tini (")?;
            let (_, why) = rest.split_once(")] ")?;
            why.starts_with("exec ").then(|| why.trim().to_string())
        })
    }

    /// Waits for the running container to exit, stopping it if asked to. Wakes only
    /// when something happens: the container ends (its exit descriptor turns readable),
    /// the desired state changes, or a stop's grace period runs out.
    async fn supervise(&mut self, pid: u32) {
        let grace = match self
            .task
            .spec
            .as_ref()
            .map(|s| s.stop_grace_period_ms)
            .unwrap_or(0)
        {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(ms),
        };
        let id = self.task.id.clone();
        let exited = {
            let id = id.clone();
            self.blocking(move |rt| rt.exit_fd(&id)).await
        }
        .and_then(|fd| {
            use tokio::io::{unix::AsyncFd, Interest};
            // SAFETY: an OwnedFd is a valid descriptor that stays open, the same one,
            // until the AsyncFd owning it is dropped.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
        });
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut killed = false;
        let mut health = self.health.clone().map(crate::health::Tracker::new);
        let mut next_check = tokio::time::Instant::now()
            + health
                .as_ref()
                .map(|h| h.check.interval)
                .unwrap_or_default();
        let mut check: Option<tokio::task::JoinHandle<Result<(i32, String), String>>> = None;
        // Why the container is being stopped, if its health check failed.
        let mut unhealthy: Option<String> = None;
        loop {
            let st = {
                let id = id.clone();
                self.blocking(move |rt| rt.status(&id)).await
            };
            match st {
                ContainerStatus::Running { .. } => {}
                ContainerStatus::Exited(x) => {
                    let stopped = stopping.is_some() && unhealthy.is_none();
                    return self.finish_with(x, stopped, unhealthy).await;
                }
                ContainerStatus::Missing | ContainerStatus::Created => {
                    let x = Exit {
                        code: -1,
                        oom: false,
                        error: Some("the container disappeared".into()),
                    };
                    return self.finish(x, false).await;
                }
            }
            if stopping.is_none() && (self.wants_stop() || unhealthy.is_some()) {
                tracing::info!(task_id = %id, pid, unhealthy = unhealthy.is_some(), signal = %self.stop_signal, "stopping container");
                let (i, sig) = (id.clone(), self.stop_signal);
                let _ = self.blocking(move |rt| rt.signal(&i, sig)).await;
                stopping = Some(tokio::time::Instant::now() + grace);
            }
            if let Some(deadline) = stopping {
                if !killed && tokio::time::Instant::now() >= deadline {
                    let i = id.clone();
                    let _ = self
                        .blocking(move |rt| rt.signal(&i, nix::sys::signal::Signal::SIGKILL))
                        .await;
                    killed = true;
                }
            }
            let ended = async {
                match &exited {
                    Some(fd) => drop(fd.readable().await),
                    None => tokio::time::sleep(FALLBACK_CHECK).await,
                }
            };
            let kill_at = stopping.filter(|_| !killed);
            let start_check = health.is_some() && stopping.is_none() && check.is_none();
            let check_running = check.is_some();
            let check_done = async {
                match check.as_mut() {
                    Some(h) => h.await.unwrap_or_else(|e| Err(e.to_string())),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {}
                r = self.desired.changed(), if stopping.is_none() => {
                    if r.is_err() {
                        // The worker is gone (the daemon is shutting down): the container
                        // keeps running and is re-adopted at the next start.
                        if let Some(c) = check.take() {
                            c.abort();
                        }
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_check), if start_check => {
                    let h = health.as_ref().map(|h| h.check.clone()).unwrap_or_else(|| unreachable!());
                    let (rt, i) = (self.deps.runtime.clone(), id.clone());
                    check = Some(tokio::task::spawn_blocking(move || {
                        rt.exec(&i, &h.args, h.timeout).map_err(|e| e.to_string())
                    }));
                }
                r = check_done, if check_running => {
                    check = None;
                    if let Some(h) = health.as_mut() {
                        next_check = tokio::time::Instant::now() + h.check.interval;
                        if stopping.is_none() && h.record(r) {
                            self.report_health(h, pid).await;
                            if h.state == HealthState::Unhealthy {
                                unhealthy = Some(format!(
                                    "the health check failed {} times in a row: {}",
                                    h.check.retries, h.output
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    async fn run(mut self) {
        let id = self.task.id.clone();
        // Re-adoption: the container may already exist from before a restart.
        let existing = {
            let id = id.clone();
            self.blocking(move |rt| rt.status(&id)).await
        };
        match existing {
            ContainerStatus::Running { pid } => {
                tracing::info!(task_id = %id, pid, "re-adopted running container");
                self.find_image_defaults().await;
                self.find_addresses().await;
                self.report(TaskState::Running, "running", "", None, pid)
                    .await;
                let renewing = self.keep_identity_renewed();
                self.supervise(pid).await;
                drop(renewing);
                return;
            }
            ContainerStatus::Exited(x) => {
                self.report(TaskState::Running, "running", "", None, 0)
                    .await;
                return self.finish(x, self.wants_stop()).await;
            }
            ContainerStatus::Created => {
                // Prepared before a restart but never started: start over.
                let _ = self.remove().await;
            }
            ContainerStatus::Missing => {
                if self.progress.state() as i32 >= TaskState::Running as i32 {
                    let x = Exit {
                        code: -1,
                        oom: false,
                        error: Some("the container is gone from this node".into()),
                    };
                    return self.finish(x, false).await;
                }
            }
        }
        if self.wants_stop() {
            return self
                .report(TaskState::Shutdown, "shutdown before start", "", None, 0)
                .await;
        }
        self.report(TaskState::Accepted, "accepted", "", None, 0)
            .await;
        self.report(TaskState::Preparing, "preparing", "", None, 0)
            .await;
        if let Err(e) = self.prepare().await {
            tracing::info!(task_id = %id, error = %e, "task rejected");
            return self
                .report(TaskState::Rejected, "rejected", &e, None, 0)
                .await;
        }
        self.report(TaskState::Ready, "prepared", "", None, 0).await;
        if self.wants_stop() {
            let _ = self.remove().await;
            return self
                .report(TaskState::Shutdown, "shutdown before start", "", None, 0)
                .await;
        }
        self.report(TaskState::Starting, "starting", "", None, 0)
            .await;
        let started = {
            let i = id.clone();
            self.blocking(move |rt| rt.start(&i)).await
        };
        match started {
            Ok(pid) => {
                self.report(TaskState::Running, "running", "", None, pid)
                    .await;
                tracing::info!(
                    task_id = %id,
                    pid,
                    startup_ms = self.received.elapsed().as_secs_f64() * 1000.0,
                    "container running"
                );
                let renewing = self.keep_identity_renewed();
                self.supervise(pid).await;
                drop(renewing);
            }
            Err(e) => {
                let x = Exit {
                    code: -1,
                    oom: false,
                    error: Some(e.to_string()),
                };
                self.finish(x, false).await;
            }
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a controller for `task` until the task reaches a final state.
pub async fn run(task: Task, desired: watch::Receiver<i32>, deps: Deps) {
    let state = TaskState::try_from(task.status.as_ref().map(|s| s.state).unwrap_or(0))
        .unwrap_or(TaskState::Assigned);
    let ctl = Ctl {
        started_ms: task.status.as_ref().map(|s| s.started_at_ms).unwrap_or(0),
        health: None,
        last_health: None,
        addresses: Vec::new(),
        stop_signal: Signal::SIGTERM,
        received: std::time::Instant::now(),
        progress: TaskProgress::new(state),
        task,
        deps,
        desired,
    };
    ctl.run().await
}

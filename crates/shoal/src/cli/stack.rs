//! `shoal stack`: an application from compose files. A stack is the set of services,
//! networks, secrets and configs labelled `com.docker.stack.namespace=STACK` (as in
//! swarm mode, not an object of its own), so `service ls`, `service update` and the
//! rest work on a stack's services as on any other.

use crate::cli::service::{print_services, print_tasks};
use crate::cli::{status_err, Client};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use shoal_compose::convert::{Condition, Plan, NAMESPACE_LABEL};
use shoal_proto::control::{
    CreateNetworkRequest, CreateSecretRequest, CreateServiceRequest, GetServiceRequest,
    ListSecretsRequest, ListServicesRequest, ListTasksRequest, RemoveNetworkRequest,
    RemoveSecretRequest, RemoveServiceRequest, UpdateSecretRequest, UpdateServiceRequest,
};
use shoal_proto::objects::{Network, SecretSpec, Service, TaskState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum StackCmd {
    /// Deploy a stack from compose files (or update it), then wait until every service
    /// has converged (unless -d).
    #[command(alias = "up")]
    Deploy {
        /// A compose file (`-` for stdin); several merge in order.
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<String>,
        /// Remove the stack's services that the files no longer name.
        #[arg(long)]
        prune: bool,
        /// Return once everything is created, without waiting (dependencies are then
        /// created in order, not waited for).
        #[arg(short = 'd', long)]
        detach: bool,
        stack: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls,
    /// List a stack's services.
    Services {
        stack: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a stack's tasks.
    Ps {
        stack: String,
        #[arg(long)]
        no_trunc: bool,
        #[arg(short, long)]
        quiet: bool,
        /// table (default) or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove stacks: services, then secrets, configs and networks (volumes stay), and
    /// wait until their containers are gone (unless -d).
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Print the merged, interpolated compose file.
    Config {
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<String>,
        /// Print the variables as written.
        #[arg(long)]
        skip_interpolation: bool,
    },
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the `-c` files and the `.env` beside the first one.
fn load(files: &[String], interpolate: bool) -> Result<shoal_compose::Loaded> {
    let mut sources = Vec::new();
    for f in files {
        let text = if f == "-" {
            std::io::read_to_string(std::io::stdin())
                .context("cannot read the compose file from stdin")?
        } else {
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the compose file {f}"))?
        };
        sources.push(shoal_compose::Source {
            name: f.clone(),
            text,
        });
    }
    let dir: PathBuf = match files.first().map(String::as_str) {
        Some("-") | None => std::env::current_dir()?,
        Some(f) => Path::new(f)
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::env::current_dir()?),
    };
    let dotenv = match std::fs::read_to_string(dir.join(".env")) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", dir.join(".env").display()),
    };
    Ok(shoal_compose::load(
        &sources,
        &dir,
        &env_var,
        dotenv.as_deref(),
        interpolate,
    )?)
}

fn in_stack(labels: &HashMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(stack)
}

impl Client {
    pub async fn stack(&self, cmd: StackCmd) -> Result<()> {
        match cmd {
            StackCmd::Deploy {
                files,
                prune,
                detach,
                stack,
            } => self.stack_deploy(&files, prune, detach, &stack).await,
            StackCmd::Ls => self.stack_ls().await,
            StackCmd::Services { stack, quiet } => self.stack_services(&stack, quiet).await,
            StackCmd::Ps {
                stack,
                no_trunc,
                quiet,
                format,
            } => {
                self.stack_ps(&stack, no_trunc, quiet, format.as_deref())
                    .await
            }
            StackCmd::Rm { stacks, detach } => self.stack_rm(&stacks, detach).await,
            StackCmd::Config {
                files,
                skip_interpolation,
            } => {
                let l = load(&files, !skip_interpolation)?;
                print!("{}", shoal_compose::yaml::emit(&l.tree));
                Ok(())
            }
        }
    }

    async fn services_of(
        &self,
        stack: &str,
    ) -> Result<(
        Vec<Service>,
        HashMap<String, shoal_proto::control::ServiceStatus>,
    )> {
        let r = self
            .control()
            .list_services(ListServicesRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let services = r
            .services
            .into_iter()
            .filter(|s| s.spec.as_ref().is_some_and(|x| in_stack(&x.labels, stack)))
            .collect();
        Ok((services, r.status))
    }

    async fn stack_deploy(
        &self,
        files: &[String],
        prune: bool,
        detach: bool,
        stack: &str,
    ) -> Result<()> {
        let loaded = load(files, true)?;
        for w in &loaded.warnings {
            eprintln!("{w}");
        }
        let plan = shoal_compose::convert::plan(&loaded, stack, &env_var)?;
        for w in &plan.warnings {
            eprintln!("{w}");
        }
        let networks = self.networks().await?;
        self.check_externals(&plan, &networks).await?;
        let (existing, _) = self.services_of(stack).await?;
        if prune {
            let keep: HashSet<&str> = plan.services.iter().map(|s| s.spec.name.as_str()).collect();
            let mut gone: Vec<&Service> = existing
                .iter()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .is_some_and(|x| !keep.contains(x.name.as_str()))
                })
                .collect();
            gone.sort_by_key(|s| s.spec.as_ref().map(|x| x.name.clone()));
            for s in gone {
                let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
                println!("Removing service {name}");
                self.control()
                    .remove_service(RemoveServiceRequest {
                        reference: s.id.clone(),
                    })
                    .await
                    .map_err(status_err)?;
            }
        }
        for (kind, items) in [("secret", &plan.secrets), ("config", &plan.configs)] {
            self.deploy_files(kind, items).await?;
        }
        // A new secret or config version moved its services onto it: read them again.
        let (existing, _) = self.services_of(stack).await?;
        for n in plan.networks.iter().filter(|n| !n.external) {
            if networks
                .iter()
                .any(|x| x.spec.as_ref().is_some_and(|s| s.name == n.name))
            {
                continue;
            }
            println!("Creating network {}", n.name);
            self.control()
                .create_network(CreateNetworkRequest {
                    spec: Some(n.spec.clone()),
                })
                .await
                .map_err(|s| {
                    anyhow::anyhow!("cannot create network {}: {}", n.name, s.message())
                })?;
        }
        // Services in dependency order; a service waits for its dependencies'
        // conditions before it is created or updated (unless -d).
        let mut settled: HashSet<String> = HashSet::new();
        let mut ids: Vec<(String, String)> = Vec::new();
        for s in &plan.services {
            if !detach {
                for (dep, cond) in &s.depends_on {
                    if settled.insert(dep.clone()) {
                        let id = ids
                            .iter()
                            .find(|(n, _)| n == dep)
                            .map(|(_, id)| id.clone())
                            .unwrap_or_default();
                        println!("Waiting for {dep} ({}) before {}", cond.name(), s.spec.name);
                        self.wait_condition(&id, *cond).await.with_context(|| {
                            format!(
                                "stack {stack}: {} depends on {dep}, which did not settle",
                                s.spec.name
                            )
                        })?;
                    }
                }
            }
            let id = self.deploy_service(&existing, &s.spec).await?;
            ids.push((s.spec.name.clone(), id));
        }
        if detach {
            return Ok(());
        }
        // Every service, dependencies too (they were waited for only until their
        // condition held), for its monitor period: the later ones have run it by now.
        for (_, id) in &ids {
            self.converge(id, false)
                .await
                .with_context(|| format!("stack {stack} did not converge"))?;
        }
        println!("Stack {stack} converged");
        Ok(())
    }

    /// Every external network, secret and config must exist: one error names all that
    /// do not, before anything is created.
    async fn check_externals(&self, plan: &Plan, networks: &[Network]) -> Result<()> {
        let mut missing = Vec::new();
        for n in plan.networks.iter().filter(|n| n.external) {
            let found = n.name == shoal_proto::HOST_NETWORK
                || networks
                    .iter()
                    .any(|x| x.spec.as_ref().is_some_and(|s| s.name == n.name));
            if !found {
                missing.push(format!(
                    "network {:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed",
                    n.name
                ));
            }
        }
        for (kind, items) in [("secret", &plan.secrets), ("config", &plan.configs)] {
            let have = self.names_of(kind).await?;
            for f in items
                .iter()
                .filter(|f| f.external && !have.contains_key(&f.name))
            {
                missing.push(format!(
                    "{kind} {:?} is declared as external, but could not be found: create it with 'shoal {kind} create {} FILE'",
                    f.name, f.name
                ));
            }
        }
        if !missing.is_empty() {
            bail!("{}\nNothing was created.", missing.join("\n"));
        }
        Ok(())
    }

    /// Secret or config names → (ID, labels, versions).
    async fn names_of(
        &self,
        kind: &str,
    ) -> Result<BTreeMap<String, (String, HashMap<String, String>, usize)>> {
        let list = self
            .control()
            .list_secrets(ListSecretsRequest { kind: kind.into() })
            .await
            .map_err(status_err)?
            .into_inner()
            .secrets;
        Ok(list
            .into_iter()
            .filter_map(|v| v.secret)
            .filter_map(|s| {
                let spec = s.spec?;
                Some((spec.name, (s.id, spec.labels, s.versions.len())))
            })
            .collect())
    }

    /// Creates the stack's secrets (or configs), or gives an existing one a new
    /// version when its data changed (its services roll onto it).
    async fn deploy_files(
        &self,
        kind: &str,
        items: &[shoal_compose::convert::FilePlan],
    ) -> Result<()> {
        let have = self.names_of(kind).await?;
        for f in items.iter().filter(|f| !f.external) {
            if let Some((_, _, before)) = have.get(&f.name) {
                let v = self
                    .control()
                    .update_secret(UpdateSecretRequest {
                        kind: kind.into(),
                        reference: f.name.clone(),
                        data: f.data.clone(),
                        only_if_changed: true,
                    })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("cannot update {kind} {}: {}", f.name, s.message())
                    })?
                    .into_inner();
                let after = v.secret.map(|s| s.versions.len()).unwrap_or(0);
                if after != *before {
                    println!("Updating {kind} {}", f.name);
                }
                continue;
            }
            println!("Creating {kind} {}", f.name);
            self.control()
                .create_secret(CreateSecretRequest {
                    kind: kind.into(),
                    spec: Some(SecretSpec {
                        name: f.name.clone(),
                        labels: f.labels.clone().into_iter().collect(),
                    }),
                    data: f.data.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("cannot create {kind} {}: {}", f.name, s.message()))?;
        }
        Ok(())
    }

    /// Creates the service, or updates it if its spec changed; returns its ID.
    async fn deploy_service(
        &self,
        existing: &[Service],
        spec: &shoal_proto::objects::ServiceSpec,
    ) -> Result<String> {
        let cur = existing
            .iter()
            .find(|s| s.spec.as_ref().is_some_and(|x| x.name == spec.name));
        let Some(cur) = cur else {
            println!("Creating service {}", spec.name);
            let s = self
                .control()
                .create_service(CreateServiceRequest {
                    spec: Some(spec.clone()),
                })
                .await
                .map_err(|s| {
                    anyhow::anyhow!("cannot create service {}: {}", spec.name, s.message())
                })?
                .into_inner();
            return Ok(s.id);
        };
        let mut spec = spec.clone();
        // A restart asked for earlier (`service update --force`) is not undone.
        if let (Some(c), Some(old)) = (
            spec.container.as_mut(),
            cur.spec.as_ref().and_then(|s| s.container.as_ref()),
        ) {
            c.force_update = old.force_update;
        }
        let s = self
            .control()
            .update_service(UpdateServiceRequest {
                reference: cur.id.clone(),
                spec: Some(spec.clone()),
                spec_version: cur.spec_version,
                force: false,
                rollback: false,
            })
            .await
            .map_err(|s| anyhow::anyhow!("cannot update service {}: {}", spec.name, s.message()))?
            .into_inner();
        if s.spec_version != cur.spec_version || s.spec != cur.spec {
            println!("Updating service {} (id: {})", spec.name, cur.id);
        } else {
            println!("Service {} is unchanged", spec.name);
        }
        Ok(cur.id.clone())
    }

    /// Waits until a dependency's condition holds: as many tasks of its current spec
    /// running (and, for `service_healthy`, healthy) as it wants, or, for a job, every
    /// completion in (through `converge`). Not the whole of `converge`: its monitor
    /// period is waited for at the end, for every service at once. A task that fails
    /// hands over to `converge`, which says why.
    async fn wait_condition(&self, id: &str, cond: Condition) -> Result<()> {
        let svc = self
            .control()
            .get_service(GetServiceRequest {
                reference: id.into(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let spec = svc.spec.unwrap_or_default();
        match cond {
            Condition::Healthy => {
                let checked = spec
                    .container
                    .as_ref()
                    .and_then(|c| c.healthcheck.as_ref())
                    .is_some_and(|h| h.test.first().map(String::as_str) != Some("NONE"));
                if !checked {
                    bail!("{} has no healthcheck in the file, so service_healthy cannot be told: give it one, or use service_started", spec.name);
                }
            }
            Condition::CompletedSuccessfully if !shoal_manager::orchestrator::is_job(&spec) => {
                bail!("{} is not a job, so it never completes: give it deploy.mode replicated-job or global-job, or use service_started", spec.name);
            }
            _ => {}
        }
        if shoal_manager::orchestrator::is_job(&spec) {
            return self.converge(id, false).await;
        }
        let healthy = cond == Condition::Healthy;
        loop {
            let svc = self
                .control()
                .get_service(GetServiceRequest {
                    reference: id.into(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let desired = self
                .control()
                .list_services(ListServicesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .status
                .get(&svc.id)
                .map_or(0, |s| s.desired);
            let (tasks, _) = self.service_tasks(&svc).await?;
            let state = |t: &shoal_proto::objects::Task| t.status.as_ref().map_or(0, |s| s.state);
            let current: Vec<_> = tasks
                .iter()
                .filter(|t| shoal_manager::orchestrator::is_current(&svc, t))
                .collect();
            if current.iter().any(|t| state(t) > TaskState::Running as i32) {
                // Failed, rejected or gone: converge tells why, or waits out a restart.
                return self.converge(id, false).await;
            }
            let ready = current
                .iter()
                .filter(|t| state(t) == TaskState::Running as i32)
                .filter(|t| {
                    !healthy
                        || t.status.as_ref().map_or(0, |s| s.health)
                            == shoal_proto::objects::HealthState::Healthy as i32
                })
                .count() as u64;
            if desired > 0 && ready >= desired {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn stack_ls(&self) -> Result<()> {
        let r = self
            .control()
            .list_services(ListServicesRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
        for s in r.services.iter().filter_map(|s| s.spec.as_ref()) {
            if let Some(n) = s.labels.get(NAMESPACE_LABEL) {
                *stacks.entry(n.clone()).or_default() += 1;
            }
        }
        // Beyond swarm: a stack whose services are gone but whose networks, secrets or
        // configs remain is listed too, with 0 services.
        let networks = self.networks().await?;
        for n in networks.iter().filter_map(|n| n.spec.as_ref()) {
            if let Some(st) = n.labels.get(NAMESPACE_LABEL) {
                stacks.entry(st.clone()).or_default();
            }
        }
        for kind in ["secret", "config"] {
            for (_, (_, labels, _)) in self.names_of(kind).await? {
                if let Some(st) = labels.get(NAMESPACE_LABEL) {
                    stacks.entry(st.clone()).or_default();
                }
            }
        }
        let mut rows = vec![vec!["NAME".to_string(), "SERVICES".to_string()]];
        for (name, n) in stacks {
            rows.push(vec![name, n.to_string()]);
        }
        crate::cli::print_table(&rows);
        Ok(())
    }

    async fn stack_services(&self, stack: &str, quiet: bool) -> Result<()> {
        let (services, status) = self.services_of(stack).await?;
        if services.is_empty() {
            eprintln!("Nothing found in stack: {stack}");
            return Ok(());
        }
        print_services(&services, &status, quiet);
        Ok(())
    }

    async fn stack_ps(
        &self,
        stack: &str,
        no_trunc: bool,
        quiet: bool,
        format: Option<&str>,
    ) -> Result<()> {
        let (services, _) = self.services_of(stack).await?;
        if services.is_empty() {
            eprintln!("Nothing found in stack: {stack}");
            return Ok(());
        }
        let r = self
            .control()
            .list_tasks(ListTasksRequest::default())
            .await
            .map_err(status_err)?
            .into_inner();
        let name_of: HashMap<&str, &str> = services
            .iter()
            .map(|s| {
                (
                    s.id.as_str(),
                    s.spec.as_ref().map_or("", |x| x.name.as_str()),
                )
            })
            .collect();
        let mut tasks: Vec<_> = r
            .tasks
            .into_iter()
            .filter(|t| name_of.contains_key(t.service_id.as_str()))
            .collect();
        tasks.sort_by(|a, b| {
            (
                name_of.get(a.service_id.as_str()),
                a.slot,
                &a.node_id,
                std::cmp::Reverse(a.created_at_unix),
            )
                .cmp(&(
                    name_of.get(b.service_id.as_str()),
                    b.slot,
                    &b.node_id,
                    std::cmp::Reverse(b.created_at_unix),
                ))
        });
        print_tasks(&tasks, &r.node_names, no_trunc, quiet, format)
    }

    async fn stack_rm(&self, stacks: &[String], detach: bool) -> Result<()> {
        let mut failed = Vec::new();
        let mut removed_services = Vec::new();
        for stack in stacks {
            let (mut services, _) = self.services_of(stack).await?;
            services.sort_by_key(|s| s.spec.as_ref().map(|x| x.name.clone()));
            let mut files = Vec::new();
            for kind in ["secret", "config"] {
                for (name, (_, labels, _)) in self.names_of(kind).await? {
                    if in_stack(&labels, stack) {
                        files.push((kind, name));
                    }
                }
            }
            let mut networks: Vec<String> = self
                .networks()
                .await?
                .into_iter()
                .filter_map(|n| n.spec)
                .filter(|s| in_stack(&s.labels, stack))
                .map(|s| s.name)
                .collect();
            networks.sort();
            if services.is_empty() && files.is_empty() && networks.is_empty() {
                eprintln!("Nothing found in stack: {stack}");
                continue;
            }
            let mut ok = true;
            for s in &services {
                let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
                println!("Removing service {name}");
                match self
                    .control()
                    .remove_service(RemoveServiceRequest {
                        reference: s.id.clone(),
                    })
                    .await
                {
                    Ok(_) => removed_services.push(s.id.clone()),
                    Err(e) => {
                        eprintln!("Failed to remove service {}: {}", s.id, e.message());
                        ok = false;
                    }
                }
            }
            for (kind, name) in &files {
                println!("Removing {kind} {name}");
                if let Err(e) = self
                    .control()
                    .remove_secret(RemoveSecretRequest {
                        kind: kind.to_string(),
                        reference: name.clone(),
                    })
                    .await
                {
                    eprintln!("Failed to remove {kind} {name}: {}", e.message());
                    ok = false;
                }
            }
            for name in &networks {
                println!("Removing network {name}");
                if let Err(e) = self.remove_network_when_free(name).await {
                    eprintln!("Failed to remove network {name}: {e}");
                    ok = false;
                }
            }
            if !ok {
                failed.push(stack.clone());
            }
        }
        if !detach && !removed_services.is_empty() {
            self.wait_tasks_gone(&removed_services).await?;
        }
        if !failed.is_empty() {
            bail!(
                "failed to remove some resources from stack: {}",
                failed.join(", ")
            );
        }
        Ok(())
    }

    /// A network is removed once no task is attached any more (its services' tasks
    /// take a moment to stop).
    async fn remove_network_when_free(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .control()
                .remove_network(RemoveNetworkRequest {
                    reference: name.into(),
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.code() == tonic::Code::FailedPrecondition
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => bail!("{}", e.message()),
            }
        }
    }

    /// Until no task of the removed services is still running anywhere.
    async fn wait_tasks_gone(&self, services: &[String]) -> Result<()> {
        let ids: HashSet<&str> = services.iter().map(String::as_str).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let tasks = self
                .control()
                .list_tasks(ListTasksRequest::default())
                .await
                .map_err(status_err)?
                .into_inner()
                .tasks;
            let left = tasks
                .iter()
                .filter(|t| ids.contains(t.service_id.as_str()))
                .filter(|t| {
                    !t.node_id.is_empty()
                        && t.status.as_ref().map_or(0, |s| s.state) < TaskState::Complete as i32
                        && t.status.as_ref().map_or(0, |s| s.state) >= TaskState::Assigned as i32
                })
                .count();
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{left} tasks of the removed services are still running after 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

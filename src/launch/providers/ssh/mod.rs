//! `provider: "ssh"`: launches onto a host the operator owns (see [`crate::hosts`]). The launch
//! takes a free host that fits its GPU and labels, copies the node agent (and, for the `echo`
//! template, the skylaunch binary) into `~/.skylaunch/<cluster>/` over SSH, writes the launch's
//! environment there (mode 0600: it holds the node token and the model server's key), runs the
//! template's setup with its output in the job log, and starts the template's run script as a
//! service: a systemd unit where systemd runs and the login is root or may sudo, else a
//! detached session (it survives the SSH connection, not a reboot). Teardown stops every
//! process carrying the launch's mark, removes the unit and the directory, and gives the host
//! back; a host it cannot reach stays `teardown_pending` and the teardown is retried.

pub mod remote;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{BoxFuture, LaunchProvider, RenderedTask, RequestChecks};
use crate::catalog::Gpu;
use crate::hosts::{ClaimError, Host, Hosts};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::job::Job;
use crate::launch::run::JobRun;
use crate::launch::spec::SpecError;
use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};
use crate::launch::template::{node_env, NodeIdentity, Template};
use crate::ssh::{SshError, SshTarget};
use remote::{Facts, ServiceKind};

/// The request checks of `provider: "ssh"`: hosts have whatever GPUs they have, no cloud, no
/// regions, no spot; `labels` choose among them.
pub struct SshRequests;

impl RequestChecks for SshRequests {
    fn needs_gpu(&self) -> bool {
        false
    }

    fn offers_spot(&self) -> bool {
        false
    }

    fn machines_have_fixed_shapes(&self) -> bool {
        false
    }

    fn templates(&self) -> &'static [&'static str] {
        &["vllm", "echo"]
    }

    fn selects_hosts(&self) -> bool {
        true
    }

    fn cloud(
        &self,
        asked: Option<&str>,
        _gpu: Option<&'static Gpu>,
        _gpu_count: u32,
    ) -> Result<Option<String>, SpecError> {
        super::no_cloud(asked, HOSTS_NOT_CLOUDS)
    }

    fn regions(&self, asked: &[String], _cloud: Option<&str>) -> Result<Vec<String>, SpecError> {
        super::no_regions(asked, &[], HOSTS_NOT_CLOUDS)
    }
}

/// Why an SSH launch names no cloud or region.
const HOSTS_NOT_CLOUDS: &str = "the ssh provider runs on your own hosts (labels choose among them)";

pub struct SshProvider {
    pub hosts: Arc<Hosts>,
    pub agent_bin: PathBuf,
    /// The `skylaunch` executable (the `echo` template's model server).
    pub skylaunch_bin: PathBuf,
    /// How long one remote step (a copy, a start) may take.
    pub step_timeout: Duration,
    /// How long the template's setup may take (vLLM's install takes minutes).
    pub setup_timeout: Duration,
}

impl LaunchProvider for SshProvider {
    /// The launch's environment file; the job shows the SkyPilot task, masked, as every
    /// provider's does.
    fn render(&self, job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
        let env = node_env(&job.spec, template, node);
        let mut all = env.envs;
        all.extend(env.secrets);
        all.insert("SKYLAUNCH_PROVIDER".into(), "ssh".into());
        RenderedTask {
            for_machine: serde_json::to_string(&all).expect("a string map serialises"),
            shown: super::skypilot::task::rendered(&job.spec, template, &job.cluster_name, node)
                .shown,
        }
    }

    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.launch_on_host(run))
    }

    /// Ready while a registered host is available (probed and free).
    fn readiness(&self, kind: super::Provider) -> BoxFuture<'_, super::readiness::Readiness> {
        Box::pin(async move {
            let mut r = super::readiness::Readiness::of(kind);
            let hosts = match self.hosts.list().await {
                Ok(hosts) => hosts,
                Err(e) => {
                    r.failed("hosts", internal(e));
                    return r.done("");
                }
            };
            let available = hosts
                .iter()
                .filter(|h| h.status == crate::hosts::model::HostStatus::Available)
                .count();
            r.detail("hosts", hosts.len());
            r.detail("hosts_available", available);
            if available == 0 {
                let (title, message) = if hosts.is_empty() {
                    (
                        "No SSH host is registered",
                        "Launches through ssh run on GPU hosts you register; none is.".to_string(),
                    )
                } else {
                    ("No SSH host is available", format!("{} host(s) registered, none available: each is in use, being probed, or failed its probe.", hosts.len()))
                };
                r.failed(
                    "hosts",
                    LaunchError::new(ErrorCode::ProviderUnavailable, title, message)
                        .suggest("Register a host: the Hosts page, or POST /admin/hosts (address, user, key or password)")
                        .suggest("A host in error: POST /admin/hosts/<id>/probe after fixing what its reason says"),
                );
            } else {
                r.passed("hosts", format!("{available} of {} available", hosts.len()));
            }
            r.done(format!("{available} host(s) available"))
        })
    }

    fn still_launching<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, LaunchError>> {
        Box::pin(async move {
            let Some(host) = self.hosts.held_by(&job.id).await.map_err(internal)? else {
                return Ok(false);
            };
            let target = self.target(&host)?;
            let out = target
                .run(
                    &self.hosts.ssh,
                    &remote::running(&job.id),
                    None,
                    self.step_timeout,
                )
                .await
                .map_err(|e| ssh_error(&host, e))?;
            Ok(out.code == 0)
        })
    }

    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let Some(host) = self.hosts.held_by(&job.id).await.map_err(internal)? else {
                return Ok(());
            };
            let script = remote::teardown(&job.cluster_name, &job.id);
            let result = match self.target(&host) {
                Ok(target) => target
                    .run(
                        &self.hosts.ssh,
                        "bash -s",
                        Some(script.as_bytes()),
                        self.step_timeout * 2,
                    )
                    .await
                    .map_err(|e| ssh_error(&host, e))
                    .and_then(|out| {
                        if out.code == 0 {
                            Ok(())
                        } else {
                            Err(LaunchError::new(
                                ErrorCode::ProviderUnavailable,
                                format!("Teardown on host {} failed", host.name),
                                format!("the teardown script exited {}", out.code),
                            )
                            .with_raw(last_lines(&out.stderr, 20)))
                        }
                    }),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.hosts
                        .release(&host.id, &job.id)
                        .await
                        .map_err(internal)?;
                    Ok(())
                }
                Err(e) => {
                    let _ = self
                        .hosts
                        .teardown_failed(&host.id, &job.id, &e.message)
                        .await;
                    Err(e)
                }
            }
        })
    }
}

impl SshProvider {
    fn target(&self, host: &Host) -> Result<SshTarget, LaunchError> {
        self.hosts.target(host).map_err(|e| {
            LaunchError::new(
                ErrorCode::CredentialsInvalid,
                format!("The credentials of host {} cannot be opened", host.name),
                e.to_string(),
            )
        })
    }

    async fn launch_on_host(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let spec = &job.spec;
        run.stage(Stage::Provision, Some("choosing a free SSH host".into()))
            .await;
        let host = match self
            .hosts
            .claim(&job.id, spec.gpu.as_deref(), spec.gpu_count, &spec.labels)
            .await
        {
            Ok(host) => host,
            Err(ClaimError::NoneFree(why)) => {
                let wanted = spec
                    .gpu
                    .as_ref()
                    .map(|g| format!("{} × {g}", spec.gpu_count))
                    .unwrap_or_else(|| "a host".into());
                return Err(LaunchError::new(
                    ErrorCode::CapacityUnavailable,
                    format!("No free SSH host for {wanted}"),
                    why,
                )
                .suggest("Add a host that fits (POST /admin/hosts), free one by deleting the launch that holds it, or ask for what your hosts have"));
            }
            Err(ClaimError::Store(e)) => return Err(internal(e)),
        };
        run.set_provider_state(json!({"host_id": host.id, "host": host.name}))
            .await;
        run.attempt_started(Attempt {
            cloud: "ssh".into(),
            region: Some(host.name.clone()),
            zone: None,
            instance_type: Some(describe(&host)),
            market: Market::OnDemand,
            price_per_hour: Some(0.0),
            outcome: AttemptOutcome::Trying,
            reason: None,
        })
        .await;
        let result = self.provision(run, &job, &host).await;
        match &result {
            Ok(()) => run.attempt_finished(AttemptOutcome::Succeeded, None).await,
            Err(e) => {
                run.attempt_finished(AttemptOutcome::Failed, Some(e.message.clone()))
                    .await
            }
        }
        result
    }

    async fn provision(&self, run: &JobRun, job: &Job, host: &Host) -> Result<(), LaunchError> {
        let ssh = &self.hosts.ssh;
        let target = self.target(host)?;
        let template = crate::launch::template::template(&job.spec.template).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "Unknown template",
                format!("this build has no template {:?}", job.spec.template),
            )
        })?;
        let out = target
            .run(
                ssh,
                "bash -s",
                Some(remote::facts(template.port).as_bytes()),
                self.step_timeout,
            )
            .await
            .map_err(|e| ssh_error(host, e))?;
        let facts = Facts::parse(&out.stdout).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("Host {} did not answer as expected", host.name),
                "its answer to the first command lacked the home directory or user id; skylaunch needs bash on the host",
            )
            .with_raw(last_lines(&format!("{}{}", out.stdout, out.stderr), 20))
        })?;
        let port = facts.port.ok_or_else(|| {
            LaunchError::new(
                ErrorCode::CapacityUnavailable,
                format!("No free port on host {}", host.name),
                format!(
                    "ports {} to {} are all taken",
                    template.port,
                    u32::from(template.port) + 199
                ),
            )
        })?;
        let service = facts.service();
        if service == ServiceKind::Detached && !facts.setsid {
            return Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("Host {} cannot run services", host.name),
                "it has neither systemd usable by this login nor setsid (util-linux)",
            ));
        }
        run.stage(
            Stage::InstanceUp,
            Some(format!(
                "{}@{}:{} reached; the model server {}; kept running by {}",
                host.user,
                host.address,
                host.port,
                if port == 0 {
                    "picks a free port".to_string()
                } else {
                    format!("gets port {port}")
                },
                match service {
                    ServiceKind::Systemd { .. } => "a systemd unit",
                    ServiceKind::Detached => "a detached session (no systemd for this login: it survives the SSH connection, not a reboot)",
                }
            )),
        )
        .await;
        run.set_provider_state(json!({
            "host_id": host.id, "host": host.name, "service": service.as_str(), "port": port,
        }))
        .await;

        run.stage(
            Stage::Setup,
            Some(format!(
                "copying the agent and the launch's files to {}",
                host.name
            )),
        )
        .await;
        let dir = remote::dir(&job.cluster_name);
        let mut binaries = vec![("skylaunch-agent", &self.agent_bin)];
        if job.spec.template == "echo" {
            binaries.push(("skylaunch", &self.skylaunch_bin));
        }
        for (name, path) in binaries {
            run.log
                .line(
                    "skylaunch",
                    &format!("copying {name} to {}:~/{dir}/bin/", host.name),
                )
                .await;
            let command = format!(
                "umask 077 && mkdir -p \"$HOME/{dir}/bin\" && cat > \"$HOME/{dir}/bin/{name}.part\" && chmod 700 \"$HOME/{dir}/bin/{name}.part\" && mv \"$HOME/{dir}/bin/{name}.part\" \"$HOME/{dir}/bin/{name}\""
            );
            let out = target
                .upload(ssh, path, &command, self.step_timeout * 4)
                .await
                .map_err(|e| ssh_error(host, e))?;
            check_step(
                host,
                &out,
                &format!("copying {name}"),
                ErrorCode::SetupFailed,
            )?;
        }
        let env: std::collections::BTreeMap<String, String> =
            serde_json::from_str(run.rendered_task()).map_err(|e| {
                internal(format!("the launch's environment could not be read: {e}"))
            })?;
        let mut env = env;
        env.insert("SKYLAUNCH_REGION".into(), host.name.clone());
        env.insert("SKYLAUNCH_INSTANCE_TYPE".into(), describe(host));
        let files = [
            ("node.env", remote::env_file(&env, port, &job.id)),
            ("setup.sh", format!("#!/bin/bash\n{}\n", template.setup)),
            ("run.sh", format!("#!/bin/bash\n{}\n", template.run)),
            ("start.sh", remote::start_script(&dir)),
            (
                "unit",
                remote::unit_file(&job.cluster_name, &host.user, &facts.home),
            ),
        ];
        for (name, content) in &files {
            let command =
                format!("umask 077 && mkdir -p \"$HOME/{dir}\" && cat > \"$HOME/{dir}/{name}\"");
            let out = target
                .run(ssh, &command, Some(content.as_bytes()), self.step_timeout)
                .await
                .map_err(|e| ssh_error(host, e))?;
            check_step(
                host,
                &out,
                &format!("writing {name}"),
                ErrorCode::SetupFailed,
            )?;
        }
        run.log
            .line("skylaunch", "running the template's setup on the host")
            .await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String)>();
        let log = run.log.clone();
        let copier = tokio::spawn(async move {
            while let Some((_, line)) = rx.recv().await {
                log.line(
                    "setup",
                    &crate::launch::providers::skypilot::parse::strip_ansi(&line),
                )
                .await;
            }
        });
        let out = target
            .run_streaming(
                ssh,
                &remote::with_env(&dir, "setup.sh"),
                None,
                self.setup_timeout,
                tx,
            )
            .await
            .map_err(|e| ssh_error(host, e));
        let _ = copier.await;
        check_step(host, &out?, "the template's setup", ErrorCode::SetupFailed)?;

        run.stage(
            Stage::StartModelServer,
            Some(format!(
                "starting {} for {} on {}",
                template.description, job.spec.model, host.name
            )),
        )
        .await;
        let out = target
            .run(
                ssh,
                "bash -s",
                Some(remote::start(&job.cluster_name, service).as_bytes()),
                self.step_timeout,
            )
            .await
            .map_err(|e| ssh_error(host, e))?;
        check_step(
            host,
            &out,
            "starting the service",
            ErrorCode::ModelServerFailed,
        )?;
        Ok(())
    }
}

/// A host in a few words: its name and GPUs.
fn describe(host: &Host) -> String {
    match host.effective_gpu_type() {
        Some(gpu) => format!("{} ({} × {gpu})", host.name, host.effective_gpu_count()),
        None => format!("{} (no GPU)", host.name),
    }
}

/// A remote step that ran but failed, with its last lines.
fn check_step(
    host: &Host,
    out: &crate::ssh::Output,
    what: &str,
    code: ErrorCode,
) -> Result<(), LaunchError> {
    if out.code == 0 {
        return Ok(());
    }
    let tail = last_lines(&format!("{}{}", out.stdout, out.stderr), 20);
    let last = tail.lines().last().unwrap_or("no output").to_string();
    Err(LaunchError::new(
        code,
        format!("{what} failed on host {}", host.name),
        format!("{what} exited {}: {last}", out.code),
    )
    .suggest("Read the job's log for the command's output, fix the host, then launch again")
    .with_raw(tail))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SSH's failures in the launch error taxonomy.
fn ssh_error(host: &Host, e: SshError) -> LaunchError {
    let message = e.to_string();
    match e {
        SshError::CredentialsInvalid { .. } => LaunchError::new(
            ErrorCode::CredentialsInvalid,
            format!("Host {} refused the login", host.name),
            message,
        )
        .suggest(format!(
            "Check that the key's public half is in ~{}/.ssh/authorized_keys on the host (or the password), then add the host again with the right credentials",
            host.user
        )),
        SshError::HostKeyMismatch { .. } => LaunchError::new(
            ErrorCode::HostKeyMismatch,
            format!("Host {} presented another host key", host.name),
            message,
        )
        .suggest(format!(
            "If {} was reinstalled, compare its new key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host) with the one shown, then delete and add the host again; otherwise treat it as an attack",
            host.address
        )),
        SshError::Unreachable(_) | SshError::Timeout(_) => LaunchError::new(
            ErrorCode::ProviderUnavailable,
            format!("Host {} could not be reached", host.name),
            message,
        )
        .suggest(format!(
            "Check that {}:{} is up and reachable from the control plane, then try again",
            host.address, host.port
        )),
        SshError::Local(_) => internal(message),
    }
}

fn internal(e: impl std::fmt::Display) -> LaunchError {
    LaunchError::new(ErrorCode::Internal, "Internal error", e.to_string())
}

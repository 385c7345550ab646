//! The job runner: claims launch jobs with a lease, runs each through its provider, waits for the
//! node's agent to register and the node to become ready, and on any failure or cancel tears down
//! what was created so no VM keeps billing for a launch that failed.
//!
//! Every change (stage, attempt, log line, outcome) is written to the database before it is sent
//! to live watchers. A job whose process died (its lease lapsed) is taken over by the next process
//! that claims it, this one after a restart or another on the same PostgreSQL database: if the
//! node's agent has registered, the machine is up and the new process waits for it to become
//! ready. If not, the provider is asked whether the first attempt's machine exists or is still
//! being made (SkyPilot's launch goes on in its API server without the process that started it);
//! if so, the new process waits for that machine's agent, which holds the launch's token. Only
//! when nothing is coming up does it remove whatever the first process may have started
//! (teardown works from the stored provider state and is idempotent) and launch again under the
//! same name, so a takeover never leaves two machines.
//!
//! A process cut off from the database longer than its lease may find the job taken over when
//! it comes back. Every write it makes is fenced by its claim (see [`JobLease`]): the first one
//! refused, or a renewal refused, stops its work on the job at once, with nothing torn down (the
//! machine is the new owner's now). Before anything no two claims may do at once (launching,
//! tearing down, a new node token) the lease is renewed, so no other process can claim the job
//! meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Mutex, Notify};

use super::error::{ErrorCode, LaunchError};
use super::events::JobEvents;
use super::job::{Job, JobStatus};
use super::providers::LaunchProvider;
use super::run::{JobLease, JobLog, JobRun};
use super::spec::Provider;
use super::stage::Stage;
use super::task::{self, NodeIdentity};
use crate::clock::now_ms;
use crate::fleet::status::NodeStatus;
use crate::fleet::{Fleet, NodeCredentials};
use crate::store::{Store, StoreError};
use crate::background::AbortOnDrop;

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// How long a claim lasts without renewal (renewed every third of it).
    pub lease: Duration,
    pub poll_interval: Duration,
    pub max_concurrent: usize,
    /// How long the agent may take to register once the VM is started.
    pub registration_timeout: Duration,
    /// How long the model server may take to become healthy once the agent registered.
    pub ready_timeout: Duration,
    pub control_plane_url: String,
    pub agent_url: String,
}

pub struct JobRunner {
    store: Store,
    fleet: Arc<Fleet>,
    events: JobEvents,
    providers: HashMap<Provider, Arc<dyn LaunchProvider>>,
    settings: RunnerSettings,
    owner: String,
    wake: Notify,
    running: AtomicUsize,
    /// Per job this process runs: the claim it runs under, and its cancel signal.
    cancels: StdMutex<HashMap<String, (i64, watch::Sender<bool>)>>,
    /// The launches this process runs (with their claims), to stop them when it shuts down.
    launches: StdMutex<HashMap<String, (i64, tokio::task::AbortHandle)>>,
}

impl JobRunner {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: JobEvents,
        providers: HashMap<Provider, Arc<dyn LaunchProvider>>,
        settings: RunnerSettings,
    ) -> Arc<JobRunner> {
        Arc::new(JobRunner {
            store,
            fleet,
            events,
            providers,
            settings,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            wake: Notify::new(),
            running: AtomicUsize::new(0),
            cancels: StdMutex::new(HashMap::new()),
            launches: StdMutex::new(HashMap::new()),
        })
    }

    /// A new job is queued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// At shutdown, after [`run`](Self::run) returned: stops the launches this process runs and
    /// hands their leases back, so the next process to look (another one, or this one after a
    /// restart) takes them over at once instead of after `--job-lease`. What a launch started
    /// keeps running; the takeover finds it (see the module's notes).
    pub async fn hand_back(&self) {
        let launches: Vec<_> = self
            .launches
            .lock()
            .expect("launch map lock")
            .values()
            .map(|(_, launch)| launch.clone())
            .collect();
        for launch in &launches {
            launch.abort();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.store.release_leases(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                launches = n,
                "handed running launches back for another process to take over"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand launches back; they are taken over once their leases lapse")
            }
        }
    }

    /// Asks a job this process runs to stop; other processes notice at their next lease renewal.
    pub fn signal_cancel(&self, job_id: &str) {
        if let Some((_, tx)) = self.cancels.lock().expect("cancel map lock").get(job_id) {
            let _ = tx.send(true);
        }
    }

    /// Whether this process is running the job now (else another process may be).
    pub fn runs(&self, job_id: &str) -> bool {
        self.cancels
            .lock()
            .expect("cancel map lock")
            .contains_key(job_id)
    }

    pub fn provider(&self, name: &str) -> Option<Arc<dyn LaunchProvider>> {
        let p = match name {
            "skypilot" => Provider::Skypilot,
            "local" => Provider::Local,
            "aws" => Provider::Aws,
            "azure" => Provider::Azure,
            _ => return None,
        };
        self.providers.get(&p).cloned()
    }

    /// Claims and runs jobs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            while self.running.load(Ordering::SeqCst) < self.settings.max_concurrent {
                let now = now_ms();
                let lease_until = now + self.settings.lease.as_millis() as i64;
                match self.store.claim_job(&self.owner, lease_until, now).await {
                    Ok(Some(claimed)) => {
                        self.running.fetch_add(1, Ordering::SeqCst);
                        let runner = self.clone();
                        let lease = JobLease::new(
                            self.store.clone(),
                            claimed.lease,
                            self.settings.lease,
                            lease_until,
                        );
                        tokio::spawn(async move {
                            let id = claimed.job.id.clone();
                            let claim = lease.token().claim;
                            // On its own task, so a bug that panics mid-launch is caught here
                            // and the launch still ends with its VM torn down.
                            let launch = tokio::spawn(runner.clone().run_claimed(
                                claimed.job,
                                lease.clone(),
                                claimed.reclaimed,
                            ));
                            runner
                                .launches
                                .lock()
                                .expect("launch map lock")
                                .insert(id.clone(), (claim, launch.abort_handle()));
                            match launch.await {
                                Err(e) if e.is_cancelled() => {
                                    tracing::info!(job_id = %id, "launch stopped with this process; handed back for another to take over")
                                }
                                Err(e) => {
                                    tracing::error!(job_id = %id, error = %e, "launch task failed; ending the launch and tearing down");
                                    runner.end_after_crash(&lease).await;
                                }
                                Ok(()) => {}
                            }
                            runner.forget(&id, claim);
                            runner.running.fetch_sub(1, Ordering::SeqCst);
                            runner.wake();
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "could not claim launch jobs");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Forgets a job this process ran under `claim` (not a later claim of the same job).
    fn forget(&self, job_id: &str, claim: i64) {
        let mut launches = self.launches.lock().expect("launch map lock");
        if launches.get(job_id).is_some_and(|(c, _)| *c == claim) {
            launches.remove(job_id);
        }
        let mut cancels = self.cancels.lock().expect("cancel map lock");
        if cancels.get(job_id).is_some_and(|(c, _)| *c == claim) {
            cancels.remove(job_id);
        }
    }

    async fn run_claimed(self: Arc<Self>, job: Job, lease: JobLease, reclaimed: bool) {
        let job_id = job.id.clone();
        let span = tracing::info_span!("launch_job", job_id = %job_id, provider = %job.provider);
        let _enter = span.enter();
        drop(_enter);
        let (cancel_tx, cancel_rx) = watch::channel(job.cancel_requested);
        self.cancels
            .lock()
            .expect("cancel map lock")
            .insert(job_id.clone(), (lease.token().claim, cancel_tx.clone()));
        // Stops renewing however this function ends (a panic included), so the lease can lapse.
        let _renewer = AbortOnDrop(self.clone().spawn_lease_renewal(lease.clone(), cancel_tx));
        // The job lost to another claim, the work stops wherever it is: it has written nothing
        // since (every write checks the lease) and tears nothing down.
        tokio::select! {
            () = self.work_on(job, &lease, reclaimed, cancel_rx) => {}
            () = lease.lost() => {
                tracing::warn!(job_id = %job_id, "another process holds this job now; stopped working on it, nothing torn down");
            }
        }
    }

    async fn work_on(
        &self,
        job: Job,
        lease: &JobLease,
        reclaimed: bool,
        cancel: watch::Receiver<bool>,
    ) {
        let log = self.job_log(lease);
        let started = if reclaimed {
            self.take_over(job.clone(), log.clone(), cancel).await
        } else {
            self.prepare(job.clone(), log.clone(), cancel)
                .await
                .map(|run| (run, Start::Launch))
        };
        let outcome = match started {
            Ok((run, start)) => {
                let (run, result) = self.go_on(run, start).await;
                let job = run.snapshot().await;
                self.finish(job, result, &log).await;
                return;
            }
            Err(e) => Err(e),
        };
        let job = match self.store.job(&job.id).await {
            Ok(Some(j)) => j,
            _ => job,
        };
        self.finish(job, outcome, &log).await;
    }

    /// Goes on with a launch whose process stopped (see the module's notes).
    async fn take_over(
        &self,
        job: Job,
        log: JobLog,
        cancel: watch::Receiver<bool>,
    ) -> Result<(JobRun, Start), LaunchError> {
        tracing::warn!(job_id = %job.id, "taking over a launch whose process stopped");
        log.line(
            "skylaunch",
            "the control-plane process that ran this launch stopped (its lease lapsed); this one takes it over",
        )
        .await;
        let node = match &job.node_id {
            Some(id) => self.fleet.get(id).await.ok(),
            None => None,
        };
        let provider = self.provider(&job.provider);
        if job.cancel_requested {
            return Err(cancelled());
        }
        // Whether the first attempt's agent registered, or will: it holds the launch's token,
        // which this process never learns, so the launch goes on by waiting for it.
        let first_attempt = if let Some(node) = node
            .as_ref()
            .filter(|n| n.registered_at.is_some() && n.status != NodeStatus::Terminated)
        {
            Some((
                format!(
                    "the node's agent registered ({}): the machine is up; waiting for it to become ready",
                    node.status
                ),
                Start::AwaitReady,
            ))
        } else if let (Some(provider), Some(_)) = (
            &provider,
            node.as_ref().filter(|n| n.status != NodeStatus::Terminated),
        ) {
            match provider.still_launching(&job).await {
                Ok(true) => Some(("the provider still has the first attempt's machine (up or being made): waiting for its agent to register instead of launching again".to_string(), Start::Follow)),
                Ok(false) => None,
                Err(e) => {
                    log.line(
                        "skylaunch",
                        &format!("could not tell whether the first attempt's machine exists ({}); starting over", e.message),
                    )
                    .await;
                    None
                }
            }
        } else {
            None
        };
        if let Some((why, start)) = first_attempt {
            log.line("skylaunch", &why).await;
            let task_yaml = job.task_yaml.clone().unwrap_or_default();
            let run = self.job_run(job, log, cancel, None, task_yaml);
            return Ok((run, start));
        }
        log.line(
            "skylaunch",
            "the node's agent never registered and the first attempt left no machine coming up: removing whatever it started, then launching again under the same name",
        )
        .await;
        self.start_over(job, log, cancel)
            .await
            .map(|run| (run, Start::Launch))
    }

    /// Removes whatever an earlier attempt of this launch started, rewinds its stages, and
    /// prepares it again (a new node token) to launch under the same name.
    async fn start_over(
        &self,
        mut job: Job,
        log: JobLog,
        cancel: watch::Receiver<bool>,
    ) -> Result<JobRun, LaunchError> {
        if let Some(provider) = self.provider(&job.provider) {
            if !log.lease.confirm().await {
                return Err(lease_lost());
            }
            provider.teardown(&job).await.map_err(|e| {
                LaunchError::new(
                    e.code,
                    "Could not clean up after the stopped process",
                    format!(
                        "this launch was taken over from a process that stopped, but removing what it had started failed: {}",
                        e.message
                    ),
                )
                .suggest("Check the provider's console for machines named after this launch's cluster, then launch again")
            })?;
        }
        job.provider_state = json!({});
        job.rewind_to(Stage::Validate);
        self.prepare(job, log, cancel).await
    }

    /// Runs a claimed job from where [`Start`] says to its outcome; returns the run it ended
    /// with (a new one if the launch had to start over).
    async fn go_on(&self, run: JobRun, start: Start) -> (JobRun, Result<(), LaunchError>) {
        if let Start::Launch = start {
            let result = self.launch_and_wait(&run).await;
            return (run, result);
        }
        let follow = matches!(start, Start::Follow);
        let followed = tokio::select! {
            r = self.wait_for_ready(&run) => Some(r),
            _ = run.cancelled() => Some(Err(cancelled())),
            _ = self.first_attempt_ended(&run), if follow => None,
        };
        if let Some(result) = followed {
            return (run, result);
        }
        run.log
            .line(
                "skylaunch",
                "the first attempt's launch ended without a machine: removing whatever it started, then launching again under the same name",
            )
            .await;
        let job = run.snapshot().await;
        match self
            .start_over(job, run.log.clone(), run.cancel.clone())
            .await
        {
            Ok(again) => {
                let result = self.launch_and_wait(&again).await;
                (again, result)
            }
            Err(e) => (run, Err(e)),
        }
    }

    /// Returns once the provider no longer has the first attempt's machine, neither up nor
    /// being made (asked at every lease renewal; twice in a row, so a moment's absence between
    /// two provider states does not count), while the node's agent has not registered. Never
    /// returns once it registered: the machine is up.
    async fn first_attempt_ended(&self, run: &JobRun) {
        let job = run.snapshot().await;
        let (Some(provider), Some(node_id)) = (self.provider(&job.provider), job.node_id.clone())
        else {
            return std::future::pending().await;
        };
        let mut absent = 0;
        loop {
            tokio::time::sleep(self.settings.lease / 3).await;
            if self
                .fleet
                .get(&node_id)
                .await
                .is_ok_and(|n| n.registered_at.is_some())
            {
                return std::future::pending().await;
            }
            match provider.still_launching(&job).await {
                Ok(false) => absent += 1,
                Ok(true) => absent = 0,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e.message, "could not ask the provider about the first attempt; asking again later")
                }
            }
            if absent >= 2 {
                return;
            }
        }
    }

    fn job_log(&self, lease: &JobLease) -> JobLog {
        JobLog {
            lease: lease.clone(),
            events: self.events.clone(),
        }
    }

    /// Ends a launch whose task died of a bug: recorded as failed, and what it created torn
    /// down from its stored state, as after a restart (unless another process holds it now).
    async fn end_after_crash(&self, lease: &JobLease) {
        let job = match self.store.job(&lease.token().job_id).await {
            Ok(Some(job)) if !job.status.is_terminal() => job,
            _ => return,
        };
        let log = self.job_log(lease);
        let error = LaunchError::new(
            ErrorCode::Internal,
            "skylaunch hit an internal error during this launch",
            "the launch stopped on an internal error (see the control plane's log); what it had created was torn down",
        )
        .suggest("Launch again, and report the error in the control plane's log");
        self.finish(job, Err(error), &log).await;
    }

    /// Renews the lease every third of it; a refused renewal (or one failing past the lease)
    /// marks the job lost, which stops its work.
    fn spawn_lease_renewal(
        self: Arc<Self>,
        lease: JobLease,
        cancel: watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = self.settings.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                match lease.renew().await {
                    Ok(Some(cancel_requested)) => {
                        if cancel_requested {
                            let _ = cancel.send(true);
                        }
                    }
                    Ok(None) => return,
                    Err(_) if lease.is_lost() => return,
                    Err(e) => {
                        tracing::warn!(job_id = %lease.token().job_id, error = %e, "could not renew the job lease; retrying")
                    }
                }
            }
        })
    }

    /// Validate and render stages: mint the node token, render the task.
    async fn prepare(
        &self,
        mut job: Job,
        log: JobLog,
        cancel: watch::Receiver<bool>,
    ) -> Result<JobRun, LaunchError> {
        let now = now_ms();
        job.activate(Stage::Validate, Some("request is valid".into()), now);
        job.activate(Stage::RenderTask, None, now);
        let node_id = job.node_id.clone().ok_or_else(|| {
            LaunchError::new(
                ErrorCode::Internal,
                "The launch has no node",
                "this launch job was created without its node record",
            )
        })?;
        // A new token locks out the agent of any earlier claim's machine: only while this claim
        // holds the job.
        if !log.lease.confirm().await {
            return Err(lease_lost());
        }
        let credentials = self.fleet.rotate_credentials(&node_id).await.map_err(|e| {
            LaunchError::new(
                ErrorCode::Internal,
                "Could not issue the node's token",
                e.to_string(),
            )
        })?;
        let template = task::template(&job.spec.template).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "Unknown template",
                format!("template {:?} does not exist", job.spec.template),
            )
        })?;
        let identity = NodeIdentity {
            control_plane_url: &self.settings.control_plane_url,
            agent_url: &self.settings.agent_url,
            node_id: &node_id,
            node_token: &credentials.token,
            model_key: &credentials.model_key,
        };
        let rendered = task::render(&job.spec, &template, &job.cluster_name, &identity);
        let task_yaml = task::to_yaml(&rendered);
        job.task_yaml = Some(task::to_yaml(&task::masked(&rendered, &job.spec)));
        job.detail(
            Stage::RenderTask,
            format!("template {} ({})", job.spec.template, template.description),
        );
        job.updated_at = now_ms();
        if !log.lease.write(&job).await.map_err(|e| store_failure(&e))? {
            return Err(lease_lost());
        }
        self.events.send(
            &job.id,
            "stage",
            json!({"stage": Stage::RenderTask, "stages": job.stages}),
        );
        Ok(self.job_run(job, log, cancel, Some(credentials), task_yaml))
    }

    /// A job's run; `credentials` are the node's for a launch, none when it only waits.
    fn job_run(
        &self,
        job: Job,
        log: JobLog,
        cancel: watch::Receiver<bool>,
        credentials: Option<NodeCredentials>,
        task_yaml: String,
    ) -> JobRun {
        let (node_token, model_key) =
            credentials.map_or_else(Default::default, |c| (c.token, c.model_key));
        JobRun {
            job: Mutex::new(job),
            lease: log.lease.clone(),
            events: self.events.clone(),
            log,
            cancel,
            node_token,
            model_key,
            task_yaml,
            settings: self.settings.clone(),
        }
    }

    async fn launch_and_wait(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let provider = self.provider(&job.provider).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "Provider not available",
                format!("provider {:?} is not available in this build", job.provider),
            )
        })?;
        if !run.lease.confirm().await {
            return Err(lease_lost());
        }
        tokio::select! {
            r = provider.launch(run) => r?,
            _ = run.cancelled() => return Err(cancelled()),
        }
        tokio::select! {
            r = self.wait_for_ready(run) => r,
            _ = run.cancelled() => Err(cancelled()),
        }
    }

    async fn wait_for_ready(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let node_id = job.node_id.clone().unwrap_or_default();
        run.stage(
            Stage::Register,
            Some("waiting for the node agent to register".into()),
        )
        .await;
        let started = tokio::time::Instant::now();
        let mut registered_at = None;
        loop {
            let node = self.fleet.get(&node_id).await.map_err(|e| {
                LaunchError::new(
                    ErrorCode::Internal,
                    "The node record is gone",
                    e.to_string(),
                )
            })?;
            match node.status {
                NodeStatus::Ready => return Ok(()),
                NodeStatus::Terminated => {
                    return Err(LaunchError::new(
                        ErrorCode::Cancelled,
                        "The node was deleted",
                        "the node was deleted while it was launching",
                    ))
                }
                NodeStatus::Registered
                | NodeStatus::Unhealthy
                | NodeStatus::Offline
                | NodeStatus::Draining
                    if registered_at.is_none() && node.registered_at.is_some() =>
                {
                    registered_at = Some(tokio::time::Instant::now());
                    run.stage(
                        Stage::Ready,
                        Some(
                            "agent registered; waiting for the model server to become healthy"
                                .into(),
                        ),
                    )
                    .await;
                }
                _ => {}
            }
            match registered_at {
                None if started.elapsed() >= self.settings.registration_timeout => {
                    return Err(LaunchError::new(
                        ErrorCode::RegistrationTimeout,
                        "The node agent never registered",
                        format!(
                            "the VM was started but its agent did not register within {}; the VM has been torn down",
                            crate::clock::fmt_duration(self.settings.registration_timeout)
                        ),
                    )
                    .suggest("Check that the VM can reach the control plane at SKYLAUNCH_PUBLIC_URL (firewall, security group, public address)")
                    .suggest("Look at the job's logs for setup errors (GET /admin/launch-jobs/<id>/logs)"));
                }
                Some(at) if at.elapsed() >= self.settings.ready_timeout => {
                    let why = node
                        .last_heartbeat
                        .as_ref()
                        .and_then(|hb| hb.model_server.as_ref())
                        .and_then(|m| m.error.clone())
                        .unwrap_or_else(|| node.status_reason.clone().unwrap_or_default());
                    return Err(LaunchError::new(
                        ErrorCode::ModelServerFailed,
                        "The model server never became healthy",
                        format!(
                            "the agent registered but the model server was not ready within {}: {why}",
                            crate::clock::fmt_duration(self.settings.ready_timeout)
                        ),
                    )
                    .suggest("Check the model id and that the GPU has enough memory for it")
                    .suggest("Gated models need HF_TOKEN in the launch's envs"));
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records the outcome; on failure tears down first, so nothing is left billing. Does
    /// neither once another process holds the job: what is up is its machine now.
    async fn finish(&self, mut job: Job, outcome: Result<(), LaunchError>, log: &JobLog) {
        if log.lease.is_lost() {
            return;
        }
        let now = now_ms();
        match outcome {
            Ok(()) => {
                job.succeed(now);
                tracing::info!(job_id = %job.id, "launch succeeded: node is ready");
            }
            Err(error) => {
                log.line(
                    "skylaunch",
                    &format!("launch failed: {} ({})", error.title, error.code.as_str()),
                )
                .await;
                if !log.lease.confirm().await {
                    return;
                }
                let mut torn_down = Ok(());
                if let Some(provider) = self.provider(&job.provider) {
                    log.line("skylaunch", "tearing down what this launch created")
                        .await;
                    torn_down = provider.teardown(&job).await;
                }
                if let Err(e) = &torn_down {
                    log.line(
                        "skylaunch",
                        &format!(
                            "teardown failed: {} (retried until the machine is gone)",
                            e.message
                        ),
                    )
                    .await;
                    tracing::error!(job_id = %job.id, error = %e.message, "teardown failed; the node waits in teardown_pending and it is retried");
                }
                if let Some(node_id) = &job.node_id {
                    let reason = format!("launch {}: {}", job.id, error.title);
                    let _ = match &torn_down {
                        Ok(()) => self.fleet.terminate(node_id, &reason).await,
                        Err(e) => {
                            let reason = format!("{reason}; teardown failed: {}", e.message);
                            self.fleet.teardown_pending(node_id, &reason).await
                        }
                    };
                }
                let status = if error.code == ErrorCode::Cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                };
                tracing::warn!(job_id = %job.id, code = error.code.as_str(), "launch did not succeed");
                job.finish_unsuccessfully(status, error, now);
            }
        }
        job.updated_at = now;
        if log.lease.save(&job).await {
            self.events.send(&job.id, "job", json!(job));
        }
    }

    /// Tears down what a finished job created (when its node is deleted).
    pub async fn teardown(&self, job: &Job) -> Result<(), LaunchError> {
        match self.provider(&job.provider) {
            Some(provider) => provider.teardown(job).await,
            None => Ok(()),
        }
    }
}

/// How a claimed job goes on.
enum Start {
    /// Launch the machine, then wait for the node.
    Launch,
    /// The machine is up (taken over after its agent registered): wait for the node.
    AwaitReady,
    /// The provider is still making the first attempt's machine (taken over before its agent
    /// registered): wait for its agent, and start over if that attempt ends without a machine.
    Follow,
}

pub fn cancelled() -> LaunchError {
    LaunchError::new(
        ErrorCode::Cancelled,
        "Launch cancelled",
        "the launch was cancelled; what it had created was torn down",
    )
}

/// What a step returns when the job turned out to be another claim's; never recorded (the
/// runner stops on the lost lease first).
fn lease_lost() -> LaunchError {
    LaunchError::new(
        ErrorCode::Internal,
        "Another process took this launch over",
        "this process lost the job's lease (it was cut off from the database longer than the lease) and stopped",
    )
}

fn store_failure(e: &StoreError) -> LaunchError {
    LaunchError::new(
        ErrorCode::Internal,
        "The database is not answering",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::config::ServeConfig;
    use crate::fleet::node::NewNode;
    use crate::launch::job::Job;
    use crate::launch::providers::BoxFuture;
    use crate::launch::spec::LaunchRequest;
    use crate::metrics::Metrics;

    /// A provider with a bug: it records a VM, then panics.
    #[derive(Default)]
    struct PanickingProvider {
        teardowns: AtomicU32,
    }

    impl LaunchProvider for PanickingProvider {
        fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
            Box::pin(async move {
                run.set_provider_state(json!({"vm": "created-before-the-bug"}))
                    .await;
                panic!("a bug in a provider");
            })
        }

        fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
            assert_eq!(job.provider_state["vm"], "created-before-the-bug");
            self.teardowns.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launch_whose_provider_panics_fails_and_is_torn_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url_for(dir.path()))
            .await
            .unwrap();
        let config = ServeConfig::defaults();
        let fleet = Arc::new(
            Fleet::load(
                store.clone(),
                config.health_policy(),
                Arc::new(Metrics::default()),
            )
            .await
            .unwrap(),
        );
        let provider = Arc::new(PanickingProvider::default());
        let providers: HashMap<Provider, Arc<dyn LaunchProvider>> =
            HashMap::from([(Provider::Local, provider.clone() as Arc<dyn LaunchProvider>)]);
        let runner = JobRunner::new(
            store.clone(),
            fleet.clone(),
            JobEvents::default(),
            providers,
            RunnerSettings {
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_millis(50),
                max_concurrent: 4,
                registration_timeout: Duration::from_secs(60),
                ready_timeout: Duration::from_secs(60),
                control_plane_url: "http://127.0.0.1:9".into(),
                agent_url: "http://127.0.0.1:9/agent".into(),
            },
        );
        let spec = serde_json::from_value::<LaunchRequest>(
            json!({"model": "demo/echo", "provider": "local"}),
        )
        .unwrap()
        .validate("buggy")
        .unwrap();
        let job_id = uuid::Uuid::new_v4().to_string();
        let (node, _) = fleet
            .create_node(
                NewNode {
                    name: "buggy".into(),
                    model_name: "demo/echo".into(),
                    endpoint_url: None,
                    provider: Some("local".into()),
                    labels: None,
                },
                Some(job_id.clone()),
            )
            .await
            .unwrap();
        let job = Job::queued(job_id.clone(), spec, Some(node.id.clone()), now_ms());
        store.insert_job(&job, "{}", None).await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(runner.clone().run(stopped));
        runner.wake();
        let mut last = None;
        for _ in 0..200 {
            last = store.job(&job_id).await.unwrap();
            if last.as_ref().is_some_and(|j| j.status.is_terminal()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let job = last.unwrap();
        assert_eq!(job.status, JobStatus::Failed, "{job:?}");
        assert_eq!(job.error.as_ref().unwrap().code, ErrorCode::Internal);
        assert_eq!(provider.teardowns.load(Ordering::SeqCst), 1, "torn down");
        assert_eq!(
            fleet.get(&node.id).await.unwrap().status,
            NodeStatus::Terminated
        );
        assert_eq!(runner.running.load(Ordering::SeqCst), 0, "the slot is free");
        let _ = stop.send(true);
        task.await.unwrap();
    }
}

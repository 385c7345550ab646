//! The job runner: claims launch jobs with a lease, runs each through its provider, waits for the
//! node's agent to register and the node to become ready, and on any failure or cancel tears down
//! what was created so no VM keeps billing for a launch that failed.
//!
//! [`JobRunner`] is one type; its work is split by concern over sibling files:
//! - `worker.rs`: the queue worker: the claim loop, how many launches run at once,
//!   the cancel registry, and handing launches back at shutdown;
//! - `takeover.rs`: the lease renewal, and going on with a launch whose process
//!   stopped without ever leaving two machines;
//! - `lifecycle.rs`: launching, waiting for the node to become ready, recording
//!   the outcome and tearing down;
//! - this file: the runner, its settings, and preparing a job for its provider (the node's
//!   credentials, the rendered task).
//!
//! Every change (stage, attempt, log line, outcome) is written to the database before it is sent
//! to live watchers, and every write is fenced by the job's claim (see [`JobLease`](super::run::JobLease)).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Mutex, Notify};

use super::events::{JobEventKind, JobEvents};
use super::failure::{ErrorCode, LaunchError};
use super::job::Job;
use super::providers::{LaunchProvider, Provider, Providers};
use super::run::{JobLog, JobRun};
use super::stage::Stage;
use super::template::{self, NodeIdentity};
use crate::clock::now_ms;
use crate::fleet::{Fleet, NodeCredentials};
use crate::store::{Store, StoreError};

/// What the runner needs to know, built from the serve flags.
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
    /// The control plane's URL as launched nodes reach it.
    pub control_plane_url: String,
    /// Where launched nodes download the agent binary from.
    pub agent_url: String,
}

/// Runs launch jobs (see the module's notes); one per process, shared behind an `Arc`.
pub struct JobRunner {
    pub(super) store: Store,
    pub(super) fleet: Arc<Fleet>,
    pub(super) events: JobEvents,
    providers: Providers,
    pub(super) settings: RunnerSettings,
    /// Names this process's claims: its pid and a random part.
    pub(super) owner: String,
    pub(super) wake: Notify,
    /// How many launches this process runs now.
    pub(super) running: AtomicUsize,
    /// Per job this process runs: the claim it runs under, and its cancel signal.
    pub(super) cancels: StdMutex<HashMap<String, (i64, watch::Sender<bool>)>>,
    /// The launches this process runs (with their claims), to stop them when it shuts down.
    pub(super) launches: StdMutex<HashMap<String, (i64, tokio::task::AbortHandle)>>,
}

impl JobRunner {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: JobEvents,
        providers: Providers,
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

    /// The provider of a kind, if this process has one (this build may lack it).
    pub fn provider(&self, kind: Provider) -> Option<Arc<dyn LaunchProvider>> {
        self.providers.get(kind)
    }

    /// Validate and render stages: mint the node token, render the task.
    pub(super) async fn prepare(
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
        let template = template::template(&job.spec.template).ok_or_else(|| {
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
        let rendered = self.providers.render(&job, &template, &identity);
        job.task_yaml = Some(rendered.shown);
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
            JobEventKind::Stage,
            json!({"stage": Stage::RenderTask, "stages": job.stages}),
        );
        Ok(self.job_run(job, log, cancel, Some(credentials), rendered.for_machine))
    }

    /// A job's run; `credentials` are the node's and `rendered_task` what its provider rendered
    /// for a launch, none and empty when it only waits.
    pub(super) fn job_run(
        &self,
        job: Job,
        log: JobLog,
        cancel: watch::Receiver<bool>,
        credentials: Option<NodeCredentials>,
        rendered_task: String,
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
            rendered_task,
            control_plane_url: self.settings.control_plane_url.clone(),
            agent_url: self.settings.agent_url.clone(),
        }
    }
}

/// What a cancelled launch records as its error.
pub fn cancelled() -> LaunchError {
    LaunchError::new(
        ErrorCode::Cancelled,
        "Launch cancelled",
        "the launch was cancelled; what it had created was torn down",
    )
}

/// What a step returns when the job turned out to be another claim's; never recorded (the
/// runner stops on the lost lease first).
pub(super) fn lease_lost() -> LaunchError {
    LaunchError::new(
        ErrorCode::Internal,
        "Another process took this launch over",
        "this process lost the job's lease (it was cut off from the database longer than the lease) and stopped",
    )
}

pub(super) fn store_failure(e: &StoreError) -> LaunchError {
    LaunchError::new(
        ErrorCode::Internal,
        "The database is not answering",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::fleet::node::NewNode;
    use crate::fleet::status::{HealthPolicy, NodeStatus};
    use crate::launch::job::JobStatus;
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
        let fleet = Arc::new(
            Fleet::load(
                store.clone(),
                HealthPolicy::default(),
                Arc::new(Metrics::default()),
            )
            .await
            .unwrap(),
        );
        let provider = Arc::new(PanickingProvider::default());
        let providers = Providers::default().with(Provider::Local, provider.clone());
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

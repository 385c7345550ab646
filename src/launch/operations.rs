//! What the admin API asks of launches, each as one operation: submit a launch (its node and its
//! job written in one transaction), cancel one, and delete a launched node (stopping or tearing
//! down what its launch created first). Handlers parse the request, call one of these, and map
//! its [`LaunchOpError`] to a response.

use serde_json::json;

use super::events::JobEventKind;
use super::failure::ErrorCode;
use super::job::{Job, JobStatus};
use super::runner::{cancelled, JobRunner};
use super::spec::{LaunchRequest, LaunchSpec, SpecError};
use crate::clock::now_ms;
use crate::fleet::node::{Membership, NewNode, Node};
use crate::fleet::status::NodeStatus;
use crate::fleet::FleetError;
use crate::store::StoreError;

/// Why a launch operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LaunchOpError {
    /// The request cannot be launched (a field is wrong, or its provider is not in this build).
    #[error("{}", .0.message)]
    Invalid(SpecError),
    /// The idempotency key was first used for a different launch.
    #[error("idempotency key {key:?} was first used for job {job_id}")]
    IdempotencyKeyReused { key: String, job_id: String },
    #[error("no launch job with id {0:?}")]
    JobNotFound(String),
    /// The job ended before the cancel arrived; it is shown as it ended.
    #[error("the job already ended ({})", .status.as_str())]
    JobFinished { status: JobStatus, job: Box<Job> },
    /// What the node's launch created could not be torn down (the provider's message); the
    /// node waits in `teardown_pending` and the teardown is retried.
    #[error("teardown failed: {0}")]
    TeardownFailed(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should never fail did (the cause, for the log).
    #[error("{0}")]
    Internal(String),
}

impl From<SpecError> for LaunchOpError {
    fn from(e: SpecError) -> Self {
        LaunchOpError::Invalid(e)
    }
}

/// A node name from the model and the job id: `llama-3.1-8b-instruct-5f3c2a`.
pub fn default_name(model: &str, job_id: &str) -> String {
    let base: String = model
        .rsplit('/')
        .next()
        .unwrap_or("node")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let base = if base.is_empty() { "node" } else { base };
    format!("{base}-{}", &job_id.replace('-', "")[..6])
}

/// Queues a launch: validates the request (and that its provider can run it), then writes its
/// node and its job in one transaction, so neither exists without the other, and wakes the
/// runner. A repeat with the same idempotency key gets the first job, if it asks for the same
/// launch.
pub async fn submit(
    runner: &JobRunner,
    request: &LaunchRequest,
    idempotency_key: Option<&str>,
) -> Result<Job, LaunchOpError> {
    let store = &runner.store;
    if let Some(key) = idempotency_key {
        if let Some(first) = store.job_by_idempotency_key(key).await? {
            return same_request(key, first, request);
        }
    }
    let prepared = prepare(runner, request)?;
    let mut tx = store.pool().begin().await.map_err(StoreError::from)?;
    let written = queue_in(runner, &mut tx, prepared, idempotency_key, None).await;
    let (job, node) = match written {
        Ok(written) => written,
        Err(e) => {
            drop(tx);
            // Another request with the same key was stored first: it answers this one.
            if let (LaunchOpError::Store(StoreError::Duplicate(_)), Some(key)) =
                (&e, idempotency_key)
            {
                if let Some(first) = store.job_by_idempotency_key(key).await? {
                    return same_request(key, first, request);
                }
            }
            return Err(e);
        }
    };
    tx.commit().await.map_err(StoreError::from)?;
    Ok(queued(runner, job, node))
}

/// A launch request that passed validation and its provider's checks, with its job id: ready
/// to be written by [`queue_in`].
pub struct PreparedLaunch {
    id: String,
    spec: LaunchSpec,
    request_json: String,
}

impl PreparedLaunch {
    pub fn spec(&self) -> &LaunchSpec {
        &self.spec
    }
}

/// Validates a launch request and asks its provider whether it can run it; writes nothing.
pub fn prepare(
    runner: &JobRunner,
    request: &LaunchRequest,
) -> Result<PreparedLaunch, LaunchOpError> {
    let id = uuid::Uuid::new_v4().to_string();
    let spec = request.validate(&default_name(&request.model, &id))?;
    match runner.provider(spec.provider) {
        Some(provider) => provider.check(&spec)?,
        None => {
            return Err(SpecError {
                code: ErrorCode::InvalidRequest,
                field: "provider",
                message: format!(
                    "provider {:?} is not in this build of skylaunch (it was compiled without the \"{}\" feature)",
                    spec.provider.as_str(),
                    spec.provider.as_str()
                ),
                suggestions: vec!["skypilot".into(), "local".into()],
            }
            .into())
        }
    }
    let request_json =
        serde_json::to_string(request).map_err(|e| LaunchOpError::Internal(e.to_string()))?;
    Ok(PreparedLaunch {
        id,
        spec,
        request_json,
    })
}

/// Writes a prepared launch's node (a deployment's replica when `membership` says so) and its
/// queued job inside the caller's transaction, so they are stored with whatever else the
/// caller writes, or not at all. Once the transaction commits, hand both to [`queued`].
pub async fn queue_in(
    runner: &JobRunner,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    prepared: PreparedLaunch,
    idempotency_key: Option<&str>,
    membership: Option<Membership>,
) -> Result<(Job, Node), LaunchOpError> {
    let PreparedLaunch {
        id,
        spec,
        request_json,
    } = prepared;
    let (node, _unused_token) = runner
        .fleet
        .create_node_in(
            tx,
            NewNode {
                name: spec.name.clone(),
                model_name: spec.model.clone(),
                endpoint_url: None,
                provider: Some(spec.provider.as_str().to_string()),
                labels: None,
            },
            Some(id.clone()),
            membership,
        )
        .await?;
    let job = Job::queued(id, spec, Some(node.id.clone()), now_ms());
    runner
        .store
        .insert_job_in(tx, &job, &request_json, idempotency_key)
        .await?;
    Ok((job, node))
}

/// After the transaction of [`queue_in`] committed: the fleet takes the node, the runner wakes.
pub fn queued(runner: &JobRunner, job: Job, node: Node) -> Job {
    let node = runner.fleet.node_created(node);
    tracing::info!(job_id = %job.id, node_id = %node.id, provider = job.provider.as_str(), model = %job.spec.model, "launch job queued");
    runner.wake();
    job
}

/// A repeat with an idempotency key gets the first job, if it asks for the same launch; the same
/// key with another request is a mistake the caller should hear about.
fn same_request(
    key: &str,
    (job, first_request): (Job, String),
    request: &LaunchRequest,
) -> Result<Job, LaunchOpError> {
    let internal = |e: serde_json::Error| LaunchOpError::Internal(e.to_string());
    let first: serde_json::Value = serde_json::from_str(&first_request).map_err(internal)?;
    let now = serde_json::to_value(request).map_err(internal)?;
    if first != now {
        return Err(LaunchOpError::IdempotencyKeyReused {
            key: key.to_string(),
            job_id: job.id,
        });
    }
    Ok(job)
}

/// Cancels a launch: a queued one ends at once (its node terminated); a running one is told to
/// stop, here or, through the cancel flag, in whichever process runs it. Returns the job as it
/// is afterwards.
pub async fn cancel(runner: &JobRunner, id: &str) -> Result<Job, LaunchOpError> {
    let store = &runner.store;
    let not_found = || LaunchOpError::JobNotFound(id.to_string());
    let status = store
        .request_cancel(id, now_ms())
        .await?
        .ok_or_else(not_found)?;
    match status {
        s if s.is_terminal() => {
            let job = store.job(id).await?.ok_or_else(not_found)?;
            return Err(LaunchOpError::JobFinished {
                status: s,
                job: Box::new(job),
            });
        }
        JobStatus::Queued => {
            let mut job = store.job(id).await?.ok_or_else(not_found)?;
            job.finish_unsuccessfully(JobStatus::Cancelled, cancelled(), now_ms());
            job.updated_at = now_ms();
            if store.finish_queued_job(&job).await? {
                if let Some(node_id) = &job.node_id {
                    let _ = runner
                        .fleet
                        .terminate(node_id, "its launch was cancelled before it started")
                        .await;
                }
                runner.events.send(id, JobEventKind::Job, json!(job));
            } else {
                // A runner claimed it meanwhile; the cancel flag stops it.
                runner.signal_cancel(id);
            }
        }
        _ => runner.signal_cancel(id),
    }
    store.job(id).await?.ok_or_else(not_found)
}

/// Deletes a node (an admin's DELETE). If a launch made it, that launch is cancelled while it
/// runs, or what it created is torn down first; a teardown that fails leaves the node in
/// `teardown_pending` (retried until the machine is gone, or at the next delete) and is
/// [`LaunchOpError::TeardownFailed`]. Returns the terminated node.
pub async fn delete_launched_node(runner: &JobRunner, id: &str) -> Result<Node, LaunchOpError> {
    let fleet = &runner.fleet;
    let node = fleet.get(id).await?;
    if let Some(job_id) = &node.launch_job_id {
        match runner.store.job(job_id).await? {
            Some(job) if !job.status.is_terminal() => {
                let _ = runner.store.request_cancel(job_id, now_ms()).await;
                runner.signal_cancel(job_id);
            }
            Some(job) if node.status != NodeStatus::Terminated => {
                if let Err(e) = runner.teardown(&job).await {
                    let reason = format!("deleted by an admin; teardown failed: {}", e.message);
                    fleet.teardown_pending(id, &reason).await?;
                    return Err(LaunchOpError::TeardownFailed(e.message));
                }
            }
            _ => {}
        }
    }
    Ok(fleet.terminate(id, "deleted by an admin").await?)
}

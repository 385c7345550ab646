//! SQL for launch jobs and their logs: an `impl Store` block kept here, next to the job it
//! stores, so the database layer knows nothing of launches. It includes the lease that lets
//! exactly one control-plane process run a job at a time: a claim marks the job running with a
//! lease deadline in one short statement; the runner renews it while it works; a job whose lease
//! expired (its process died) can be claimed again. No transaction is held across a subprocess
//! or cloud call.
//!
//! Every write the runner makes about a running job is fenced by its [`Lease`]: it matches only
//! while the job is still running under that claim, so a process cut off from the database
//! longer than its lease cannot overwrite the work of the process that took the job over. A
//! fenced write that matches nothing is [`StoreError::LeaseLost`]. Admin writes (a cancel
//! request) are not fenced: they set a flag the lease holder reads.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::job::{Job, JobStatus};
use crate::store::{plausible_id, Store, StoreError};

const JOB_COLUMNS: &str = "id, name, status, stage, provider, spec, stages, attempts, error, node_id, \
     task_yaml, cluster_name, provider_state, cancel_requested, created_at, updated_at, finished_at";

/// A line of provider output or of skylaunch's own narration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    pub id: i64,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub at: i64,
    pub stream: String,
    pub line: String,
}

/// A claimed job and whether an earlier process had claimed it before (and died).
pub struct Claimed {
    pub job: Job,
    pub reclaimed: bool,
    pub lease: Lease,
}

/// One claim of one job: the fencing token its writes carry. `claim` is the job's claim count
/// at that claim, so any later claim (by another process, or by this one after its lease
/// lapsed) fences the earlier one's writes even when the owner is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: String,
    pub owner: String,
    pub claim: i64,
}

/// The WHERE clause of a fenced write, with the lease bound as $1 (job id), $2 and $3.
const HELD: &str = "id = $1 AND lease_owner = $2 AND claims = $3 AND status = 'running'";

impl Store {
    /// Stores a new job with the request (JSON) it was made from. A job with the same
    /// idempotency key is [`StoreError::Duplicate`].
    pub async fn insert_job(
        &self,
        job: &Job,
        request: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        self.insert_job_in(&mut tx, job, request, idempotency_key)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::insert_job`] inside the caller's transaction (a launch stores its node with it).
    pub async fn insert_job_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        job: &Job,
        request: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO launch_jobs ({JOB_COLUMNS}, request, idempotency_key) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&job.id)
        .bind(&job.name)
        .bind(job.status.as_str())
        .bind(job.stage.map(|s| s.as_str()))
        .bind(job.provider.as_str())
        .bind(json(&job.spec))
        .bind(json(&job.stages))
        .bind(json(&job.attempts))
        .bind(job.error.as_ref().map(json))
        .bind(&job.node_id)
        .bind(&job.task_yaml)
        .bind(&job.cluster_name)
        .bind(job.provider_state.to_string())
        .bind(i64::from(job.cancel_requested))
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(job.finished_at)
        .bind(request)
        .bind(idempotency_key)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The job first made with `key`, and the request (JSON) it was made from.
    pub async fn job_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(Job, String)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS}, request FROM launch_jobs WHERE idempotency_key = $1"
        ))
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => Ok(Some((job_from_row(&row)?, row.try_get("request")?))),
            None => Ok(None),
        }
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM launch_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The jobs with these ids (those that exist, in no particular order), read in batches so
    /// no statement outgrows a backend's limit on parameters.
    pub async fn jobs_by_ids(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<&String> = ids.iter().filter(|id| plausible_id(id)).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        for batch in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM launch_jobs WHERE id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in batch {
                query = query.bind(id.as_str());
            }
            for row in query.fetch_all(self.pool()).await? {
                jobs.push(job_from_row(&row)?);
            }
        }
        Ok(jobs)
    }

    /// Whether any launch job ever used this provider.
    pub async fn any_job_on(&self, provider: &str) -> Result<bool, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM launch_jobs WHERE provider = $1 LIMIT 1")
                .bind(provider)
                .fetch_optional(self.pool())
                .await?;
        Ok(found.is_some())
    }

    /// The newest jobs first.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM launch_jobs ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Writes everything the runner changes about a job, if `lease` still holds it.
    pub async fn save_job(&self, job: &Job, lease: &Lease) -> Result<(), StoreError> {
        debug_assert_eq!(job.id, lease.job_id, "a job is saved under its own lease");
        let done = sqlx::query(&format!(
            "UPDATE launch_jobs SET status = $4, stage = $5, stages = $6, attempts = $7, error = $8, \
             node_id = $9, task_yaml = $10, provider_state = $11, updated_at = $12, finished_at = $13 \
             WHERE {HELD}"
        ))
        .bind(&lease.job_id)
        .bind(&lease.owner)
        .bind(lease.claim)
        .bind(job.status.as_str())
        .bind(job.stage.map(|s| s.as_str()))
        .bind(json(&job.stages))
        .bind(json(&job.attempts))
        .bind(job.error.as_ref().map(json))
        .bind(&job.node_id)
        .bind(&job.task_yaml)
        .bind(job.provider_state.to_string())
        .bind(job.updated_at)
        .bind(job.finished_at)
        .execute(self.pool())
        .await?;
        fenced(done.rows_affected(), lease)
    }

    /// Claims the oldest queued job, or a running one whose lease expired. The re-check in the
    /// UPDATE's WHERE makes two processes racing for one job end with one winner on both
    /// SQLite (serialised writers) and PostgreSQL (row lock, then re-evaluation).
    pub async fn claim_job(
        &self,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Option<Claimed>, StoreError> {
        let claimable = "(status = 'queued' OR (status = 'running' AND lease_expires_at < $3))";
        let row = sqlx::query(&format!(
            "UPDATE launch_jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
             claims = claims + 1, updated_at = $3 \
             WHERE id = (SELECT id FROM launch_jobs WHERE {claimable} ORDER BY created_at, id LIMIT 1) \
             AND {claimable} RETURNING id, claims"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let claims: i64 = row.try_get("claims")?;
        let job = self
            .job(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("claimed job {id} vanished")))?;
        Ok(Some(Claimed {
            job,
            reclaimed: claims > 1,
            lease: Lease {
                job_id: id,
                owner: owner.to_string(),
                claim: claims,
            },
        }))
    }

    /// Extends the lease; `None` when another claim holds the job now (or it ended), else
    /// whether a cancel was requested.
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        lease_until: i64,
    ) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE launch_jobs SET lease_expires_at = $4 WHERE {HELD} RETURNING cancel_requested"
        ))
        .bind(&lease.job_id)
        .bind(&lease.owner)
        .bind(lease.claim)
        .bind(lease_until)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<i64, _>("cancel_requested")? != 0),
            None => None,
        })
    }

    /// Gives up `owner`'s leases on running jobs (at shutdown), so any process may claim them at
    /// once. Returns how many.
    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE launch_jobs SET lease_expires_at = 0 WHERE lease_owner = $1 AND status = 'running'",
        )
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Marks a cancel request; returns the job's status at that moment.
    pub async fn request_cancel(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<JobStatus>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(
            "UPDATE launch_jobs SET cancel_requested = 1, updated_at = $2 WHERE id = $1 RETURNING status",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let status: String = r.try_get("status")?;
            JobStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("job {id} status {status:?}")))
        })
        .transpose()
    }

    /// Ends a job that is still queued (no runner has it); `false` if a runner claimed it first.
    pub async fn finish_queued_job(&self, job: &Job) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE launch_jobs SET status = $2, stages = $3, error = $4, updated_at = $5, finished_at = $6 \
             WHERE id = $1 AND status = 'queued'",
        )
        .bind(&job.id)
        .bind(job.status.as_str())
        .bind(json(&job.stages))
        .bind(job.error.as_ref().map(json))
        .bind(job.updated_at)
        .bind(job.finished_at)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends log lines to a running job, if `lease` still holds it (else none of them).
    pub async fn append_logs(
        &self,
        lease: &Lease,
        lines: &[(i64, &str, &str)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for (at, stream, line) in lines {
            let done = sqlx::query(&format!(
                "INSERT INTO launch_job_logs (job_id, at, stream, line) SELECT $1, $4, $5, $6 \
                 WHERE EXISTS (SELECT 1 FROM launch_jobs WHERE {HELD})"
            ))
            .bind(&lease.job_id)
            .bind(&lease.owner)
            .bind(lease.claim)
            .bind(*at)
            .bind(*stream)
            .bind(*line)
            .execute(&mut *tx)
            .await?;
            // Dropping the transaction rolls back the lines before this one.
            fenced(done.rows_affected(), lease)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Log lines after `after_id`, oldest first.
    pub async fn job_logs(
        &self,
        job_id: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        if !plausible_id(job_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, at, stream, line FROM launch_job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(job_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    stream: r.try_get("stream")?,
                    line: r.try_get("line")?,
                })
            })
            .collect()
    }

    /// How many jobs ended with each status, for `/metrics`.
    pub async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM launch_jobs GROUP BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}

/// A fenced write that matched no row: the lease is another claim's now.
fn fenced(rows: u64, lease: &Lease) -> Result<(), StoreError> {
    match rows {
        0 => Err(StoreError::LeaseLost(lease.job_id.clone())),
        _ => Ok(()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("job documents always serialise")
}

fn parse<T: serde::de::DeserializeOwned>(
    id: &str,
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("job {id} {what}: {e}")))
}

fn job_from_row(row: &AnyRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let stage: Option<String> = row.try_get("stage")?;
    let error: Option<String> = row.try_get("error")?;
    let provider_state: String = row.try_get("provider_state")?;
    let provider: String = row.try_get("provider")?;
    Ok(Job {
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} status {status:?}")))?,
        stage: stage
            .map(|s| parse(&id, "stage", &format!("\"{s}\"")))
            .transpose()?,
        spec: parse(&id, "spec", &row.try_get::<String, _>("spec")?)?,
        stages: parse(&id, "stages", &row.try_get::<String, _>("stages")?)?,
        attempts: parse(&id, "attempts", &row.try_get::<String, _>("attempts")?)?,
        error: error.map(|e| parse(&id, "error", &e)).transpose()?,
        provider_state: parse(&id, "provider_state", &provider_state)?,
        name: row.try_get("name")?,
        provider: parse(&id, "provider", &format!("\"{provider}\""))?,
        node_id: row.try_get("node_id")?,
        task_yaml: row.try_get("task_yaml")?,
        cluster_name: row.try_get("cluster_name")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        id,
    })
}

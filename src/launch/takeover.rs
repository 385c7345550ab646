//! Lease renewal and takeover. A job whose process died (its lease lapsed) is taken over by the
//! next process that claims it, this one after a restart or another on the same PostgreSQL
//! database: if the node's agent has registered, the machine is up and the new process waits for
//! it to become ready. If not, the provider is asked whether the first attempt's machine exists
//! or is still being made (SkyPilot's launch goes on in its API server without the process that
//! started it); if so, the new process waits for that machine's agent, which holds the launch's
//! token. Only when nothing is coming up does it remove whatever the first process may have
//! started (teardown works from the stored provider state and is idempotent) and launch again
//! under the same name, so a takeover never leaves two machines.
//!
//! A process cut off from the database longer than its lease may find the job taken over when
//! it comes back. Every write it makes is fenced by its claim (see [`JobLease`]): the first one
//! refused, or a renewal refused, stops its work on the job at once, with nothing torn down (the
//! machine is the new owner's now). Before anything no two claims may do at once (launching,
//! tearing down, a new node token) the lease is renewed, so no other process can claim the job
//! meanwhile.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;

use super::failure::{ErrorCode, LaunchError};
use super::job::Job;
use super::run::{JobLease, JobLog, JobRun};
use super::runner::{cancelled, lease_lost, JobRunner};
use super::stage::Stage;
use crate::fleet::status::NodeStatus;

/// How a claimed job goes on.
pub(super) enum Start {
    /// Launch the machine, then wait for the node.
    Launch,
    /// The machine is up (taken over after its agent registered): wait for the node.
    AwaitReady,
    /// The provider is still making the first attempt's machine (taken over before its agent
    /// registered): wait for its agent, and start over if that attempt ends without a machine.
    Follow,
}

impl JobRunner {
    /// Goes on with a launch whose process stopped (see the module's notes).
    pub(super) async fn take_over(
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
        let provider = self.provider(job.provider);
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
            let run = self.job_run(job, log, cancel, None, String::new());
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
        if let Some(provider) = self.provider(job.provider) {
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
    pub(super) async fn go_on(
        &self,
        run: JobRun,
        start: Start,
    ) -> (JobRun, Result<(), LaunchError>) {
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
        let (Some(provider), Some(node_id)) = (self.provider(job.provider), job.node_id.clone())
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

    /// Ends a launch whose task died of a bug: recorded as failed, and what it created torn
    /// down from its stored state, as after a restart (unless another process holds it now).
    pub(super) async fn end_after_crash(&self, lease: &JobLease) {
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
    pub(super) fn spawn_lease_renewal(
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
}

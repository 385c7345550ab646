//! Starting and ending replicas: queueing a replica's launch in the transaction that starts
//! its action, following the launch to its outcome (ready, or failed towards a back-off or a
//! failed rollout), and draining or terminating a replica on a task of its own.

use super::*;

impl Reconciler {
    /// Drains or terminates a replica (a claimed action), on its own task: a teardown may take
    /// minutes, and the other deployments' passes go on meanwhile.
    pub(super) async fn retire(&self, deployment: &str, p: &Planned) -> Result<(), StoreError> {
        let node_id = p.node_id.as_deref().unwrap_or_default();
        let outcome = if p.kind == ActionKind::DrainReplica {
            let reason = format!("deployment {deployment}: {}", p.reason);
            self.fleet
                .drain(node_id, &reason)
                .await
                .map(|_| ())
                .map_err(LaunchOpError::from)
        } else {
            operations::delete_launched_node(&self.runner, node_id)
                .await
                .map(|_| ())
        };
        let (state, reason) = match &outcome {
            Ok(()) => (ActionState::Completed, None),
            // Gone already, or leaving by itself: done all the same.
            Err(LaunchOpError::Fleet(crate::fleet::FleetError::Terminated(_))) => {
                (ActionState::Completed, None)
            }
            Err(e) => (ActionState::Failed, Some(e.to_string())),
        };
        self.store_write()
            .set_action_state(
                &p.id,
                ActionState::Running,
                state,
                reason.as_deref(),
                now_ms(),
            )
            .await?;
        self.count(p.kind, state.as_str());
        tracing::info!(deployment, action = %p.id, kind = p.kind.as_str(), node_id, outcome = state.as_str(), error = reason.as_deref().unwrap_or(""), "action done");
        Ok(())
    }

    /// Queues the replica's launch in the transaction that starts its action.
    pub(super) async fn launch(
        &self,
        d: &Deployment,
        p: &Planned,
        now: i64,
    ) -> Result<(), ReconcileError> {
        let slot = p.slot.unwrap_or_default();
        let market = p.market.unwrap_or(Market::OnDemand);
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let name = d.spec.node_name(d.revision, slot, suffix);
        // A spot launch falls back to on-demand by itself unless that fallback waits for
        // approval, or the launch is a swap-back (spot or nothing).
        let fallback = !d.spec.fallback_guarded() && !plan::is_swap_back(p.kind, p.drift);
        let request = d.spec.launch_request(&name, market, fallback);
        let prepared = match operations::prepare(&self.runner, &request) {
            Ok(prepared) => prepared,
            Err(e) => {
                // The spec was valid when stored; a provider left this build, say.
                let reason = format!("cannot launch: {e}");
                self.store_write()
                    .set_action_state(
                        &p.id,
                        ActionState::Approved,
                        ActionState::Failed,
                        Some(&reason),
                        now,
                    )
                    .await?;
                self.count(p.kind, "failed");
                return Ok(());
            }
        };
        let mut tx = self.store.pool().begin().await.map_err(StoreError::from)?;
        let membership = Membership {
            deployment: d.name.clone(),
            revision: d.revision,
            slot,
        };
        let (job, node) =
            operations::queue_in(&self.runner, &mut tx, prepared, None, Some(membership)).await?;
        if !self
            .store_write()
            .start_launch_action_in(&mut tx, &p.id, &node.id, &job.id, now)
            .await?
        {
            // Another process started it first: nothing is launched here.
            return Ok(());
        }
        tx.commit().await.map_err(StoreError::from)?;
        let job = operations::queued(&self.runner, job, node);
        self.count(p.kind, "started");
        tracing::info!(deployment = %d.name, action = %p.id, kind = p.kind.as_str(), drift = p.drift.as_str(), slot, market = market.as_str(), job_id = %job.id, "replica launch queued");
        Ok(())
    }

    /// A running launch action whose job ended: completed when its node got ready, else
    /// failed, counted towards the back-off or a failed rollout. `true` when this call changed
    /// the deployment's counters.
    pub(super) async fn follow_launch(
        &self,
        d: &mut Deployment,
        a: &Action,
        now: i64,
    ) -> Result<bool, ReconcileError> {
        let Some(job_id) = &a.launch_job_id else {
            return Ok(false);
        };
        let Some((status, code, finished_at)) =
            self.job_facts(job_id).await?.and_then(|f| f.outcome)
        else {
            return Ok(false);
        };
        if status == JobStatus::Succeeded {
            let took = (finished_at - a.created_at).max(0) as f64 / 1000.0;
            let failed = self
                .failed_before
                .lock()
                .expect("lock")
                .remove(&a.id)
                .map(|before| {
                    self.table
                        .failed_answers(&d.spec.model)
                        .saturating_sub(before)
                });
            let reason = match failed {
                Some(n) => format!(
                    "replica ready {took:.1} s after the action was planned; {n} requests for the model failed meanwhile (as this process saw them)"
                ),
                None => format!("replica ready {took:.1} s after the action was planned"),
            };
            let reason = if plan::is_swap_back(a.kind, a.drift) {
                format!(
                    "{}: {reason}; the on-demand replica it replaces is retired",
                    plan::SWAP_BACK
                )
            } else if a.drift == Drift::ScaleUp {
                // The decision stays readable on the action once it is done.
                match &a.reason {
                    Some(why) => format!("{why}; {reason}"),
                    None => reason,
                }
            } else {
                reason
            };
            if let (Some(n), ActionKind::ReplaceReplica) = (failed, a.kind) {
                self.metrics.add(
                    FAILED_MEANWHILE,
                    FAILED_MEANWHILE_HELP,
                    &[("drift", a.drift.as_str())],
                    n,
                );
            }
            if self
                .store_write()
                .complete_launch_action(a, &reason, now)
                .await?
            {
                self.count(a.kind, "completed");
                if a.kind == ActionKind::ReplaceReplica {
                    self.metrics.observe(
                        REPLACE,
                        REPLACE_HELP,
                        &[("drift", a.drift.as_str())],
                        took,
                    );
                }
                tracing::info!(deployment = %d.name, action = %a.id, job_id, "{reason}");
                return Ok(true);
            }
            return Ok(false);
        }
        // No replica to count failed requests for.
        self.failed_before.lock().expect("lock").remove(&a.id);
        let job = self.store.job(job_id).await?;
        let error = job.as_ref().and_then(|j| j.error.clone());
        let why = error
            .as_ref()
            .map(|e| format!("{}: {}", e.title, e.message))
            .unwrap_or_else(|| format!("the launch ended {}", status.as_str()));
        let capacity = code.is_some_and(|c| c.is_placement_specific());
        let same_revision = a.revision == d.revision;
        let backoff_until = (capacity && same_revision).then(|| {
            let exp = d.failures.clamp(0, 16) as u32;
            let wait = self
                .settings
                .backoff
                .saturating_mul(2u32.saturating_pow(exp))
                .min(MAX_BACKOFF);
            now + wait.as_millis() as i64
        });
        let reason = format!("launch {job_id} failed: {why}");
        // A swap-back that failed leaves the on-demand replica serving, and a launch someone
        // cancelled says nothing about the revision: neither counts towards a back-off or a
        // failed rollout.
        if plan::is_swap_back(a.kind, a.drift) || status == JobStatus::Cancelled {
            let reason = if status == JobStatus::Cancelled {
                format!("launch {job_id} was cancelled")
            } else {
                format!(
                    "{reason}; the on-demand replica keeps serving and spot is tried again later"
                )
            };
            if self
                .store_write()
                .set_action_state(
                    &a.id,
                    ActionState::Running,
                    ActionState::Failed,
                    Some(&reason),
                    now,
                )
                .await?
            {
                self.count(a.kind, "failed");
                tracing::info!(deployment = %d.name, action = %a.id, job_id, "{reason}");
            }
            return Ok(false);
        }
        if !self
            .store_write()
            .fail_launch_action(a, &reason, backoff_until, now)
            .await?
        {
            return Ok(false);
        }
        self.count(a.kind, "failed");
        tracing::warn!(deployment = %d.name, action = %a.id, job_id, "{reason}");
        if !same_revision {
            return Ok(true);
        }
        let failures = d.failures + 1;
        if let Some(until) = backoff_until {
            d.status = DeploymentStatus::Unsatisfiable;
            d.reason = Some(format!(
                "{why} (launches wait until {}; POST /admin/deployments/{}/retry tries again now)",
                crate::clock::rfc3339(until),
                d.name
            ));
            d.unsatisfiable_until = Some(until);
        } else if failures >= ROLLOUT_FAILURE_LIMIT {
            d.status = DeploymentStatus::RolloutFailed;
            d.reason = Some(format!(
                "revision {} failed to launch {failures} times in a row; the rollout stopped and the previous replicas keep serving. Last error: {why}",
                d.revision
            ));
        } else {
            return Ok(true);
        }
        d.updated_at = now;
        self.store_write().save_deployment_state(d).await?;
        Ok(true)
    }

    /// What a launch job asked for and how it ended: one read of the job, none once it ended
    /// (a final outcome never changes).
    pub(super) async fn job_facts(&self, job_id: &str) -> Result<Option<JobFacts>, StoreError> {
        if let Some(known) = self.jobs.lock().expect("lock").get(job_id) {
            if known.outcome.is_some() {
                return Ok(Some(*known));
            }
        }
        let Some(job) = self.store.job(job_id).await? else {
            return Ok(None);
        };
        let facts = JobFacts {
            use_spot: job.spec.use_spot,
            outcome: job.status.is_terminal().then(|| {
                (
                    job.status,
                    job.error.as_ref().map(|e| e.code),
                    job.finished_at.unwrap_or(job.updated_at),
                )
            }),
        };
        self.jobs
            .lock()
            .expect("lock")
            .insert(job_id.to_string(), facts);
        Ok(Some(facts))
    }
}

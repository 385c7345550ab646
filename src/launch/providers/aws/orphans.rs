//! The AWS orphan sweeper: no instance skylaunch started may keep billing unnoticed.
//!
//! Once skylaunch has launched on AWS, every sweep lists the instances tagged
//! `skylaunch:managed=true` in every AWS region. One whose launch job is unknown, finished without success, or whose node was
//! terminated is an orphan: once older than the grace period it is terminated, counted in
//! `skylaunch_orphans_terminated_total` and logged (and recorded on its node when there is one).
//! A live node whose instance is gone (preempted, or deleted in the console) is marked
//! `terminated` with that reason.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceStateName};

use super::provider::AwsProvider;
use crate::clock::now_ms;
use crate::fleet::status::NodeStatus;
use crate::fleet::Fleet;
use crate::launch::job::JobStatus;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct OrphanSweeper {
    pub provider: Arc<AwsProvider>,
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    /// Instances younger than this are left alone (their launch may still be recording them).
    pub grace: Duration,
}

const ORPHANS_HELP: &str = "Cloud instances tagged as skylaunch's that no launch accounts for, terminated by the orphan sweeper.";

#[derive(Debug, Default, PartialEq)]
pub struct SweepReport {
    pub terminated: Vec<String>,
    pub vanished_nodes: Vec<String>,
}

impl OrphanSweeper {
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let jobs: HashMap<String, crate::launch::job::Job> = match self.store.jobs(100_000).await {
            Ok(jobs) => jobs
                .into_iter()
                .filter(|j| j.provider == "aws")
                .map(|j| (j.id.clone(), j))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "orphan sweep: cannot read launch jobs");
                return report;
            }
        };
        if jobs.is_empty() {
            // Nobody launches on AWS here: stay quiet rather than probe accounts we were never given.
            return report;
        }
        // Every AWS region, not only those recorded: a lost record is exactly how orphans happen.
        let regions: BTreeSet<String> = crate::launch::catalog::regions("aws")
            .iter()
            .map(|r| r.to_string())
            .collect();
        let mut live_instances: BTreeSet<String> = BTreeSet::new();
        // Regions whose listing failed: nothing there may be judged vanished on missing data.
        let mut unlisted: BTreeSet<String> = BTreeSet::new();
        for region in &regions {
            let client = self.provider.client(region).await;
            let out = client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("tag:skylaunch:managed")
                        .values("true")
                        .build(),
                )
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(region = %region, error = %super::errors::describe(&e), "orphan sweep: cannot list instances");
                    unlisted.insert(region.clone());
                    continue;
                }
            };
            for instance in out.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let state = instance.state().and_then(|s| s.name()).cloned();
                if matches!(
                    state,
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                ) {
                    continue;
                }
                live_instances.insert(id.to_string());
                let tag = |key: &str| {
                    instance
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(key))
                        .and_then(|t| t.value())
                        .map(str::to_string)
                };
                let job = tag("skylaunch:job-id").and_then(|j| jobs.get(&j));
                let accounted = match job {
                    Some(job) if !job.status.is_terminal() => true,
                    Some(job) if job.status == JobStatus::Succeeded => match &job.node_id {
                        Some(node) => self
                            .fleet
                            .get(node)
                            .await
                            .map(|n| n.status != NodeStatus::Terminated)
                            .unwrap_or(false),
                        None => false,
                    },
                    _ => false,
                };
                if accounted {
                    continue;
                }
                let age_ms = instance
                    .launch_time()
                    .map(|t| now_ms() - t.to_millis().unwrap_or(now_ms()))
                    .unwrap_or(i64::MAX);
                if age_ms < self.grace.as_millis() as i64 {
                    continue;
                }
                match client.terminate_instances().instance_ids(id).send().await {
                    Ok(_) => {
                        self.metrics.inc(
                            "skylaunch_orphans_terminated_total",
                            ORPHANS_HELP,
                            &[("cloud", "aws")],
                        );
                        tracing::warn!(instance_id = id, region = %region, job_id = ?tag("skylaunch:job-id"), "terminated an orphaned instance no launch accounts for");
                        if let Some(node) = tag("skylaunch:node-id") {
                            let _ = self
                                .fleet
                                .terminate(
                                    &node,
                                    &format!(
                                        "orphaned instance {id} terminated by the orphan sweeper"
                                    ),
                                )
                                .await;
                        }
                        report.terminated.push(id.to_string());
                    }
                    Err(e) => {
                        tracing::error!(instance_id = id, error = %super::errors::describe(&e), "orphan sweep: could not terminate")
                    }
                }
            }
        }
        // Nodes whose instance is gone.
        for job in jobs.values().filter(|j| j.status == JobStatus::Succeeded) {
            let (Some(id), Some(node)) = (
                job.provider_state["instance_id"].as_str(),
                job.node_id.as_deref(),
            ) else {
                continue;
            };
            let region = job.provider_state["region"].as_str().unwrap_or_default();
            if live_instances.contains(id) || unlisted.contains(region) {
                continue;
            }
            if let Ok(n) = self.fleet.get(node).await {
                if n.status != NodeStatus::Terminated {
                    let reason = format!(
                        "instance {id} no longer exists (preempted, or deleted outside skylaunch)"
                    );
                    if self.fleet.terminate(node, &reason).await.is_ok() {
                        tracing::warn!(
                            node_id = node,
                            instance_id = id,
                            "node's instance vanished; marked terminated"
                        );
                        report.vanished_nodes.push(node.to_string());
                    }
                }
            }
        }
        report
    }

    /// Sweeps every `every` until `stop` turns true.
    pub async fn run(self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.metrics.declare_counter(
            "skylaunch_orphans_terminated_total",
            ORPHANS_HELP,
            &[("cloud", "aws")],
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => { self.sweep().await; }
                _ = stop.changed() => return,
            }
        }
    }
}

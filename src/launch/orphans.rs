//! The orphan sweeper: no instance skylaunch started may keep billing unnoticed, on any cloud.
//!
//! Each cloud lists the instances tagged `skylaunch:managed=true` (its [`CloudInventory`]). Only
//! those tagged with this installation's id are judged: another installation sharing the account
//! (staging beside production) has launches this database cannot know. One whose launch job is
//! unknown, finished without success, or whose node was terminated is an orphan: once older than
//! the grace period it is terminated, counted in `skylaunch_orphans_terminated_total{cloud}`,
//! logged, and recorded as a cloud event (and on its node when there is one). An orphan tagged
//! before installations were (no installation id) may be any installation's, so it is only
//! reported, once per process, unless the operator lets the sweeper terminate those too. A live
//! node whose instance is gone (preempted, or deleted in the console) is marked `terminated` with
//! that reason. Instances without the managed tag are never listed, so never touched.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_ms;
use crate::fleet::status::NodeStatus;
use crate::fleet::Fleet;
use crate::launch::job::{Job, JobStatus};
use crate::launch::providers::BoxFuture;
use crate::metrics::Metrics;
use crate::store::cloud_events::{CloudEvent, CloudEventKind};
use crate::store::Store;

/// Marks a cloud resource as skylaunch's: the only ones the sweeper ever lists.
pub const MANAGED_TAG: &str = "skylaunch:managed";
/// The installation that made the resource: the only one whose sweeper may judge it.
pub const INSTALLATION_TAG: &str = "skylaunch:installation";
pub const JOB_TAG: &str = "skylaunch:job-id";
pub const NODE_TAG: &str = "skylaunch:node-id";

/// The tags every cloud resource a launch makes carries, as `(key, value)`: what the sweeper
/// reads back to know whose it is.
pub fn ownership_tags(installation_id: &str, job: &Job) -> [(&'static str, String); 4] {
    [
        (MANAGED_TAG, "true".to_string()),
        (INSTALLATION_TAG, installation_id.to_string()),
        (JOB_TAG, job.id.clone()),
        (NODE_TAG, job.node_id.clone().unwrap_or_default()),
    ]
}

/// An instance carrying skylaunch's tags, as its cloud lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedInstance {
    /// The cloud's id for it (EC2 instance id, Azure VM name).
    pub id: String,
    pub region: String,
    /// The `skylaunch:installation` tag; `None` on instances made before it existed.
    pub installation: Option<String>,
    /// The `skylaunch:job-id` and `skylaunch:node-id` tags.
    pub job_id: Option<String>,
    pub node_id: Option<String>,
    /// When the cloud created it (Unix ms), if it says.
    pub created_at_ms: Option<i64>,
}

/// One listing of a cloud's managed instances that are alive (not terminated or deleting).
#[derive(Debug, Default)]
pub struct Inventory {
    pub instances: Vec<ManagedInstance>,
    /// Regions whose listing failed: nothing there may be judged vanished on missing data.
    pub unlisted: BTreeSet<String>,
    /// The listing failed everywhere (credentials, endpoint): judge nothing.
    pub failed: bool,
}

/// What the sweeper needs from one cloud.
pub trait CloudInventory: Send + Sync {
    /// The cloud's name, as in a job's `provider` and in metrics labels.
    fn cloud(&self) -> &'static str;

    /// Whether to sweep when no launch job of this cloud exists. A cloud configured explicitly
    /// is swept anyway; one reached through ambient credentials only once skylaunch used it.
    fn sweep_without_jobs(&self) -> bool {
        false
    }

    fn list(&self) -> BoxFuture<'_, Inventory>;

    fn terminate<'a>(&'a self, instance: &'a ManagedInstance) -> BoxFuture<'a, Result<(), String>>;

    /// The instance that runs a launched node, from its job's stored provider state, as
    /// `(region, id)`.
    fn node_instance(&self, job: &Job) -> Option<(String, String)>;
}

pub struct OrphanSweeper {
    pub clouds: Vec<Arc<dyn CloudInventory>>,
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    /// This installation's id: instances tagged with another are never judged.
    pub installation_id: String,
    /// Terminate orphans without an installation id too (they may be another installation's).
    pub sweep_legacy: bool,
    /// Instances younger than this are left alone (their launch may still be recording them).
    pub grace: Duration,
    /// When each instance without a creation time was first listed.
    pub first_seen: Mutex<HashMap<String, i64>>,
    /// Legacy orphans already reported by this process, so each is reported once, not every sweep.
    pub legacy_reported: Mutex<HashSet<String>>,
}

pub const ORPHANS_TERMINATED: &str = "skylaunch_orphans_terminated_total";
pub const LISTING_FAILURES: &str = "skylaunch_orphan_sweep_failures_total";
const LISTING_FAILURES_HELP: &str = "Listings of a cloud's (or region's) tagged instances that failed, leaving the orphan sweeper blind there for that sweep.";
const ORPHANS_HELP: &str = "Cloud instances tagged as skylaunch's that no launch accounts for, terminated by the orphan sweeper.";

#[derive(Debug, Default, PartialEq)]
pub struct SweepReport {
    pub terminated: Vec<String>,
    pub vanished_nodes: Vec<String>,
    /// Orphans without an installation id, left running.
    pub legacy_kept: Vec<String>,
}

/// Whose an instance is, by its installation tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    ThisInstallation,
    /// Tagged before installations were: this installation's or any other's.
    Unknown,
    OtherInstallation,
}

impl OrphanSweeper {
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        for cloud in &self.clouds {
            if !cloud.sweep_without_jobs() {
                match self.store.any_job_on(cloud.cloud()).await {
                    Ok(true) => {}
                    // Nobody launches on this cloud here: stay quiet rather than probe accounts
                    // we were never given.
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(cloud = cloud.cloud(), error = %e, "orphan sweep: cannot read launch jobs");
                        continue;
                    }
                }
            }
            self.sweep_cloud(cloud.as_ref(), &mut report).await;
        }
        report
    }

    fn owner(&self, instance: &ManagedInstance) -> Owner {
        match instance.installation.as_deref() {
            None | Some("") => Owner::Unknown,
            Some(id) if id == self.installation_id => Owner::ThisInstallation,
            Some(_) => Owner::OtherInstallation,
        }
    }

    /// The launch jobs of this cloud that the listed instances name, and those of the live
    /// nodes (whose instances may have vanished), by id.
    async fn jobs_for(
        &self,
        cloud: &dyn CloudInventory,
        instances: &[&ManagedInstance],
    ) -> Result<HashMap<String, Job>, crate::store::StoreError> {
        let mut ids: BTreeSet<String> = instances.iter().filter_map(|i| i.job_id.clone()).collect();
        ids.extend(
            self.fleet
                .list()
                .await
                .into_iter()
                .filter(|n| n.status != NodeStatus::Terminated)
                .filter_map(|n| n.launch_job_id),
        );
        let ids: Vec<String> = ids.into_iter().collect();
        Ok(self
            .store
            .jobs_by_ids(&ids)
            .await?
            .into_iter()
            .filter(|j| j.provider.as_str() == cloud.cloud())
            .map(|j| (j.id.clone(), j))
            .collect())
    }

    async fn sweep_cloud(&self, cloud: &dyn CloudInventory, report: &mut SweepReport) {
        let inventory = cloud.list().await;
        for _ in 0..(usize::from(inventory.failed) + inventory.unlisted.len()) {
            self.metrics.inc(
                LISTING_FAILURES,
                LISTING_FAILURES_HELP,
                &[("cloud", cloud.cloud())],
            );
        }
        if inventory.failed {
            return;
        }
        // Every listed instance is alive, whoever's it is; only this installation's (and, for a
        // report, the untold ones) are judged.
        let live: BTreeSet<&str> = inventory.instances.iter().map(|i| i.id.as_str()).collect();
        let judged: Vec<&ManagedInstance> = inventory
            .instances
            .iter()
            .filter(|i| self.owner(i) != Owner::OtherInstallation)
            .collect();
        let jobs = match self.jobs_for(cloud, &judged).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(cloud = cloud.cloud(), error = %e, "orphan sweep: cannot read launch jobs");
                return;
            }
        };
        for instance in judged {
            if self.accounted(cloud, instance, &jobs).await {
                continue;
            }
            // Without a creation time from the cloud, the grace period runs from first sight.
            let created = instance
                .created_at_ms
                .unwrap_or_else(|| self.first_seen(cloud.cloud(), &instance.id));
            let age_ms = now_ms() - created;
            if age_ms < self.grace.as_millis() as i64 {
                continue;
            }
            if self.owner(instance) == Owner::Unknown && !self.sweep_legacy {
                self.report_legacy(cloud, instance).await;
                report.legacy_kept.push(instance.id.clone());
                continue;
            }
            match cloud.terminate(instance).await {
                Ok(()) => {
                    self.metrics.inc(
                        ORPHANS_TERMINATED,
                        ORPHANS_HELP,
                        &[("cloud", cloud.cloud())],
                    );
                    tracing::warn!(cloud = cloud.cloud(), instance_id = %instance.id, region = %instance.region, job_id = ?instance.job_id, "terminated an orphaned instance no launch accounts for");
                    let message = format!(
                        "terminated {} in {}: tagged as skylaunch's, but no running launch or live node accounts for it",
                        instance.id, instance.region
                    );
                    self.record(cloud, CloudEventKind::OrphanTerminated, instance, &message)
                        .await;
                    if let Some(node) = &instance.node_id {
                        let _ = self
                            .fleet
                            .terminate(
                                node,
                                &format!(
                                    "orphaned instance {} terminated by the orphan sweeper",
                                    instance.id
                                ),
                            )
                            .await;
                    }
                    report.terminated.push(instance.id.clone());
                }
                Err(e) => {
                    tracing::error!(cloud = cloud.cloud(), instance_id = %instance.id, error = %e, "orphan sweep: could not terminate")
                }
            }
        }
        // Nodes whose instance is gone.
        for job in jobs.values().filter(|j| j.status == JobStatus::Succeeded) {
            let (Some((region, id)), Some(node)) =
                (cloud.node_instance(job), job.node_id.as_deref())
            else {
                continue;
            };
            if live.contains(id.as_str()) || inventory.unlisted.contains(&region) {
                continue;
            }
            let Ok(n) = self.fleet.get(node).await else {
                continue;
            };
            if n.status == NodeStatus::Terminated {
                continue;
            }
            let reason =
                format!("instance {id} no longer exists (preempted, or deleted outside skylaunch)");
            if self.fleet.terminate(node, &reason).await.is_ok() {
                tracing::warn!(cloud = cloud.cloud(), node_id = node, instance_id = %id, "node's instance vanished; marked terminated");
                let instance = ManagedInstance {
                    id,
                    region,
                    installation: Some(self.installation_id.clone()),
                    job_id: Some(job.id.clone()),
                    node_id: Some(node.to_string()),
                    created_at_ms: None,
                };
                self.record(cloud, CloudEventKind::InstanceVanished, &instance, &reason)
                    .await;
                report.vanished_nodes.push(node.to_string());
            }
        }
    }

    /// Whether a running launch or a live node owns the instance. A launch that succeeded owns
    /// only the instance its node runs on, not what its failed placements left behind.
    async fn accounted(
        &self,
        cloud: &dyn CloudInventory,
        instance: &ManagedInstance,
        jobs: &HashMap<String, Job>,
    ) -> bool {
        let Some(job) = instance.job_id.as_ref().and_then(|j| jobs.get(j)) else {
            return false;
        };
        if !job.status.is_terminal() {
            return true;
        }
        if job.status != JobStatus::Succeeded
            || cloud.node_instance(job).map(|(_, id)| id) != Some(instance.id.clone())
        {
            return false;
        }
        match &job.node_id {
            Some(node) => self
                .fleet
                .get(node)
                .await
                .map(|n| n.status != NodeStatus::Terminated)
                .unwrap_or(false),
            None => false,
        }
    }

    /// An orphan that may be another installation's: logged and recorded once, left running.
    async fn report_legacy(&self, cloud: &dyn CloudInventory, instance: &ManagedInstance) {
        let first = self
            .legacy_reported
            .lock()
            .expect("legacy-reported lock")
            .insert(format!("{}/{}", cloud.cloud(), instance.id));
        if !first {
            return;
        }
        tracing::warn!(cloud = cloud.cloud(), instance_id = %instance.id, region = %instance.region, job_id = ?instance.job_id, "kept an unaccounted instance without an installation id: it may be another installation's");
        let message = format!(
            "kept {} in {}: tagged as skylaunch's but with no installation id (made before \
             installations were tagged, by this or another installation), and no launch here \
             accounts for it; terminate it yourself if it is no one's, or set \
             SKYLAUNCH_ORPHAN_SWEEP_LEGACY=true to let the sweeper do it",
            instance.id, instance.region
        );
        self.record(cloud, CloudEventKind::LegacyOrphanKept, instance, &message)
            .await;
    }

    fn first_seen(&self, cloud: &str, id: &str) -> i64 {
        *self
            .first_seen
            .lock()
            .expect("first-seen lock")
            .entry(format!("{cloud}/{id}"))
            .or_insert_with(now_ms)
    }

    async fn record(
        &self,
        cloud: &dyn CloudInventory,
        kind: CloudEventKind,
        instance: &ManagedInstance,
        message: &str,
    ) {
        let event = CloudEvent {
            id: 0,
            at: now_ms(),
            kind,
            cloud: cloud.cloud().to_string(),
            region: Some(instance.region.clone()),
            instance_id: instance.id.clone(),
            job_id: instance.job_id.clone(),
            node_id: instance.node_id.clone(),
            message: message.to_string(),
        };
        if let Err(e) = self.store.insert_cloud_event(&event).await {
            tracing::error!(error = %e, instance_id = %instance.id, "could not record a cloud event");
        }
    }

    /// Sweeps every `every` until `stop` turns true.
    pub async fn run(self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        for cloud in &self.clouds {
            let labels = [("cloud", cloud.cloud())];
            self.metrics
                .declare_counter(ORPHANS_TERMINATED, ORPHANS_HELP, &labels);
            self.metrics
                .declare_counter(LISTING_FAILURES, LISTING_FAILURES_HELP, &labels);
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => { self.sweep().await; }
                _ = stop.changed() => return,
            }
        }
    }
}

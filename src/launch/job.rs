//! A launch job as the API shows it: status, the eight stages with their state and times, the
//! placements tried, and the error. The rules for moving through stages live here.

use serde::{Deserialize, Serialize};

use super::failure::LaunchError;
use super::spec::{LaunchSpec, Provider};
use super::stage::{Attempt, Stage};
use crate::clock::{serde_opt_rfc3339, serde_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Active,
    Done,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: Stage,
    pub state: StageState,
    #[serde(
        serialize_with = "serde_opt_rfc3339::serialize",
        deserialize_with = "crate::clock::de_opt_rfc3339",
        default
    )]
    pub started_at: Option<i64>,
    #[serde(
        serialize_with = "serde_opt_rfc3339::serialize",
        deserialize_with = "crate::clock::de_opt_rfc3339",
        default
    )]
    pub finished_at: Option<i64>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub status: JobStatus,
    /// The current (or last) stage.
    pub stage: Option<Stage>,
    pub stages: Vec<StageRecord>,
    pub attempts: Vec<Attempt>,
    pub error: Option<LaunchError>,
    pub node_id: Option<String>,
    /// The generated SkyPilot task, with the node token replaced by `<secret>`.
    pub task_yaml: Option<String>,
    pub cluster_name: String,
    pub provider: Provider,
    /// Shown with its `envs` values masked; the store keeps them (see `launch::store`).
    #[serde(serialize_with = "serialize_masked")]
    pub spec: LaunchSpec,
    pub cancel_requested: bool,
    #[serde(with = "serde_rfc3339")]
    pub created_at: i64,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: i64,
    #[serde(with = "serde_opt_rfc3339")]
    pub finished_at: Option<i64>,
    #[serde(skip)]
    pub provider_state: serde_json::Value,
}

fn serialize_masked<S: serde::Serializer>(spec: &LaunchSpec, to: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&spec.masked(), to)
}

pub fn initial_stages() -> Vec<StageRecord> {
    Stage::ALL
        .into_iter()
        .map(|name| StageRecord {
            name,
            state: StageState::Pending,
            started_at: None,
            finished_at: None,
            detail: None,
        })
        .collect()
}

impl Job {
    /// A new job, queued, for `spec`'s launch of node `node_id`.
    pub fn queued(id: String, spec: LaunchSpec, node_id: Option<String>, now: i64) -> Job {
        Job {
            cluster_name: super::providers::cluster_name(&id),
            id,
            name: spec.name.clone(),
            status: JobStatus::Queued,
            stage: None,
            stages: initial_stages(),
            attempts: Vec::new(),
            error: None,
            node_id,
            task_yaml: None,
            provider: spec.provider,
            spec,
            cancel_requested: false,
            created_at: now,
            updated_at: now,
            finished_at: None,
            provider_state: serde_json::json!({}),
        }
    }

    fn record(&mut self, stage: Stage) -> &mut StageRecord {
        let i = Stage::ALL
            .iter()
            .position(|s| *s == stage)
            .expect("every stage has a record");
        &mut self.stages[i]
    }

    /// Makes `stage` the active one: earlier stages are done (a later stage implies they
    /// finished), the detail is updated when given. Returns whether anything changed.
    pub fn activate(&mut self, stage: Stage, detail: Option<String>, now: i64) -> bool {
        let mut changed = false;
        for record in self.stages.iter_mut() {
            if record.name < stage
                && matches!(record.state, StageState::Pending | StageState::Active)
            {
                record.started_at.get_or_insert(now);
                record.finished_at = Some(now);
                record.state = StageState::Done;
                changed = true;
            }
        }
        let record = self.record(stage);
        if record.state != StageState::Active {
            record.state = StageState::Active;
            record.started_at.get_or_insert(now);
            changed = true;
        }
        if detail.is_some() && record.detail != detail {
            record.detail = detail;
            changed = true;
        }
        self.stage = Some(stage);
        changed
    }

    /// Goes back to `stage`: it and every later stage are pending again, as for a launch that
    /// another process takes over and starts again.
    pub fn rewind_to(&mut self, stage: Stage) {
        for record in self.stages.iter_mut().filter(|r| r.name >= stage) {
            record.state = StageState::Pending;
            record.started_at = None;
            record.finished_at = None;
            record.detail = None;
        }
        self.stage = Some(stage);
    }

    /// Sets the detail line of a stage without changing its state.
    pub fn detail(&mut self, stage: Stage, detail: String) {
        self.record(stage).detail = Some(detail);
    }

    /// Every stage done: the node is ready.
    pub fn succeed(&mut self, now: i64) {
        self.activate(Stage::Ready, None, now);
        let ready = self.record(Stage::Ready);
        ready.state = StageState::Done;
        ready.finished_at = Some(now);
        self.status = JobStatus::Succeeded;
        self.finished_at = Some(now);
    }

    /// Ends the job: the active stage failed (or was cancelled), later stages are skipped.
    pub fn finish_unsuccessfully(&mut self, status: JobStatus, error: LaunchError, now: i64) {
        let mut after_failure = false;
        for record in self.stages.iter_mut() {
            match record.state {
                StageState::Active => {
                    record.state = StageState::Failed;
                    record.finished_at = Some(now);
                    after_failure = true;
                }
                StageState::Pending => {
                    record.state = StageState::Skipped;
                    after_failure = true;
                }
                _ => {}
            }
        }
        if !after_failure {
            if let Some(first) = self.stages.first_mut() {
                first.state = StageState::Failed;
            }
        }
        self.status = status;
        self.error = Some(error);
        self.finished_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::failure::ErrorCode;

    fn job() -> Job {
        let spec = serde_json::from_value::<crate::launch::spec::LaunchRequest>(
            serde_json::json!({"model": "m", "provider": "local"}),
        )
        .unwrap()
        .validate("n")
        .unwrap();
        let mut job = Job::queued("j".into(), spec, None, 0);
        job.status = JobStatus::Running;
        job
    }

    fn states(j: &Job) -> Vec<StageState> {
        j.stages.iter().map(|s| s.state).collect()
    }

    #[test]
    fn activating_a_later_stage_completes_the_earlier_ones() {
        let mut j = job();
        j.activate(Stage::Validate, None, 1);
        j.activate(
            Stage::Provision,
            Some("Launching on AWS us-east-1".into()),
            2,
        );
        use StageState::*;
        assert_eq!(
            states(&j),
            vec![Done, Done, Active, Pending, Pending, Pending, Pending, Pending]
        );
        assert_eq!(
            j.stages[2].detail.as_deref(),
            Some("Launching on AWS us-east-1")
        );
        assert_eq!(j.stage, Some(Stage::Provision));
    }

    #[test]
    fn success_marks_every_stage_done() {
        let mut j = job();
        j.activate(Stage::Register, None, 5);
        j.succeed(9);
        assert!(states(&j).iter().all(|s| *s == StageState::Done));
        assert_eq!(j.status, JobStatus::Succeeded);
        assert_eq!(j.finished_at, Some(9));
    }

    #[test]
    fn failure_fails_the_active_stage_and_skips_the_rest() {
        let mut j = job();
        j.activate(Stage::Provision, None, 1);
        j.finish_unsuccessfully(
            JobStatus::Failed,
            LaunchError::new(ErrorCode::CapacityUnavailable, "t", "m"),
            2,
        );
        use StageState::*;
        assert_eq!(
            states(&j),
            vec![Done, Done, Failed, Skipped, Skipped, Skipped, Skipped, Skipped]
        );
        assert_eq!(
            j.error.as_ref().unwrap().code,
            ErrorCode::CapacityUnavailable
        );
    }
}

//! Live job events for the SSE stream: stage changes, attempts, log lines and the final job.
//! Everything sent here was written to the database first.

use serde_json::Value;
use tokio::sync::broadcast;

/// What a job event carries; its name is the SSE event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEventKind {
    /// A full snapshot of the job; the last event of a job is one.
    Job,
    /// A stage changed (with every stage).
    Stage,
    /// A placement attempt started or ended (with every attempt).
    Attempt,
    /// A line of provider output or of skylaunch's narration.
    Log,
}

impl JobEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::Job => "job",
            JobEventKind::Stage => "stage",
            JobEventKind::Attempt => "attempt",
            JobEventKind::Log => "log",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobEvent {
    pub job_id: String,
    pub kind: JobEventKind,
    pub data: Value,
}

#[derive(Clone)]
pub struct JobEvents {
    tx: broadcast::Sender<JobEvent>,
}

impl Default for JobEvents {
    fn default() -> Self {
        JobEvents {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl JobEvents {
    pub fn send(&self, job_id: &str, kind: JobEventKind, data: Value) {
        // No subscriber is fine: nobody is watching this job right now.
        let _ = self.tx.send(JobEvent {
            job_id: job_id.to_string(),
            kind,
            data,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.tx.subscribe()
    }
}

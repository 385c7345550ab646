//! Live job events for the SSE stream: stage changes, attempts, log lines and the final job.
//! Everything sent here was written to the database first.

use serde_json::Value;
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub struct JobEvent {
    pub job_id: String,
    /// `job` (a full snapshot), `stage`, `attempt` or `log`.
    pub kind: &'static str,
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
    pub fn send(&self, job_id: &str, kind: &'static str, data: Value) {
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

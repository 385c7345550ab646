//! The fleet's Prometheus counters: status transitions by new status, and heartbeats by result.
//! Every label value is declared at start, so each series exists from zero.

use std::sync::Arc;

use super::status::NodeStatus;
use crate::metrics::Metrics;

const TRANSITIONS: &str = "skylaunch_node_transitions_total";
const TRANSITIONS_HELP: &str = "Node status transitions, by new status.";
const HEARTBEATS: &str = "skylaunch_heartbeats_total";
const HEARTBEATS_HELP: &str = "Heartbeats received, by result.";

pub(super) struct FleetCounters {
    metrics: Arc<Metrics>,
}

impl FleetCounters {
    pub(super) fn new(metrics: Arc<Metrics>) -> FleetCounters {
        for to in NodeStatus::ALL {
            metrics.declare_counter(TRANSITIONS, TRANSITIONS_HELP, &[("to", to.as_str())]);
        }
        for result in ["accepted", "rejected"] {
            metrics.declare_counter(HEARTBEATS, HEARTBEATS_HELP, &[("result", result)]);
        }
        FleetCounters { metrics }
    }

    /// A node moved to status `to`.
    pub(super) fn transition(&self, to: NodeStatus) {
        self.metrics
            .inc(TRANSITIONS, TRANSITIONS_HELP, &[("to", to.as_str())]);
    }

    /// A heartbeat was answered: accepted, or rejected (with an error).
    pub(super) fn heartbeat(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.metrics
            .inc(HEARTBEATS, HEARTBEATS_HELP, &[("result", result)]);
    }
}

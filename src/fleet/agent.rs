//! The agent's side of the fleet: checking a node token, a registration (what the agent found
//! out about its VM, and the endpoint it serves on), and heartbeats (health that may change the
//! node's status). Each is answered with an [`AgentAck`]: the node's status and what the agent
//! should do.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::endpoint::{self, AgentOrigin};
use super::events::NodeEventKind;
use super::live::{retrying, LiveNode};
use super::node::{HeartbeatReport, Node, Registration};
use super::status::{self, HeartbeatSignal, NodeStatus};
use super::store::StatusChange;
use super::telemetry::record_telemetry;
use super::{token, AgentAck, Fleet, FleetError};
use crate::clock::now_ms;
use skylaunch_protocol::Desired;

impl Fleet {
    /// Whether `token` is the node's; the node must exist (else [`FleetError::NotFound`]).
    pub async fn token_matches(&self, id: &str, token: &str) -> Result<bool, FleetError> {
        let entry = self.entry(id).await?;
        let live = entry.lock().await;
        Ok(token::matches_hash(token, &live.node.token_hash))
    }

    /// Checks a node token; the node must exist and the token must be that node's.
    async fn authorised(&self, id: &str, token: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        let entry = self.entry(id).await?;
        let hash = {
            let live = entry.lock().await;
            live.node.token_hash.clone()
        };
        if !token::matches_hash(token, &hash) {
            return Err(FleetError::Unauthorized(id.to_string()));
        }
        Ok(entry)
    }

    /// An agent's registration: fills in what it found out about its VM and moves a launching
    /// or offline node to `registered`. A registration for another model, or with an endpoint
    /// the agent may not use, is refused and recorded as a node event.
    pub async fn register(
        &self,
        id: &str,
        token: &str,
        reg: Registration,
        origin: &AgentOrigin,
    ) -> Result<AgentAck, FleetError> {
        let entry = self.authorised(id, token).await?;
        reg.validate()?;
        let refused = {
            let live = entry.lock().await;
            registration_refused(&live.node, &reg, origin)
        };
        if let Some((code, message)) = refused {
            tracing::warn!(node_id = %id, source = %origin.peer, code, reason = %message, "agent registration refused");
            self.record_event(id, NodeEventKind::RegistrationRefused, &message)
                .await?;
            return Err(FleetError::Refused { code, message });
        }
        retrying!(entry, |live| async {
            self.apply_registration(live, reg.clone()).await?;
            Ok(self.ack(&live.node))
        })
    }

    async fn apply_registration(
        &self,
        live: &mut LiveNode,
        reg: Registration,
    ) -> Result<(), FleetError> {
        let id = live.node.id.clone();
        if live.node.status == NodeStatus::Terminated {
            return Err(FleetError::Terminated(id));
        }
        let now = now_ms();
        let mut node = live.node.clone();
        node.provider = reg.provider;
        node.region = Some(reg.region);
        node.zone = reg.zone;
        // The model is the admin's or the launch's (checked in `register`); so is a pinned
        // endpoint, whatever the agent reports.
        if !node.endpoint_pinned {
            node.endpoint_url = Some(reg.endpoint_url);
        }
        node.gpu_type = Some(reg.gpu_type);
        node.gpu_count = reg.gpu_count.map(i64::from);
        node.instance_type = Some(reg.instance_type);
        node.spot_instance = reg.spot_instance;
        if reg.agent_version.is_some() {
            node.agent_version = reg.agent_version;
        }
        if let Some(labels) = reg.labels {
            node.labels.extend(labels);
        }
        node.registered_at = Some(now);
        node.updated_at = now;
        let transition = status::after_registration(node.status);
        let from = node.status;
        if let Some(t) = &transition {
            node.status = t.to;
            node.status_reason = Some(t.reason.clone());
        }
        let change = transition.as_ref().map(|t| StatusChange {
            kind: NodeEventKind::Registered,
            from: Some(from),
            to: t.to,
            reason: &t.reason,
        });
        self.save(live, node, change).await?;
        if let Some(t) = &transition {
            self.counters.transition(t.to);
        }
        tracing::info!(node_id = %id, status = %live.node.status, provider = %live.node.provider, "agent registered");
        live.last_seen_ms = now;
        Ok(())
    }

    /// An agent's heartbeat: its measurements, and the status change they call for, if any.
    pub async fn heartbeat(
        &self,
        id: &str,
        token: &str,
        report: HeartbeatReport,
    ) -> Result<AgentAck, FleetError> {
        let result = self.apply_heartbeat(id, token, report).await;
        self.counters.heartbeat(result.is_ok());
        result
    }

    async fn apply_heartbeat(
        &self,
        id: &str,
        token: &str,
        report: HeartbeatReport,
    ) -> Result<AgentAck, FleetError> {
        let entry = self.authorised(id, token).await?;
        report.validate()?;
        let report = &mut Some(report);
        retrying!(entry, |live| async {
            self.apply_report(live, report).await?;
            Ok(self.ack(&live.node))
        })
    }

    /// Applies a heartbeat. The report is taken only once it is applied: a status change that
    /// lost a race works on a copy, so the retry still has the report.
    async fn apply_report(
        &self,
        live: &mut LiveNode,
        report: &mut Option<HeartbeatReport>,
    ) -> Result<(), FleetError> {
        let pending = report
            .as_ref()
            .expect("a report is taken only when applied, which ends the retries");
        let id = live.node.id.clone();
        match live.node.status {
            NodeStatus::Terminated => return Err(FleetError::Terminated(id)),
            NodeStatus::Launching => return Err(FleetError::NotRegistered(id)),
            _ => {}
        }
        let now = now_ms();
        let signal = HeartbeatSignal {
            health_score: pending.health_score,
            model_ready: pending.model_ready(),
            spot_notice: pending.spot_interruption.as_ref().map(|n| n.describe()),
            going_away: pending.going_away,
        };
        let transition = status::after_heartbeat(live.node.status, &signal, &self.policy);
        let kind = if signal.spot_notice.is_some() {
            NodeEventKind::SpotInterruption
        } else {
            NodeEventKind::Heartbeat
        };
        if let Some(t) = &transition {
            // A status change is committed (with the telemetry that caused it) before the ack.
            let mut node = live.node.clone();
            record_telemetry(&mut node, pending.clone(), now);
            self.apply_transition(live, node, t, kind, now).await?;
        } else if let Some(report) = report.take() {
            // The common case, on every heartbeat: the report moves, no copy.
            record_telemetry(&mut live.node, report, now);
            self.pending_telemetry.mark(id);
            self.changed(&live.node);
        }
        live.last_seen_ms = now;
        Ok(())
    }

    fn ack(&self, node: &Node) -> AgentAck {
        AgentAck {
            node_id: node.id.clone(),
            status: node.status,
            desired: if matches!(
                node.status,
                NodeStatus::Draining | NodeStatus::TeardownPending
            ) {
                Desired::Drain
            } else {
                Desired::Run
            },
            heartbeat_interval_s: self.policy.heartbeat_interval.as_secs_f64(),
        }
    }
}

/// Why a registration must be refused, if it must: a model other than the node's, or an
/// endpoint the agent may not use (see [`endpoint`]).
fn registration_refused(
    node: &Node,
    reg: &Registration,
    origin: &AgentOrigin,
) -> Option<(&'static str, String)> {
    if reg.model_name != node.model_name {
        return Some((
            "model_mismatch",
            format!(
                "node {} serves {:?}, fixed when it was made; the agent reported {:?}. Point the agent at a model server for {:?}, or create a node for the other model",
                node.id, node.model_name, reg.model_name, node.model_name
            ),
        ));
    }
    if node.endpoint_pinned {
        return None;
    }
    endpoint::check(&reg.endpoint_url, origin, node.on_this_host)
        .err()
        .map(|refused| ("endpoint_refused", refused.0))
}

//! The reconciler's autoscaling step: measure a deployment's metric from what this process
//! sees (its load balancer's in-flight requests, request counts and times to first byte; the
//! agents' vLLM queue reports), ask [`autoscale::decide`], and write a decision as the new
//! replica count with its reason. The plan then names the launches and drains it causes
//! `scale_up` / `scale_down`.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::deploy::autoscale::{self, ScaleClock, Signal};
use crate::deploy::model::ScaleDecision;
use crate::deploy::spec::{AutoscalePolicy, ScaleMetric};
use crate::routing::EndpointLoad;

/// A ready replica reporting at least this KV-cache use is not idle: no scale-down.
const KV_CACHE_FULL: f64 = 0.9;

/// What one pass saw of a deployment's ready replicas.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: i64,
    /// In flight, per ready replica.
    in_flight: f64,
    /// vLLM's waiting and running requests per ready replica (from the agents' latest
    /// reports); `None` when a replica does not report them.
    waiting: Option<f64>,
    running: Option<f64>,
    /// Since the previous pass, over the ready replicas: requests sent, answers whose first
    /// byte came, and the time those took (µs).
    started: u64,
    answered: u64,
    ttfb_us: u64,
}

/// What the autoscaler keeps of one deployment between passes.
#[derive(Debug, Default)]
pub struct ScaleMemory {
    clock: ScaleClock,
    /// The passes of the current window, oldest first.
    samples: VecDeque<Sample>,
    /// The ready replicas the window is about; another set starts it over.
    ready: Vec<String>,
    /// Each ready replica's counters at the previous pass.
    counters: HashMap<String, EndpointLoad>,
    /// The latest measurement, for the deployment's view.
    pub last: Option<Signal>,
    /// When a request was last in flight, sent or waiting (Unix ms): the idle clock of scale
    /// to zero.
    last_active: Option<i64>,
}

impl Reconciler {
    /// Measures and decides for a deployment with an autoscale policy; returns it as it is
    /// afterwards (with its new replica count when a decision was written), and whether
    /// replicas changed slots (then this pass's view of them is out of date: plan on the next).
    pub(super) async fn autoscale(
        &self,
        mut d: Deployment,
        nodes: &[&Node],
        replicas: &[ReplicaState],
        now: i64,
    ) -> Result<(Deployment, bool), StoreError> {
        let Some(policy) = d.spec.autoscale.clone() else {
            return Ok((d, false));
        };
        let ready: Vec<&Node> = nodes
            .iter()
            .copied()
            .filter(|n| {
                replicas
                    .iter()
                    .any(|r| r.node_id == n.id && r.status == NodeStatus::Ready && !r.dead)
            })
            .collect();
        let decision = {
            let mut all = self.scaling.lock().expect("lock");
            let memory = all.entry(d.uid.clone()).or_default();
            let loads: Vec<(&str, EndpointLoad)> = ready
                .iter()
                .filter_map(|n| self.table.load(&n.id).map(|l| (n.id.as_str(), l)))
                .collect();
            let sample = memory.observe(&ready, &loads, now);
            let signal = Signal {
                stale: self.stale(nodes, now),
                kv_cache_full: ready.iter().any(|n| {
                    n.last_heartbeat
                        .as_ref()
                        .and_then(|h| h.queue.as_ref())
                        .and_then(|q| q.kv_cache_usage)
                        .is_some_and(|kv| kv >= KV_CACHE_FULL)
                }),
                ..memory.signal(&policy, now)
            };
            memory.last = Some(signal);
            let held = self.table.cold.held(&d.spec.model);
            let busy = held > 0 || sample.started > 0 || sample.in_flight > 0.0;
            if busy || memory.last_active.is_none() {
                memory.last_active = Some(now);
            }
            let idle_ms = now - memory.last_active.unwrap_or(now);
            autoscale::decide_zero(&policy, d.spec.replicas, held, idle_ms).or_else(|| {
                autoscale::decide(
                    &policy,
                    d.spec.replicas,
                    ready.len(),
                    signal,
                    &mut memory.clock,
                    now,
                )
            })
        };
        let Some(decision) = decision else {
            return Ok((d, false));
        };
        let from = d.spec.replicas;
        let moved = decision.to < from
            && decision.to > 0
            && self
                .retire_the_right_ones(&d, nodes, replicas, from, decision.to)
                .await;
        let mut next = d.clone();
        next.spec.replicas = decision.to;
        next.last_scale = Some(ScaleDecision {
            from,
            to: decision.to,
            reason: decision.reason.clone(),
            at: now,
        });
        next.updated_at = now;
        if self.store_write().apply_scale(&next).await? {
            tracing::info!(deployment = %d.name, from, to = decision.to, reason = %decision.reason, "autoscaled");
            self.metrics.add(
                SCALED,
                SCALED_HELP,
                &[("direction", if decision.to > from { "up" } else { "down" })],
                1,
            );
            d = next;
        }
        Ok((d, moved))
    }

    /// Before a scale-down from `from` to `to` replicas: moves the replicas it should retire
    /// (unhealthy, then the most expensive, then the least loaded) into the slots it removes,
    /// which the plan retires. A swap that fails (a node changed meanwhile) only means the plain
    /// slot order is used for that replica.
    async fn retire_the_right_ones(
        &self,
        d: &Deployment,
        nodes: &[&Node],
        replicas: &[ReplicaState],
        from: u32,
        to: u32,
    ) -> bool {
        let candidates: Vec<autoscale::Candidate> = replicas
            .iter()
            .filter(|r| {
                r.slot < i64::from(from)
                    && !matches!(
                        r.status,
                        NodeStatus::Draining | NodeStatus::TeardownPending | NodeStatus::Terminated
                    )
            })
            .filter(|r| nodes.iter().any(|n| n.id == r.node_id))
            .map(|r| autoscale::Candidate {
                node_id: r.node_id.clone(),
                slot: r.slot,
                unhealthy: r.dead
                    || matches!(r.status, NodeStatus::Unhealthy | NodeStatus::Offline),
                hourly_usd: d.spec.replica_hourly_usd(r.market),
                in_flight: self.table.in_flight(&r.node_id),
            })
            .collect();
        let victims = autoscale::retire_first(candidates.clone(), (from - to) as usize);
        let mut moved = false;
        for (victim, keeper) in autoscale::swaps(&victims, &candidates, i64::from(to)) {
            match self.fleet.swap_slots(&victim, &keeper).await {
                Ok(()) => {
                    moved = true;
                    tracing::info!(deployment = %d.name, victim = %victim, keeper = %keeper, "scale-down: the replica to retire traded slots with one that stays")
                }
                Err(e) => {
                    tracing::info!(deployment = %d.name, victim = %victim, error = %e, "scale-down: could not move the replica to retire; the slot order decides")
                }
            }
        }
        moved
    }

    /// Whether any registered replica that is not leaving has gone quiet (unhealthy or
    /// offline for it, or still counted ready): then the signal may be wrong low.
    fn stale(&self, nodes: &[&Node], now: i64) -> bool {
        let stale_after = self.settings.stale_report.as_millis() as i64;
        nodes
            .iter()
            .filter(|n| {
                n.registered_at.is_some()
                    && !matches!(
                        n.status,
                        NodeStatus::Draining | NodeStatus::TeardownPending | NodeStatus::Terminated
                    )
            })
            .any(|n| n.last_heartbeat_at.is_none_or(|at| now - at > stale_after))
    }

    /// `/v1` requests this process holds for `model` while a replica starts.
    pub fn waiting_requests(&self, model: &str) -> usize {
        self.table.cold.held(model)
    }

    /// What this process measured last for a deployment's autoscale metric.
    pub fn scale_signal(&self, uid: &str) -> Option<Signal> {
        self.scaling
            .lock()
            .expect("lock")
            .get(uid)
            .and_then(|m| m.last)
    }
}

impl ScaleMemory {
    /// Records what this pass sees of the ready replicas (their load balancer counters and
    /// their agents' queue reports), and returns it. Another set of ready replicas than the
    /// window's starts the window over: its values were about other capacity.
    fn observe(&mut self, ready: &[&Node], loads: &[(&str, EndpointLoad)], now: i64) -> Sample {
        let mut ids: Vec<String> = ready.iter().map(|n| n.id.clone()).collect();
        ids.sort();
        if ids != self.ready {
            self.samples.clear();
            self.ready = ids;
        }
        let count = ready.len().max(1) as f64;
        let mut sample = Sample {
            at: now,
            in_flight: 0.0,
            waiting: Some(0.0),
            running: Some(0.0),
            started: 0,
            answered: 0,
            ttfb_us: 0,
        };
        let mut counters = HashMap::with_capacity(loads.len());
        for &(id, load) in loads {
            sample.in_flight += load.in_flight as f64 / count;
            // A replica seen for the first time counts from now; one whose counters fell
            // (it registered again) counts from zero.
            let before = self.counters.get(id).copied().unwrap_or(load);
            let since = |now: u64, then: u64| if now >= then { now - then } else { now };
            sample.started += since(load.started, before.started);
            sample.answered += since(load.answered, before.answered);
            sample.ttfb_us += since(load.ttfb_total_us, before.ttfb_total_us);
            counters.insert(id.to_string(), load);
        }
        self.counters = counters;
        for n in ready {
            let queue = n.last_heartbeat.as_ref().and_then(|h| h.queue.as_ref());
            let add = |total: Option<f64>, v: Option<f64>| Some(total? + v? / count);
            sample.waiting = add(sample.waiting, queue.and_then(|q| q.waiting));
            sample.running = add(sample.running, queue.and_then(|q| q.running));
        }
        if ready.is_empty() {
            self.samples.clear();
        } else {
            self.samples.push_back(sample);
        }
        sample
    }

    /// The policy's metric over its window: no value until the window has covered a quarter
    /// of its length.
    fn signal(&mut self, policy: &AutoscalePolicy, now: i64) -> Signal {
        let window = (policy.window_s * 1000) as i64;
        while self.samples.len() > 1 && self.samples[1].at <= now - window {
            self.samples.pop_front();
        }
        let Some(first) = self.samples.front().copied() else {
            return Signal::default();
        };
        let span = now - first.at;
        if span < window / 4 {
            return Signal::default();
        }
        let n = self.samples.len() as f64;
        let mean = |f: fn(&Sample) -> Option<f64>| {
            self.samples
                .iter()
                .map(f)
                .sum::<Option<f64>>()
                .map(|t| t / n)
        };
        // Counted since the first sample: its own increments happened before the window.
        let after: Vec<&Sample> = self.samples.iter().skip(1).collect();
        let value = match policy.metric {
            ScaleMetric::InFlight => mean(|s| Some(s.in_flight)),
            ScaleMetric::Queue => mean(|s| s.waiting),
            ScaleMetric::Rps => (span > 0).then(|| {
                let started: u64 = after.iter().map(|s| s.started).sum();
                started as f64 / (span as f64 / 1000.0) / self.ready.len().max(1) as f64
            }),
            ScaleMetric::Ttft => {
                let answered: u64 = after.iter().map(|s| s.answered).sum();
                let took: u64 = after.iter().map(|s| s.ttfb_us).sum();
                if answered > 0 {
                    Some(took as f64 / answered as f64 / 1e6)
                } else if self.samples.iter().all(|s| s.in_flight == 0.0) {
                    // No answer and nothing in flight: idle, which is a real signal (nothing
                    // waits).
                    Some(0.0)
                } else {
                    // Requests in flight all along and not one first byte: at least this long.
                    self.samples
                        .iter()
                        .all(|s| s.in_flight > 0.0)
                        .then_some(span as f64 / 1000.0)
                }
            }
        };
        let growth = match (mean(|s| s.running), mean(|s| s.waiting)) {
            (Some(running), Some(waiting)) if running > 0.0 => Some((running + waiting) / running),
            _ => None,
        };
        Signal {
            value,
            growth,
            ..Signal::default()
        }
    }
}

const SCALED: &str = "skylaunch_deployment_autoscale_decisions_total";
const SCALED_HELP: &str = "Replica count changes the autoscaler made, by direction.";

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(metric: ScaleMetric, window_s: u64) -> AutoscalePolicy {
        AutoscalePolicy {
            min_replicas: 1,
            max_replicas: 4,
            metric,
            target: 1.0,
            scale_up_delay_s: 30,
            scale_down_delay_s: 300,
            window_s,
            scale_to_zero_after_s: None,
            cold_start_timeout_s: None,
        }
    }

    fn sample(at: i64, in_flight: f64, started: u64, answered: u64, ttfb_us: u64) -> Sample {
        Sample {
            at,
            in_flight,
            waiting: Some(in_flight / 2.0),
            running: Some(4.0),
            started,
            answered,
            ttfb_us,
        }
    }

    fn memory(samples: &[Sample], ready: usize) -> ScaleMemory {
        ScaleMemory {
            samples: samples.iter().copied().collect(),
            ready: (0..ready).map(|i| i.to_string()).collect(),
            ..ScaleMemory::default()
        }
    }

    #[test]
    fn a_metric_is_the_mean_over_its_window_once_a_quarter_is_covered() {
        // One pass a second, 2 ready replicas: in flight 10 per replica for 60 s, then 2.
        let samples: Vec<Sample> = (0..=90)
            .map(|t| {
                let high = t < 60;
                sample(t * 1000, if high { 10.0 } else { 2.0 }, 4, 2, 2 * 500_000)
            })
            .collect();
        let mut m = memory(&samples, 2);
        let v = m
            .signal(&policy(ScaleMetric::InFlight, 60), 90_000)
            .value
            .unwrap();
        // The window (30..=90) holds 30 passes at 10 and 31 at 2.
        assert!((v - (30.0 * 10.0 + 31.0 * 2.0) / 61.0).abs() < 1e-9, "{v}");
        // rps: 4 requests a pass after the first, over 60 s, per replica.
        let mut m = memory(&samples, 2);
        let rps = m
            .signal(&policy(ScaleMetric::Rps, 60), 90_000)
            .value
            .unwrap();
        assert!((rps - 4.0 * 60.0 / 60.0 / 2.0).abs() < 1e-9, "{rps}");
        // ttft: the mean over the answers, 0.5 s each.
        let mut m = memory(&samples, 2);
        let ttft = m
            .signal(&policy(ScaleMetric::Ttft, 60), 90_000)
            .value
            .unwrap();
        assert!((ttft - 0.5).abs() < 1e-9, "{ttft}");
        // queue, with how much the capacity must grow: (4 running + 1 waiting) / 4.
        let queue = memory(&samples[80..], 2).signal(&policy(ScaleMetric::Queue, 10), 90_000);
        assert_eq!(queue.value, Some(1.0));
        assert_eq!(queue.growth, Some(1.25));
        // A window covered for less than a quarter of its length has no value yet.
        let mut m = memory(&samples[80..], 2);
        assert_eq!(
            m.signal(&policy(ScaleMetric::InFlight, 60), 90_000).value,
            None
        );
    }

    #[test]
    fn ttft_is_idle_at_rest_and_at_least_the_span_when_nothing_answers() {
        let idle: Vec<Sample> = (0..=20).map(|t| sample(t * 1000, 0.0, 0, 0, 0)).collect();
        let p = policy(ScaleMetric::Ttft, 20);
        assert_eq!(memory(&idle, 1).signal(&p, 20_000).value, Some(0.0));
        let stuck: Vec<Sample> = (0..=20).map(|t| sample(t * 1000, 3.0, 0, 0, 0)).collect();
        assert_eq!(memory(&stuck, 1).signal(&p, 20_000).value, Some(20.0));
        // In flight only part of the time, and nothing answered: unknown.
        let mut mixed = idle.clone();
        mixed[20].in_flight = 1.0;
        assert_eq!(memory(&mixed, 1).signal(&p, 20_000).value, None);
    }
}

//! Rate limits on the agent endpoints (register, heartbeat): per node and per source address,
//! as token buckets kept in memory. A real agent sends one heartbeat per interval, so the
//! per-node limit only bites a runaway or hostile client; the per-source limit is wide enough
//! for a whole fleet behind one NAT address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets above this many are pruned of the full (idle) ones.
const PRUNE_ABOVE: usize = 50_000;

pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    /// `per_second` requests on average, up to `burst` at once (at least one).
    pub fn new(per_second: f64, burst: f64) -> RateLimit {
        RateLimit {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Buckets kept.
    pub fn bucket_count(&self) -> usize {
        self.buckets
            .lock()
            .expect("rate limit lock is never poisoned")
            .len()
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .expect("rate limit lock is never poisoned");
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

/// Which limit a request ran into, and when to try again.
pub struct Limited {
    pub what: String,
    pub retry_after: Duration,
}

pub struct AgentLimits {
    pub per_node: RateLimit,
    pub per_source: RateLimit,
}

impl AgentLimits {
    pub fn new(per_node: f64, per_source: f64) -> AgentLimits {
        AgentLimits {
            // Bursts: an agent re-registering after a restart, a few retries; a fleet's
            // heartbeats arriving together.
            per_node: RateLimit::new(per_node, (per_node * 10.0).max(10.0)),
            per_source: RateLimit::new(per_source, per_source * 2.0),
        }
    }

    pub fn check(&self, node_id: &str, source: IpAddr) -> Result<(), Limited> {
        self.check_source(source)?;
        self.check_node(node_id)
    }

    /// Buckets kept, per source and per node.
    pub fn buckets(&self) -> usize {
        self.per_source.bucket_count() + self.per_node.bucket_count()
    }

    /// The per-source limit, taken before anything else of the request is looked at.
    pub fn check_source(&self, source: IpAddr) -> Result<(), Limited> {
        self.per_source
            .take(&source.to_string(), Instant::now())
            .map_err(|retry_after| Limited {
                what: format!("agent requests from {source}"),
                retry_after,
            })
    }

    /// The per-node limit; `key` must name a node that exists (bounded keys).
    pub fn check_node(&self, key: &str) -> Result<(), Limited> {
        self.per_node
            .take(key, Instant::now())
            .map_err(|retry_after| Limited {
                what: format!("requests for node {key}"),
                retry_after,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limit = RateLimit::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.take("a", t0).is_ok());
        }
        let wait = limit.take("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limit.take("b", t0).is_ok(), "keys are independent");
        assert!(limit.take("a", t0 + Duration::from_millis(500)).is_ok());
        assert!(limit.take("a", t0 + Duration::from_millis(500)).is_err());
        // Idle for long: back to the burst, never above it.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limit.take("a", later).is_ok());
        }
        assert!(limit.take("a", later).is_err());
    }

    #[test]
    fn the_source_limit_applies_before_the_node_limit() {
        let limits = AgentLimits::new(1.0, 1.0);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(limits.check("n1", ip).is_ok());
        assert!(limits.check("n2", ip).is_ok(), "burst of 2 for the source");
        let limited = limits.check("n3", ip).unwrap_err();
        assert!(limited.what.contains("10.0.0.7"), "{}", limited.what);
    }
}

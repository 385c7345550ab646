//! What each key, model and deployment used and cost over a period: requests and tokens from
//! the metered usage (`usage_minutes`, see [`crate::keys`]), GPU-hours and dollars from the
//! replicas' lifetimes and hourly prices, and dollars per million tokens.
//!
//! A node's hourly price is its placement's: the price its launch's placement showed (SkyPilot's
//! optimizer, the cloud's price list), else the catalogue's estimate for its GPUs on its market
//! (spot or on-demand); hosts the operator owns and this machine cost nothing per hour. A node
//! costs from when it was made until it was terminated (or now): from the launch's start, as a
//! cloud bills, so the figure errs high rather than low.

pub mod store;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::fleet::node::Node;
use crate::fleet::status::NodeStatus;
use crate::keys::{Counts, ENV_OR_OPEN};
use crate::launch::stage::AttemptOutcome;

const HOUR_MS: f64 = 3_600_000.0;
const MINUTE_MS: i64 = 60_000;
/// The longest period one query covers.
pub const MAX_PERIOD_MS: i64 = crate::keys::USAGE_RETENTION_MS;
/// Series bucket sizes, in seconds: the smallest that gives at most [`MAX_POINTS`] points.
const BUCKETS_S: [i64; 8] = [60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400];
const MAX_POINTS: i64 = 60;

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Key,
    Model,
    Deployment,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "deployment" => Some(GroupBy::Deployment),
            _ => None,
        }
    }
}

/// A period, whole minutes (usage is counted per minute): `from` rounded down, `to` up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Period {
    pub from: i64,
    pub to: i64,
}

impl Period {
    pub fn new(from: i64, to: i64) -> Result<Period, String> {
        if to <= from {
            return Err("to must be after from".into());
        }
        if to - from > MAX_PERIOD_MS {
            return Err("the period may be at most 400 days".into());
        }
        let from = from.div_euclid(MINUTE_MS) * MINUTE_MS;
        let to = (to + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
        Ok(Period { from, to })
    }

    /// The series' bucket size in ms.
    pub fn bucket_ms(&self) -> i64 {
        let span_s = (self.to - self.from) / 1000;
        let bucket = BUCKETS_S
            .iter()
            .copied()
            .find(|b| (span_s + b - 1) / b <= MAX_POINTS)
            .unwrap_or(BUCKETS_S[BUCKETS_S.len() - 1]);
        bucket * 1000
    }

    fn hours_of(&self, start: i64, end: i64) -> f64 {
        let (a, b) = (start.max(self.from), end.min(self.to));
        if b > a {
            (b - a) as f64 / HOUR_MS
        } else {
            0.0
        }
    }
}

/// A replica's cost: what it served, when it ran and at what price.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCost {
    pub model: String,
    pub deployment: String,
    pub start: i64,
    /// When it was terminated; `None` while it runs.
    pub end: Option<i64>,
    pub usd_per_hour: f64,
    pub gpus: f64,
}

impl NodeCost {
    /// `node`'s cost; `placement` is the hourly price its launch's placement showed, if any.
    pub fn of(node: &Node, placement: Option<f64>) -> NodeCost {
        let gpu = node
            .gpu_type
            .as_deref()
            .filter(|g| !g.is_empty() && !g.eq_ignore_ascii_case("none"));
        let gpus = match (gpu, node.gpu_count) {
            (None, _) => 0,
            (Some(_), Some(n)) => n.max(0),
            (Some(_), None) => 1,
        };
        let owned = matches!(node.provider.to_ascii_lowercase().as_str(), "ssh" | "local");
        let usd_per_hour = match placement {
            Some(price) if price.is_finite() && price >= 0.0 => price,
            _ if owned => 0.0,
            _ => crate::catalog::hourly_usd(
                gpu,
                u32::try_from(gpus).unwrap_or(0),
                node.spot_instance,
            ),
        };
        NodeCost {
            model: node.model_name.clone(),
            deployment: node.deployment.clone().unwrap_or_default(),
            start: node.created_at,
            end: (node.status == NodeStatus::Terminated).then_some(node.updated_at),
            usd_per_hour,
            gpus: gpus as f64,
        }
    }

    fn hours(&self, period: &Period, now: i64) -> f64 {
        period.hours_of(self.start, self.end.unwrap_or(now))
    }
}

/// The hourly price the last placement that succeeded (or is being tried) showed.
pub fn placement_price(attempts: &[crate::launch::stage::Attempt]) -> Option<f64> {
    attempts
        .iter()
        .rev()
        .find(|a| a.outcome != AttemptOutcome::Failed)
        .and_then(|a| a.price_per_hour)
}

/// Requests and tokens of one key, model and deployment over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct Used {
    pub key_id: String,
    pub model: String,
    pub deployment: String,
    pub counts: Counts,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Group {
    pub group: String,
    /// The key's id (group_by=key; null for environment keys and an open `/v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub gpu_hours: f64,
    pub usd: f64,
    pub usd_per_million_tokens: Option<f64>,
    /// What its replicas running now cost per hour (model and deployment groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hourly_usd: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Point {
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub start: i64,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: f64,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub bucket_s: i64,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub from: i64,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub to: i64,
    pub group_by: GroupBy,
    pub usage: Vec<Group>,
    pub total: Group,
    pub series: Series,
}

/// Where unattributed cost goes when grouped by key: replicas nobody sent a request to.
pub const IDLE: &str = "(idle: no requests)";
/// The group of a model or deployment without one.
pub const NONE: &str = "(none)";

/// A group's name, and its key id when grouped by key.
type GroupKey = (String, Option<String>);

#[derive(Default, Clone, Copy)]
struct Sums {
    counts: Counts,
    gpu_hours: f64,
    usd: f64,
    hourly: f64,
}

/// To the millionth; never `-0` (a sum of nothing is `-0.0` in floating point).
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6 + 0.0
}

fn group(name: String, key_id: Option<String>, s: Sums, hourly: bool) -> Group {
    let tokens = s.counts.tokens();
    Group {
        group: name,
        key_id,
        requests: s.counts.requests,
        prompt_tokens: s.counts.prompt_tokens,
        completion_tokens: s.counts.completion_tokens,
        gpu_hours: round6(s.gpu_hours),
        usd: round6(s.usd),
        usd_per_million_tokens: (tokens > 0).then(|| round6(s.usd / tokens as f64 * 1e6)),
        hourly_usd: hourly.then(|| round6(s.hourly)),
    }
}

/// The report over `period` at `now`: `used` per key, model and deployment, `buckets` of
/// counts by bucket start, the replicas' costs, and the key names by id.
pub fn report(
    period: Period,
    group_by: GroupBy,
    used: &[Used],
    buckets: &[(i64, Counts)],
    nodes: &[NodeCost],
    key_names: &HashMap<String, String>,
    now: i64,
) -> Report {
    let name_of = |s: &str| {
        if s.is_empty() {
            NONE.to_string()
        } else {
            s.to_string()
        }
    };
    let mut groups: BTreeMap<GroupKey, Sums> = BTreeMap::new();
    let mut total = Sums::default();
    for u in used {
        total.counts.add(u.counts);
        let at = match group_by {
            GroupBy::Model => (name_of(&u.model), None),
            GroupBy::Deployment => (name_of(&u.deployment), None),
            GroupBy::Key if u.key_id.is_empty() => (ENV_OR_OPEN.to_string(), None),
            GroupBy::Key => (
                key_names
                    .get(&u.key_id)
                    .cloned()
                    .unwrap_or_else(|| u.key_id.clone()),
                Some(u.key_id.clone()),
            ),
        };
        groups.entry(at).or_default().counts.add(u.counts);
    }
    // Each model's tokens and requests by group, for sharing its cost among keys: by tokens,
    // or by requests for a model whose answers carried none.
    let mut model_use: HashMap<&str, Vec<(GroupKey, Counts)>> = HashMap::new();
    if group_by == GroupBy::Key {
        for (name, id) in groups.keys() {
            for u in used.iter().filter(|u| match id {
                Some(id) => &u.key_id == id,
                None => u.key_id.is_empty(),
            }) {
                let list = model_use.entry(u.model.as_str()).or_default();
                match list.iter_mut().find(|(g, _)| g.0 == *name && g.1 == *id) {
                    Some((_, c)) => c.add(u.counts),
                    None => list.push(((name.clone(), id.clone()), u.counts)),
                }
            }
        }
    }
    for n in nodes {
        let hours = n.hours(&period, now);
        let (gpu_hours, usd) = (hours * n.gpus, hours * n.usd_per_hour);
        let hourly = if n.end.is_none() { n.usd_per_hour } else { 0.0 };
        total.gpu_hours += gpu_hours;
        total.usd += usd;
        total.hourly += hourly;
        let shares: Vec<(GroupKey, f64)> = match group_by {
            GroupBy::Model => vec![((name_of(&n.model), None), 1.0)],
            GroupBy::Deployment => vec![((name_of(&n.deployment), None), 1.0)],
            GroupBy::Key => {
                let list = model_use
                    .get(n.model.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let tokens: u64 = list.iter().map(|(_, c)| c.tokens()).sum();
                let weight = |c: &Counts| if tokens > 0 { c.tokens() } else { c.requests };
                let all: u64 = list.iter().map(|(_, c)| weight(c)).sum();
                if all == 0 {
                    vec![((IDLE.to_string(), None), 1.0)]
                } else {
                    list.iter()
                        .map(|(g, c)| (g.clone(), weight(c) as f64 / all as f64))
                        .collect()
                }
            }
        };
        if hours == 0.0 && hourly == 0.0 {
            continue;
        }
        for (at, share) in shares {
            let s = groups.entry(at).or_default();
            s.gpu_hours += gpu_hours * share;
            s.usd += usd * share;
            s.hourly += hourly * share;
        }
    }
    let hourly = group_by != GroupBy::Key;
    let mut usage: Vec<Group> = groups
        .into_iter()
        .map(|((name, id), s)| group(name, id, s, hourly))
        .collect();
    // The costliest first, then by traffic.
    usage.sort_by(|a, b| {
        b.usd
            .total_cmp(&a.usd)
            .then(b.requests.cmp(&a.requests))
            .then(a.group.cmp(&b.group))
    });
    let bucket = period.bucket_ms();
    let span = period.to - period.from;
    let mut points: Vec<Point> = (0..(span + bucket - 1) / bucket)
        .map(|i| Point {
            start: period.from + i * bucket,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            usd: 0.0,
        })
        .collect();
    for (start, c) in buckets {
        let i = (start - period.from).div_euclid(bucket);
        if let Some(p) = usize::try_from(i).ok().and_then(|i| points.get_mut(i)) {
            p.requests += c.requests;
            p.prompt_tokens += c.prompt_tokens;
            p.completion_tokens += c.completion_tokens;
        }
    }
    for p in &mut points {
        let slice = Period {
            from: p.start,
            to: (p.start + bucket).min(period.to),
        };
        p.usd = round6(
            nodes
                .iter()
                .map(|n| n.hours(&slice, now) * n.usd_per_hour)
                .sum(),
        );
    }
    Report {
        from: period.from,
        to: period.to,
        group_by,
        usage,
        total: group("total".into(), None, total, true),
        series: Series {
            bucket_s: bucket / 1000,
            points,
        },
    }
}

#[cfg(test)]
mod tests;

//! Routing policies per deployment: which replica a request for a model should go to before
//! load decides.
//!
//! - `least_load` (the default): power of two choices on load and health ([`super::policy`]);
//!   nothing here runs for it.
//! - `prefix_affinity`: the prompt (chat messages' roles and text, or a completion's prompt) is
//!   cut into blocks of [`BLOCK_BYTES`], each identified by a hash chained over the blocks
//!   before it, so two prompts share a block's hash exactly when they share everything up to
//!   its end. A bounded index remembers which replica last served each block. A request goes
//!   to the replica of its longest remembered prefix (at least `min_prefix_chars` long), which
//!   likely still holds that prefix in its KV cache, unless that replica is overloaded: more
//!   than `max_in_flight_gap` requests in flight beyond the least loaded replica *and* more
//!   than `max_load_ratio` times its load. Otherwise load decides, and the index learns the
//!   choice. A replica that leaves loses only its own prefixes (they are served by load and
//!   learnt again); one that joins takes new prefixes only.
//! - `session`: a header (`X-Session-Id` by default) names the conversation; rendezvous
//!   hashing of its value over the routable replicas keeps it on one replica while that replica
//!   is routable, and moves only the sessions of a replica that leaves (a joining one takes its
//!   fair share). Without the header, load decides.
//!
//! No database on the request path: a route is built by the reconciler from the deployment's
//! spec and swapped into the routing table.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::table::Endpoint;

/// Prompt bytes per hashed block.
pub const BLOCK_BYTES: usize = 64;
/// Prompt blocks looked at, at most (16 KiB): a longer prompt is routed on its first 16 KiB.
const MAX_BLOCKS: usize = 256;
/// Blocks the index of one model remembers, at most (two generations of half of it).
const INDEX_CAPACITY: usize = 200_000;

/// Defaults of a `prefix_affinity` policy. The load guard's were chosen on
/// `scripts/bench-routing` (docs/benchmarks.md): a gap of 8 and a ratio of 2 kept more prefixes
/// (60 % of prompt tokens cached) but let the p99 time to first token reach 2.3 s; 4 and 1.5
/// keep 56 % at a p99 of 1.3 s, and a gap of 2 gains no tail for fewer hits (52 %, 1.27 s).
pub const MIN_PREFIX_CHARS: u32 = 256;
pub const MAX_IN_FLIGHT_GAP: u32 = 4;
pub const MAX_LOAD_RATIO: f64 = 1.5;
/// Default header of a `session` policy.
pub const SESSION_HEADER: &str = "x-session-id";

/// The policy's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutePolicyKind {
    #[default]
    LeastLoad,
    PrefixAffinity,
    Session,
}

/// A deployment's `routing`: which replica a request goes to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingPolicy {
    #[serde(default)]
    pub policy: RoutePolicyKind,
    /// `prefix_affinity`: the shortest shared prompt prefix that keeps a request on a replica,
    /// in bytes of prompt text (default 256, rounded down to whole 64-byte blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_prefix_chars: Option<u32>,
    /// `prefix_affinity`: a replica with more than this many requests in flight beyond the
    /// least loaded one (and `max_load_ratio` times its load) loses affinity (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_gap: Option<u32>,
    /// `prefix_affinity`: see `max_in_flight_gap` (default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_load_ratio: Option<f64>,
    /// `session`: the request header naming the conversation (default `X-Session-Id`); it must
    /// start with `X-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_header: Option<String>,
}

impl RoutingPolicy {
    /// Checks the settings; the error is (field, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let affinity = self.policy == RoutePolicyKind::PrefixAffinity;
        let session = self.policy == RoutePolicyKind::Session;
        let only = |field: &'static str, what: &str| {
            (
                field,
                format!("{field} is a setting of the {what} policy only"),
            )
        };
        if !affinity {
            for (field, set) in [
                ("routing.min_prefix_chars", self.min_prefix_chars.is_some()),
                (
                    "routing.max_in_flight_gap",
                    self.max_in_flight_gap.is_some(),
                ),
                ("routing.max_load_ratio", self.max_load_ratio.is_some()),
            ] {
                if set {
                    return Err(only(field, "prefix_affinity"));
                }
            }
        }
        if !session && self.session_header.is_some() {
            return Err(only("routing.session_header", "session"));
        }
        if let Some(chars) = self.min_prefix_chars {
            if !(BLOCK_BYTES as u32..=(BLOCK_BYTES * MAX_BLOCKS) as u32).contains(&chars) {
                return Err((
                    "routing.min_prefix_chars",
                    format!(
                        "routing.min_prefix_chars must be from {BLOCK_BYTES} to {}",
                        BLOCK_BYTES * MAX_BLOCKS
                    ),
                ));
            }
        }
        if self.max_in_flight_gap.is_some_and(|g| g > 10_000) {
            return Err((
                "routing.max_in_flight_gap",
                "routing.max_in_flight_gap must be from 0 to 10000".into(),
            ));
        }
        if self
            .max_load_ratio
            .is_some_and(|r| !(r.is_finite() && (1.0..=1000.0).contains(&r)))
        {
            return Err((
                "routing.max_load_ratio",
                "routing.max_load_ratio must be a number from 1 to 1000".into(),
            ));
        }
        if let Some(header) = &self.session_header {
            let valid = header.len() <= 64
                && header.len() > 2
                && header[..2].eq_ignore_ascii_case("x-")
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err((
                    "routing.session_header",
                    "routing.session_header must be a header name starting with X- (letters, digits, - and _; at most 64)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A model's routing policy as the proxy runs it (`None` in the table for `least_load`).
#[derive(Debug)]
pub struct Route {
    pub spec: RoutingPolicy,
    kind: RoutePolicyKind,
    min_blocks: usize,
    gap: usize,
    ratio: f64,
    /// Lowercase.
    header: String,
    index: Mutex<PrefixIndex>,
}

/// The replica a policy prefers for one request, and what the index learns once it is
/// forwarded.
#[derive(Debug, Default)]
pub struct Preference {
    pub endpoint: Option<Arc<Endpoint>>,
    /// The prompt's block hashes (`prefix_affinity`), to remember with the replica chosen.
    pub blocks: Vec<u64>,
    /// The replica holding the prefix was passed over as overloaded (the proxy logs it).
    pub overloaded: bool,
}

impl Route {
    /// The route of a policy; `None` for `least_load`.
    pub fn new(spec: &RoutingPolicy) -> Option<Route> {
        if spec.policy == RoutePolicyKind::LeastLoad {
            return None;
        }
        let chars = spec.min_prefix_chars.unwrap_or(MIN_PREFIX_CHARS) as usize;
        Some(Route {
            spec: spec.clone(),
            kind: spec.policy,
            min_blocks: (chars / BLOCK_BYTES).max(1),
            gap: spec.max_in_flight_gap.unwrap_or(MAX_IN_FLIGHT_GAP) as usize,
            ratio: spec.max_load_ratio.unwrap_or(MAX_LOAD_RATIO),
            header: spec
                .session_header
                .as_deref()
                .unwrap_or(SESSION_HEADER)
                .to_ascii_lowercase(),
            index: Mutex::new(PrefixIndex::default()),
        })
    }

    /// Which of `usable` (routable, not ejected, not tried) this request should go to.
    /// `hints` are the request's `X-` headers, `body` its JSON.
    pub fn prefer(
        &self,
        usable: &[&Arc<Endpoint>],
        hints: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> Preference {
        match self.kind {
            RoutePolicyKind::LeastLoad => Preference::default(),
            RoutePolicyKind::Session => {
                let session = hints
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(self.header.as_bytes()))
                    .map(|(_, value)| value.trim_ascii())
                    .filter(|v| !v.is_empty());
                Preference {
                    endpoint: session.and_then(|s| rendezvous(s, usable)).cloned(),
                    ..Preference::default()
                }
            }
            RoutePolicyKind::PrefixAffinity => {
                let blocks = prompt_blocks(body);
                let remembered = {
                    let index = self.index.lock().expect("prefix index lock");
                    index.longest(&blocks, usable)
                };
                let mut preference = Preference {
                    blocks,
                    ..Preference::default()
                };
                if let Some((matched, endpoint)) = remembered {
                    if matched >= self.min_blocks {
                        if self.overloaded(endpoint, usable) {
                            preference.overloaded = true;
                        } else {
                            preference.endpoint = Some(endpoint.clone());
                        }
                    }
                }
                preference
            }
        }
    }

    /// Remembers that `blocks` went to `endpoint`.
    pub fn learn(&self, blocks: &[u64], endpoint: &Endpoint) {
        if blocks.is_empty() {
            return;
        }
        let mut index = self.index.lock().expect("prefix index lock");
        index.insert(blocks, endpoint.route_key);
    }

    fn overloaded(&self, endpoint: &Endpoint, usable: &[&Arc<Endpoint>]) -> bool {
        let load = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
        let least = usable.iter().map(|e| load(e)).min().unwrap_or(0);
        let mine = load(endpoint);
        mine > least + self.gap && (mine as f64) > self.ratio * least.max(1) as f64
    }
}

/// The highest-scoring endpoint for `key` (rendezvous hashing).
fn rendezvous<'a>(key: &[u8], usable: &[&'a Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
    usable.iter().copied().max_by_key(|e| {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        e.route_key.hash(&mut h);
        h.finish()
    })
}

/// The chained block hashes of a request's prompt: chat `messages` (each role and its text
/// parts) or a completion's `prompt`. Empty when the body has neither.
pub fn prompt_blocks(body: &[u8]) -> Vec<u64> {
    let text = prompt_text(body);
    let mut blocks = Vec::with_capacity((text.len() / BLOCK_BYTES).min(MAX_BLOCKS));
    let mut previous = 0u64;
    for block in text.as_bytes().chunks_exact(BLOCK_BYTES).take(MAX_BLOCKS) {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(previous);
        h.write(block);
        previous = h.finish();
        blocks.push(previous);
    }
    blocks
}

/// The prompt as one text, in the order a model server reads it (bounded to the blocks looked
/// at).
fn prompt_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Prompted {
        #[serde(default)]
        messages: Vec<Message>,
        #[serde(default)]
        prompt: serde_json::Value,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        role: String,
        #[serde(default)]
        content: serde_json::Value,
    }
    let limit = BLOCK_BYTES * MAX_BLOCKS;
    let mut text = String::new();
    let Ok(p) = serde_json::from_slice::<Prompted>(body) else {
        return text;
    };
    let mut push = |s: &str| {
        if text.len() < limit {
            text.push_str(s);
        }
    };
    for m in &p.messages {
        push(&m.role);
        push("\n");
        push_value(&m.content, &mut push);
        push("\n");
    }
    push_value(&p.prompt, &mut push);
    text
}

/// Adds a message's `content` (or a `prompt`): a string, or an array of strings or of parts
/// with a `text`.
fn push_value(v: &serde_json::Value, push: &mut dyn FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => push(s),
        serde_json::Value::Array(parts) => {
            for part in parts {
                match part {
                    serde_json::Value::String(s) => push(s),
                    serde_json::Value::Object(o) => {
                        if let Some(serde_json::Value::String(s)) = o.get("text") {
                            push(s);
                        }
                    }
                    _ => {}
                }
                push("\n");
            }
        }
        _ => {}
    }
}

/// Which replica last served each prompt block: two generations of at most half the capacity
/// each; when the current one is full it becomes the previous one (the oldest are forgotten),
/// so memory stays bounded however many prompts pass.
#[derive(Debug, Default)]
struct PrefixIndex {
    current: HashMap<u64, u64>,
    previous: HashMap<u64, u64>,
}

impl PrefixIndex {
    fn get(&self, block: u64) -> Option<u64> {
        self.current
            .get(&block)
            .or_else(|| self.previous.get(&block))
            .copied()
    }

    /// The longest run of leading blocks remembered, and the usable replica that served its
    /// last block.
    fn longest<'a>(
        &self,
        blocks: &[u64],
        usable: &[&'a Arc<Endpoint>],
    ) -> Option<(usize, &'a Arc<Endpoint>)> {
        let mut best = None;
        for (i, block) in blocks.iter().enumerate() {
            let Some(key) = self.get(*block) else { break };
            if let Some(e) = usable.iter().copied().find(|e| e.route_key == key) {
                best = Some((i + 1, e));
            }
        }
        best
    }

    fn insert(&mut self, blocks: &[u64], replica: u64) {
        for block in blocks {
            if self.current.len() >= INDEX_CAPACITY / 2 {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(*block, replica);
        }
    }
}

#[cfg(test)]
mod tests;

//! API keys for `/v1`: the keys from the environment (`SKYLAUNCH_API_KEYS`) and the keys
//! managed through the admin API, each with a name, the models it may use and its limits
//! (requests and tokens per minute), and the usage the load balancer meters.
//!
//! The request path never touches the database: every key lives in memory, found by the
//! SHA-256 of what the client sent. Key changes are announced between processes (PostgreSQL
//! `NOTIFY`) and re-read at once; see [`sync`] for how limits hold across processes.

pub mod model;
pub mod store;
pub mod sync;
pub mod window;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, RwLock};

use subtle::ConstantTimeEq;

pub use model::{ApiKey, KeyRequest, KeyStatus, KeyView};
pub use store::{Counts, UsageKey};

use crate::store::{Store, StoreError};
use window::Window;

/// What usage counts under when no managed key sent it: an environment key or an open `/v1`.
pub const ENV_OR_OPEN: &str = "(environment or open)";
/// How long metered usage is kept (400 days): the longest period a usage report covers.
pub const USAGE_RETENTION_MS: i64 = 400 * 24 * 3_600_000;

const REQUESTS: &str = "skylaunch_usage_requests_total";
const REQUESTS_HELP: &str =
    "Requests forwarded and metered, by model, deployment and API key name (counted once written to the database).";
const TOKENS: &str = "skylaunch_usage_tokens_total";
const TOKENS_HELP: &str = "Tokens from the model servers' usage, by model, deployment, API key name and type (prompt, completion).";

/// Requests and tokens a key used, over a sliding minute, in this process and (as last read)
/// in the others.
#[derive(Debug, Default)]
pub struct Counters {
    requests: Mutex<Window>,
    tokens: Mutex<Window>,
}

/// A managed key as the request path sees it.
#[derive(Debug)]
pub struct LiveKey {
    pub key: ApiKey,
    pub id: Arc<str>,
    counters: Arc<Counters>,
}

/// Who sent a `/v1` request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key is needed: none is set in the environment and none was ever made.
    Open,
    /// One of the environment's keys.
    Env,
    Key(Arc<LiveKey>),
}

impl Caller {
    /// The key id usage is counted under; empty for an environment key or an open `/v1`.
    pub fn key_id(&self) -> Arc<str> {
        static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        match self {
            Caller::Key(k) => k.id.clone(),
            _ => NONE.get_or_init(|| Arc::from("")).clone(),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("send an API key as Authorization: Bearer <key>: one from SKYLAUNCH_API_KEYS or made with POST /admin/api-keys")]
    Missing,
    #[error("the API key is not valid")]
    Unknown,
    #[error("the API key {name:?} was revoked")]
    Revoked { name: String },
    #[error("the API key {name:?} expired")]
    Expired { name: String },
    #[error("the API key {name:?} may not use model {model}; it may use: {allowed}")]
    ModelNotAllowed {
        name: String,
        model: String,
        allowed: String,
    },
    #[error("the API key {name:?} is over its limit of {limit} {what} per minute; try again in {retry_after_s} s")]
    RateLimited {
        name: String,
        /// `requests_per_minute` or `tokens_per_minute`.
        field: &'static str,
        what: &'static str,
        limit: u64,
        retry_after_s: u64,
    },
    #[error("no such API key: {0}")]
    NotFound(String),
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not make a random key: {0}")]
    Random(std::io::Error),
}

/// The keys in memory, rebuilt whole on every change (changes are rare; reads are every
/// request).
#[derive(Default)]
struct Live {
    by_hash: HashMap<[u8; 32], Arc<LiveKey>>,
    /// Whether any key was ever made (revoked ones included): `/v1` is then closed for good,
    /// even if every key is revoked.
    any_made: bool,
}

pub struct Keys {
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    env: Vec<String>,
    live: RwLock<Arc<Live>>,
    /// No key exists at all (none in the environment, none ever made): `/v1` is open, and a
    /// request needs no look-up.
    open: std::sync::atomic::AtomicBool,
    /// Usage counted since the last flush to the database (hashed with the metrics' short
    /// hash: SipHash cost more than the rest of the counting).
    pending: Mutex<HashMap<UsageKey, Counts, BuildHasherDefault<crate::metrics::WordHash>>>,
}

impl Keys {
    /// The keys: `env` from the environment, the managed ones read from the store.
    pub async fn load(
        store: Store,
        env: Vec<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Keys>, StoreError> {
        let keys = Arc::new(Keys {
            store,
            metrics,
            env: env.into_iter().filter(|k| !k.trim().is_empty()).collect(),
            live: RwLock::default(),
            open: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::default(),
        });
        keys.reload().await?;
        Ok(keys)
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads every key from the store, keeping each key's counters.
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let stored = self.store.api_keys().await?;
        let old = self.live();
        let counters: HashMap<&str, &Arc<Counters>> = old
            .by_hash
            .values()
            .map(|k| (&*k.id, &k.counters))
            .collect();
        let mut live = Live {
            any_made: !stored.is_empty(),
            ..Live::default()
        };
        for key in stored {
            let Some(hash) = hex_hash(&key.hash) else {
                tracing::warn!(key_id = %key.id, "an API key's stored hash is not 64 hex digits; the key is refused");
                continue;
            };
            let counters = counters
                .get(key.id.as_str())
                .map_or_else(Arc::default, |c| Arc::clone(c));
            live.by_hash.insert(
                hash,
                Arc::new(LiveKey {
                    id: Arc::from(key.id.as_str()),
                    key,
                    counters,
                }),
            );
        }
        let n = live.by_hash.len();
        let open = self.env.is_empty() && !live.any_made;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        self.open.store(open, std::sync::atomic::Ordering::Release);
        Ok(n)
    }

    /// Makes a key: its view and the key itself, which is shown only now.
    pub async fn create(&self, request: KeyRequest) -> Result<(KeyView, String), KeyError> {
        let secret = model::generate().map_err(KeyError::Random)?;
        let now = crate::clock::now_ms();
        let key = request
            .into_key(uuid::Uuid::new_v4().to_string(), &secret, now)
            .map_err(|e| KeyError::Invalid {
                field: e.field,
                message: e.message,
            })?;
        self.store.insert_api_key(&key).await?;
        self.reload().await?;
        tracing::info!(key_id = %key.id, name = %key.name, "API key made");
        Ok((key.view(now), secret))
    }

    /// Every key, newest first, with its use over the last minute.
    pub async fn list(&self) -> Result<Vec<KeyView>, KeyError> {
        let now = crate::clock::now_ms();
        let live = self.live();
        let by_id: HashMap<&str, &LiveKey> =
            live.by_hash.values().map(|k| (&*k.id, &**k)).collect();
        Ok(self
            .store
            .api_keys()
            .await?
            .iter()
            .map(|k| {
                let mut view = k.view(now);
                if let Some(live) = by_id.get(k.id.as_str()) {
                    let used = |w: &Mutex<Window>| locked(w).used(now);
                    view.requests_last_minute = used(&live.counters.requests);
                    view.tokens_last_minute = used(&live.counters.tokens);
                }
                view
            })
            .collect())
    }

    /// Revokes a key: refused from now on by this process, and by the others once they hear
    /// of it (at once on PostgreSQL).
    pub async fn revoke(&self, id: &str) -> Result<KeyView, KeyError> {
        let now = crate::clock::now_ms();
        let key = self
            .store
            .revoke_api_key(id, now)
            .await?
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        self.reload().await?;
        tracing::info!(key_id = %key.id, name = %key.name, "API key revoked");
        Ok(key.view(now))
    }

    /// Who sent a request with this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, KeyError> {
        if self.open.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Caller::Open);
        }
        let given = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if given.is_empty() {
            return Err(KeyError::Missing);
        }
        let env = self.env.iter().fold(false, |found, key| {
            found | bool::from(key.as_bytes().ct_eq(given))
        });
        if env {
            return Ok(Caller::Env);
        }
        let live = self.live();
        let key = live
            .by_hash
            .get(&model::hash(given))
            .ok_or(KeyError::Unknown)?;
        match key.key.status(crate::clock::now_ms()) {
            KeyStatus::Active => Ok(Caller::Key(key.clone())),
            KeyStatus::Revoked => Err(KeyError::Revoked {
                name: key.key.name.clone(),
            }),
            KeyStatus::Expired => Err(KeyError::Expired {
                name: key.key.name.clone(),
            }),
        }
    }

    /// Whether the caller may send a request for `model` now; if so, the request is counted
    /// against its requests-per-minute limit.
    pub fn admit(&self, caller: &Caller, model: &str) -> Result<(), KeyError> {
        let Caller::Key(key) = caller else {
            return Ok(());
        };
        let k = &key.key;
        if !k.allows(model) {
            return Err(KeyError::ModelNotAllowed {
                name: k.name.clone(),
                model: model.to_string(),
                allowed: k.models.as_deref().unwrap_or_default().join(", "),
            });
        }
        let now = crate::clock::now_ms();
        let over = |field, what, limit, retry_after_s| KeyError::RateLimited {
            name: k.name.clone(),
            field,
            what,
            limit,
            retry_after_s,
        };
        // Tokens are known only once answers end: a request is let in while the tokens of the
        // past minute are under the limit.
        if let Some(limit) = k.tokens_per_minute {
            let tokens = locked(&key.counters.tokens);
            if let Err(o) = tokens.check(now, 1, limit) {
                return Err(over("tokens_per_minute", "tokens", limit, o.retry_after_s));
            }
        }
        // Counted with or without a limit: the key list shows every key's use.
        let mut requests = locked(&key.counters.requests);
        if let Some(limit) = k.requests_per_minute {
            if let Err(o) = requests.check(now, 1, limit) {
                return Err(over(
                    "requests_per_minute",
                    "requests",
                    limit,
                    o.retry_after_s,
                ));
            }
        }
        requests.add(now, 1);
        Ok(())
    }

    /// Counts a request whose answer ended (or was cut off): its tokens against the caller's
    /// limit, and its usage for the next flush.
    pub fn record(&self, caller: &Caller, model: &Arc<str>, deployment: &Arc<str>, counts: Counts) {
        let now = crate::clock::now_ms();
        if let Caller::Key(key) = caller {
            locked(&key.counters.tokens).add(now, counts.tokens());
        }
        let at = UsageKey {
            minute: window::minute_of(now),
            key_id: caller.key_id(),
            model: model.clone(),
            deployment: deployment.clone(),
        };
        locked(&self.pending).entry(at).or_default().add(counts);
    }

    /// Writes the usage counted since the last flush; kept for the next one if the database
    /// cannot take it now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let taken: Vec<(UsageKey, Counts)> = {
            let mut pending = locked(&self.pending);
            pending.drain().collect()
        };
        if let Err(e) = self.store.add_usage(&taken).await {
            let mut pending = locked(&self.pending);
            for (k, c) in taken {
                pending.entry(k).or_default().add(c);
            }
            return Err(e);
        }
        self.count(&taken);
        Ok(())
    }

    /// Adds written usage to the Prometheus counters (by model, deployment and key name).
    fn count(&self, written: &[(UsageKey, Counts)]) {
        if written.is_empty() {
            return;
        }
        let live = self.live();
        let names: HashMap<&str, &str> = live
            .by_hash
            .values()
            .map(|k| (&*k.id, k.key.name.as_str()))
            .collect();
        for (k, c) in written {
            let key = if k.key_id.is_empty() {
                ENV_OR_OPEN
            } else {
                names.get(&*k.key_id).copied().unwrap_or(&k.key_id)
            };
            let labels = [
                ("model", &*k.model),
                ("deployment", &*k.deployment),
                ("key", key),
            ];
            self.metrics
                .add(REQUESTS, REQUESTS_HELP, &labels, c.requests);
            for (kind, n) in [
                ("prompt", c.prompt_tokens),
                ("completion", c.completion_tokens),
            ] {
                let labels = [
                    ("model", &*k.model),
                    ("deployment", &*k.deployment),
                    ("key", key),
                    ("type", kind),
                ];
                self.metrics.add(TOKENS, TOKENS_HELP, &labels, n);
            }
        }
    }

    /// Reads what the other processes counted for each key in this minute and the one before.
    pub async fn read_others(&self) -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        let minute = window::minute_of(now);
        let previous = minute - 60_000;
        let rows = self.store.others_key_usage(previous).await?;
        let mut by_key: HashMap<&str, [(u64, u64); 2]> = HashMap::new();
        for (key_id, at, requests, tokens) in &rows {
            let slot = if *at == minute {
                1
            } else if *at == previous {
                0
            } else {
                continue;
            };
            by_key.entry(key_id.as_str()).or_default()[slot] = (*requests, *tokens);
        }
        for key in self.live().by_hash.values() {
            let [p, c] = by_key.get(&*key.id).copied().unwrap_or_default();
            locked(&key.counters.requests).set_others(minute, p.0, c.0);
            locked(&key.counters.tokens).set_others(minute, p.1, c.1);
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The mutex's value; one poisoned by a panic elsewhere is still sound here (counters and
/// pending counts), so it is used as it is.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;

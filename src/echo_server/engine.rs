//! The echo server's service model: its running and waiting sequences (at most `max_seqs`
//! running, the rest queued first come, first served), its prefix cache, and what a prompt's
//! prefill costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::prefix;

/// The running and waiting sequences of the service model, and its prefix cache.
#[derive(Debug)]
pub(super) struct Engine {
    /// `None` without a limit on running sequences.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    pub(super) running: AtomicUsize,
    pub(super) waiting: AtomicUsize,
    /// `None` when off.
    prefix_cache: Option<Mutex<prefix::PrefixCache>>,
}

/// A chat prompt as the engine sees it.
pub(super) struct Prompt {
    pub(super) tokens: usize,
    /// Its full blocks' chained hashes; empty without a prefix cache.
    blocks: Vec<u64>,
}

/// A prompt's prefill, as planned when its sequence starts running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Prefill {
    /// Leading tokens found in the prefix cache.
    pub(super) cached_tokens: usize,
    /// The prefill of the others.
    pub(super) duration: Duration,
}

impl Engine {
    pub(super) fn new(max_seqs: usize, prefix_cache_tokens: usize) -> Engine {
        Engine {
            slots: (max_seqs > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max_seqs))),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            prefix_cache: (prefix_cache_tokens > 0)
                .then(|| Mutex::new(prefix::PrefixCache::new(prefix_cache_tokens))),
        }
    }

    pub(super) fn prefix_cache(&self) -> Option<std::sync::MutexGuard<'_, prefix::PrefixCache>> {
        self.prefix_cache.as_ref().map(|cache| {
            cache
                .lock()
                .expect("nothing panics while holding the prefix cache")
        })
    }

    /// The prompt's tokens and, with a prefix cache, its blocks.
    pub(super) fn prompt(&self, tokens: &[prefix::Token<'_>]) -> Prompt {
        Prompt {
            tokens: tokens.len(),
            blocks: match &self.prefix_cache {
                Some(_) => prefix::block_hashes(tokens),
                None => Vec::new(),
            },
        }
    }

    /// The prefill a prompt needs now: its tokens past the cached prefix, at
    /// `us_per_token` each. Counts the lookup in the cache's metrics.
    pub(super) fn plan_prefill(&self, us_per_token: f64, prompt: &Prompt) -> Prefill {
        let cached_tokens = self
            .prefix_cache()
            .map_or(0, |mut cache| cache.lookup(&prompt.blocks, prompt.tokens));
        Prefill {
            cached_tokens,
            duration: cost(us_per_token, prompt.tokens - cached_tokens),
        }
    }

    /// Stores a prompt's blocks once its prefill is done.
    pub(super) fn prefilled(&self, prompt: &Prompt) {
        if let Some(mut cache) = self.prefix_cache() {
            cache.insert(&prompt.blocks);
        }
    }

    /// Waits for a slot (first come, first served: tokio's semaphore is fair) and holds it
    /// until the returned sequence is dropped. Dropping the future while it waits (the
    /// client went away) leaves the queue.
    pub(super) async fn admit(self: &Arc<Self>) -> Sequence {
        let permit = match &self.slots {
            Some(slots) => {
                let _waiting = Count::up(self.clone(), |e| &e.waiting);
                Some(
                    slots
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                )
            }
            None => None,
        };
        Sequence {
            _running: Count::up(self.clone(), |e| &e.running),
            _permit: permit,
        }
    }
}

/// One of the engine's counters, up while this lives.
struct Count {
    engine: Arc<Engine>,
    counter: fn(&Engine) -> &AtomicUsize,
}

impl Count {
    fn up(engine: Arc<Engine>, counter: fn(&Engine) -> &AtomicUsize) -> Count {
        counter(&engine).fetch_add(1, Ordering::SeqCst);
        Count { engine, counter }
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        (self.counter)(&self.engine).fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running sequence: it holds its slot until dropped.
pub(super) struct Sequence {
    _running: Count,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// `tokens` × `us_per_token` microseconds; zero for a knob that is off or not a number.
pub(super) fn cost(us_per_token: f64, tokens: usize) -> Duration {
    let us = us_per_token * tokens as f64;
    if us.is_finite() && us > 0.0 {
        Duration::from_secs_f64((us / 1e6).min(86_400.0))
    } else {
        Duration::ZERO
    }
}

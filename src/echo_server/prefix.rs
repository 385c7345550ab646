//! The service model's **prefix cache**: a bounded store of prompt blocks, as vLLM's automatic
//! prefix caching keeps the KV blocks of earlier prompts so a prompt that starts the same way
//! skips that part of its prefill. It owns the blocks, their chained hashes, the LRU order and
//! the hit counters that `/metrics` publishes.
//!
//! A prompt is cut into blocks of [`BLOCK_TOKENS`] tokens; a block is known by the hash of its
//! parent block's hash and its own tokens, so equal blocks after different prefixes differ, as
//! a KV block depends on everything before it. Only full blocks are cached. As in vLLM, a
//! prompt found whole still computes its last token, so the lookup stops one token short of the
//! prompt's end (a prompt of exactly two blocks hits on the first only).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Tokens per block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;

/// A prompt token: a word, with the position and role of the message it is in, so the same
/// words in another message are other tokens (as a chat template's markers make them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token<'a> {
    pub message: usize,
    pub role: &'a str,
    pub word: &'a str,
}

/// The chained hashes of a prompt's full blocks, first block first.
pub fn block_hashes(tokens: &[Token<'_>]) -> Vec<u64> {
    let mut parent = 0u64;
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .map(|block| {
            // SipHash with fixed keys: the same prompt gives the same hashes in every process.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            parent.hash(&mut h);
            block.hash(&mut h);
            parent = h.finish();
            parent
        })
        .collect()
}

/// At most `capacity_blocks` blocks, the least recently used evicted first.
#[derive(Debug)]
pub struct PrefixCache {
    capacity_blocks: usize,
    /// Block hash → its last use.
    blocks: HashMap<u64, u64>,
    /// Last use → block hash: the eviction order.
    by_use: BTreeMap<u64, u64>,
    clock: u64,
    queries: u64,
    hits: u64,
}

impl PrefixCache {
    /// A cache of `capacity_tokens` tokens' worth of whole blocks.
    pub fn new(capacity_tokens: usize) -> PrefixCache {
        PrefixCache {
            capacity_blocks: capacity_tokens / BLOCK_TOKENS,
            blocks: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            queries: 0,
            hits: 0,
        }
    }

    /// How many of a `prompt_tokens`-token prompt's leading tokens are cached (a whole number
    /// of blocks, short of the last token); counts the query and the hit, and marks the blocks
    /// found as used.
    pub fn lookup(&mut self, hashes: &[u64], prompt_tokens: usize) -> usize {
        let lookable = prompt_tokens.saturating_sub(1) / BLOCK_TOKENS;
        let found = hashes
            .iter()
            .take(lookable)
            .take_while(|h| self.blocks.contains_key(h))
            .count();
        self.touch_all(&hashes[..found]);
        let cached = found * BLOCK_TOKENS;
        self.queries += prompt_tokens as u64;
        self.hits += cached as u64;
        cached
    }

    /// Stores a prompt's blocks after its prefill (or marks them used), evicting the least
    /// recently used beyond the capacity.
    pub fn insert(&mut self, hashes: &[u64]) {
        self.touch_all(hashes);
        while self.blocks.len() > self.capacity_blocks {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.blocks.remove(&oldest);
        }
    }

    /// Marks blocks used, the last block first: a prompt's leading blocks end up the most
    /// recent, so its tail goes before its head (as vLLM frees a request's blocks tail first)
    /// and a block is never kept without its parent because of this prompt.
    fn touch_all(&mut self, hashes: &[u64]) {
        for &hash in hashes.iter().rev() {
            self.clock += 1;
            if let Some(last) = self.blocks.insert(hash, self.clock) {
                self.by_use.remove(&last);
            }
            self.by_use.insert(self.clock, hash);
        }
    }

    /// Prompt tokens looked up so far (`vllm:prefix_cache_queries_total`).
    pub fn queries(&self) -> u64 {
        self.queries
    }

    /// Of them, the tokens found cached (`vllm:prefix_cache_hits_total`).
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

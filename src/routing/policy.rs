//! Which node gets a request: power of two choices over the routable endpoints, weighing load
//! by health.
//!
//! Two distinct candidates are drawn at random among those not ejected; the one with the lower
//! cost wins, where cost = (requests in flight + 1) / health score. So at equal load a node at
//! score 0.6 loses to one at 1.0, and at equal score a busy node loses to an idle one; drawing
//! two (not scanning all) keeps concurrent choosers from stampeding the same "best" node. The
//! random source is a parameter, so tests choose with a seed.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::table::Endpoint;

/// Scores below this count as this, so a node near 0 still has a finite (huge) cost.
const MIN_HEALTH: f64 = 0.05;

/// A small, fast, seedable random source (SplitMix64); not for secrets. Its state only ever
/// moves by a constant, so it is one atomic add, shared by every thread without a lock; draws
/// made one after another give the same sequence as a single-threaded generator.
pub struct SplitMix64(AtomicU64);

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn seeded(seed: u64) -> SplitMix64 {
        SplitMix64(AtomicU64::new(seed))
    }

    /// Starts the sequence over from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.0.store(seed, Ordering::SeqCst);
    }

    /// Seeded from the operating system's randomness.
    pub fn from_entropy() -> SplitMix64 {
        let mut bytes = [0u8; 8];
        // Should the OS refuse, the clock is an acceptable seed for load balancing.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = (crate::clock::now_ms() as u64).to_le_bytes();
        }
        SplitMix64::seeded(u64::from_le_bytes(bytes))
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn cost(e: &Endpoint) -> f64 {
    (e.in_flight.load(Ordering::Relaxed) as f64 + 1.0) / e.health().max(MIN_HEALTH)
}

/// Picks an endpoint among `candidates` that are not ejected now and not in `exclude` (those
/// already tried for this request). Allocates nothing: the usable ones are counted, and the
/// two drawn are found by walking the list again. The clock (`now_ms`) is read at most once, and
/// only when some candidate was ever ejected: `ejected_until` stays 0 until then, and 0 is
/// never after any time.
pub fn choose(
    candidates: &[Arc<Endpoint>],
    exclude: &[String],
    now_ms: impl Fn() -> i64,
    rng: &SplitMix64,
) -> Option<Arc<Endpoint>> {
    let now = OnceCell::new();
    let ejected = |e: &Endpoint| {
        e.ejected_until.load(Ordering::Relaxed) != 0 && e.is_ejected(*now.get_or_init(&now_ms))
    };
    let ejected = &ejected;
    let usable = || {
        candidates
            .iter()
            .filter(move |e| !ejected(e) && !exclude.contains(&e.node_id))
    };
    match usable().count() {
        0 => None,
        1 => usable().next().cloned(),
        n => {
            let a = rng.below(n);
            let mut b = rng.below(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (usable().nth(a)?, usable().nth(b)?);
            Some(if cost(b) < cost(a) { b } else { a }.clone())
        }
    }
}

/// The candidates that are not ejected now and not in `exclude`, for a routing policy to
/// choose among (allocates; `least_load` does not call it).
pub fn usable<'a>(
    candidates: &'a [Arc<Endpoint>],
    exclude: &[String],
    now_ms: impl Fn() -> i64,
) -> Vec<&'a Arc<Endpoint>> {
    let now = OnceCell::new();
    candidates
        .iter()
        .filter(|e| {
            let ejected = e.ejected_until.load(Ordering::Relaxed) != 0
                && e.is_ejected(*now.get_or_init(&now_ms));
            !ejected && !exclude.contains(&e.node_id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(healths: &[f64]) -> Vec<Arc<Endpoint>> {
        healths
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Arc::new(Endpoint::new(
                    &format!("n{i}"),
                    &format!("n{i}"),
                    &format!("http://127.0.0.1:{}", 9000 + i),
                    *h,
                ))
            })
            .collect()
    }

    fn shares(list: &[Arc<Endpoint>], rounds: usize, seed: u64) -> Vec<usize> {
        let rng = SplitMix64::seeded(seed);
        let mut counts = vec![0; list.len()];
        for _ in 0..rounds {
            let e = choose(list, &[], || 0, &rng).unwrap();
            counts[list.iter().position(|x| Arc::ptr_eq(x, &e)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn a_healthier_node_gets_more_traffic_at_equal_load() {
        let list = endpoints(&[1.0, 0.6]);
        let counts = shares(&list, 10_000, 7);
        // With two nodes both are always drawn: the healthier one wins every tie of load.
        assert!(counts[0] > counts[1], "{counts:?}");
        let list = endpoints(&[1.0, 0.6, 1.0, 0.6]);
        let counts = shares(&list, 20_000, 7);
        let (strong, weak) = (counts[0] + counts[2], counts[1] + counts[3]);
        assert!(strong > weak * 2, "{counts:?}");
        assert!(weak > 0, "a weaker node still gets some: {counts:?}");
    }

    #[test]
    fn a_busy_node_gets_less_than_an_idle_one_at_equal_health() {
        let list = endpoints(&[1.0, 1.0]);
        list[0].in_flight.store(5, Ordering::SeqCst);
        let counts = shares(&list, 1_000, 3);
        assert_eq!(counts, vec![0, 1_000]);
        // Load outweighs a better score once it is high enough: (5+1)/1.0 > (0+1)/0.6.
        let list = endpoints(&[1.0, 0.6]);
        list[0].in_flight.store(5, Ordering::SeqCst);
        assert_eq!(shares(&list, 1_000, 3), vec![0, 1_000]);
    }

    #[test]
    fn ejected_and_already_tried_nodes_are_skipped() {
        let list = endpoints(&[1.0, 1.0, 1.0]);
        list[0].ejected_until.store(100, Ordering::SeqCst);
        let rng = SplitMix64::seeded(1);
        for _ in 0..100 {
            let e = choose(&list, &["n1".into()], || 50, &rng).unwrap();
            assert_eq!(e.node_id, "n2");
        }
        assert!(choose(&list, &["n1".into(), "n2".into()], || 50, &rng).is_none());
        assert_eq!(
            choose(&list, &["n1".into(), "n2".into()], || 100, &rng)
                .unwrap()
                .node_id,
            "n0",
            "the ejection ends"
        );
    }

    #[test]
    fn the_same_seed_chooses_the_same_way() {
        let list = endpoints(&[1.0, 0.8, 0.9, 0.7]);
        assert_eq!(shares(&list, 500, 42), shares(&list, 500, 42));
    }
}

//! Prometheus metrics: labelled counters and latency histograms kept in memory and rendered in
//! the text exposition format at `/metrics`. Gauges that describe current state (nodes by
//! status) are computed at scrape time by their owners and passed in.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub type Labels = Vec<(&'static str, String)>;

/// A gauge computed by its owner at scrape time: name, help, and a value per label set.
pub struct Gauge<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub series: Vec<(Labels, f64)>,
}

/// Upper bounds of the buckets of token counts (per request).
const TOKEN_BUCKETS: [f64; 12] = [
    16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 131072.0,
];

/// Upper bounds of the buckets of rates in tokens per second.
const RATE_BUCKETS: [f64; 12] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0,
];

/// What a histogram measures: its bucket bounds, and the unit its sum is kept in (an integer).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Unit {
    /// Latencies in seconds; the sum in nanoseconds.
    #[default]
    Seconds,
    /// Token counts; the sum in tokens.
    Tokens,
    /// Tokens per second; the sum in thousandths.
    TokensPerSecond,
}

impl Unit {
    fn bounds(self) -> &'static [f64; 12] {
        match self {
            Unit::Seconds => &BUCKETS,
            Unit::Tokens => &TOKEN_BUCKETS,
            Unit::TokensPerSecond => &RATE_BUCKETS,
        }
    }

    /// How many of the sum's integer steps make one unit.
    fn scale(self) -> f64 {
        match self {
            Unit::Seconds => 1e9,
            Unit::Tokens => 1.0,
            Unit::TokensPerSecond => 1e3,
        }
    }
}

/// One histogram series. Each observation adds to one bucket (the first whose bound it is
/// within, or the overflow bucket past the last) and to the sum: two atomic adds, however many
/// buckets there are. The exposition's cumulative buckets and count are added up at scrape time,
/// so they always agree with each other.
#[derive(Default, Debug)]
struct HistogramCell {
    unit: Unit,
    /// Observations by bucket, not cumulative; the last one counts those above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations in the unit's integer steps, nanoseconds for latencies (an
    /// integer add, where an f64 sum needs a compare-and-swap loop; it overflows after some
    /// 580 years of summed latency).
    sum: AtomicU64,
}

impl HistogramCell {
    fn new(unit: Unit) -> HistogramCell {
        HistogramCell {
            unit,
            ..HistogramCell::default()
        }
    }

    fn observe(&self, value: f64) {
        let bounds = self.unit.bounds();
        let bucket = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a negative or NaN value adds nothing to the sum.
        self.sum.fetch_add(
            (value * self.unit.scale()).round() as u64,
            Ordering::Relaxed,
        );
    }
}

/// One counter series, looked up once and kept by a hot path: counting is then one atomic add,
/// with no lock and no label hashing.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// One histogram series, looked up once and kept (see [`Counter`]).
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCell>);

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

struct Family<T> {
    help: &'static str,
    /// Series by a hash of their labels (collisions share the bucket), so that counting one
    /// looks it up from borrowed labels: no allocation on the request path once it exists.
    series: HashMap<u64, Vec<(Labels, T)>, BuildHasherDefault<WordHash>>,
}

/// A multiply-rotate hash taken eight bytes at a time (the scheme of rustc's FxHash), for the
/// short label values of a series: SipHash, the default, cost more than the counting itself,
/// and byte-at-a-time FNV still a few hundred instructions per look-up. Label values are
/// bounded (routes, known models and nodes), so a flood of chosen collisions is not a concern,
/// and colliding series still stay apart (they share a bucket).
#[derive(Default)]
pub(crate) struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<T> Family<T> {
    fn new(help: &'static str) -> Family<T> {
        Family {
            help,
            series: HashMap::default(),
        }
    }

    fn series_mut(&mut self, labels: &[(&'static str, &str)], make: impl FnOnce() -> T) -> &mut T {
        let mut hasher = WordHash::default();
        labels.hash(&mut hasher);
        let bucket = self.series.entry(hasher.finish()).or_default();
        let same = |(known, _): &(Labels, T)| {
            known.len() == labels.len()
                && known
                    .iter()
                    .zip(labels)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && v1 == v2)
        };
        let at = match bucket.iter().position(same) {
            Some(at) => at,
            None => {
                bucket.push((owned(labels), make()));
                bucket.len() - 1
            }
        };
        &mut bucket[at].1
    }

    /// Every series, in label order (stable output).
    fn sorted(&self) -> Vec<&(Labels, T)> {
        let mut all: Vec<&(Labels, T)> = self.series.values().flatten().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<&'static str, Family<Arc<AtomicU64>>>>,
    histograms: Mutex<BTreeMap<&'static str, Family<Arc<HistogramCell>>>>,
}

impl Metrics {
    /// Declares a counter series so it shows as 0 before its first increment.
    pub fn declare_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) {
        self.add(name, help, labels, 0);
    }

    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, help, labels, 1);
    }

    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        n: u64,
    ) {
        with_series(&self.counters, name, help, labels, |c| {
            c.fetch_add(n, Ordering::Relaxed)
        });
    }

    /// The counter series `labels` of `name`, made (at 0) if new, to be kept and counted on.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        with_series(&self.counters, name, help, labels, |c| Counter(c.clone()))
    }

    /// The histogram series `labels` of `name`, made if new, to be kept and observed on.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        with_series(&self.histograms, name, help, labels, |h| {
            Histogram(h.clone())
        })
    }

    /// A histogram series of another [`Unit`] than seconds (its buckets and sum follow it),
    /// made if new, to be kept and observed on.
    pub fn histogram_of(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        unit: Unit,
    ) -> Histogram {
        with_series_made(
            &self.histograms,
            name,
            help,
            labels,
            || Arc::new(HistogramCell::new(unit)),
            |h| Histogram(h.clone()),
        )
    }

    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        seconds: f64,
    ) {
        with_series(&self.histograms, name, help, labels, |h| h.observe(seconds));
    }

    /// The exposition text, with the caller's current gauges first.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        for Gauge { name, help, series } in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels, None));
            }
        }
        for (name, family) in self
            .counters
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
        {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", family.help);
            for (labels, value) in family.sorted() {
                let value = value.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels, None));
            }
        }
        for (name, family) in self
            .histograms
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
        {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} histogram",
                family.help
            );
            for (labels, h) in family.sorted() {
                let mut count = 0;
                let bounds = h.unit.bounds();
                for (i, bound) in bounds.iter().enumerate() {
                    count += h.counts[i].load(Ordering::Relaxed);
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        fmt_labels(labels, Some(&le)),
                    );
                }
                count += h.counts[bounds.len()].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    fmt_labels(labels, Some("+Inf")),
                );
                let sum = h.sum.load(Ordering::Relaxed) as f64 / h.unit.scale();
                let _ = writeln!(out, "{name}_sum{} {sum}", fmt_labels(labels, None));
                let _ = writeln!(out, "{name}_count{} {count}", fmt_labels(labels, None));
            }
        }
        out
    }
}

/// Runs `f` on the series `labels` of the family `name` in `families`, making either if new.
fn with_series<T: Default, R>(
    families: &Mutex<BTreeMap<&'static str, Family<T>>>,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
    f: impl FnOnce(&mut T) -> R,
) -> R {
    with_series_made(families, name, help, labels, T::default, f)
}

/// [`with_series`], a new series made by `make`.
fn with_series_made<T, R>(
    families: &Mutex<BTreeMap<&'static str, Family<T>>>,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
    make: impl FnOnce() -> T,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut families = families.lock().expect("metrics lock is never poisoned");
    f(families
        .entry(name)
        .or_insert_with(|| Family::new(help))
        .series_mut(labels, make))
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_in_text_format() {
        let m = Metrics::default();
        m.inc("x_total", "Things.", &[("kind", "a\"b")]);
        m.inc("x_total", "Things.", &[("kind", "a\"b")]);
        m.observe("lat_seconds", "Latency.", &[], 0.003);
        let text = m.render(&[Gauge {
            name: "g",
            help: "Gauge.",
            series: vec![(vec![("s", "ready".into())], 2.0)],
        }]);
        assert!(
            text.contains("# TYPE x_total counter\nx_total{kind=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count 1\n"), "{text}");
        assert!(text.contains("g{s=\"ready\"} 2\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let m = Metrics::default();
        // On a bound, between two bounds, past the last bound.
        for seconds in [0.005, 0.007, 20.0] {
            m.observe("d_seconds", "D.", &[], seconds);
        }
        let text = m.render(&[]);
        for (le, count) in [
            ("0.0025", 0),
            ("0.005", 1),
            ("0.01", 2),
            ("10", 2),
            ("+Inf", 3),
        ] {
            assert!(
                text.contains(&format!("d_seconds_bucket{{le=\"{le}\"}} {count}\n")),
                "le={le}: {text}"
            );
        }
        assert!(text.contains("d_seconds_count 3\n"), "{text}");
        assert!(text.contains("d_seconds_sum 20.012\n"), "{text}");
    }

    #[test]
    fn kept_series_count_into_the_same_series_as_labelled_calls() {
        let m = Metrics::default();
        let kept = m.counter("k_total", "K.", &[("node", "a")]);
        assert!(
            m.render(&[]).contains("k_total{node=\"a\"} 0\n"),
            "made at 0"
        );
        kept.inc();
        m.inc("k_total", "K.", &[("node", "a")]);
        kept.inc();
        let latency = m.histogram("h_seconds", "H.", &[("model", "m")]);
        latency.observe(0.002);
        m.observe("h_seconds", "H.", &[("model", "m")], 0.5);
        let text = m.render(&[]);
        assert!(text.contains("k_total{node=\"a\"} 3\n"), "{text}");
        assert!(
            text.contains("h_seconds_bucket{model=\"m\",le=\"0.0025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_count{model=\"m\"} 2\n"), "{text}");
        assert!(
            text.contains("h_seconds_sum{model=\"m\"} 0.502\n"),
            "{text}"
        );
    }

    #[test]
    fn each_label_set_is_its_own_series_listed_in_label_order() {
        let m = Metrics::default();
        for (node, times) in [("b", 3), ("a", 1), ("c", 2)] {
            for _ in 0..times {
                m.inc("r_total", "R.", &[("node", node), ("status", "200")]);
            }
        }
        m.inc("r_total", "R.", &[("node", "a"), ("status", "502")]);
        // Same values under other names are another series.
        m.inc("r_total", "R.", &[("status", "a"), ("node", "200")]);
        let text = m.render(&[]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "r_total{node=\"a\",status=\"200\"} 1",
                "r_total{node=\"a\",status=\"502\"} 1",
                "r_total{node=\"b\",status=\"200\"} 3",
                "r_total{node=\"c\",status=\"200\"} 2",
                "r_total{status=\"a\",node=\"200\"} 1",
            ]
        );
    }
}

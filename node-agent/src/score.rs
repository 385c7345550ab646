//! The health score (0..1) sent with every heartbeat. The control plane routes to a node only
//! when the model server is ready and the score is at least its threshold (default 0.5).
//!
//! score = 0 when the model server is not ready; otherwise
//! latency_factor × thermal_factor × load_factor, clamped to 0..1 and rounded to 3 decimals:
//! - latency_factor: 1 up to 500 ms probe latency, falling linearly to 0 at 5000 ms;
//! - thermal_factor (GPU present): 1 below 85 °C, 0.7 from 85 °C, 0.3 from 90 °C (hottest GPU);
//! - load_factor (vLLM metrics exposed): 1 − 0.4 × min(1, waiting / 64), then × 0.8 when the
//!   KV cache is at least 98 % full.

use skylaunch_protocol::{GpuReport, ModelServerReport, QueueReport};

pub fn health_score(
    model: &ModelServerReport,
    gpu: &GpuReport,
    queue: Option<&QueueReport>,
) -> f64 {
    if !model.ready {
        return 0.0;
    }
    let latency = model.probe_latency_ms.unwrap_or(0.0);
    let latency_factor = if latency <= 500.0 {
        1.0
    } else {
        (1.0 - (latency - 500.0) / 4500.0).max(0.0)
    };
    let thermal_factor = match gpu.temperature_c {
        Some(t) if gpu.present && t >= 90.0 => 0.3,
        Some(t) if gpu.present && t >= 85.0 => 0.7,
        _ => 1.0,
    };
    let load_factor = match queue {
        Some(q) => {
            let mut f = 1.0 - 0.4 * (q.waiting.unwrap_or(0.0) / 64.0).min(1.0);
            if q.kv_cache_usage.is_some_and(|c| c >= 0.98) {
                f *= 0.8;
            }
            f
        }
        None => 1.0,
    };
    let score = (latency_factor * thermal_factor * load_factor).clamp(0.0, 1.0);
    (score * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(latency: f64) -> ModelServerReport {
        ModelServerReport {
            ready: true,
            probe_latency_ms: Some(latency),
            models: Some(vec!["m".into()]),
            error: None,
        }
    }

    fn gpu(temp: f64) -> GpuReport {
        GpuReport {
            present: true,
            temperature_c: Some(temp),
            ..GpuReport::absent()
        }
    }

    #[test]
    fn model_server_not_ready_scores_zero() {
        let mut m = ready(1.0);
        m.ready = false;
        assert_eq!(health_score(&m, &GpuReport::absent(), None), 0.0);
    }

    #[test]
    fn healthy_fast_server_without_gpu_is_one() {
        assert_eq!(health_score(&ready(12.0), &GpuReport::absent(), None), 1.0);
    }

    #[test]
    fn latency_lowers_the_score_linearly() {
        assert_eq!(health_score(&ready(500.0), &GpuReport::absent(), None), 1.0);
        assert_eq!(
            health_score(&ready(2750.0), &GpuReport::absent(), None),
            0.5
        );
        assert_eq!(
            health_score(&ready(6000.0), &GpuReport::absent(), None),
            0.0
        );
    }

    #[test]
    fn hot_gpus_lower_the_score() {
        assert_eq!(health_score(&ready(1.0), &gpu(84.9), None), 1.0);
        assert_eq!(health_score(&ready(1.0), &gpu(85.0), None), 0.7);
        assert_eq!(health_score(&ready(1.0), &gpu(93.0), None), 0.3);
    }

    #[test]
    fn a_long_queue_and_a_full_cache_lower_the_score() {
        let q = QueueReport {
            running: Some(10.0),
            waiting: Some(32.0),
            kv_cache_usage: Some(0.5),
        };
        assert_eq!(
            health_score(&ready(1.0), &GpuReport::absent(), Some(&q)),
            0.8
        );
        let q = QueueReport {
            running: Some(10.0),
            waiting: Some(500.0),
            kv_cache_usage: Some(0.99),
        };
        assert_eq!(
            health_score(&ready(1.0), &GpuReport::absent(), Some(&q)),
            0.48
        );
    }

    #[test]
    fn factors_multiply_and_the_result_has_three_decimals() {
        // 1000 ms: 1 − 500/4500 = 0.8888…; 85 °C: × 0.7; 16 waiting: × 0.9.
        let q = QueueReport {
            running: Some(1.0),
            waiting: Some(16.0),
            kv_cache_usage: None,
        };
        assert_eq!(
            health_score(&ready(1000.0), &GpuReport::absent(), None),
            0.889
        );
        assert_eq!(health_score(&ready(1000.0), &gpu(85.0), Some(&q)), 0.56);
    }

    #[test]
    fn temperature_counts_only_when_a_gpu_is_present() {
        let stale = GpuReport {
            present: false,
            ..gpu(95.0)
        };
        assert_eq!(health_score(&ready(1.0), &stale, None), 1.0);
    }

    #[test]
    fn cache_just_below_the_threshold_does_not_count() {
        let q = QueueReport {
            running: Some(1.0),
            waiting: Some(0.0),
            kv_cache_usage: Some(0.979),
        };
        assert_eq!(
            health_score(&ready(1.0), &GpuReport::absent(), Some(&q)),
            1.0
        );
    }

    #[test]
    fn an_unmeasured_latency_does_not_lower_a_ready_score() {
        let mut m = ready(0.0);
        m.probe_latency_ms = None;
        assert_eq!(health_score(&m, &GpuReport::absent(), None), 1.0);
    }
}

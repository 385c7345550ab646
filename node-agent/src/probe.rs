//! Probes of the local model server: readiness (`/health`, then `/v1/models` lists the model),
//! probe latency, and vLLM's queue metrics from `/metrics` when the server exposes them.

use std::time::{Duration, Instant};

use skylaunch_protocol::{error_chain, ModelServerReport, QueueReport};

/// Probes readiness. `model` is the model this node serves; `None` accepts any listed model.
pub async fn model_server(
    http: &reqwest::Client,
    base: &str,
    model: Option<&str>,
    timeout: Duration,
) -> ModelServerReport {
    let base = base.trim_end_matches('/');
    let started = Instant::now();
    let health = http
        .get(format!("{base}/health"))
        .timeout(timeout)
        .send()
        .await;
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    let not_ready = |error: String, latency: Option<f64>| ModelServerReport {
        ready: false,
        probe_latency_ms: latency,
        models: Some(Vec::new()),
        error: Some(error),
    };
    match health {
        Ok(res) if res.status().is_success() => {}
        Ok(res) => {
            return not_ready(
                format!("/health answered HTTP {}", res.status().as_u16()),
                Some(latency),
            )
        }
        Err(e) => return not_ready(format!("/health: {}", error_chain(&e)), None),
    }
    let models = match http
        .get(format!("{base}/v1/models"))
        .timeout(timeout)
        .send()
        .await
    {
        Ok(res) if res.status().is_success() => match res.json::<serde_json::Value>().await {
            Ok(body) => listed_models(&body),
            Err(e) => return not_ready(format!("/v1/models is not JSON: {e}"), Some(latency)),
        },
        Ok(res) => {
            return not_ready(
                format!("/v1/models answered HTTP {}", res.status().as_u16()),
                Some(latency),
            )
        }
        Err(e) => return not_ready(format!("/v1/models: {}", error_chain(&e)), Some(latency)),
    };
    let serves = match model {
        Some(m) => models.iter().any(|listed| listed == m),
        None => !models.is_empty(),
    };
    ModelServerReport {
        ready: serves,
        probe_latency_ms: Some(round2(latency)),
        error: (!serves).then(|| match model {
            Some(m) => format!("/v1/models does not list {m:?} (lists {models:?})"),
            None => "/v1/models lists no model".to_string(),
        }),
        models: Some(models),
    }
}

/// The models the server lists at `/v1/models`, for discovering the model name before the
/// first registration. Unlike the readiness probe this does not need `/health`: a server that
/// lists its model has finished loading it.
pub async fn served_models(http: &reqwest::Client, base: &str, timeout: Duration) -> Vec<String> {
    let req = http.get(format!("{}/v1/models", base.trim_end_matches('/')));
    crate::discover::fetch_text(req, timeout)
        .await
        .and_then(|body| serde_json::from_str(&body).ok())
        .map(|body| listed_models(&body))
        .unwrap_or_default()
}

pub fn listed_models(body: &serde_json::Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// vLLM's queue from `/metrics`; `None` when the server exposes no vLLM metrics.
pub async fn vllm_queue(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Option<QueueReport> {
    let req = http.get(format!("{}/metrics", base.trim_end_matches('/')));
    parse_vllm_metrics(&crate::discover::fetch_text(req, timeout).await?)
}

/// Sums `vllm:num_requests_running` and `vllm:num_requests_waiting` over label sets and takes the
/// highest KV-cache usage (`vllm:gpu_cache_usage_perc`, or `vllm:kv_cache_usage_perc` in newer
/// vLLM).
pub fn parse_vllm_metrics(text: &str) -> Option<QueueReport> {
    let mut running = None::<f64>;
    let mut waiting = None::<f64>;
    let mut cache = None::<f64>;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let value = line
            .rsplit_once('}')
            .map(|(_, v)| v)
            .unwrap_or(&line[name_end..])
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        let Some(value) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        match name {
            "vllm:num_requests_running" => *running.get_or_insert(0.0) += value,
            "vllm:num_requests_waiting" => *waiting.get_or_insert(0.0) += value,
            "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" => {
                cache = Some(cache.map_or(value, |c: f64| c.max(value)));
            }
            _ => {}
        }
    }
    if running.is_none() && waiting.is_none() && cache.is_none() {
        return None;
    }
    // A server that exposes only some of the three reports 0 requests for the others.
    Some(QueueReport {
        running: Some(running.unwrap_or(0.0)),
        waiting: Some(waiting.unwrap_or(0.0)),
        kv_cache_usage: cache,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:gpu_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.61
vllm:prompt_tokens_total{model_name="x"} 12345.0
"#;

    #[test]
    fn vllm_metrics_are_summed_over_label_sets() {
        let q = parse_vllm_metrics(VLLM).unwrap();
        assert_eq!(q.running, Some(5.0));
        assert_eq!(q.waiting, Some(7.0));
        assert_eq!(q.kv_cache_usage, Some(0.61));
    }

    #[test]
    fn newer_vllm_cache_metric_name_is_understood() {
        let q = parse_vllm_metrics("vllm:kv_cache_usage_perc{a=\"b\"} 0.99\n").unwrap();
        assert_eq!(q.kv_cache_usage, Some(0.99));
        assert_eq!(q.running, Some(0.0));
    }

    #[test]
    fn servers_without_vllm_metrics_report_no_queue() {
        assert_eq!(
            parse_vllm_metrics("# nothing\nprocess_cpu_seconds_total 3\n"),
            None
        );
        assert_eq!(
            parse_vllm_metrics("vllm:num_requests_running garbage\n"),
            None
        );
    }

    #[test]
    fn models_are_read_from_openai_list() {
        let body =
            serde_json::json!({"object": "list", "data": [{"id": "a"}, {"id": "b"}, {"x": 1}]});
        assert_eq!(listed_models(&body), vec!["a", "b"]);
        assert!(listed_models(&serde_json::json!({})).is_empty());
    }
}

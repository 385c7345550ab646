//! Load generator for `scripts/bench-heartbeats`: simulates N agents that each register and then
//! heartbeat every interval (with a random phase, like real agents) against a running control
//! plane, and reports sustained rate, latency percentiles, errors, and the server's CPU and RSS.
//! Only ever talks to the URL it is given; the script gives it a loopback address.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::process_usage;

struct Args {
    url: String,
    admin_token: String,
    nodes: usize,
    interval: Duration,
    duration: Duration,
    server_pid: Option<u32>,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        admin_token: String::new(),
        nodes: 10_000,
        interval: Duration::from_secs(5),
        duration: Duration::from_secs(60),
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--admin-token" => args.admin_token = value,
            "--nodes" => args.nodes = value.parse().expect("--nodes N"),
            "--interval-ms" => {
                args.interval = Duration::from_millis(value.parse().expect("--interval-ms N"))
            }
            "--duration-s" => {
                args.duration = Duration::from_secs(value.parse().expect("--duration-s N"))
            }
            "--server-pid" => args.server_pid = Some(value.parse().expect("--server-pid N")),
            other => panic!("unknown flag {other}"),
        }
    }
    common::assert_loopback(&args.url);
    args
}

async fn setup_node(client: &reqwest::Client, args: &Args, i: usize) -> (String, String) {
    let registration = json!({"provider": "aws", "region": "us-east-1", "model_name": "bench/model",
        "endpoint_url": "http://127.0.0.1:9", "gpu_type": "L4", "instance_type": "g6.xlarge",
        "spot_instance": true});
    common::add_node(
        client,
        &args.url,
        &args.admin_token,
        &format!("bench-{i}"),
        &registration,
    )
    .await
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(512)
        .build()
        .expect("client");

    eprintln!("creating and registering {} nodes...", args.nodes);
    let setup_started = Instant::now();
    let mut nodes = Vec::with_capacity(args.nodes);
    for chunk_start in (0..args.nodes).step_by(64) {
        let batch = (chunk_start..(chunk_start + 64).min(args.nodes)).map(|i| {
            let client = client.clone();
            let args = args.clone();
            tokio::spawn(async move { setup_node(&client, &args, i).await })
        });
        for handle in batch.collect::<Vec<_>>() {
            nodes.push(handle.await.expect("setup task"));
        }
    }
    eprintln!("setup took {:.1} s", setup_started.elapsed().as_secs_f64());

    // Warm-up: one full interval so every node has made its first (status-changing) heartbeat.
    let warmup = args.interval;
    let total = warmup + args.duration;
    let latencies = Arc::new(Mutex::new(Vec::<u32>::with_capacity(1 << 20)));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let measure_from = started + warmup;
    let usage_before = Arc::new(Mutex::new(None));
    if let Some(pid) = args.server_pid {
        let usage_before = usage_before.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *usage_before.lock().unwrap() = process_usage(pid);
        });
    }
    let mut tasks = Vec::with_capacity(nodes.len());
    for (i, (id, token)) in nodes.into_iter().enumerate() {
        let client = client.clone();
        let args = args.clone();
        let latencies = latencies.clone();
        let errors = errors.clone();
        // Spread the agents evenly over the interval, as independent VMs would be.
        let phase = args.interval.mul_f64(i as f64 / args.nodes as f64);
        tasks.push(tokio::spawn(async move {
            let url = format!("{}/admin/nodes/{id}/heartbeat", args.url);
            let mut next = started + phase;
            while next < started + total {
                tokio::time::sleep_until(next.into()).await;
                let t0 = Instant::now();
                let ok = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"health_score": 0.93, "model_server": {"ready": true, "probe_latency_ms": 4.2},
                        "gpu": {"present": true, "name": "NVIDIA L4", "count": 1, "utilization_pct": 41.0,
                            "memory_used_mib": 20100.0, "memory_total_mib": 23034.0, "temperature_c": 61.0},
                        "queue": {"running": 3.0, "waiting": 0.0, "kv_cache_usage": 0.4}}))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if t0 >= measure_from {
                    if ok {
                        latencies.lock().unwrap().push(t0.elapsed().as_micros() as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += args.interval;
            }
        }));
    }
    for t in tasks {
        t.await.expect("agent task");
    }
    let elapsed = args.duration.as_secs_f64();
    let usage_after = args.server_pid.and_then(process_usage);

    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |q: f64| common::quantile_ms(&lat, q);
    let errors = errors.load(Ordering::Relaxed);
    println!("nodes:            {}", args.nodes);
    println!("interval:         {} ms", args.interval.as_millis());
    println!(
        "measured:         {:.0} s (after {} ms warm-up)",
        elapsed,
        warmup.as_millis()
    );
    println!("heartbeats ok:    {}", lat.len());
    println!("errors:           {errors}");
    println!(
        "sustained rate:   {:.0} heartbeats/s",
        lat.len() as f64 / elapsed
    );
    println!("latency p50:      {:.2} ms", pct(0.50));
    println!("latency p99:      {:.2} ms", pct(0.99));
    println!("latency max:      {:.2} ms", pct(1.0));
    let before = *usage_before.lock().unwrap();
    if let (Some((cpu0, _)), Some((cpu1, rss))) = (before, usage_after) {
        println!(
            "server CPU:       {:.0}% of one core",
            (cpu1 - cpu0) / elapsed * 100.0
        );
        println!("server peak RSS:  {rss:.0} MiB");
    }
}

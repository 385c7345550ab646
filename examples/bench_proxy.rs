//! Load generator for `scripts/bench-proxy`: the same small chat completion, sent (a) straight
//! to a model server, (b) through skylaunch's `/v1` load balancer, (c) through nginx set up as
//! an equivalent reverse proxy. The script starts the three servers; this program registers the
//! model server as a ready node, then measures, in one run:
//!
//! 1. saturating throughput with `wrk` (closed loop, keep-alive): requests/s, p50, p99, in
//!    rounds of the three paths in turn (`--rounds`, default 3), the ratios taken per round;
//! 2. latency at a fixed rate of half skylaunch's saturating throughput (open loop: requests
//!    leave on schedule whatever the answers do): p50, p99, p99.9, in rounds too, each proxy's
//!    added p99 taken against the direct path of the same round;
//! 3. time to the first byte of a streaming (`"stream": true`) answer, one request at a time.
//!
//! Only ever talks to the URLs it is given; the script gives it loopback addresses.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{assert_loopback, cpu_times, process_usage, quantile_ms};

const MODEL: &str = "bench/model";
const CHAT_PATH: &str = "/v1/chat/completions";

struct Args {
    direct: String,
    skylaunch: String,
    nginx: String,
    admin_token: String,
    duration: Duration,
    connections: u32,
    ttfb_requests: usize,
    wrk: String,
    skylaunch_pid: Option<u32>,
    nginx_pids: Vec<u32>,
    upstream_pid: Option<u32>,
    /// Fixed rate for part 2 instead of half of skylaunch's saturating throughput.
    rate: Option<f64>,
    /// Which parts to run (default all): `saturate`, `fixed`, `ttfb`.
    parts: Vec<String>,
    /// Rounds of part 1, the three paths in turn in each: a shared machine's speed drifts
    /// within a minute, so one measurement per path says little about their ratio.
    rounds: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        direct: String::new(),
        skylaunch: String::new(),
        nginx: String::new(),
        admin_token: String::new(),
        duration: Duration::from_secs(20),
        connections: 64,
        ttfb_requests: 2000,
        wrk: "wrk".into(),
        skylaunch_pid: None,
        nginx_pids: Vec::new(),
        upstream_pid: None,
        rate: None,
        parts: vec!["saturate".into(), "fixed".into(), "ttfb".into()],
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--direct" => args.direct = value,
            "--skylaunch" => args.skylaunch = value,
            "--nginx" => args.nginx = value,
            "--admin-token" => args.admin_token = value,
            "--duration-s" => {
                args.duration = Duration::from_secs(value.parse().expect("--duration-s N"))
            }
            "--connections" => args.connections = value.parse().expect("--connections N"),
            "--ttfb-requests" => args.ttfb_requests = value.parse().expect("--ttfb-requests N"),
            "--wrk" => args.wrk = value,
            "--skylaunch-pid" => args.skylaunch_pid = Some(value.parse().expect("--skylaunch-pid")),
            "--nginx-pids" => {
                args.nginx_pids = value
                    .split(',')
                    .map(|p| p.parse().expect("--nginx-pids P,P"))
                    .collect()
            }
            "--rate" => args.rate = Some(value.parse().expect("--rate N")),
            "--parts" => args.parts = value.split(',').map(str::to_string).collect(),
            "--upstream-pid" => args.upstream_pid = Some(value.parse().expect("--upstream-pid")),
            "--rounds" => {
                args.rounds = value.parse().expect("--rounds N");
                assert!(args.rounds > 0, "--rounds must be at least 1");
            }
            other => panic!("unknown flag {other}"),
        }
    }
    for url in [&args.direct, &args.skylaunch, &args.nginx] {
        assert_loopback(url);
    }
    args
}

fn chat_body(stream: bool) -> String {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words"}],
        "max_tokens": 16, "stream": stream})
    .to_string()
}

/// Creates a node for MODEL whose model server is `direct`, registers it, and heartbeats it to
/// `ready`; then keeps heartbeating (every 2 s) for as long as the program runs.
async fn register_upstream(client: &reqwest::Client, args: &Args) {
    let registration = json!({"provider": "local", "region": "local", "model_name": MODEL,
        "endpoint_url": args.direct, "gpu_type": "none", "instance_type": "local",
        "spot_instance": false});
    let (id, token) = common::add_node(
        client,
        &args.skylaunch,
        &args.admin_token,
        "bench-upstream",
        &registration,
    )
    .await;
    let heartbeat_url = format!("{}/admin/nodes/{id}/heartbeat", args.skylaunch);
    let heartbeat = {
        let client = client.clone();
        move || {
            client
                .post(&heartbeat_url)
                .bearer_auth(&token)
                .json(&json!({"health_score": 1.0, "model_server": {"ready": true}}))
                .send()
        }
    };
    let r = heartbeat().await.expect("heartbeat");
    assert!(r.status().is_success(), "heartbeat: {}", r.status());
    let node: Value = client
        .get(format!("{}/admin/nodes/{id}", args.skylaunch))
        .bearer_auth(&args.admin_token)
        .send()
        .await
        .expect("get node")
        .json()
        .await
        .expect("node body");
    assert_eq!(
        node["status"], "ready",
        "the bench node is not ready: {node}"
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = heartbeat().await;
        }
    });
}

/// CPU seconds used so far by a set of processes: (user, system).
fn cpu_seconds(pids: &[u32]) -> Option<(f64, f64)> {
    let mut total = (0.0, 0.0);
    for pid in pids {
        let (user, system) = cpu_times(*pid)?;
        total.0 += user;
        total.1 += system;
    }
    Some(total)
}

/// CPU seconds the whole machine spent busy so far (every core: user, system, interrupts), from
/// /proc/stat.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = fields.iter().take(8).sum::<f64>() - fields.get(3)? - fields.get(4)?;
    Some(busy / 100.0)
}

/// Context switches so far of every thread of a set of processes, from /proc.
fn context_switches(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(total)
}

struct Saturated {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// The proxy's (or model server's, for direct) CPU per 1,000 requests: user, system.
    cpu_ms_per_1k: Option<(f64, f64)>,
    /// The whole machine's (load generator, model server, proxy, kernel) per 1,000 requests.
    machine_ms_per_1k: Option<f64>,
    /// The proxy's (or model server's) context switches per request.
    switches_per_request: Option<f64>,
}

/// wrk's latency figures ("1.23ms", "850.00us", "1.02s") in milliseconds.
fn wrk_ms(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        panic!("unexpected wrk latency {text:?}")
    };
    number.parse::<f64>().expect("wrk latency number") * factor
}

fn wrk_field<'a>(output: &'a str, prefix: &str) -> Option<&'a str> {
    output
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

fn saturate(args: &Args, base: &str, script: &std::path::Path, pids: &[u32]) -> Saturated {
    let cpu_before = cpu_seconds(pids);
    let machine_before = machine_busy_seconds();
    let switches_before = context_switches(pids);
    let output = Command::new(&args.wrk)
        .args(["-t1", "--latency", "--timeout", "10s"])
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration.as_secs()))
        .arg("-s")
        .arg(script)
        .arg(format!("{base}{CHAT_PATH}"))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let cpu_after = cpu_seconds(pids);
    let machine_after = machine_busy_seconds();
    let switches_after = context_switches(pids);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "wrk failed: {text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("wrk's request count");
    let errors = wrk_field(&text, "Non-2xx or 3xx responses:")
        .map_or(0, |n| n.parse().expect("wrk non-2xx count"))
        + wrk_field(&text, "Socket errors:").map_or(0, |s| {
            s.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Saturated {
        requests_per_s: wrk_field(&text, "Requests/sec:")
            .and_then(|n| n.parse().ok())
            .expect("wrk's Requests/sec"),
        p50_ms: wrk_ms(wrk_field(&text, "50%").expect("wrk's p50")),
        p99_ms: wrk_ms(wrk_field(&text, "99%").expect("wrk's p99")),
        errors,
        cpu_ms_per_1k: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if requests > 0 => {
                let per_1k = 1000.0 / requests as f64 * 1000.0;
                Some(((b.0 - a.0) * per_1k, (b.1 - a.1) * per_1k))
            }
            _ => None,
        },
        machine_ms_per_1k: match (machine_before, machine_after) {
            (Some(a), Some(b)) if requests > 0 => Some((b - a) * 1000.0 / requests as f64 * 1000.0),
            _ => None,
        },
        switches_per_request: match (switches_before, switches_after) {
            (Some(a), Some(b)) if requests > 0 => Some((b - a) as f64 / requests as f64),
            _ => None,
        },
    }
}

struct Fixed {
    sent: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// Open loop at a fixed rate, as wrk2 does it: `FIXED_CONNECTIONS` keep-alive connections each
/// own every n-th slot of the schedule (request i is due at start + i/rate). A request is sent at
/// its due time, or as soon as its connection is free if it is late. If the previous answer on
/// its connection made it late, its latency counts from its due time: that delay is measured,
/// not hidden (no coordinated omission). The client is a plain HTTP/1.1 writer and reader over
/// tokio's TcpStream, so the generator spends as little CPU as it can.
async fn fixed_rate(base: &str, rate: f64, duration: Duration) -> Fixed {
    const FIXED_CONNECTIONS: u64 = 32;
    let addr = base.trim_start_matches("http://").to_string();
    let body = chat_body(false);
    let request = format!(
        "POST {CHAT_PATH} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..FIXED_CONNECTIONS {
        let (addr, request) = (addr.clone(), request.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut conn: Option<RawConn> = None;
            let mut i = k;
            let mut free_at = start;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                // Late because the previous answer on this connection was late: count from the
                // due time. Late only because the timer wakes on whole milliseconds: count from
                // now (that delay is the generator's, not the system's).
                let from = if free_at > due {
                    due
                } else {
                    tokio::time::Instant::now()
                };
                if conn.is_none() {
                    conn = RawConn::connect(&addr).await;
                }
                let ok = match conn.as_mut() {
                    Some(c) => c.exchange(&request).await,
                    None => false,
                };
                free_at = tokio::time::Instant::now();
                if ok {
                    latencies.push((free_at - from).as_micros() as u32);
                } else {
                    errors += 1;
                    conn = None;
                }
                i += FIXED_CONNECTIONS;
            }
            (latencies, errors)
        });
    }
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.expect("connection task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    Fixed {
        sent: total,
        errors,
        p50_ms: quantile_ms(&lat, 0.50),
        p99_ms: quantile_ms(&lat, 0.99),
        p999_ms: quantile_ms(&lat, 0.999),
    }
}

/// One keep-alive HTTP/1.1 connection that sends a prepared request and reads a response framed
/// by `content-length` (all three paths answer that way).
struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn connect(addr: &str) -> Option<RawConn> {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(RawConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Whether a 2xx response came back in full.
    async fn exchange(&mut self, request: &[u8]) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.write_all(request).await.is_err() {
            return false;
        }
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(head_end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
                let ok = head.starts_with("http/1.1 2");
                let Some(length) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                else {
                    return false;
                };
                let need = head_end + 4 + length;
                while self.buf.len() < need {
                    match self.stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                return ok && self.buf.len() == need;
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Time to the first byte of a streaming answer's body, one request at a time.
async fn ttfb(client: &reqwest::Client, url: &str, n: usize) -> (f64, f64) {
    let body = chat_body(true);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("streaming request");
        assert!(r.status().is_success(), "streaming request: {}", r.status());
        let first = r.chunk().await.expect("first chunk");
        assert!(first.is_some_and(|c| !c.is_empty()), "no first chunk");
        lat.push(t0.elapsed().as_micros() as u32);
        while r.chunk().await.expect("rest of the stream").is_some() {}
    }
    lat.sort_unstable();
    (quantile_ms(&lat, 0.50), quantile_ms(&lat, 0.99))
}

fn warm_up(client: &reqwest::Client, url: &str) -> impl std::future::Future<Output = ()> {
    let client = client.clone();
    let url = url.to_string();
    async move {
        for _ in 0..500 {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(chat_body(false))
                .send()
                .await
                .expect("warm-up request");
            assert!(r.status().is_success(), "warm-up via {url}: {}", r.status());
            r.bytes().await.expect("warm-up answer");
        }
    }
}

type Target = (&'static str, String, Vec<u32>);

/// Part 1; returns skylaunch's saturating throughput (the median of its rounds).
fn saturate_all(args: &Args, targets: &[Target]) -> f64 {
    let script =
        std::env::temp_dir().join(format!("skylaunch-bench-proxy-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{}'\n",
            chat_body(false)
        ),
    )
    .expect("write the wrk script");
    println!(
        "## 1. Saturating throughput (wrk, 1 thread, {} keep-alive connections, {} s each, {} rounds of the three paths in turn)\n",
        args.connections,
        args.duration.as_secs(),
        args.rounds
    );
    println!(
        "| Path | Round | Requests/s | p50 | p99 | Errors | CPU per 1,000 requests (the path's server) | Machine CPU per 1,000 requests | Context switches per request (the path's server) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Requests/s by path, one per round.
    let mut rates = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        for ((label, base, pids), rates) in targets.iter().zip(&mut rates) {
            eprintln!("saturating {label} (round {round})...");
            let s = saturate(args, base, &script, pids);
            println!(
                "| {label} | {round} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} | {} |",
                s.requests_per_s,
                s.p50_ms,
                s.p99_ms,
                s.errors,
                s.cpu_ms_per_1k
                    .map_or("n/a".into(), |(user, system)| format!(
                        "{:.1} ms (user {user:.1}, system {system:.1})",
                        user + system
                    )),
                s.machine_ms_per_1k
                    .map_or("n/a".into(), |c| format!("{c:.0} ms")),
                s.switches_per_request
                    .map_or("n/a".into(), |c| format!("{c:.2}"))
            );
            rates.push(s.requests_per_s);
        }
    }
    let _ = std::fs::remove_file(&script);
    let per_round = |x: usize, y: usize| -> Vec<f64> {
        rates[x].iter().zip(&rates[y]).map(|(x, y)| x / y).collect()
    };
    let listed = |ratios: &[f64]| {
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (b_a, b_c) = (per_round(1, 0), per_round(1, 2));
    println!(
        "\nMedian requests/s: (a) {:.0}, (b) {:.0}, (c) {:.0}",
        median(&rates[0]),
        median(&rates[1]),
        median(&rates[2])
    );
    println!(
        "Throughput ratios (median of the rounds' ratios): b/a = {:.2}, b/c = {:.2}; b/c by round: {}\n",
        median(&b_a),
        median(&b_c),
        listed(&b_c)
    );
    median(&rates[1])
}

/// The middle value (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Part 2.
async fn fixed_all(args: &Args, targets: &[Target], rate: f64) {
    println!(
        "## 2. Latency at a fixed {rate:.0} requests/s, {} s each, {} rounds of the three paths in turn\n",
        args.duration.as_secs(),
        args.rounds
    );
    println!(
        "| Path | Round | Sent | Errors | p50 | p99 | p99.9 | Added p99 over direct (same round) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Added p99 by path (the direct one first, always none), one per round.
    let mut added = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        let mut direct_p99 = None;
        for ((label, base, _), added) in targets.iter().zip(&mut added) {
            eprintln!("fixed rate through {label} (round {round})...");
            let f = fixed_rate(base, rate, args.duration).await;
            let shown = match direct_p99 {
                None => {
                    direct_p99 = Some(f.p99_ms);
                    "-".to_string()
                }
                Some(d) => {
                    added.push(f.p99_ms - d);
                    format!("{:+.2} ms", f.p99_ms - d)
                }
            };
            println!(
                "| {label} | {round} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {shown} |",
                f.sent, f.errors, f.p50_ms, f.p99_ms, f.p999_ms
            );
        }
    }
    println!();
    for ((label, _, _), added) in targets.iter().zip(&added).skip(1) {
        let by_round: Vec<String> = added.iter().map(|a| format!("{a:+.2}")).collect();
        println!(
            "Added p99 of {label}, median of the rounds: {:+.2} ms (by round: {} ms)",
            median(added),
            by_round.join(", ")
        );
    }
}

/// Part 3.
async fn ttfb_all(client: &reqwest::Client, args: &Args, targets: &[Target]) {
    println!(
        "\n## 3. Time to first byte of a streaming answer ({} requests one at a time)\n",
        args.ttfb_requests
    );
    println!("| Path | TTFB p50 | TTFB p99 | Added p50 over direct | Added p99 over direct |");
    println!("|---|---|---|---|---|");
    let mut direct_ttfb = None;
    for (label, base, _) in targets {
        eprintln!("streaming through {label}...");
        let (p50, p99) = ttfb(client, &format!("{base}{CHAT_PATH}"), args.ttfb_requests).await;
        let (added50, added99) = direct_ttfb.map_or(
            ("-".to_string(), "-".to_string()),
            |(d50, d99): (f64, f64)| {
                (
                    format!("{:+.3} ms", p50 - d50),
                    format!("{:+.3} ms", p99 - d99),
                )
            },
        );
        direct_ttfb.get_or_insert((p50, p99));
        println!("| {label} | {p50:.3} ms | {p99:.3} ms | {added50} | {added99} |");
    }
}

#[tokio::main]
async fn main() {
    // `bench_proxy echo-server ADDR`: the model server of the benchmark. It runs from this
    // program, not from the skylaunch binary, so that it stays the same whatever skylaunch is
    // built with (its allocator above all): only the proxy under test changes between runs.
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("echo-server") {
        let listen = argv
            .next()
            .and_then(|a| a.parse().ok())
            .expect("echo-server 127.0.0.1:PORT");
        assert_loopback(&format!("http://{listen}"));
        skylaunch::echo_server::serve(listen, MODEL, None, None, Default::default())
            .await
            .expect("the echo model server runs");
        return;
    }
    let args = parse_args();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .no_proxy()
        .build()
        .expect("client");
    register_upstream(&client, &args).await;

    let targets: Vec<Target> = vec![
        (
            "(a) direct",
            args.direct.clone(),
            args.upstream_pid.into_iter().collect(),
        ),
        (
            "(b) skylaunch",
            args.skylaunch.clone(),
            args.skylaunch_pid.into_iter().collect(),
        ),
        ("(c) nginx", args.nginx.clone(), args.nginx_pids.clone()),
    ];
    for (label, base, _) in &targets {
        eprintln!("warming up {label}...");
        warm_up(&client, &format!("{base}{CHAT_PATH}")).await;
    }

    let wants = |part: &str| args.parts.iter().any(|p| p == part);
    let mut rate = args.rate;
    if wants("saturate") {
        let saturated = saturate_all(&args, &targets);
        rate = rate.or(Some((saturated / 2.0).round().max(1.0)));
    }
    if wants("fixed") {
        let rate = rate.expect("--rate N, or run the saturate part first");
        fixed_all(&args, &targets, rate).await;
    }
    if wants("ttfb") {
        ttfb_all(&client, &args, &targets).await;
    }
    if let Some(pid) = args.skylaunch_pid {
        if let Some((_, rss)) = process_usage(pid) {
            println!("\nskylaunch peak RSS: {rss:.0} MiB");
        }
    }
}

//! What the benchmark load generators share.

use serde_json::{json, Value};

/// CPU seconds a process spent in user space and in the kernel, from /proc.
pub fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? / 100.0, ticks(12)? / 100.0))
}

/// CPU seconds (user + system) and peak RSS in MiB of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let (user, system) = cpu_times(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((user + system, hwm_kib / 1024.0))
}

/// Panics unless `url` is a loopback address: the benchmarks never leave the machine.
pub fn assert_loopback(url: &str) {
    assert!(
        url.starts_with("http://127.") || url.starts_with("http://[::1]"),
        "loopback only: {url}"
    );
}

/// The value at quantile `q` (0..=1) of sorted microsecond samples, in milliseconds.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * q) as usize).min(sorted_us.len() - 1);
    f64::from(sorted_us[i]) / 1000.0
}

/// Creates a node through the admin API and registers it with `registration` as its agent
/// would; returns its id and token.
pub async fn add_node(
    client: &reqwest::Client,
    url: &str,
    admin_token: &str,
    name: &str,
    registration: &Value,
) -> (String, String) {
    let created: Value = client
        .post(format!("{url}/admin/nodes"))
        .bearer_auth(admin_token)
        // The benchmarks' model servers run on this machine, on loopback: nodes of the local
        // provider, the only ones whose agents may register a loopback endpoint.
        .json(&json!({"name": name, "model_name": registration["model_name"], "provider": "local"}))
        .send()
        .await
        .expect("create node")
        .json()
        .await
        .expect("create node body");
    let id = created["node_id"].as_str().expect("node_id").to_string();
    let token = created["token"].as_str().expect("token").to_string();
    let r = client
        .post(format!("{url}/admin/nodes/register?node_id={id}"))
        .bearer_auth(&token)
        .json(registration)
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success(), "register: {}", r.status());
    (id, token)
}

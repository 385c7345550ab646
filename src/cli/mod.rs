//! The client commands of the `skylaunch` binary: `launch` (with `--follow`, a live stage display
//! and the plain-words error at the end), `jobs` and `nodes` here; `deploy`, `deployments`,
//! `actions` and `doctor` in their modules. They talk to a running control plane through its REST API, like
//! any script would.

mod actions;
mod deploy;
mod deployments;
mod doctor;

pub use actions::{actions, ActionsArgs, ActionsCommand};
pub use deploy::{deploy, DeployArgs};
pub use deployments::{deployments, DeploymentsArgs, DeploymentsCommand};
pub use doctor::{doctor, DoctorArgs};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::{json, Value};

// Global: commands with subcommands take them after the subcommand too (`deployments show NAME
// --url …`).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The control plane's address.
    #[arg(
        long,
        global = true,
        env = "SKYLAUNCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Admin token (default: read from <data-dir>/admin-token).
    #[arg(
        long,
        global = true,
        env = "SKYLAUNCH_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Where `skylaunch serve` keeps its generated admin token.
    #[arg(
        long,
        global = true,
        env = "SKYLAUNCH_DATA_DIR",
        default_value = "./skylaunch-data"
    )]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Hugging Face model id, e.g. meta-llama/Llama-3.1-8B-Instruct.
    #[arg(long)]
    pub model: String,
    /// skypilot, aws, azure, ssh (a host you registered) or local (this machine, with the echo model server: no cloud needed).
    #[arg(long, default_value = "local")]
    pub provider: String,
    /// Model server template: vllm (default) or echo (local and ssh only).
    #[arg(long)]
    pub template: Option<String>,
    /// With --provider ssh: only hosts carrying this label, KEY=VALUE (repeat).
    #[arg(long = "label", value_parser = parse_env)]
    pub labels: Vec<(String, String)>,
    /// GPU type, e.g. L4, A10G, A100-80GB, H100.
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long)]
    pub gpu_count: Option<u32>,
    /// Use spot instances.
    #[arg(long)]
    pub spot: bool,
    /// With --spot: try on-demand when no spot capacity is found.
    #[arg(long)]
    pub fallback_on_demand: bool,
    /// Region to try, in order (repeat for several).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    #[arg(long)]
    pub cloud: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub disk_gb: Option<u32>,
    /// Environment for the model server, KEY=VALUE (repeat), e.g. HF_TOKEN=...
    #[arg(long = "env", value_parser = parse_env)]
    pub envs: Vec<(String, String)>,
    /// Show the stages live and wait for the outcome (exit code 1 if the launch fails).
    #[arg(long)]
    pub follow: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

pub struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client, String> {
        let token = match &args.admin_token {
            Some(t) => t.clone(),
            None => {
                let file = args.data_dir.join("admin-token");
                std::fs::read_to_string(&file).map(|t| t.trim().to_string()).map_err(|e| {
                    format!("no admin token: set SKYLAUNCH_ADMIN_TOKEN or --admin-token ({} could not be read: {e})", file.display())
                })?
            }
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?,
            url: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Sends the request; answers its status and JSON body (null when it has none), or why the
    /// control plane could not be reached.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(StatusCode, Value), String> {
        let res = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("cannot reach the control plane at {}: {e}", self.url))?;
        let status = res.status();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let (status, body) = self.send(req).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(error_text(status, &body))
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// A GET that answers `None` for a 404 (it does not exist) rather than an error.
    pub async fn find(&self, path: &str) -> Result<Option<Value>, String> {
        let (status, body) = self
            .send(self.http.get(format!("{}{path}", self.url)))
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(body)),
            s => Err(error_text(s, &body)),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(self.http.put(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, String> {
        self.call(self.http.delete(format!("{}{path}", self.url)))
            .await
    }
}

/// An API error answer in plain words: its message, its code, and the suggestions it carries.
fn error_text(status: StatusCode, body: &Value) -> String {
    let error = &body["error"];
    let mut text = format!(
        "{} ({})",
        error["message"].as_str().unwrap_or("request failed"),
        error["code"].as_str().unwrap_or(status.as_str())
    );
    if let Some(s) = error["suggestions"].as_array().filter(|s| !s.is_empty()) {
        let list: Vec<&str> = s.iter().filter_map(Value::as_str).collect();
        text.push_str(&format!("\n  did you mean: {}", list.join(", ")));
    }
    text
}

/// An API path from its segments, each percent-encoded: a name typed on the command line
/// cannot reach another route.
fn api_path(segments: &[&str]) -> String {
    let mut url = url::Url::parse("http://localhost/").expect("a valid base URL");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .extend(segments);
    url.path().to_string()
}

/// Prints the API's JSON as it came, for `--json`.
fn print_json(body: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(body).expect("a JSON value serialises")
    );
}

/// A spinner for a command that waits, and a way to print lines beside it.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn start() -> Progress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// Without a terminal the spinner is hidden, and so would be its println: print plainly.
    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

pub async fn launch(args: LaunchArgs) -> Result<bool, String> {
    let client = Client::new(&args.client)?;
    let envs: BTreeMap<String, String> = args.envs.into_iter().collect();
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let mut body = json!({"model": args.model, "provider": args.provider, "use_spot": args.spot,
        "spot_fallback": if args.fallback_on_demand { "on_demand" } else { "none" }, "regions": args.regions, "envs": envs});
    if !labels.is_empty() {
        body["labels"] = json!(labels);
    }
    for (key, value) in [
        ("template", json!(args.template)),
        ("gpu", json!(args.gpu)),
        ("gpu_count", json!(args.gpu_count)),
        ("cloud", json!(args.cloud)),
        ("name", json!(args.name)),
        ("disk_gb", json!(args.disk_gb)),
    ] {
        if !value.is_null() {
            body[key] = value;
        }
    }
    let job = client.post("/admin/launch-jobs", &body).await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    println!(
        "launch job {id} queued (node {})",
        job["node_id"].as_str().unwrap_or("?")
    );
    if !args.follow {
        println!(
            "follow it with: skylaunch launch … --follow, or GET /admin/launch-jobs/{id}/events"
        );
        return Ok(true);
    }
    follow(&client, &id).await
}

/// Streams the job's events, showing each stage as it happens; returns whether it succeeded.
async fn follow(client: &Client, id: &str) -> Result<bool, String> {
    let progress = Progress::start();
    let bar = &progress.bar;
    let mut res = client
        .http
        .get(format!("{}/admin/launch-jobs/{id}/events", client.url))
        .bearer_auth(&client.token)
        .send()
        .await
        .map_err(|e| format!("cannot follow the job: {e}"))?;
    let say = |line: String| progress.say(line);
    let mut buffer = String::new();
    let mut shown_done: Vec<String> = Vec::new();
    let mut attempts_shown = 0;
    let mut last_job = Value::Null;
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("the event stream broke: {e}"))?
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = if k == "job" {
                        "job"
                    } else if k == "stage" {
                        "stage"
                    } else if k == "attempt" {
                        "attempt"
                    } else {
                        "other"
                    };
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let Ok(value) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let stages = match kind {
                "job" => {
                    last_job = value.clone();
                    value["stages"].clone()
                }
                "stage" => value["stages"].clone(),
                "attempt" => {
                    for a in value["attempts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .skip(attempts_shown)
                    {
                        say(format!(
                            "  attempt: {} {} {} {} {}",
                            a["cloud"].as_str().unwrap_or(""),
                            a["region"].as_str().unwrap_or(""),
                            a["zone"].as_str().unwrap_or(""),
                            a["instance_type"].as_str().unwrap_or(""),
                            a["market"].as_str().unwrap_or("")
                        ));
                        attempts_shown += 1;
                    }
                    continue;
                }
                _ => continue,
            };
            for s in stages.as_array().into_iter().flatten() {
                let name = s["name"].as_str().unwrap_or("").to_string();
                match s["state"].as_str() {
                    Some("done") if !shown_done.contains(&name) => {
                        say(format!("✓ {name}"));
                        shown_done.push(name);
                    }
                    Some("active") => {
                        bar.set_message(format!("{name}: {}", s["detail"].as_str().unwrap_or("…")))
                    }
                    _ => {}
                }
            }
        }
    }
    bar.finish_and_clear();
    let job = if last_job["status"].is_string() {
        last_job
    } else {
        client.get(&format!("/admin/launch-jobs/{id}")).await?
    };
    match job["status"].as_str() {
        Some("succeeded") => {
            println!("✓ node {} is ready", job["node_id"].as_str().unwrap_or("?"));
            Ok(true)
        }
        status => {
            let e = &job["error"];
            eprintln!(
                "✗ launch {}: {}",
                status.unwrap_or("ended"),
                e["title"].as_str().unwrap_or("no reason given")
            );
            eprintln!("  {}", e["message"].as_str().unwrap_or(""));
            for s in e["suggestions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                eprintln!("  → {s}");
            }
            eprintln!(
                "  (code {}; full output: GET /admin/launch-jobs/{id}/logs)",
                e["code"].as_str().unwrap_or("?")
            );
            Ok(false)
        }
    }
}

pub async fn jobs(args: ClientArgs) -> Result<bool, String> {
    let body = Client::new(&args)?.get("/admin/launch-jobs").await?;
    println!(
        "{:<38} {:<10} {:<20} {:<10} {:<30} ERROR",
        "ID", "STATUS", "STAGE", "PROVIDER", "MODEL"
    );
    for j in body["jobs"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:<10} {:<20} {:<10} {:<30} {}",
            j["id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["stage"].as_str().unwrap_or("-"),
            j["provider"].as_str().unwrap_or(""),
            j["spec"]["model"].as_str().unwrap_or(""),
            j["error"]["code"].as_str().unwrap_or("")
        );
    }
    Ok(true)
}

pub async fn nodes(args: ClientArgs) -> Result<bool, String> {
    let body = Client::new(&args)?.get("/admin/nodes").await?;
    println!(
        "{:<38} {:<28} {:<11} {:<7} {:<10} ENDPOINT",
        "ID", "NAME", "STATUS", "HEALTH", "GPU"
    );
    for n in body["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:<28} {:<11} {:<7} {:<10} {}",
            n["id"].as_str().unwrap_or(""),
            n["name"].as_str().unwrap_or(""),
            n["status"].as_str().unwrap_or(""),
            n["health_score"]
                .as_f64()
                .map(|h| format!("{h:.2}"))
                .unwrap_or_else(|| "-".into()),
            n["gpu_type"].as_str().unwrap_or("-"),
            n["endpoint_url"].as_str().unwrap_or("-")
        );
    }
    Ok(true)
}

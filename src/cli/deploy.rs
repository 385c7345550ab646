//! `skylaunch deploy`: a deployment's full spec from flags or from a YAML/JSON file (the REST
//! body's fields; flags override the file's), created when the name is new and replaced when it
//! exists, then with `--wait` followed until it serves.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::{api_path, parse_env, Client, ClientArgs, Progress};
use crate::deploy::spec::DeploymentRequest;

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A YAML or JSON file with the deployment's fields, as in the REST body (`-` reads stdin);
    /// flags given with it override its fields.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Lowercase letters, digits and '-'; deploying the same name again updates it.
    #[arg(long)]
    pub name: Option<String>,
    /// Hugging Face model id, e.g. meta-llama/Llama-3.1-8B-Instruct.
    #[arg(long)]
    pub model: Option<String>,
    /// skypilot, aws, azure, ssh or local (the default, as for `launch`).
    #[arg(long)]
    pub provider: Option<String>,
    /// GPU type, e.g. L4, A10G, A100-80GB, H100.
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long)]
    pub gpu_count: Option<u32>,
    /// Region to try, in order (repeat for several; replaces the file's list).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    #[arg(long)]
    pub cloud: Option<String>,
    /// Model server template (default vllm; echo for local and ssh).
    #[arg(long)]
    pub template: Option<String>,
    /// With --provider ssh: replicas only on hosts carrying this label, KEY=VALUE (repeat;
    /// replaces the file's labels).
    #[arg(long = "label", value_parser = parse_env)]
    pub labels: Vec<(String, String)>,
    #[arg(long)]
    pub disk_gb: Option<u32>,
    /// Environment for the model servers, KEY=VALUE (repeat; adds to the file's envs).
    #[arg(long = "env", value_parser = parse_env)]
    pub envs: Vec<(String, String)>,
    /// How many ready replicas to keep.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Run replicas on spot VMs.
    #[arg(long)]
    pub spot: bool,
    /// With --spot: the first K replicas always run on on-demand VMs.
    #[arg(long, value_name = "K")]
    pub base_on_demand: Option<u32>,
    /// With --spot: a spot replica that cannot be placed runs on on-demand instead.
    #[arg(long)]
    pub fallback_on_demand: bool,
    /// Replicas of a new revision launched beyond --replicas at a time (default 1).
    #[arg(long)]
    pub max_surge: Option<u32>,
    /// Ready replicas a rolling update may take away at a time (default 0).
    #[arg(long)]
    pub max_unavailable: Option<u32>,
    /// An action that waits for an admin's approval: on_demand_fallback, launch_replica,
    /// replace_replica, drain_replica or terminate_replica (repeat; replaces the file's list).
    #[arg(long = "guard", value_name = "KIND")]
    pub guarded: Vec<String>,
    /// A launch that would take the estimated cost above this many US dollars an hour waits for
    /// approval.
    #[arg(long, value_name = "USD")]
    pub max_hourly_usd: Option<f64>,
    /// Follow the deployment until it serves (exit code 1 if it is unsatisfiable or its rollout
    /// fails).
    #[arg(long)]
    pub wait: bool,
}

pub async fn deploy(args: DeployArgs) -> Result<bool, String> {
    let spec = spec_of(&args)?;
    let client = Client::new(&args.client)?;
    let path = api_path(&["admin", "deployments", &spec.name]);
    let body = json!(spec);
    let view = match client.find(&path).await? {
        None => {
            let view = client.post("/admin/deployments", &body).await?;
            println!(
                "created deployment {} (revision {})",
                spec.name, view["revision"]
            );
            view
        }
        Some(before) => {
            let view = client.put(&path, &body).await?;
            if view["revision"] != before["revision"] {
                println!(
                    "updated deployment {}: new revision {} (what replicas run changed: a rolling update replaces them)",
                    spec.name, view["revision"]
                );
            } else {
                println!(
                    "updated deployment {}: still revision {} (what replicas run did not change)",
                    spec.name, view["revision"]
                );
            }
            view
        }
    };
    if !args.wait {
        println!("{}", summary(&view));
        println!(
            "follow it with: skylaunch deployments show {}, or skylaunch deploy … --wait",
            spec.name
        );
        return Ok(true);
    }
    wait(&client, &path).await
}

/// The spec to send: the file's fields (if any), each flag given put over them, then read as
/// the API's request type so a misspelt field is caught here, naming the file.
fn spec_of(args: &DeployArgs) -> Result<DeploymentRequest, String> {
    let mut body = match &args.file {
        Some(file) => read_spec_file(file)?,
        None => json!({}),
    };
    let labels: std::collections::BTreeMap<&String, &String> =
        args.labels.iter().map(|(k, v)| (k, v)).collect();
    let flags: [(&[&str], Option<Value>); 18] = [
        (&["name"], args.name.as_ref().map(|v| json!(v))),
        (&["model"], args.model.as_ref().map(|v| json!(v))),
        (&["provider"], args.provider.as_ref().map(|v| json!(v))),
        (&["gpu"], args.gpu.as_ref().map(|v| json!(v))),
        (&["gpu_count"], args.gpu_count.map(|v| json!(v))),
        (
            &["regions"],
            (!args.regions.is_empty()).then(|| json!(args.regions)),
        ),
        (&["cloud"], args.cloud.as_ref().map(|v| json!(v))),
        (&["template"], args.template.as_ref().map(|v| json!(v))),
        (&["labels"], (!labels.is_empty()).then(|| json!(labels))),
        (&["disk_gb"], args.disk_gb.map(|v| json!(v))),
        (&["replicas"], args.replicas.map(|v| json!(v))),
        (
            &["spot", "use_spot"],
            args.spot.then_some(Value::Bool(true)),
        ),
        (
            &["spot", "base_on_demand"],
            args.base_on_demand.map(|v| json!(v)),
        ),
        (
            &["spot", "fallback"],
            args.fallback_on_demand.then(|| json!("on_demand")),
        ),
        (&["update", "max_surge"], args.max_surge.map(|v| json!(v))),
        (
            &["update", "max_unavailable"],
            args.max_unavailable.map(|v| json!(v)),
        ),
        (
            &["approval", "guarded"],
            (!args.guarded.is_empty()).then(|| json!(args.guarded)),
        ),
        (
            &["approval", "max_hourly_usd"],
            args.max_hourly_usd.map(|v| json!(v)),
        ),
    ];
    for (field, value) in flags {
        if let Some(value) = value {
            set_field(&mut body, field, value)?;
        }
    }
    for (key, value) in &args.envs {
        set_field(&mut body, &["envs", key], json!(value))?;
    }
    if is_absent(&body, "provider") {
        body["provider"] = json!("local");
    }
    serde_json::from_value(body).map_err(|e| {
        let e = e.to_string();
        let file = args.file.as_ref().map(|f| f.display());
        // A missing field (found after any misspelt one) is named with its flag.
        for (field, flag) in [
            ("name", "--name NAME"),
            ("model", "--model MODEL"),
            ("replicas", "--replicas N"),
        ] {
            if e.starts_with(&format!("missing field `{field}`")) {
                return match &file {
                    Some(file) => format!(
                        "the deployment has no {field}: give {flag} or `{field}:` in {file}"
                    ),
                    None => format!("the deployment has no {field}: give {flag}"),
                };
            }
        }
        match &file {
            Some(file) => format!("{file}: {e}"),
            None => format!("the deployment is not valid: {e}"),
        }
    })
}

fn is_absent(body: &Value, field: &str) -> bool {
    body.get(field).is_none_or(Value::is_null)
}

/// A deployment file: YAML, or JSON when its name ends in `.json`; `-` is stdin (YAML, which
/// reads JSON too).
fn read_spec_file(file: &Path) -> Result<Value, String> {
    let name = file.display();
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|e| format!("cannot read the deployment from stdin: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?
    };
    let mut value: Value = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{name} is not valid JSON: {e}"))?
    } else {
        serde_norway::from_str(&text).map_err(|e| format!("{name} is not valid YAML: {e}"))?
    };
    if !value.is_object() {
        return Err(format!(
            "{name}: expected the deployment's fields (name, model, provider, replicas, …), found no mapping"
        ));
    }
    // `MAX_MODEL_LEN: 8192` in YAML is a number; the model server gets text either way.
    if let Some(envs) = value.get_mut("envs").and_then(Value::as_object_mut) {
        for v in envs.values_mut() {
            if v.is_number() || v.is_boolean() {
                *v = json!(v.to_string());
            }
        }
    }
    Ok(value)
}

/// Sets `body.a.b` to `value`, making `a` a mapping when absent; refuses to replace a
/// non-mapping `a` the file gave.
fn set_field(body: &mut Value, field: &[&str], value: Value) -> Result<(), String> {
    let (last, parents) = field.split_last().expect("a field path is never empty");
    let mut at = body;
    for (depth, key) in parents.iter().enumerate() {
        if is_absent(at, key) {
            at[*key] = json!({});
        }
        at = &mut at[*key];
        if !at.is_object() {
            return Err(format!(
                "`{}` in the file must be a mapping of fields",
                parents[..=depth].join(".")
            ));
        }
    }
    at[*last] = value;
    Ok(())
}

/// One line: the deployment's name, revision, status and ready replicas.
pub(super) fn summary(d: &Value) -> String {
    format!(
        "deployment {}: revision {}, {}, {}/{} replicas ready",
        d["name"].as_str().unwrap_or("?"),
        d["revision"],
        d["status"].as_str().unwrap_or("?"),
        d["replicas"]["ready"],
        d["replicas"]["desired"]
    )
}

/// How far it got: status, ready/desired, what is under way, and what waits for an admin.
fn progress_line(d: &Value) -> String {
    let r = &d["replicas"];
    let mut line = format!(
        "{}: {}/{} ready",
        d["status"].as_str().unwrap_or("?"),
        r["ready"],
        r["desired"]
    );
    for key in ["launching", "draining"] {
        if r[key].as_u64().is_some_and(|n| n > 0) {
            line.push_str(&format!(", {} {key}", r[key]));
        }
    }
    // During a rolling update the ready count includes replicas of the revision being replaced.
    let outdated = d["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["revision"] != d["revision"])
        .count();
    if outdated > 0 {
        line.push_str(&format!(", {outdated} of an earlier revision"));
    }
    if let Some(n) = d["pending_actions"].as_u64().filter(|n| *n > 0) {
        line.push_str(&format!(
            ", {n} action(s) waiting for approval (skylaunch actions)"
        ));
    }
    line
}

/// Polls the deployment until it serves; each change of its progress is printed. `Ok(false)`
/// when it cannot get there by itself (unsatisfiable, failed rollout, deleted).
async fn wait(client: &Client, path: &str) -> Result<bool, String> {
    let progress = Progress::start();
    let mut shown = String::new();
    loop {
        let d = client.get(path).await?;
        let line = progress_line(&d);
        if line != shown {
            progress.say(format!("  {line}"));
            progress.bar.set_message(line.clone());
            shown = line;
        }
        let name = d["name"].as_str().unwrap_or("?");
        match d["status"].as_str() {
            Some("serving") => {
                progress.bar.finish_and_clear();
                println!("✓ {}", summary(&d));
                return Ok(true);
            }
            Some(status @ ("unsatisfiable" | "rollout_failed" | "deleting")) => {
                progress.bar.finish_and_clear();
                let what = match status {
                    "unsatisfiable" => "cannot be placed (unsatisfiable)",
                    "rollout_failed" => "stopped its rollout (rollout_failed)",
                    _ => "is being deleted",
                };
                eprintln!(
                    "✗ deployment {name} {what}: {}",
                    d["reason"].as_str().unwrap_or("no reason given")
                );
                match status {
                    "unsatisfiable" => eprintln!(
                        "  it tries again by itself at {}; `skylaunch deployments retry {name}` tries now",
                        d["unsatisfiable_until"].as_str().unwrap_or("the end of its back-off")
                    ),
                    "rollout_failed" => eprintln!(
                        "  fix the spec and deploy again, `skylaunch deployments rollback {name}`, or `skylaunch deployments retry {name}`"
                    ),
                    _ => {}
                }
                return Ok(false);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

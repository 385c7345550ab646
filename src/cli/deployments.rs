//! `skylaunch deployments`: the list, one deployment with its replicas (`show`), and thin
//! wrappers over the API's scale, retry, rollback and delete.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::deploy::summary;
use super::{api_path, print_json, Client, ClientArgs};

#[derive(Args, Debug, Clone)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Without one: list the deployments.
    #[command(subcommand)]
    pub command: Option<DeploymentsCommand>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DeploymentsCommand {
    /// One deployment: its status, replica counts, cost, and a table of its replicas.
    Show {
        /// The deployment's name.
        name: String,
    },
    /// Set the replica count (no new revision).
    Scale {
        /// The deployment's name.
        name: String,
        /// How many ready replicas to keep.
        replicas: u32,
    },
    /// Clear the back-off of an unsatisfiable deployment (or a failed rollout) and try again now.
    Retry {
        /// The deployment's name.
        name: String,
    },
    /// Go back to what the previous revision ran (as a new revision).
    Rollback {
        /// The deployment's name.
        name: String,
    },
    /// Delete it: its replicas are drained, then terminated, and it disappears.
    Delete {
        /// The deployment's name.
        name: String,
    },
}

pub async fn deployments(args: DeploymentsArgs) -> Result<bool, String> {
    let client = Client::new(&args.client)?;
    let path = |name: &str, verb: Option<&str>| {
        let mut segments = vec!["admin", "deployments", name];
        segments.extend(verb);
        api_path(&segments)
    };
    let (view, done) = match args.command {
        None => {
            let body = client.get("/admin/deployments").await?;
            if args.json {
                print_json(&body);
            } else {
                print_list(&body);
            }
            return Ok(true);
        }
        Some(DeploymentsCommand::Show { name }) => {
            let d = client.get(&path(&name, None)).await?;
            if args.json {
                print_json(&d);
            } else {
                print_one(&d);
            }
            return Ok(true);
        }
        Some(DeploymentsCommand::Scale { name, replicas }) => (
            client
                .post(
                    &path(&name, Some("scale")),
                    &json!({ "replicas": replicas }),
                )
                .await?,
            format!(
                "scaling to {replicas} {}",
                if replicas == 1 { "replica" } else { "replicas" }
            ),
        ),
        Some(DeploymentsCommand::Retry { name }) => (
            client.post(&path(&name, Some("retry")), &json!({})).await?,
            "back-off cleared: trying again now".to_string(),
        ),
        Some(DeploymentsCommand::Rollback { name }) => {
            let d = client
                .post(&path(&name, Some("rollback")), &json!({}))
                .await?;
            let done = format!(
                "rolled back: revision {} runs what the previous revision ran",
                d["revision"]
            );
            (d, done)
        }
        Some(DeploymentsCommand::Delete { name }) => (
            client.delete(&path(&name, None)).await?,
            "deleting: its replicas are drained, then terminated; it disappears when none is left"
                .to_string(),
        ),
    };
    if args.json {
        print_json(&view);
    } else {
        println!(
            "deployment {}: {done}",
            view["name"].as_str().unwrap_or("?")
        );
        println!("{}", summary(&view));
    }
    Ok(true)
}

fn print_list(body: &Value) {
    let list = body["deployments"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if list.is_empty() {
        println!("no deployments (create one with: skylaunch deploy --name NAME --model MODEL --replicas N)");
        return;
    }
    println!(
        "{:<28} {:<15} {:<7} {:<5} {:<8} REASON",
        "NAME", "STATUS", "READY", "REV", "$/H"
    );
    for d in list {
        println!(
            "{:<28} {:<15} {:<7} {:<5} {:<8} {}",
            d["name"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or(""),
            format!("{}/{}", d["replicas"]["ready"], d["replicas"]["desired"]),
            d["revision"].to_string(),
            dollars(&d["hourly_usd"]),
            d["reason"].as_str().unwrap_or("")
        );
    }
}

fn print_one(d: &Value) {
    let spec = &d["spec"];
    let r = &d["replicas"];
    let name = d["name"].as_str().unwrap_or("?");
    println!(
        "deployment {name}: revision {}, {}",
        d["revision"],
        d["status"].as_str().unwrap_or("?")
    );
    let gpu = match spec["gpu"].as_str() {
        Some(gpu) => format!(", {}x {gpu}", spec["gpu_count"].as_u64().unwrap_or(1)),
        None => String::new(),
    };
    println!(
        "  model     {} on {}{gpu}",
        spec["model"].as_str().unwrap_or("?"),
        spec["provider"].as_str().unwrap_or("?")
    );
    println!(
        "  replicas  {}/{} ready, {} launching, {} draining",
        r["ready"], r["desired"], r["launching"], r["draining"]
    );
    println!("  cost      ${}/h (estimated)", dollars(&d["hourly_usd"]));
    if let Some(reason) = d["reason"].as_str() {
        println!("  reason    {reason}");
    }
    if let Some(until) = d["unsatisfiable_until"].as_str() {
        println!("  retry at  {until} (skylaunch deployments retry {name}: now)");
    }
    if let Some(n) = d["pending_actions"].as_u64().filter(|n| *n > 0) {
        println!("  pending   {n} action(s) waiting for approval (skylaunch actions)");
    }
    println!("  updated   {}", d["updated_at"].as_str().unwrap_or("?"));
    println!();
    let nodes = d["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    if nodes.is_empty() {
        println!("no replicas running");
        return;
    }
    println!(
        "{:<5} {:<40} {:<16} {:<4} {:<10} HEALTH",
        "SLOT", "NODE", "STATUS", "REV", "MARKET"
    );
    for n in nodes {
        println!(
            "{:<5} {:<40} {:<16} {:<4} {:<10} {}",
            n["slot"].as_i64().map_or("-".into(), |s| s.to_string()),
            n["name"].as_str().unwrap_or(""),
            n["status"].as_str().unwrap_or(""),
            n["revision"].as_i64().map_or("-".into(), |r| r.to_string()),
            n["market"].as_str().unwrap_or(""),
            n["health_score"]
                .as_f64()
                .map(|h| format!("{h:.2}"))
                .unwrap_or_else(|| "-".into())
        );
    }
}

fn dollars(usd: &Value) -> String {
    usd.as_f64()
        .map_or_else(|| "-".into(), |usd| format!("{usd:.2}"))
}

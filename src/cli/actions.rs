//! `skylaunch actions`: what the deployments' reconciler does or wants to do (pending ones by
//! default), and approving or rejecting a guarded action that waits for an admin.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{api_path, print_json, Client, ClientArgs};

#[derive(Args, Debug, Clone)]
pub struct ActionsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Which to list: pending, all, or one state (approved, running, completed, failed,
    /// rejected, cancelled).
    #[arg(long, default_value = "pending")]
    pub state: String,
    /// Without one: list the actions.
    #[command(subcommand)]
    pub command: Option<ActionsCommand>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ActionsCommand {
    /// Let a pending action run now.
    Approve {
        /// The action's id (act-…), from `skylaunch actions`.
        id: String,
    },
    /// Refuse a pending action; the reconciler does not run it.
    Reject {
        /// The action's id (act-…), from `skylaunch actions`.
        id: String,
    },
}

pub async fn actions(args: ActionsArgs) -> Result<bool, String> {
    let client = Client::new(&args.client)?;
    let (id, verb, done) = match args.command {
        None => return list(&client, &args.state, args.json).await,
        Some(ActionsCommand::Approve { id }) => (id, "approve", "approved: it runs now"),
        Some(ActionsCommand::Reject { id }) => (id, "reject", "rejected: it will not run"),
    };
    let action = client
        .post(&api_path(&["admin", "actions", &id, verb]), &json!({}))
        .await?;
    if args.json {
        print_json(&action);
    } else {
        println!(
            "action {id} ({} of deployment {}) {done}",
            action["kind"].as_str().unwrap_or("?"),
            action["deployment"].as_str().unwrap_or("?")
        );
    }
    Ok(true)
}

async fn list(client: &Client, state: &str, json: bool) -> Result<bool, String> {
    let path = match state {
        "all" => "/admin/actions".to_string(),
        state => format!(
            "/admin/actions?state={}",
            url::form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>()
        ),
    };
    let body = client.get(&path).await?;
    if json {
        print_json(&body);
        return Ok(true);
    }
    let list = body["actions"].as_array().map_or(&[][..], Vec::as_slice);
    if list.is_empty() {
        match state {
            "all" => println!("no actions"),
            "pending" => println!("no pending actions: nothing waits for approval"),
            state => println!("no {state} actions"),
        }
        return Ok(true);
    }
    println!(
        "{:<28} {:<20} {:<17} {:<17} {:<7} {:<9} REASON",
        "ID", "DEPLOYMENT", "KIND", "DRIFT", "RISK", "STATE"
    );
    for a in list {
        println!(
            "{:<28} {:<20} {:<17} {:<17} {:<7} {:<9} {}",
            a["id"].as_str().unwrap_or(""),
            a["deployment"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or(""),
            a["drift"].as_str().unwrap_or(""),
            a["risk"].as_str().unwrap_or(""),
            a["state"].as_str().unwrap_or(""),
            a["reason"].as_str().unwrap_or("")
        );
    }
    Ok(true)
}

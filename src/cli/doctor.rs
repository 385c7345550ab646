//! `skylaunch doctor`: whether each provider can launch from this machine with these settings,
//! and for each that cannot, why and what to do. It reads the same flags and environment as
//! `skylaunch serve` and checks in-process (no control plane needs to run). Exit code 1 when
//! nothing but the local provider can launch.

use clap::Args;

use crate::config::ServeConfig;
use crate::launch::providers::readiness::Readiness;
use crate::launch::providers::Provider;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the verdicts as JSON (as `GET /admin/providers` gives them).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// Checks every provider and prints the verdicts; `Ok(false)` when only `local` is ready.
pub async fn doctor(args: DoctorArgs) -> Result<bool, String> {
    eprintln!("skylaunch doctor: checking each provider (a cloud's check may take a minute)...");
    let verdicts = crate::app::doctor(&args.serve)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let doc = serde_json::json!({ "providers": verdicts });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("verdicts serialise")
        );
    } else {
        print!("{}", report(&verdicts));
    }
    Ok(verdicts
        .iter()
        .any(|r| r.ready && r.provider != Provider::Local))
}

/// The verdicts as text: a line per provider, and under one that is not ready its error code,
/// what happened and what to do.
pub fn report(verdicts: &[Readiness]) -> String {
    let mut out = String::new();
    for r in verdicts {
        let mark = if r.ready { "ready    " } else { "NOT READY" };
        out.push_str(&format!(
            "{mark}  {:<9} {}\n",
            r.provider.as_str(),
            r.summary
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "           {:<9} [{}] {}\n",
                "",
                e.code.as_str(),
                e.message
            ));
            for s in &e.suggestions {
                out.push_str(&format!("           {:<9} -> {s}\n", ""));
            }
        }
    }
    let ready: Vec<&str> = verdicts
        .iter()
        .filter(|r| r.ready)
        .map(|r| r.provider.as_str())
        .collect();
    if ready.iter().all(|p| *p == "local") {
        out.push_str("\nNo cloud or host provider can launch yet: only local (this machine, the echo model server) works. Fix one of the above, then run `skylaunch doctor` again.\n");
    } else {
        out.push_str(&format!("\nCan launch through: {}\n", ready.join(", ")));
    }
    out
}

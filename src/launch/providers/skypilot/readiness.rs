//! Whether SkyPilot can launch: `sky` runs, its version, and which of the clouds skylaunch knows
//! `sky check` enables. `sky check` exits 0 whatever it finds, so its output is read: a line
//! `  AWS: enabled [compute, storage]` or `  AWS: disabled`, the latter followed by
//! `    Reason [compute, storage]: …` and the commands SkyPilot suggests (`      $ aws configure`).

use super::parse::strip_ansi;
use super::SkypilotProvider;
use crate::catalog;
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::providers::readiness::Readiness;
use crate::launch::providers::Provider;

/// The SkyPilot release skylaunch's parsers follow.
const TESTED: &str = "0.14";

/// One cloud as `sky check` reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudCheck {
    /// As skylaunch names it (`aws`).
    pub cloud: String,
    pub enabled: bool,
    /// The first line of SkyPilot's reason, for a disabled cloud.
    pub reason: String,
    /// The commands SkyPilot suggests to enable it.
    pub commands: Vec<String>,
}

/// The clouds in `sky check`'s output, in its order.
pub fn parse_check(stdout: &str) -> Vec<CloudCheck> {
    let mut clouds: Vec<CloudCheck> = Vec::new();
    for raw in stdout.lines() {
        let line = strip_ansi(raw);
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("  ") {
            if !rest.starts_with(' ') {
                if let Some((name, status)) = rest.split_once(": ") {
                    let status = status.trim();
                    let enabled = status.starts_with("enabled");
                    if enabled || status.starts_with("disabled") {
                        clouds.push(CloudCheck {
                            cloud: name.trim().to_ascii_lowercase(),
                            enabled,
                            reason: String::new(),
                            commands: Vec::new(),
                        });
                        continue;
                    }
                }
            }
        }
        let Some(last) = clouds.last_mut() else {
            continue;
        };
        let text = line.trim();
        if let Some(reason) = text
            .strip_prefix("Reason [")
            .and_then(|r| r.split_once("]: "))
        {
            if last.reason.is_empty() {
                // The commands follow on their own lines.
                let reason = reason.1.trim();
                last.reason = reason
                    .strip_suffix("Run the following commands:")
                    .unwrap_or(reason)
                    .trim()
                    .to_string();
            }
        } else if let Some(cmd) = text.strip_prefix("$ ") {
            // Without SkyPilot's comment (`aws configure list  # Ensure that ...`).
            let cmd = cmd.split("  #").next().unwrap_or(cmd);
            last.commands.push(cmd.trim().to_string());
        }
    }
    clouds
}

impl SkypilotProvider {
    pub(super) async fn check_readiness(&self, kind: Provider) -> Readiness {
        let mut r = Readiness::of(kind);
        let version = match self.sky_output(&["--version"]).await {
            Err(Some(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                r.failed(
                    "sky_found",
                    LaunchError::new(
                        ErrorCode::ProviderUnavailable,
                        "SkyPilot is not installed",
                        format!(
                            "skylaunch runs `{}` for SkyPilot launches, and there is no such command on this machine.",
                            self.sky_bin
                        ),
                    )
                    .suggest("Install SkyPilot 0.14 with the clouds you use: `pip install \"skypilot[aws,azure,gcp]==0.14.*\"` (a virtualenv is best)")
                    .suggest("If `sky` is installed elsewhere, point --sky-bin (SKYLAUNCH_SKY_BIN) at it"),
                );
                return r.done("");
            }
            Err(e) => {
                r.failed("sky_found", could_not_run(&self.sky_bin, "--version", e));
                return r.done("");
            }
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("skypilot, version ")
                        .map(str::to_string)
                })
                .unwrap_or_default(),
        };
        r.passed("sky_found", self.sky_bin.clone());
        r.detail("version", version.as_str());
        if version.starts_with(TESTED) {
            r.passed("version", format!("SkyPilot {version}"));
        } else {
            // Not fatal: launches may still work, but failures may be explained less well.
            r.passed(
                "version",
                format!("SkyPilot {version:?}; skylaunch reads SkyPilot {TESTED}'s output, so other versions may be explained less well"),
            );
        }
        let mut args = vec!["check"];
        args.extend(catalog::CLOUDS.iter().copied());
        let out = match self.sky_output(&args).await {
            Ok(out) => out,
            Err(e) => {
                r.failed("clouds", could_not_run(&self.sky_bin, "check", e));
                return r.done("");
            }
        };
        let clouds = parse_check(&String::from_utf8_lossy(&out.stdout));
        let known: Vec<&CloudCheck> = clouds
            .iter()
            .filter(|c| catalog::CLOUDS.contains(&c.cloud.as_str()))
            .collect();
        let enabled: Vec<&str> = known
            .iter()
            .filter(|c| c.enabled)
            .map(|c| c.cloud.as_str())
            .collect();
        r.detail("enabled_clouds", enabled.clone());
        if enabled.is_empty() {
            let mut error = LaunchError::new(
                ErrorCode::NoCloudAccess,
                "SkyPilot has no cloud enabled",
                if known.is_empty() {
                    format!(
                        "`sky check` named none of {}: its output was not understood.",
                        catalog::CLOUDS.join(", ")
                    )
                } else {
                    let why: Vec<String> = known
                        .iter()
                        .map(|c| format!("{}: {}", c.cloud, c.reason))
                        .collect();
                    format!(
                        "`sky check` enables none of the clouds skylaunch launches on: {}",
                        why.join("; ")
                    )
                },
            )
            .with_raw(tail(&String::from_utf8_lossy(&out.stdout)));
            for c in &known {
                if !c.commands.is_empty() {
                    error = error.suggest(format!(
                        "{}: run {}",
                        c.cloud,
                        c.commands
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", then ")
                    ));
                }
            }
            error = error.suggest(
                "Then check again: `skylaunch doctor`, or Check again in the Launch dialog",
            );
            r.failed("clouds", error);
        } else {
            r.passed("clouds", format!("enabled: {}", enabled.join(", ")));
        }
        r.done(format!(
            "SkyPilot {version}, clouds enabled: {}",
            enabled.join(", ")
        ))
    }
}

fn could_not_run(bin: &str, arg: &str, e: Option<std::io::Error>) -> LaunchError {
    LaunchError::new(
        ErrorCode::ProviderUnavailable,
        format!("`sky {arg}` failed"),
        match e {
            None => format!("`{bin} {arg}` did not finish in time."),
            Some(e) => format!("`{bin} {arg}` could not be run: {e}."),
        },
    )
    .suggest("Run the command yourself on this machine to see what it says")
}

/// The last lines of an output, ANSI stripped.
fn tail(text: &str) -> String {
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_check_has_every_cloud_disabled_with_its_commands() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/skypilot/02-sky-check.txt"
        ));
        let Ok(text) = text else { return };
        let out = text
            .split("## ---- STDOUT ----\n")
            .nth(1)
            .and_then(|t| t.split("## ---- STDERR ----").next())
            .unwrap();
        let clouds = parse_check(out);
        let aws = clouds.iter().find(|c| c.cloud == "aws").unwrap();
        assert!(!aws.enabled);
        assert!(aws.reason.starts_with("AWS dependencies are not installed"));
        assert_eq!(aws.commands[0], "pip install skypilot[aws]");
        assert!(aws.commands.iter().any(|c| c == "aws configure"));
        assert!(aws.commands.iter().any(|c| c == "aws configure list"));
        assert_eq!(aws.reason, "AWS dependencies are not installed.");
        let azure = clouds.iter().find(|c| c.cloud == "azure").unwrap();
        assert_eq!(
            azure.commands,
            ["az login", "az account set -s <subscription_id>"]
        );
        assert!(clouds.iter().all(|c| !c.enabled));
        assert!(clouds.iter().any(|c| c.cloud == "gcp"));
    }

    #[test]
    fn an_enabled_cloud_is_read_as_enabled() {
        let out = "Checking credentials to enable infra for SkyPilot.\n\x1b[32m  AWS: enabled [compute, storage]\x1b[0m\n\x1b[2m  GCP: disabled \x1b[0m\x1b[0m\n    Reason [compute]: GCP tools are not installed.\n      $ gcloud init\n\n\x1b[32m🎉 Enabled infra 🎉\x1b[0m\n  \x1b[32mAWS [compute, storage]\x1b[0m\n";
        let clouds = parse_check(out);
        assert_eq!(clouds.len(), 2, "{clouds:?}");
        assert!(clouds[0].enabled && clouds[0].cloud == "aws");
        assert!(!clouds[1].enabled);
        assert_eq!(clouds[1].commands, ["gcloud init"]);
    }
}

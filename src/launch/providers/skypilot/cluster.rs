//! What `sky status NAME` and `sky down -y NAME` (SkyPilot 0.14.1) printed about one cluster:
//! whether it is listed (and how), and whether a teardown removed it. Pure: the provider runs
//! the commands and hands their output here.

use super::parse::strip_ansi;

/// What `sky status NAME` says about cluster `NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterListing {
    /// The cluster's row, with the status word the table shows: `INIT`, `UP`, `STOPPED`,
    /// `AUTOSTOPPING` (`sky/utils/status_lib.py` `ClusterStatus`), or `UNHEALTHY` (an INIT
    /// cluster SkyPilot flagged as abnormal, `sky/utils/cli_utils/status_utils.py:280-282`).
    Listed(&'static str),
    /// `Cluster 'NAME' not found.` (`sky/utils/cli_utils/status_utils.py:104-115`).
    NotFound,
    /// Neither a row nor the not-found line: the output does not say.
    Unclear,
}

/// The table's status words, as `sky status` prints them.
const STATUS_WORDS: [&str; 5] = ["INIT", "UP", "STOPPED", "AUTOSTOPPING", "UNHEALTHY"];

/// Reads what `sky status NAME` (SkyPilot 0.14.1, exit 0 in every case) printed about cluster
/// `name`: its row in the clusters table (the row starts with the name), or the line SkyPilot
/// prints for a queried cluster it does not have. Anything else (an API server start-up message
/// alone, an empty output) is [`ClusterListing::Unclear`], never taken as "no cluster".
pub fn cluster_status(table: &str, name: &str) -> ClusterListing {
    let not_found = format!("Cluster '{name}' not found.");
    let mut listing = ClusterListing::Unclear;
    for line in table.lines() {
        let clean = strip_ansi(line);
        if clean.trim() == not_found {
            listing = ClusterListing::NotFound;
            continue;
        }
        let mut words = clean.split_whitespace();
        if words.next() != Some(name) {
            continue;
        }
        if let Some(status) = words.find_map(|w| STATUS_WORDS.into_iter().find(|s| *s == w)) {
            return ClusterListing::Listed(status);
        }
    }
    listing
}

/// What `sky down -y NAME` did, judged from SkyPilot's own lines: SkyPilot 0.14.1 exits 0 even
/// when the teardown failed (`sky/client/cli/command.py:3934-4004` catches the failure, prints
/// it on stdout and returns normally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownOutcome {
    /// `Terminating cluster NAME...done.` and exit 0: the cluster is gone.
    Removed,
    /// `Cluster(s) not found (tip: see \`sky status\`).` and exit 0, or the uncaught
    /// `ClusterDoesNotExist: Cluster 'NAME' does not exist.` (the cluster went away between the
    /// client's lookup and the teardown): there was nothing left to remove.
    AlreadyGone,
    /// The teardown failed, or the output does not say it succeeded: the cluster may still be
    /// running. `reason` is SkyPilot's reason when it gave one, else what went wrong.
    Failed { reason: String },
}

/// `Cluster(s) failed. See details above. ...` (`sky/client/cli/command.py:3999`), printed once
/// after any cluster's teardown failed.
const DOWN_FAILED_SUMMARY: &str = "Cluster(s) failed.";
/// Printed when no cluster matched the names given (`sky/client/cli/command.py:3852-3854`).
const DOWN_NOT_FOUND: &str = "Cluster(s) not found (tip: see `sky status`).";

/// Interprets `sky down -y cluster` (SkyPilot 0.14.1) from its exit status, stdout and stderr.
///
/// - `Terminating cluster NAME...done.` (`sky/client/cli/command.py:3946-3948`) with exit 0:
///   [`DownOutcome::Removed`].
/// - `Cluster(s) not found (tip: see \`sky status\`).` (`command.py:3853`) with exit 0, or
///   `ClusterDoesNotExist: Cluster 'NAME' does not exist.` on stderr (`sky/core.py:926-929`,
///   not caught by the CLI): [`DownOutcome::AlreadyGone`].
/// - `Terminating cluster NAME...failed.` and `Reason: ...` (`command.py:3934-3938`), a cloud
///   error's own text (`command.py:3940-3944`), then `Cluster(s) failed. ...`
///   (`command.py:3998-4004`), whatever the exit status: [`DownOutcome::Failed`].
/// - Anything else, a "not found" on stderr included (the client lost its request: the
///   outcome is unknown), is [`DownOutcome::Failed`] too: success is never assumed.
pub fn down_outcome(
    cluster: &str,
    exit_code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> DownOutcome {
    let clean = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| strip_ansi(l).trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let out = clean(stdout);
    let err = clean(stderr);
    let done = format!("Terminating cluster {cluster}...done.");
    let failed = format!("Terminating cluster {cluster}...failed.");
    let failed_at = out
        .iter()
        .position(|l| l.starts_with(&failed) || l.starts_with(DOWN_FAILED_SUMMARY));
    if let Some(at) = failed_at {
        // `Reason: <exception>.` follows `...failed.`; a cloud error is printed alone, on the
        // lines before the summary.
        let reason = out[at..]
            .iter()
            .find_map(|l| l.strip_prefix("Reason: "))
            .map(str::to_string)
            .or_else(|| {
                out[..at]
                    .iter()
                    .rev()
                    .find(|l| !l.starts_with("Cluster(s) not found:"))
                    .cloned()
            })
            .unwrap_or_else(|| "SkyPilot reported that the teardown failed".to_string());
        return DownOutcome::Failed { reason };
    }
    let exit = exit_code.map_or("a signal".to_string(), |c| format!("exit status {c}"));
    if exit_code != Some(0) {
        let gone = format!("ClusterDoesNotExist: Cluster '{cluster}' does not exist.");
        if err.iter().any(|l| l.ends_with(&gone)) {
            return DownOutcome::AlreadyGone;
        }
        let last = err
            .last()
            .or(out.last())
            .map_or("no output", |l| l.as_str());
        return DownOutcome::Failed {
            reason: format!("sky down failed ({exit}): {last}"),
        };
    }
    if out.contains(&done) {
        return DownOutcome::Removed;
    }
    if out.iter().any(|l| l == DOWN_NOT_FOUND) {
        return DownOutcome::AlreadyGone;
    }
    DownOutcome::Failed {
        reason: format!("sky down exited 0 but printed neither `{done}` nor `{DOWN_NOT_FOUND}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_reads_the_row_of_the_named_cluster() {
        let table = "Clusters\n\
            NAME           INFRA            RESOURCES                          STATUS  AUTOSTOP  LAUNCHED\n\
            sl-other       AWS (us-east-1)  1x(gpus=L4:1, g6.xlarge, cpus=4)   UP      -         3 mins ago\n\
            sl-abc         AWS (us-east-1)  1x(gpus=L4:1, g6.xlarge, cpus=4)   \x1b[1mINIT\x1b[0m    -         1 min ago\n\
            sl-sick        AWS (us-east-1)  1x(gpus=L4:1, g6.xlarge, cpus=4)   \x1b[31mUNHEALTHY\x1b[0m  -   1 min ago\n";
        assert_eq!(
            cluster_status(table, "sl-abc"),
            ClusterListing::Listed("INIT")
        );
        assert_eq!(
            cluster_status(table, "sl-other"),
            ClusterListing::Listed("UP")
        );
        assert_eq!(
            cluster_status(table, "sl-sick"),
            ClusterListing::Listed("UNHEALTHY")
        );
        assert_eq!(cluster_status(table, "sl-ab"), ClusterListing::Unclear);
    }

    /// `sky status sl-nope` from the real SkyPilot 0.14.1 (run here, offline, `cat -A`): the API
    /// server's log line, the empty infra title, then the CLI's own not-found line.
    #[test]
    fn cluster_status_reads_the_real_not_found_line() {
        let real = "Cluster(s) not found: \x1b[1msl-nope\x1b[0m.\n\
            Enabled Infra: \n\
            \n\
            Clusters\n\
            Cluster 'sl-nope' not found.\n";
        assert_eq!(cluster_status(real, "sl-nope"), ClusterListing::NotFound);
        assert_eq!(cluster_status(real, "sl-no"), ClusterListing::Unclear);
        // The API server's start-up message alone says nothing about the cluster.
        let startup = "\x1b[2mFailed to connect to SkyPilot API server at http://127.0.0.1:46580. \
            Starting a local server.\x1b[0m\n\x1b[0m\x1b[32m✓ SkyPilot API server started. \x1b[0m\x1b[0m\n";
        assert_eq!(cluster_status(startup, "sl-nope"), ClusterListing::Unclear);
        assert_eq!(cluster_status("", "sl-nope"), ClusterListing::Unclear);
    }

    /// `sky down -y sl-nope` from the real SkyPilot 0.14.1 (run here, offline), exit 0.
    const REAL_DOWN_NOT_FOUND: &str = "Cluster(s) not found: \x1b[1msl-nope\x1b[0m.\n\
        Cluster(s) not found (tip: see `sky status`).\n";

    /// What `sky down -y NAME` prints on stdout when the teardown raised a RuntimeError
    /// (`sky/client/cli/command.py:3934-3938` and `:3998-4004`; click strips the colours when
    /// stdout is not a terminal); the reason is the lock error of
    /// `sky/backends/cloud_vm_ray_backend.py:4805-4807`. It exits 0.
    const DOWN_FAILED_RUNTIME_ERROR: &str = "\n\
        Terminating cluster sl-abc...failed. \n\
        Reason: RuntimeError: Cluster 'sl-abc' is locked by sl-abc_status. Check to see if it is still being launched.\n\
        Cluster(s) failed. See details above. If you want to ignore the errors and remove the cluster(s) from the status table, use `sky down --purge`.\n";

    #[test]
    fn sky_down_done_line_means_removed() {
        let out = "\nTerminating cluster sl-abc...done.\n";
        assert_eq!(
            down_outcome("sl-abc", Some(0), out, ""),
            DownOutcome::Removed
        );
        // With the colours a terminal would get.
        let coloured = "\x1b[32mTerminating cluster sl-abc...done.\x1b[0m\n";
        assert_eq!(
            down_outcome("sl-abc", Some(0), coloured, ""),
            DownOutcome::Removed
        );
        // Another cluster's line says nothing about this one.
        assert!(matches!(
            down_outcome("sl-ab", Some(0), out, ""),
            DownOutcome::Failed { .. }
        ));
        // `...done.` followed by a non-zero exit is not taken as success.
        assert!(matches!(
            down_outcome("sl-abc", Some(1), out, "Traceback ..."),
            DownOutcome::Failed { .. }
        ));
    }

    #[test]
    fn sky_down_real_not_found_line_means_already_gone() {
        assert_eq!(
            down_outcome("sl-nope", Some(0), REAL_DOWN_NOT_FOUND, ""),
            DownOutcome::AlreadyGone
        );
        // The API server's own log line alone is not the CLI's answer.
        assert!(matches!(
            down_outcome(
                "sl-nope",
                Some(0),
                "Cluster(s) not found: \x1b[1msl-nope\x1b[0m.\n",
                ""
            ),
            DownOutcome::Failed { .. }
        ));
    }

    #[test]
    fn sky_down_failure_printed_with_exit_0_is_a_failure_with_its_reason() {
        let outcome = down_outcome("sl-abc", Some(0), DOWN_FAILED_RUNTIME_ERROR, "");
        let DownOutcome::Failed { reason } = outcome else {
            panic!("a failed teardown read as {outcome:?}");
        };
        assert!(
            reason.starts_with("RuntimeError: Cluster 'sl-abc' is locked"),
            "{reason}"
        );
    }

    #[test]
    fn sky_down_cloud_error_then_summary_is_a_failure() {
        // A CloudError is printed as its own text, without `...failed.`
        // (`sky/client/cli/command.py:3940-3944`; `sky/exceptions.py:150-152` formats it).
        let out = "\naws error (InvalidInstanceID.NotFound): The instance ID 'i-0abc' does not exist\n\
            Cluster(s) failed. See details above. If you want to ignore the errors and remove the cluster(s) from the status table, use `sky down --purge`.\n";
        assert_eq!(
            down_outcome("sl-abc", Some(0), out, ""),
            DownOutcome::Failed {
                reason: "aws error (InvalidInstanceID.NotFound): The instance ID 'i-0abc' does not exist"
                    .into()
            }
        );
    }

    #[test]
    fn sky_down_not_found_on_stderr_is_a_failure() {
        // The client lost its request: SkyPilot's outcome is unknown.
        for err in [
            "Failed to stream logs: Request 'a1b2c3d4-0000' not found",
            "RuntimeError: Failed to get request a1b2c3d4: 404 {\"detail\":\"Request a1b2c3d4 not found\"}",
        ] {
            for code in [Some(0), Some(1)] {
                assert!(
                    matches!(
                        down_outcome("sl-abc", code, "", err),
                        DownOutcome::Failed { .. }
                    ),
                    "{code:?} {err}"
                );
            }
        }
    }

    #[test]
    fn sky_down_cluster_does_not_exist_exception_means_already_gone() {
        // `sky/core.py:926-929`, not caught by `sky down` (it is a ValueError): exit 1.
        let err = "sky.exceptions.ClusterDoesNotExist: Cluster 'sl-abc' does not exist.\n";
        assert_eq!(
            down_outcome("sl-abc", Some(1), "\n", err),
            DownOutcome::AlreadyGone
        );
        assert!(matches!(
            down_outcome("sl-other", Some(1), "\n", err),
            DownOutcome::Failed { .. }
        ));
    }

    #[test]
    fn sky_down_with_no_outcome_line_is_a_failure() {
        for (code, out) in [
            (Some(0), ""),
            (Some(0), "\n"),
            (None, "Terminating cluster sl-abc...done.\n"),
            (Some(2), ""),
        ] {
            assert!(
                matches!(
                    down_outcome("sl-abc", code, out, ""),
                    DownOutcome::Failed { .. }
                ),
                "{code:?} {out:?}"
            );
        }
    }
}

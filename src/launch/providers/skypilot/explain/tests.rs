//! How failed `sky launch` runs are explained: the code names the real cause.

use super::*;

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn ctx(use_spot: bool) -> (Vec<String>, bool) {
    (vec!["us-east-1".to_string()], use_spot)
}

fn run(exit: Option<i32>, stderr: &str, reasons: &[&str], use_spot: bool) -> LaunchError {
    let (regions, spot) = ctx(use_spot);
    let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
    let ctx = FailureContext {
        gpu: "L4",
        regions: &regions,
        use_spot: spot,
    };
    explain(exit, &lines(stderr), &reasons, &lines(stderr), &ctx)
}

const FINAL: &str = "sky.exceptions.ResourcesUnavailableError: Failed to provision all possible launchable resources. Relax the task's resource requirements: 1x AWS({'L4': 1})";

#[test]
fn insufficient_capacity_on_demand_is_capacity_unavailable() {
    let error = run(
        Some(1),
        FINAL,
        &["InsufficientInstanceCapacity: We currently do not have sufficient g6.xlarge capacity"],
        false,
    );
    assert_eq!(error.code, ErrorCode::CapacityUnavailable);
    assert!(error.title.contains("L4") && error.title.contains("us-east-1"));
}

#[test]
fn insufficient_capacity_on_spot_suggests_on_demand() {
    let error = run(
        Some(1),
        FINAL,
        &["InsufficientInstanceCapacity: no capacity"],
        true,
    );
    assert_eq!(error.code, ErrorCode::SpotCapacityUnavailable);
    assert!(error.suggestions.iter().any(|s| s.contains("on-demand")));
}

#[test]
fn credentials_failures_during_failover_are_not_capacity() {
    let error = run(
        Some(1),
        FINAL,
        &[
            "CloudUserIdentityError: Failed to get AWS user.",
            "CloudUserIdentityError: Failed to get AWS user.",
        ],
        true,
    );
    assert_eq!(error.code, ErrorCode::CredentialsInvalid);
    assert!(error.suggestions.iter().any(|s| s.contains("sky check")));
    assert!(!error
        .suggestions
        .iter()
        .any(|s| s.to_lowercase().contains("relax")));
}

#[test]
fn zero_quota_is_quota_exceeded_with_the_instance_family() {
    let error = run(
        Some(1),
        FINAL,
        &["ResourcesUnavailableError: Found no quota for g6.xlarge on-demand instances in region us-east-1 in AWS."],
        false,
    );
    assert_eq!(error.code, ErrorCode::QuotaExceeded);
    assert!(error.suggestions[0].contains("g6.xlarge on-demand instances in region us-east-1"));
}

#[test]
fn azure_cores_quota_quotes_the_numbers() {
    let error = run(
        Some(1),
        FINAL,
        &["(OperationNotAllowed) Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family Cores quota. Current Limit: 0, Current Usage: 0, Additional Required: 24"],
        false,
    );
    assert_eq!(error.code, ErrorCode::QuotaExceeded);
    assert!(
        error
            .message
            .contains("(limit 0, in use 0, this launch needs 24 more)"),
        "{}",
        error.message
    );
    assert!(error.suggestions[0].contains("standardNCADSA100v4Family cores"));
}

#[test]
fn usage_error_exit_two_is_our_bug() {
    let error = run(Some(2), "Error: No such option: --gpu", &[], false);
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(error.message.contains("bug in skylaunch"));
}

#[test]
fn job_failed_is_model_server_failed() {
    let error = run(Some(100), "✓ Job finished (status: FAILED).", &[], false);
    assert_eq!(error.code, ErrorCode::ModelServerFailed);
}

#[test]
fn unknown_exception_is_internal_and_quoted() {
    let error = run(
        Some(1),
        "sky.exceptions.StopFailoverError: During provisioner's failover, terminating 'x' failed.",
        &[],
        false,
    );
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("StopFailoverError"));
}

#[test]
fn raw_keeps_the_last_thirty_lines() {
    let tail: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    let regions = Vec::new();
    let ctx = FailureContext {
        gpu: "L4",
        regions: &regions,
        use_spot: false,
    };
    let error = explain(Some(1), &[], &[], &tail, &ctx);
    assert!(error.raw.starts_with("line 10\n"));
    assert!(error.raw.ends_with("line 39"));
}

#[test]
fn teardown_failure_names_the_cluster_reason_and_last_lines() {
    let tail = lines(
        "\nTerminating cluster sl-abc...failed. \n\
         Reason: RuntimeError: Cluster 'sl-abc' is locked by sl-abc_status. Check to see if it is still being launched.\n\
         Cluster(s) failed. See details above. If you want to ignore the errors and remove the cluster(s) from the status table, use `sky down --purge`.",
    );
    let error = teardown_failed(
        "sl-abc",
        "RuntimeError: Cluster 'sl-abc' is locked by sl-abc_status.",
        &tail,
    );
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert_eq!(error.title, "Teardown failed");
    assert!(
        error.message.contains("`sky down -y sl-abc`"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("may still be running"),
        "{}",
        error.message
    );
    assert!(error.message.contains("is locked by"), "{}", error.message);
    assert!(
        error
            .message
            .contains("Cluster(s) failed. See details above."),
        "the message quotes the last lines: {}",
        error.message
    );
    assert!(error
        .raw
        .starts_with("Terminating cluster sl-abc...failed."));
    assert!(error.raw.ends_with("use `sky down --purge`."));
    assert!(error
        .suggestions
        .iter()
        .any(|s| s.contains("sky status sl-abc")));
}

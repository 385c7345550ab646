//! Explains a failed `sky launch` as a `LaunchError` whose code names the real cause. The exit
//! code alone cannot tell capacity, credential and validation failures apart, so this reads the
//! exception class on stderr, the per-attempt failure reasons and the `Provision failures`
//! blocks; a credentials failure during failover must come out as `credentials_invalid`, never
//! as a capacity problem.

use std::sync::LazyLock;

use regex::Regex;

use crate::launch::failure::{ErrorCode, LaunchError};

/// How many output lines travel with the error for reference.
const RAW_TAIL_LINES: usize = 30;

pub struct FailureContext<'a> {
    pub gpu: &'a str,
    pub regions: &'a [String],
    pub use_spot: bool,
}

static EXCEPTION_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[a-z_]+\.)*([A-Z]\w*(?:Error|Exception)): ?(.*)$").expect("static regex")
});
static INVALID_REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Invalid (region|zone) '([^']*)'").expect("static regex"));
static DID_YOU_MEAN_REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Did you mean one of these: '([^']*)'").expect("static regex"));
static ACCELERATOR_LIST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:Try one of these offered accelerators|Did you mean): \[([^\]]*)\]")
        .expect("static regex")
});
static TRIED_INFRA: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Provision failures \(tried (\d+) infra\):").expect("static regex")
});
// AWS's wording; Azure's cores quota messages are read by the Azure provider's `cores_quota`.
static AWS_QUOTA_NUMBERS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"current vCPU limit of \d+").expect("static regex"));
static AWS_QUOTA_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Found no quota for (\S+ \S+ instances in region \S+)").expect("static regex")
});

/// What one failed attempt says about the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReasonKind {
    Credentials,
    Quota,
    Capacity,
    /// SkyPilot's own summary (`Failed to acquire resources in …`) without the cloud's words.
    Generic,
    Other,
}

fn classify_reason(reason: &str) -> ReasonKind {
    const CREDENTIALS: [&str; 7] = [
        "CloudUserIdentityError",
        "Failed to get AWS user",
        "InvalidCloudCredentials",
        "invalid cloud credentials",
        "AuthFailure",
        "UnauthorizedOperation",
        "ClientAuthenticationError",
    ];
    const QUOTA: [&str; 6] = [
        "Found no quota",
        "VcpuLimitExceeded",
        "Cores quota",
        "QUOTA_EXCEEDED",
        "quotaExceeded",
        "MaxSpotInstanceCountExceeded",
    ];
    const CAPACITY: [&str; 9] = [
        "InsufficientInstanceCapacity",
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "insufficientCapacity",
        "AllocationFailed",
        "SkuNotAvailable",
        "VM_MIN_COUNT_NOT_REACHED",
        "capacity-not-available",
        "SpotMaxPriceTooLow",
        "does not have enough resources",
    ];
    if CREDENTIALS.iter().any(|k| reason.contains(k)) {
        ReasonKind::Credentials
    } else if QUOTA.iter().any(|k| reason.contains(k)) {
        ReasonKind::Quota
    } else if CAPACITY.iter().any(|k| reason.contains(k)) {
        ReasonKind::Capacity
    } else if reason.contains("Failed to acquire resources") {
        ReasonKind::Generic
    } else {
        ReasonKind::Other
    }
}

/// Explains a failed `sky launch`: exit code, its stderr lines, the attempts' failure reasons, and the output tail.
pub fn explain(
    exit_code: Option<i32>,
    stderr: &[String],
    failure_reasons: &[String],
    tail: &[String],
    ctx: &FailureContext,
) -> LaunchError {
    let raw_start = tail.len().saturating_sub(RAW_TAIL_LINES);
    let raw = tail[raw_start..].join("\n");
    diagnose(exit_code, stderr, failure_reasons, tail, ctx).with_raw(raw)
}

fn diagnose(
    exit_code: Option<i32>,
    stderr: &[String],
    failure_reasons: &[String],
    tail: &[String],
    ctx: &FailureContext,
) -> LaunchError {
    let stderr_text = stderr.join("\n");
    let everything = format!("{stderr_text}\n{}", tail.join("\n"));
    let exception = stderr.iter().find_map(|line| {
        EXCEPTION_LINE
            .captures(line.trim_start())
            .map(|c| (c[1].to_string(), c[2].trim().to_string()))
    });

    if exit_code == Some(2)
        || stderr
            .iter()
            .any(|l| l.starts_with("Error: No such option"))
        || stderr.iter().any(|l| l.starts_with("Usage: sky "))
    {
        let usage = stderr
            .iter()
            .find(|l| l.starts_with("Error:"))
            .cloned()
            .unwrap_or_else(|| "the command line was rejected".to_string());
        return invalid_request(&format!("SkyPilot rejected the command line: {usage}"));
    }
    if stderr.iter().any(|l| l.trim() == "Aborted!") {
        return invalid_request(
            "SkyPilot asked for confirmation and aborted because no one could answer (the launch \
             was run without -y).",
        );
    }

    if let Some((class, message)) = &exception {
        if let Some(error) = from_exception(
            class,
            message,
            &stderr_text,
            &everything,
            failure_reasons,
            ctx,
        ) {
            return error;
        }
    }

    if let Some(error) = from_job_status(exit_code, &everything) {
        return error;
    }

    if exception.is_none() && !failure_reasons.is_empty() {
        // Killed mid-failover (e.g. `--retry-until-up` past our deadline): the attempts'
        // reasons are all there is, and they still name the cause.
        return resources_unavailable("", &stderr_text, &everything, failure_reasons, ctx);
    }

    match exception {
        Some((class, message)) => internal(&format!("{class}: {message}")),
        None => {
            let cause = match exit_code {
                Some(code) => {
                    format!("sky launch exited with code {code} without naming an error.")
                }
                None => "sky launch was stopped before it finished and named no error.".to_string(),
            };
            internal(&cause)
        }
    }
}

fn from_exception(
    class: &str,
    message: &str,
    stderr_text: &str,
    everything: &str,
    failure_reasons: &[String],
    ctx: &FailureContext,
) -> Option<LaunchError> {
    let error = match class {
        "NoCloudAccessError" => no_cloud_access(),
        "InvalidClusterNameError" | "InvalidSkyPilotConfigError" => {
            invalid_request(&format!("SkyPilot rejected the task: {class}: {message}"))
        }
        "ValueError" if INVALID_REGION.is_match(stderr_text) => invalid_region(stderr_text, ctx),
        "ValueError" if message.starts_with("No instance type") => {
            invalid_accelerator(message, everything, ctx)
        }
        "ValueError" => invalid_request(&format!("SkyPilot rejected the request: {message}")),
        "CloudUserIdentityError" | "InvalidCloudCredentials" | "ApiServerAuthenticationError" => {
            credentials_invalid(&[format!("{class}: {message}")], ctx)
        }
        "CloudError" | "ApiServerConnectionError" => provider_unavailable(class, message),
        "ResourcesUnavailableError" => {
            resources_unavailable(message, stderr_text, everything, failure_reasons, ctx)
        }
        "CommandError" if everything.contains("Failed to setup with return code") => setup_failed(),
        _ => return None,
    };
    Some(error)
}

fn resources_unavailable(
    message: &str,
    stderr_text: &str,
    everything: &str,
    failure_reasons: &[String],
    ctx: &FailureContext,
) -> LaunchError {
    if everything.contains("Catalog does not contain any instances")
        || everything.contains("No resource satisfying")
    {
        return invalid_accelerator(message, everything, ctx);
    }
    if message.contains("which is not enabled") {
        return no_cloud_access();
    }

    let mut reasons: Vec<String> = failure_reasons.to_vec();
    reasons.extend(provision_failure_blocks(stderr_text));
    if reasons.is_empty() {
        reasons.push(message.to_string());
    }
    let kinds: Vec<ReasonKind> = reasons.iter().map(|r| classify_reason(r)).collect();
    let specific: Vec<ReasonKind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != ReasonKind::Generic)
        .collect();
    let tried = stderr_text
        .lines()
        .find_map(|l| TRIED_INFRA.captures(l.trim()).map(|c| c[1].to_string()));

    if !specific.is_empty() && specific.iter().all(|k| *k == ReasonKind::Credentials) {
        return credentials_invalid(&reasons, ctx);
    }
    if specific.contains(&ReasonKind::Quota) && !specific.contains(&ReasonKind::Capacity) {
        return quota_exceeded(&reasons, ctx);
    }
    if specific.contains(&ReasonKind::Capacity) || specific.is_empty() {
        return capacity_unavailable(tried.as_deref(), &reasons, ctx);
    }
    // The attempts failed for a reason that is neither capacity nor access (e.g. no machine
    // image for the region): say what SkyPilot said rather than guess.
    let first_other = reasons
        .iter()
        .zip(&kinds)
        .find(|(_, k)| **k == ReasonKind::Other)
        .map(|(r, _)| r.clone())
        .unwrap_or_else(|| message.to_string());
    internal(&first_other)
}

/// The reason text of each `✗ <infra> — …` block of the final `Provision failures` summary.
fn provision_failure_blocks(stderr_text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut in_summary = false;
    let mut current: Option<String> = None;
    for line in stderr_text.lines() {
        if TRIED_INFRA.is_match(line.trim()) {
            in_summary = true;
            continue;
        }
        if !in_summary {
            continue;
        }
        if line.starts_with('✗') {
            blocks.extend(current.take());
            current = Some(String::new());
        } else if let Some(text) = current.as_mut() {
            let piece = line.trim();
            if !piece.is_empty() {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(piece);
            }
        }
    }
    blocks.extend(current);
    blocks.retain(|b| !b.is_empty());
    blocks
}

fn where_text(ctx: &FailureContext) -> String {
    if ctx.regions.is_empty() {
        "any allowed region".to_string()
    } else {
        ctx.regions.join(", ")
    }
}

fn market_text(ctx: &FailureContext) -> &'static str {
    if ctx.use_spot {
        "spot"
    } else {
        "on-demand"
    }
}

fn no_cloud_access() -> LaunchError {
    LaunchError::new(
        ErrorCode::NoCloudAccess,
        "No cloud account is set up for SkyPilot",
        "SkyPilot found no enabled cloud, so it could not try any placement. It needs cloud \
         credentials on the host where the control plane runs.",
    )
    .suggest("Run `sky check` on the control-plane host and follow its hints for the cloud you want.")
    .suggest("Configure that cloud's credentials (for AWS: `aws configure`), then run `sky check` again.")
    .suggest("To try the launch flow without a cloud, launch with provider \"local\".")
}

fn credentials_invalid(reasons: &[String], ctx: &FailureContext) -> LaunchError {
    let first = reasons.first().cloned().unwrap_or_default();
    LaunchError::new(
        ErrorCode::CredentialsInvalid,
        "Cloud credentials were rejected or could not be checked",
        format!(
            "Every placement SkyPilot tried for {} failed because it could not confirm the cloud \
             identity, not because capacity ran out: {first}",
            ctx.gpu
        ),
    )
    .suggest("Run `sky check` on the control-plane host and fix what it reports.")
    .suggest("Refresh or re-create the cloud keys (for AWS: `aws configure`, then `aws sts get-caller-identity`).")
    .suggest("Check that the control-plane host can reach the cloud's identity endpoint (e.g. sts.<region>.amazonaws.com).")
}

fn quota_exceeded(reasons: &[String], ctx: &FailureContext) -> LaunchError {
    let all = reasons.join("\n");
    let azure = crate::launch::providers::azure::explain::cores_quota(&all);
    let subject = match &azure {
        Some(quota) => Some(format!("{} cores", quota.family)),
        None => AWS_QUOTA_SUBJECT.captures(&all).map(|c| c[1].to_string()),
    };
    let numbers = match &azure {
        Some(quota) if quota.numbers.is_some() => Some(quota.numbers_text().trim().to_string()),
        _ => AWS_QUOTA_NUMBERS.captures(&all).map(|c| c[0].to_string()),
    };
    let mut message = format!(
        "The cloud account has no quota left for {} {} instances in {}.",
        ctx.gpu,
        market_text(ctx),
        where_text(ctx)
    );
    if let Some(numbers) = &numbers {
        message.push_str(&format!(" The cloud said: {numbers}."));
    }
    let first = reasons
        .iter()
        .find(|r| classify_reason(r) == ReasonKind::Quota)
        .cloned()
        .unwrap_or_default();
    message.push_str(&format!(" ({first})"));
    let request = match subject {
        Some(subject) => format!("Request a quota increase for {subject} in the cloud console."),
        None => format!(
            "Request a quota increase for the {} instance family in {}.",
            ctx.gpu,
            where_text(ctx)
        ),
    };
    LaunchError::new(
        ErrorCode::QuotaExceeded,
        format!("Quota exceeded for {} in {}", ctx.gpu, where_text(ctx)),
        message,
    )
    .suggest(request)
    .suggest("Try another region where the account already has quota for this GPU.")
}

fn capacity_unavailable(
    tried: Option<&str>,
    reasons: &[String],
    ctx: &FailureContext,
) -> LaunchError {
    let code = if ctx.use_spot {
        ErrorCode::SpotCapacityUnavailable
    } else {
        ErrorCode::CapacityUnavailable
    };
    let tried_text = tried
        .map(|n| format!(" after trying {n} placements"))
        .unwrap_or_default();
    let detail = reasons
        .iter()
        .find(|r| classify_reason(r) == ReasonKind::Capacity)
        .or(reasons.first())
        .map(|r| format!(" Last cloud answer: {r}"))
        .unwrap_or_default();
    let mut error = LaunchError::new(
        code,
        format!(
            "No {} {} capacity in {}",
            ctx.gpu,
            market_text(ctx),
            where_text(ctx)
        ),
        format!(
            "The cloud had no free {} {} machines in {}{tried_text}.{detail}",
            ctx.gpu,
            market_text(ctx),
            where_text(ctx)
        ),
    )
    .suggest("Allow more regions, or try other regions.");
    if ctx.use_spot {
        error = error.suggest("Allow on-demand as a fallback; spot capacity comes and goes.");
    }
    error
        .suggest(format!("Try another GPU type than {}.", ctx.gpu))
        .suggest("Retry later; capacity frees up as other users release machines.")
}

fn invalid_accelerator(message: &str, everything: &str, ctx: &FailureContext) -> LaunchError {
    let mut offered: Vec<String> = Vec::new();
    for caps in ACCELERATOR_LIST.captures_iter(everything) {
        for name in caps[1].split(',') {
            let name = name.trim().trim_matches('\'').to_string();
            if !name.is_empty() && !offered.contains(&name) {
                offered.push(name);
            }
        }
    }
    let first_line = message.lines().next().unwrap_or(message);
    let mut error = LaunchError::new(
        ErrorCode::InvalidAccelerator,
        format!("No instance offers the GPU {}", ctx.gpu),
        format!(
            "SkyPilot's catalog has no instance type with {} for the enabled clouds ({first_line}).",
            ctx.gpu
        ),
    );
    if offered.is_empty() {
        error = error.suggest("Pick a GPU from `sky gpus list` on the control-plane host.");
    } else {
        error = error.suggest(format!(
            "Use one of the offered GPUs: {}.",
            offered.join(", ")
        ));
        error = error.suggest("See `sky gpus list` on the control-plane host for the full list.");
    }
    error
}

fn invalid_region(stderr_text: &str, ctx: &FailureContext) -> LaunchError {
    let (kind, name) = INVALID_REGION
        .captures(stderr_text)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .unwrap_or_else(|| ("region".to_string(), where_text(ctx)));
    let mut error = LaunchError::new(
        ErrorCode::InvalidRegion,
        format!("Unknown {kind} '{name}'"),
        format!("The cloud has no {kind} named '{name}'; nothing was launched."),
    );
    if let Some(caps) = DID_YOU_MEAN_REGION.captures(stderr_text) {
        for candidate in caps[1].split(',') {
            let candidate = candidate.trim();
            if !candidate.is_empty() {
                error = error.suggest(format!("Use {kind} {candidate}"));
            }
        }
    } else {
        error = error.suggest(format!(
            "Check the {kind} name against the cloud's list of {kind}s."
        ));
    }
    error
}

fn invalid_request(cause: &str) -> LaunchError {
    LaunchError::new(
        ErrorCode::InvalidRequest,
        "SkyPilot rejected the launch request",
        format!(
            "{cause} The request should have been caught before reaching SkyPilot, so this is a \
             bug in skylaunch, not in your setup."
        ),
    )
    .suggest("Report this to the skylaunch maintainers with the raw output below.")
}

fn provider_unavailable(class: &str, message: &str) -> LaunchError {
    LaunchError::new(
        ErrorCode::ProviderUnavailable,
        "SkyPilot could not reach its catalog, API server or the cloud API",
        format!(
            "SkyPilot failed before trying any placement because a network call failed: \
             {class}: {message}"
        ),
    )
    .suggest("Check network access from the control-plane host (DNS, proxy, firewall) to raw.githubusercontent.com and the cloud's API endpoints.")
    .suggest("Check that the SkyPilot API server is running (`sky api status`).")
    .suggest("Retry once the network is back; nothing was launched.")
}

fn setup_failed() -> LaunchError {
    LaunchError::new(
        ErrorCode::SetupFailed,
        "The setup commands failed on the new machine",
        "The machine came up, but installing the model server (the task's setup step) exited with \
         an error. The machine may still be running.",
    )
    .suggest("Read the setup output in the raw log below for the failing command.")
    .suggest("Check the model server version and install commands in the task template.")
}

fn from_job_status(exit_code: Option<i32>, everything: &str) -> Option<LaunchError> {
    if everything.contains("status: FAILED_SETUP")
        || everything.contains("setup failed with return code")
        || everything.contains("Failed to setup with return code")
    {
        return Some(setup_failed());
    }
    if everything.contains("Job finished (status: FAILED)")
        || everything.contains("Job finished (status: FAILED_DRIVER)")
        || exit_code == Some(100)
    {
        return Some(
            LaunchError::new(
                ErrorCode::ModelServerFailed,
                "The model server exited with an error",
                "The machine and setup were fine, but the model server process failed.",
            )
            .suggest("Read the model server output in the raw log below (out of memory, wrong model name, missing token).")
            .suggest("Check that the GPU has enough memory for the model."),
        );
    }
    if everything.contains("Job finished (status: CANCELLED)") || exit_code == Some(103) {
        return Some(LaunchError::new(
            ErrorCode::Cancelled,
            "The model server job was cancelled",
            "The job running the model server was cancelled before it finished.",
        ));
    }
    None
}

/// How many of `sky down`'s last lines the teardown error's message quotes (all of the tail
/// travels in `raw`).
const TEARDOWN_MESSAGE_LINES: usize = 3;

/// A `sky down -y cluster` that did not remove the cluster (it failed, or its output did not say
/// it succeeded): the cluster may still be running. `tail` is the end of its output, stdout then
/// stderr, ANSI stripped.
pub fn teardown_failed(cluster: &str, reason: &str, tail: &[String]) -> LaunchError {
    let lines: Vec<&str> = tail
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let last = lines[lines.len().saturating_sub(TEARDOWN_MESSAGE_LINES)..].join(" | ");
    let raw = lines[lines.len().saturating_sub(RAW_TAIL_LINES)..].join("\n");
    LaunchError::new(
        ErrorCode::ProviderUnavailable,
        "Teardown failed",
        format!(
            "`sky down -y {cluster}` did not remove the cluster, which may still be running: \
             {reason}. Last output: {}",
            if last.is_empty() { "(none)" } else { &last }
        ),
    )
    .suggest(format!(
        "Check `sky status {cluster}`, then run `sky down -y {cluster}` again"
    ))
    .suggest(format!(
        "If it keeps failing, remove the cluster's machines in the cloud console, then run \
         `sky down --purge -y {cluster}`"
    ))
    .with_raw(raw)
}

fn internal(cause: &str) -> LaunchError {
    LaunchError::new(
        ErrorCode::Internal,
        "SkyPilot failed for a reason skylaunch does not recognise",
        format!("SkyPilot reported: {cause}"),
    )
    .suggest("Read the raw output below; run `sky launch` by hand on the control-plane host to see more.")
    .suggest("Report it to the skylaunch maintainers so this failure gets a clear explanation.")
}

#[cfg(test)]
mod tests;

//! Replays every SkyPilot transcript (shared fixtures and our success-path ones) through the
//! parser and the error mapper, and checks what each one means.

use std::path::{Path, PathBuf};

use regex::Regex;

use super::explain::{explain, FailureContext};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::providers::skypilot::parse::{strip_ansi, SkyEvent, SkyOutputParser, Stream};
use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/skypilot");
const OURS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/skypilot");

struct Transcript {
    exit_code: Option<i32>,
    lines: Vec<(Stream, String)>,
}

struct Outcome {
    events: Vec<SkyEvent>,
    parser: SkyOutputParser,
    exit_code: Option<i32>,
}

impl Outcome {
    fn attempts(&self) -> Vec<Attempt> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SkyEvent::AttemptStarted(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }
    fn failures(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SkyEvent::AttemptFailed { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
    fn stages(&self) -> Vec<Stage> {
        let mut stages: Vec<Stage> = Vec::new();
        for event in &self.events {
            if let SkyEvent::StageActive { stage, .. } = event {
                if stages.last() != Some(stage) {
                    stages.push(*stage);
                }
            }
        }
        stages
    }
    fn explain(&self, gpu: &str, use_spot: bool) -> LaunchError {
        let regions = vec!["us-east-1".to_string(), "us-west-2".to_string()];
        let ctx = FailureContext {
            gpu,
            regions: &regions,
            use_spot,
        };
        explain(
            self.exit_code,
            self.parser.stderr(),
            self.parser.failure_reasons(),
            &self.parser.tail(200),
            &ctx,
        )
    }
}

/// Undoes `cat -v`: `^[` is ESC, `^M` CR, `M-x` a byte with the high bit set.
fn decode_cat_v(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let mut high = 0u8;
        let mut j = i;
        if bytes[j] == b'M' && bytes.get(j + 1) == Some(&b'-') && j + 2 < bytes.len() {
            high = 0x80;
            j += 2;
        }
        let (byte, used) = match (bytes[j], bytes.get(j + 1)) {
            (b'^', Some(b'?')) => (0x7f, 2),
            (b'^', Some(&c)) if (b'@'..=b'_').contains(&c) => (c - b'@', 2),
            (c, _) => (c, 1),
        };
        if high == 0 && used == 1 {
            out.push(byte);
        } else {
            out.push(byte | high);
        }
        i = j + used;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn load(path: &Path) -> Transcript {
    let raw = std::fs::read(path).expect("fixture readable");
    let mut text = String::from_utf8_lossy(&raw).into_owned();
    if text.contains("^[[") {
        text = decode_cat_v(&text);
    }
    let exit_re = Regex::new(r"(?i)exit code:? (-?\d+)").expect("regex");
    let header_exit = |header: &str| {
        exit_re
            .captures(header)
            .and_then(|c| c[1].parse::<i32>().ok())
    };
    const OUT: &str = "## ---- STDOUT ----";
    const ERR: &str = "## ---- STDERR ----";
    if let (Some(o), Some(e)) = (text.find(OUT), text.find(ERR)) {
        let header = &text[..o];
        let stdout = text[o + OUT.len()..e].strip_prefix('\n').unwrap_or("");
        let stderr = text[e + ERR.len()..].strip_prefix('\n').unwrap_or("");
        let mut lines: Vec<(Stream, String)> = stdout
            .split_terminator('\n')
            .map(|l| (Stream::Stdout, l.to_string()))
            .collect();
        lines.extend(
            stderr
                .split_terminator('\n')
                .map(|l| (Stream::Stderr, l.to_string())),
        );
        return Transcript {
            exit_code: header_exit(header),
            lines,
        };
    }
    // No sections: a merged pty stream, a timed arrival log or a raw server log.
    let timed = Regex::new(r"^\[\s*[\d.]+s\] \[(out|err)\] (.*)$").expect("regex");
    let mut lines = Vec::new();
    for line in text.split_terminator('\n') {
        if line.starts_with("$ ") || line.starts_with('#') {
            continue;
        }
        match timed.captures(line) {
            Some(c) if &c[1] == "err" => lines.push((Stream::Stderr, c[2].to_string())),
            Some(c) => lines.push((Stream::Stdout, c[2].to_string())),
            None => lines.push((Stream::Stdout, line.to_string())),
        }
    }
    let header: String = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    Transcript {
        exit_code: header_exit(&header),
        lines,
    }
}

fn replay(path: &Path) -> Outcome {
    let transcript = load(path);
    let mut parser = SkyOutputParser::new();
    let mut events = Vec::new();
    for (stream, line) in &transcript.lines {
        events.extend(parser.feed(*stream, line));
    }
    Outcome {
        events,
        parser,
        exit_code: transcript.exit_code,
    }
}

fn fixture(dir: &str, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no fixture {prefix} in {dir}"))
}

fn shared(prefix: &str) -> Outcome {
    replay(&fixture(SHARED, prefix))
}

fn ours(prefix: &str) -> Outcome {
    replay(&fixture(OURS, prefix))
}

/// Every fixture file must have a test below; a new transcript fails this until it gets one.
#[test]
fn every_fixture_file_is_covered_and_replays_without_panicking() {
    const COVERED: [&str; 28] = [
        "00",
        "01",
        "02",
        "03",
        "04",
        "05",
        "06",
        "07",
        "08",
        "10",
        "11",
        "12",
        "13",
        "14",
        "15",
        "18",
        "19",
        "21",
        "22",
        "24",
        "25",
        "26",
        "27",
        "28",
        "success-aws-l4-spot",
        "failover-aws-l4-second-zone",
        "setup-failure-aws-l4",
        "spot-capacity-aws-l4-all-zones",
    ];
    for dir in [SHARED, OURS] {
        for entry in std::fs::read_dir(dir).expect("fixture dir") {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !name.ends_with(".txt") {
                continue;
            }
            assert!(
                COVERED.iter().any(|p| name.starts_with(p)),
                "fixture {name} has no expectation"
            );
            let outcome = replay(&path);
            let error = outcome.explain("L4", false);
            assert!(!error.title.is_empty(), "{name}");
        }
    }
}

#[test]
fn non_launch_transcripts_produce_no_launch_events() {
    for prefix in ["00", "01", "02", "21", "22", "24"] {
        let outcome = shared(prefix);
        assert!(
            outcome.attempts().is_empty() && outcome.stages().is_empty(),
            "{prefix}: {:?}",
            outcome.events
        );
    }
}

#[test]
fn killed_retry_until_up_without_output_is_internal() {
    for prefix in ["21", "22"] {
        assert_eq!(
            shared(prefix).explain("L4", false).code,
            ErrorCode::Internal,
            "{prefix}"
        );
    }
}

#[test]
fn offline_catalog_fetch_is_provider_unavailable() {
    for prefix in ["03", "04"] {
        let error = shared(prefix).explain("L4", false);
        assert_eq!(error.code, ErrorCode::ProviderUnavailable, "{prefix}");
        assert!(error.message.contains("ConnectionError"));
    }
}

#[test]
fn no_enabled_cloud_is_no_cloud_access() {
    // 06 asked for an invalid cluster name, but the cloud check runs first and is what failed.
    for prefix in ["05", "06"] {
        let error = shared(prefix).explain("L4", false);
        assert_eq!(error.code, ErrorCode::NoCloudAccess, "{prefix}");
        assert!(error.suggestions.iter().any(|s| s.contains("sky check")));
        assert!(error.suggestions.iter().any(|s| s.contains("local")));
    }
}

#[test]
fn yaml_schema_errors_are_invalid_request() {
    for prefix in ["07", "08"] {
        assert_eq!(
            shared(prefix).explain("L4", false).code,
            ErrorCode::InvalidRequest,
            "{prefix}"
        );
    }
}

#[test]
fn confirmation_prompt_abort_is_invalid_request_and_no_attempt() {
    let outcome = shared("10");
    assert!(outcome.attempts().is_empty());
    assert_eq!(outcome.explain("L4", true).code, ErrorCode::InvalidRequest);
}

#[test]
fn missing_rsync_is_internal_and_quoted() {
    let outcome = shared("11");
    assert!(outcome.attempts().is_empty());
    let error = outcome.explain("L4", true);
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("rsync"));
}

#[test]
fn dry_run_failover_reports_four_zone_attempts_with_the_image_reason() {
    let outcome = shared("12");
    let attempts = outcome.attempts();
    let zones: Vec<_> = attempts
        .iter()
        .map(|a| a.zone.clone().unwrap_or_default())
        .collect();
    assert_eq!(zones, ["use1-az1", "use1-az2", "usw2-az1", "usw2-az2"]);
    assert_eq!(attempts[0].region.as_deref(), Some("us-east-1"));
    assert_eq!(attempts[2].region.as_deref(), Some("us-west-2"));
    assert!(attempts.iter().all(|a| a.market == Market::Spot));
    assert_eq!(attempts[3].price_per_hour, Some(0.39));
    let failures = outcome.failures();
    assert_eq!(failures.len(), 4);
    assert!(failures[0].starts_with("No image found in catalog for region us-east-1"));
    // Neither capacity nor access: the mapper quotes SkyPilot instead of guessing.
    let error = outcome.explain("L4", true);
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("No image found"));
}

#[test]
fn dry_run_dying_on_the_ec2_endpoint_has_no_attempt_and_is_provider_unavailable() {
    let outcome = shared("13");
    assert!(outcome.attempts().is_empty());
    assert_eq!(
        outcome.explain("L4", true).code,
        ErrorCode::ProviderUnavailable
    );
}

#[test]
fn spot_failover_on_identity_errors_is_credentials_invalid() {
    let outcome = shared("14");
    let attempts = outcome.attempts();
    assert_eq!(attempts.len(), 4);
    assert_eq!(
        attempts[0],
        Attempt {
            cloud: "AWS".into(),
            region: Some("us-east-1".into()),
            zone: Some("use1-az1".into()),
            instance_type: Some("g6.xlarge".into()),
            market: Market::Spot,
            price_per_hour: Some(0.35),
            outcome: AttemptOutcome::Trying,
            reason: None,
        }
    );
    let failures = outcome.failures();
    assert_eq!(failures.len(), 4);
    assert!(failures
        .iter()
        .all(|f| f == "CloudUserIdentityError: Failed to get AWS user."));
    assert!(outcome
        .events
        .iter()
        .any(|e| matches!(e, SkyEvent::Detail(d) if d.starts_with("Launching a spot job"))));
    let error = outcome.explain("L4", true);
    assert_eq!(error.code, ErrorCode::CredentialsInvalid);
    assert!(error.raw.contains("Provision failures (tried 4 infra)"));
}

#[test]
fn unknown_accelerator_is_invalid_accelerator() {
    let outcome = shared("15");
    assert!(outcome.attempts().is_empty());
    let error = outcome.explain("A1000", false);
    assert_eq!(error.code, ErrorCode::InvalidAccelerator);
    assert!(error.title.contains("A1000"));
    assert!(error
        .suggestions
        .iter()
        .any(|s| s.contains("sky gpus list")));
}

#[test]
fn invalid_region_suggests_the_close_matches() {
    let error = shared("18").explain("L4", false);
    assert_eq!(error.code, ErrorCode::InvalidRegion);
    assert!(error.title.contains("us-east-9"));
    assert_eq!(
        error.suggestions,
        ["Use region us-east-1", "Use region us-west-2"]
    );
}

#[test]
fn invalid_cluster_name_after_the_optimizer_is_invalid_request_without_attempt() {
    let outcome = shared("19");
    assert!(outcome.attempts().is_empty());
    let error = outcome.explain("L4", false);
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(error.message.contains("My_Cluster!"));
}

#[test]
fn server_request_log_shows_one_failed_attempt_per_retry_round() {
    let outcome = shared("25");
    let attempts = outcome.attempts();
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a.region.as_deref() == Some("us-east-1")
            && a.zone.is_none()
            && a.market == Market::OnDemand
            && a.price_per_hour == Some(0.80)));
    assert_eq!(outcome.failures().len(), 3);
    assert!(outcome
        .events
        .iter()
        .any(|e| matches!(e, SkyEvent::Detail(d) if d == "Retry after 30s")));
    // No stderr exception (the client was killed), but the reasons still name the cause.
    assert_eq!(
        outcome.explain("L4", false).code,
        ErrorCode::CredentialsInvalid
    );
}

#[test]
fn tty_transcript_with_spinner_redraws_parses_like_piped_output() {
    let outcome = shared("26");
    let attempts = outcome.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].instance_type.as_deref(), Some("g6.xlarge"));
    assert_eq!(attempts[0].price_per_hour, Some(0.80));
    assert_eq!(
        outcome.failures(),
        ["CloudUserIdentityError: Failed to get AWS user."]
    );
    // The pty merges stderr into stdout; hand the mapper the merged tail as stderr.
    let regions = vec!["us-east-1".to_string()];
    let ctx = FailureContext {
        gpu: "L4",
        regions: &regions,
        use_spot: false,
    };
    let tail = outcome.parser.tail(200);
    let error = explain(
        Some(1),
        &tail,
        outcome.parser.failure_reasons(),
        &tail,
        &ctx,
    );
    assert_eq!(error.code, ErrorCode::CredentialsInvalid);
}

#[test]
fn rest_error_message_for_a_near_miss_accelerator_lists_offered_ones() {
    let text = std::fs::read_to_string(fixture(SHARED, "27")).expect("fixture");
    let body = &text[text.find("\n{").expect("json body") + 1..];
    let payload: serde_json::Value = serde_json::from_str(body).expect("valid json");
    let error_json = payload["detail"]["error"].as_str().expect("error string");
    let inner: serde_json::Value = serde_json::from_str(error_json).expect("inner json");
    let stderr: Vec<String> = format!(
        "sky.exceptions.{}: {}",
        inner["type"].as_str().expect("type"),
        inner["message"].as_str().expect("message")
    )
    .lines()
    .map(strip_ansi)
    .collect();
    let regions = Vec::new();
    let ctx = FailureContext {
        gpu: "A10",
        regions: &regions,
        use_spot: false,
    };
    let error = explain(Some(1), &stderr, &[], &stderr, &ctx);
    assert_eq!(error.code, ErrorCode::InvalidAccelerator);
    assert_eq!(
        error.suggestions[0],
        "Use one of the offered GPUs: A100:8, A10G:1."
    );
}

#[test]
fn unknown_cli_option_is_invalid_request() {
    let outcome = shared("28");
    assert_eq!(outcome.exit_code, Some(2));
    let error = outcome.explain("L4", false);
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(error.message.contains("No such option: --gpu"));
}

#[test]
fn spot_success_walks_the_stages_in_order_with_one_attempt() {
    let outcome = ours("success-aws-l4-spot");
    assert_eq!(
        outcome.stages(),
        [
            Stage::Provision,
            Stage::InstanceUp,
            Stage::Setup,
            Stage::StartModelServer
        ]
    );
    assert_eq!(
        outcome.attempts(),
        [Attempt {
            cloud: "AWS".into(),
            region: Some("us-east-1".into()),
            zone: Some("us-east-1a".into()),
            instance_type: Some("g6.xlarge".into()),
            market: Market::Spot,
            price_per_hour: Some(0.35),
            outcome: AttemptOutcome::Trying,
            reason: None,
        }]
    );
    assert!(outcome.failures().is_empty());
    let setup_details: Vec<_> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            SkyEvent::StageActive {
                stage: Stage::Setup,
                detail,
            } => detail.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        setup_details,
        ["Syncing files", "Setup detached", "Job submitted, ID: 1"]
    );
}

#[test]
fn failover_to_a_second_region_reports_the_capacity_reason_then_succeeds() {
    let outcome = ours("failover-aws-l4-second-zone");
    let attempts = outcome.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].region.as_deref(), Some("us-east-1"));
    assert_eq!(attempts[0].zone, None);
    assert_eq!(attempts[0].market, Market::OnDemand);
    assert_eq!(attempts[1].region.as_deref(), Some("us-west-2"));
    let failures = outcome.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].starts_with(
        "InsufficientInstanceCapacity: We currently do not have sufficient g6.xlarge capacity in the Availability Zone you requested (us-east-1a)"
    ));
    assert_eq!(
        outcome.stages(),
        [
            Stage::Provision,
            Stage::InstanceUp,
            Stage::Setup,
            Stage::StartModelServer
        ]
    );
    assert!(outcome
        .events
        .iter()
        .any(|e| matches!(e, SkyEvent::Detail(d) if d.contains("job_recovery"))));
}

#[test]
fn setup_failure_finishes_the_job_as_failed_setup_and_maps_to_setup_failed() {
    let outcome = ours("setup-failure-aws-l4");
    let finished: Vec<_> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            SkyEvent::JobFinished { status } => Some(status.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(finished, ["FAILED_SETUP"]);
    assert!(outcome.events.iter().any(
        |e| matches!(e, SkyEvent::Detail(d) if d.starts_with("Service section will be ignored"))
    ));
    assert_eq!(outcome.exit_code, Some(100));
    assert_eq!(outcome.explain("L4", false).code, ErrorCode::SetupFailed);
}

#[test]
fn spot_capacity_gone_in_every_zone_is_spot_capacity_unavailable_with_each_zone_tried() {
    let outcome = ours("spot-capacity-aws-l4-all-zones");
    let attempts = outcome.attempts();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts.iter().all(|a| a.market == Market::Spot),
        "{attempts:?}"
    );
    let failures = outcome.failures();
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("InsufficientInstanceCapacity")),
        "{failures:?}"
    );
    assert_eq!(outcome.exit_code, Some(1));
    let error = outcome.explain("L4", true);
    assert_eq!(error.code, ErrorCode::SpotCapacityUnavailable, "{error:?}");
}

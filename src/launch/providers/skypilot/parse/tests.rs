//! The `sky launch` output parser, line by line: attempts, stages, reasons and the tail.

use super::*;

fn feed_all(parser: &mut SkyOutputParser, lines: &[&str]) -> Vec<SkyEvent> {
    lines
        .iter()
        .flat_map(|l| parser.feed(Stream::Stdout, l))
        .collect()
}

fn table(infra: &str, instance: &str, cost: &str) -> Vec<String> {
    vec![
        "Considered resources (1 node):".to_string(),
        "-".repeat(60),
        " INFRA             INSTANCE          vCPUs   Mem(GB)   GPUS   COST ($)   CHOSEN   "
            .to_string(),
        "-".repeat(60),
        format!(" {infra}   {instance}   4       16        L4:1   {cost}       \x1b[32m   ✔\x1b[0m     \r"),
        "-".repeat(60),
    ]
}

#[test]
fn strip_ansi_removes_real_and_cat_v_escapes() {
    assert_eq!(strip_ansi("\x1b[32m✓ Done\x1b[0m"), "✓ Done");
    assert_eq!(strip_ansi("^[[1msky check^[[0m now"), "sky check now");
    assert_eq!(strip_ansi("\x1b[?25hline\r"), "line");
}

#[test]
fn strip_ansi_keeps_only_text_after_a_spinner_redraw() {
    assert_eq!(
        strip_ansi("⠋ Launching\r\x1b[2K  Reason: boom\r"),
        "  Reason: boom"
    );
}

#[test]
fn zone_ids_are_mapped_to_their_region() {
    assert_eq!(
        split_location("use1-az1"),
        (Some("us-east-1".into()), Some("use1-az1".into()))
    );
    assert_eq!(
        split_location("apne1-az4"),
        (Some("ap-northeast-1".into()), Some("apne1-az4".into()))
    );
    assert_eq!(
        split_location("us-east-1a"),
        (Some("us-east-1".into()), Some("us-east-1a".into()))
    );
    assert_eq!(
        split_location("us-central1-a"),
        (Some("us-central1".into()), Some("us-central1-a".into()))
    );
    assert_eq!(split_location("eastus"), (Some("eastus".into()), None));
}

#[test]
fn launching_line_starts_an_attempt_from_the_chosen_row() {
    let mut parser = SkyOutputParser::new();
    let mut lines = table("AWS (us-east-1)", "g6.xlarge", "0.80");
    lines.push("⚙\u{fe0e} Launching on AWS us-east-1 (us-east-1a,us-east-1b).".into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let events = feed_all(&mut parser, &refs);
    assert_eq!(
        events,
        vec![
            SkyEvent::StageActive {
                stage: Stage::Provision,
                detail: Some("Launching on AWS us-east-1 (us-east-1a,us-east-1b)".into()),
            },
            SkyEvent::AttemptStarted(Attempt {
                cloud: "AWS".into(),
                region: Some("us-east-1".into()),
                zone: None,
                instance_type: Some("g6.xlarge".into()),
                market: Market::OnDemand,
                price_per_hour: Some(0.80),
                outcome: AttemptOutcome::Trying,
                reason: None,
            }),
        ]
    );
}

#[test]
fn single_zone_and_spot_suffix_fill_zone_and_market() {
    let mut parser = SkyOutputParser::new();
    let mut lines = table("AWS (us-east-1a)", "g6.xlarge[Spot]", "0.35");
    lines.push("⚙\u{fe0e} Launching on AWS us-east-1 (us-east-1a).".into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let started = feed_all(&mut parser, &refs)
        .into_iter()
        .find_map(|e| match e {
            SkyEvent::AttemptStarted(a) => Some(a),
            _ => None,
        })
        .expect("an attempt starts");
    assert_eq!(started.zone.as_deref(), Some("us-east-1a"));
    assert_eq!(started.market, Market::Spot);
    assert_eq!(started.instance_type.as_deref(), Some("g6.xlarge"));
}

#[test]
fn azure_launch_without_zones_keeps_region_only() {
    let mut parser = SkyOutputParser::new();
    let events = parser.feed(Stream::Stdout, "⚙\u{fe0e} Launching on Azure eastus.");
    let SkyEvent::AttemptStarted(attempt) = &events[1] else {
        panic!("expected an attempt, got {events:?}");
    };
    assert_eq!(attempt.cloud, "Azure");
    assert_eq!(attempt.region.as_deref(), Some("eastus"));
    assert_eq!(attempt.zone, None);
}

#[test]
fn provider_capacity_error_is_preferred_over_the_sky_summary() {
    let mut parser = SkyOutputParser::new();
    parser.feed(
        Stream::Stdout,
        "⚙\u{fe0e} Launching on AWS us-east-1 (us-east-1a).",
    );
    parser.feed(
        Stream::Stdout,
        "\x1b[2mW 11-22 14:51:36 PID=3718 instance.py:420] create_instances: Attempt failed with An error occurred (InsufficientInstanceCapacity) when calling the RunInstances operation (reached max retries: 0): We currently do not have sufficient g6.xlarge capacity.\x1b[0m",
    );
    let events = parser.feed(
        Stream::Stdout,
        "sky.exceptions.ResourcesUnavailableError: Failed to acquire resources in all zones in us-east-1 for {AWS({'L4': 1})}.",
    );
    assert_eq!(
        events,
        vec![SkyEvent::AttemptFailed {
            reason: "InsufficientInstanceCapacity: We currently do not have sufficient g6.xlarge capacity.".into()
        }]
    );
}

#[test]
fn an_attempt_fails_only_once() {
    let mut parser = SkyOutputParser::new();
    parser.feed(
        Stream::Stdout,
        "⚙\u{fe0e} Launching on AWS us-east-1 (us-east-1a).",
    );
    parser.feed(
        Stream::Stdout,
        "sky.exceptions.ResourcesUnavailableError: Failed to acquire resources in all zones in us-east-1 for x.",
    );
    let events = parser.feed(
        Stream::Stdout,
        "\x1b[33m↺\x1b[0m Trying other potential resources.",
    );
    assert_eq!(
        events,
        vec![SkyEvent::Detail("Trying other potential resources".into())]
    );
    assert_eq!(parser.failure_reasons().len(), 1);
}

#[test]
fn cluster_launched_after_instance_up_adds_no_stage() {
    let mut parser = SkyOutputParser::new();
    let first = parser.feed(
        Stream::Stdout,
        "\x1b[2m└── \x1b[0m\x1b[2mInstance is up.\x1b[0m",
    );
    let second = parser.feed(
        Stream::Stdout,
        "✓ Cluster launched: c1.  View logs: sky logs --provision c1",
    );
    assert_eq!(first.len(), 1);
    assert!(second.is_empty());
}

#[test]
fn setup_failure_reports_failed_setup_once() {
    let mut parser = SkyOutputParser::new();
    let first = parser.feed(
        Stream::Stdout,
        "ERROR: Job 1's setup failed with return code 1 (pid=6619).",
    );
    let second = parser.feed(Stream::Stdout, "✓ Job finished (status: FAILED_SETUP).");
    assert_eq!(
        first,
        vec![SkyEvent::JobFinished {
            status: "FAILED_SETUP".into()
        }]
    );
    assert!(second.is_empty());
}

#[test]
fn stderr_lines_are_kept_but_drive_no_events() {
    let mut parser = SkyOutputParser::new();
    let events = parser.feed(
        Stream::Stderr,
        "sky.exceptions.ResourcesUnavailableError: \x1b[31mFailed to provision all possible launchable resources.\x1b[0m",
    );
    assert!(events.is_empty());
    assert_eq!(
        parser.stderr(),
        ["sky.exceptions.ResourcesUnavailableError: Failed to provision all possible launchable resources."]
    );
}

#[test]
fn tail_skips_blank_lines_and_keeps_the_latest() {
    let mut parser = SkyOutputParser::new();
    for line in ["a", "", "b", "\x1b[?25h", "c"] {
        parser.feed(Stream::Stdout, line);
    }
    parser.feed(Stream::Stderr, "d");
    assert_eq!(parser.tail(3), vec!["b", "c", "d"]);
}

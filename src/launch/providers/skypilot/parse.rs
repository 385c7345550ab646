//! Turns the console output of SkyPilot 0.14.1 `sky launch` into launch events: stages,
//! placement attempts (one per optimizer table), their failure reasons, and notable warnings.
//! The text is not a stable interface (reference §0.2), so every pattern is anchored on the
//! line catalogue of reference §2.2/§2.5 and anything unrecognised is kept only for `tail()`.
//! Pure: no I/O, the caller feeds lines as they arrive.

use std::collections::VecDeque;
use std::sync::LazyLock;

use regex::Regex;

use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};

/// How many stripped lines `tail()` can look back over; error messages need ~30, the rest is slack.
const TAIL_CAPACITY: usize = 2000;
/// Provider error texts can be whole paragraphs; a reason is meant to be one readable line.
const REASON_MAX_CHARS: usize = 300;

static ANSI: LazyLock<Regex> = LazyLock::new(|| {
    // Real ESC bytes and the `^[[` form that `cat -v` leaves in saved transcripts.
    Regex::new(r"(?:\x1b|\^\[)\[[0-9;?]*[A-Za-z]").expect("static regex")
});
/// `I 11-22 14:51:36.462 PID=3718 file.py:200] ` — present on provision-module warnings and
/// on every line when the API server runs with SKYPILOT_DEBUG.
static LOG_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[IWED] \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?: PID=\d+)? [\w./-]+:\d+\] ")
        .expect("static regex")
});
static CONSIDERED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^Considered resources \(\d+ nodes?\):").expect("static regex"));
static COLUMN_SPLIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s{2,}").expect("static regex"));
static INFRA_CELL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\S+)(?: \(([^)]*)\))?$").expect("static regex"));
static AWS_ZONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$").expect("static regex"));
static AWS_ZONE_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([a-z]{2})([a-z]{1,2})(\d+)-az\d+$").expect("static regex"));
static GCP_ZONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([a-z]+-[a-z]+\d+)-[a-z]$").expect("static regex"));
static LAUNCHING_ON: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:⚙\x{FE0E}?\s*)?Launching on (\S+?)(?: ([^\s(]+?))?(?: \(([^)]*)\))?\.\s*$")
        .expect("static regex")
});
static INSTANCE_UP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*[├└]── (?:Instance|Pod)s? (?:is|are) up\.").expect("static regex")
});
static DOCKER_UP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*[├└]── Docker container is up\.").expect("static regex"));
static CLUSTER_LAUNCHED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^✓ Cluster launched: (.+?)\.(?:\s|$)").expect("static regex"));
static SETUP_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:⚙\x{FE0E}?\s*(Syncing files|Running setup on [^.]+)|✓ (Setup detached|Setup completed))\.",
    )
    .expect("static regex")
});
static JOB_SUBMITTED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^⚙\x{FE0E}?\s*Job submitted, ID: (\d+)").expect("static regex"));
static JOB_STARTED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*└── Job started\.").expect("static regex"));
static JOB_FINISHED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^✓ Job finished \(status: ([A-Z_]+)\)\.").expect("static regex"));
static SETUP_FAILED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^ERROR: Job \d+'s setup failed with return code").expect("static regex")
});
static SKY_EXCEPTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sky\.exceptions\.(\w+): (.*)$").expect("static regex"));
static AWS_PROVIDER_ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"An error occurred \((\w+)\) when calling the \w+ operation(?: \([^)]*\))?: (.*)$")
        .expect("static regex")
});
static GCP_PROVIDER_ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Got return codes? ('[^:]+) in ([\w-]+): (.*)$").expect("static regex")
});
static AZURE_PROVIDER_ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Failed to create instances: \[[\w.]+\] (.*)$").expect("static regex")
});

/// Removes ANSI escape sequences (real ESC bytes and the `^[[` form `cat -v` writes) and
/// carriage returns. A carriage return rewinds the terminal line, so only the text after the
/// last one survives, which is what a terminal shows for spinner redraws.
pub fn strip_ansi(line: &str) -> String {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    let visible = trimmed.rsplit('\r').next().unwrap_or(trimmed);
    ANSI.replace_all(visible, "").into_owned()
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkyEvent {
    /// A stage became active; detail is a short human line for the UI (e.g. "Launching on AWS us-east-1 (us-east-1a)").
    StageActive {
        stage: Stage,
        detail: Option<String>,
    },
    /// A new placement attempt began (outcome "trying", reason None).
    AttemptStarted(Attempt),
    /// The current attempt failed; `reason` is the one-line cause (e.g. the sky.exceptions line or the AWS InsufficientInstanceCapacity text).
    AttemptFailed { reason: String },
    /// A line worth showing as a detail (warnings like the spot-recovery warning, "Trying other potential resources").
    Detail(String),
    /// `✓ Job finished (status: X)` or the setup failure line: final job status as printed.
    JobFinished { status: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The placement attempt in progress: the optimizer's chosen row, then what the launch made of it.
#[derive(Debug, Clone)]
struct CurrentAttempt {
    attempt: Attempt,
    started: bool,
    failed: bool,
    /// Provider error text seen during this attempt; more specific than SkyPilot's summary.
    provider_reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct SkyOutputParser {
    tail: VecDeque<String>,
    stderr: Vec<String>,
    failure_reasons: Vec<String>,
    /// Column names of the optimizer table being read, when inside one.
    table_header: Option<Vec<String>>,
    in_table: bool,
    /// `-----` lines seen in the current table: header sits between the first two, rows
    /// between the second and third, after which the table is over.
    table_borders: u8,
    current: Option<CurrentAttempt>,
    /// The spot warning (§2.2 line 5) tells us the market before any table does.
    spot_requested: bool,
    instance_up: bool,
    job_status: Option<String>,
}

impl SkyOutputParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one raw line (ANSI allowed); returns the events it produced.
    pub fn feed(&mut self, stream: Stream, line: &str) -> Vec<SkyEvent> {
        let clean = strip_ansi(line);
        // Rich-status payloads are spinner updates a non-TTY client never shows.
        if clean.contains("<sky-payload>") {
            return Vec::new();
        }
        if !clean.trim().is_empty() {
            if self.tail.len() == TAIL_CAPACITY {
                self.tail.pop_front();
            }
            self.tail.push_back(clean.clone());
        }
        match stream {
            Stream::Stderr => {
                // Stderr carries only the final exception, usage errors and `Aborted!`
                // (reference §2.3); the error mapper reads it, it drives no stage.
                self.stderr.push(clean);
                Vec::new()
            }
            Stream::Stdout => {
                let text = LOG_PREFIX.replace(&clean, "").into_owned();
                self.on_stdout(&text)
            }
        }
    }

    /// The last N non-empty lines seen (ANSI stripped), both streams interleaved, for LaunchError.raw.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.tail.len().saturating_sub(n);
        self.tail.iter().skip(skip).cloned().collect()
    }

    /// All stderr lines seen, ANSI stripped.
    pub fn stderr(&self) -> &[String] {
        &self.stderr
    }

    /// Every failed attempt's reason so far, in order.
    pub fn failure_reasons(&self) -> &[String] {
        &self.failure_reasons
    }

    fn on_stdout(&mut self, text: &str) -> Vec<SkyEvent> {
        let mut events = Vec::new();
        let trimmed = text.trim();

        if CONSIDERED.is_match(trimmed) {
            // A new table means the previous candidate is over, whether or not SkyPilot said why.
            self.close_attempt(None, &mut events);
            self.in_table = true;
            self.table_borders = 0;
            self.table_header = None;
            self.current = None;
            return events;
        }
        if self.in_table {
            if trimmed.starts_with("INFRA") {
                self.table_header = Some(split_columns(trimmed));
                return events;
            }
            if trimmed.contains('✔') {
                if let Some(attempt) = self.parse_chosen_row(trimmed) {
                    self.current = Some(CurrentAttempt {
                        attempt,
                        started: false,
                        failed: false,
                        provider_reason: None,
                    });
                }
                return events;
            }
            if !trimmed.is_empty() && trimmed.chars().all(|c| c == '-') {
                self.table_borders += 1;
                if self.table_borders >= 3 {
                    self.in_table = false;
                }
                return events;
            }
            if self.table_borders < 3 && !trimmed.is_empty() {
                // A row that was not chosen.
                return events;
            }
            self.in_table = false;
        }

        if let Some(caps) = LAUNCHING_ON.captures(trimmed) {
            self.in_table = false;
            let cloud = caps[1].to_string();
            let region = caps.get(2).map(|m| m.as_str().to_string());
            let zones = caps.get(3).map(|m| m.as_str().to_string());
            events.push(SkyEvent::StageActive {
                stage: Stage::Provision,
                detail: Some(launching_detail(
                    &cloud,
                    region.as_deref(),
                    zones.as_deref(),
                )),
            });
            self.start_attempt_from_launching(cloud, region, zones, &mut events);
            return events;
        }

        if let Some(reason) = provider_reason(trimmed) {
            if let Some(current) = self.current.as_mut() {
                // Keep the first: AWS repeats the same error once per subnet.
                if current.provider_reason.is_none() && !current.failed {
                    current.provider_reason = Some(reason);
                }
            }
            return events;
        }

        if let Some(caps) = SKY_EXCEPTION.captures(trimmed) {
            let message = caps[2].trim();
            // The final summary is the launch's error, not one attempt's; the mapper reads it.
            if !message.starts_with("Failed to provision all possible") {
                let reason = format!("{}: {}", &caps[1], message);
                self.close_attempt(Some(reason), &mut events);
            }
            return events;
        }

        if trimmed.contains("Trying other potential resources.") {
            self.close_attempt(None, &mut events);
            events.push(SkyEvent::Detail(
                "Trying other potential resources".to_string(),
            ));
            return events;
        }
        if trimmed.contains("Failed to provision resources.")
            || trimmed.starts_with("Failed to provision all possible launchable resources.")
        {
            self.close_attempt(None, &mut events);
            return events;
        }
        if trimmed.contains("Retry after ") && trimmed.starts_with('↺') {
            events.push(SkyEvent::Detail(first_segment(trimmed)));
            return events;
        }

        if INSTANCE_UP.is_match(text) {
            self.mark_instance_up(None, &mut events);
            return events;
        }
        if DOCKER_UP.is_match(text) {
            events.push(SkyEvent::Detail("Docker container is up".to_string()));
            return events;
        }
        if CLUSTER_LAUNCHED.is_match(trimmed) {
            self.mark_instance_up(Some("Cluster launched"), &mut events);
            return events;
        }
        if let Some(caps) = SETUP_LINE.captures(trimmed) {
            let detail = caps.get(1).or(caps.get(2)).map(|m| m.as_str().to_string());
            events.push(SkyEvent::StageActive {
                stage: Stage::Setup,
                detail,
            });
            return events;
        }
        if let Some(caps) = JOB_SUBMITTED.captures(trimmed) {
            events.push(SkyEvent::StageActive {
                stage: Stage::Setup,
                detail: Some(format!("Job submitted, ID: {}", &caps[1])),
            });
            return events;
        }
        if JOB_STARTED.is_match(text) {
            events.push(SkyEvent::StageActive {
                stage: Stage::StartModelServer,
                detail: Some("Job started".to_string()),
            });
            return events;
        }
        if let Some(caps) = JOB_FINISHED.captures(trimmed) {
            self.finish_job(caps[1].to_string(), &mut events);
            return events;
        }
        if SETUP_FAILED.is_match(trimmed) {
            self.finish_job("FAILED_SETUP".to_string(), &mut events);
            return events;
        }

        if trimmed.starts_with("Launching a spot job that does not automatically recover") {
            self.spot_requested = true;
            events.push(SkyEvent::Detail(trimmed.to_string()));
        } else if trimmed.starts_with("Service section will be ignored")
            || trimmed.starts_with("The task has `job_recovery` specified")
        {
            events.push(SkyEvent::Detail(trimmed.to_string()));
        }
        events
    }

    fn parse_chosen_row(&self, row: &str) -> Option<Attempt> {
        let cells = split_columns(row);
        let column = |name: &str, fallback: usize| {
            self.table_header
                .as_ref()
                .and_then(|h| h.iter().position(|c| c == name))
                .unwrap_or(fallback)
        };
        let infra = cells.get(column("INFRA", 0))?;
        let caps = INFRA_CELL.captures(infra)?;
        let (region, zone) = match caps.get(2) {
            Some(location) => split_location(location.as_str()),
            None => (None, None),
        };
        let instance_cell = cells.get(column("INSTANCE", 1)).map(String::as_str);
        let (instance_type, market) = match instance_cell {
            Some(cell) if cell.ends_with("[Spot]") => (
                Some(cell.trim_end_matches("[Spot]").to_string()),
                Market::Spot,
            ),
            Some("-") | None => (None, Market::OnDemand),
            Some(cell) => (Some(cell.to_string()), Market::OnDemand),
        };
        let price_per_hour = cells
            .get(column("COST ($)", 5))
            .and_then(|c| c.parse::<f64>().ok());
        Some(Attempt {
            cloud: caps[1].to_string(),
            region,
            zone,
            instance_type,
            market,
            price_per_hour,
            outcome: AttemptOutcome::Trying,
            reason: None,
        })
    }

    fn start_attempt_from_launching(
        &mut self,
        cloud: String,
        region: Option<String>,
        zones: Option<String>,
        events: &mut Vec<SkyEvent>,
    ) {
        if let Some(current) = self.current.as_ref() {
            if current.started && !current.failed {
                // Same candidate announced again (e.g. a retried INIT cluster): not a new attempt.
                return;
            }
        }
        let market = if self.spot_requested {
            Market::Spot
        } else {
            Market::OnDemand
        };
        let mut attempt = match self.current.take() {
            Some(pending) if !pending.started => pending.attempt,
            _ => Attempt {
                cloud: cloud.clone(),
                region: None,
                zone: None,
                instance_type: None,
                market,
                price_per_hour: None,
                outcome: AttemptOutcome::Trying,
                reason: None,
            },
        };
        attempt.cloud = cloud;
        if region.is_some() {
            attempt.region = region;
        }
        if let Some(zones) = zones {
            let list: Vec<&str> = zones.split(',').map(str::trim).collect();
            // Several zones mean SkyPilot picks among them; no single zone to report yet.
            attempt.zone = match list.as_slice() {
                [one] => Some((*one).to_string()),
                _ => None,
            };
        }
        events.push(SkyEvent::AttemptStarted(attempt.clone()));
        self.current = Some(CurrentAttempt {
            attempt,
            started: true,
            failed: false,
            provider_reason: None,
        });
    }

    /// Ends the current attempt as failed, once. Without a `Launching on` line (dry runs, or
    /// failures before it such as the identity check) the table row is reported as started
    /// first, so every failure belongs to a visible attempt.
    fn close_attempt(&mut self, sky_reason: Option<String>, events: &mut Vec<SkyEvent>) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.failed {
            return;
        }
        if !current.started && sky_reason.is_none() && current.provider_reason.is_none() {
            // A table that never led to a launch (a dry run, or the launch stopped) is no attempt.
            return;
        }
        if !current.started {
            current.started = true;
            events.push(SkyEvent::StageActive {
                stage: Stage::Provision,
                detail: Some(attempt_detail(&current.attempt)),
            });
            events.push(SkyEvent::AttemptStarted(current.attempt.clone()));
        }
        current.failed = true;
        let reason = current
            .provider_reason
            .clone()
            .or(sky_reason)
            .unwrap_or_else(|| "SkyPilot moved on without reporting a reason".to_string());
        self.failure_reasons.push(reason.clone());
        events.push(SkyEvent::AttemptFailed { reason });
    }

    fn mark_instance_up(&mut self, detail: Option<&str>, events: &mut Vec<SkyEvent>) {
        if self.instance_up {
            return;
        }
        self.instance_up = true;
        events.push(SkyEvent::StageActive {
            stage: Stage::InstanceUp,
            detail: Some(detail.unwrap_or("Instance is up").to_string()),
        });
    }

    fn finish_job(&mut self, status: String, events: &mut Vec<SkyEvent>) {
        // A setup failure prints both the ERROR line and `Job finished (status: FAILED_SETUP)`.
        if self.job_status.as_deref() == Some(status.as_str()) {
            return;
        }
        self.job_status = Some(status.clone());
        events.push(SkyEvent::JobFinished { status });
    }
}

fn split_columns(line: &str) -> Vec<String> {
    COLUMN_SPLIT
        .split(line.trim())
        .map(str::to_string)
        .collect()
}

/// Splits an INFRA location (`us-east-1`, `us-east-1a`, `use1-az1`, `us-central1-a`,
/// `us-east-1, us-east-1a`) into region and zone.
fn split_location(location: &str) -> (Option<String>, Option<String>) {
    if let Some((region, zone)) = location.split_once(',') {
        return (
            Some(region.trim().to_string()),
            Some(zone.trim().to_string()),
        );
    }
    if let Some(caps) = AWS_ZONE.captures(location) {
        return (Some(caps[1].to_string()), Some(location.to_string()));
    }
    if let Some(caps) = AWS_ZONE_ID.captures(location) {
        return (
            aws_region_from_zone_id(&caps[1], &caps[2], &caps[3]),
            Some(location.to_string()),
        );
    }
    if let Some(caps) = GCP_ZONE.captures(location) {
        return (Some(caps[1].to_string()), Some(location.to_string()));
    }
    (Some(location.to_string()), None)
}

/// AWS zone IDs (`use1-az1`) abbreviate the region: geography, direction, number.
fn aws_region_from_zone_id(geo: &str, direction: &str, number: &str) -> Option<String> {
    let direction = match direction {
        "e" => "east",
        "w" => "west",
        "n" => "north",
        "s" => "south",
        "c" => "central",
        "ne" => "northeast",
        "nw" => "northwest",
        "se" => "southeast",
        "sw" => "southwest",
        _ => return None,
    };
    Some(format!("{geo}-{direction}-{number}"))
}

fn provider_reason(line: &str) -> Option<String> {
    let reason = if let Some(caps) = AWS_PROVIDER_ERROR.captures(line) {
        format!("{}: {}", &caps[1], caps[2].trim())
    } else if let Some(caps) = GCP_PROVIDER_ERROR.captures(line) {
        format!("{} in {}: {}", &caps[1], &caps[2], caps[3].trim())
    } else if let Some(caps) = AZURE_PROVIDER_ERROR.captures(line) {
        caps[1].trim().to_string()
    } else if line.starts_with("No image found in catalog for region") {
        line.to_string()
    } else {
        return None;
    };
    Some(truncate(&reason, REASON_MAX_CHARS))
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

/// The part of a line before its `View logs:` hint.
fn first_segment(line: &str) -> String {
    let without_glyph = line.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let end = without_glyph.find("  ").unwrap_or(without_glyph.len());
    without_glyph[..end].trim().to_string()
}

fn launching_detail(cloud: &str, region: Option<&str>, zones: Option<&str>) -> String {
    let mut detail = format!("Launching on {cloud}");
    if let Some(region) = region {
        detail.push(' ');
        detail.push_str(region);
    }
    if let Some(zones) = zones {
        detail.push_str(&format!(" ({zones})"));
    }
    detail
}

fn attempt_detail(attempt: &Attempt) -> String {
    let mut detail = format!("Trying {}", attempt.cloud);
    if let Some(location) = attempt.zone.as_ref().or(attempt.region.as_ref()) {
        detail.push_str(&format!(" {location}"));
    }
    if let Some(instance) = &attempt.instance_type {
        detail.push_str(&format!(" {instance}"));
    }
    if attempt.market == Market::Spot {
        detail.push_str(" (spot)");
    }
    detail
}

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

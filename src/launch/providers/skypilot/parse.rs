//! Turns the console output of SkyPilot 0.14.1 `sky launch` into launch events: stages,
//! placement attempts (one per optimizer table), their failure reasons, and notable warnings.
//! The text is not a stable interface (SkyPilot may reword it in any release), so every pattern is
//! anchored on a line the real SkyPilot 0.14.1 prints (recorded transcripts such as those under
//! `tests/fixtures/skypilot` replay them) and anything unrecognised is kept only for `tail()`.
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
    /// The spot warning (`Launching a spot job that does not automatically recover…`, printed
    /// before the optimizer's table) tells us the market before any table does.
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
                // Stderr carries only the final exception, usage errors and `Aborted!`; the
                // error mapper reads it, it drives no stage.
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

#[cfg(test)]
mod tests;

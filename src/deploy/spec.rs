//! A deployment as the API receives it, its validation (the launch checks, run on the launch
//! request each replica will get, so errors and suggestions are the same as for a launch job),
//! and what follows from it: each slot's market, each replica's launch request, which changes
//! make a new revision, and the estimated hourly cost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::launch::spec::{LaunchRequest, LaunchSpec, SpecError, SECRET_SHOWN};

/// Most replicas one deployment may ask for.
pub const MAX_REPLICAS: u32 = 100;
/// Longest deployment name: replica node names add `-r<revision>-<slot>-<suffix>` and must stay
/// within 63 characters.
pub const MAX_NAME_LEN: usize = 40;

/// Actions an approval policy may mark as guarded (waiting for an admin).
pub const GUARDABLE: &[&str] = &[
    "on_demand_fallback",
    "launch_replica",
    "replace_replica",
    "drain_replica",
    "terminate_replica",
];

/// `POST /admin/deployments` and `PUT /admin/deployments/<name>` body: the full desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// A DNS-label-like slug, unique: lowercase letters, digits and `-`, at most 40 characters.
    pub name: String,
    /// Hugging Face model id; `/v1` requests for it are routed to the replicas.
    pub model: String,
    pub provider: String,
    #[serde(default)]
    pub gpu: Option<String>,
    #[serde(default)]
    pub gpu_count: Option<u32>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub cloud: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub disk_gb: Option<u32>,
    /// Passed to every replica as in a launch; values are secret (shown as `<secret>`).
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// `provider: "ssh"`: replicas go only to hosts carrying every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How many ready replicas to keep.
    pub replicas: u32,
    #[serde(default)]
    pub spot: SpotPolicy,
    #[serde(default)]
    pub update: UpdatePolicy,
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// Moves `replicas` between a minimum and a maximum on a load signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscalePolicy>,
    /// Which replica a `/v1` request goes to (`least_load` by default). Changing it makes no
    /// new revision: replicas run the same.
    #[serde(default)]
    pub routing: crate::routing::route::RoutingPolicy,
}

/// What the autoscaler scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleMetric {
    /// Requests in flight per ready replica, at the load balancer.
    InFlight,
    /// Requests waiting in vLLM's queue per ready replica (`num_requests_waiting`, from the
    /// agents' heartbeats).
    Queue,
    /// Time to the answer's first byte at the load balancer, in seconds (the mean over the
    /// window).
    Ttft,
    /// Requests per second per ready replica, at the load balancer (SkyServe's policy).
    Rps,
}

impl ScaleMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleMetric::InFlight => "in_flight",
            ScaleMetric::Queue => "queue",
            ScaleMetric::Ttft => "ttft",
            ScaleMetric::Rps => "rps",
        }
    }
}

/// `autoscale`: `replicas` becomes the current desired count, moved between `min_replicas` and
/// `max_replicas` so that `metric` stays near `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalePolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metric: ScaleMetric,
    /// The value per replica (seconds for `ttft`) the autoscaler steers to.
    pub target: f64,
    /// How long the metric must stay above the target before replicas are added (default 30).
    #[serde(default = "default_up_delay")]
    pub scale_up_delay_s: u64,
    /// How long it must stay below before one is removed (default 300).
    #[serde(default = "default_down_delay")]
    pub scale_down_delay_s: u64,
    /// The metric is averaged over this many seconds before it is compared with the target
    /// (default 60): one burst is not a trend.
    #[serde(default = "default_window")]
    pub window_s: u64,
    /// With `min_replicas: 0`: no request for this long takes the deployment to zero replicas
    /// (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_after_s: Option<u64>,
    /// With `min_replicas: 0`: how long a request waits for a replica to start before it is
    /// answered 503 (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_timeout_s: Option<u64>,
}

/// Default idle time before a deployment that may scale to zero does.
pub const SCALE_TO_ZERO_AFTER_S: u64 = 300;
/// Default time a request waits for a cold start.
pub const COLD_START_TIMEOUT_S: u64 = 600;

impl AutoscalePolicy {
    pub fn scale_to_zero_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.scale_to_zero_after_s.unwrap_or(SCALE_TO_ZERO_AFTER_S))
    }

    pub fn cold_start_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cold_start_timeout_s.unwrap_or(COLD_START_TIMEOUT_S))
    }
}

fn default_up_delay() -> u64 {
    30
}

fn default_down_delay() -> u64 {
    300
}

fn default_window() -> u64 {
    60
}

/// Longest averaging window accepted: an hour.
const MAX_WINDOW_S: u64 = 3_600;

/// Longest scale delay accepted: a day.
const MAX_SCALE_DELAY_S: u64 = 86_400;

/// Which replicas run on spot VMs, and what happens when spot cannot be placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SpotPolicy {
    #[serde(default)]
    pub use_spot: bool,
    /// The first this many replicas always run on on-demand VMs.
    #[serde(default)]
    pub base_on_demand: u32,
    /// `on_demand`: a spot replica that cannot be placed runs on on-demand instead; `none`.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// How a new revision replaces the replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Replicas of the new revision launched beyond `replicas` at a time.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Ready replicas the update may take away at a time.
    #[serde(default)]
    pub max_unavailable: u32,
}

fn one() -> u32 {
    1
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

/// Which actions wait for an admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Action kinds (or `on_demand_fallback`) that wait as `pending` until approved.
    #[serde(default)]
    pub guarded: Vec<String>,
    /// A launch that would take the deployment's estimated hourly cost above this waits for
    /// approval.
    #[serde(default)]
    pub max_hourly_usd: Option<f64>,
}

/// A replica's market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Market {
    Spot,
    OnDemand,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on_demand",
        }
    }

    pub fn parse(s: &str) -> Option<Market> {
        match s {
            "spot" => Some(Market::Spot),
            "on_demand" => Some(Market::OnDemand),
            _ => None,
        }
    }
}

/// A deployment name: a DNS label (lowercase letters, digits, `-`; starts with a letter, ends
/// with a letter or digit), at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    let slug: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(MAX_NAME_LEN)
        .collect();
    Err(SpecError {
        suggestions: if slug.starts_with(|c: char| c.is_ascii_lowercase()) {
            vec![slug.trim_end_matches('-').to_string()]
        } else {
            Vec::new()
        },
        ..SpecError::invalid(
            "name",
            format!(
                "deployment name {name:?} is invalid: use 1-{MAX_NAME_LEN} lowercase letters, digits or '-', starting with a letter and ending with a letter or digit"
            ),
        )
    })
}

impl AutoscalePolicy {
    fn check(&self, replicas: u32) -> Result<(), SpecError> {
        if self.min_replicas > self.max_replicas
            || self.max_replicas == 0
            || self.max_replicas > MAX_REPLICAS
        {
            return Err(SpecError::invalid(
                "autoscale.max_replicas",
                format!(
                    "autoscale needs min_replicas <= max_replicas, and max_replicas from 1 to {MAX_REPLICAS}; got {} and {}",
                    self.min_replicas, self.max_replicas
                ),
            ));
        }
        for (field, value) in [
            (
                "autoscale.scale_to_zero_after_s",
                self.scale_to_zero_after_s,
            ),
            ("autoscale.cold_start_timeout_s", self.cold_start_timeout_s),
        ] {
            if value.is_some_and(|v| v == 0 || v > MAX_SCALE_DELAY_S) {
                return Err(SpecError::invalid(
                    field,
                    format!("{field} must be from 1 to {MAX_SCALE_DELAY_S} seconds"),
                ));
            }
        }
        if !(self.target.is_finite() && self.target > 0.0) {
            return Err(SpecError::invalid(
                "autoscale.target",
                "autoscale.target must be a number above 0 (per replica; seconds for ttft)",
            ));
        }
        for (field, value) in [
            ("autoscale.scale_up_delay_s", self.scale_up_delay_s),
            ("autoscale.scale_down_delay_s", self.scale_down_delay_s),
        ] {
            if value > MAX_SCALE_DELAY_S {
                return Err(SpecError::invalid(
                    field,
                    format!("{field} must be from 0 to {MAX_SCALE_DELAY_S} seconds"),
                ));
            }
        }
        if self.window_s == 0 || self.window_s > MAX_WINDOW_S {
            return Err(SpecError::invalid(
                "autoscale.window_s",
                format!("autoscale.window_s must be from 1 to {MAX_WINDOW_S} seconds"),
            ));
        }
        if !(self.min_replicas..=self.max_replicas).contains(&replicas) {
            return Err(SpecError {
                suggestions: vec![format!("replicas: {}", self.min_replicas)],
                ..SpecError::invalid(
                    "replicas",
                    format!(
                        "with autoscale, replicas (the current count) must be from {} to {}",
                        self.min_replicas, self.max_replicas
                    ),
                )
            });
        }
        Ok(())
    }
}

impl DeploymentRequest {
    /// Checks everything a replica launch would check, and the deployment's own fields, before
    /// anything is stored. Returns the launch spec of a replica (for the provider's checks).
    pub fn validate(&self) -> Result<LaunchSpec, SpecError> {
        check_name(&self.name)?;
        if self.replicas > MAX_REPLICAS {
            return Err(SpecError::invalid(
                "replicas",
                format!(
                    "replicas must be from 0 to {MAX_REPLICAS}, got {}",
                    self.replicas
                ),
            ));
        }
        if self.spot.base_on_demand > MAX_REPLICAS {
            return Err(SpecError::invalid(
                "spot.base_on_demand",
                format!(
                    "spot.base_on_demand must be from 0 to {MAX_REPLICAS}, got {}",
                    self.spot.base_on_demand
                ),
            ));
        }
        match self.spot.fallback.as_deref() {
            None | Some("none") | Some("on_demand") => {}
            Some(other) => {
                return Err(SpecError {
                    suggestions: vec!["on_demand".into(), "none".into()],
                    ..SpecError::invalid(
                        "spot.fallback",
                        format!("spot.fallback must be \"on_demand\" or \"none\", got {other:?}"),
                    )
                })
            }
        }
        let UpdatePolicy {
            max_surge,
            max_unavailable,
        } = self.update;
        if max_surge > MAX_REPLICAS || max_unavailable > MAX_REPLICAS {
            return Err(SpecError::invalid(
                "update",
                format!(
                    "update.max_surge and update.max_unavailable must be from 0 to {MAX_REPLICAS}"
                ),
            ));
        }
        if max_surge == 0 && max_unavailable == 0 {
            return Err(SpecError {
                suggestions: vec!["update: {\"max_surge\": 1, \"max_unavailable\": 0}".into()],
                ..SpecError::invalid(
                    "update",
                    "update.max_surge and update.max_unavailable cannot both be 0: a rolling update could never replace a replica",
                )
            });
        }
        for guarded in &self.approval.guarded {
            if !GUARDABLE.contains(&guarded.as_str()) {
                return Err(SpecError {
                    suggestions: catalog::closest(guarded, GUARDABLE.iter().copied()),
                    ..SpecError::invalid(
                        "approval.guarded",
                        format!(
                            "unknown guarded action {guarded:?}; use any of {}",
                            GUARDABLE.join(", ")
                        ),
                    )
                });
            }
        }
        if let Some(cap) = self.approval.max_hourly_usd {
            if !cap.is_finite() || cap < 0.0 {
                return Err(SpecError::invalid(
                    "approval.max_hourly_usd",
                    "approval.max_hourly_usd must be a number of US dollars, 0 or more",
                ));
            }
        }
        if let Some(a) = &self.autoscale {
            a.check(self.replicas)?;
        }
        self.routing
            .check()
            .map_err(|(field, message)| SpecError::invalid(field, message))?;
        let market = if self.spot.use_spot {
            Market::Spot
        } else {
            Market::OnDemand
        };
        self.launch_request(&self.node_name(1, 0, "000000"), market, true)
            .validate("unused")
    }

    /// What a replica of `market` runs, as a launch request. `fallback_allowed`: whether its
    /// launch may fall back to on-demand by itself (not when that fallback waits for approval).
    pub fn launch_request(
        &self,
        node_name: &str,
        market: Market,
        fallback_allowed: bool,
    ) -> LaunchRequest {
        let spot = market == Market::Spot;
        let fallback =
            spot && fallback_allowed && self.spot.fallback.as_deref() == Some("on_demand");
        LaunchRequest {
            model: self.model.clone(),
            provider: self.provider.clone(),
            gpu: self.gpu.clone(),
            gpu_count: self.gpu_count,
            use_spot: spot,
            spot_fallback: Some(if fallback { "on_demand" } else { "none" }.to_string()),
            regions: self.regions.clone(),
            cloud: self.cloud.clone(),
            template: self.template.clone(),
            disk_gb: self.disk_gb,
            envs: self.envs.clone(),
            labels: self.labels.clone(),
            name: Some(node_name.to_string()),
        }
    }

    /// A replica's node name: `<deployment>-r<revision>-<slot>-<suffix>`.
    pub fn node_name(&self, revision: i64, slot: i64, suffix: &str) -> String {
        format!("{}-r{revision}-{slot}-{suffix}", self.name)
    }

    /// The market of a slot's replica: on-demand for the first `base_on_demand` slots and when
    /// spot is off, else spot.
    pub fn slot_market(&self, slot: i64) -> Market {
        if self.spot.use_spot && slot >= i64::from(self.spot.base_on_demand) {
            Market::Spot
        } else {
            Market::OnDemand
        }
    }

    /// Whether an on-demand fallback for a spot slot waits for approval.
    pub fn fallback_guarded(&self) -> bool {
        self.is_guarded("on_demand_fallback")
    }

    pub fn falls_back_to_on_demand(&self) -> bool {
        self.spot.use_spot && self.spot.fallback.as_deref() == Some("on_demand")
    }

    pub fn is_guarded(&self, what: &str) -> bool {
        self.approval.guarded.iter().any(|g| g == what)
    }

    /// Whether `other` runs something different on its replicas (a new revision): everything
    /// but the replica count and the spot, update and approval policies.
    pub fn runs_differently(&self, other: &DeploymentRequest) -> bool {
        let runs = |d: &DeploymentRequest| {
            (
                d.model.trim().to_string(),
                d.provider.trim().to_ascii_lowercase(),
                d.gpu.as_deref().map(|g| g.trim().to_ascii_lowercase()),
                d.gpu_count.unwrap_or(1),
                d.regions.clone(),
                d.cloud.clone(),
                d.template.clone().unwrap_or_else(|| "vllm".into()),
                d.disk_gb,
                d.envs.clone(),
            )
        };
        runs(self) != runs(other)
    }

    /// The estimated price of one replica per hour on `market`, in US dollars.
    pub fn replica_hourly_usd(&self, market: Market) -> f64 {
        // Hosts the operator owns cost nothing more per hour whatever runs on them.
        if self.provider.trim().eq_ignore_ascii_case("ssh") {
            return 0.0;
        }
        let gpu = self.gpu.as_deref().and_then(catalog::gpu).map(|g| g.name);
        catalog::hourly_usd(gpu, self.gpu_count.unwrap_or(1), market == Market::Spot)
    }

    /// The spec as the API shows it: every `envs` value as `<secret>`.
    pub fn masked(&self) -> DeploymentRequest {
        let mut shown = self.clone();
        for value in shown.envs.values_mut() {
            *value = SECRET_SHOWN.to_string();
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> DeploymentRequest {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> DeploymentRequest {
        request(serde_json::json!({
            "name": "chat", "model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot",
            "gpu": "L4", "replicas": 3, "spot": {"use_spot": true, "base_on_demand": 1}
        }))
    }

    #[test]
    fn names_are_dns_labels_and_a_bad_one_gets_a_slug() {
        assert!(check_name("chat-8b").is_ok());
        for bad in ["", "Chat", "-x", "x-", "1abc", "a_b", &"a".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_name("Chat_8B").unwrap_err().suggestions,
            vec!["chat-8b"]
        );
    }

    #[test]
    fn a_replica_launch_is_validated_like_a_launch_job() {
        let mut d = base();
        d.gpu = Some("A1000".into());
        let e = d.validate().unwrap_err();
        assert_eq!(e.field, "gpu");
        assert!(e.suggestions.contains(&"A100".to_string()), "{e:?}");
        assert!(base().validate().is_ok());
    }

    #[test]
    fn policies_are_checked() {
        let mut d = base();
        d.update = UpdatePolicy {
            max_surge: 0,
            max_unavailable: 0,
        };
        assert_eq!(d.validate().unwrap_err().field, "update");
        let mut d = base();
        d.approval.guarded = vec!["on_demand_fallbak".into()];
        let e = d.validate().unwrap_err();
        assert_eq!(
            e.suggestions.first().map(String::as_str),
            Some("on_demand_fallback")
        );
        let mut d = base();
        d.replicas = 101;
        assert_eq!(d.validate().unwrap_err().field, "replicas");
    }

    #[test]
    fn the_first_slots_are_on_demand_then_spot() {
        let d = base();
        assert_eq!(d.slot_market(0), Market::OnDemand);
        assert_eq!(d.slot_market(1), Market::Spot);
        assert_eq!(d.slot_market(2), Market::Spot);
    }

    #[test]
    fn only_a_change_of_what_replicas_run_is_a_new_revision() {
        let d = base();
        let mut scaled = d.clone();
        scaled.replicas = 7;
        scaled.spot.base_on_demand = 2;
        scaled.approval.max_hourly_usd = Some(10.0);
        assert!(!d.runs_differently(&scaled));
        let mut other = d.clone();
        other.envs.insert("MAX_MODEL_LEN".into(), "8192".into());
        assert!(d.runs_differently(&other));
    }

    #[test]
    fn a_spot_replica_falls_back_by_itself_only_when_allowed() {
        let mut d = base();
        d.spot.fallback = Some("on_demand".into());
        let r = d.launch_request("n", Market::Spot, true);
        assert_eq!(r.spot_fallback.as_deref(), Some("on_demand"));
        let r = d.launch_request("n", Market::Spot, false);
        assert_eq!(r.spot_fallback.as_deref(), Some("none"));
        assert!(!d.launch_request("n", Market::OnDemand, true).use_spot);
    }
}

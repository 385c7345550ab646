//! Launch stages, in the order a launch goes through them, and the placements a launch tries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The request is checked (GPU, regions, names) before anything is created.
    Validate,
    /// The SkyPilot task (or cloud request) is generated from the template.
    RenderTask,
    /// Placements are tried: cloud, region, zone, market.
    Provision,
    /// A VM is up and its runtime is being prepared.
    InstanceUp,
    /// Files are synced and the setup commands (model server install) run.
    Setup,
    /// The model server process starts (and loads the model).
    StartModelServer,
    /// The node agent registers with the control plane.
    Register,
    /// The node reports healthy and receives traffic.
    Ready,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Validate,
        Stage::RenderTask,
        Stage::Provision,
        Stage::InstanceUp,
        Stage::Setup,
        Stage::StartModelServer,
        Stage::Register,
        Stage::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::RenderTask => "render_task",
            Stage::Provision => "provision",
            Stage::InstanceUp => "instance_up",
            Stage::Setup => "setup",
            Stage::StartModelServer => "start_model_server",
            Stage::Register => "register",
            Stage::Ready => "ready",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Market {
    Spot,
    OnDemand,
}

/// How a placement attempt went (stored and shown as `trying`, `succeeded` or `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider is still trying this placement.
    Trying,
    Succeeded,
    Failed,
}

/// One placement tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub cloud: String,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub market: Market,
    /// Hourly price shown by the provider, when it shows one.
    pub price_per_hour: Option<f64>,
    pub outcome: AttemptOutcome,
    pub reason: Option<String>,
}

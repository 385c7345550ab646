//! A launch request as the API receives it, and its validation into a [`LaunchSpec`] before
//! anything is queued: GPU names against the catalogue (with "did you mean"), counts, regions per
//! cloud, the model id, names, disk size and env keys. What only one kind of provider checks (its
//! cloud, its machines, whether it needs a GPU) it checks itself, through its
//! [`RequestChecks`](super::providers::RequestChecks).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::failure::ErrorCode;
use super::template::TEMPLATES;
use crate::catalog::{self, Gpu};

/// The kind of provider a request names (defined with the provider registry).
pub use super::providers::Provider;

/// `POST /admin/launch-jobs` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// Hugging Face model id, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    pub model: String,
    pub provider: String,
    #[serde(default)]
    pub gpu: Option<String>,
    #[serde(default)]
    pub gpu_count: Option<u32>,
    #[serde(default)]
    pub use_spot: bool,
    #[serde(default)]
    pub spot_fallback: Option<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub cloud: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub disk_gb: Option<u32>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// `provider: "ssh"`: only hosts carrying every one of these labels are chosen.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A request that passed validation, in canonical form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub model: String,
    pub provider: Provider,
    /// Canonical GPU name; `None` only for the local provider without a GPU.
    pub gpu: Option<String>,
    pub gpu_count: u32,
    pub use_spot: bool,
    /// Try on-demand when every spot placement fails for capacity.
    pub fallback_to_on_demand: bool,
    pub regions: Vec<String>,
    pub cloud: Option<String>,
    pub template: String,
    pub disk_gb: u32,
    pub envs: BTreeMap<String, String>,
    /// Labels an SSH host must carry to be chosen (`provider: "ssh"` only).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node name (also the job's display name).
    pub name: String,
}

/// How a secret value is shown anywhere the API, the UI or a log would show it.
pub const SECRET_SHOWN: &str = "<secret>";

impl LaunchSpec {
    /// The spec as the API shows it: every `envs` value (an `HF_TOKEN`, say) as
    /// [`SECRET_SHOWN`], the keys kept.
    pub fn masked(&self) -> LaunchSpec {
        let mut shown = self.clone();
        for value in shown.envs.values_mut() {
            *value = SECRET_SHOWN.to_string();
        }
        shown
    }
}

/// Why a request was refused; becomes a 422 with `code`, `field` and `suggestions`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub code: ErrorCode,
    pub field: &'static str,
    pub message: String,
    pub suggestions: Vec<String>,
}

impl SpecError {
    /// An invalid value in `field`, with no suggestions.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
        SpecError {
            code: ErrorCode::InvalidRequest,
            field,
            message: message.into(),
            suggestions: Vec::new(),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError::invalid(field, message)
}

const RESERVED_ENV_PREFIX: &str = "SKYLAUNCH_";
const RESERVED_ENVS: &[&str] = &["MODEL_ID", "MODEL_PORT", "GPU_COUNT"];

impl LaunchRequest {
    /// Validates and canonicalises. `default_name` is used when the request names no node.
    pub fn validate(&self, default_name: &str) -> Result<LaunchSpec, SpecError> {
        let named = self.provider.trim().to_ascii_lowercase();
        let Some(provider) = Provider::from_name(&named) else {
            let names = Provider::ALL.map(Provider::as_str);
            let (last, first) = names.split_last().expect("there are providers");
            return Err(SpecError {
                suggestions: catalog::closest(&named, names),
                ..invalid(
                    "provider",
                    format!(
                        "unknown provider {named:?}: use {} or {last}",
                        first.join(", ")
                    ),
                )
            });
        };
        let checks = provider.request_checks();
        check_model(&self.model)?;
        let gpu = self.check_gpu(checks.needs_gpu())?;
        let gpu_count = self.gpu_count.unwrap_or(1);
        if let Some(gpu) = gpu.filter(|_| checks.machines_have_fixed_shapes()) {
            if !gpu.counts.contains(&gpu_count) {
                return Err(SpecError {
                    suggestions: gpu
                        .counts
                        .iter()
                        .map(|c| format!("gpu_count: {c}"))
                        .collect(),
                    ..invalid(
                        "gpu_count",
                        format!(
                            "no VM offers {gpu_count} × {}; choose one of {:?}",
                            gpu.name, gpu.counts
                        ),
                    )
                });
            }
        } else if gpu.is_none() && gpu_count != 1 {
            return Err(invalid("gpu_count", "gpu_count needs a gpu"));
        }
        if !(1..=64).contains(&gpu_count) {
            return Err(invalid("gpu_count", "gpu_count must be from 1 to 64"));
        }
        let cloud = checks.cloud(self.cloud.as_deref(), gpu, gpu_count)?;
        let regions = checks.regions(&self.regions, cloud.as_deref())?;
        let fallback_to_on_demand = match self.spot_fallback.as_deref() {
            None | Some("none") => false,
            Some("on_demand") => true,
            Some(other) => {
                return Err(invalid(
                    "spot_fallback",
                    format!("spot_fallback must be \"on_demand\" or \"none\", got {other:?}"),
                ))
            }
        };
        let template = self.template.clone().unwrap_or_else(|| "vllm".into());
        if !TEMPLATES.contains(&template.as_str()) {
            return Err(SpecError {
                suggestions: TEMPLATES.iter().map(|t| t.to_string()).collect(),
                ..invalid("template", format!("unknown template {template:?}"))
            });
        }
        if !checks.templates().contains(&template.as_str()) {
            return Err(SpecError {
                suggestions: checks.templates().iter().map(|t| t.to_string()).collect(),
                ..invalid(
                    "template",
                    format!(
                        "the {} provider cannot run the {template:?} template",
                        provider.as_str()
                    ),
                )
            });
        }
        skylaunch_protocol::validate::check_labels(&self.labels)
            .map_err(|e| invalid("labels", e.message))?;
        if !self.labels.is_empty() && !checks.selects_hosts() {
            return Err(invalid(
                "labels",
                format!(
                    "labels choose an SSH host; the {} provider has no hosts to choose (use provider \"ssh\", or leave labels out)",
                    provider.as_str()
                ),
            ));
        }
        let disk_gb = self.disk_gb.unwrap_or(256);
        if !(50..=16_384).contains(&disk_gb) {
            return Err(invalid(
                "disk_gb",
                format!("disk_gb must be from 50 to 16384, got {disk_gb}"),
            ));
        }
        check_envs(&self.envs)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        crate::fleet::node::check_node_name(&name).map_err(|e| invalid("name", e.to_string()))?;
        Ok(LaunchSpec {
            model: self.model.trim().to_string(),
            provider,
            gpu: gpu.map(|g| g.name.to_string()),
            gpu_count,
            use_spot: self.use_spot && checks.offers_spot(),
            fallback_to_on_demand: fallback_to_on_demand && self.use_spot,
            regions,
            cloud,
            template,
            disk_gb,
            envs: self.envs.clone(),
            labels: self.labels.clone(),
            name,
        })
    }

    fn check_gpu(&self, needs_gpu: bool) -> Result<Option<&'static Gpu>, SpecError> {
        let Some(name) = self.gpu.as_deref().filter(|g| !g.trim().is_empty()) else {
            if !needs_gpu {
                return Ok(None);
            }
            return Err(SpecError {
                code: ErrorCode::InvalidAccelerator,
                suggestions: catalog::GPUS.iter().map(|g| g.name.to_string()).collect(),
                ..invalid("gpu", "a gpu is required, e.g. \"L4\"")
            });
        };
        catalog::gpu(name).map(Some).ok_or_else(|| SpecError {
            code: ErrorCode::InvalidAccelerator,
            field: "gpu",
            message: format!(
                "unknown GPU {name:?}; known GPUs: {}",
                catalog::GPUS
                    .iter()
                    .map(|g| g.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            suggestions: catalog::closest(name, catalog::GPUS.iter().map(|g| g.name)),
        })
    }
}

/// The regions asked for, canonical and without repeats: each a region of `cloud`, or of any
/// cloud skylaunch knows when none is set.
pub(crate) fn check_regions(
    asked: &[String],
    cloud: Option<&str>,
) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = Vec::new();
    for region in asked {
        let region = region.trim().to_ascii_lowercase();
        let known = match cloud {
            Some(c) => catalog::regions(c).contains(&region.as_str()),
            None => catalog::cloud_of_region(&region).is_some(),
        };
        if !known {
            let candidates: Vec<&str> = match cloud {
                Some(c) => catalog::regions(c).to_vec(),
                None => catalog::CLOUDS
                    .iter()
                    .flat_map(|c| catalog::regions(c).iter().copied())
                    .collect(),
            };
            return Err(SpecError {
                code: ErrorCode::InvalidRegion,
                field: "regions",
                message: match cloud {
                    Some(c) => format!("{region:?} is not a region of {c}"),
                    None => format!("{region:?} is not a region of aws, azure or gcp"),
                },
                suggestions: catalog::closest(&region, candidates),
            });
        }
        if !out.contains(&region) {
            out.push(region);
        }
    }
    Ok(out)
}

fn check_model(model: &str) -> Result<(), SpecError> {
    let model = model.trim();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = model.split('/').collect();
    if model.len() > 128 || parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
        return Err(invalid(
            "model",
            format!("{model:?} is not a model id: use a Hugging Face id like \"meta-llama/Llama-3.1-8B-Instruct\""),
        ));
    }
    Ok(())
}

fn check_envs(envs: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if envs.len() > 64 {
        return Err(invalid("envs", "at most 64 envs are allowed"));
    }
    for (key, value) in envs {
        let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.len() <= 128;
        if !valid {
            return Err(invalid("envs", format!("env name {key:?} is invalid: use letters, digits and _, not starting with a digit")));
        }
        if key.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENVS.contains(&key.as_str()) {
            return Err(invalid(
                "envs",
                format!("env {key:?} is set by skylaunch and cannot be overridden"),
            ));
        }
        if value.len() > 4096 || value.contains('\0') {
            return Err(invalid(
                "envs",
                format!("env {key:?} has a value longer than 4096 bytes or a NUL byte"),
            ));
        }
        // A job's spec copied back from the API carries the placeholder, not the value.
        if value == SECRET_SHOWN {
            return Err(invalid(
                "envs",
                format!("env {key:?} has the value {SECRET_SHOWN}, which the API shows in place of env values: send the real value"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

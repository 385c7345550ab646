//! A launch request as the API receives it, and its validation into a [`LaunchSpec`] before
//! anything is queued: GPU names against the catalogue (with "did you mean"), counts, regions per
//! cloud, the model id, names, disk size and env keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::{self, Gpu};
use super::failure::ErrorCode;

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
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Skypilot,
    Aws,
    Azure,
    Local,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Skypilot => "skypilot",
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Local => "local",
        }
    }
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

fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        code: ErrorCode::InvalidRequest,
        field,
        message: message.into(),
        suggestions: Vec::new(),
    }
}

pub const TEMPLATES: &[&str] = &["vllm"];
const RESERVED_ENV_PREFIX: &str = "SKYLAUNCH_";
const RESERVED_ENVS: &[&str] = &["MODEL_ID", "MODEL_PORT", "GPU_COUNT"];

impl LaunchRequest {
    /// Validates and canonicalises. `default_name` is used when the request names no node.
    pub fn validate(&self, default_name: &str) -> Result<LaunchSpec, SpecError> {
        let provider = match self.provider.trim().to_ascii_lowercase().as_str() {
            "skypilot" => Provider::Skypilot,
            "local" => Provider::Local,
            "aws" => Provider::Aws,
            "azure" => Provider::Azure,
            other => {
                return Err(SpecError {
                    suggestions: catalog::closest(other, ["skypilot", "aws", "azure", "local"]),
                    ..invalid(
                        "provider",
                        format!("unknown provider {other:?}: use skypilot, aws, azure or local"),
                    )
                })
            }
        };
        check_model(&self.model)?;
        let gpu = self.check_gpu(provider)?;
        let gpu_count = self.gpu_count.unwrap_or(1);
        if let Some(gpu) = gpu {
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
        } else if gpu_count != 1 {
            return Err(invalid("gpu_count", "gpu_count needs a gpu"));
        }
        let cloud = match native_catalogue(provider) {
            Some((label, table)) => {
                let own = provider.as_str();
                if let Some(other) = self
                    .cloud
                    .as_deref()
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| c != own)
                {
                    return Err(invalid(
                        "cloud",
                        format!("provider {own:?} launches on {own}, not {other:?}"),
                    ));
                }
                let gpu = gpu.expect("a GPU is required for cloud providers");
                check_machine(label, table, gpu, gpu_count)?;
                Some(own.to_string())
            }
            None => self.check_cloud(provider, gpu)?,
        };
        let regions = self.check_regions(provider, cloud.as_deref())?;
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
            use_spot: self.use_spot && provider != Provider::Local,
            fallback_to_on_demand: fallback_to_on_demand && self.use_spot,
            regions,
            cloud,
            template,
            disk_gb,
            envs: self.envs.clone(),
            name,
        })
    }

    fn check_gpu(&self, provider: Provider) -> Result<Option<&'static Gpu>, SpecError> {
        let Some(name) = self.gpu.as_deref().filter(|g| !g.trim().is_empty()) else {
            if provider == Provider::Local {
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

    fn check_cloud(
        &self,
        provider: Provider,
        gpu: Option<&Gpu>,
    ) -> Result<Option<String>, SpecError> {
        let Some(cloud) = self.cloud.as_deref().map(|c| c.trim().to_ascii_lowercase()) else {
            return Ok(None);
        };
        if provider == Provider::Local {
            return Err(invalid(
                "cloud",
                "the local provider runs on this machine; leave cloud unset",
            ));
        }
        if !catalog::CLOUDS.contains(&cloud.as_str()) {
            return Err(SpecError {
                suggestions: catalog::closest(&cloud, catalog::CLOUDS.iter().copied()),
                ..invalid(
                    "cloud",
                    format!("unknown cloud {cloud:?}: use aws, azure or gcp"),
                )
            });
        }
        if let Some(gpu) = gpu {
            if !gpu.clouds.contains(&cloud.as_str()) {
                return Err(SpecError {
                    code: ErrorCode::InvalidAccelerator,
                    field: "gpu",
                    message: format!(
                        "{} is not offered on {cloud}; it is on {}",
                        gpu.name,
                        gpu.clouds.join(", ")
                    ),
                    suggestions: catalog::GPUS
                        .iter()
                        .filter(|g| {
                            g.clouds.contains(&cloud.as_str()) && g.memory_gb >= gpu.memory_gb
                        })
                        .map(|g| g.name.to_string())
                        .collect(),
                });
            }
        }
        Ok(Some(cloud))
    }

    fn check_regions(
        &self,
        provider: Provider,
        cloud: Option<&str>,
    ) -> Result<Vec<String>, SpecError> {
        if provider == Provider::Local {
            return match self.regions.as_slice() {
                [] => Ok(Vec::new()),
                [only] if only == "local" => Ok(Vec::new()),
                _ => Err(invalid(
                    "regions",
                    "the local provider runs on this machine; leave regions empty",
                )),
            };
        }
        let mut out: Vec<String> = Vec::new();
        for region in &self.regions {
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
}

/// The machine table of a provider that calls a cloud directly: its display name and rows of
/// `(gpu, count, machine)`.
fn native_catalogue(provider: Provider) -> Option<(&'static str, catalog::MachineTable)> {
    match provider {
        Provider::Aws => Some((
            "AWS",
            crate::launch::providers::aws::catalog::INSTANCE_TYPES,
        )),
        Provider::Azure => Some(("Azure", crate::launch::providers::azure::catalog::VM_SIZES)),
        Provider::Skypilot | Provider::Local => None,
    }
}

/// The cloud sells a machine with exactly `count` × `gpu`, or the request names what it does sell.
fn check_machine(
    label: &str,
    table: &[(&str, u32, &'static str)],
    gpu: &Gpu,
    count: u32,
) -> Result<(), SpecError> {
    let Err(offered) = catalog::machine_for(table, gpu.name, count) else {
        return Ok(());
    };
    Err(if offered.is_empty() {
        let mut sold: Vec<String> = Vec::new();
        for (g, _, _) in table {
            if !sold.iter().any(|s| s == g) {
                sold.push(g.to_string());
            }
        }
        SpecError {
            code: ErrorCode::InvalidAccelerator,
            field: "gpu",
            message: format!("{} is not sold on {label}", gpu.name),
            suggestions: sold,
        }
    } else {
        SpecError {
            code: ErrorCode::InvalidAccelerator,
            field: "gpu_count",
            message: format!(
                "{label} has no machine with {count} × {}; it offers {offered:?}",
                gpu.name
            ),
            suggestions: offered.iter().map(|c| format!("gpu_count: {c}")).collect(),
        }
    })
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
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> LaunchRequest {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot", "gpu": "l4",
            "use_spot": true, "spot_fallback": "on_demand", "regions": ["us-east-1", "us-west-2"]})
    }

    #[test]
    fn valid_request_is_canonicalised() {
        let spec = req(base()).validate("llama-1").unwrap();
        assert_eq!(spec.gpu.as_deref(), Some("L4"));
        assert_eq!(spec.gpu_count, 1);
        assert!(spec.use_spot && spec.fallback_to_on_demand);
        assert_eq!(spec.regions, vec!["us-east-1", "us-west-2"]);
        assert_eq!(spec.template, "vllm");
        assert_eq!(spec.name, "llama-1");
    }

    #[test]
    fn unknown_gpu_suggests_near_names() {
        let mut r = base();
        r["gpu"] = "A1000".into();
        let e = req(r).validate("n").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAccelerator);
        assert_eq!(e.field, "gpu");
        assert_eq!(e.suggestions.first().map(String::as_str), Some("A100"));
    }

    #[test]
    fn unknown_region_suggests_near_regions() {
        let mut r = base();
        r["regions"] = serde_json::json!(["us-east-9"]);
        let e = req(r).validate("n").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRegion);
        assert!(
            e.suggestions.contains(&"us-east-1".to_string()),
            "{:?}",
            e.suggestions
        );
    }

    #[test]
    fn region_of_another_cloud_is_refused_when_cloud_is_set() {
        let mut r = base();
        r["cloud"] = "aws".into();
        r["regions"] = serde_json::json!(["eastus"]);
        assert_eq!(
            req(r).validate("n").unwrap_err().code,
            ErrorCode::InvalidRegion
        );
    }

    #[test]
    fn gpu_not_on_the_cloud_is_refused_with_alternatives() {
        let mut r = base();
        r["cloud"] = "azure".into();
        r["regions"] = serde_json::json!([]);
        let e = req(r).validate("n").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAccelerator);
        assert!(e.message.contains("not offered on azure"), "{}", e.message);
        assert!(!e.suggestions.is_empty());
    }

    #[test]
    fn impossible_gpu_count_is_refused() {
        let mut r = base();
        r["gpu_count"] = 3.into();
        let e = req(r).validate("n").unwrap_err();
        assert_eq!(e.field, "gpu_count");
    }

    #[test]
    fn model_ids_cannot_smuggle_paths_or_shell() {
        for bad in [
            "",
            "../../etc/passwd",
            "a/b/c",
            "m; rm -rf /",
            "$(reboot)",
            "x\ny",
        ] {
            let mut r = base();
            r["model"] = bad.into();
            assert_eq!(req(r).validate("n").unwrap_err().field, "model", "{bad:?}");
        }
    }

    #[test]
    fn env_keys_are_checked_and_reserved_ones_refused() {
        for bad in ["1BAD", "A-B", "SKYLAUNCH_NODE_TOKEN", "MODEL_ID"] {
            let mut r = base();
            r["envs"] = serde_json::json!({ bad: "x" });
            assert_eq!(req(r).validate("n").unwrap_err().field, "envs", "{bad:?}");
        }
        let mut r = base();
        r["envs"] = serde_json::json!({"HF_TOKEN": "<secret>"});
        let refused = req(r.clone()).validate("n").unwrap_err();
        assert_eq!(refused.field, "envs");
        assert!(
            refused.message.contains("real value"),
            "{}",
            refused.message
        );
        r["envs"] = serde_json::json!({"HF_TOKEN": "hf_x", "_X1": "y"});
        assert!(req(r).validate("n").is_ok());
    }

    #[test]
    fn other_checks() {
        let cases = [
            (serde_json::json!({"provider": "skypilott"}), "provider"),
            (serde_json::json!({"provider": "azure"}), "gpu"),
            (
                serde_json::json!({"provider": "azure", "gpu": "A100-80GB", "gpu_count": 3}),
                "gpu_count",
            ),
            (
                serde_json::json!({"provider": "azure", "gpu": "A10", "regions": ["us-east-1"]}),
                "regions",
            ),
            (
                serde_json::json!({"provider": "azure", "gpu": "A10", "cloud": "aws"}),
                "cloud",
            ),
            (serde_json::json!({"provider": "aws", "gpu": "A10"}), "gpu"),
            (
                serde_json::json!({"provider": "aws", "gpu": "H100"}),
                "gpu_count",
            ),
            (
                serde_json::json!({"provider": "aws", "regions": ["eastus"]}),
                "regions",
            ),
            (
                serde_json::json!({"spot_fallback": "maybe"}),
                "spot_fallback",
            ),
            (serde_json::json!({"disk_gb": 10}), "disk_gb"),
            (serde_json::json!({"template": "tgi"}), "template"),
            (serde_json::json!({"name": "bad name!"}), "name"),
            (serde_json::json!({"gpu": null}), "gpu"),
        ];
        for (patch, field) in cases {
            let mut r = base();
            for (k, v) in patch.as_object().unwrap() {
                r[k] = v.clone();
            }
            assert_eq!(req(r).validate("n").unwrap_err().field, field, "{patch}");
        }
    }

    #[test]
    fn local_provider_needs_no_gpu_or_region() {
        let spec = req(serde_json::json!({"model": "echo", "provider": "local"}))
            .validate("n")
            .unwrap();
        assert_eq!(spec.gpu, None);
        assert!(!spec.use_spot);
        let e = req(
            serde_json::json!({"model": "echo", "provider": "local", "regions": ["us-east-1"]}),
        )
        .validate("n")
        .unwrap_err();
        assert_eq!(e.field, "regions");
    }
}

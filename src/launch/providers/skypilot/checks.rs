//! What a SkyPilot launch request may ask for: any cloud skylaunch knows (or none, leaving the
//! choice to SkyPilot's optimizer), as long as that cloud offers the GPU.

use crate::catalog::{self, Gpu};
use crate::launch::failure::ErrorCode;
use crate::launch::providers::RequestChecks;
use crate::launch::spec::SpecError;

/// The request checks of `provider: "skypilot"`.
pub struct SkypilotRequests;

impl RequestChecks for SkypilotRequests {
    fn cloud(
        &self,
        asked: Option<&str>,
        gpu: Option<&'static Gpu>,
        _gpu_count: u32,
    ) -> Result<Option<String>, SpecError> {
        let Some(cloud) = asked.map(|c| c.trim().to_ascii_lowercase()) else {
            return Ok(None);
        };
        if !catalog::CLOUDS.contains(&cloud.as_str()) {
            return Err(SpecError {
                suggestions: catalog::closest(&cloud, catalog::CLOUDS.iter().copied()),
                ..SpecError::invalid(
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
}

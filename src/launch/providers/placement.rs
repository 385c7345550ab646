//! What the native cloud providers (AWS, Azure) share about placements: the request checks of a
//! provider that launches on one cloud from its machine table, the markets to try in order, how
//! a market reads in a log line, and the error when every placement was refused for capacity.

use crate::catalog::{self, Gpu, MachineTable};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::providers::RequestChecks;
use crate::launch::spec::{LaunchSpec, SpecError};
use crate::launch::stage::Market;
use crate::launch::template::{self, Template};

/// A provider that calls one cloud directly: its requests launch on that cloud (named like the
/// provider), on a machine from its table.
pub struct NativeCloud {
    /// The cloud, and the provider's name.
    pub cloud: &'static str,
    /// How messages name the cloud ("AWS").
    pub label: &'static str,
    /// Its machines by GPU.
    pub machines: MachineTable,
}

impl RequestChecks for NativeCloud {
    fn cloud(
        &self,
        asked: Option<&str>,
        gpu: Option<&'static Gpu>,
        gpu_count: u32,
    ) -> Result<Option<String>, SpecError> {
        let own = self.cloud;
        if let Some(other) = asked
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| c != own)
        {
            return Err(SpecError::invalid(
                "cloud",
                format!("provider {own:?} launches on {own}, not {other:?}"),
            ));
        }
        let gpu = gpu.expect("a GPU is required for cloud providers");
        check_machine(self.label, self.machines, gpu, gpu_count)?;
        Ok(Some(own.to_string()))
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

impl NativeCloud {
    /// The machine carrying the launch's GPUs (from the table), and the template to run.
    /// Validation already checked both; a stored job from an older catalogue may not match.
    pub fn machine_and_template(
        &self,
        spec: &LaunchSpec,
    ) -> Result<(&'static str, Template), LaunchError> {
        let cloud = self.label;
        let gpu = spec.gpu.as_deref().unwrap_or_default();
        let machine =
            catalog::machine_for(self.machines, gpu, spec.gpu_count).map_err(|offered| {
                LaunchError::new(
                    ErrorCode::InvalidAccelerator,
                    format!("{cloud} has no machine with {} × {gpu}", spec.gpu_count),
                    format!(
                        "no {cloud} machine carries exactly {} × {gpu}",
                        spec.gpu_count
                    ),
                )
                .suggest(if offered.is_empty() {
                    format!(
                        "{gpu} is not sold on {cloud}; use the skypilot provider or another GPU"
                    )
                } else {
                    format!("Ask for gpu_count {offered:?}")
                })
            })?;
        let template = template::template(&spec.template).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "Unknown template",
                format!("template {:?} does not exist", spec.template),
            )
        })?;
        Ok((machine, template))
    }
}

/// Spot first when asked for, then on-demand when `spot_fallback` allows it.
pub fn markets(spec: &LaunchSpec) -> Vec<Market> {
    match (spec.use_spot, spec.fallback_to_on_demand) {
        (true, true) => vec![Market::Spot, Market::OnDemand],
        (true, false) => vec![Market::Spot],
        (false, _) => vec![Market::OnDemand],
    }
}

pub fn market_name(market: Market) -> &'static str {
    match market {
        Market::Spot => "spot",
        Market::OnDemand => "on-demand",
    }
}

/// Every placement tried was refused for capacity (or the machine is not offered where asked).
/// `reasons` are the cloud's own answers, one per placement, kept as the raw output.
pub fn exhausted(
    cloud: &str,
    machine: &str,
    spec: &LaunchSpec,
    regions: &[String],
    reasons: &[String],
    more_regions: &str,
) -> LaunchError {
    let spot_only = markets(spec) == [Market::Spot];
    let gpu = spec.gpu.as_deref().unwrap_or_default();
    let mut error = LaunchError::new(
        if spot_only {
            ErrorCode::SpotCapacityUnavailable
        } else {
            ErrorCode::CapacityUnavailable
        },
        format!("No {machine} capacity in {}", regions.join(", ")),
        format!(
            "every {cloud} placement tried for {} × {gpu} ({machine}) was refused for capacity",
            spec.gpu_count
        ),
    )
    .with_raw(reasons.join("\n"));
    if spot_only {
        error = error.suggest("Allow on-demand fallback (spot_fallback: \"on_demand\")");
    }
    error
        .suggest(format!("Add more regions, e.g. {more_regions}"))
        .suggest("Try again later, or another GPU type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::spec::LaunchRequest;

    fn spec(spot: bool, fallback: &str) -> LaunchSpec {
        serde_json::from_value::<LaunchRequest>(serde_json::json!({
            "model": "org/m", "provider": "aws", "gpu": "L4", "use_spot": spot,
            "spot_fallback": fallback
        }))
        .unwrap()
        .validate("n")
        .unwrap()
    }

    #[test]
    fn spot_comes_first_and_on_demand_only_when_allowed() {
        assert_eq!(
            markets(&spec(true, "on_demand")),
            [Market::Spot, Market::OnDemand]
        );
        assert_eq!(markets(&spec(true, "none")), [Market::Spot]);
        assert_eq!(markets(&spec(false, "on_demand")), [Market::OnDemand]);
    }

    #[test]
    fn spot_only_exhaustion_is_spot_capacity_and_suggests_fallback() {
        let e = exhausted(
            "AWS",
            "g6.xlarge",
            &spec(true, "none"),
            &["us-east-1".into()],
            &["InsufficientInstanceCapacity: none".into()],
            "us-west-2",
        );
        assert_eq!(e.code, ErrorCode::SpotCapacityUnavailable);
        assert!(
            e.suggestions[0].contains("on_demand"),
            "{:?}",
            e.suggestions
        );
        assert!(e.raw.contains("InsufficientInstanceCapacity"));
        let e = exhausted("AWS", "g6.xlarge", &spec(false, "none"), &[], &[], "x");
        assert_eq!(e.code, ErrorCode::CapacityUnavailable);
    }
}

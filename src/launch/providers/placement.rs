//! What the native cloud providers (AWS, Azure) share about placements: the markets to try in
//! order, how a market reads in a log line, and the error when every placement was refused for
//! capacity.

use crate::launch::catalog::{self, MachineTable};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::spec::LaunchSpec;
use crate::launch::stage::Market;
use crate::launch::task::{self, Template};

/// The machine carrying the launch's GPUs on `cloud` (from its table), and the template to run.
/// Validation already checked both; a stored job from an older catalogue may not match.
pub fn machine_and_template(
    cloud: &str,
    table: MachineTable,
    spec: &LaunchSpec,
) -> Result<(&'static str, Template), LaunchError> {
    let gpu = spec.gpu.as_deref().unwrap_or_default();
    let machine = catalog::machine_for(table, gpu, spec.gpu_count).map_err(|offered| {
        LaunchError::new(
            ErrorCode::InvalidAccelerator,
            format!("{cloud} has no machine with {} × {gpu}", spec.gpu_count),
            format!(
                "no {cloud} machine carries exactly {} × {gpu}",
                spec.gpu_count
            ),
        )
        .suggest(if offered.is_empty() {
            format!("{gpu} is not sold on {cloud}; use the skypilot provider or another GPU")
        } else {
            format!("Ask for gpu_count {offered:?}")
        })
    })?;
    let template = task::template(&spec.template).ok_or_else(|| {
        LaunchError::new(
            ErrorCode::InvalidRequest,
            "Unknown template",
            format!("template {:?} does not exist", spec.template),
        )
    })?;
    Ok((machine, template))
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

//! What can be asked for: the GPU catalogue (canonical names, memory, counts per VM, clouds) and
//! the regions of each cloud. Validation checks requests against it before anything is queued, so
//! a typo is a 422 with suggestions rather than a failed launch minutes later.

/// One GPU type as operators name it.
#[derive(Debug, Clone, Copy)]
pub struct Gpu {
    /// The canonical name, as SkyPilot spells it.
    pub name: &'static str,
    pub memory_gb: u32,
    /// GPUs per VM that some instance type offers.
    pub counts: &'static [u32],
    pub clouds: &'static [&'static str],
    /// A planning estimate of one GPU's on-demand price per hour in US dollars (its share of the
    /// cheapest common instance type with it, from the clouds' public list prices in 2026). Used
    /// for a deployment's hourly cost and its approval cap, never for billing.
    pub usd_per_hour: f64,
}

/// Spot prices as a share of on-demand, as a planning estimate (spot prices move by the hour).
pub const SPOT_PRICE_SHARE: f64 = 0.35;

/// The estimated hourly price of `count` × `gpu` on the given market, in US dollars; 0 when no
/// GPU is named (the local provider).
pub fn hourly_usd(gpu: Option<&str>, count: u32, spot: bool) -> f64 {
    let Some(gpu) = gpu.and_then(self::gpu) else {
        return 0.0;
    };
    let on_demand = gpu.usd_per_hour * f64::from(count);
    if spot {
        on_demand * SPOT_PRICE_SHARE
    } else {
        on_demand
    }
}

pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "T4",
        memory_gb: 16,
        counts: &[1, 4, 8],
        clouds: &["aws", "azure", "gcp"],
        usd_per_hour: 0.53,
    },
    Gpu {
        name: "L4",
        memory_gb: 24,
        counts: &[1, 2, 4, 8],
        clouds: &["aws", "gcp"],
        usd_per_hour: 0.80,
    },
    Gpu {
        name: "A10G",
        memory_gb: 24,
        counts: &[1, 4, 8],
        clouds: &["aws"],
        usd_per_hour: 1.01,
    },
    Gpu {
        name: "A10",
        memory_gb: 24,
        counts: &[1, 2],
        clouds: &["azure"],
        usd_per_hour: 0.91,
    },
    Gpu {
        name: "L40S",
        memory_gb: 48,
        counts: &[1, 4, 8],
        clouds: &["aws"],
        usd_per_hour: 1.86,
    },
    Gpu {
        name: "A100",
        memory_gb: 40,
        counts: &[1, 2, 4, 8],
        clouds: &["aws", "azure", "gcp"],
        usd_per_hour: 4.10,
    },
    Gpu {
        name: "A100-80GB",
        memory_gb: 80,
        counts: &[1, 2, 4, 8],
        clouds: &["aws", "azure", "gcp"],
        usd_per_hour: 5.12,
    },
    Gpu {
        name: "H100",
        memory_gb: 80,
        counts: &[1, 2, 4, 8],
        clouds: &["aws", "azure", "gcp"],
        usd_per_hour: 6.88,
    },
    Gpu {
        name: "H200",
        memory_gb: 141,
        counts: &[8],
        clouds: &["aws", "gcp"],
        usd_per_hour: 10.60,
    },
];

pub const CLOUDS: &[&str] = &["aws", "azure", "gcp"];

pub fn regions(cloud: &str) -> &'static [&'static str] {
    match cloud {
        "aws" => &[
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
            "ca-central-1",
            "sa-east-1",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "eu-central-1",
            "eu-north-1",
            "ap-south-1",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-southeast-1",
            "ap-southeast-2",
        ],
        "azure" => &[
            "eastus",
            "eastus2",
            "westus",
            "westus2",
            "westus3",
            "centralus",
            "southcentralus",
            "northcentralus",
            "canadacentral",
            "westeurope",
            "northeurope",
            "uksouth",
            "swedencentral",
            "japaneast",
            "australiaeast",
            "southeastasia",
        ],
        "gcp" => &[
            "us-central1",
            "us-east1",
            "us-east4",
            "us-east5",
            "us-west1",
            "us-west4",
            "europe-west1",
            "europe-west4",
            "asia-east1",
            "asia-northeast1",
            "asia-southeast1",
        ],
        _ => &[],
    }
}

/// The cloud a region belongs to, when it belongs to one we know.
pub fn cloud_of_region(region: &str) -> Option<&'static str> {
    CLOUDS
        .iter()
        .copied()
        .find(|c| regions(c).contains(&region))
}

/// Finds a GPU by name, case-insensitively (`a100-80gb` → `A100-80GB`).
pub fn gpu(name: &str) -> Option<&'static Gpu> {
    GPUS.iter()
        .find(|g| g.name.eq_ignore_ascii_case(name.trim()))
}

/// A cloud's machine for `count` × `gpu` from a `(gpu, count, machine)` table, or, when there is
/// none, the counts that cloud does offer for that GPU (empty if it offers the GPU not at all).
/// A cloud's machines by GPU: rows of `(gpu, count, machine)`.
pub type MachineTable = &'static [(&'static str, u32, &'static str)];

pub fn machine_for(
    table: &[(&str, u32, &'static str)],
    gpu: &str,
    count: u32,
) -> Result<&'static str, Vec<u32>> {
    table
        .iter()
        .find(|(g, c, _)| *g == gpu && *c == count)
        .map(|(_, _, machine)| *machine)
        .ok_or_else(|| {
            table
                .iter()
                .filter(|(g, _, _)| *g == gpu)
                .map(|(_, c, _)| *c)
                .collect()
        })
}

/// Up to three catalogue entries that look like `given`, best first.
pub fn closest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let given = given.trim().to_ascii_lowercase();
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| {
            let lower = c.to_ascii_lowercase();
            let mut score = strsim::jaro_winkler(&given, &lower);
            if !given.is_empty() && (lower.contains(&given) || given.contains(&lower)) {
                score += 0.2;
            }
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_names_are_case_insensitive() {
        assert_eq!(gpu("l4").unwrap().name, "L4");
        assert_eq!(gpu("a100-80gb").unwrap().name, "A100-80GB");
        assert!(gpu("A1000").is_none());
    }

    #[test]
    fn near_misses_get_suggestions() {
        let names = GPUS.iter().map(|g| g.name);
        assert_eq!(
            closest("A1000", names.clone()).first().map(String::as_str),
            Some("A100")
        );
        assert!(closest("H10", names.clone()).contains(&"H100".to_string()));
        assert!(closest("l40", names.clone()).contains(&"L40S".to_string()));
        assert!(closest("qwertyuiop", names).is_empty());
        assert_eq!(
            closest("us-east-9", regions("aws").iter().copied())
                .first()
                .map(String::as_str),
            Some("us-east-1")
        );
    }

    #[test]
    fn regions_know_their_cloud() {
        assert_eq!(cloud_of_region("us-east-1"), Some("aws"));
        assert_eq!(cloud_of_region("eastus"), Some("azure"));
        assert_eq!(cloud_of_region("mars-east-1"), None);
    }
}

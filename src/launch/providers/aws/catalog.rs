//! Which EC2 instance type carries a GPU request for the native AWS provider. One row per
//! (GPU, count): the smallest current-generation type with exactly that many of that GPU.

/// `(gpu, count, instance type)`, documented in the README's AWS section.
pub const INSTANCE_TYPES: &[(&str, u32, &str)] = &[
    ("T4", 1, "g4dn.xlarge"),
    ("T4", 4, "g4dn.12xlarge"),
    ("T4", 8, "g4dn.metal"),
    ("L4", 1, "g6.xlarge"),
    ("L4", 4, "g6.12xlarge"),
    ("L4", 8, "g6.48xlarge"),
    ("A10G", 1, "g5.xlarge"),
    ("A10G", 4, "g5.12xlarge"),
    ("A10G", 8, "g5.48xlarge"),
    ("L40S", 1, "g6e.xlarge"),
    ("L40S", 4, "g6e.12xlarge"),
    ("L40S", 8, "g6e.48xlarge"),
    ("A100", 8, "p4d.24xlarge"),
    ("A100-80GB", 8, "p4de.24xlarge"),
    ("H100", 8, "p5.48xlarge"),
    ("H200", 8, "p5e.48xlarge"),
];

/// The AMIs an operator chose: one for every region, and/or one per region (an AMI id is only
/// valid in its own region). Regions with neither use the lookup of AWS's GPU image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmiChoice {
    pub everywhere: Option<String>,
    pub by_region: std::collections::BTreeMap<String, String>,
}

impl AmiChoice {
    pub fn for_region(&self, region: &str) -> Option<&str> {
        self.by_region
            .get(region)
            .or(self.everywhere.as_ref())
            .map(String::as_str)
    }
}

/// `ami-0abc…` for every region, or `us-east-1=ami-0abc…,us-west-2=ami-0def…`, or both.
pub fn parse_ami_choice(s: &str) -> Result<AmiChoice, String> {
    let mut choice = AmiChoice::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (region, ami) = match part.split_once('=') {
            Some((r, a)) => (Some(r.trim().to_ascii_lowercase()), a.trim()),
            None => (None, part),
        };
        let valid = ami
            .strip_prefix("ami-")
            .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()));
        if !valid {
            return Err(format!(
                "{ami:?} is not an AMI id (ami- followed by hex digits)"
            ));
        }
        match region {
            Some(region) => {
                if !crate::catalog::regions("aws").contains(&region.as_str()) {
                    return Err(format!("{region:?} is not an AWS region skylaunch knows"));
                }
                choice.by_region.insert(region, ami.to_string());
            }
            None if choice.everywhere.is_some() => {
                return Err("give one AMI for every region, or REGION=AMI pairs".into())
            }
            None => choice.everywhere = Some(ami.to_string()),
        }
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    #[test]
    fn amis_are_chosen_per_region_with_a_fallback_for_all() {
        let choice = super::parse_ami_choice("ami-0abc, us-west-2=ami-0def").unwrap();
        assert_eq!(choice.for_region("us-west-2"), Some("ami-0def"));
        assert_eq!(choice.for_region("us-east-1"), Some("ami-0abc"));
        let only = super::parse_ami_choice("eu-west-1=ami-01").unwrap();
        assert_eq!(only.for_region("us-east-1"), None, "looked up instead");
        assert!(super::parse_ami_choice("ubuntu").is_err());
        assert!(super::parse_ami_choice("mars-1=ami-01").is_err());
        assert!(super::parse_ami_choice("ami-01,ami-02").is_err());
    }

    use super::*;

    fn instance_type(gpu: &str, count: u32) -> Result<&'static str, Vec<u32>> {
        crate::catalog::machine_for(INSTANCE_TYPES, gpu, count)
    }

    #[test]
    fn common_requests_map_to_the_expected_families() {
        assert_eq!(instance_type("L4", 1), Ok("g6.xlarge"));
        assert_eq!(instance_type("A10G", 1), Ok("g5.xlarge"));
        assert_eq!(instance_type("A100", 8), Ok("p4d.24xlarge"));
        assert_eq!(instance_type("H100", 8), Ok("p5.48xlarge"));
    }

    #[test]
    fn counts_aws_does_not_sell_list_the_ones_it_does() {
        assert_eq!(instance_type("H100", 1), Err(vec![8]));
        assert_eq!(instance_type("L4", 2), Err(vec![1, 4, 8]));
        assert_eq!(instance_type("A10", 1), Err(vec![]), "A10 is an Azure GPU");
    }

    #[test]
    fn every_row_names_a_catalogue_gpu() {
        for (gpu, count, _) in INSTANCE_TYPES {
            let known = crate::catalog::gpu(gpu).expect("catalogue GPU");
            assert!(known.clouds.contains(&"aws"), "{gpu}");
            assert!(known.counts.contains(count), "{gpu} × {count}");
        }
    }
}

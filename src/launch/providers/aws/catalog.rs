//! Which EC2 instance type carries a GPU request (issue 4's native AWS provider). One row per
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

/// The instance type for `count` × `gpu` (canonical names), or the counts AWS does offer.
pub fn instance_type(gpu: &str, count: u32) -> Result<&'static str, Vec<u32>> {
    crate::launch::catalog::machine_for(INSTANCE_TYPES, gpu, count)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let known = crate::launch::catalog::gpu(gpu).expect("catalogue GPU");
            assert!(known.clouds.contains(&"aws"), "{gpu}");
            assert!(known.counts.contains(count), "{gpu} × {count}");
        }
    }
}

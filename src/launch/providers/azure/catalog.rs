//! Which Azure VM size carries a GPU request for the native Azure provider.

/// `(gpu, count, VM size)`, documented in the README's Azure section.
pub const VM_SIZES: &[(&str, u32, &str)] = &[
    ("T4", 1, "Standard_NC4as_T4_v3"),
    ("T4", 4, "Standard_NC64as_T4_v3"),
    ("A10", 1, "Standard_NV36ads_A10_v5"),
    ("A10", 2, "Standard_NV72ads_A10_v5"),
    ("A100", 8, "Standard_ND96asr_v4"),
    ("A100-80GB", 1, "Standard_NC24ads_A100_v4"),
    ("A100-80GB", 2, "Standard_NC48ads_A100_v4"),
    ("A100-80GB", 4, "Standard_NC96ads_A100_v4"),
    ("A100-80GB", 8, "Standard_ND96amsr_A100_v4"),
    ("H100", 1, "Standard_NC40ads_H100_v5"),
    ("H100", 2, "Standard_NC80adis_H100_v5"),
    ("H100", 8, "Standard_ND96isr_H100_v5"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_size(gpu: &str, count: u32) -> Result<&'static str, Vec<u32>> {
        crate::catalog::machine_for(VM_SIZES, gpu, count)
    }

    #[test]
    fn common_requests_map_to_the_expected_sizes() {
        assert_eq!(vm_size("A10", 1), Ok("Standard_NV36ads_A10_v5"));
        assert_eq!(vm_size("A100-80GB", 1), Ok("Standard_NC24ads_A100_v4"));
        assert_eq!(vm_size("H100", 1), Ok("Standard_NC40ads_H100_v5"));
        assert_eq!(vm_size("L4", 1), Err(vec![]), "Azure sells no L4");
    }

    #[test]
    fn every_row_names_a_catalogue_gpu_offered_on_azure() {
        for (gpu, _, _) in VM_SIZES {
            let known = crate::catalog::gpu(gpu).expect("catalogue GPU");
            assert!(known.clouds.contains(&"azure"), "{gpu}");
        }
    }
}

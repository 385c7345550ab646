//! What native Azure launches need from the operator (subscription, resource group, a subnet per
//! region, SSH key, image), how each setting is parsed at start-up, and the check that refuses a
//! launch request the configuration cannot run, before anything is queued.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::launch::failure::ErrorCode;
use crate::launch::spec::{LaunchSpec, SpecError};

/// The default image: Microsoft's Ubuntu 22.04 HPC image, which ships the NVIDIA driver and CUDA.
pub const DEFAULT_IMAGE: &str = "microsoft-dsvm:ubuntu-hpc:2204:latest";

/// The Linux user the operator's SSH key is installed for.
pub const ADMIN_USERNAME: &str = "skylaunch";

#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// Azure Resource Manager endpoint (default: the public cloud; tests use a local stand-in).
    pub endpoint_url: Option<String>,
    /// Microsoft Entra ID authority for tokens (default: the public cloud's).
    pub authority_host: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    /// Region → existing subnet resource id; a region without one cannot be launched in.
    pub subnets: BTreeMap<String, String>,
    pub image: AzureImage,
    pub ssh_public_key: Option<String>,
    /// Give each VM a Standard public IP (deleted with the VM).
    pub public_ip: bool,
    /// How long a VM may take to be created and running.
    pub running_timeout: Duration,
    /// The shortest wait between polls of a long-running operation (Azure's Retry-After may
    /// ask for longer).
    pub poll_interval: Duration,
}

impl Default for AzureSettings {
    fn default() -> Self {
        AzureSettings {
            endpoint_url: None,
            authority_host: None,
            subscription_id: None,
            resource_group: None,
            subnets: BTreeMap::new(),
            image: parse_image(DEFAULT_IMAGE).expect("the default image parses"),
            ssh_public_key: None,
            public_ip: true,
            running_timeout: Duration::from_secs(900),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// A marketplace image (`publisher:offer:sku:version`) or an image resource id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureImage {
    Marketplace {
        publisher: String,
        offer: String,
        sku: String,
        version: String,
    },
    Id(String),
}

impl AzureImage {
    /// The `imageReference` of a VM body.
    pub fn reference(&self) -> serde_json::Value {
        match self {
            AzureImage::Marketplace {
                publisher,
                offer,
                sku,
                version,
            } => {
                serde_json::json!({"publisher": publisher, "offer": offer, "sku": sku, "version": version})
            }
            AzureImage::Id(id) => serde_json::json!({ "id": id }),
        }
    }
}

pub fn parse_image(s: &str) -> Result<AzureImage, String> {
    let s = s.trim();
    if s.starts_with("/subscriptions/") {
        return Ok(AzureImage::Id(s.to_string()));
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [publisher, offer, sku, version] if parts.iter().all(|p| !p.is_empty()) => {
            Ok(AzureImage::Marketplace {
                publisher: publisher.to_string(),
                offer: offer.to_string(),
                sku: sku.to_string(),
                version: version.to_string(),
            })
        }
        _ => Err(format!(
            "{s:?} is not an Azure image: use publisher:offer:sku:version (e.g. {DEFAULT_IMAGE}) or an image resource id (/subscriptions/...)"
        )),
    }
}

/// One `region=subnet-resource-id` pair.
pub fn parse_subnet(s: &str) -> Result<(String, String), String> {
    let Some((region, id)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not REGION=SUBNET_ID, e.g. eastus=/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>"
        ));
    };
    let region = region.trim().to_ascii_lowercase();
    let id = id.trim();
    if !crate::catalog::regions("azure").contains(&region.as_str()) {
        return Err(format!("{region:?} is not an Azure region skylaunch knows"));
    }
    let lower = id.to_ascii_lowercase();
    if !lower.starts_with("/subscriptions/")
        || !lower.contains("/providers/microsoft.network/virtualnetworks/")
        || !lower.contains("/subnets/")
    {
        return Err(format!(
            "{id:?} is not a subnet resource id (/subscriptions/.../virtualNetworks/<vnet>/subnets/<subnet>)"
        ));
    }
    Ok((region, id.to_string()))
}

pub fn parse_ssh_public_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    let known = ["ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-"];
    if known.iter().any(|k| s.starts_with(k)) && !s.contains('\n') {
        Ok(s.to_string())
    } else {
        Err("expected one OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...), e.g. the contents of ~/.ssh/id_ed25519.pub".into())
    }
}

impl AzureSettings {
    /// The environment variables still to set before Azure launches can run.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.subscription_id.is_none() {
            missing.push("SKYLAUNCH_AZURE_SUBSCRIPTION_ID");
        }
        if self.resource_group.is_none() {
            missing.push("SKYLAUNCH_AZURE_RESOURCE_GROUP");
        }
        if self.subnets.is_empty() {
            missing.push("SKYLAUNCH_AZURE_SUBNETS");
        }
        if self.ssh_public_key.is_none() {
            missing.push("SKYLAUNCH_AZURE_SSH_PUBLIC_KEY");
        }
        missing
    }

    /// The regions a launch will try: those it asks for, or every region with a subnet.
    pub fn regions_for(&self, spec: &LaunchSpec) -> Vec<String> {
        if spec.regions.is_empty() {
            self.subnets.keys().cloned().collect()
        } else {
            spec.regions.clone()
        }
    }

    /// Refuses what this configuration cannot launch: Azure not configured, or a region asked
    /// for that has no subnet.
    pub fn check(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(SpecError {
                code: ErrorCode::InvalidRequest,
                field: "provider",
                message: format!(
                    "native Azure launches are not configured on this control plane: set {}",
                    missing.join(", ")
                ),
                suggestions: vec![
                    "See the README's \"Native Azure launches\" section".into(),
                    "Or use provider \"skypilot\" with cloud \"azure\"".into(),
                ],
            });
        }
        if let Some(region) = spec.regions.iter().find(|r| !self.subnets.contains_key(*r)) {
            return Err(SpecError {
                code: ErrorCode::InvalidRegion,
                field: "regions",
                message: format!(
                    "no subnet is configured for {region}: add {region}=<subnet id> to SKYLAUNCH_AZURE_SUBNETS, or choose a configured region"
                ),
                suggestions: self.subnets.keys().cloned().collect(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::spec::LaunchRequest;

    const SUBNET: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default";

    fn configured() -> AzureSettings {
        AzureSettings {
            subscription_id: Some("sub".into()),
            resource_group: Some("rg".into()),
            subnets: BTreeMap::from([("eastus".to_string(), SUBNET.to_string())]),
            ssh_public_key: Some("ssh-ed25519 AAAAC3Nz test".into()),
            ..AzureSettings::default()
        }
    }

    fn spec(regions: &[&str]) -> LaunchSpec {
        serde_json::from_value::<LaunchRequest>(serde_json::json!({
            "model": "org/m", "provider": "azure", "gpu": "A10", "regions": regions
        }))
        .unwrap()
        .validate("n")
        .unwrap()
    }

    #[test]
    fn images_parse_as_marketplace_urns_or_resource_ids() {
        assert_eq!(
            parse_image("Canonical:ubuntu-24_04-lts:server:latest")
                .unwrap()
                .reference(),
            serde_json::json!({"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"})
        );
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/gpu";
        assert_eq!(parse_image(id).unwrap(), AzureImage::Id(id.into()));
        assert!(parse_image("ubuntu").is_err());
        assert!(parse_image("a::c:d").is_err());
    }

    #[test]
    fn subnets_need_a_known_region_and_a_subnet_id() {
        let (region, id) = parse_subnet(&format!("EastUS={SUBNET}")).unwrap();
        assert_eq!((region.as_str(), id.as_str()), ("eastus", SUBNET));
        assert!(parse_subnet(SUBNET).is_err(), "no region");
        assert!(parse_subnet(&format!("us-east-1={SUBNET}")).is_err());
        assert!(parse_subnet("eastus=/subscriptions/s/resourceGroups/rg").is_err());
    }

    #[test]
    fn ssh_keys_must_be_one_public_key_line() {
        assert!(parse_ssh_public_key("ssh-ed25519 AAAAC3 me@host\n").is_ok());
        assert!(parse_ssh_public_key("-----BEGIN OPENSSH PRIVATE KEY-----").is_err());
        assert!(parse_ssh_public_key("ssh-rsa AAA\nssh-rsa BBB").is_err());
    }

    #[test]
    fn unconfigured_azure_names_every_missing_setting() {
        let e = AzureSettings::default().check(&spec(&[])).unwrap_err();
        assert_eq!(e.field, "provider");
        for name in [
            "SKYLAUNCH_AZURE_SUBSCRIPTION_ID",
            "SKYLAUNCH_AZURE_RESOURCE_GROUP",
            "SKYLAUNCH_AZURE_SUBNETS",
            "SKYLAUNCH_AZURE_SSH_PUBLIC_KEY",
        ] {
            assert!(e.message.contains(name), "{}", e.message);
        }
    }

    #[test]
    fn a_region_without_a_subnet_is_refused_with_the_configured_ones() {
        let settings = configured();
        assert!(settings.check(&spec(&["eastus"])).is_ok());
        let e = settings.check(&spec(&["westus2"])).unwrap_err();
        assert_eq!(e.field, "regions");
        assert_eq!(e.code, ErrorCode::InvalidRegion);
        assert_eq!(e.suggestions, vec!["eastus"]);
        assert_eq!(settings.regions_for(&spec(&[])), vec!["eastus"]);
    }
}

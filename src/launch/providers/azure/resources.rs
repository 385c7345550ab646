//! Reading the Azure Resource Manager documents skylaunch lists: resource SKUs (where a VM size
//! is offered) and virtual machines (tags, state, creation time, provisioning errors).
//!
//! These are read as plain JSON rather than through the SDK's generated models: a resource
//! group holds other people's VMs and a SKU list holds every resource type Azure sells, and one
//! value a model's fixed list does not know would make the whole page unreadable.

use serde_json::Value;

/// Where a VM size can run in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offering {
    /// Not sold here, or not to this subscription (`reason`).
    NotOffered(String),
    /// Offered in these availability zones (empty: only without a zone).
    Zones(Vec<String>),
}

/// Where `vm_size` runs in `region`, from that region's resource SKUs (restrictions applied: a
/// size the subscription may not use there is not offered; a restricted zone is left out).
pub fn offering(skus: &[Value], region: &str, vm_size: &str) -> Offering {
    let eq = |v: &Value, s: &str| v.as_str().is_some_and(|v| v.eq_ignore_ascii_case(s));
    let Some(sku) = skus
        .iter()
        .find(|s| eq(&s["resourceType"], "virtualMachines") && eq(&s["name"], vm_size))
    else {
        return Offering::NotOffered(format!("{vm_size} is not offered in {region}"));
    };
    let mut zones: Vec<String> = list(&sku["locationInfo"])
        .iter()
        .filter(|l| eq(&l["location"], region))
        .flat_map(|l| strings(&l["zones"]))
        .collect();
    for restriction in list(&sku["restrictions"]) {
        let reason = restriction["reasonCode"].as_str().unwrap_or("restricted");
        match restriction["type"].as_str() {
            Some("Location") => {
                return Offering::NotOffered(format!(
                    "{vm_size} is restricted in {region} for this subscription ({reason})"
                ))
            }
            Some("Zone") => {
                let restricted = strings(&restriction["restrictionInfo"]["zones"]);
                zones.retain(|z| !restricted.contains(z));
                if zones.is_empty() {
                    return Offering::NotOffered(format!(
                        "{vm_size} is restricted in every zone of {region} for this subscription ({reason})"
                    ));
                }
            }
            _ => {}
        }
    }
    zones.sort();
    zones.dedup();
    Offering::Zones(zones)
}

/// A VM as a resource group lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedVm {
    pub name: String,
    pub region: String,
    pub tags: serde_json::Map<String, Value>,
    pub provisioning_state: Option<String>,
    pub created_at_ms: Option<i64>,
}

pub fn listed_vm(doc: &Value) -> Option<ListedVm> {
    Some(ListedVm {
        name: doc["name"].as_str()?.to_string(),
        region: doc["location"].as_str()?.to_ascii_lowercase(),
        tags: doc["tags"].as_object().cloned().unwrap_or_default(),
        provisioning_state: doc["properties"]["provisioningState"]
            .as_str()
            .map(str::to_string),
        created_at_ms: doc["properties"]["timeCreated"]
            .as_str()
            .and_then(|t| crate::clock::parse_rfc3339(t).ok()),
    })
}

/// A VM's provisioning as its own document states it: `Ok(true)` done, `Ok(false)` still
/// going, `Err((code, message))` failed (from the instance view's `ProvisioningState/failed/…`
/// status when present).
pub fn provisioning(doc: &Value) -> Result<bool, (String, String)> {
    match doc["properties"]["provisioningState"].as_str() {
        Some("Succeeded") => Ok(true),
        Some("Failed") | Some("Canceled") => {
            let failed = list(&doc["properties"]["instanceView"]["statuses"])
                .into_iter()
                .find_map(|s| {
                    let code = s["code"]
                        .as_str()?
                        .strip_prefix("ProvisioningState/failed/")?;
                    Some((
                        code.to_string(),
                        s["message"].as_str().unwrap_or_default().to_string(),
                    ))
                });
            Err(failed.unwrap_or_else(|| {
                (
                    "ProvisioningFailed".into(),
                    "the VM's provisioning failed; Azure gave no reason".into(),
                )
            }))
        }
        _ => Ok(false),
    }
}

fn list(v: &Value) -> Vec<&Value> {
    v.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    list(v)
        .into_iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SIZE: &str = "Standard_NC24ads_A100_v4";

    fn sku(zones: &[&str], restrictions: Value) -> Value {
        json!({"resourceType": "virtualMachines", "name": SIZE, "locations": ["eastus"],
               "locationInfo": [{"location": "eastus", "zones": zones, "zoneDetails": [], "type": "SomethingNew"}],
               "capabilities": [{"name": "GPUs", "value": "1"}], "restrictions": restrictions})
    }

    #[test]
    fn zones_come_from_the_location_info_minus_restricted_ones() {
        let disk = json!({"resourceType": "disks", "name": SIZE});
        let skus = [
            disk,
            sku(
                &["3", "1", "2"],
                json!([{"type": "Zone", "values": ["eastus"], "reasonCode": "NotAvailableForSubscription",
                                          "restrictionInfo": {"locations": ["eastus"], "zones": ["2"]}}]),
            ),
        ];
        assert_eq!(
            offering(&skus, "eastus", SIZE),
            Offering::Zones(vec!["1".into(), "3".into()])
        );
        assert_eq!(
            offering(&skus, "eastus", "standard_nc24ads_a100_v4"),
            Offering::Zones(vec!["1".into(), "3".into()]),
            "names compare as Azure does, without case"
        );
    }

    #[test]
    fn unknown_or_location_restricted_sizes_are_not_offered() {
        assert!(matches!(
            offering(&[], "eastus", SIZE),
            Offering::NotOffered(_)
        ));
        let restricted = [sku(
            &["1"],
            json!([{"type": "Location", "values": ["eastus"], "reasonCode": "QuotaId"}]),
        )];
        let Offering::NotOffered(why) = offering(&restricted, "eastus", SIZE) else {
            panic!()
        };
        assert!(why.contains("QuotaId"), "{why}");
        assert_eq!(
            offering(&[sku(&[], json!([]))], "eastus", SIZE),
            Offering::Zones(vec![]),
            "offered without zones"
        );
    }

    #[test]
    fn listed_vms_read_tags_state_and_creation_time() {
        let vm = listed_vm(&json!({"name": "sl-1", "location": "EastUS", "tags": {"skylaunch:managed": "true"},
            "identity": {"type": "SomethingAzureAddsLater"},
            "properties": {"provisioningState": "Succeeded", "timeCreated": "2026-11-24T01:00:00.1234567+00:00"}}))
        .unwrap();
        assert_eq!(vm.region, "eastus");
        assert_eq!(vm.tags["skylaunch:managed"], "true");
        assert_eq!(vm.created_at_ms, Some(1_795_482_000_123));
        let bare = listed_vm(&json!({"name": "x", "location": "eastus"})).unwrap();
        assert_eq!((bare.created_at_ms, bare.provisioning_state), (None, None));
    }

    #[test]
    fn provisioning_failures_name_the_allocation_error() {
        let failed = json!({"properties": {"provisioningState": "Failed", "instanceView": {"statuses": [
            {"code": "ProvisioningState/failed/AllocationFailed", "level": "Error", "message": "Allocation failed."}]}}});
        assert_eq!(
            provisioning(&failed),
            Err(("AllocationFailed".into(), "Allocation failed.".into()))
        );
        assert_eq!(
            provisioning(&json!({"properties": {"provisioningState": "Creating"}})),
            Ok(false)
        );
        assert_eq!(
            provisioning(&json!({"properties": {"provisioningState": "Succeeded"}})),
            Ok(true)
        );
    }
}

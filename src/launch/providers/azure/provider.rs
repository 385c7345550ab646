//! `provider: "azure"`: launches the node's VM through Azure Resource Manager directly (no
//! SkyPilot), with the same template, bootstrap, stages and error codes as AWS.
//!
//! Placements are tried in order: with spot, every region's zones that offer the VM size (from
//! the subscription's resource SKUs) as spot (`priority: Spot`, eviction `Delete`, max price
//! -1: pay up to on-demand), then, when `spot_fallback` allows, the same as on-demand. Each try
//! is an attempt with its own VM name, recorded before the create is sent, so teardown finds it
//! whatever happens; a PUT with the same name is idempotent in ARM, so a retried call can never
//! create a second VM. A placement refused for capacity leaves a failed VM behind, which is
//! deleted before the next placement. VMs are tagged `skylaunch:managed=true`,
//! `skylaunch:installation`, `skylaunch:job-id` and `skylaunch:node-id` (their NIC, public IP and
//! disk are made and deleted with them); their custom data is the bootstrap script, the only
//! place the node token travels (Azure never returns custom data in reads).

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::arm::{Arm, ArmError, VmRef};
use super::explain::{classify, credentials_invalid, ArmFailure};
use super::resources::Offering;
use super::settings::{AzureSettings, ADMIN_USERNAME};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::job::Job;
use crate::launch::orphans::ownership_tags;
use crate::launch::providers::placement::{self, market_name};
use crate::launch::providers::{bootstrap, BoxFuture, LaunchProvider, RenderedTask};
use crate::launch::run::JobRun;
use crate::launch::spec::{LaunchSpec, SpecError};
use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};
use crate::launch::template::{NodeIdentity, Template};

pub struct AzureProvider {
    pub settings: AzureSettings,
    /// Tagged on every VM, so only this installation's orphan sweeper judges it.
    pub installation_id: String,
    arm: OnceCell<Arm>,
}

enum Outcome {
    Started,
    NextPlacement(String),
    SkipSpot(LaunchError),
}

impl LaunchProvider for AzureProvider {
    /// The first-boot script, handed to the VM as its custom data.
    fn render(&self, job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
        bootstrap::rendered(job, template, node)
    }

    fn check(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        self.settings.check(spec)
    }

    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.launch_vm(run))
    }

    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.delete_all(job))
    }

    fn still_launching<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, LaunchError>> {
        Box::pin(self.last_vm_alive(job))
    }

    fn readiness(
        &self,
        kind: crate::launch::providers::Provider,
    ) -> BoxFuture<'_, crate::launch::providers::readiness::Readiness> {
        Box::pin(self.check_readiness(kind))
    }

    fn readiness_asks_the_cloud(&self) -> bool {
        true
    }
}

impl AzureProvider {
    pub fn new(settings: AzureSettings, installation_id: String) -> AzureProvider {
        AzureProvider {
            settings,
            installation_id,
            arm: OnceCell::new(),
        }
    }

    /// The ARM client, built on first use (so a control plane without Azure credentials starts
    /// fine and only Azure launches report them missing).
    pub async fn arm(&self) -> Result<&Arm, ArmError> {
        self.arm
            .get_or_try_init(|| async { Arm::new(&self.settings) })
            .await
    }

    async fn launch_vm(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let spec = &job.spec;
        let gpu = spec.gpu.clone().unwrap_or_default();
        let (vm_size, _template) = super::REQUESTS.machine_and_template(spec)?;
        let arm = self
            .arm()
            .await
            .map_err(|e| arm_failed("set up the Azure client", &e))?;
        let custom_data = azure_core::base64::encode(run.rendered_task().as_bytes());
        let regions = self.settings.regions_for(spec);
        let markets = placement::markets(spec);
        let mut reasons = Vec::new();
        // The last spot quota refusal, and whether anything else went wrong: a launch refused
        // only by quota fails with the quota as its cause.
        let mut spot_refusal: Option<LaunchError> = None;
        let mut other_failures = 0;
        let mut offerings: HashMap<String, Offering> = HashMap::new();
        let mut attempt_no = job.attempts.len() as u32;
        for market in &markets {
            for region in &regions {
                // The SKU list of a region is large; the on-demand pass reuses the spot pass's.
                if !offerings.contains_key(region) {
                    let offering = arm
                        .offering(region, vm_size)
                        .await
                        .map_err(|e| arm_failed("list the VM sizes offered", &e))?;
                    offerings.insert(region.clone(), offering);
                }
                let zones: Vec<Option<String>> = match &offerings[region] {
                    Offering::Zones(zones) if zones.is_empty() => vec![None],
                    Offering::Zones(zones) => zones.iter().cloned().map(Some).collect(),
                    Offering::NotOffered(reason) => {
                        if *market == markets[0] {
                            reasons.push(reason.clone());
                        }
                        continue;
                    }
                };
                for zone in zones {
                    attempt_no += 1;
                    let place = match &zone {
                        Some(z) => format!("{region} zone {z}"),
                        None => region.clone(),
                    };
                    run.stage(
                        Stage::Provision,
                        Some(format!("trying Azure {place}, {}", market_name(*market))),
                    )
                    .await;
                    run.attempt_started(Attempt {
                        cloud: "azure".into(),
                        region: Some(region.clone()),
                        zone: zone.clone(),
                        instance_type: Some(vm_size.to_string()),
                        market: *market,
                        price_per_hour: None,
                        outcome: AttemptOutcome::Trying,
                        reason: None,
                    })
                    .await;
                    let vm = arm.vm_ref(&format!("{}-{attempt_no}", job.cluster_name), region);
                    let target = Target {
                        vm: &vm,
                        zone: zone.as_deref(),
                        vm_size,
                        market: *market,
                    };
                    match self
                        .try_placement(run, arm, &job, &target, &custom_data)
                        .await
                    {
                        Ok(Outcome::Started) => return Ok(()),
                        Ok(Outcome::NextPlacement(reason)) => {
                            run.attempt_finished(AttemptOutcome::Failed, Some(reason.clone()))
                                .await;
                            reasons.push(reason);
                            other_failures += 1;
                        }
                        Ok(Outcome::SkipSpot(error)) => {
                            // The spot cores quota is per region: the rest of this region's
                            // zones would be refused alike, the next region may have room.
                            run.attempt_finished(AttemptOutcome::Failed, Some(error.raw.clone()))
                                .await;
                            reasons.push(error.raw.clone());
                            spot_refusal = Some(error);
                            break;
                        }
                        Err(e) => {
                            run.attempt_finished(AttemptOutcome::Failed, Some(e.message.clone()))
                                .await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        if attempt_no == job.attempts.len() as u32 {
            return Err(LaunchError::new(
                ErrorCode::CapacityUnavailable,
                format!("{vm_size} is not offered in {}", regions.join(", ")),
                format!(
                    "Azure does not offer {vm_size} ({} × {gpu}) to this subscription in any region tried",
                    spec.gpu_count
                ),
            )
            .with_raw(reasons.join("\n"))
            .suggest("Try other regions (with a subnet in SKYLAUNCH_AZURE_SUBNETS)")
            .suggest("A size restricted for the subscription (NotAvailableForSubscription) is unlocked by an Azure support request"));
        }
        if let (Some(error), 0) = (spot_refusal, other_failures) {
            // Refused by the spot quota everywhere tried, and on-demand not allowed.
            return Err(error.suggest("Or allow on-demand fallback (spot_fallback: \"on_demand\")"));
        }
        Err(placement::exhausted(
            "Azure",
            vm_size,
            spec,
            &regions,
            &reasons,
            "eastus2, westus3 or swedencentral",
        ))
    }

    async fn try_placement(
        &self,
        run: &JobRun,
        arm: &Arm,
        job: &Job,
        target: &Target<'_>,
        custom_data: &str,
    ) -> Result<Outcome, LaunchError> {
        let vm = target.vm;
        let body = self.vm_body(job, target, custom_data);
        let model = serde_json::from_value(body).map_err(|e| {
            LaunchError::new(
                ErrorCode::Internal,
                "Could not build the Azure VM request",
                e.to_string(),
            )
        })?;
        // Recorded before the create is sent, so teardown finds it whatever happens next.
        let mut recorded = job_vms(&run.snapshot().await);
        recorded.push(vm.clone());
        run.set_provider_state(json!({ "vms": recorded })).await;
        run.log
            .line(
                "skylaunch",
                &format!(
                    "creating Azure VM {} ({}, {}{}, {})",
                    vm.name,
                    target.vm_size,
                    vm.region,
                    target
                        .zone
                        .map(|z| format!(" zone {z}"))
                        .unwrap_or_default(),
                    market_name(target.market)
                ),
            )
            .await;
        let spot = target.market == Market::Spot;
        match arm
            .create_vm(vm, model, self.settings.running_timeout)
            .await
        {
            Ok(()) => {
                run.log
                    .line("skylaunch", &format!("Azure VM {} is running", vm.name))
                    .await;
                run.attempt_finished(AttemptOutcome::Succeeded, None).await;
                run.stage(
                    Stage::InstanceUp,
                    Some(format!("{} in {} is running", vm.name, vm.region)),
                )
                .await;
                run.stage(
                    Stage::Setup,
                    Some(format!(
                        "{}: custom data installs the model server and agent",
                        vm.name
                    )),
                )
                .await;
                Ok(Outcome::Started)
            }
            Err(ArmError::Refused { code, message, .. }) => {
                run.log
                    .line("azure", &format!("{} refused: {code}: {message}", vm.name))
                    .await;
                let failure = classify(&code, &message, target.vm_size, &vm.region, spot);
                if matches!(
                    failure,
                    ArmFailure::NextPlacement | ArmFailure::SpotRefused(_)
                ) {
                    // A refused create can leave a failed VM behind. Deleting it does not hold
                    // up the next placement; if Azure will not even take the delete, teardown
                    // and the orphan sweeper still have it on record.
                    if let Err(e) = arm.delete_vm(vm).await {
                        run.log
                            .line(
                                "skylaunch",
                                &format!("could not delete the failed VM {} yet: {e}", vm.name),
                            )
                            .await;
                    }
                }
                match failure {
                    ArmFailure::NextPlacement => {
                        Ok(Outcome::NextPlacement(format!("{code}: {message}")))
                    }
                    ArmFailure::SpotRefused(error) => Ok(Outcome::SkipSpot(error)),
                    ArmFailure::Fatal(error) => Err(error),
                    ArmFailure::Retry => Err(LaunchError::new(
                        ErrorCode::ProviderUnavailable,
                        "Azure kept refusing the call",
                        format!("{code}: {message} (after retries)"),
                    )
                    .suggest("Azure is throttling or failing; try again in a few minutes")),
                }
            }
            Err(e) => Err(arm_failed(&format!("create VM {}", vm.name), &e)),
        }
    }

    /// The VM as Azure Resource Manager documents it (API 2024-07-01), read into the SDK's
    /// model. The NIC and public IP are created with the VM and deleted with it.
    fn vm_body(&self, job: &Job, target: &Target<'_>, custom_data: &str) -> Value {
        let name = &target.vm.name;
        let mut ip = json!({"subnet": {"id": self.settings.subnets.get(&target.vm.region)}, "primary": true});
        if self.settings.public_ip {
            ip["publicIPAddressConfiguration"] = json!({
                "name": format!("{name}-ip"),
                "sku": {"name": "Standard", "tier": "Regional"},
                "properties": {"deleteOption": "Delete", "publicIPAllocationMethod": "Static"}
            });
        }
        let mut properties = json!({
            "hardwareProfile": {"vmSize": target.vm_size},
            "storageProfile": {
                "imageReference": self.settings.image.reference(),
                "osDisk": {
                    "createOption": "FromImage",
                    "diskSizeGB": job.spec.disk_gb,
                    "managedDisk": {"storageAccountType": "Premium_LRS"},
                    "deleteOption": "Delete"
                }
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": ADMIN_USERNAME,
                "customData": custom_data,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{
                        "path": format!("/home/{ADMIN_USERNAME}/.ssh/authorized_keys"),
                        "keyData": self.settings.ssh_public_key
                    }]}
                }
            },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [{
                    "name": format!("{name}-nic"),
                    "properties": {
                        "primary": true,
                        "deleteOption": "Delete",
                        "ipConfigurations": [{"name": "ipconfig1", "properties": ip}]
                    }
                }]
            },
            "priority": "Regular"
        });
        if target.market == Market::Spot {
            properties["priority"] = "Spot".into();
            properties["evictionPolicy"] = "Delete".into();
            properties["billingProfile"] = json!({"maxPrice": -1.0});
        }
        let mut tags: serde_json::Map<String, Value> = ownership_tags(&self.installation_id, job)
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.into()))
            .collect();
        tags.insert("skylaunch:name".into(), job.name.clone().into());
        let mut vm = json!({
            "location": target.vm.region,
            "tags": tags,
            "properties": properties
        });
        if let Some(zone) = target.zone {
            vm["zones"] = json!([zone]);
        }
        vm
    }

    /// Whether the VM that runs the node (the job's last recorded one) is being created or runs.
    async fn last_vm_alive(&self, job: &Job) -> Result<bool, LaunchError> {
        let Some(vm) = job_vms(job).pop() else {
            return Ok(false);
        };
        let arm = self
            .arm()
            .await
            .map_err(|e| arm_failed("set up the Azure client", &e))?;
        arm.vm_alive(&vm)
            .await
            .map_err(|e| arm_failed(&format!("look up VM {}", vm.name), &e))
    }

    /// Asks Azure to delete every VM the job created (failed placements included).
    async fn delete_all(&self, job: &Job) -> Result<(), LaunchError> {
        let vms = job_vms(job);
        if vms.is_empty() {
            return Ok(());
        }
        let arm = self
            .arm()
            .await
            .map_err(|e| arm_failed("set up the Azure client", &e))?;
        let mut failure = None;
        for vm in vms {
            match arm.delete_vm(&vm).await {
                Ok(()) => tracing::info!(job_id = %job.id, vm = %vm.name, "deleting Azure VM"),
                Err(e) => {
                    failure = Some(LaunchError::new(
                        ErrorCode::ProviderUnavailable,
                        "Could not delete the Azure VM",
                        format!(
                            "deleting VM {} in resource group {} failed: {e}; delete it in the Azure portal",
                            vm.name, vm.resource_group
                        ),
                    ))
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// The VMs recorded in a job's provider state, oldest first; the last one runs the node.
pub fn job_vms(job: &Job) -> Vec<VmRef> {
    serde_json::from_value(job.provider_state["vms"].clone()).unwrap_or_default()
}

/// Where one create goes.
struct Target<'a> {
    vm: &'a VmRef,
    zone: Option<&'a str>,
    vm_size: &'a str,
    market: Market,
}

/// A call that failed for a reason other than the placement: credentials, Azure unreachable.
pub(super) fn arm_failed(what: &str, e: &ArmError) -> LaunchError {
    match e {
        ArmError::Credential(m) => {
            credentials_invalid(&format!("could not get an Azure token to {what}"), m.clone())
        }
        ArmError::Refused { code, message, .. } => match classify(code, message, "", "", false) {
            ArmFailure::Fatal(error) => error,
            _ => LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("Azure could not {what}"),
                e.to_string(),
            ),
        },
        ArmError::Unreachable(m) => LaunchError::new(
            ErrorCode::ProviderUnavailable,
            format!("Cannot reach Azure to {what}"),
            m.clone(),
        )
        .suggest("Check the control plane's network access to management.azure.com (or SKYLAUNCH_AZURE_ENDPOINT_URL)"),
        ArmError::StillRunning(m) => LaunchError::new(
            ErrorCode::LaunchTimeout,
            format!("Azure did not finish in time to {what}"),
            m.clone(),
        )
        .suggest("Azure is slow to allocate this size right now; try again, or another region"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::launch::spec::LaunchRequest;

    fn job(spot: bool) -> Job {
        let spec = serde_json::from_value::<LaunchRequest>(json!({
            "model": "org/m", "provider": "azure", "gpu": "A100-80GB", "use_spot": spot, "disk_gb": 200
        }))
        .unwrap()
        .validate("node-1")
        .unwrap();
        Job::queued("job-id".into(), spec, Some("node-id".into()), 0)
    }

    fn ref_in(region: &str) -> VmRef {
        VmRef {
            name: "sl-abc-1".into(),
            region: region.into(),
            subscription: "sub".into(),
            resource_group: "rg".into(),
        }
    }

    fn provider() -> AzureProvider {
        AzureProvider::new(
            AzureSettings {
                subscription_id: Some("sub".into()),
                resource_group: Some("rg".into()),
                subnets: BTreeMap::from([("eastus".to_string(), "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s".to_string())]),
                ssh_public_key: Some("ssh-ed25519 AAAAC3Nz op@laptop".into()),
                ..AzureSettings::default()
            },
            "installation-1".into(),
        )
    }

    /// The body survives the SDK's model whole: no field is silently dropped or renamed.
    #[test]
    fn vm_body_round_trips_through_the_sdk_model() {
        for spot in [true, false] {
            let p = provider();
            let job = job(spot);
            let vm = ref_in("eastus");
            let target = Target {
                vm: &vm,
                zone: Some("2"),
                vm_size: "Standard_NC24ads_A100_v4",
                market: if spot { Market::Spot } else { Market::OnDemand },
            };
            let body = p.vm_body(&job, &target, "Y3VzdG9t");
            let model: azure_mgmt_compute::package_2024_07_01::models::VirtualMachine =
                serde_json::from_value(body.clone()).unwrap();
            assert_eq!(without_nulls(serde_json::to_value(&model).unwrap()), body);
        }
    }

    /// The SDK writes some unset read-only fields as `null`, which ARM reads as absent.
    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
            other => other,
        }
    }

    #[test]
    fn spot_vms_are_evicted_by_deletion_at_up_to_the_on_demand_price() {
        let p = provider();
        let vm = ref_in("eastus");
        let target = Target {
            vm: &vm,
            zone: None,
            vm_size: "Standard_NC24ads_A100_v4",
            market: Market::Spot,
        };
        let body = p.vm_body(&job(true), &target, "");
        assert_eq!(body["properties"]["priority"], "Spot");
        assert_eq!(body["properties"]["evictionPolicy"], "Delete");
        assert_eq!(body["properties"]["billingProfile"]["maxPrice"], -1.0);
        assert!(body.get("zones").is_none(), "no zone asked, none sent");
        assert_eq!(body["tags"]["skylaunch:managed"], "true");
        assert_eq!(body["tags"]["skylaunch:node-id"], "node-id");
        assert_eq!(body["tags"]["skylaunch:installation"], "installation-1");
        let on_demand = p.vm_body(
            &job(false),
            &Target {
                market: Market::OnDemand,
                ..target
            },
            "",
        );
        assert_eq!(on_demand["properties"]["priority"], "Regular");
        assert!(on_demand["properties"].get("evictionPolicy").is_none());
    }
}

//! Azure's side of the orphan sweeper: the VMs in the configured resource group tagged
//! `skylaunch:managed=true` (skylaunch creates VMs nowhere else), with their installation, job
//! and node tags, and deleting one. Azure is swept whenever it is configured, launches or not.

use std::sync::Arc;

use super::provider::{job_vms, AzureProvider};
use crate::launch::job::Job;
use crate::launch::orphans::{
    CloudInventory, Inventory, ManagedInstance, INSTALLATION_TAG, JOB_TAG, NODE_TAG,
};
use crate::launch::providers::BoxFuture;

pub struct AzureInventory {
    pub provider: Arc<AzureProvider>,
}

impl CloudInventory for AzureInventory {
    fn cloud(&self) -> &'static str {
        "azure"
    }

    fn sweep_without_jobs(&self) -> bool {
        true
    }

    fn list(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async move {
            let listed = match self.provider.arm().await {
                Ok(arm) => arm.managed_vms().await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(vms) => Inventory {
                    instances: vms
                        .into_iter()
                        // A VM being deleted is on its way out already.
                        .filter(|vm| vm.provisioning_state.as_deref() != Some("Deleting"))
                        .map(|vm| {
                            let tag = |key: &str| {
                                vm.tags
                                    .get(key)
                                    .and_then(|v| v.as_str())
                                    .map(str::to_string)
                            };
                            ManagedInstance {
                                installation: tag(INSTALLATION_TAG),
                                job_id: tag(JOB_TAG),
                                node_id: tag(NODE_TAG),
                                id: vm.name,
                                region: vm.region,
                                created_at_ms: vm.created_at_ms,
                            }
                        })
                        .collect(),
                    ..Inventory::default()
                },
                Err(e) => {
                    tracing::warn!(error = %e, "orphan sweep: cannot list Azure VMs");
                    Inventory {
                        failed: true,
                        ..Inventory::default()
                    }
                }
            }
        })
    }

    fn terminate<'a>(&'a self, instance: &'a ManagedInstance) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let arm = self.provider.arm().await.map_err(|e| e.to_string())?;
            arm.delete_vm(&arm.vm_ref(&instance.id, &instance.region))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn node_instance(&self, job: &Job) -> Option<(String, String)> {
        let last = job_vms(job).pop()?;
        Some((last.region, last.name))
    }
}

//! AWS's side of the orphan sweeper: every AWS region's instances tagged
//! `skylaunch:managed=true` (with their installation, job and node tags), and terminating one.
//! Every region is listed, not only those recorded: a lost record is exactly how orphans happen.

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceStateName};

use super::provider::AwsProvider;
use crate::launch::job::Job;
use crate::launch::orphans::{
    CloudInventory, Inventory, ManagedInstance, INSTALLATION_TAG, JOB_TAG, MANAGED_TAG, NODE_TAG,
};
use crate::launch::providers::BoxFuture;

pub struct AwsInventory {
    pub provider: Arc<AwsProvider>,
}

impl CloudInventory for AwsInventory {
    fn cloud(&self) -> &'static str {
        "aws"
    }

    fn list(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async move {
            let mut inventory = Inventory::default();
            for region in crate::catalog::regions("aws") {
                match self.list_region(region).await {
                    Ok(mut found) => inventory.instances.append(&mut found),
                    Err(e) => {
                        tracing::warn!(region = %region, error = %e, "orphan sweep: cannot list instances");
                        inventory.unlisted.insert(region.to_string());
                    }
                }
            }
            inventory
        })
    }

    fn terminate<'a>(&'a self, instance: &'a ManagedInstance) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let client = self.provider.client(&instance.region).await;
            client
                .terminate_instances()
                .instance_ids(&instance.id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| super::explain::describe(&e))
        })
    }

    fn node_instance(&self, job: &Job) -> Option<(String, String)> {
        let state = &job.provider_state;
        Some((
            state["region"].as_str()?.to_string(),
            state["instance_id"].as_str()?.to_string(),
        ))
    }
}

impl AwsInventory {
    async fn list_region(&self, region: &str) -> Result<Vec<ManagedInstance>, String> {
        let client = self.provider.client(region).await;
        let out = client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{MANAGED_TAG}"))
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| super::explain::describe(&e))?;
        let mut found = Vec::new();
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let Some(id) = instance.instance_id() else {
                continue;
            };
            if matches!(
                instance.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ) {
                continue;
            }
            let tag = |key: &str| {
                instance
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(key))
                    .and_then(|t| t.value())
                    .map(str::to_string)
            };
            found.push(ManagedInstance {
                id: id.to_string(),
                region: region.to_string(),
                installation: tag(INSTALLATION_TAG),
                job_id: tag(JOB_TAG),
                node_id: tag(NODE_TAG),
                created_at_ms: instance.launch_time().and_then(|t| t.to_millis().ok()),
            });
        }
        Ok(found)
    }
}

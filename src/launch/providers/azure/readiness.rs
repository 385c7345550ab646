//! Whether native Azure launches can run: the settings are complete, a credential gets an ARM
//! token, and the subscription, the resource group and every configured subnet can be read
//! with it. Nothing is created.

use super::arm::ArmError;
use super::provider::{arm_failed, AzureProvider};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::providers::readiness::Readiness;
use crate::launch::providers::Provider;

impl AzureProvider {
    pub(super) async fn check_readiness(&self, kind: Provider) -> Readiness {
        let mut r = Readiness::of(kind);
        let missing = self.settings.missing();
        if !missing.is_empty() {
            r.failed(
                "settings",
                LaunchError::new(
                    ErrorCode::ProviderUnavailable,
                    "Native Azure launches are not configured",
                    format!("Set {} for this control plane.", missing.join(", ")),
                )
                .suggest(
                    "See docs/providers/azure.md for each setting and the role the identity needs",
                )
                .suggest("Or launch on Azure through provider \"skypilot\" with cloud \"azure\""),
            );
            return r.done("");
        }
        r.passed(
            "settings",
            "subscription, resource group, subnets and SSH key set",
        );
        let arm = match self.arm().await {
            Ok(arm) => arm,
            Err(e) => {
                r.failed("credential", arm_failed("set up the Azure client", &e));
                return r.done("");
            }
        };
        if let Err(e) = arm.token().await {
            r.failed(
                "credential",
                arm_failed("get a token for Azure Resource Manager", &e),
            );
            return r.done("");
        }
        r.passed("credential", "a token for Azure Resource Manager");
        let subscription = format!("/subscriptions/{}", arm.subscription());
        let group = format!("{subscription}/resourceGroups/{}", arm.resource_group());
        let mut reads = vec![
            ("subscription", subscription.clone(), "2022-12-01"),
            ("resource_group", group, "2021-04-01"),
        ];
        for id in self.settings.subnets.values() {
            reads.push(("subnet", id.clone(), "2023-09-01"));
        }
        for (name, id, api_version) in reads {
            match arm.read(&id, api_version).await {
                Ok(doc)
                    if name == "subscription"
                        && doc["state"].as_str().is_some_and(|s| s != "Enabled") =>
                {
                    r.failed(
                        name,
                        LaunchError::new(
                            ErrorCode::NoCloudAccess,
                            "The Azure subscription is not enabled",
                            format!("Subscription {} is {}: Azure creates nothing in it.", arm.subscription(), doc["state"].as_str().unwrap_or("?")),
                        )
                        .suggest("Re-enable the subscription in the Azure portal (Subscriptions), or set SKYLAUNCH_AZURE_SUBSCRIPTION_ID to an enabled one"),
                    );
                    return r.done("");
                }
                Ok(_) => r.passed(name, id),
                Err(e) => {
                    r.failed(name, not_readable(name, &id, &e));
                    return r.done("");
                }
            }
        }
        r.detail("subscription", arm.subscription());
        r.detail("resource_group", arm.resource_group());
        r.detail(
            "regions",
            self.settings.subnets.keys().cloned().collect::<Vec<_>>(),
        );
        r.done(format!(
            "Azure in {}",
            self.settings
                .subnets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// A resource that could not be read: not found, or not allowed, in words that name it.
fn not_readable(name: &str, id: &str, e: &ArmError) -> LaunchError {
    let what = name.replace('_', " ");
    match e {
        ArmError::Refused { status: Some(404), code, message } => LaunchError::new(
            ErrorCode::InvalidRequest,
            format!("The configured {what} does not exist"),
            format!("Azure answered {code} for {id}: {message}"),
        )
        .suggest(match name {
            "subscription" => "Check SKYLAUNCH_AZURE_SUBSCRIPTION_ID (`az account list -o table`)",
            "resource_group" => "Create the resource group (`az group create`) or fix SKYLAUNCH_AZURE_RESOURCE_GROUP",
            _ => "Fix the subnet id in SKYLAUNCH_AZURE_SUBNETS (`az network vnet subnet list`)",
        }),
        ArmError::Refused { status: Some(403), code, message } => LaunchError::new(
            ErrorCode::CredentialsInvalid,
            format!("The Azure identity may not read the {what}"),
            format!("Azure answered {code} for {id}: {message}"),
        )
        .suggest("Give the identity the role in docs/providers/azure.md on the resource group, and Reader on the subnets' virtual networks"),
        _ => arm_failed(&format!("read the {what}"), e),
    }
}

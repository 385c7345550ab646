//! The Azure Resource Manager calls native Azure launches make, through the Azure SDK for Rust:
//! `azure_mgmt_compute` for Microsoft.Compute (resource SKUs, virtual machines), `azure_identity`
//! for tokens, and `azure_core`'s pipeline (with its retries of throttling and server errors)
//! for polling long-running operations.
//!
//! A VM create is a long-running operation: Azure answers 201 (or 200) with an
//! `Azure-AsyncOperation` URL, polled here until it says `Succeeded`, `Failed` (with the ARM
//! error, e.g. `AllocationFailed`) or `Canceled`; without that header the VM's own
//! `provisioningState` is polled. The SDK's own waiting for a create re-sends the PUT and drops
//! the error, so skylaunch polls itself. A delete is done once Azure accepted it (202/200/204):
//! Azure finishes it on its own, and the orphan sweeper is the backstop if it does not.
//!
//! Lists (SKUs, VMs) are read page by page as plain JSON (see `resources`), following `nextLink`.
//! skylaunch sends the bearer token only to the configured ARM endpoint's host.

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{ExponentialRetryOptions, HttpClient, RetryOptions, TransportOptions, Url};
use azure_identity::{
    DefaultAzureCredentialBuilder, EnvironmentCredential, TokenCredentialOptions,
};
use azure_mgmt_compute::package_2024_07_01::models::VirtualMachine;
use azure_mgmt_compute::package_2024_07_01::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resources::{self, ListedVm, Offering};
use super::settings::AzureSettings;
use crate::launch::orphans::MANAGED_TAG;

const PUBLIC_CLOUD: &str = "https://management.azure.com";

/// Why an ARM call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ArmError {
    /// Azure answered with an error: the ARM `code` and `message` (from the HTTP response, or
    /// from a long-running operation that ended `Failed`).
    Refused {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// No token: Entra ID refused the credentials, or none are configured.
    Credential(String),
    /// No usable answer: network, endpoint, timeout, or a body that is not what Azure sends.
    Unreachable(String),
    /// A long-running operation was still going when our wait ran out.
    StillRunning(String),
}

impl std::fmt::Display for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArmError::Refused {
                status,
                code,
                message,
            } => match status {
                Some(s) => write!(f, "HTTP {s} {code}: {message}"),
                None => write!(f, "{code}: {message}"),
            },
            ArmError::Credential(m) => write!(f, "no Azure token: {m}"),
            ArmError::Unreachable(m) => write!(f, "Azure did not answer usably: {m}"),
            ArmError::StillRunning(m) => write!(f, "{m}"),
        }
    }
}

/// Every message in an error's chain, joined: the SDK wraps the useful part (Entra ID's
/// `AADSTS…` text, the I/O error) a level or two down.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Entra ID's own explanation of a refused token request (`AADSTS7000215: Invalid client
/// secret provided...`). The SDK's error shows it only in its debug form.
fn entra_description(e: &azure_core::Error) -> Option<String> {
    static DESCRIPTION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"error_description: Some\("((?:[^"\\]|\\.)*)"\)"#)
            .expect("static regex")
    });
    let debug = format!("{e:?}");
    DESCRIPTION
        .captures(&debug)
        .map(|c| c[1].replace("\\\"", "\""))
}

impl From<azure_core::Error> for ArmError {
    fn from(e: azure_core::Error) -> ArmError {
        if let Some(http) = e.as_http_error() {
            return ArmError::Refused {
                status: Some(u16::from(http.status())),
                code: http.error_code().unwrap_or("HttpError").to_string(),
                message: http.error_message().unwrap_or_default().to_string(),
            };
        }
        match e.kind() {
            ErrorKind::Credential => {
                let mut why = chain(&e);
                if let Some(description) = entra_description(&e) {
                    why = format!("{why}: {description}");
                }
                ArmError::Credential(why)
            }
            _ => ArmError::Unreachable(chain(&e)),
        }
    }
}

/// Where a VM lives: recorded with each VM a launch creates, so teardown deletes it where it
/// is even if the settings changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRef {
    pub name: String,
    pub region: String,
    pub subscription: String,
    pub resource_group: String,
}

pub struct Arm {
    compute: Client,
    credential: Arc<dyn TokenCredential>,
    pipeline: azure_core::Pipeline,
    endpoint: Url,
    scope: String,
    subscription: String,
    resource_group: String,
    poll_interval: Duration,
}

/// The operation status document `Azure-AsyncOperation` URLs answer.
#[derive(Debug, Deserialize)]
struct OperationStatus {
    status: String,
    #[serde(default)]
    error: Option<OperationError>,
}

#[derive(Debug, Deserialize)]
struct OperationError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<OperationError>,
}

impl Arm {
    /// Builds the clients and picks the credential: the service principal or workload identity
    /// in `AZURE_CLIENT_ID`/`AZURE_TENANT_ID`/`AZURE_CLIENT_SECRET` (or
    /// `AZURE_FEDERATED_TOKEN_FILE`) when set, else managed identity, then the Azure CLI login.
    pub fn new(settings: &AzureSettings) -> Result<Arm, ArmError> {
        let endpoint = Url::parse(settings.endpoint_url.as_deref().unwrap_or(PUBLIC_CLOUD))
            .map_err(|e| ArmError::Unreachable(format!("invalid Azure endpoint URL: {e}")))?;
        // The SDK's default client has no timeouts; a hung connection must not hang a launch.
        let http: Arc<dyn HttpClient> = Arc::new(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| ArmError::Unreachable(e.to_string()))?,
        );
        let mut token_options = TokenCredentialOptions::from(http.clone());
        if let Some(host) = &settings.authority_host {
            token_options.set_authority_host(host.clone());
        }
        let from_env = std::env::var_os("AZURE_CLIENT_ID").is_some()
            && (std::env::var_os("AZURE_CLIENT_SECRET").is_some()
                || std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some());
        let credential: Arc<dyn TokenCredential> = if from_env {
            Arc::new(EnvironmentCredential::create(token_options)?)
        } else {
            Arc::new(
                DefaultAzureCredentialBuilder::new()
                    .with_options(token_options)
                    .exclude_environment_credential()
                    .build()?,
            )
        };
        let retry = RetryOptions::exponential(
            ExponentialRetryOptions::default()
                .max_retries(6u32)
                .max_total_elapsed(Duration::from_secs(90)),
        );
        let transport = TransportOptions::new(http);
        let scope = endpoint
            .join("/.default")
            .map_err(|e| ArmError::Unreachable(e.to_string()))?
            .to_string();
        let compute = Client::builder(credential.clone())
            .endpoint(endpoint.clone())
            .scopes(&[&scope])
            .retry(retry.clone())
            .transport(transport.clone())
            .build()?;
        let pipeline = azure_core::Pipeline::new(
            Some("skylaunch"),
            Some(env!("CARGO_PKG_VERSION")),
            azure_core::ClientOptions::new(transport).retry(retry),
            Vec::new(),
            Vec::new(),
        );
        Ok(Arm {
            compute,
            credential,
            pipeline,
            endpoint,
            scope,
            subscription: settings.subscription_id.clone().unwrap_or_default(),
            resource_group: settings.resource_group.clone().unwrap_or_default(),
            poll_interval: settings.poll_interval,
        })
    }

    /// Where `vm_size` can run in `region`, from the subscription's resource SKUs there.
    pub async fn offering(&self, region: &str, vm_size: &str) -> Result<Offering, ArmError> {
        let mut url = self.url(&format!(
            "/subscriptions/{}/providers/Microsoft.Compute/skus",
            self.subscription
        ))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2021-07-01")
            .append_pair("$filter", &format!("location eq '{region}'"));
        let skus = self.pages(url).await?;
        Ok(resources::offering(&skus, region, vm_size))
    }

    /// The VM a new placement would be: in the configured subscription and resource group.
    pub fn vm_ref(&self, name: &str, region: &str) -> VmRef {
        VmRef {
            name: name.to_string(),
            region: region.to_string(),
            subscription: self.subscription.clone(),
            resource_group: self.resource_group.clone(),
        }
    }

    /// Creates a VM (a PUT by name: sent again, it creates nothing new) and waits at most
    /// `timeout` for it to be provisioned and running.
    pub async fn create_vm(
        &self,
        vm: &VmRef,
        body: VirtualMachine,
        timeout: Duration,
    ) -> Result<(), ArmError> {
        let response = self
            .compute
            .virtual_machines_client()
            .create_or_update(&vm.resource_group, &vm.name, body, &vm.subscription)
            .send()
            .await?
            .into_raw_response();
        let operation = async_operation(response.headers());
        let body = response.into_body().collect().await?;
        if let Some(url) = operation {
            return self.wait_operation(&url, timeout).await;
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| ArmError::Unreachable(format!("unreadable VM document: {e}")))?;
        self.wait_provisioned(vm, doc, timeout).await
    }

    /// Asks Azure to delete a VM; its NIC, public IP and OS disk go with it
    /// (`deleteOption: Delete`). Done once Azure accepted it. A VM that does not exist is already
    /// deleted; a missing resource group or subscription is an error, not a deletion.
    pub async fn delete_vm(&self, vm: &VmRef) -> Result<(), ArmError> {
        let sent = self
            .compute
            .virtual_machines_client()
            .delete(&vm.resource_group, &vm.name, &vm.subscription)
            .send()
            .await;
        match sent.map_err(ArmError::from) {
            Ok(_) => Ok(()),
            Err(ArmError::Refused {
                status: Some(404),
                code,
                ..
            }) if code == "ResourceNotFound" || code == "NotFound" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the VM exists and is being created or made (its provisioning state is neither
    /// Failed nor Deleting).
    pub async fn vm_alive(&self, vm: &VmRef) -> Result<bool, ArmError> {
        match self.get_json(&self.vm_url(vm)?).await {
            Ok((doc, _)) => Ok(matches!(
                doc["properties"]["provisioningState"].as_str(),
                Some(state) if state != "Failed" && state != "Deleting"
            )),
            Err(ArmError::Refused {
                status: Some(404), ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn vm_url(&self, vm: &VmRef) -> Result<Url, ArmError> {
        let mut url = self.url(&format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            vm.subscription, vm.resource_group, vm.name
        ))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2024-07-01");
        Ok(url)
    }

    /// Every VM in the resource group tagged `skylaunch:managed=true`.
    pub async fn managed_vms(&self) -> Result<Vec<ListedVm>, ArmError> {
        let mut url = self.url(&format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines",
            self.subscription, self.resource_group
        ))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2024-07-01");
        Ok(self
            .pages(url)
            .await?
            .iter()
            .filter_map(resources::listed_vm)
            .filter(|vm| vm.tags.get(MANAGED_TAG).and_then(|v| v.as_str()) == Some("true"))
            .collect())
    }

    /// The ARM document at `path` (a resource id), read with `api_version`.
    pub async fn read(&self, path: &str, api_version: &str) -> Result<Value, ArmError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(self.get_json(&url).await?.0)
    }

    /// A token for ARM, as every call gets one.
    pub async fn token(&self) -> Result<(), ArmError> {
        self.credential.get_token(&[&self.scope]).await?;
        Ok(())
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    fn url(&self, path: &str) -> Result<Url, ArmError> {
        let mut url = self.endpoint.clone();
        url.set_path(path);
        Ok(url)
    }

    /// A GET with the bearer token, only ever to the configured endpoint's host.
    async fn get_json(&self, url: &Url) -> Result<(Value, Option<Duration>), ArmError> {
        let same_host = url.scheme() == self.endpoint.scheme()
            && url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default();
        if !same_host {
            return Err(ArmError::Unreachable(format!(
                "Azure named a URL on another host ({}); not sending the token there",
                url.host_str().unwrap_or("?")
            )));
        }
        let token = self.credential.get_token(&[&self.scope]).await?;
        let mut request = azure_core::Request::new(url.clone(), azure_core::Method::Get);
        request.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        let response = self
            .pipeline
            .send(&azure_core::Context::new(), &mut request)
            .await?;
        let headers = response.headers();
        let asked = [
            &azure_core::headers::RETRY_AFTER,
            &azure_core::headers::RETRY_AFTER_MS,
            &azure_core::headers::X_MS_RETRY_AFTER_MS,
        ]
        .iter()
        .any(|h| headers.get_optional_str(h).is_some());
        let retry_after = asked.then(|| azure_core::lro::get_retry_after(headers));
        let body = response.into_body().collect().await?;
        let doc = serde_json::from_slice(&body)
            .map_err(|e| ArmError::Unreachable(format!("unreadable answer from {url}: {e}")))?;
        Ok((doc, retry_after))
    }

    /// Every item of a list, following `nextLink`.
    async fn pages(&self, first: Url) -> Result<Vec<Value>, ArmError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let (page, _) = self.get_json(&url).await?;
            if let Some(values) = page["value"].as_array() {
                items.extend(values.iter().cloned());
            }
            next = page["nextLink"].as_str().and_then(|u| Url::parse(u).ok());
        }
        Ok(items)
    }

    /// How long to wait before the next poll: our own pace, or longer if Azure asks (capped at
    /// a minute, or at our pace if that is longer still).
    fn pause(&self, retry_after: Option<Duration>) -> Duration {
        let ceiling = Duration::from_secs(60).max(self.poll_interval);
        retry_after
            .unwrap_or_default()
            .max(self.poll_interval)
            .min(ceiling)
    }

    /// Polls an `Azure-AsyncOperation` URL until the operation ends.
    async fn wait_operation(&self, url: &Url, timeout: Duration) -> Result<(), ArmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (doc, retry_after) = self.get_json(url).await?;
            let status: OperationStatus = serde_json::from_value(doc)
                .map_err(|e| ArmError::Unreachable(format!("unreadable operation status: {e}")))?;
            match status.status.as_str() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" | "Cancelled" => {
                    let error = status.error.unwrap_or(OperationError {
                        code: status.status.clone(),
                        message: String::new(),
                        details: Vec::new(),
                    });
                    // Generic outer codes carry the real one in their details.
                    let error = match error.details.into_iter().next() {
                        Some(inner)
                            if matches!(
                                error.code.as_str(),
                                "Conflict" | "DeploymentFailed" | ""
                            ) =>
                        {
                            inner
                        }
                        _ => OperationError {
                            details: Vec::new(),
                            ..error
                        },
                    };
                    return Err(ArmError::Refused {
                        status: None,
                        code: error.code,
                        message: error.message,
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(still_running(&status.status, timeout));
            }
            tokio::time::sleep(self.pause(retry_after)).await;
        }
    }

    /// Polls the VM's own `provisioningState` (with its instance view, which names a failure)
    /// until it is final; `doc` is the VM as the create answered.
    async fn wait_provisioned(
        &self,
        vm: &VmRef,
        mut doc: Value,
        timeout: Duration,
    ) -> Result<(), ArmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut url = self.vm_url(vm)?;
        url.query_pairs_mut().append_pair("$expand", "instanceView");
        loop {
            match resources::provisioning(&doc) {
                Ok(true) => return Ok(()),
                Err((code, message)) => {
                    return Err(ArmError::Refused {
                        status: None,
                        code,
                        message,
                    })
                }
                Ok(false) if tokio::time::Instant::now() >= deadline => {
                    let state = doc["properties"]["provisioningState"]
                        .as_str()
                        .unwrap_or("unknown");
                    return Err(still_running(state, timeout));
                }
                Ok(false) => {}
            }
            tokio::time::sleep(self.poll_interval).await;
            doc = self.get_json(&url).await?.0;
        }
    }
}

fn still_running(state: &str, timeout: Duration) -> ArmError {
    ArmError::StillRunning(format!(
        "the VM was still {state} after {}",
        crate::clock::fmt_duration(timeout)
    ))
}

fn async_operation(headers: &azure_core::headers::Headers) -> Option<Url> {
    headers
        .get_optional_str(&azure_core::headers::AZURE_ASYNCOPERATION)
        .and_then(|u| Url::parse(u).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(poll: Duration) -> Arm {
        let settings = AzureSettings {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            poll_interval: poll,
            ..AzureSettings::default()
        };
        std::env::set_var("AZURE_CLIENT_ID", "test-client");
        std::env::set_var("AZURE_CLIENT_SECRET", "test-secret");
        std::env::set_var("AZURE_TENANT_ID", "test-tenant");
        Arm::new(&settings).expect("client builds without any network")
    }

    #[test]
    fn polling_keeps_our_pace_unless_azure_asks_for_longer() {
        let a = arm(Duration::from_secs(2));
        assert_eq!(a.pause(None), Duration::from_secs(2));
        assert_eq!(a.pause(Some(Duration::ZERO)), Duration::from_secs(2));
        assert_eq!(
            a.pause(Some(Duration::from_secs(15))),
            Duration::from_secs(15)
        );
        assert_eq!(
            a.pause(Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        // A pace slower than Azure's cap is kept, never a panic.
        let slow = arm(Duration::from_secs(90));
        assert_eq!(
            slow.pause(Some(Duration::from_secs(10))),
            Duration::from_secs(90)
        );
    }
}

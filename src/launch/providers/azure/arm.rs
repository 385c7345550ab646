//! The Azure Resource Manager calls native Azure launches make, through the Azure SDK for Rust:
//! `azure_mgmt_compute` for Microsoft.Compute (resource SKUs, virtual machines), `azure_identity`
//! for tokens, and `azure_core`'s pipeline (with its retries of throttling and server errors)
//! for polling long-running operations.
//!
//! A VM create or delete is a long-running operation: Azure answers 201/202 with an
//! `Azure-AsyncOperation` URL, polled here until it says `Succeeded`, `Failed` (with the ARM
//! error, e.g. `AllocationFailed`) or `Canceled`. The SDK's own waiting for a create re-sends the
//! PUT and drops the error, so skylaunch polls the operation itself. The bearer token is only
//! ever sent to the configured ARM endpoint's host.

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
use futures_util::StreamExt;
use serde::Deserialize;

use super::settings::AzureSettings;

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

/// Where a VM size can run in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offering {
    /// Not sold here, or not to this subscription (`reason`).
    NotOffered(String),
    /// Offered in these availability zones (empty: only without a zone).
    Zones(Vec<String>),
}

/// One VM carrying skylaunch's tags, as the resource group lists it.
#[derive(Debug, Clone)]
pub struct ListedVm {
    pub name: String,
    pub region: String,
    pub tags: serde_json::Map<String, serde_json::Value>,
    pub provisioning_state: Option<String>,
    pub created_at_ms: Option<i64>,
}

pub struct Arm {
    compute: Client,
    credential: Arc<dyn TokenCredential>,
    pipeline: azure_core::Pipeline,
    endpoint: Url,
    scope: String,
    pub subscription: String,
    pub resource_group: String,
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

    /// Where `vm_size` can run in `region`, from the subscription's resource SKUs (restrictions
    /// included: a size the subscription may not use there is not offered).
    pub async fn offering(&self, region: &str, vm_size: &str) -> Result<Offering, ArmError> {
        let mut pages = self
            .compute
            .resource_skus_client()
            .list(&self.subscription)
            .filter(format!("location eq '{region}'"))
            .into_stream();
        while let Some(page) = pages.next().await {
            for sku in page?.value {
                let is_it = sku.resource_type.as_deref() == Some("virtualMachines")
                    && sku
                        .name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(vm_size));
                if !is_it {
                    continue;
                }
                let mut zones: Vec<String> = sku
                    .location_info
                    .iter()
                    .filter(|l| {
                        l.location
                            .as_deref()
                            .is_some_and(|l| l.eq_ignore_ascii_case(region))
                    })
                    .flat_map(|l| l.zones.iter().cloned())
                    .collect();
                for restriction in &sku.restrictions {
                    let kind = restriction
                        .type_
                        .as_ref()
                        .map(|t| format!("{t:?}"))
                        .unwrap_or_default();
                    let reason = restriction
                        .reason_code
                        .as_ref()
                        .map(|r| format!("{r:?}"))
                        .unwrap_or_else(|| "restricted".into());
                    if kind == "Location" {
                        return Ok(Offering::NotOffered(format!(
                            "{vm_size} is restricted in {region} for this subscription ({reason})"
                        )));
                    }
                    if let Some(info) = &restriction.restriction_info {
                        zones.retain(|z| !info.zones.contains(z));
                    }
                }
                zones.sort();
                zones.dedup();
                return Ok(Offering::Zones(zones));
            }
        }
        Ok(Offering::NotOffered(format!(
            "{vm_size} is not offered in {region}"
        )))
    }

    /// Creates (or, with the same name and body, re-asserts) a VM and waits for the operation
    /// to end, at most `timeout`.
    pub async fn create_vm(
        &self,
        name: &str,
        body: VirtualMachine,
        timeout: Duration,
    ) -> Result<(), ArmError> {
        let response = self
            .compute
            .virtual_machines_client()
            .create_or_update(&self.resource_group, name, body, &self.subscription)
            .send()
            .await?
            .into_raw_response();
        match async_operation(response.headers()) {
            Some(url) => self.wait(&url, timeout).await,
            // Already done (200 with a final state); nothing to poll.
            None => Ok(()),
        }
    }

    /// Deletes a VM (its NIC, public IP and OS disk go with it: `deleteOption: Delete`) and,
    /// with `wait`, waits at most that long for the deletion to finish. A VM that does not exist
    /// is already deleted.
    pub async fn delete_vm(&self, name: &str, wait: Option<Duration>) -> Result<(), ArmError> {
        let response = match self
            .compute
            .virtual_machines_client()
            .delete(&self.resource_group, name, &self.subscription)
            .send()
            .await
        {
            Ok(r) => r.into_raw_response(),
            Err(e) => {
                return match ArmError::from(e) {
                    ArmError::Refused {
                        status: Some(404), ..
                    } => Ok(()),
                    other => Err(other),
                }
            }
        };
        match (async_operation(response.headers()), wait) {
            (Some(url), Some(timeout)) => self.wait(&url, timeout).await,
            _ => Ok(()),
        }
    }

    /// Every VM in the resource group tagged `skylaunch:managed=true`.
    pub async fn managed_vms(&self) -> Result<Vec<ListedVm>, ArmError> {
        let mut pages = self
            .compute
            .virtual_machines_client()
            .list(&self.resource_group, &self.subscription)
            .into_stream();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            for vm in page?.value {
                let tags = match vm.resource.tags {
                    Some(serde_json::Value::Object(tags)) => tags,
                    _ => continue,
                };
                if tags.get("skylaunch:managed").and_then(|v| v.as_str()) != Some("true") {
                    continue;
                }
                let Some(name) = vm.resource.name.clone() else {
                    continue;
                };
                let properties = vm.properties.as_ref();
                found.push(ListedVm {
                    name,
                    region: vm.resource.location.to_ascii_lowercase(),
                    tags,
                    provisioning_state: properties.and_then(|p| p.provisioning_state.clone()),
                    created_at_ms: properties
                        .and_then(|p| p.time_created)
                        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
                });
            }
        }
        Ok(found)
    }

    /// Polls an `Azure-AsyncOperation` URL until the operation ends.
    async fn wait(&self, url: &Url, timeout: Duration) -> Result<(), ArmError> {
        let same_host = url.scheme() == self.endpoint.scheme()
            && url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default();
        if !same_host {
            // Never hand the token to a host other than the configured endpoint.
            return Err(ArmError::Unreachable(format!(
                "Azure named an operation URL on another host ({}); not following it",
                url.host_str().unwrap_or("?")
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
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
            let retry_after = azure_core::lro::get_retry_after(response.headers());
            let has_retry_after = response
                .headers()
                .get_optional_str(&azure_core::headers::RETRY_AFTER)
                .is_some();
            let body = response.into_body().collect().await?;
            let status: OperationStatus = serde_json::from_slice(&body)
                .map_err(|e| ArmError::Unreachable(format!("unreadable operation status: {e}")))?;
            match status.status.as_str() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
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
                return Err(ArmError::Unreachable(format!(
                    "the operation was still {} after {}",
                    status.status,
                    crate::fleet::status::fmt_duration(timeout)
                )));
            }
            // Azure's Retry-After may ask for longer than our own pace, never for less.
            let pause = if has_retry_after {
                retry_after.clamp(self.poll_interval, Duration::from_secs(60))
            } else {
                self.poll_interval
            };
            tokio::time::sleep(pause).await;
        }
    }
}

fn async_operation(headers: &azure_core::headers::Headers) -> Option<Url> {
    headers
        .get_optional_str(&azure_core::headers::AZURE_ASYNCOPERATION)
        .and_then(|u| Url::parse(u).ok())
}

//! `provider: "aws"`: launches the node's VM with aws-sdk-ec2 directly (no SkyPilot).
//!
//! Placements are tried in order: with spot, every requested region's zones (those that offer
//! the instance type) as spot, then, when `spot_fallback` allows, the same as on-demand. Each
//! try is an attempt. `RunInstances` carries a `ClientToken` derived from the job and attempt,
//! so a retried call can never start a second VM. The VM and its volumes are tagged
//! `skylaunch:managed=true`, `skylaunch:installation`, `skylaunch:job-id` and
//! `skylaunch:node-id`; its user data exports the launch's values and runs the template. The node
//! token travels only in the user data, never in tags or logs, and the instance metadata service
//! answers only IMDSv2 (session-token) requests from the VM itself (hop limit 1), so a server on
//! the VM tricked into fetching a URL cannot read the instance role's credentials.
//! A launch taken over from a stopped process whose recorded instance is pending or running
//! waits for that instance's agent instead of starting another.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::RequestId;
use aws_sdk_ec2::types::{
    HttpTokensState, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    MarketType, Placement, ResourceType, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;
use backon::{ExponentialBuilder, Retryable};
use serde_json::json;

use super::catalog;
use super::explain::{classify, Ec2Failure};
use super::region::{lookup_ami, zones_offering};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::job::Job;
use crate::launch::orphans::ownership_tags;
use crate::launch::providers::placement::{self, market_name};
use crate::launch::providers::{bootstrap, BoxFuture, LaunchProvider, RenderedTask};
use crate::launch::run::JobRun;
use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};
use crate::launch::template::{NodeIdentity, Template};

#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Talk to this EC2 endpoint instead of AWS (tests point it at moto on 127.0.0.1).
    pub endpoint_url: Option<String>,
    /// AMIs chosen by the operator; other regions look up AWS's GPU image.
    pub ami: catalog::AmiChoice,
    /// How long a VM may take to reach `running`.
    pub running_timeout: Duration,
    /// Who may reach the model port: a CIDR (default: the control plane's public IP as /32).
    pub model_port_cidr: Option<String>,
}

pub struct AwsProvider {
    pub settings: AwsSettings,
    /// Tagged on everything this provider creates, so only this installation's orphan sweeper
    /// judges it.
    pub installation_id: String,
}

pub(super) const DEFAULT_REGION: &str = "us-east-1";

impl LaunchProvider for AwsProvider {
    /// The first-boot script, handed to the VM as its user data.
    fn render(&self, job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
        bootstrap::rendered(job, template, node)
    }

    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.launch_ec2(run))
    }

    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.terminate(job))
    }

    fn still_launching<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, LaunchError>> {
        Box::pin(self.instance_alive(job))
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

enum Outcome {
    Started,
    NextPlacement(String),
    SkipSpot(String),
}

/// The AWS SDK's settings as the control plane uses them: the standard credential and region
/// chains, HTTPS on rustls with ring, and `endpoint_url` instead of AWS's when set.
pub fn sdk_loader(endpoint_url: Option<&str>) -> aws_config::ConfigLoader {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https);
    match endpoint_url {
        Some(url) => loader.endpoint_url(url),
        None => loader,
    }
}

impl AwsProvider {
    pub async fn client(&self, region: &str) -> Client {
        let loader = sdk_loader(self.settings.endpoint_url.as_deref())
            .region(aws_config::Region::new(region.to_string()));
        Client::new(&loader.load().await)
    }

    async fn launch_ec2(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let spec = &job.spec;
        let (instance_type, template) = super::REQUESTS.machine_and_template(spec)?;
        let regions = if spec.regions.is_empty() {
            vec![DEFAULT_REGION.to_string()]
        } else {
            spec.regions.clone()
        };
        let markets = placement::markets(spec);
        let user_data = run.rendered_task();
        let mut reasons = Vec::new();
        // Numbered on from earlier attempts (a launch started over after a takeover keeps them),
        // so no ClientToken is ever reused: EC2 would answer with the earlier attempt's instance.
        let mut attempt_no = job.attempts.len() as u32;
        'markets: for market in &markets {
            for region in &regions {
                let client = self.client(region).await;
                let zones = match zones_offering(&client, instance_type).await {
                    Ok(z) => z,
                    Err(e) => return Err(e),
                };
                if zones.is_empty() {
                    reasons.push(format!("{instance_type} is not offered in {region}"));
                    continue;
                }
                let security_group = self
                    .model_port_group(run, &client, region, template.port)
                    .await?;
                let ami = match self.settings.ami.for_region(region) {
                    Some(ami) => ami.to_string(),
                    None => lookup_ami(&client, region).await?,
                };
                for zone in zones {
                    attempt_no += 1;
                    run.stage(
                        Stage::Provision,
                        Some(format!("trying AWS {zone}, {}", market_name(*market))),
                    )
                    .await;
                    run.attempt_started(Attempt {
                        cloud: "aws".into(),
                        region: Some(region.clone()),
                        zone: Some(zone.clone()),
                        instance_type: Some(instance_type.to_string()),
                        market: *market,
                        price_per_hour: None,
                        outcome: AttemptOutcome::Trying,
                        reason: None,
                    })
                    .await;
                    let token = format!("{}-{attempt_no}", job.id);
                    let target = Target {
                        region,
                        zone: &zone,
                        ami: &ami,
                        instance_type,
                        market: *market,
                        security_group: security_group.as_deref(),
                    };
                    match self
                        .run_instance(run, &client, &job, &target, &token, user_data)
                        .await
                    {
                        Ok(Outcome::Started) => return Ok(()),
                        Ok(Outcome::NextPlacement(reason)) => {
                            run.attempt_finished(AttemptOutcome::Failed, Some(reason.clone()))
                                .await;
                            reasons.push(reason);
                        }
                        Ok(Outcome::SkipSpot(reason)) => {
                            run.attempt_finished(AttemptOutcome::Failed, Some(reason.clone()))
                                .await;
                            reasons.push(reason);
                            continue 'markets;
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
        Err(placement::exhausted(
            "AWS",
            instance_type,
            spec,
            &regions,
            &reasons,
            "us-west-2 or us-east-2",
        ))
    }

    async fn run_instance(
        &self,
        run: &JobRun,
        client: &Client,
        job: &Job,
        target: &Target<'_>,
        client_token: &str,
        user_data: &str,
    ) -> Result<Outcome, LaunchError> {
        let Target {
            region,
            zone,
            ami,
            instance_type,
            market,
            security_group,
        } = *target;
        let tags: Vec<Tag> = ownership_tags(&self.installation_id, job)
            .into_iter()
            .chain([("Name", job.name.clone())])
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect();
        // The volumes carry the same tags, so whose they are shows on the bill too.
        let tag_specifications = [ResourceType::Instance, ResourceType::Volume].map(|kind| {
            TagSpecification::builder()
                .resource_type(kind)
                .set_tags(Some(tags.clone()))
                .build()
        });
        let mut req = client
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .placement(Placement::builder().availability_zone(zone).build())
            .client_token(client_token)
            .user_data(aws_smithy_types::base64::encode(user_data))
            .set_tag_specifications(Some(tag_specifications.to_vec()))
            .metadata_options(imdsv2_only())
            .set_security_group_ids(security_group.map(|g| vec![g.to_string()]));
        if market == Market::Spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        // Throttling, EC2's own errors and no answer at all are retried with backoff; the
        // ClientToken makes every retry the same request, so it can never start a second VM.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(400))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(5)
            .with_jitter();
        let sent = (|| req.clone().send())
            .retry(backoff)
            .when(|e| {
                let code = e.code().unwrap_or("");
                code.is_empty()
                    || matches!(
                        classify(code, "", None, instance_type, region, false),
                        Ec2Failure::Retry
                    )
            })
            .notify(|e, after| {
                tracing::warn!(region, error = %super::explain::describe(e), retry_in = ?after, "RunInstances failed; retrying")
            })
            .await;
        let e = match sent {
            Ok(out) => {
                let id = out
                    .instances()
                    .first()
                    .and_then(|i| i.instance_id())
                    .ok_or_else(|| {
                        LaunchError::new(
                            ErrorCode::Internal,
                            "EC2 started no instance",
                            "RunInstances answered without an instance",
                        )
                    })?
                    .to_string();
                // Recorded at once, so teardown finds it whatever happens next.
                run.set_provider_state(json!({"region": region, "instance_id": id}))
                    .await;
                run.log
                    .line(
                        "skylaunch",
                        &format!(
                            "started EC2 instance {id} ({instance_type}, {zone}, {})",
                            market_name(market)
                        ),
                    )
                    .await;
                run.attempt_finished(AttemptOutcome::Succeeded, None).await;
                run.stage(
                    Stage::InstanceUp,
                    Some(format!("{id} in {zone}: waiting for it to run")),
                )
                .await;
                self.wait_running(client, &id).await?;
                run.stage(
                    Stage::Setup,
                    Some(format!(
                        "{id} is running; user data installs the model server and agent"
                    )),
                )
                .await;
                return Ok(Outcome::Started);
            }
            Err(e) => e,
        };
        let code = e.code().unwrap_or("").to_string();
        let message = e.message().unwrap_or("").to_string();
        if code.is_empty() {
            // No answer from EC2 at all (network, endpoint, timeout), even after retries.
            return Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "Cannot reach EC2",
                format!(
                    "RunInstances in {region} got no answer: {}",
                    super::explain::describe(&e)
                ),
            )
            .suggest("Check the control plane's network access to the EC2 endpoint"));
        }
        match classify(
            &code,
            &message,
            e.request_id(),
            instance_type,
            region,
            market == Market::Spot,
        ) {
            Ec2Failure::NextPlacement { .. } => {
                Ok(Outcome::NextPlacement(format!("{code}: {message}")))
            }
            Ec2Failure::SpotRefused => Ok(Outcome::SkipSpot(format!("{code}: {message}"))),
            Ec2Failure::Retry => Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "EC2 kept refusing the call",
                format!("{code}: {message} (after retries)"),
            )
            .suggest("EC2 is throttling or failing; try again in a few minutes")),
            Ec2Failure::Fatal(error) => Err(error),
        }
    }

    async fn wait_running(&self, client: &Client, id: &str) -> Result<(), LaunchError> {
        let deadline = tokio::time::Instant::now() + self.settings.running_timeout;
        loop {
            let out = client.describe_instances().instance_ids(id).send().await;
            let state = out.ok().and_then(|o| {
                o.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find_map(|i| i.state().and_then(|s| s.name()).cloned())
            });
            match state {
                Some(InstanceStateName::Running) => return Ok(()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown) => {
                    return Err(LaunchError::new(
                        ErrorCode::SpotCapacityUnavailable,
                        "The instance was terminated while starting",
                        format!("EC2 terminated {id} before it ran (spot capacity reclaimed or a start failure)"),
                    ))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(LaunchError::new(ErrorCode::LaunchTimeout, "The instance never started", format!("{id} did not reach running in time")))
                }
                _ => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    /// Whether the job's recorded instance is pending or running (after a takeover: its agent,
    /// which holds the launch's token, will register).
    async fn instance_alive(&self, job: &Job) -> Result<bool, LaunchError> {
        let (Some(region), Some(id)) = (
            job.provider_state["region"].as_str(),
            job.provider_state["instance_id"].as_str(),
        ) else {
            return Ok(false);
        };
        let client = self.client(region).await;
        match client.describe_instances().instance_ids(id).send().await {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .any(|i| {
                    matches!(
                        i.state().and_then(|s| s.name()),
                        Some(InstanceStateName::Pending | InstanceStateName::Running)
                    )
                })),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(false),
            Err(e) => Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "Could not look up the instance",
                format!(
                    "DescribeInstances {id} in {region} failed: {}",
                    super::explain::describe(&e)
                ),
            )),
        }
    }

    async fn terminate(&self, job: &Job) -> Result<(), LaunchError> {
        let (Some(region), Some(id)) = (
            job.provider_state["region"].as_str(),
            job.provider_state["instance_id"].as_str(),
        ) else {
            return Ok(());
        };
        let client = self.client(region).await;
        match client.terminate_instances().instance_ids(id).send().await {
            Ok(_) => {
                tracing::info!(job_id = %job.id, instance_id = id, "terminated EC2 instance");
                Ok(())
            }
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(e) => Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "Could not terminate the instance",
                format!("TerminateInstances {id} in {region} failed: {}; terminate it in the EC2 console", super::explain::describe(&e)),
            )),
        }
    }
}

/// Where one RunInstances call goes.
#[derive(Clone, Copy)]
struct Target<'a> {
    region: &'a str,
    zone: &'a str,
    ami: &'a str,
    instance_type: &'a str,
    market: Market,
    security_group: Option<&'a str>,
}

/// The instance metadata service answers only session-token (IMDSv2) requests, and only from
/// the VM itself: a token's response cannot cross a second network hop (a container, a proxy).
/// The agent reads metadata with IMDSv2.
fn imdsv2_only() -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(1)
        .build()
}

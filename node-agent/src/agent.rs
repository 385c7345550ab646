//! The agent's life: find out what this VM is, register (retrying while the control plane is
//! unreachable), then heartbeat every interval with fresh measurements, at once when a spot
//! notice arrives, and one last time when asked to stop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use skylaunch_protocol::{AgentAck, Desired, HeartbeatReport, Registration, SpotNotice};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{CallError, ControlPlane};
use crate::config::{Config, NodeToken};
use crate::discover::{self, Identity};
use crate::{gpu, probe, score};

/// This agent's version, sent with its registration and every heartbeat.
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the last heartbeat may take on SIGTERM; well inside the unit's `TimeoutStopSec`.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the agent stopped.
#[derive(Debug)]
pub enum Stop {
    /// SIGTERM/SIGINT: a clean exit.
    Signalled,
    /// A heartbeat answer said `desired: stop`.
    Told,
    /// The control plane refused the token, or the node is gone, or the request was refused.
    Fatal(CallError),
}

pub struct Agent {
    config: Config,
    control_plane: ControlPlane,
    /// For the local model server and the metadata service: never through a proxy.
    local: reqwest::Client,
}

/// The client for the model server's probes: with its API key, when it has one, on every
/// request (vLLM wants it on `/v1`, and ignores it elsewhere).
fn model_server_client(key: Option<&NodeToken>) -> Result<reqwest::Client, reqwest::Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        if let Ok(mut value) =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
}

impl Agent {
    pub fn new(config: Config) -> Result<Agent, reqwest::Error> {
        Ok(Agent {
            control_plane: ControlPlane::new(
                &config.control_plane_url,
                &config.node_id,
                config.node_token.expose(),
            )?,
            local: model_server_client(config.model_server_key.as_ref())?,
            config,
        })
    }

    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Stop {
        let identity = discover::identity(
            &self.local,
            &self.config.provider,
            self.imds(),
            self.config.probe_timeout,
        )
        .await;
        tracing::info!(
            node_id = %self.config.node_id,
            provider = %identity.provider,
            region = ?identity.region,
            zone = ?identity.zone,
            instance_type = ?identity.instance_type,
            spot = ?identity.spot,
            "identified this machine"
        );
        let (mut ack, mut model_name) =
            match self.register_unless_stopped(&identity, &mut stop).await {
                Ok(registered) => registered,
                Err(stopped) => return stopped,
            };
        let mut notice = crate::spot::watch_for_notice(
            self.local.clone(),
            identity.provider.clone(),
            self.imds().to_string(),
            self.config.spot_poll_interval,
            self.config.probe_timeout,
        );
        let mut watching_spot = true;
        let mut next = Instant::now();
        let mut desired = ack.desired;
        loop {
            tokio::select! {
                // A stop request wins over a due heartbeat, so SIGTERM is never held up by one
                // more round of probes.
                biased;
                Ok(_) = stop.wait_for(|stopping| *stopping) => {
                    self.say_goodbye(notice.borrow().clone()).await;
                    return Stop::Signalled;
                }
                changed = notice.changed(), if watching_spot => {
                    // The watcher stops after its first notice (or at once off-cloud).
                    watching_spot = false;
                    if changed.is_err() && notice.borrow().is_none() {
                        continue;
                    }
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let spot = notice.borrow().clone();
            let report = self.measure(&model_name, spot).await;
            match self.control_plane.heartbeat(&report).await {
                Ok(new_ack) => {
                    if new_ack.desired != desired {
                        tracing::info!(node_id = %self.config.node_id, desired = %new_ack.desired, "control plane changed what it wants from this node");
                        desired = new_ack.desired;
                    }
                    if new_ack.desired == Desired::Stop {
                        return Stop::Told;
                    }
                    ack = new_ack;
                }
                Err(CallError::NotRegistered) => {
                    tracing::warn!(
                        node_id = %self.config.node_id,
                        "control plane says this node is not registered; registering again"
                    );
                    (ack, model_name) =
                        match self.register_unless_stopped(&identity, &mut stop).await {
                            Ok(registered) => registered,
                            Err(stopped) => return stopped,
                        };
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(node_id = %self.config.node_id, error = %e, "heartbeat failed; will try again at the next interval");
                }
                Err(e) => return Stop::Fatal(e),
            }
            next = Instant::now() + ack.interval();
        }
    }

    /// Registers, retrying as long as it takes, unless a stop request comes first. Nothing was
    /// routed here yet, so stopping during registration needs no going-away heartbeat.
    async fn register_unless_stopped(
        &self,
        identity: &Identity,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(AgentAck, String), Stop> {
        tokio::select! {
            biased;
            Ok(_) = stop.wait_for(|stopping| *stopping) => Err(Stop::Signalled),
            registered = self.register_with_retries(identity) => registered.map_err(Stop::Fatal),
        }
    }

    fn imds(&self) -> &str {
        self.config.imds_url.trim_end_matches('/')
    }

    async fn register_with_retries(
        &self,
        identity: &Identity,
    ) -> Result<(AgentAck, String), CallError> {
        let attempt = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.config.register_max_backoff)
            .with_jitter()
            .without_max_times();
        (|| async {
            attempt.fetch_add(1, Ordering::Relaxed);
            let body = self.registration(identity).await?;
            let ack = self.control_plane.register(&body).await?;
            Ok((ack, body.model_name))
        })
        .retry(backoff)
        .when(CallError::is_transient)
        .notify(|e: &CallError, wait: Duration| {
            tracing::warn!(node_id = %self.config.node_id, attempt = attempt.load(Ordering::Relaxed), error = %e, retry_in_ms = wait.as_millis() as u64, "registration failed; retrying");
        })
        .await
        .inspect(|(ack, model)| {
            tracing::info!(node_id = %self.config.node_id, model = %model, heartbeat_interval_s = ack.heartbeat_interval_s, "registered with the control plane");
        })
    }

    /// The registration body: configured values first, then what this machine reports.
    async fn registration(&self, identity: &Identity) -> Result<Registration, CallError> {
        let c = &self.config;
        let model_name = match &c.model_name {
            Some(m) => m.clone(),
            None => {
                let models =
                    probe::served_models(&self.local, &c.model_server_url, c.probe_timeout).await;
                models.into_iter().next().ok_or_else(|| {
                    CallError::Transient(format!(
                        "waiting for the model server at {} to list its model (set SKYLAUNCH_MODEL_NAME to skip)",
                        c.model_server_url
                    ))
                })?
            }
        };
        let gpu = gpu::query(&c.nvidia_smi, c.probe_timeout).await;
        let endpoint_url = c.endpoint_url.clone().unwrap_or_else(|| {
            let ip = identity.private_ip.as_deref().unwrap_or("127.0.0.1");
            format!("http://{ip}:{}", discover::url_port(&c.model_server_url))
        });
        Ok(Registration {
            provider: identity.provider.clone(),
            region: c
                .region
                .clone()
                .or_else(|| identity.region.clone())
                .unwrap_or_else(|| "local".into()),
            zone: c.zone.clone().or_else(|| identity.zone.clone()),
            model_name,
            endpoint_url,
            gpu_type: c
                .gpu_type
                .clone()
                .or_else(|| gpu.short_type())
                .unwrap_or_else(|| "none".into()),
            instance_type: c
                .instance_type
                .clone()
                .or_else(|| identity.instance_type.clone())
                .unwrap_or_else(|| "unknown".into()),
            spot_instance: c.spot_instance.or(identity.spot).unwrap_or(false),
            gpu_count: c.gpu_count.or(gpu.count),
            agent_version: Some(AGENT_VERSION.into()),
            labels: Some(Default::default()),
        })
    }

    /// Probes everything at once and builds the heartbeat body.
    async fn measure(&self, model_name: &str, spot: Option<SpotNotice>) -> HeartbeatReport {
        let c = &self.config;
        let (model, queue, gpu) = tokio::join!(
            probe::model_server(
                &self.local,
                &c.model_server_url,
                Some(model_name),
                c.probe_timeout
            ),
            probe::vllm_queue(&self.local, &c.model_server_url, c.probe_timeout),
            gpu::query(&c.nvidia_smi, c.probe_timeout),
        );
        let health_score = score::health_score(&model, &gpu, queue.as_ref());
        HeartbeatReport {
            health_score,
            model_server: Some(model),
            gpu: Some(gpu),
            queue,
            spot_interruption: spot,
            going_away: false,
            agent_version: Some(AGENT_VERSION.into()),
        }
    }

    /// The last heartbeat, telling the control plane to stop routing here now. No probes: the
    /// answer must go out before systemd's stop timeout, and the score no longer matters. A spot
    /// notice already seen is repeated so the control plane keeps the reason.
    async fn say_goodbye(&self, spot: Option<SpotNotice>) {
        let body = HeartbeatReport {
            health_score: 0.0,
            model_server: None,
            gpu: None,
            queue: None,
            spot_interruption: spot,
            going_away: true,
            agent_version: Some(AGENT_VERSION.into()),
        };
        let node_id = &self.config.node_id;
        match tokio::time::timeout(GOODBYE_TIMEOUT, self.control_plane.heartbeat(&body)).await {
            Ok(Ok(_)) => {
                tracing::info!(%node_id, "told the control plane this agent is going away")
            }
            Ok(Err(e)) => {
                tracing::warn!(%node_id, error = %e, "could not send the going-away heartbeat")
            }
            Err(_) => tracing::warn!(
                %node_id,
                timeout_ms = GOODBYE_TIMEOUT.as_millis() as u64,
                "the going-away heartbeat timed out"
            ),
        }
    }
}

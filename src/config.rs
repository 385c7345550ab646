//! Every setting of `skylaunch serve`: flag, environment variable and default in one place.
//! `skylaunch serve --help` prints them; the README's configuration table mirrors this file.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skylaunch_protocol::parse_duration;

use crate::fleet::status::HealthPolicy;
use crate::fleet::FleetSettings;
use crate::launch::providers::aws::catalog::AmiChoice;
use crate::launch::providers::azure::{self, settings::AzureImage, AzureSettings};

#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address and port to listen on.
    #[arg(long, env = "SKYLAUNCH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and the generated admin token.
    #[arg(long, env = "SKYLAUNCH_DATA_DIR", default_value = "./skylaunch-data")]
    pub data_dir: PathBuf,

    /// sqlite://PATH or postgres://USER@HOST/DB (default: SQLite file in the data dir).
    #[arg(long, env = "SKYLAUNCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Admin token (default: generated on first start and kept in <data-dir>/admin-token).
    #[arg(long, env = "SKYLAUNCH_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<Secret>,

    /// Address agents on VMs use to reach this service (default: http://<listen>).
    #[arg(long, env = "SKYLAUNCH_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Path of the `sky` executable used for SkyPilot launches.
    #[arg(long, env = "SKYLAUNCH_SKY_BIN", default_value = "sky")]
    pub sky_bin: String,

    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, env = "SKYLAUNCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// How often agents send heartbeats (told to each agent when it registers).
    #[arg(long, env = "SKYLAUNCH_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Heartbeat intervals missed in a row before a ready node becomes unhealthy.
    #[arg(long, env = "SKYLAUNCH_MISSED_HEARTBEATS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed_heartbeats: u32,

    /// Silence after which a node becomes offline.
    #[arg(long, env = "SKYLAUNCH_OFFLINE_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub offline_after: Duration,

    /// Lowest health score (0..1) at which a node is ready.
    #[arg(long, env = "SKYLAUNCH_MIN_HEALTH_SCORE", default_value_t = 0.5, value_parser = parse_score)]
    pub min_health_score: f64,

    /// How often the sweeper checks for silent nodes.
    #[arg(long, env = "SKYLAUNCH_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// With several processes on one PostgreSQL database: how often each re-reads every node (the safety net behind change notifications; also brings in the other processes' heartbeat telemetry).
    #[arg(long, env = "SKYLAUNCH_FLEET_REFRESH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub fleet_refresh_interval: Duration,

    /// How often heartbeat telemetry is written to the database (a crash loses at most this much).
    #[arg(long, env = "SKYLAUNCH_TELEMETRY_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub telemetry_flush_interval: Duration,

    /// How long a launched node's agent may take to register before the launch fails and its VM is torn down.
    #[arg(long, env = "SKYLAUNCH_REGISTRATION_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub registration_timeout: Duration,

    /// How long the model server may take to become healthy after the agent registered.
    #[arg(long, env = "SKYLAUNCH_READY_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Launch jobs this process runs at once.
    #[arg(long, env = "SKYLAUNCH_MAX_CONCURRENT_LAUNCHES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_launches: u32,

    /// How long a process's claim on a running launch job lasts without renewal.
    #[arg(long, env = "SKYLAUNCH_JOB_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub job_lease: Duration,

    /// How long a native cloud VM (AWS, Azure) may take to be created and running before the launch fails (`launch_timeout`) and the VM is torn down.
    #[arg(long, env = "SKYLAUNCH_PROVISION_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub provision_timeout: Duration,

    /// The skylaunch-agent binary (local launches run it; VMs download it from /downloads/skylaunch-agent).
    #[arg(long, env = "SKYLAUNCH_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,

    /// Where launched VMs download the agent (default: <public-url>/downloads/skylaunch-agent).
    #[arg(long, env = "SKYLAUNCH_AGENT_URL")]
    pub agent_url: Option<String>,

    /// The skylaunch executable that runs the echo model server for local launches and SSH hosts' `echo` template (default: this one).
    #[arg(long, env = "SKYLAUNCH_BIN")]
    pub skylaunch_bin: Option<PathBuf>,

    /// Key that seals SSH hosts' credentials in the database: 64 hex digits (default: generated on first start and kept in <data-dir>/credentials-key). Processes sharing a PostgreSQL database need the same key.
    #[arg(long, env = "SKYLAUNCH_CREDENTIALS_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub credentials_key: Option<Secret>,

    /// The OpenSSH client used to reach SSH hosts.
    #[arg(long, env = "SKYLAUNCH_SSH_BIN", default_value = "ssh")]
    pub ssh_bin: PathBuf,

    /// How long connecting to an SSH host may take.
    #[arg(long, env = "SKYLAUNCH_SSH_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ssh_connect_timeout: Duration,

    /// How long a template's setup may run on an SSH host (vLLM's install takes minutes).
    #[arg(long, env = "SKYLAUNCH_SSH_SETUP_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub ssh_setup_timeout: Duration,

    /// EC2 endpoint for `provider: "aws"` (default: AWS itself; tests use a local moto server).
    #[arg(long, env = "SKYLAUNCH_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// AMI for `provider: "aws"`: ami-… for every region, and/or REGION=ami-… pairs, comma-separated (default: the newest AWS Deep Learning base GPU AMI of each region).
    #[arg(long, env = "SKYLAUNCH_AWS_AMI", value_parser = crate::launch::providers::aws::catalog::parse_ami_choice)]
    pub aws_ami: Option<AmiChoice>,

    /// Who may reach a native AWS node's model port (default: the public URL's IP as /32).
    #[arg(long, env = "SKYLAUNCH_AWS_MODEL_PORT_CIDR")]
    pub aws_model_port_cidr: Option<String>,

    /// Azure Resource Manager endpoint for `provider: "azure"` (default: Azure's public cloud; tests use a local stand-in).
    #[arg(long, env = "SKYLAUNCH_AZURE_ENDPOINT_URL")]
    pub azure_endpoint_url: Option<String>,

    /// Microsoft Entra ID authority for Azure tokens (default: AZURE_AUTHORITY_HOST, else the public cloud's).
    #[arg(long, env = "SKYLAUNCH_AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,

    /// Azure subscription that native Azure launches create VMs in.
    #[arg(long, env = "SKYLAUNCH_AZURE_SUBSCRIPTION_ID")]
    pub azure_subscription_id: Option<String>,

    /// Existing resource group for the VMs (and the only one the Azure orphan sweeper looks at).
    #[arg(long, env = "SKYLAUNCH_AZURE_RESOURCE_GROUP")]
    pub azure_resource_group: Option<String>,

    /// REGION=SUBNET_ID: the existing subnet VMs in that region join (repeat the flag, or comma-separate in the env var).
    #[arg(long = "azure-subnet", env = "SKYLAUNCH_AZURE_SUBNETS", value_delimiter = ',', value_parser = parse_subnet)]
    pub azure_subnets: Vec<(String, String)>,

    /// VM image: publisher:offer:sku:version, or an image resource id.
    #[arg(long, env = "SKYLAUNCH_AZURE_IMAGE", default_value = azure::settings::DEFAULT_IMAGE, value_parser = azure::settings::parse_image)]
    pub azure_image: AzureImage,

    /// OpenSSH public key installed for the `skylaunch` user on Azure VMs.
    #[arg(long, env = "SKYLAUNCH_AZURE_SSH_PUBLIC_KEY", value_parser = azure::settings::parse_ssh_public_key)]
    pub azure_ssh_public_key: Option<String>,

    /// Give each Azure VM a Standard public IP (deleted with the VM): true or false.
    #[arg(long, env = "SKYLAUNCH_AZURE_PUBLIC_IP", default_value_t = true, action = clap::ArgAction::Set)]
    pub azure_public_ip: bool,

    /// Shortest wait between polls of a long-running Azure operation (Azure's Retry-After may ask for longer).
    #[arg(long, env = "SKYLAUNCH_AZURE_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub azure_poll_interval: Duration,

    /// How soon a failed teardown is tried again (a node waits in teardown_pending meanwhile); each failure in a row doubles the wait, up to an hour.
    #[arg(long, env = "SKYLAUNCH_TEARDOWN_RETRY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub teardown_retry_interval: Duration,

    /// How often each deployment is compared with what runs (node changes also wake the reconciler at once).
    #[arg(long, env = "SKYLAUNCH_RECONCILE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// How long a deployment's replica may stay unhealthy before it is replaced (an offline one is replaced at once).
    #[arg(long, env = "SKYLAUNCH_REPLICA_UNHEALTHY_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub replica_unhealthy_grace: Duration,

    /// Longest a deployment's draining replica keeps its in-flight requests before it is terminated.
    #[arg(long, env = "SKYLAUNCH_REPLICA_DRAIN_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub replica_drain_timeout: Duration,

    /// Least time between two tries to move a deployment's on-demand fallback replica back to spot (the on-demand one serves until the spot one is ready).
    #[arg(long, env = "SKYLAUNCH_SPOT_SWAP_BACK_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub spot_swap_back_interval: Duration,

    /// First wait after a deployment's replica could not be placed (capacity, quota); each further failure in a row doubles it, up to 30 minutes.
    #[arg(long, env = "SKYLAUNCH_DEPLOYMENT_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub deployment_backoff: Duration,

    /// Most requests that may wait, per deployment scaled to zero, for a replica to start (more get 503 with Retry-After).
    #[arg(long, env = "SKYLAUNCH_COLD_START_MAX_HELD", default_value_t = 100)]
    pub cold_start_max_held: usize,

    /// How often the orphan sweeper looks for cloud instances no launch accounts for.
    #[arg(long, env = "SKYLAUNCH_ORPHAN_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub orphan_sweep_interval: Duration,

    /// How old an unaccounted instance must be before the orphan sweeper terminates it.
    #[arg(long, env = "SKYLAUNCH_ORPHAN_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub orphan_grace: Duration,

    /// Let the orphan sweeper terminate unaccounted instances tagged without an installation id
    /// (made before installations were tagged). They may be another installation's that shares
    /// the account, so by default they are only reported.
    #[arg(long, env = "SKYLAUNCH_ORPHAN_SWEEP_LEGACY", default_value_t = false, action = clap::ArgAction::Set)]
    pub orphan_sweep_legacy: bool,

    /// Bearer keys accepted on /v1/* (comma-separated); unset means /v1 is open.
    #[arg(
        long = "api-key",
        env = "SKYLAUNCH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// How long the load balancer waits to connect to a model server before trying another node.
    #[arg(long, env = "SKYLAUNCH_PROXY_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub proxy_connect_timeout: Duration,

    /// Longest silence from a model server before its response headers or between two chunks; the response then ends.
    #[arg(long, env = "SKYLAUNCH_PROXY_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub proxy_idle_timeout: Duration,

    /// Largest request body accepted on /v1/*, in bytes (KiB and MiB suffixes accepted).
    #[arg(long, env = "SKYLAUNCH_PROXY_BODY_LIMIT", default_value = "32MiB", value_parser = parse_size)]
    pub proxy_body_limit: usize,

    /// Threads that serve client connections, each with a runtime of its own (0: one per CPU
    /// core). The admin API, the UI and launch jobs run on tokio's main runtime, whose threads
    /// TOKIO_WORKER_THREADS sets.
    #[arg(long, env = "SKYLAUNCH_CONNECTION_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(..=1024))]
    pub connection_threads: u16,

    /// Ask model servers for a stream's token usage (`stream_options.include_usage`) when its
    /// client did not, and take that chunk out of the client's stream, so that streams are
    /// metered. Turn off for a model server that refuses `stream_options`: its streams are then
    /// counted as requests without tokens.
    #[arg(long, env = "SKYLAUNCH_METER_STREAMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub meter_streams: bool,

    /// Let every node's agent register a model server on loopback, not only the local provider's: for stand-in VMs on this machine (tests, demos). Never on a real fleet: a stolen node token could then aim traffic at this host's own services.
    #[arg(long, env = "SKYLAUNCH_ALLOW_LOOPBACK_ENDPOINTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_loopback_endpoints: bool,

    /// Open client connections at most (0: no cap). At the cap, the connection that has waited
    /// longest for a request is closed to make room; when none waits, new ones are refused.
    #[arg(long, env = "SKYLAUNCH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open client connections from one source address at most (an IPv6 /64 counts as one; 0: no cap). Raise it when every client comes through one proxy.
    #[arg(
        long,
        env = "SKYLAUNCH_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 1_000
    )]
    pub max_connections_per_source: usize,

    /// Connection places below --max-connections kept for agent requests (register, heartbeat) and /healthz, so nodes stay healthy while clients hold every other place.
    #[arg(
        long,
        env = "SKYLAUNCH_AGENT_CONNECTION_RESERVE",
        default_value_t = 500
    )]
    pub agent_connection_reserve: usize,

    /// A request head must arrive whole within this, from its first byte (a new connection's first head: from the accept).
    #[arg(long, env = "SKYLAUNCH_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a kept-alive client connection may wait for its next request.
    #[arg(long, env = "SKYLAUNCH_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Longest wait for more of a request body that has started.
    #[arg(long, env = "SKYLAUNCH_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Longest a write to a client may stall (the client not reading) before the connection is closed.
    #[arg(long, env = "SKYLAUNCH_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Connection failures or 5xx answers in a row that eject a node from routing.
    #[arg(long, env = "SKYLAUNCH_EJECT_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,

    /// How long a first ejection lasts; each ejection in a row doubles it (up to 32 times).
    #[arg(long, env = "SKYLAUNCH_EJECT_FOR", default_value = "10s", value_parser = parse_duration)]
    pub eject_for: Duration,

    /// Agent requests (register, heartbeat) allowed per node per second, on average (never below
    /// three per heartbeat interval); bursts of ten times that (at least 10) pass.
    #[arg(long, env = "SKYLAUNCH_AGENT_RATE_PER_NODE", default_value_t = 1.0, value_parser = parse_rate)]
    pub agent_rate_per_node: f64,

    /// Agent requests allowed per source address per second, on average (bursts of twice that):
    /// wide enough for a fleet behind one NAT address.
    #[arg(long, env = "SKYLAUNCH_AGENT_RATE_PER_SOURCE", default_value_t = 5000.0, value_parser = parse_rate)]
    pub agent_rate_per_source: f64,

    /// How long shutdown waits for in-flight requests before closing them.
    #[arg(long, env = "SKYLAUNCH_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ServeConfig {
    /// The defaults of every setting, as `serve` with no flags and no environment would have.
    pub fn defaults() -> ServeConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServeConfig,
        }
        let parsed = <Wrapper as clap::Parser>::try_parse_from(["skylaunch"]);
        parsed.expect("every setting has a default").config
    }

    /// The settings of native Azure launches.
    pub fn azure_settings(&self) -> AzureSettings {
        AzureSettings {
            endpoint_url: self.azure_endpoint_url.clone(),
            authority_host: self.azure_authority_host.clone(),
            subscription_id: self.azure_subscription_id.clone(),
            resource_group: self.azure_resource_group.clone(),
            subnets: self.azure_subnets.iter().cloned().collect(),
            image: self.azure_image.clone(),
            ssh_public_key: self.azure_ssh_public_key.clone(),
            public_ip: self.azure_public_ip,
            poll_interval: self.azure_poll_interval,
            running_timeout: self.provision_timeout,
        }
    }

    pub fn proxy_settings(&self) -> crate::routing::ProxySettings {
        crate::routing::ProxySettings {
            connect_timeout: self.proxy_connect_timeout,
            idle_timeout: self.proxy_idle_timeout,
            body_limit: self.proxy_body_limit,
            meter_streams: self.meter_streams,
            eject_after: self.eject_after,
            eject_for: self.eject_for,
        }
    }

    pub fn connection_settings(&self) -> crate::http::connections::ConnectionSettings {
        crate::http::connections::ConnectionSettings {
            max: self.max_connections,
            per_source: self.max_connections_per_source,
            agent_reserve: self.agent_connection_reserve,
            header_timeout: self.header_timeout,
            idle_timeout: self.keepalive_timeout,
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
        }
    }

    pub fn agent_limits(&self) -> crate::api::limits::AgentLimits {
        // Never below three requests per heartbeat interval: an agent on a short interval is
        // not a flood.
        let floor = 3.0 / self.heartbeat_interval.as_secs_f64().max(0.001);
        crate::api::limits::AgentLimits::new(
            self.agent_rate_per_node.max(floor),
            self.agent_rate_per_source,
        )
    }

    pub fn reconciler_settings(&self) -> crate::deploy::ReconcilerSettings {
        crate::deploy::ReconcilerSettings {
            interval: self.reconcile_interval,
            unhealthy_grace: self.replica_unhealthy_grace,
            drain_timeout: self.replica_drain_timeout,
            backoff: self.deployment_backoff,
            spot_swap_back_every: self.spot_swap_back_interval,
            stale_report: self.heartbeat_interval * self.missed_heartbeats.max(1),
            cold_start_max_held: self.cold_start_max_held,
            ..crate::deploy::ReconcilerSettings::default()
        }
    }

    pub fn fleet_settings(&self) -> FleetSettings {
        FleetSettings {
            health: self.health_policy(),
            sweep_every: self.sweep_interval,
            telemetry_flush_every: self.telemetry_flush_interval,
            refresh_every: self.fleet_refresh_interval,
        }
    }

    /// The job runner's settings; `control_plane_url` and `agent_url` are the ones launched
    /// nodes reach (worked out from `--public-url` and `--agent-url` at start).
    /// The database to use: `--database-url`, else SQLite in the data dir.
    pub fn database(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::store::Store::sqlite_url_for(&self.data_dir))
    }

    pub fn runner_settings(
        &self,
        control_plane_url: String,
        agent_url: String,
    ) -> crate::launch::runner::RunnerSettings {
        crate::launch::runner::RunnerSettings {
            lease: self.job_lease,
            poll_interval: Duration::from_secs(1),
            max_concurrent: self.max_concurrent_launches as usize,
            registration_timeout: self.registration_timeout,
            ready_timeout: self.ready_timeout,
            control_plane_url,
            agent_url,
        }
    }

    pub fn health_policy(&self) -> HealthPolicy {
        HealthPolicy {
            heartbeat_interval: self.heartbeat_interval,
            missed_heartbeats: self.missed_heartbeats,
            offline_after: self.offline_after,
            min_health_score: self.min_health_score,
        }
    }
}

pub use skylaunch_protocol::LogFormat;

/// A secret setting; its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn parse_subnet(s: &str) -> Result<(String, String), String> {
    azure::settings::parse_subnet(s)
}

/// Bytes, or a number with a KiB or MiB suffix.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, unit) = match s {
        _ if s.ends_with("MiB") => (&s[..s.len() - 3], 1024 * 1024),
        _ if s.ends_with("KiB") => (&s[..s.len() - 3], 1024),
        _ => (s, 1),
    };
    number
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size: use bytes, or a number with KiB or MiB"))
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.trim().len() < 16 {
        return Err("must be at least 16 characters".to_string());
    }
    Ok(Secret(s.trim().to_string()))
}

/// Parses a positive number of requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of requests per second"
        )),
    }
}

fn parse_score(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} must be a number from 0.0 to 1.0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_kib_and_mib() {
        assert_eq!(super::parse_size("32MiB"), Ok(32 * 1024 * 1024));
        assert_eq!(super::parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(super::parse_size("1000"), Ok(1000));
        assert!(super::parse_size("0").is_err());
        assert!(super::parse_size("lots").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ServeConfig::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./skylaunch-data"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.missed_heartbeats, 3);
        assert_eq!(c.offline_after, Duration::from_secs(60));
        assert_eq!(c.min_health_score, 0.5);
    }

    #[test]
    fn secret_debug_hides_the_value() {
        assert_eq!(
            format!("{:?}", Secret("supersecretvalue123".into())),
            "Secret(***)"
        );
    }
}

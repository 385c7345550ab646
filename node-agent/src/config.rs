//! The agent's settings: every flag has a `SKYLAUNCH_*` environment variable. Registration fields
//! left unset are discovered (see `discover`).

use std::fmt;
use std::time::Duration;

use clap::Parser;
use skylaunch_protocol::{parse_duration, LogFormat};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "skylaunch-agent",
    version,
    about = "skylaunch node agent: registers this VM and reports its health"
)]
pub struct Config {
    /// Base URL of the skylaunch control plane.
    #[arg(long, env = "SKYLAUNCH_CONTROL_PLANE_URL")]
    pub control_plane_url: String,
    /// This node's id (from the launch job or `POST /admin/nodes`).
    #[arg(long, env = "SKYLAUNCH_NODE_ID")]
    pub node_id: String,
    /// This node's token; never logged.
    #[arg(long, env = "SKYLAUNCH_NODE_TOKEN", hide_env_values = true)]
    pub node_token: NodeToken,

    /// The model server's own API key (vLLM's `--api-key`), which its `/v1` routes want; the
    /// probes send it. Given by the launch, like the node token.
    #[arg(long, env = "SKYLAUNCH_MODEL_SERVER_KEY", hide_env_values = true)]
    pub model_server_key: Option<NodeToken>,
    /// The local model server (vLLM or any OpenAI-compatible server).
    #[arg(
        long,
        env = "SKYLAUNCH_MODEL_SERVER_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub model_server_url: String,
    /// Cloud provider: `auto` probes AWS then Azure instance metadata, else `local`.
    #[arg(long, env = "SKYLAUNCH_PROVIDER", default_value = "auto")]
    pub provider: String,
    #[arg(long, env = "SKYLAUNCH_REGION")]
    pub region: Option<String>,
    #[arg(long, env = "SKYLAUNCH_ZONE")]
    pub zone: Option<String>,
    #[arg(long, env = "SKYLAUNCH_INSTANCE_TYPE")]
    pub instance_type: Option<String>,
    /// GPU type (default: from nvidia-smi, or `none`).
    #[arg(long, env = "SKYLAUNCH_GPU_TYPE")]
    pub gpu_type: Option<String>,
    #[arg(long, env = "SKYLAUNCH_GPU_COUNT")]
    pub gpu_count: Option<u32>,
    #[arg(long, env = "SKYLAUNCH_SPOT_INSTANCE")]
    pub spot_instance: Option<bool>,
    /// Model served (default: the first model the model server lists at /v1/models).
    #[arg(long, env = "SKYLAUNCH_MODEL_NAME")]
    pub model_name: Option<String>,
    /// URL the control plane routes traffic to (default: http://<private IP>:<model server port>).
    #[arg(long, env = "SKYLAUNCH_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Base URL of the instance metadata service (AWS IMDSv2 and Azure IMDS).
    #[arg(
        long,
        env = "SKYLAUNCH_IMDS_URL",
        default_value = "http://169.254.169.254"
    )]
    pub imds_url: String,
    /// nvidia-smi executable.
    #[arg(long, env = "SKYLAUNCH_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: String,
    /// How often to poll for a spot interruption notice (aws and azure only).
    #[arg(long, env = "SKYLAUNCH_SPOT_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub spot_poll_interval: Duration,
    /// Timeout of each probe (model server, metrics, IMDS, nvidia-smi).
    #[arg(long, env = "SKYLAUNCH_PROBE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Longest wait between registration attempts while the control plane is unreachable.
    #[arg(long, env = "SKYLAUNCH_REGISTER_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub register_max_backoff: Duration,
    #[arg(long, env = "SKYLAUNCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The node's bearer token. A newtype so that `Debug` (and so any log of the config) can never
/// show it; the one place that needs the value calls `expose`.
#[derive(Clone)]
pub struct NodeToken(String);

impl NodeToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for NodeToken {
    fn from(token: String) -> NodeToken {
        NodeToken(token)
    }
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let c = Config::try_parse_from([
            "skylaunch-agent",
            "--control-plane-url",
            "http://127.0.0.1:8080",
            "--node-id",
            "n1",
            "--node-token",
            "very-secret-token-value",
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-token-value"), "{shown}");
        assert!(shown.contains("NodeToken(***)"), "{shown}");
        assert!(
            shown.contains("http://127.0.0.1:8080"),
            "the other settings are still shown: {shown}"
        );
    }
}

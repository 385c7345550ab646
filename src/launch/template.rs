//! What a launched node runs and the environment it starts with: the model-server templates
//! (`task-templates/<name>.yaml`, the same for every provider) and the one node env block every
//! provider hands its machine (as SkyPilot task `envs`/`secrets`, or as first-boot exports).
//! User values never become YAML or shell text: the model id and user envs are environment
//! variables the template's scripts read.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::spec::LaunchSpec;

/// A skylaunch template (`task-templates/<name>.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub description: String,
    /// The port the model server listens on.
    pub port: u16,
    pub setup: String,
    pub run: String,
}

/// The templates a launch may name.
pub const TEMPLATES: &[&str] = &["vllm", "echo"];

const VLLM: &str = include_str!("../../task-templates/vllm.yaml");
const ECHO: &str = include_str!("../../task-templates/echo.yaml");

pub fn template(name: &str) -> Option<Template> {
    let text = match name {
        "vllm" => VLLM,
        "echo" => ECHO,
        _ => return None,
    };
    Some(serde_norway::from_str(text).expect("embedded templates are valid (tested)"))
}

/// What the node needs to find its control plane.
pub struct NodeIdentity<'a> {
    pub control_plane_url: &'a str,
    pub agent_url: &'a str,
    pub node_id: &'a str,
    pub node_token: &'a str,
    pub model_key: &'a str,
}

/// The environment a node starts with: plain values (the user's envs, the model, what the agent
/// needs to find its control plane) and secrets (the node token and the model server's key),
/// which a provider must pass where they are never shown or logged.
pub struct NodeEnv {
    pub envs: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

/// The node env block of a launch. Validation refused user envs that would override any of the
/// values set here.
pub fn node_env(spec: &LaunchSpec, template: &Template, node: &NodeIdentity<'_>) -> NodeEnv {
    let mut envs = spec.envs.clone();
    envs.insert("MODEL_ID".into(), spec.model.clone());
    envs.insert("MODEL_PORT".into(), template.port.to_string());
    envs.insert("GPU_COUNT".into(), spec.gpu_count.to_string());
    envs.insert(
        "SKYLAUNCH_CONTROL_PLANE_URL".into(),
        node.control_plane_url.to_string(),
    );
    envs.insert("SKYLAUNCH_AGENT_URL".into(), node.agent_url.to_string());
    envs.insert("SKYLAUNCH_NODE_ID".into(), node.node_id.to_string());
    let mut secrets = BTreeMap::new();
    secrets.insert("SKYLAUNCH_NODE_TOKEN".into(), node.node_token.to_string());
    secrets.insert(
        "SKYLAUNCH_MODEL_SERVER_KEY".into(),
        node.model_key.to_string(),
    );
    NodeEnv { envs, secrets }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_templates_parse() {
        let t = template("vllm").unwrap();
        assert_eq!(t.port, 8000);
        assert!(t.run.contains("$MODEL_ID"));
    }
}

//! Builds the SkyPilot task for a launch as typed data and serialises it to YAML (the task schema
//! of SkyPilot 0.14). User values never become YAML or shell text: the model id and user envs go
//! under `envs`, the node token and the model server's key under `secrets`, and the template's
//! scripts read them as environment variables.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog;
use crate::launch::providers::RenderedTask;
use crate::launch::spec::{LaunchSpec, SECRET_SHOWN};
use crate::launch::template::{node_env, NodeIdentity, Template};

#[derive(Debug, Clone, Serialize)]
pub struct SkyTask {
    pub name: String,
    pub resources: Resources,
    pub envs: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub setup: String,
    pub run: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerators: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infra: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_spot: Option<bool>,
    pub disk_size: u32,
    pub ports: Vec<u16>,
    /// Placements in order of preference (regions, then spot before on-demand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordered: Option<Vec<Candidate>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infra: Option<String>,
    pub use_spot: bool,
}

/// Placements in the order they should be tried: every region spot first, then every region
/// on-demand when falling back is allowed.
pub fn candidates(spec: &LaunchSpec) -> Vec<Candidate> {
    let places: Vec<Option<String>> = if spec.regions.is_empty() {
        vec![spec.cloud.clone()]
    } else {
        spec.regions
            .iter()
            .map(|r| {
                let cloud = spec
                    .cloud
                    .clone()
                    .or_else(|| catalog::cloud_of_region(r).map(str::to_string));
                Some(match cloud {
                    Some(c) => format!("{c}/{r}"),
                    None => format!("*/{r}"),
                })
            })
            .collect()
    };
    let markets: &[bool] = match (spec.use_spot, spec.fallback_to_on_demand) {
        (true, true) => &[true, false],
        (true, false) => &[true],
        (false, _) => &[false],
    };
    markets
        .iter()
        .flat_map(|spot| {
            places.iter().map(|infra| Candidate {
                infra: infra.clone(),
                use_spot: *spot,
            })
        })
        .collect()
}

pub fn render(
    spec: &LaunchSpec,
    template: &Template,
    task_name: &str,
    node: &NodeIdentity<'_>,
) -> SkyTask {
    let env = node_env(spec, template, node);
    let mut candidates = candidates(spec);
    let (infra, use_spot, ordered) = if candidates.len() == 1 {
        let only = candidates.remove(0);
        (only.infra, Some(only.use_spot), None)
    } else {
        (None, None, Some(candidates))
    };
    SkyTask {
        name: task_name.to_string(),
        resources: Resources {
            accelerators: spec.gpu.as_ref().map(|g| format!("{g}:{}", spec.gpu_count)),
            infra,
            use_spot,
            disk_size: spec.disk_gb,
            ports: vec![template.port],
            ordered,
        },
        envs: env.envs,
        secrets: env.secrets,
        setup: template.setup.clone(),
        run: template.run.clone(),
    }
}

/// The task as the API shows it: the user's `envs` values and every `secrets` value as
/// `<secret>` (the keys kept).
pub fn masked(task: &SkyTask, spec: &LaunchSpec) -> SkyTask {
    let mut shown = task.clone();
    for (key, value) in shown.envs.iter_mut() {
        if spec.envs.contains_key(key) {
            *value = SECRET_SHOWN.to_string();
        }
    }
    for value in shown.secrets.values_mut() {
        *value = SECRET_SHOWN.to_string();
    }
    shown
}

pub fn to_yaml(task: &SkyTask) -> String {
    serde_norway::to_string(task).expect("a task of strings, numbers and maps always serialises")
}

/// The launch's SkyPilot task as YAML: with its secrets for `sky launch`, and masked for the job
/// to show.
pub fn rendered(
    spec: &LaunchSpec,
    template: &Template,
    task_name: &str,
    node: &NodeIdentity<'_>,
) -> RenderedTask {
    let task = render(spec, template, task_name, node);
    RenderedTask {
        for_machine: to_yaml(&task),
        shown: to_yaml(&masked(&task, spec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::spec::LaunchRequest;
    use crate::launch::template::template;

    fn spec(json: serde_json::Value) -> LaunchSpec {
        serde_json::from_value::<LaunchRequest>(json)
            .unwrap()
            .validate("node-1")
            .unwrap()
    }

    fn node() -> NodeIdentity<'static> {
        NodeIdentity {
            control_plane_url: "http://cp:8080",
            agent_url: "http://cp:8080/downloads/skylaunch-agent",
            node_id: "node-1",
            node_token: "tok-secret",
            model_key: "mk-secret",
        }
    }

    #[test]
    fn spot_with_fallback_tries_every_region_spot_then_on_demand() {
        let s = spec(
            serde_json::json!({"model": "m/x", "provider": "skypilot", "gpu": "L4", "use_spot": true,
            "spot_fallback": "on_demand", "regions": ["us-east-1", "us-west-2"]}),
        );
        let c = candidates(&s);
        let shown: Vec<(String, bool)> = c
            .iter()
            .map(|c| (c.infra.clone().unwrap(), c.use_spot))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("aws/us-east-1".into(), true),
                ("aws/us-west-2".into(), true),
                ("aws/us-east-1".into(), false),
                ("aws/us-west-2".into(), false)
            ]
        );
    }

    #[test]
    fn single_placement_goes_on_resources_directly() {
        let s = spec(
            serde_json::json!({"model": "m/x", "provider": "skypilot", "gpu": "A100-80GB", "gpu_count": 8, "cloud": "aws"}),
        );
        let task = render(&s, &template("vllm").unwrap(), "sl-1", &node());
        assert_eq!(task.resources.infra.as_deref(), Some("aws"));
        assert_eq!(task.resources.use_spot, Some(false));
        assert_eq!(task.resources.accelerators.as_deref(), Some("A100-80GB:8"));
        assert!(task.resources.ordered.is_none());
    }

    #[test]
    fn user_values_stay_in_envs_and_the_token_in_secrets() {
        let s = spec(
            serde_json::json!({"model": "org/model-1", "provider": "skypilot", "gpu": "L4",
            "envs": {"HF_TOKEN": "hf_abc", "QUOTE": "it's \"fine\"\nnext: line"}}),
        );
        let task = render(&s, &template("vllm").unwrap(), "sl-1", &node());
        let yaml = to_yaml(&task);
        let back: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back["envs"]["MODEL_ID"].as_str(), Some("org/model-1"));
        assert_eq!(
            back["envs"]["QUOTE"].as_str(),
            Some("it's \"fine\"\nnext: line")
        );
        assert_eq!(
            back["secrets"]["SKYLAUNCH_NODE_TOKEN"].as_str(),
            Some("tok-secret")
        );
        assert!(back["envs"].get("SKYLAUNCH_NODE_TOKEN").is_none());
        assert!(!task.setup.contains("org/model-1") && !task.run.contains("org/model-1"));
    }
}

//! The generated task YAML is valid for the real SkyPilot 0.14.1: `sky.Task.from_yaml` (schema and
//! types) accepts every shape skylaunch produces.

mod common;

use skylaunch::launch::providers::skypilot::task;
use skylaunch::launch::spec::LaunchRequest;
use skylaunch::launch::template::{self, NodeIdentity};

fn render(request: serde_json::Value) -> String {
    let spec = serde_json::from_value::<LaunchRequest>(request)
        .unwrap()
        .validate("node-1")
        .unwrap();
    let node = NodeIdentity {
        control_plane_url: "http://10.0.0.1:8080",
        agent_url: "http://10.0.0.1:8080/downloads/skylaunch-agent",
        node_id: "0b7e0c1e-1111-4222-8333-944455556666",
        node_token: "0123456789abcdef0123456789abcdef",
        model_key: "fedcba9876543210fedcba9876543210",
    };
    task::to_yaml(&task::render(
        &spec,
        &template::template(&spec.template).unwrap(),
        "sl-0b7e0c1e1111",
        &node,
    ))
}

#[test]
fn generated_tasks_load_in_real_skypilot() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot", "gpu": "L4",
            "use_spot": true, "spot_fallback": "on_demand", "regions": ["us-east-1", "us-west-2"]}),
        serde_json::json!({"model": "Qwen/Qwen2.5-72B-Instruct", "provider": "skypilot", "gpu": "a100-80gb",
            "gpu_count": 8, "cloud": "aws", "disk_gb": 1024}),
        serde_json::json!({"model": "mistralai/Mistral-7B-v0.3", "provider": "skypilot", "gpu": "A10",
            "regions": ["eastus"], "use_spot": true}),
        serde_json::json!({"model": "org/m", "provider": "skypilot", "gpu": "H100",
            "envs": {"HF_TOKEN": "hf_x", "ODD": "quotes ' \" and: colons\n- and a list marker"}}),
    ];
    let mut paths = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("task{i}.yaml"));
        std::fs::write(&path, render(case)).unwrap();
        paths.push(path);
    }
    let script = r#"
import sys, sky
for path in sys.argv[1:]:
    task = sky.Task.from_yaml(path)
    res = list(task.resources)
    assert task.envs["MODEL_ID"], path
    assert "SKYLAUNCH_NODE_TOKEN" in task.secrets and "SKYLAUNCH_NODE_TOKEN" not in task.envs, path
    print(path, len(res), sorted({str(r.accelerators) for r in res}), sorted({r.use_spot for r in res}))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(&paths)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SkyPilot refused a generated task:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].contains(" 4 ") && lines[0].contains("[False, True]"),
        "spot then on-demand in 2 regions: {}",
        lines[0]
    );
    assert!(lines[1].contains("{'A100-80GB': 8}"), "{}", lines[1]);
}

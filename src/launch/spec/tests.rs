//! Validation of launch requests: canonical forms, refusals and their suggestions.

use super::*;

fn req(json: serde_json::Value) -> LaunchRequest {
    serde_json::from_value(json).unwrap()
}

fn base() -> serde_json::Value {
    serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot", "gpu": "l4",
        "use_spot": true, "spot_fallback": "on_demand", "regions": ["us-east-1", "us-west-2"]})
}

#[test]
fn valid_request_is_canonicalised() {
    let spec = req(base()).validate("llama-1").unwrap();
    assert_eq!(spec.gpu.as_deref(), Some("L4"));
    assert_eq!(spec.gpu_count, 1);
    assert!(spec.use_spot && spec.fallback_to_on_demand);
    assert_eq!(spec.regions, vec!["us-east-1", "us-west-2"]);
    assert_eq!(spec.template, "vllm");
    assert_eq!(spec.name, "llama-1");
}

#[test]
fn unknown_gpu_suggests_near_names() {
    let mut r = base();
    r["gpu"] = "A1000".into();
    let e = req(r).validate("n").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidAccelerator);
    assert_eq!(e.field, "gpu");
    assert_eq!(e.suggestions.first().map(String::as_str), Some("A100"));
}

#[test]
fn unknown_region_suggests_near_regions() {
    let mut r = base();
    r["regions"] = serde_json::json!(["us-east-9"]);
    let e = req(r).validate("n").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRegion);
    assert!(
        e.suggestions.contains(&"us-east-1".to_string()),
        "{:?}",
        e.suggestions
    );
}

#[test]
fn region_of_another_cloud_is_refused_when_cloud_is_set() {
    let mut r = base();
    r["cloud"] = "aws".into();
    r["regions"] = serde_json::json!(["eastus"]);
    assert_eq!(
        req(r).validate("n").unwrap_err().code,
        ErrorCode::InvalidRegion
    );
}

#[test]
fn gpu_not_on_the_cloud_is_refused_with_alternatives() {
    let mut r = base();
    r["cloud"] = "azure".into();
    r["regions"] = serde_json::json!([]);
    let e = req(r).validate("n").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidAccelerator);
    assert!(e.message.contains("not offered on azure"), "{}", e.message);
    assert!(!e.suggestions.is_empty());
}

#[test]
fn impossible_gpu_count_is_refused() {
    let mut r = base();
    r["gpu_count"] = 3.into();
    let e = req(r).validate("n").unwrap_err();
    assert_eq!(e.field, "gpu_count");
}

#[test]
fn model_ids_cannot_smuggle_paths_or_shell() {
    for bad in [
        "",
        "../../etc/passwd",
        "a/b/c",
        "m; rm -rf /",
        "$(reboot)",
        "x\ny",
    ] {
        let mut r = base();
        r["model"] = bad.into();
        assert_eq!(req(r).validate("n").unwrap_err().field, "model", "{bad:?}");
    }
}

#[test]
fn env_keys_are_checked_and_reserved_ones_refused() {
    for bad in ["1BAD", "A-B", "SKYLAUNCH_NODE_TOKEN", "MODEL_ID"] {
        let mut r = base();
        r["envs"] = serde_json::json!({ bad: "x" });
        assert_eq!(req(r).validate("n").unwrap_err().field, "envs", "{bad:?}");
    }
    let mut r = base();
    r["envs"] = serde_json::json!({"HF_TOKEN": "<secret>"});
    let refused = req(r.clone()).validate("n").unwrap_err();
    assert_eq!(refused.field, "envs");
    assert!(
        refused.message.contains("real value"),
        "{}",
        refused.message
    );
    r["envs"] = serde_json::json!({"HF_TOKEN": "hf_x", "_X1": "y"});
    assert!(req(r).validate("n").is_ok());
}

#[test]
fn other_checks() {
    let cases = [
        (serde_json::json!({"provider": "skypilott"}), "provider"),
        (serde_json::json!({"provider": "azure"}), "gpu"),
        (
            serde_json::json!({"provider": "azure", "gpu": "A100-80GB", "gpu_count": 3}),
            "gpu_count",
        ),
        (
            serde_json::json!({"provider": "azure", "gpu": "A10", "regions": ["us-east-1"]}),
            "regions",
        ),
        (
            serde_json::json!({"provider": "azure", "gpu": "A10", "cloud": "aws"}),
            "cloud",
        ),
        (serde_json::json!({"provider": "aws", "gpu": "A10"}), "gpu"),
        (
            serde_json::json!({"provider": "aws", "gpu": "H100"}),
            "gpu_count",
        ),
        (
            serde_json::json!({"provider": "aws", "regions": ["eastus"]}),
            "regions",
        ),
        (
            serde_json::json!({"spot_fallback": "maybe"}),
            "spot_fallback",
        ),
        (serde_json::json!({"disk_gb": 10}), "disk_gb"),
        (serde_json::json!({"template": "tgi"}), "template"),
        (serde_json::json!({"name": "bad name!"}), "name"),
        (serde_json::json!({"gpu": null}), "gpu"),
    ];
    for (patch, field) in cases {
        let mut r = base();
        for (k, v) in patch.as_object().unwrap() {
            r[k] = v.clone();
        }
        assert_eq!(req(r).validate("n").unwrap_err().field, field, "{patch}");
    }
}

#[test]
fn local_provider_needs_no_gpu_or_region() {
    let spec = req(serde_json::json!({"model": "echo", "provider": "local"}))
        .validate("n")
        .unwrap();
    assert_eq!(spec.gpu, None);
    assert!(!spec.use_spot);
    let e =
        req(serde_json::json!({"model": "echo", "provider": "local", "regions": ["us-east-1"]}))
            .validate("n")
            .unwrap_err();
    assert_eq!(e.field, "regions");
}

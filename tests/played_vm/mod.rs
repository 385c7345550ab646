//! Playing a cloud VM in the native-provider tests: no VM can boot here, so after a launch
//! creates one, the test runs what its bootstrap would start (the echo model server and the
//! real agent) with the values the bootstrap script carries.
#![allow(dead_code)]

/// The value a bootstrap script exports for `key`, as the shell reads it.
pub fn exported(script: &str, key: &str) -> String {
    let line = script
        .lines()
        .find(|l| l.starts_with(&format!("export {key}=")))
        .unwrap_or_else(|| panic!("{key} not exported"));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{line}; printf %s \"${key}\""))
        .output()
        .expect("sh runs");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Stands in for a cloud VM that booted with a bootstrap script: the echo model server and the
/// real agent, with the script's values. No VM can boot here; everything after boot is real.
/// The processes are killed when this is dropped.
pub struct PlayedVm(Vec<std::process::Child>);

impl Drop for PlayedVm {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

pub fn play_vm(script: &str, provider: &str, region: &str, instance_type: &str) -> PlayedVm {
    let skylaunch = std::path::PathBuf::from(env!("CARGO_BIN_EXE_skylaunch"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let model = exported(script, "MODEL_ID");
    // The model server's key, as the template's run gives it to vLLM (VLLM_API_KEY).
    let key = exported(script, "SKYLAUNCH_MODEL_SERVER_KEY");
    let echo = std::process::Command::new(&skylaunch)
        .env("SKYLAUNCH_MODEL_SERVER_KEY", &key)
        .args([
            "echo-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model",
            &model,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("echo server starts");
    let agent = std::process::Command::new(skylaunch.with_file_name("skylaunch-agent"))
        .env_clear()
        .env(
            "SKYLAUNCH_CONTROL_PLANE_URL",
            exported(script, "SKYLAUNCH_CONTROL_PLANE_URL"),
        )
        .env("SKYLAUNCH_NODE_ID", exported(script, "SKYLAUNCH_NODE_ID"))
        .env(
            "SKYLAUNCH_NODE_TOKEN",
            exported(script, "SKYLAUNCH_NODE_TOKEN"),
        )
        .env("SKYLAUNCH_MODEL_SERVER_KEY", &key)
        .env(
            "SKYLAUNCH_MODEL_SERVER_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("SKYLAUNCH_PROVIDER", provider)
        .env("SKYLAUNCH_REGION", region)
        .env("SKYLAUNCH_INSTANCE_TYPE", instance_type)
        // Nothing answers there: the agent's metadata and spot polling stay on loopback.
        .env("SKYLAUNCH_IMDS_URL", "http://127.0.0.1:9")
        .env("SKYLAUNCH_NVIDIA_SMI", "/nonexistent")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent starts");
    PlayedVm(vec![echo, agent])
}

//! The first-boot script that turns a fresh cloud VM into a node (EC2 user data, Azure custom
//! data): the launch's values as exported environment variables (each single-quoted, so no value
//! can become shell), then the template's setup and run. cloud-init runs it as root at first boot.

use std::collections::BTreeMap;

use crate::launch::job::Job;
use crate::launch::run::JobRun;
use crate::launch::task::Template;

/// The whole script for a launch: the user's envs, the model, and what the agent needs to find
/// its control plane (the node token included: the script is the only place it travels).
pub fn for_launch(run: &JobRun, job: &Job, template: &Template) -> String {
    let mut envs: BTreeMap<String, String> = job.spec.envs.clone();
    envs.insert("MODEL_ID".into(), job.spec.model.clone());
    envs.insert("MODEL_PORT".into(), template.port.to_string());
    envs.insert("GPU_COUNT".into(), job.spec.gpu_count.to_string());
    envs.insert(
        "SKYLAUNCH_CONTROL_PLANE_URL".into(),
        run.control_plane_url.clone(),
    );
    envs.insert("SKYLAUNCH_AGENT_URL".into(), run.agent_url.clone());
    envs.insert(
        "SKYLAUNCH_NODE_ID".into(),
        job.node_id.clone().unwrap_or_default(),
    );
    envs.insert("SKYLAUNCH_NODE_TOKEN".into(), run.node_token().to_string());
    envs.insert(
        "SKYLAUNCH_MODEL_SERVER_KEY".into(),
        run.model_key().to_string(),
    );
    envs.insert("HOME".into(), "/root".into());
    script(&envs, &template.setup, &template.run)
}

/// Quotes a value for POSIX sh: `'…'`, with each `'` written as `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// The script: exports, then setup, then run in the background with output in a log file.
pub fn script(envs: &BTreeMap<String, String>, setup: &str, run: &str) -> String {
    let mut out = String::from(
        "#!/bin/bash\n# skylaunch node bootstrap (generated)\nset -euo pipefail\numask 077\n",
    );
    for (key, value) in envs {
        // Keys were validated as [A-Za-z_][A-Za-z0-9_]*; values are quoted.
        out.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    out.push_str("exec >>/var/log/skylaunch-bootstrap.log 2>&1\n");
    out.push_str("( set -euo pipefail\n");
    out.push_str(setup);
    out.push_str("\n)\n");
    out.push_str("nohup bash -c ");
    out.push_str(&shell_quote(run));
    out.push_str(" >>/var/log/skylaunch-model-server.log 2>&1 &\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_every_hostile_value() {
        for value in [
            "plain",
            "it's",
            "$(reboot)",
            "`id`",
            "a\nb",
            "'; rm -rf / #",
            "\"double\"",
            "",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(value)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), value, "{value:?}");
        }
    }

    #[test]
    fn script_exports_then_sets_up_then_runs() {
        let mut envs = BTreeMap::new();
        envs.insert("MODEL_ID".to_string(), "org/m".to_string());
        envs.insert("SKYLAUNCH_NODE_TOKEN".to_string(), "tok'en".to_string());
        let s = script(&envs, "echo setup", "echo run $MODEL_ID");
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("export MODEL_ID='org/m'\n"));
        assert!(s.contains("export SKYLAUNCH_NODE_TOKEN='tok'\\''en'\n"));
        let setup_at = s.find("echo setup").unwrap();
        assert!(setup_at < s.find("nohup").unwrap());
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .status()
            .unwrap();
        assert!(check.success(), "valid bash");
    }
}

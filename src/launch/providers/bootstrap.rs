//! The first-boot script that turns a fresh cloud VM into a node (EC2 user data, Azure custom
//! data): the launch's values as exported environment variables (each single-quoted, so no value
//! can become shell), then the template's setup and run. cloud-init runs it as root at first boot.

use std::collections::BTreeMap;

use crate::launch::job::Job;
use crate::launch::providers::{skypilot, RenderedTask};
use crate::launch::spec::LaunchSpec;
use crate::launch::template::{node_env, NodeIdentity, Template};

/// What a provider that boots its machine with this script renders: the script for the machine,
/// and for the job to show, the SkyPilot task with its values masked, as every provider's job
/// shows (the script has its secrets inline, so it is never stored).
pub fn rendered(job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
    RenderedTask {
        for_machine: for_launch(&job.spec, template, node),
        shown: skypilot::task::rendered(&job.spec, template, &job.cluster_name, node).shown,
    }
}

/// The whole script for a launch: the node env block (the user's envs, the model, and what the
/// agent needs to find its control plane, the node token included: the script is the only place
/// it travels), as exports.
pub fn for_launch(spec: &LaunchSpec, template: &Template, node: &NodeIdentity<'_>) -> String {
    let env = node_env(spec, template, node);
    let mut envs = env.envs;
    envs.extend(env.secrets);
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

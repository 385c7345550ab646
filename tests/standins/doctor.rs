//! Runs the real `skylaunch doctor` binary with only the environment a test gives it (a fresh
//! HOME and data dir, no cloud credentials unless given), so nothing from the machine leaks in.

use serde_json::Value;

/// What `skylaunch doctor --json` answered: its exit code, its verdicts by provider name, and
/// what it printed on stderr.
pub struct Doctor {
    pub code: i32,
    pub verdicts: Value,
    pub stderr: String,
}

impl Doctor {
    /// The verdict of one provider.
    pub fn of(&self, provider: &str) -> &Value {
        self.verdicts["providers"]
            .as_array()
            .expect("a providers list")
            .iter()
            .find(|p| p["provider"] == provider)
            .unwrap_or_else(|| panic!("no verdict for {provider}: {}", self.verdicts))
    }
}

/// `skylaunch doctor <args>` with `envs` (plus PATH, a fresh HOME and data dir, and the
/// instance metadata service off so the AWS SDK never looks beyond loopback); `json` adds
/// `--json`, else the verdicts are the text report in `verdicts` as a string.
pub async fn run(args: &[&str], envs: &[(&str, &str)], json: bool) -> Doctor {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_skylaunch"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SKYLAUNCH_DATA_DIR", home.path().join("data"))
        .arg("doctor")
        .args(args);
    if json {
        cmd.arg("--json");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), cmd.output())
        .await
        .expect("skylaunch doctor finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Doctor {
        code: out.status.code().unwrap_or(-1),
        verdicts: if json {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("doctor --json printed JSON ({e}): {stdout}"))
        } else {
            Value::String(stdout)
        },
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

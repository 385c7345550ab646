//! What runs on an SSH host, as text: the facts script run on first contact, the files a launch
//! writes into its directory (`~/.skylaunch/<cluster>/`), the systemd unit, and the scripts
//! that start, check and stop the launch's service. Every value that reaches a script is either
//! one skylaunch generated (the cluster name, the job id, a port) or single-quoted.

use std::fmt::Write as _;

use crate::launch::providers::bootstrap::shell_quote;

/// The variable every process of a launch carries (its job id): teardown and takeover find the
/// launch's processes by it, whatever became of the service that started them.
pub const MARK: &str = "SKYLAUNCH_HOST_JOB";

/// Where a launch lives on its host, relative to the login's home.
pub fn dir(cluster: &str) -> String {
    format!(".skylaunch/{cluster}")
}

/// The systemd unit of a launch.
pub fn unit(cluster: &str) -> String {
    format!("skylaunch-{cluster}.service")
}

/// Prints what the provider needs to know of the host (`key=value` lines): its home, whether
/// the login is root or may use sudo without a password, whether systemd runs, and the first
/// free TCP port from `port` on (bash's /dev/tcp answers whether something listens); port 0
/// (a template whose server picks its own) is passed through.
pub fn facts(port: u16) -> String {
    let mut script = String::from(
        r#"set -u
echo "home=$HOME"
echo "uid=$(id -u)"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; else echo systemd=no; fi
if sudo -n true >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi
if command -v setsid >/dev/null 2>&1; then echo setsid=yes; else echo setsid=no; fi
"#,
    );
    if port == 0 {
        script.push_str("echo port=0\n");
    } else {
        let _ = write!(
            script,
            r#"p={port}
while [ "$p" -lt {end} ]; do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port=$p"; break; fi
  p=$((p + 1))
done
"#,
            end = u32::from(port) + 200
        );
    }
    script
}

/// The facts a host answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub home: String,
    pub root: bool,
    pub systemd: bool,
    pub sudo: bool,
    pub setsid: bool,
    pub port: Option<u16>,
}

impl Facts {
    pub fn parse(out: &str) -> Option<Facts> {
        let get = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(Facts {
            home: get("home")?.to_string(),
            root: get("uid")? == "0",
            systemd: get("systemd") == Some("yes"),
            sudo: get("sudo") == Some("yes"),
            setsid: get("setsid") == Some("yes"),
            port: get("port").and_then(|p| p.parse().ok()),
        })
    }

    /// How the launch's service is kept running: a systemd unit where systemd runs and the
    /// login may install one, else a detached session (survives the SSH connection, not a
    /// reboot).
    pub fn service(&self) -> ServiceKind {
        if self.systemd && (self.root || self.sudo) {
            ServiceKind::Systemd {
                sudo: if self.root { "" } else { "sudo -n " },
            }
        } else {
            ServiceKind::Detached
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Systemd { sudo: &'static str },
    Detached,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Systemd { .. } => "systemd",
            ServiceKind::Detached => "detached",
        }
    }
}

/// The launch's environment file (mode 0600 on the host): the node env block as exports, then
/// the port this host gave the model server and the launch's mark.
pub fn env_file<'a>(
    node_env: impl IntoIterator<Item = (&'a String, &'a String)>,
    port: u16,
    job_id: &str,
) -> String {
    let mut out = String::from("# skylaunch launch environment (generated; holds secrets)\n");
    for (key, value) in node_env {
        // Keys were validated as [A-Za-z_][A-Za-z0-9_]*; values are quoted.
        let _ = writeln!(out, "export {key}={}", shell_quote(value));
    }
    let _ = writeln!(out, "export MODEL_PORT={}", shell_quote(&port.to_string()));
    let _ = writeln!(out, "export {MARK}={}", shell_quote(job_id));
    out
}

/// Runs one of the launch's scripts with its environment, from its directory.
pub fn with_env(dir: &str, script: &str) -> String {
    format!(
        "cd \"$HOME/{dir}\" && export SKYLAUNCH_HOST_DIR=\"$HOME/{dir}\" && set -a && . ./node.env && set +a && exec bash ./{script}"
    )
}

/// `start.sh`: what the service runs: the template's run script with the launch's environment.
pub fn start_script(dir: &str) -> String {
    format!("#!/bin/bash\n{}\n", with_env(dir, "run.sh"))
}

/// The systemd unit: restarted when it fails, started again at boot, every process of it
/// stopped with it.
pub fn unit_file(cluster: &str, user: &str, home: &str) -> String {
    let dir = dir(cluster);
    format!(
        "[Unit]\nDescription=skylaunch launch {cluster} (model server and node agent)\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nUser={user}\nWorkingDirectory={home}/{dir}\nExecStart=/bin/bash {home}/{dir}/start.sh\nRestart=on-failure\nRestartSec=5\nKillMode=control-group\nStandardOutput=append:{home}/{dir}/service.log\nStandardError=append:{home}/{dir}/service.log\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// Starts the service.
pub fn start(cluster: &str, service: ServiceKind) -> String {
    let dir = dir(cluster);
    match service {
        ServiceKind::Systemd { sudo } => format!(
            "set -e\n{sudo}install -m 0644 \"$HOME/{dir}/unit\" /etc/systemd/system/{unit}\n{sudo}systemctl daemon-reload\n{sudo}systemctl enable --now {unit}\n",
            unit = unit(cluster)
        ),
        ServiceKind::Detached => format!(
            "set -e\ncd \"$HOME/{dir}\"\nsetsid bash ./start.sh >>service.log 2>&1 </dev/null &\necho $! >service.pid\n"
        ),
    }
}

/// Exits 0 when some process of the launch runs on the host.
pub fn running(job_id: &str) -> String {
    format!("grep -qsxz {MARK}={job_id} /proc/[0-9]*/environ")
}

/// Stops and removes everything of the launch: its unit (if any), every process carrying its
/// mark (SIGTERM, then SIGKILL after 10 s), and its directory. Idempotent.
pub fn teardown(cluster: &str, job_id: &str) -> String {
    let dir = dir(cluster);
    let unit = unit(cluster);
    format!(
        r#"set -u
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if [ -f /etc/systemd/system/{unit} ]; then
  $SUDO systemctl disable --now {unit} >/dev/null 2>&1 || true
  $SUDO rm -f /etc/systemd/system/{unit}
  $SUDO systemctl daemon-reload || true
fi
pids() {{ grep -lsxz {MARK}={job_id} /proc/[0-9]*/environ | cut -d/ -f3; }}
leader=$(cat "$HOME/{dir}/service.pid" 2>/dev/null || true)
if [ -n "$leader" ] && grep -qsxz {MARK}={job_id} "/proc/$leader/environ"; then kill -TERM -- "-$leader" 2>/dev/null || true; fi
p=$(pids); [ -z "$p" ] || kill -TERM $p 2>/dev/null || true
i=0
while [ -n "$(pids)" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
p=$(pids); [ -z "$p" ] || kill -KILL $p 2>/dev/null || true
sleep 0.2
rm -rf "$HOME/{dir}"
rmdir "$HOME/.skylaunch" 2>/dev/null || true
if [ -n "$(pids)" ]; then echo "processes of the launch are still running: $(pids)" >&2; exit 1; fi
if [ -e "$HOME/{dir}" ]; then echo "$HOME/{dir} could not be removed" >&2; exit 1; fi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_parse_and_choose_the_service() {
        let f =
            Facts::parse("home=/home/gpu\nuid=1000\nsystemd=yes\nsudo=no\nsetsid=yes\nport=8001\n")
                .unwrap();
        assert_eq!(f.port, Some(8001));
        assert_eq!(
            f.service(),
            ServiceKind::Detached,
            "systemd but no root or sudo"
        );
        let root = Facts::parse("home=/root\nuid=0\nsystemd=yes\nsudo=no\n").unwrap();
        assert_eq!(root.service(), ServiceKind::Systemd { sudo: "" });
        assert_eq!(root.port, None);
        assert!(Facts::parse("nothing").is_none());
    }

    #[test]
    fn every_script_is_valid_bash() {
        let env = [("MODEL_ID".to_string(), "o/m'; reboot".to_string())];
        for script in [
            facts(8000),
            facts(0),
            start("sl-abc", ServiceKind::Detached),
            start("sl-abc", ServiceKind::Systemd { sudo: "sudo -n " }),
            teardown("sl-abc", "5f3c2a1b-0d9e-4c7a-8b6f-123456789abc"),
            start_script(&dir("sl-abc")),
            env_file(env.iter().map(|(k, v)| (k, v)), 8000, "job"),
            running("job"),
        ] {
            let ok = std::process::Command::new("bash")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(ok.success(), "{script}");
        }
    }

    #[test]
    fn the_env_file_quotes_values_and_overrides_the_port() {
        let env = [
            ("MODEL_PORT".to_string(), "8000".to_string()),
            ("HF_TOKEN".to_string(), "a'b$(id)".to_string()),
        ];
        let text = env_file(env.iter().map(|(k, v)| (k, v)), 8042, "job-1");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{text}\nprintf '%s|%s|%s' \"$HF_TOKEN\" \"$MODEL_PORT\" \"${MARK}\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a'b$(id)|8042|job-1"
        );
    }

    #[test]
    fn the_unit_restarts_and_starts_at_boot() {
        let u = unit_file("sl-abc", "gpu", "/home/gpu");
        assert!(u.contains("ExecStart=/bin/bash /home/gpu/.skylaunch/sl-abc/start.sh"));
        assert!(u.contains("Restart=on-failure"));
        assert!(u.contains("WantedBy=multi-user.target"));
        assert!(u.contains("User=gpu"));
    }
}

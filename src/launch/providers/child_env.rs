//! The environment a provider's child process (`sky`) starts with: a cleared one plus what it
//! needs to find its tools, its home and the clouds' credentials. Never the control plane's
//! own settings (`SKYLAUNCH_*`: the admin token, API keys, database URL) or anything else an
//! operator happened to export.

use std::ffi::OsString;

/// Variables passed on by name.
const KEEP: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSH_AUTH_SOCK",
    "KUBECONFIG",
    "VIRTUAL_ENV",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Variables passed on by prefix: locale, Python, SkyPilot's own, and the clouds' SDKs.
const KEEP_PREFIXES: &[&str] = &[
    "LC_",
    "XDG_",
    "PYTHON",
    "SKYPILOT_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "CLOUDSDK_",
    "OCI_",
];

/// Whether a variable of the control plane's environment goes to a provider's child.
pub fn passed_on(name: &str) -> bool {
    !name.starts_with("SKYLAUNCH_")
        && (KEEP.contains(&name) || KEEP_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// Clears `cmd`'s environment and gives it what [`passed_on`] keeps of this process's.
pub fn apply(cmd: &mut tokio::process::Command) {
    let kept: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| name.to_str().is_some_and(passed_on))
        .collect();
    cmd.env_clear().envs(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_tools_pass_and_the_control_planes_secrets_do_not() {
        for name in [
            "PATH",
            "HOME",
            "AWS_PROFILE",
            "AZURE_CLIENT_ID",
            "SKYPILOT_DEBUG",
            "LC_ALL",
        ] {
            assert!(passed_on(name), "{name}");
        }
        for name in [
            "SKYLAUNCH_ADMIN_TOKEN",
            "SKYLAUNCH_API_KEYS",
            "SKYLAUNCH_DATABASE_URL",
            "DATABASE_URL",
            "HF_TOKEN",
            "GITHUB_TOKEN",
        ] {
            assert!(!passed_on(name), "{name}");
        }
    }
}

//! Log filtering: `RUST_LOG` as operators know it, except that the cloud SDKs' own debug and
//! trace output stays off whatever it says. At debug level the Azure SDK prints whole requests,
//! bearer tokens and the VM custom data (with the node token) included, and the AWS SDK prints
//! its signing and wire traffic; no log may ever carry a secret.

use skylaunch_protocol::LogFormat;
use tracing_subscriber::filter::EnvFilter;

/// Without `RUST_LOG`: our own `info`, and only warnings from the database driver, which logs
/// every slow statement at `info`.
const DEFAULT: &str = "info,sqlx=warn";

/// SDK targets held at `info` or quieter, whatever `RUST_LOG` asks for them.
const SDK_CAPS: &[&str] = &[
    "azure_core=info",
    "azure_identity=info",
    "azure_mgmt_compute=info",
    "aws_smithy_runtime=info",
    "aws_smithy_runtime_api=info",
    "aws_smithy_http=info",
    "aws_sigv4=info",
    "aws_config=info",
    "aws_sdk_ec2=info",
];

/// The filter for `rust_log` (the `RUST_LOG` value, if set), with the SDK caps applied last so
/// they win over anything it says about those targets.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    skylaunch_protocol::logging::filter(rust_log, DEFAULT, SDK_CAPS)
}

/// Installs the process's log subscriber (stderr, `format`) with this filter.
pub fn init(format: LogFormat) {
    skylaunch_protocol::logging::init(format, DEFAULT, SDK_CAPS);
}

/// As [`init`], with warnings only unless `RUST_LOG` says otherwise: for a command whose output
/// is its answer (`skylaunch doctor`).
pub fn init_quiet(format: LogFormat) {
    skylaunch_protocol::logging::init(format, "warn", SDK_CAPS);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_with(rust_log: &str) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::filter(Some(rust_log)))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "azure_core::policies::transport", "Authorization: Bearer eyJ-secret");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "wire: UserData=c2VjcmV0");
            tracing::warn!(target: "azure_core::policies::retry_policy", "retrying after 429");
            tracing::debug!(target: "skylaunch::launch", "our own debug line");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn sdk_debug_output_stays_off_whatever_rust_log_says() {
        for rust_log in [
            "trace",
            "debug",
            "azure_core=trace,aws_smithy_runtime=trace,debug",
        ] {
            let logged = logged_with(rust_log);
            assert!(!logged.contains("eyJ-secret"), "{rust_log}: {logged}");
            assert!(!logged.contains("c2VjcmV0"), "{rust_log}: {logged}");
            assert!(
                logged.contains("retrying after 429"),
                "SDK warnings still show"
            );
            assert!(
                logged.contains("our own debug line"),
                "{rust_log}: ours follow RUST_LOG"
            );
        }
    }
}

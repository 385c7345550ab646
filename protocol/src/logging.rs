//! The log set-up of both binaries: to stderr, human-readable or one JSON object a line, at the
//! levels `RUST_LOG` asks for, with caps a binary can add that `RUST_LOG` cannot lift.

use tracing_subscriber::filter::{Directive, EnvFilter};

/// `--log-format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    // (`//`, not `///`: clap would show variant docs in `--help`.)
    // Text for a terminal or journald.
    Human,
    // One JSON object a line, the event's fields at the top level, for log collectors.
    Json,
}

/// The filter for `rust_log` (the `RUST_LOG` value, if set and valid; else `default`), with
/// `caps` (directives such as `"azure_core=info"`) applied last so they win over anything
/// `rust_log` says about those targets.
pub fn filter(rust_log: Option<&str>, default: &str, caps: &[&str]) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    for cap in caps {
        filter = filter.add_directive(cap.parse::<Directive>().expect("static directive"));
    }
    filter
}

/// Installs the process's log subscriber: [`filter`] of the `RUST_LOG` environment variable,
/// written to stderr in `format`. Call once, first thing in `main`.
pub fn init(format: LogFormat, default: &str, caps: &[&str]) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref(), default, caps))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
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

    fn logged_with(rust_log: Option<&str>) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::filter(rust_log, "info", &["noisy=warn"]))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "noisy::inner", "noisy info");
            tracing::warn!(target: "noisy::inner", "noisy warning");
            tracing::info!(target: "ours", "our info");
            tracing::debug!(target: "ours", "our debug");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn rust_log_sets_the_level_and_caps_win() {
        let logged = logged_with(None);
        assert!(logged.contains("our info") && !logged.contains("our debug"));
        let logged = logged_with(Some("not a [valid filter"));
        assert!(logged.contains("our info") && !logged.contains("our debug"));
        let logged = logged_with(Some("debug,noisy=trace"));
        assert!(logged.contains("our debug"), "{logged}");
        assert!(!logged.contains("noisy info"), "{logged}");
        assert!(logged.contains("noisy warning"), "{logged}");
    }
}

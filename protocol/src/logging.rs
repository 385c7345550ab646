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
    use tracing::Level;

    /// Which of our own debug, a capped target's info and its warning `rust_log` lets through.
    fn enabled_with(rust_log: Option<&str>) -> (bool, bool, bool) {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::filter(rust_log, "info", &["noisy=warn"]))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "ours", Level::DEBUG),
                tracing::enabled!(target: "noisy::inner", Level::INFO),
                tracing::enabled!(target: "noisy::inner", Level::WARN),
            )
        })
    }

    #[test]
    fn rust_log_sets_the_level_and_caps_win() {
        assert_eq!(enabled_with(None), (false, false, true), "the default");
        assert_eq!(
            enabled_with(Some("not a [valid filter")),
            (false, false, true),
            "an unreadable RUST_LOG falls back to the default"
        );
        assert_eq!(
            enabled_with(Some("debug,noisy=trace")),
            (true, false, true),
            "RUST_LOG cannot lift a cap"
        );
    }
}

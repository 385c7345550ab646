//! Durations in command-line flags and their environment variables.

use std::time::Duration;

/// Parses a positive duration such as `500ms`, `5s`, `2m`, `1h` or `1m 30s` (clap's
/// `value_parser` for every duration flag of both binaries).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{s:?} must be a positive duration")),
        Err(e) => Err(format!(
            "{s:?} is not a duration ({e}): use e.g. 500ms, 5s, 2m, 1h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "0s", "-1s", "5", "x", "fast", "5 parsecs", "3 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

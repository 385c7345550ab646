//! Wall-clock time as Unix milliseconds (what the database stores) and its RFC 3339 form
//! (what the API shows), and durations written for people.

use time::macros::format_description;
use time::OffsetDateTime;

/// Read straight from the system clock: the load balancer asks on every request, and building
/// a calendar date for it cost more than the rest of its bookkeeping.
pub fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_millis() as i64,
        Err(before) => -(before.duration().as_millis() as i64),
    }
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-22T20:42:45.123Z`.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Serialises optional millisecond timestamps as RFC 3339 strings (or null).
pub mod serde_opt_rfc3339 {
    pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
            None => s.serialize_none(),
        }
    }
}

/// Unix milliseconds of an RFC 3339 timestamp (any offset, any fraction of a second).
pub fn parse_rfc3339(text: &str) -> Result<i64, time::error::Parse> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|dt| (dt.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Reads back what `serde_opt_rfc3339` wrote (stored JSON documents round-trip).
pub fn de_opt_rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_rfc3339(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// Serialises millisecond timestamps as RFC 3339 strings.
pub mod serde_rfc3339 {
    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }
}

/// A duration for a message: whole seconds as `30 s`, anything finer in milliseconds.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_renders_utc_milliseconds() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
    }
}

//! The limits the control plane holds agents' bodies to before anything is stored: every text
//! bounded and free of control characters, URLs that can be routed to, labels shaped like
//! Kubernetes label keys. The checks of single fields are public so the control plane's other
//! bodies (an admin's new node) are held to the same rules.

use std::collections::BTreeMap;
use std::fmt;

use crate::{HeartbeatReport, Registration};

/// A body field that breaks a limit: which field, and a message for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

/// A required text: not blank, at most `max` bytes, no control characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(field, format!("`{field}` must not be empty")));
    }
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(())
}

/// An agent's free text (an error, a notice's detail): only its length is bounded.
fn check_optional(field: &str, value: Option<&str>, max: usize) -> Result<(), Invalid> {
    match value {
        Some(v) if v.len() > max => Err(Invalid::new(
            field,
            format!("`{field}` is longer than {max} characters"),
        )),
        _ => Ok(()),
    }
}

/// An `http://` or `https://` URL with a host, at most 2048 bytes, without white space.
pub fn check_endpoint_url(field: &str, url: &str) -> Result<(), Invalid> {
    check_text(field, url, 2048)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(Invalid::new(
            field,
            format!("`{field}` must be an http:// or https:// URL with a host, got {url:?}"),
        )),
    }
}

/// At most 64 labels; keys of 1-63 letters, digits, `-`, `_`, `.` or `/`; values of at most
/// 256 bytes without control characters.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > 64 {
        return Err(Invalid::new("labels", "at most 64 labels are allowed"));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(Invalid::new(
                "labels",
                format!(
                    "label key {key:?} is invalid: use 1-63 letters, digits, '-', '_', '.' or '/'"
                ),
            ));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(Invalid::new(
                "labels",
                format!("label {key:?} has a value longer than 256 characters or with control characters"),
            ));
        }
    }
    Ok(())
}

impl Registration {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_text("provider", &self.provider, 64)?;
        check_text("region", &self.region, 128)?;
        if let Some(zone) = &self.zone {
            check_text("zone", zone, 128)?;
        }
        check_text("model_name", &self.model_name, 256)?;
        check_endpoint_url("endpoint_url", &self.endpoint_url)?;
        check_text("gpu_type", &self.gpu_type, 64)?;
        check_text("instance_type", &self.instance_type, 128)?;
        if let Some(version) = &self.agent_version {
            check_text("agent_version", version, 64)?;
        }
        if self.gpu_count == Some(0) || self.gpu_count.is_some_and(|n| n > 64) {
            return Err(Invalid::new(
                "gpu_count",
                "`gpu_count` must be between 1 and 64",
            ));
        }
        if let Some(labels) = &self.labels {
            check_labels(labels)?;
        }
        Ok(())
    }
}

impl HeartbeatReport {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.health_score) {
            return Err(Invalid::new(
                "health_score",
                format!(
                    "`health_score` must be a number from 0.0 to 1.0, got {}",
                    self.health_score
                ),
            ));
        }
        // Every text is bounded: the report is kept on the node, in memory and in the change
        // feed, for every node.
        if let Some(notice) = &self.spot_interruption {
            check_text("spot_interruption.source", &notice.source, 32)?;
            check_text("spot_interruption.action", &notice.action, 64)?;
            check_optional("spot_interruption.time", notice.time.as_deref(), 64)?;
            check_optional("spot_interruption.detail", notice.detail.as_deref(), 512)?;
        }
        if let Some(server) = &self.model_server {
            check_optional("model_server.error", server.error.as_deref(), 512)?;
            let models = server.models.as_deref().unwrap_or_default();
            if models.len() > 16 {
                return Err(Invalid::new(
                    "model_server.models",
                    "at most 16 models may be reported",
                ));
            }
            for model in models {
                check_optional("model_server.models", Some(model), 256)?;
            }
        }
        if let Some(gpu) = &self.gpu {
            check_optional("gpu.name", gpu.name.as_deref(), 128)?;
        }
        check_optional("agent_version", self.agent_version.as_deref(), 64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_need_http_scheme_and_host() {
        assert!(check_endpoint_url("endpoint_url", "http://10.0.0.5:8000").is_ok());
        assert!(check_endpoint_url("endpoint_url", "https://x.example/v1").is_ok());
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http:///x",
            "10.0.0.5:8000",
            "http://a b",
        ] {
            assert!(check_endpoint_url("endpoint_url", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn health_score_outside_unit_interval_is_invalid() {
        let mut hb: HeartbeatReport = serde_json::from_str(r#"{"health_score": 0.5}"#).unwrap();
        assert!(hb.validate().is_ok());
        for bad in [-0.01, 1.01, 7.0] {
            hb.health_score = bad;
            match hb.validate() {
                Err(Invalid { field, .. }) => assert_eq!(field, "health_score"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn label_keys_are_restricted() {
        let mut labels = BTreeMap::new();
        labels.insert("team/ml".to_string(), "a".to_string());
        assert!(check_labels(&labels).is_ok());
        labels.insert("bad key".to_string(), "a".to_string());
        assert!(check_labels(&labels).is_err());
    }

    #[test]
    fn registration_limits_name_the_field() {
        let reg: Registration = serde_json::from_str(
            r#"{"provider": "aws", "region": "us-east-1", "model_name": "m",
                "endpoint_url": "http://10.0.0.5:8000", "gpu_type": "L4",
                "instance_type": "g6.xlarge", "spot_instance": false}"#,
        )
        .unwrap();
        assert_eq!(reg.validate(), Ok(()));
        let bad = Registration {
            gpu_count: Some(0),
            ..reg.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "gpu_count");
        let bad = Registration {
            region: "us\neast".into(),
            ..reg
        };
        assert_eq!(bad.validate().unwrap_err().field, "region");
    }
}

//! Spot interruption notices: AWS IMDSv2 `spot/instance-action` and Azure Scheduled Events
//! `Preempt`. A watcher polls the provider's endpoint and publishes the first notice it sees.

use std::time::Duration;

use serde_json::Value;
use skylaunch_protocol::SpotNotice;
use tokio::sync::watch;

use crate::discover::{aws_metadata, aws_token, fetch_text};

/// AWS answers 404 until a notice exists, then `{"action": "terminate", "time": "..."}`.
pub fn parse_aws_instance_action(body: &str) -> Option<SpotNotice> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some(SpotNotice {
        source: "aws".into(),
        action: v["action"].as_str()?.to_string(),
        time: v["time"].as_str().map(str::to_string),
        detail: None,
    })
}

/// Azure lists scheduled events; only `Preempt` is a spot eviction.
pub fn parse_azure_scheduled_events(body: &str) -> Option<SpotNotice> {
    let v: Value = serde_json::from_str(body).ok()?;
    let event = v["Events"]
        .as_array()?
        .iter()
        .find(|e| e["EventType"] == "Preempt")?;
    Some(SpotNotice {
        source: "azure".into(),
        action: "preempt".into(),
        time: event["NotBefore"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        detail: event["EventId"].as_str().map(|id| format!("event {id}")),
    })
}

/// One poll; `None` when there is no notice or the endpoint cannot be read.
pub async fn poll(
    http: &reqwest::Client,
    provider: &str,
    imds: &str,
    timeout: Duration,
) -> Option<SpotNotice> {
    match provider {
        "aws" => {
            let token = aws_token(http, imds, timeout).await?;
            let body = aws_metadata(http, imds, &token, "spot/instance-action", timeout).await?;
            parse_aws_instance_action(&body)
        }
        "azure" => {
            let req = http
                .get(format!(
                    "{imds}/metadata/scheduledevents?api-version=2020-07-01"
                ))
                .header("Metadata", "true");
            parse_azure_scheduled_events(&fetch_text(req, timeout).await?)
        }
        _ => None,
    }
}

/// Polls every `every` until a notice appears, then publishes it and stops.
pub fn watch_for_notice(
    http: reqwest::Client,
    provider: String,
    imds: String,
    every: Duration,
    timeout: Duration,
) -> watch::Receiver<Option<SpotNotice>> {
    let (tx, rx) = watch::channel(None);
    if provider != "aws" && provider != "azure" {
        return rx;
    }
    tokio::spawn(async move {
        loop {
            if let Some(notice) = poll(&http, &provider, &imds, timeout).await {
                tracing::warn!(source = %notice.source, action = %notice.action, time = ?notice.time, "spot interruption notice received; reporting it now");
                let _ = tx.send(Some(notice));
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_instance_action_is_a_notice() {
        let n =
            parse_aws_instance_action(r#"{"action": "terminate", "time": "2026-11-22T20:00:00Z"}"#)
                .unwrap();
        assert_eq!(n.source, "aws");
        assert_eq!(n.action, "terminate");
        assert_eq!(n.time.as_deref(), Some("2026-11-22T20:00:00Z"));
        assert_eq!(
            parse_aws_instance_action("<html>404 - Not Found</html>"),
            None
        );
    }

    #[test]
    fn only_azure_preempt_events_are_notices() {
        let freeze = r#"{"DocumentIncarnation": 2, "Events": [{"EventId": "a", "EventType": "Freeze", "NotBefore": "Mon, 19 Sep 2026 18:29:47 GMT"}]}"#;
        assert_eq!(parse_azure_scheduled_events(freeze), None);
        let preempt = r#"{"DocumentIncarnation": 3, "Events": [
            {"EventId": "a", "EventType": "Reboot", "NotBefore": ""},
            {"EventId": "B1", "EventType": "Preempt", "ResourceType": "VirtualMachine", "NotBefore": "Mon, 19 Sep 2026 18:29:47 GMT"}]}"#;
        let n = parse_azure_scheduled_events(preempt).unwrap();
        assert_eq!(n.source, "azure");
        assert_eq!(n.action, "preempt");
        assert_eq!(n.time.as_deref(), Some("Mon, 19 Sep 2026 18:29:47 GMT"));
        assert_eq!(parse_azure_scheduled_events(r#"{"Events": []}"#), None);
    }
}

//! What the agent can find out about its VM by itself: cloud, region, zone, instance type and
//! spot-ness from the instance metadata service (AWS IMDSv2, Azure IMDS), and its private IP.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub provider: String,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub spot: Option<bool>,
    pub private_ip: Option<String>,
}

/// How long `auto` waits for each metadata service to answer at all. Off-cloud, 169.254.169.254
/// is usually a black hole, so this bounds how long a local start is delayed.
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Finds the identity for `provider` (`auto` tries AWS, then Azure, then settles on `local`).
pub async fn identity(
    http: &reqwest::Client,
    provider: &str,
    imds: &str,
    timeout: Duration,
) -> Identity {
    let detect = timeout.min(DETECT_TIMEOUT);
    let found = match provider {
        "auto" => match aws(http, imds, detect, timeout).await {
            Some(id) => Some(id),
            None => azure(http, imds, detect).await,
        },
        "aws" => aws(http, imds, timeout, timeout).await,
        "azure" => azure(http, imds, timeout).await,
        _ => None,
    };
    found.unwrap_or_else(|| Identity {
        provider: if provider == "auto" {
            "local".into()
        } else {
            provider.into()
        },
        ..Identity::default()
    })
}

/// The body of a successful answer; `None` for a failed request, a non-2xx status or an empty
/// body. Local endpoints (metadata, model server) either answer quickly or not at all.
pub async fn fetch_text(req: reqwest::RequestBuilder, timeout: Duration) -> Option<String> {
    let res = req.timeout(timeout).send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.text().await.ok().filter(|t| !t.trim().is_empty())
}

/// An IMDSv2 session token, or `None` when this is not an AWS VM.
pub async fn aws_token(http: &reqwest::Client, imds: &str, timeout: Duration) -> Option<String> {
    let req = http
        .put(format!("{imds}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600");
    fetch_text(req, timeout).await
}

/// An AWS metadata value, read with an IMDSv2 session token.
pub async fn aws_metadata(
    http: &reqwest::Client,
    imds: &str,
    token: &str,
    path: &str,
    timeout: Duration,
) -> Option<String> {
    let req = http
        .get(format!("{imds}/latest/meta-data/{path}"))
        .header("X-aws-ec2-metadata-token", token);
    fetch_text(req, timeout).await.map(|t| t.trim().to_string())
}

/// `detect` bounds the first request (is this AWS at all?); once it answers, the reads get the
/// full probe timeout.
async fn aws(
    http: &reqwest::Client,
    imds: &str,
    detect: Duration,
    timeout: Duration,
) -> Option<Identity> {
    let token = aws_token(http, imds, detect).await?;
    let get = |path: &'static str| aws_metadata(http, imds, &token, path, timeout);
    let (region, zone, instance_type, life_cycle, private_ip) = tokio::join!(
        get("placement/region"),
        get("placement/availability-zone"),
        get("instance-type"),
        get("instance-life-cycle"),
        get("local-ipv4"),
    );
    Some(Identity {
        provider: "aws".into(),
        region,
        zone,
        instance_type,
        spot: life_cycle.map(|l| l == "spot"),
        private_ip,
    })
}

async fn azure(http: &reqwest::Client, imds: &str, timeout: Duration) -> Option<Identity> {
    let req = http
        .get(format!("{imds}/metadata/instance?api-version=2021-02-01"))
        .header("Metadata", "true");
    let body = fetch_text(req, timeout).await?;
    Some(parse_azure_instance(&serde_json::from_str(&body).ok()?))
}

pub fn parse_azure_instance(v: &Value) -> Identity {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let compute = &v["compute"];
    Identity {
        provider: "azure".into(),
        region: text(&compute["location"]),
        zone: text(&compute["zone"]),
        instance_type: text(&compute["vmSize"]),
        spot: compute["priority"]
            .as_str()
            .map(|p| p.eq_ignore_ascii_case("spot")),
        private_ip: text(&v["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"]),
    }
}

/// The port of a URL like `http://host:8000/x` (80/443 by default).
pub fn url_port(url: &str) -> u16 {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(if scheme == "https" { 443 } else { 80 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_instance_metadata_is_read() {
        let v = serde_json::json!({
            "compute": {"location": "eastus", "zone": "1", "vmSize": "Standard_NC24ads_A100_v4", "priority": "Spot"},
            "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4"}]}}]}
        });
        let id = parse_azure_instance(&v);
        assert_eq!(id.region.as_deref(), Some("eastus"));
        assert_eq!(id.zone.as_deref(), Some("1"));
        assert_eq!(
            id.instance_type.as_deref(),
            Some("Standard_NC24ads_A100_v4")
        );
        assert_eq!(id.spot, Some(true));
        assert_eq!(id.private_ip.as_deref(), Some("10.0.0.4"));
        let regular = parse_azure_instance(
            &serde_json::json!({"compute": {"location": "westus", "zone": "", "priority": "Regular"}}),
        );
        assert_eq!(regular.spot, Some(false));
        assert_eq!(regular.zone, None);
    }

    #[test]
    fn endpoint_port_comes_from_the_model_server_url_or_its_scheme() {
        assert_eq!(url_port("http://127.0.0.1:8000"), 8000);
        assert_eq!(url_port("http://localhost:9000/v1"), 9000);
        assert_eq!(url_port("http://host"), 80);
        assert_eq!(url_port("https://host/x"), 443);
    }
}

//! The control plane under test: started for real on 127.0.0.1:0, restarted gracefully or as
//! after a crash, and asked over HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use skylaunch::app::Running;
use skylaunch::config::ServeConfig;

use super::{test_config, Backend, TestDb};

pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    pub config: ServeConfig,
    pub db: TestDb,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        let db = TestDb::new(backend).await?;
        let config = test_config(&db);
        Some(TestApp::start(db, config).await)
    }

    pub async fn start(db: TestDb, config: ServeConfig) -> TestApp {
        // Server logs appear in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,sqlx=warn")
            .with_test_writer()
            .try_init();
        let running = Running::start(config.clone())
            .await
            .expect("control plane starts");
        TestApp {
            base: running.base_url(),
            running: Some(running),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            config,
            db,
        }
    }

    /// Graceful stop, then a fresh process-equivalent start on the same database.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// As [`TestApp::restart`], with settings changed for the new start.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        self.running.take().expect("running").shutdown().await;
        tweak(&mut self.config);
        TestApp::start(self.db, self.config).await
    }

    /// Stop without flushing anything (as `kill -9` would), then start again.
    pub async fn crash_and_restart(self) -> TestApp {
        self.crash_and_restart_with(|_| {}).await
    }

    /// As [`TestApp::crash_and_restart`], with settings changed for the new start.
    pub async fn crash_and_restart_with(mut self, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        self.running.take().expect("running").abort().await;
        tweak(&mut self.config);
        TestApp::start(self.db, self.config).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request reaches the server");
        let status = res.status();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `GET /admin/providers` (with `?refresh=true` first when `refresh`), polled (bounded)
    /// until `provider`'s check has a verdict and none is under way; that verdict.
    pub async fn provider_verdict(&self, provider: &str, refresh: bool) -> Value {
        let mut query = if refresh { "?refresh=true" } else { "" };
        for _ in 0..600 {
            let r = self
                .get(
                    &format!("/admin/providers{query}"),
                    Some(super::ADMIN_TOKEN),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            query = "";
            let verdict = r.body["providers"]
                .as_array()
                .expect("a providers list")
                .iter()
                .find(|p| p["provider"] == provider)
                .cloned()
                .unwrap_or_else(|| panic!("no verdict for {provider}: {}", r.body));
            if verdict["checking"] == false && verdict["checked_at"].is_string() {
                return verdict;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the {provider} check never finished");
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `PUT` with the admin token and a JSON body.
    pub async fn put_admin(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .put(self.url(path))
                .bearer_auth(super::ADMIN_TOKEN)
                .json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.delete(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }
}

/// The value of one series (its name and labels as the page writes them, e.g.
/// `x_total{reason="y"}`) in a `/metrics` page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

impl TestApp {
    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body")
    }
}

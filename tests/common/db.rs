//! A fresh database per test (a SQLite file or a PostgreSQL schema) and the settings tests run
//! the control plane with.

use std::time::Duration;

use skylaunch::config::{Secret, ServeConfig};
use sqlx::Connection;

use super::{in_ci, Backend, ADMIN_TOKEN};

fn postgres_admin_url() -> String {
    std::env::var("SKYLAUNCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh, empty database for one test; a PostgreSQL schema is dropped when it goes away.
pub struct TestDb {
    pub url: String,
    pub data_dir: tempfile::TempDir,
    schema: Option<String>,
}

impl TestDb {
    /// `None` when PostgreSQL is unreachable outside CI (after a loud message); under `CI=true`
    /// a missing PostgreSQL fails the test.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let data_dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.path().join("test.db").display()
                ),
                data_dir,
                schema: None,
            }),
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = match tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&admin),
                )
                .await
                {
                    Ok(Ok(conn)) => conn,
                    failure => {
                        let why = match failure {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        if in_ci() {
                            panic!("PostgreSQL is required under CI=true but {admin} is not reachable: {why}");
                        }
                        eprintln!("\n!!! SKIPPED: PostgreSQL test, {admin} is not reachable ({why}); set SKYLAUNCH_TEST_POSTGRES_URL or start PostgreSQL\n");
                        return None;
                    }
                };
                let schema = format!("sl_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                let sep = if admin.contains('?') { '&' } else { '?' };
                Some(TestDb {
                    url: format!("{admin}{sep}options=-c%20search_path%3D{schema}"),
                    data_dir,
                    schema: Some(schema),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee, so use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Settings for tests: health timings of seconds, so silence-driven changes happen within a test.
pub fn test_config(db: &TestDb) -> ServeConfig {
    let mut config = ServeConfig::defaults();
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.data_dir = db.data_dir.path().to_path_buf();
    config.database_url = Some(db.url.clone());
    config.admin_token = Some(Secret(ADMIN_TOKEN.to_string()));
    // Wide enough that a test pausing under CI load does not see its node swept; the sweeper's
    // own test narrows them.
    config.heartbeat_interval = Duration::from_secs(1);
    config.missed_heartbeats = 3;
    config.offline_after = Duration::from_secs(5);
    config.sweep_interval = Duration::from_millis(50);
    config.telemetry_flush_interval = Duration::from_millis(200);
    config.teardown_retry_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(5);
    // Whatever a test does, the providers' checks (GET /admin/providers, the Launch dialog)
    // reach nothing beyond loopback: no `sky` from this machine, EC2 on a closed local port, and
    // the AWS SDK never asking the instance metadata service for credentials. Tests of a
    // provider set its stand-in.
    config.sky_bin = "/nonexistent/skylaunch-tests/sky".into();
    config.aws_endpoint_url = Some("http://127.0.0.1:9".into());
    static NO_METADATA_SERVICE: std::sync::Once = std::sync::Once::new();
    NO_METADATA_SERVICE.call_once(|| std::env::set_var("AWS_EC2_METADATA_DISABLED", "true"));
    config
}

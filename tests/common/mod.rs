//! Test harness: starts the real control plane on 127.0.0.1:0 against a fresh SQLite file or a
//! fresh PostgreSQL schema, with HTTP helpers named after the routes. Shared by the server's and
//! the agent's integration tests (`#[path]`-included there).
#![allow(dead_code, unused_imports)]

mod app;
mod cloud;
mod db;
mod deployments;
pub use deployments::{node_ids, ChatLoad};
mod launches;
mod nodes;
pub mod sshd;

pub use app::{metric_value, Reply, TestApp};
pub use cloud::{moto, Moto};
pub use db::{test_config, TestDb};
pub use launches::{job_finished, sky_python};
pub use nodes::{healthy, registration};
pub use sshd::Sshd;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend, as `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

//! skylaunch: a control plane that launches GPU VMs for LLM model servers, keeps each node's
//! health from its agent's heartbeats, and routes traffic only to healthy nodes.

pub mod admin_token;
pub mod api;
pub mod app;
pub mod background;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod echo_server;
pub mod fleet;
pub mod hosts;
pub mod http;
pub mod keys;
pub mod launch;
pub mod logging;
pub mod metrics;
pub mod routing;
pub mod ssh;
pub mod store;
pub mod usage;

//! `skylaunch-agent`: runs on each VM beside the model server. Exit codes: 0 stopped by a signal,
//! 1 other failure, 2 bad configuration, 3 token rejected, 4 node deleted on the control plane (or
//! told to stop by it).

mod agent;
mod client;
mod config;
mod discover;
mod gpu;
mod probe;
mod score;
mod spot;

use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;

use crate::agent::{Agent, Stop};
use crate::client::CallError;
use crate::config::Config;

const EXIT_FAILURE: u8 = 1;
const EXIT_UNAUTHORIZED: u8 = 3;
const EXIT_NODE_GONE: u8 = 4;

fn main() -> ExitCode {
    let config = Config::parse();
    // `RUST_LOG` as usual, `info` without it; the agent has no noisy dependencies to cap.
    skylaunch_protocol::logging::init(config.log_format, "info", &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let node_id = config.node_id.clone();
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => return fail(EXIT_FAILURE, &format!("cannot build the HTTP client: {e}")),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        let _ = stop_tx.send(true);
    });
    match agent.run(stop_rx).await {
        Stop::Signalled => ExitCode::SUCCESS,
        Stop::Fatal(CallError::Unauthorized(status)) => fail(
            EXIT_UNAUTHORIZED,
            &format!("the control plane rejected this node's token (HTTP {status}): check SKYLAUNCH_NODE_TOKEN for node {node_id}"),
        ),
        Stop::Fatal(CallError::Gone) => fail(
            EXIT_NODE_GONE,
            &format!("node {node_id} no longer exists on the control plane (deleted); stopping"),
        ),
        // Same exit as a deleted node: systemd must not restart an agent it was told to stop.
        Stop::Told => fail(
            EXIT_NODE_GONE,
            &format!("the control plane asked node {node_id} to stop; stopping"),
        ),
        Stop::Fatal(e) => fail(EXIT_FAILURE, &e.to_string()),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    tracing::error!(exit_code = code, "{message}");
    eprintln!("skylaunch-agent: {message}");
    ExitCode::from(code)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! The `skylaunch` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skylaunch::app::Running;
use skylaunch::cli;
use skylaunch::config::{LogFormat, ServeConfig};

/// mimalloc rather than glibc's malloc: the load balancer allocates and frees small buffers on
/// every request from two threads, where glibc's allocator cost about a tenth of the proxy's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skylaunch",
    version,
    about = "Launch GPU VMs for LLM model servers and keep them serving"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: admin API, node registry, health sweeper and web UI.
    Serve(Box<ServeConfig>),
    /// Launch a node through a running control plane (`--follow` shows its stages live).
    Launch(Box<cli::LaunchArgs>),
    /// List launch jobs.
    Jobs(cli::ClientArgs),
    /// List nodes.
    Nodes(cli::ClientArgs),
    /// Create or update a deployment from flags or a YAML/JSON file (`--wait` follows it until it
    /// serves).
    Deploy(Box<cli::DeployArgs>),
    /// List deployments; `show`, `scale`, `retry`, `rollback` or `delete` one.
    Deployments(cli::DeploymentsArgs),
    /// List the deployments' actions (pending ones by default); `approve` or `reject` one.
    Actions(cli::ActionsArgs),
    /// Check whether each provider (SkyPilot, AWS, Azure, SSH hosts, local) can launch from
    /// this machine with these settings (the same flags and environment as `serve`), and what
    /// to do where one cannot. Exit code 1 when only local can.
    Doctor(Box<cli::DoctorArgs>),
    /// Run the built-in echo model server (OpenAI-compatible; echoes prompts, not a real model).
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        model: String,
        /// API key its `/v1` routes want (as vLLM's `--api-key`); the environment variable
        /// keeps it out of the process list.
        #[arg(long, env = "SKYLAUNCH_MODEL_SERVER_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Writes the port it listens on to this file once listening (for `--listen` port 0).
        #[arg(long)]
        port_file: Option<std::path::PathBuf>,
        /// Milliseconds every chat answer takes (a stand-in for a model's latency).
        #[arg(long, env = "ECHO_DELAY_MS", default_value_t = 0)]
        delay_ms: u64,
        /// Milliseconds added per chat request answered at the same time (latency rising
        /// with concurrency).
        #[arg(long, env = "ECHO_DELAY_PER_REQUEST_MS", default_value_t = 0)]
        delay_per_request_ms: u64,
        /// A vLLM-like service model for chat answers (off while these three are 0):
        /// microseconds of prefill per prompt token (a prompt's words are its tokens).
        #[arg(long, env = "ECHO_PREFILL_US_PER_TOKEN", default_value_t = 0.0)]
        prefill_us_per_token: f64,
        /// Microseconds per output token after the first (`max_tokens` are made, 16 without).
        #[arg(long, env = "ECHO_DECODE_US_PER_TOKEN", default_value_t = 0.0)]
        decode_us_per_token: f64,
        /// Sequences running at once at most; the others wait in a queue that `/metrics`
        /// shows as vLLM's `vllm:num_requests_waiting`. 0: no limit.
        #[arg(long, env = "ECHO_MAX_SEQS", default_value_t = 0)]
        max_seqs: usize,
        /// Tokens the service model's prefix cache holds (16-token blocks, least recently used
        /// evicted first); a cached prompt prefix costs no prefill. 0: no prefix cache.
        #[arg(long, env = "ECHO_PREFIX_CACHE_TOKENS", default_value_t = 0)]
        prefix_cache_tokens: usize,
        /// Milliseconds before it listens (a model server loading its weights is not ready).
        #[arg(long, env = "ECHO_STARTUP_DELAY_MS", default_value_t = 0)]
        startup_delay_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match cli.command {
        Command::Serve(config) => {
            skylaunch::logging::init(config.log_format);
            match runtime.block_on(serve(*config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    tracing::error!("{message}");
                    eprintln!("skylaunch: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::EchoServer {
            listen,
            model,
            api_key,
            port_file,
            delay_ms,
            delay_per_request_ms,
            prefill_us_per_token,
            decode_us_per_token,
            max_seqs,
            prefix_cache_tokens,
            startup_delay_ms,
        } => {
            skylaunch::logging::init(LogFormat::Human);
            let options = skylaunch::echo_server::Options {
                latency: skylaunch::echo_server::Latency {
                    base_ms: delay_ms,
                    per_request_ms: delay_per_request_ms,
                },
                service: skylaunch::echo_server::ServiceModel {
                    prefill_us_per_token,
                    decode_us_per_token,
                    max_seqs,
                    prefix_cache_tokens,
                },
                startup_delay: std::time::Duration::from_millis(startup_delay_ms),
            };
            let served = skylaunch::echo_server::serve_with(
                listen,
                &model,
                api_key,
                port_file.as_deref(),
                &options,
            );
            match runtime.block_on(served) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skylaunch echo-server: cannot listen on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Launch(args) => client_outcome(runtime.block_on(cli::launch(*args))),
        Command::Jobs(args) => client_outcome(runtime.block_on(cli::jobs(args))),
        Command::Nodes(args) => client_outcome(runtime.block_on(cli::nodes(args))),
        Command::Deploy(args) => client_outcome(runtime.block_on(cli::deploy(*args))),
        Command::Deployments(args) => client_outcome(runtime.block_on(cli::deployments(args))),
        Command::Actions(args) => client_outcome(runtime.block_on(cli::actions(args))),
        Command::Doctor(args) => {
            skylaunch::logging::init_quiet(args.serve.log_format);
            client_outcome(runtime.block_on(cli::doctor(*args)))
        }
    }
}

/// Client commands: `Ok(false)` is a clean "it failed" (the reason was printed), `Err` a problem
/// talking to the control plane.
fn client_outcome(result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("skylaunch: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    let running = Running::start(config).await.map_err(|e| e.to_string())?;
    let token = running.admin_token();
    let token_source = match (&token.file, token.generated) {
        (Some(file), true) => format!("generated and stored in {}", file.display()),
        (Some(file), false) => format!("stored in {}", file.display()),
        (None, _) => "from SKYLAUNCH_ADMIN_TOKEN".to_string(),
    };
    tracing::info!(
        ui = %format!("{}/", running.base_url()),
        database = %running.database(),
        admin_token = %token_source,
        "skylaunch is up"
    );
    let ui = format!("{}/", running.base_url());
    if std::io::stdout().is_terminal() {
        // The sign-in link carries the token in the fragment (never sent to a server); the page
        // moves it to session storage and out of the address bar at once.
        println!(
            "skylaunch is up: open {ui}#token={} in your browser",
            fragment_encode(&token.value)
        );
    } else {
        println!("skylaunch is up: open {ui} in your browser and sign in with the admin token");
    }
    println!("admin token: {token_source}");
    // The token itself goes only to an interactive terminal, never into a captured log.
    if token.generated && std::io::stdout().is_terminal() {
        println!("admin token (shown once here): {}", token.value);
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// Percent-encodes everything but unreserved characters, for a URL fragment.
fn fragment_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

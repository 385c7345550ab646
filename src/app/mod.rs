//! Wiring: builds the store, the fleet, the launches, the load balancer, the API's state and
//! the HTTP server from a [`ServeConfig`], binds the listener, and owns graceful shutdown. The one place where the parts
//! meet; tests start the real service through [`Running::start`] on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod providers;

pub use providers::doctor;

use crate::admin_token;
use crate::api::state::Services;
use crate::api::ApiDispatch;
use crate::config::ServeConfig;
use crate::fleet::tasks::FleetTasks;
use crate::fleet::{Fleet, FleetError};
use crate::http::connections::Connections;
use crate::http::socket::raise_open_files_limit;
use crate::http::threads::ConnectionThreads;
use crate::launch::events::JobEvents;
use crate::launch::orphans::OrphanSweeper;
use crate::launch::runner::JobRunner;
use crate::metrics::Metrics;
use crate::routing::{Proxy, RoutingTable};
use crate::store::{redact_url, Backend, Store, StoreError};

/// The listen address, and the public URL's address when its host is an IP.
fn own_addrs(listen: SocketAddr, public_url: &str) -> Vec<SocketAddr> {
    let mut own = vec![listen];
    if let Ok(url) = url::Url::parse(public_url) {
        let ip = crate::fleet::endpoint::host_ip(&url);
        if let (Some(ip), Some(port)) = (ip, url.port_or_known_default()) {
            own.push(SocketAddr::new(ip, port));
        }
    }
    own
}

/// Listening beyond loopback means strangers can reach the admin API and `/v1`: refuse unless
/// both are locked by secrets the operator chose (a generated admin token lives only in a file
/// on this host, and `/v1` is open without keys).
pub fn check_exposure(config: &ServeConfig, managed_keys: bool) -> Result<(), String> {
    if config.listen.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if config
        .admin_token
        .as_ref()
        .is_none_or(|t| t.0.trim().is_empty())
    {
        missing.push("SKYLAUNCH_ADMIN_TOKEN (the admin token, at least 16 random characters)");
    }
    if config.api_keys.iter().all(|k| k.trim().is_empty()) && !managed_keys {
        missing.push("SKYLAUNCH_API_KEYS (comma-separated bearer keys for /v1), or a key made with POST /admin/api-keys while listening on loopback");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {}, which is reachable from other machines, without {}. Set {}, or listen on 127.0.0.1 (--listen) and put a proxy with its own auth in front",
        config.listen,
        if missing.len() == 2 { "an admin token or API keys" } else if missing[0].starts_with("SKYLAUNCH_ADMIN") { "an admin token set explicitly" } else { "API keys for /v1" },
        missing.join(" and ")
    ))
}

#[cfg(test)]
mod exposure_tests {
    use super::*;
    use crate::config::Secret;

    fn config(listen: &str, token: Option<&str>, keys: &[&str]) -> ServeConfig {
        let mut c = ServeConfig::defaults();
        c.listen = listen.parse().unwrap();
        c.admin_token = token.map(|t| Secret(t.to_string()));
        c.api_keys = keys.iter().map(|k| k.to_string()).collect();
        c
    }

    #[test]
    fn loopback_needs_nothing_set() {
        assert!(check_exposure(&config("127.0.0.1:8080", None, &[]), false).is_ok());
        assert!(check_exposure(&config("[::1]:8080", None, &[]), false).is_ok());
    }

    #[test]
    fn other_addresses_need_an_explicit_admin_token_and_api_keys() {
        let both = check_exposure(&config("0.0.0.0:8080", None, &[]), false).unwrap_err();
        assert!(
            both.contains("SKYLAUNCH_ADMIN_TOKEN") && both.contains("SKYLAUNCH_API_KEYS"),
            "{both}"
        );
        assert!(both.contains("0.0.0.0:8080"), "{both}");
        let keys = check_exposure(
            &config("10.0.0.5:8080", Some("a-long-admin-token-value"), &[""]),
            false,
        )
        .unwrap_err();
        assert!(
            keys.contains("SKYLAUNCH_API_KEYS") && !keys.contains("SKYLAUNCH_ADMIN_TOKEN"),
            "{keys}"
        );
        let token = check_exposure(&config("[::]:8080", Some(" "), &["k1"]), false).unwrap_err();
        assert!(
            token.contains("SKYLAUNCH_ADMIN_TOKEN") && !token.contains("SKYLAUNCH_API_KEYS"),
            "{token}"
        );
        assert!(check_exposure(
            &config("0.0.0.0:8080", Some("a-long-admin-token-value"), &["k1"]),
            false
        )
        .is_ok());
        // A key made through the admin API closes /v1 as well as one from the environment.
        assert!(check_exposure(
            &config("0.0.0.0:8080", Some("a-long-admin-token-value"), &[]),
            true
        )
        .is_ok());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Settings that cannot work together (or are unsafe), with what to change.
    #[error("{0}")]
    Settings(String),
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or create the admin token: {0}")]
    AdminToken(std::io::Error),
    #[error("cannot read or create the credentials key for SSH hosts: {0}")]
    CredentialsKey(std::io::Error),
    #[error("cannot open the database {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error("cannot load nodes: {0}")]
    Fleet(#[from] FleetError),
    #[error("cannot listen on {addr}: {source} (is another skylaunch running? use --listen)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the threads that serve connections: {0} (try fewer with --connection-threads)")]
    Threads(std::io::Error),
}

/// A started control plane.
pub struct Running {
    addr: SocketAddr,
    admin_token: admin_token::AdminToken,
    database: String,
    stop_server: oneshot::Sender<()>,
    stop_streams: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: FleetTasks,
    key_sync: crate::keys::sync::KeySync,
    stop_runner: tokio::sync::watch::Sender<bool>,
    runner: JoinHandle<()>,
    stop_reconciler: tokio::sync::watch::Sender<bool>,
    reconciler: JoinHandle<()>,
    job_runner: Arc<JobRunner>,
    orphans: JoinHandle<()>,
    teardowns: JoinHandle<()>,
    store: Store,
    installation_id: String,
    shutdown_timeout: std::time::Duration,
    /// Closes client connections past their deadlines while the server runs.
    _connection_sweeper: crate::background::AbortOnDrop<()>,
}

impl Running {
    pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
        // API keys made through the admin API are checked once the database is open.
        check_exposure(&config, true).map_err(StartError::Settings)?;
        if config.proxy_connect_timeout >= config.proxy_idle_timeout {
            return Err(StartError::Settings(format!(
                "--proxy-connect-timeout ({}) must be shorter than --proxy-idle-timeout ({}): a slow connection would end as a timeout instead of being retried on another node",
                humantime::format_duration(config.proxy_connect_timeout),
                humantime::format_duration(config.proxy_idle_timeout)
            )));
        }
        // The data dir is readable by this user only when made here: it holds the SQLite
        // database (with the launches' envs values) and the admin token.
        let (store, installation_id) = providers::open_store(&config).await?;
        let token = admin_token::resolve(
            config.admin_token.as_ref().map(|s| s.0.as_str()),
            &config.data_dir,
        )
        .map_err(StartError::AdminToken)?;
        let url = config.database();
        if !config.listen.ip().is_loopback() {
            let made = store
                .api_keys()
                .await
                .map_err(|source| StartError::Database {
                    url: redact_url(&url),
                    source,
                })?;
            check_exposure(&config, !made.is_empty()).map_err(StartError::Settings)?;
        }
        tracing::info!(installation_id = %installation_id, "this installation's id, tagged on every cloud resource it creates");
        let metrics = Arc::new(Metrics::default());
        let fleet_settings = config.fleet_settings();
        let fleet = Arc::new(
            Fleet::load(
                store.clone(),
                fleet_settings.health.clone(),
                metrics.clone(),
            )
            .await?,
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let binaries = providers::Binaries::of(&config);
        let agent_bin = binaries.agent.clone();
        let agent_url = config.agent_url.clone().unwrap_or_else(|| {
            format!(
                "{}/downloads/skylaunch-agent",
                public_url.trim_end_matches('/')
            )
        });
        let events = JobEvents::default();
        let hosts = providers::hosts(&config, store.clone())?;
        if let Err(e) = hosts.resume().await {
            tracing::warn!(error = %e, "could not look for hosts whose probe was interrupted");
        }
        let providers::Built { providers, clouds } =
            providers::build(&config, hosts.clone(), &binaries, &installation_id);
        // What the Launch dialog and GET /admin/providers show; the slow checks (the clouds,
        // `sky check`) start in the background when first asked for.
        let readiness = crate::launch::providers::readiness::ReadinessBoard::new(providers.clone());
        let runner = JobRunner::new(
            store.clone(),
            fleet.clone(),
            events.clone(),
            providers,
            config.runner_settings(public_url.clone(), agent_url.clone()),
        );
        let (stop_runner, runner_stopped) = tokio::sync::watch::channel(false);
        let orphan_sweeper = OrphanSweeper {
            clouds,
            store: store.clone(),
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            installation_id: installation_id.clone(),
            sweep_legacy: config.orphan_sweep_legacy,
            grace: config.orphan_grace,
            first_seen: Default::default(),
            legacy_reported: Default::default(),
        };
        let orphans_task =
            tokio::spawn(orphan_sweeper.run(config.orphan_sweep_interval, runner_stopped.clone()));
        let teardowns_task = tokio::spawn(
            crate::launch::teardown::TeardownRetrier {
                fleet: fleet.clone(),
                runner: runner.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                every: config.teardown_retry_interval,
            }
            .run(runner_stopped.clone()),
        );
        let runner_task = tokio::spawn(runner.clone().run(runner_stopped));
        // The routing table follows every node change the fleet makes, from the start.
        let table = Arc::new(RoutingTable::default());
        let watched = table.clone();
        fleet
            .watch(Arc::new(move |node: &crate::fleet::node::Node| {
                watched.update(node)
            }))
            .await;
        let node_feed = crate::fleet::feed::NodeFeed::default();
        let feed = node_feed.clone();
        fleet
            .watch(Arc::new(move |node: &crate::fleet::node::Node| {
                feed.publish(node)
            }))
            .await;
        let proxy = Arc::new(Proxy::new(
            table,
            config.proxy_settings(),
            metrics.clone(),
            fleet.clone(),
        ));
        // The deployments' reconciler: on a timer, and at once when one of their nodes changes.
        let reconciler = crate::deploy::Reconciler::new(
            store.clone(),
            fleet.clone(),
            runner.clone(),
            proxy.table.clone(),
            metrics.clone(),
            config.reconciler_settings(),
        );
        // Only a change of a replica's status wakes it, not each heartbeat's telemetry: a
        // pass covers every deployment. Held weakly: the reconciler holds the fleet, and the
        // fleet its watchers, so a strong handle here would keep both (and the database's
        // connections) alive after a stop.
        let woken = Arc::downgrade(&reconciler);
        let statuses = std::sync::Mutex::new(std::collections::HashMap::new());
        fleet
            .watch(Arc::new(move |node: &crate::fleet::node::Node| {
                if node.deployment.is_none() {
                    return;
                }
                let mut known = statuses.lock().expect("replica status lock");
                let changed = if node.status == crate::fleet::status::NodeStatus::Terminated {
                    known.remove(&node.id).is_some()
                } else {
                    known.insert(node.id.clone(), node.status) != Some(node.status)
                };
                drop(known);
                if let Some(reconciler) = woken.upgrade().filter(|_| changed) {
                    reconciler.wake();
                }
            }))
            .await;
        let (stop_reconciler, reconciler_stopped) = tokio::sync::watch::channel(false);
        let reconciler_task = tokio::spawn(reconciler.clone().run(reconciler_stopped));
        let deployments = Arc::new(crate::deploy::operations::Deployments {
            store: store.clone(),
            fleet: fleet.clone(),
            runner: runner.clone(),
            reconciler: reconciler.clone(),
        });
        let (stop_streams, stopping) = tokio::sync::watch::channel(false);
        raise_open_files_limit(config.max_connections);
        let connections = Connections::new(config.connection_settings(), &metrics);
        let connection_sweeper = connections.spawn_sweeper();
        let keys = crate::keys::Keys::load(
            store.clone(),
            config
                .api_keys
                .iter()
                .map(|k| k.trim().to_string())
                .collect(),
            metrics.clone(),
        )
        .await
        .map_err(|source| StartError::Database {
            url: redact_url(&url),
            source,
        })?;
        let state = Arc::new(Services {
            connections: connections.clone(),
            own_addrs: own_addrs(addr, &public_url),
            allow_loopback_endpoints: config.allow_loopback_endpoints,
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            runner: runner.clone(),
            deployments,
            hosts,
            readiness,
            events,
            node_feed,
            stopping,
            agent_limits: config.agent_limits(),
            admin_token: token.value.clone(),
            public_url,
            agent_url,
            agent_bin,
            proxy,
            keys: keys.clone(),
        });
        // Other processes may share a PostgreSQL database: the fleet and the keys follow their
        // changes.
        let shared_database_url = (store.backend() == Backend::Postgres).then(|| url.clone());
        let key_sync = crate::keys::sync::KeySync::spawn(keys, shared_database_url.clone());
        let tasks = FleetTasks::spawn(fleet, &fleet_settings, shared_database_url);
        let (stop_server, stopped) = oneshot::channel::<()>();
        // The model-server connections the threads kept idle are closed when they stop: no
        // runtime would drive them any more.
        let table = state.proxy.table.clone();
        let threads = ConnectionThreads::start(usize::from(config.connection_threads))
            .map_err(StartError::Threads)?
            .on_stop(move || table.close_threads_connections());
        let server = tokio::spawn(crate::http::serve(
            listener,
            connections,
            threads,
            ApiDispatch::new(state),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Running {
            addr,
            admin_token: token,
            database: redact_url(&url),
            stop_server,
            stop_streams,
            server,
            tasks,
            key_sync,
            stop_runner,
            runner: runner_task,
            stop_reconciler,
            reconciler: reconciler_task,
            job_runner: runner,
            orphans: orphans_task,
            teardowns: teardowns_task,
            store,
            installation_id,
            shutdown_timeout: config.shutdown_timeout,
            _connection_sweeper: connection_sweeper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This installation's id, as tagged on its cloud resources.
    pub fn installation_id(&self) -> &str {
        &self.installation_id
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin_token(&self) -> &admin_token::AdminToken {
        &self.admin_token
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Graceful stop: no new connections, in-flight requests finish (up to the shutdown
    /// timeout), pending telemetry is written, the database is closed.
    pub async fn shutdown(self) {
        let _ = self.stop_streams.send(true);
        let _ = self.stop_server.send(());
        let mut server = self.server;
        match tokio::time::timeout(self.shutdown_timeout, &mut server).await {
            Ok(Err(e)) => tracing::error!(error = %e, "the server failed"),
            Ok(Ok(())) => {}
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within the shutdown timeout; closing them"
                );
                server.abort();
            }
        }
        // Launches in flight stop with the process and their leases are handed back: the next
        // process to look (this one after a restart, or another on the same database) takes
        // them over at once.
        // The reconciler stops first: it queues launches the runner would otherwise take.
        let _ = self.stop_reconciler.send(true);
        let _ = self.reconciler.await;
        let _ = self.stop_runner.send(true);
        let _ = self.runner.await;
        self.job_runner.hand_back().await;
        let _ = self.orphans.await;
        let _ = self.teardowns.await;
        self.tasks.shutdown().await;
        self.key_sync.shutdown().await;
        self.store.close().await;
        tracing::info!("skylaunch stopped");
    }

    /// Stops everything at once without flushing, as a crash or `kill -9` would (for tests).
    pub async fn abort(self) {
        self.server.abort();
        let _ = self.server.await;
        self.reconciler.abort();
        self.runner.abort();
        self.orphans.abort();
        self.teardowns.abort();
        self.tasks.abort();
        self.store.close().await;
    }
}

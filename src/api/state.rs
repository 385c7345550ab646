//! What every handler reaches: the services the control plane runs (fleet, launches, load
//! balancer, store, metrics) and the settings the API applies. Built once by `app`, shared by
//! every request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::fleet::Fleet;
use crate::http::connections::Connections;
use crate::launch::events::JobEvents;
use crate::launch::runner::JobRunner;
use crate::metrics::Metrics;
use crate::routing::Proxy;
use crate::store::Store;

use super::limits::AgentLimits;

/// The handlers' state: the services, shared.
pub type AppState = Arc<Services>;

/// The services and settings the API's handlers use.
pub struct Services {
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub runner: Arc<JobRunner>,
    pub deployments: Arc<crate::deploy::operations::Deployments>,
    /// SSH hosts, for `provider: "ssh"`.
    pub hosts: Arc<crate::hosts::Hosts>,
    /// Whether each provider can launch now (the clouds' checks kept and refreshed).
    pub readiness: Arc<crate::launch::providers::readiness::ReadinessBoard>,
    pub events: JobEvents,
    /// Node changes for the web UI's live fleet view.
    pub node_feed: crate::fleet::feed::NodeFeed,
    /// Becomes true when the server starts shutting down: open event streams end then, so a
    /// graceful stop does not wait on a browser tab.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Rate limits on the agent endpoints.
    pub agent_limits: AgentLimits,
    pub admin_token: String,
    pub public_url: String,
    pub agent_url: String,
    pub agent_bin: PathBuf,
    pub proxy: Arc<Proxy>,
    /// The keys for /v1/*, from the environment and the admin API; none means open.
    pub keys: Arc<crate::keys::Keys>,
    /// Every open client connection, with its limits and timeouts.
    pub connections: Arc<Connections>,
    /// Where this control plane is reached (its listen address, and its public URL's when that
    /// names an IP address): no node may register one as its model server.
    pub own_addrs: Vec<SocketAddr>,
    /// Any node may register a loopback endpoint (stand-in VMs on this machine).
    pub allow_loopback_endpoints: bool,
}

impl Services {
    /// What a registering agent's endpoint is checked against.
    pub fn agent_origin(&self, peer: std::net::IpAddr) -> crate::fleet::endpoint::AgentOrigin {
        crate::fleet::endpoint::AgentOrigin {
            peer,
            own: self.own_addrs.clone(),
            loopback_ok: self.allow_loopback_endpoints,
        }
    }
}

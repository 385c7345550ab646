//! The OpenAI-compatible load balancer: the in-memory routing table the fleet keeps current, the
//! policy that picks a node (power of two choices, weighted by health and load), and the proxy
//! that forwards and streams requests, with retries on refused connections and passive health.

pub mod cold;
pub mod meter;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod table;
pub mod upstream;

pub use proxy::{Forwarded, Proxy, ProxyError, ProxySettings, Relay};
pub use table::{EndpointLoad, RoutingTable};

//! The HTTP/1.1 wire layer: the accept loop, our server connection loop, our client exchange
//! with model servers, the one body framing both use, header rules, the connection registry
//! (caps, timeouts, sweeper) and the connection threads; it knows no handler, only the
//! [`Dispatch`] interface the application implements.
//!
//! A request's course: [`accept`] admits the connection ([`connections`]) and puts it on a
//! connection thread ([`threads`]); [`server`] reads each request and asks [`Dispatch`] what
//! to do with it; a forwarded request goes out through [`client`] on a connection the load
//! balancer picked, and its answer streams back through [`server`] as it arrives.

mod accept;
pub mod client;
pub mod connections;
mod dispatch;
pub mod framing;
pub mod headers;
mod server;
pub mod socket;
pub mod threads;

pub use accept::serve;
pub use dispatch::{Dispatch, ForwardHead, ForwardRequest, Refusal, Reply};

//! What the skylaunch control plane and its node agent (`skylaunch-agent`) say to each other,
//! written once for both binaries: the registration and heartbeat bodies an agent sends, the
//! acknowledgement the control plane answers with, and the limits the control plane checks
//! those bodies against. Beside the wire types sit the small pieces both command lines share:
//! duration flags, the logging set-up and the one-line error text.
//!
//! Compatibility rules for changing the wire types: a field an agent may leave out is an
//! `Option` with `#[serde(default)]`; no body refuses unknown fields, so an older control plane
//! accepts a newer agent's report; and the serialised form of every existing field stays the
//! same (the control plane also shows and stores the latest heartbeat as it was sent).

mod ack;
mod duration;
mod error;
mod heartbeat;
pub mod logging;
mod registration;
pub mod validate;

pub use ack::{AgentAck, Desired};
pub use duration::parse_duration;
pub use error::error_chain;
pub use heartbeat::{GpuReport, HeartbeatReport, ModelServerReport, QueueReport, SpotNotice};
pub use logging::LogFormat;
pub use registration::Registration;
pub use validate::Invalid;

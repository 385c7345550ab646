//! Deployments: a model kept serving by N replicas that skylaunch launches, heals, replaces on
//! spot notices and rolls to new revisions by itself.
//!
//! - [`spec`]: the desired state as the API takes it, and its validation;
//! - [`model`]: deployments and actions as stored, and deterministic action ids;
//! - [`plan`]: the pure comparison of desired and actual state;
//! - [`autoscale`]: the pure autoscaling decision (a metric against its target, with a band and
//!   delays);
//! - [`reconciler`]: the loop that observes, plans and acts;
//! - [`operations`]: what the admin API asks (create, update, scale, retry, roll back, delete,
//!   approve and reject actions), and the deployment view it answers with;
//! - `store.rs`: the rows.
//!
//! Replicas are ordinary nodes launched through launch jobs, tagged with their deployment,
//! revision and slot; everything about launches (stages, failures, teardown, orphans) applies.

pub mod autoscale;
pub mod model;
pub mod operations;
pub mod plan;
pub mod reconciler;
pub mod spec;
mod store;

pub use operations::{DeployError, DeploymentView};
pub use reconciler::{Reconciler, ReconcilerSettings};

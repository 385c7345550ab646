//! Native Azure launches (issue 4), in progress: the VM-size catalogue and the ARM error mapping
//! exist and are tested; the provider that calls Azure is not built yet, so
//! `provider: "azure"` is still refused at validation.

pub mod catalog;
pub mod errors;

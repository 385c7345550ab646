//! `provider: "azure"`: native Azure launches through the Azure SDK for Rust (the VM-size
//! catalogue and the request checks on it, the settings and their checks, what ARM errors mean
//! for a launch, reading ARM documents, the ARM client, the provider, and the orphan inventory).
//! Without the `azure` cargo feature only the parts that need no SDK are built, and
//! `provider: "azure"` is refused when a launch is created.

use crate::launch::providers::placement::NativeCloud;

#[cfg(feature = "azure")]
pub mod arm;
pub mod catalog;
pub mod explain;
#[cfg(feature = "azure")]
pub mod orphans;
#[cfg(feature = "azure")]
pub mod provider;
#[cfg(feature = "azure")]
pub mod readiness;
pub mod resources;
pub mod settings;

#[cfg(feature = "azure")]
pub use provider::AzureProvider;
pub use settings::AzureSettings;

/// The request checks of `provider: "azure"`: launches on Azure, on a VM size from the table.
pub const REQUESTS: NativeCloud = NativeCloud {
    cloud: "azure",
    label: "Azure",
    machines: catalog::VM_SIZES,
};

//! `provider: "azure"`: native Azure launches through the Azure SDK for Rust (the VM-size
//! catalogue, the settings and their checks, the ARM error mapping, reading ARM documents, the ARM client, the provider,
//! and the orphan inventory). Without the `azure` cargo feature only the parts that need no SDK
//! are built, and `provider: "azure"` is refused at validation.

#[cfg(feature = "azure")]
pub mod arm;
pub mod catalog;
pub mod errors;
#[cfg(feature = "azure")]
pub mod orphans;
#[cfg(feature = "azure")]
pub mod provider;
pub mod resources;
pub mod settings;

#[cfg(feature = "azure")]
pub use provider::AzureProvider;
pub use settings::AzureSettings;

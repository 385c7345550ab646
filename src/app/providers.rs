//! The providers this process launches with, built from the settings (one line per provider),
//! and `skylaunch doctor`, which checks them without starting the service.

use std::path::PathBuf;
use std::sync::Arc;

use super::StartError;
use crate::config::ServeConfig;
use crate::hosts::Hosts;
use crate::launch::orphans::CloudInventory;
use crate::launch::providers::aws::orphans::AwsInventory;
use crate::launch::providers::aws::{AwsProvider, AwsSettings};
#[cfg(feature = "azure")]
use crate::launch::providers::azure::{orphans::AzureInventory, AzureProvider};
use crate::launch::providers::local::LocalProvider;
use crate::launch::providers::readiness::{Readiness, ReadinessBoard};
use crate::launch::providers::skypilot::SkypilotProvider;
use crate::launch::providers::ssh::SshProvider;
use crate::launch::providers::{Provider, Providers};
use crate::store::{redact_url, Store};

/// The executables launches start: the agent, and skylaunch itself (the echo model server).
pub struct Binaries {
    pub agent: PathBuf,
    pub skylaunch: PathBuf,
}

impl Binaries {
    /// As configured, else beside this executable.
    pub fn of(config: &ServeConfig) -> Binaries {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_default();
        Binaries {
            agent: config
                .agent_bin
                .clone()
                .unwrap_or_else(|| exe_dir.join("skylaunch-agent")),
            skylaunch: config
                .skylaunch_bin
                .clone()
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| exe_dir.join("skylaunch")),
        }
    }
}

/// The providers, and the clouds the orphan sweeper lists.
pub struct Built {
    pub providers: Providers,
    pub clouds: Vec<Arc<dyn CloudInventory>>,
}

/// The provider registry: one line per provider.
pub fn build(
    config: &ServeConfig,
    hosts: Arc<Hosts>,
    binaries: &Binaries,
    installation_id: &str,
) -> Built {
    let ssh = Arc::new(SshProvider {
        hosts,
        agent_bin: binaries.agent.clone(),
        skylaunch_bin: binaries.skylaunch.clone(),
        step_timeout: config.ssh_connect_timeout * 12,
        setup_timeout: config.ssh_setup_timeout,
    });
    let local = Arc::new(LocalProvider {
        skylaunch_bin: binaries.skylaunch.clone(),
        agent_bin: binaries.agent.clone(),
    });
    let skypilot = Arc::new(SkypilotProvider {
        sky_bin: config.sky_bin.clone(),
        work_dir: config.data_dir.join("tasks"),
        teardown_timeout: std::time::Duration::from_secs(600),
    });
    let aws = Arc::new(AwsProvider {
        settings: AwsSettings {
            endpoint_url: config.aws_endpoint_url.clone(),
            ami: config.aws_ami.clone().unwrap_or_default(),
            running_timeout: config.provision_timeout,
            model_port_cidr: config.aws_model_port_cidr.clone(),
        },
        installation_id: installation_id.to_string(),
    });
    #[cfg_attr(not(feature = "azure"), allow(unused_mut))]
    let mut providers = Providers::default()
        .with(Provider::Local, local)
        .with(Provider::Ssh, ssh)
        .with(Provider::Skypilot, skypilot)
        .with(Provider::Aws, aws.clone());
    #[cfg_attr(not(feature = "azure"), allow(unused_mut))]
    let mut clouds: Vec<Arc<dyn CloudInventory>> = vec![Arc::new(AwsInventory { provider: aws })];
    #[cfg(feature = "azure")]
    {
        let azure = Arc::new(AzureProvider::new(
            config.azure_settings(),
            installation_id.to_string(),
        ));
        if azure.settings.missing().is_empty() {
            clouds.push(Arc::new(AzureInventory {
                provider: azure.clone(),
            }));
        }
        providers = providers.with(Provider::Azure, azure);
    }
    Built { providers, clouds }
}

/// Opens the data dir (private to this user when made here) and the database, as `serve`
/// does; the store and this installation's id.
pub async fn open_store(config: &ServeConfig) -> Result<(Store, String), StartError> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|source| StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
    }
    let url = config.database();
    let database = |source| StartError::Database {
        url: redact_url(&url),
        source,
    };
    let store = Store::connect(&url).await.map_err(database)?;
    let installation_id = store.installation_id().await.map_err(database)?;
    Ok((store, installation_id))
}

/// The SSH hosts service over `store`, with the credentials key from the settings.
pub fn hosts(config: &ServeConfig, store: Store) -> Result<Arc<Hosts>, StartError> {
    let credentials_key = crate::hosts::sealing::CredentialsKey::resolve(
        config.credentials_key.as_ref().map(|s| s.0.as_str()),
        &config.data_dir,
    )
    .map_err(StartError::CredentialsKey)?;
    Ok(crate::hosts::Hosts::new(
        store,
        Arc::new(credentials_key),
        crate::ssh::SshSettings {
            ssh_bin: config.ssh_bin.clone(),
            connect_timeout: config.ssh_connect_timeout,
        },
        config.ssh_connect_timeout * 6,
    ))
}

/// `skylaunch doctor`: every provider checked with these settings, waiting for each verdict.
pub async fn doctor(config: &ServeConfig) -> Result<Vec<Readiness>, StartError> {
    let (store, installation_id) = open_store(config).await?;
    let hosts = hosts(config, store)?;
    let built = build(config, hosts, &Binaries::of(config), &installation_id);
    Ok(ReadinessBoard::new(built.providers).check_now().await)
}

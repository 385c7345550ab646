//! Keeps the keys and their limits in step between processes, off the request path.
//!
//! Every second this process adds the usage it counted to the database (`usage_minutes`) and,
//! on PostgreSQL, reads what the other processes counted per key in this minute and the one
//! before: a key's limit holds over every process together, late by at most about two seconds
//! of the other processes' traffic (one flush and one read). A key change is announced on
//! [`KEY_CHANGES_CHANNEL`] and heard at once; the keys are also re-read every 30 seconds, in
//! case an announcement was missed while the listening connection was down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::KEY_CHANGES_CHANNEL;
use super::Keys;
use crate::store::notify::{listen, Heard};
use crate::store::Backend;

/// How often usage is written and the other processes' counts read.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often every key is re-read whatever was heard.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// How often usage older than the longest period a report covers is removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct KeySync {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    listener: Option<JoinHandle<()>>,
}

impl KeySync {
    /// Starts the sync; `database_url` is listened on for key changes when it is PostgreSQL.
    pub fn spawn(keys: Arc<Keys>, database_url: Option<String>) -> KeySync {
        let (heard_tx, mut heard) = mpsc::unbounded_channel::<Heard>();
        let postgres = keys.store().backend() == Backend::Postgres;
        let listener = database_url.filter(|_| postgres).map(|url| {
            let origin = keys.store().origin().to_string();
            tokio::spawn(listen(
                url,
                KEY_CHANGES_CHANNEL,
                "API key changes",
                origin,
                heard_tx,
            ))
        });
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reload = tokio::time::interval(RELOAD_EVERY);
            reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    Some(_) = heard.recv() => reload_keys(&keys).await,
                    _ = reload.tick() => reload_keys(&keys).await,
                    _ = prune.tick() => {
                        let before = crate::clock::now_ms() - super::USAGE_RETENTION_MS;
                        match keys.store().prune_usage(before).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(rows = n, "usage older than 400 days removed"),
                            Err(e) => tracing::warn!(error = %e, "could not remove old usage; will retry in an hour"),
                        }
                    }
                    _ = flush.tick() => {
                        if let Err(e) = keys.flush().await {
                            tracing::warn!(error = %e, "could not write metered usage; kept for the next try");
                        }
                        if postgres {
                            if let Err(e) = keys.read_others().await {
                                tracing::warn!(error = %e, "could not read the other processes' key usage; limits count this process's only until it can");
                            }
                        }
                    }
                    _ = stopped.changed() => {
                        if let Err(e) = keys.flush().await {
                            tracing::warn!(error = %e, "could not write the last metered usage before stopping");
                        }
                        return;
                    }
                }
            }
        });
        KeySync {
            stop,
            handle,
            listener,
        }
    }

    /// Stops, writing the usage counted since the last flush.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(l) = &self.listener {
            l.abort();
        }
        let _ = self.handle.await;
    }
}

async fn reload_keys(keys: &Keys) {
    if let Err(e) = keys.reload().await {
        tracing::warn!(error = %e, "could not re-read the API keys; will retry");
    }
}

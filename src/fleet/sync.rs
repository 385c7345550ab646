//! Keeps this process's live fleet in step with the other control-plane processes on one
//! PostgreSQL database.
//!
//! Every stored node change is announced on [`NODE_CHANGES_CHANNEL`] in the transaction that
//! makes it, so it is heard only once committed. This process listens and re-reads the node at
//! once: the routing table and the live views follow within a round trip. Every
//! `refresh_every`, and whenever the listening connection was lost (announcements made
//! meanwhile are gone), it re-reads every node; that also brings in the heartbeat telemetry the
//! other processes flush, which is not announced.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::NODE_CHANGES_CHANNEL;
use super::Fleet;
use crate::store::notify::{listen, Heard};

pub struct FleetSync {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    listener: JoinHandle<()>,
}

impl FleetSync {
    pub fn spawn(fleet: Arc<Fleet>, database_url: String, refresh_every: Duration) -> FleetSync {
        let (heard_tx, mut heard) = mpsc::unbounded_channel();
        let origin = fleet.store.origin().to_string();
        // On its own task: the listener's receive is not safe to cancel in a select.
        let listener = tokio::spawn(listen(
            database_url,
            NODE_CHANGES_CHANNEL,
            "node changes",
            origin,
            heard_tx,
        ));
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    heard = heard.recv() => match heard {
                        Some(Heard::Change(id)) => {
                            if let Err(e) = fleet.refresh_node(&id).await {
                                tracing::warn!(node_id = %id, error = %e, "could not re-read a node another process changed; the next full refresh will");
                            }
                        }
                        Some(Heard::Resync) => refresh_all(&fleet).await,
                        None => return,
                    },
                    _ = tick.tick() => refresh_all(&fleet).await,
                    _ = stopped.changed() => return,
                }
            }
        });
        FleetSync {
            stop,
            handle,
            listener,
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.listener.abort();
        let _ = self.handle.await;
    }

    pub fn abort(self) {
        self.listener.abort();
        self.handle.abort();
    }
}

async fn refresh_all(fleet: &Fleet) {
    match fleet.refresh_all().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(nodes = n, "nodes changed by other processes re-read"),
        Err(e) => tracing::warn!(error = %e, "could not re-read the fleet; will retry"),
    }
}

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

use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::NODE_CHANGES_CHANNEL;
use super::Fleet;

enum Heard {
    /// A node another process changed.
    Node(String),
    /// The connection was lost and made again: announcements may have been missed.
    Resync,
}

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
        let listener = tokio::spawn(listen(database_url, origin, heard_tx));
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    heard = heard.recv() => match heard {
                        Some(Heard::Node(id)) => {
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

async fn listen(url: String, origin: String, heard: mpsc::UnboundedSender<Heard>) {
    let mut first = true;
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for node changes from other processes; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(NODE_CHANGES_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for node changes from other processes; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !first && heard.send(Heard::Resync).is_err() {
            return;
        }
        first = false;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    // `<origin> <node id>`: this process's own changes are already live here.
                    let Some((from, id)) = n.payload().split_once(' ') else {
                        continue;
                    };
                    if from != origin && heard.send(Heard::Node(id.to_string())).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    tracing::warn!("lost the connection that hears node changes; reconnected, re-reading the fleet");
                    if heard.send(Heard::Resync).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that hears node changes; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

//! The fleet's background work: the sweeper that applies the silence rules on a timer, the
//! flusher that writes batched heartbeat telemetry, and (on PostgreSQL) the sync that follows
//! other processes' changes. All stop on shutdown, after one last flush.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::sync::FleetSync;
use super::{Fleet, FleetSettings};
use crate::clock::now_ms;

pub struct FleetTasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    sync: Option<FleetSync>,
}

impl FleetTasks {
    /// Starts the sweeper and the flusher; with `shared_database_url` (a PostgreSQL database
    /// other processes may share), also the sync that follows their changes.
    pub fn spawn(
        fleet: Arc<Fleet>,
        settings: &FleetSettings,
        shared_database_url: Option<String>,
    ) -> FleetTasks {
        let sweep_every = settings.sweep_every;
        let flush_every = settings.telemetry_flush_every;
        let sync = shared_database_url.map(|database_url| {
            fleet.set_peer_slack(flush_every);
            FleetSync::spawn(fleet.clone(), database_url, settings.refresh_every)
        });
        let (stop, stopped) = watch::channel(false);
        let sweeper = {
            let fleet = fleet.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(sweep_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => { fleet.sweep(now_ms()).await; }
                        _ = stopped.changed() => break,
                    }
                }
            })
        };
        let flusher = {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(flush_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let stopping = tokio::select! {
                        _ = tick.tick() => false,
                        _ = stopped.changed() => true,
                    };
                    match fleet.flush_telemetry().await {
                        Ok(n) if n > 0 => tracing::debug!(nodes = n, "flushed heartbeat telemetry"),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "could not flush heartbeat telemetry; will retry")
                        }
                    }
                    if stopping {
                        break;
                    }
                }
            })
        };
        FleetTasks {
            stop,
            handles: vec![sweeper, flusher],
            sync,
        }
    }

    /// Stops both loops; the flusher writes what is pending before it returns.
    pub async fn shutdown(self) {
        if let Some(sync) = self.sync {
            sync.shutdown().await;
        }
        let _ = self.stop.send(true);
        for handle in self.handles {
            let _ = handle.await;
        }
    }

    /// Stops both loops without the final flush, as a crash would.
    pub fn abort(self) {
        if let Some(sync) = self.sync {
            sync.abort();
        }
        for handle in self.handles {
            handle.abort();
        }
    }
}

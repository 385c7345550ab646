//! Hearing what other processes on the same PostgreSQL database change: each change is
//! announced (`pg_notify`) on a channel, as `<origin> <id>`, in the transaction that makes it.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

/// What a listener heard.
pub enum Heard {
    /// Another process changed the row with this id.
    Change(String),
    /// The connection was lost and made again: announcements may have been missed.
    Resync,
}

/// Listens on `channel` until `heard` is closed, connecting again after a loss. Once listening
/// (the first time too) it says [`Heard::Resync`]: what changed before, since the caller last
/// read everything or while the connection was down, was not heard. Changes this process (`origin`) announced are not passed on: they
/// are live here already. `what` names the changes in log lines.
pub async fn listen(
    url: String,
    channel: &'static str,
    what: &'static str,
    origin: String,
    heard: mpsc::UnboundedSender<Heard>,
) {
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {what} from other processes; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(channel).await {
            tracing::warn!(error = %e, "cannot listen for {what} from other processes; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if heard.send(Heard::Resync).is_err() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let Some((from, id)) = n.payload().split_once(' ') else {
                        continue;
                    };
                    if from != origin && heard.send(Heard::Change(id.to_string())).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    tracing::warn!("lost the connection that hears {what}; reconnected, reading everything again");
                    if heard.send(Heard::Resync).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that hears {what}; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

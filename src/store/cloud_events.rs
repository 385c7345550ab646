//! The orphan sweeper's record: one row per instance it terminated, found vanished, or kept
//! because it may be another installation's.

use std::fmt;

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::serde_rfc3339;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudEvent {
    pub id: i64,
    #[serde(with = "serde_rfc3339")]
    pub at: i64,
    pub kind: CloudEventKind,
    pub cloud: String,
    pub region: Option<String>,
    pub instance_id: String,
    pub job_id: Option<String>,
    pub node_id: Option<String>,
    pub message: String,
}

/// What the orphan sweeper did; stored and shown as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudEventKind {
    /// An instance no launch accounts for, past its grace period, was terminated.
    OrphanTerminated,
    /// A launched node's instance is gone from the cloud.
    InstanceVanished,
    /// An unaccounted instance tagged without an installation id was kept: it may be another
    /// installation's.
    LegacyOrphanKept,
}

impl CloudEventKind {
    pub const ALL: [CloudEventKind; 3] = [
        CloudEventKind::OrphanTerminated,
        CloudEventKind::InstanceVanished,
        CloudEventKind::LegacyOrphanKept,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloudEventKind::OrphanTerminated => "orphan_terminated",
            CloudEventKind::InstanceVanished => "instance_vanished",
            CloudEventKind::LegacyOrphanKept => "legacy_orphan_kept",
        }
    }

    pub fn parse(s: &str) -> Option<CloudEventKind> {
        CloudEventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for CloudEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Store {
    /// Appends an event (its `id` is assigned by the database and ignored here).
    pub async fn insert_cloud_event(&self, event: &CloudEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cloud_events (at, kind, cloud, region, instance_id, job_id, node_id, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(&event.cloud)
        .bind(&event.region)
        .bind(&event.instance_id)
        .bind(&event.job_id)
        .bind(&event.node_id)
        .bind(&event.message)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest events, newest first.
    pub async fn recent_cloud_events(&self, limit: i64) -> Result<Vec<CloudEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, cloud, region, instance_id, job_id, node_id, message \
             FROM cloud_events ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let kind: String = row.try_get("kind")?;
                Ok(CloudEvent {
                    kind: CloudEventKind::parse(&kind).ok_or_else(|| {
                        StoreError::Corrupt(format!("cloud event {id} has unknown kind {kind:?}"))
                    })?,
                    id,
                    at: row.try_get("at")?,
                    cloud: row.try_get("cloud")?,
                    region: row.try_get("region")?,
                    instance_id: row.try_get("instance_id")?,
                    job_id: row.try_get("job_id")?,
                    node_id: row.try_get("node_id")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::CloudEventKind;

    #[test]
    fn kinds_serialise_to_their_stored_names() {
        for kind in CloudEventKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
            assert_eq!(CloudEventKind::parse(kind.as_str()), Some(kind));
        }
    }
}

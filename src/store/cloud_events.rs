//! The orphan sweeper's record: one row per instance it terminated, found vanished, or kept
//! because it may be another installation's.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::serde_rfc3339;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudEvent {
    pub id: i64,
    #[serde(with = "serde_rfc3339")]
    pub at: i64,
    /// `orphan_terminated`, `instance_vanished` or `legacy_orphan_kept`.
    pub kind: String,
    pub cloud: String,
    pub region: Option<String>,
    pub instance_id: String,
    pub job_id: Option<String>,
    pub node_id: Option<String>,
    pub message: String,
}

impl Store {
    /// Appends an event (its `id` is assigned by the database and ignored here).
    pub async fn insert_cloud_event(&self, event: &CloudEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cloud_events (at, kind, cloud, region, instance_id, job_id, node_id, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.at)
        .bind(&event.kind)
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
                Ok(CloudEvent {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
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

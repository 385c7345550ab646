//! The rows of hosts and their events. Every change of a host is a conditional update on the
//! revision it was read at, so two launches (or two processes) claiming one host cannot both
//! succeed: the second sees `false` and tries another host.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::model::{AuthKind, Host, HostEvent, HostStatus};
use crate::store::{plausible_id, Store, StoreError};

const COLUMNS: &str = "id, name, address, port, login, auth_kind, credentials, host_key, \
     host_key_fingerprint, labels, gpu_type, gpu_count, status, reason, probe, job_id, revision, \
     created_at, updated_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("host {what}: {e}"))
}

impl Store {
    /// Stores a new host. A host with the same name is [`StoreError::Duplicate`].
    pub async fn insert_host(&self, h: &Host) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO hosts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&h.id)
        .bind(&h.name)
        .bind(&h.address)
        .bind(i64::from(h.port))
        .bind(&h.user)
        .bind(h.auth_kind.as_str())
        .bind(&h.credentials)
        .bind(&h.host_key)
        .bind(&h.host_key_fingerprint)
        .bind(labels_json(&h.labels))
        .bind(&h.gpu_type)
        .bind(h.gpu_count.map(i64::from))
        .bind(h.status.as_str())
        .bind(&h.reason)
        .bind(probe_json(h))
        .bind(&h.job_id)
        .bind(h.revision)
        .bind(h.created_at)
        .bind(h.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The host with this id or name.
    pub async fn host(&self, id_or_name: &str) -> Result<Option<Host>, StoreError> {
        if !plausible_id(id_or_name) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM hosts WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// Every host, by name.
    pub async fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM hosts ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Writes the host's changeable fields if it is still at `h.revision`, bumping it: `false`
    /// when another write came first (nothing written). `h.revision` is updated on success.
    pub async fn save_host(&self, h: &mut Host) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET host_key = $1, host_key_fingerprint = $2, status = $3, reason = $4, \
             probe = $5, job_id = $6, updated_at = $7, revision = revision + 1 \
             WHERE id = $8 AND revision = $9",
        )
        .bind(&h.host_key)
        .bind(&h.host_key_fingerprint)
        .bind(h.status.as_str())
        .bind(&h.reason)
        .bind(probe_json(h))
        .bind(&h.job_id)
        .bind(h.updated_at)
        .bind(&h.id)
        .bind(h.revision)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        if done {
            h.revision += 1;
        }
        Ok(done)
    }

    /// Removes a host no launch holds, with its events: `false` when it is held (or gone).
    pub async fn delete_host(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let gone = sqlx::query(
            "DELETE FROM hosts WHERE id = $1 AND status NOT IN ('in_use', 'teardown_pending')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if gone {
            sqlx::query("DELETE FROM host_events WHERE host_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    pub async fn insert_host_event(
        &self,
        host_id: &str,
        at: i64,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO host_events (host_id, at, kind, message) VALUES ($1, $2, $3, $4)")
            .bind(host_id)
            .bind(at)
            .bind(kind)
            .bind(message)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The newest events of a host, newest first.
    pub async fn host_events(
        &self,
        host_id: &str,
        limit: i64,
    ) -> Result<Vec<HostEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, kind, message FROM host_events WHERE host_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(host_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HostEvent {
                    at: crate::clock::rfc3339(r.try_get("at")?),
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("a string map always serialises")
}

fn probe_json(h: &Host) -> Option<String> {
    h.probe
        .as_ref()
        .map(|p| serde_json::to_string(p).expect("a probe always serialises"))
}

fn host_from_row(row: &AnyRow) -> Result<Host, StoreError> {
    let status: String = row.try_get("status")?;
    let auth: String = row.try_get("auth_kind")?;
    let labels: String = row.try_get("labels")?;
    let probe: Option<String> = row.try_get("probe")?;
    let port: i64 = row.try_get("port")?;
    let gpu_count: Option<i64> = row.try_get("gpu_count")?;
    Ok(Host {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        address: row.try_get("address")?,
        port: u16::try_from(port).map_err(|e| corrupt("port", e))?,
        user: row.try_get("login")?,
        auth_kind: AuthKind::parse(&auth).ok_or_else(|| corrupt("auth_kind", &auth))?,
        credentials: row.try_get("credentials")?,
        host_key: row.try_get("host_key")?,
        host_key_fingerprint: row.try_get("host_key_fingerprint")?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt("labels", e))?,
        gpu_type: row.try_get("gpu_type")?,
        gpu_count: gpu_count
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("gpu_count", e))?,
        status: HostStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        reason: row.try_get("reason")?,
        probe: probe
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| corrupt("probe", e))?,
        job_id: row.try_get("job_id")?,
        revision: row.try_get("revision")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

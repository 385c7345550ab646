//! The fleet's rows: SQL for nodes and their events. Every status change is written together
//! with its event in one transaction; heartbeat telemetry is written in batches by the fleet's
//! flusher (`telemetry.rs`).
//!
//! Nullable floats are never bound as NULL: sqlx 0.8's Any driver sends a NULL `f64` to
//! PostgreSQL typed as `float4`, and the cached statement then rejects a later real `f64`
//! ("incorrect binary data format"). `health_score` is bound as a value plus a 0/1 presence flag.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::events::{NodeEvent, NodeEventKind};
use super::node::{HeartbeatReport, Node};
use super::status::NodeStatus;
use crate::store::{plausible_id, Backend, Store, StoreError};

/// One status change as stored in `node_events`.
pub struct StatusChange<'a> {
    pub kind: NodeEventKind,
    pub from: Option<NodeStatus>,
    pub to: NodeStatus,
    pub reason: &'a str,
}

/// The latest measurements of a node, as the flusher writes them.
pub struct Telemetry {
    pub node_id: String,
    pub health_score: Option<f64>,
    pub last_heartbeat_at: Option<i64>,
    pub last_heartbeat: Option<String>,
    pub updated_at: i64,
}

const NODE_COLUMNS: &str = "id, name, model_name, endpoint_url, provider, region, zone, gpu_type, \
     gpu_count, instance_type, spot_instance, labels, agent_version, status, status_reason, \
     token_hash, launch_job_id, health_score, last_heartbeat_at, last_heartbeat, registered_at, \
     created_at, updated_at, revision, endpoint_pinned, on_this_host, model_key, deployment, \
     deployment_revision, deployment_slot";

/// The PostgreSQL channel on which every committed node change is announced (payload: the
/// announcing store's origin, a space, the node id),
/// so the other control-plane processes on the database re-read that node.
pub const NODE_CHANGES_CHANNEL: &str = "skylaunch_nodes";

impl Store {
    /// Inserts a new node and its creation event inside the caller's transaction, so other rows
    /// (a launch job) are written with the node or not at all; other processes hear of the node
    /// when it commits. A live node with the same name is [`StoreError::Duplicate`]. Once
    /// committed, the stored revision is `node.revision + 1`, as after [`Store::save_node`].
    pub async fn insert_node_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        node: &Node,
        change: StatusChange<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, name, model_name, provider, status, token_hash, launch_job_id, \
             created_at, updated_at, endpoint_pinned, on_this_host, deployment, \
             deployment_revision, deployment_slot) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(&node.model_name)
        .bind(&node.provider)
        .bind(node.status.as_str())
        .bind(&node.token_hash)
        .bind(&node.launch_job_id)
        .bind(node.created_at)
        .bind(i64::from(node.endpoint_pinned))
        .bind(i64::from(node.on_this_host))
        .bind(&node.deployment)
        .bind(node.deployment_revision)
        .bind(node.deployment_slot)
        .execute(&mut **tx)
        .await?;
        if !write_node_row(tx, node).await? {
            return Err(StoreError::Conflict(format!("new node {}", node.id)));
        }
        insert_event(tx, &node.id, node.updated_at, &change).await?;
        self.announce(tx, &node.id).await?;
        Ok(())
    }

    /// One node as stored, if it exists.
    pub async fn load_node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    /// Tells the other processes on a PostgreSQL database that a node changed; delivered when
    /// the transaction commits, and never if it rolls back.
    async fn announce(
        &self,
        tx: &mut Transaction<'_, Any>,
        node_id: &str,
    ) -> Result<(), StoreError> {
        if self.backend() == Backend::Postgres {
            // Wrapped in a count: `pg_notify` returns `void`, a type the Any driver cannot describe.
            sqlx::query("SELECT count(*) FROM (SELECT pg_notify($1, $2)) AS sent")
                .bind(NODE_CHANGES_CHANNEL)
                .bind(format!("{} {node_id}", self.origin()))
                .fetch_one(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Every node, oldest first.
    pub async fn load_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(node_from_row).collect()
    }

    /// Writes the whole node row (registration fields, status, token, telemetry) and, when the
    /// status changed, its event, in one transaction, if the stored revision is still
    /// `node.revision`: else nothing is written and the answer is [`StoreError::Conflict`].
    /// The stored revision is then `node.revision + 1`.
    pub async fn save_node(
        &self,
        node: &Node,
        change: Option<StatusChange<'_>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        if !write_node_row(&mut tx, node).await? {
            return Err(StoreError::Conflict(format!("node {}", node.id)));
        }
        if let Some(change) = change {
            insert_event(&mut tx, &node.id, node.updated_at, &change).await?;
        }
        self.announce(&mut tx, &node.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves two nodes into each other's deployment slots in one transaction, fenced by the
    /// revisions they were read at: [`StoreError::Conflict`] when either changed meanwhile.
    pub async fn swap_node_slots(&self, a: &Node, b: &Node) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for (node, slot) in [(a, b.deployment_slot), (b, a.deployment_slot)] {
            let done = sqlx::query(
                "UPDATE nodes SET deployment_slot = $2, revision = revision + 1 \
                 WHERE id = $1 AND revision = $3",
            )
            .bind(&node.id)
            .bind(slot)
            .bind(node.revision)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !done {
                return Err(StoreError::Conflict(format!("node {}", node.id)));
            }
            self.announce(&mut tx, &node.id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes the latest telemetry of many nodes in one transaction.
    pub async fn save_telemetry(&self, batch: &[Telemetry]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for t in batch {
            sqlx::query(
                "UPDATE nodes SET health_score = CASE WHEN $6 = 1 THEN $2 ELSE NULL END, \
                 last_heartbeat_at = $3, last_heartbeat = $4, updated_at = $5 WHERE id = $1",
            )
            .bind(&t.node_id)
            .bind(t.health_score.unwrap_or(0.0))
            .bind(t.last_heartbeat_at)
            .bind(&t.last_heartbeat)
            .bind(t.updated_at)
            .bind(i64::from(t.health_score.is_some()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records something that happened to a node without changing its status (e.g. the load
    /// balancer ejecting it for a while).
    pub async fn insert_node_event(
        &self,
        node_id: &str,
        at: i64,
        kind: NodeEventKind,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_events (node_id, at, kind, from_status, to_status, reason) \
             VALUES ($1, $2, $3, NULL, NULL, $4)",
        )
        .bind(node_id)
        .bind(at)
        .bind(kind.as_str())
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest events of a node, newest first.
    pub async fn recent_node_events(
        &self,
        node_id: &str,
        limit: i64,
    ) -> Result<Vec<NodeEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, from_status, to_status, reason FROM node_events \
             WHERE node_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(node_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(node_event_from_row).collect()
    }
}

/// Writes every mutable column of a node's row and bumps its revision, if the stored revision
/// is `node.revision`; `false` when it is not (another process changed the node meanwhile).
async fn write_node_row(tx: &mut Transaction<'_, Any>, node: &Node) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE nodes SET model_name = $2, endpoint_url = $3, provider = $4, region = $5, \
             zone = $6, gpu_type = $7, gpu_count = $8, instance_type = $9, spot_instance = $10, \
             labels = $11, agent_version = $12, status = $13, status_reason = $14, \
             health_score = CASE WHEN $20 = 1 THEN $15 ELSE NULL END, last_heartbeat_at = $16, \
             last_heartbeat = $17, registered_at = $18, updated_at = $19, token_hash = $21, \
             model_key = $23, revision = revision + 1 WHERE id = $1 AND revision = $22",
    )
    .bind(&node.id)
    .bind(&node.model_name)
    .bind(&node.endpoint_url)
    .bind(&node.provider)
    .bind(&node.region)
    .bind(&node.zone)
    .bind(&node.gpu_type)
    .bind(node.gpu_count)
    .bind(&node.instance_type)
    .bind(i64::from(node.spot_instance))
    .bind(labels_json(&node.labels))
    .bind(&node.agent_version)
    .bind(node.status.as_str())
    .bind(&node.status_reason)
    .bind(node.health_score.unwrap_or(0.0))
    .bind(node.last_heartbeat_at)
    .bind(heartbeat_json(node.last_heartbeat.as_ref()))
    .bind(node.registered_at)
    .bind(node.updated_at)
    .bind(i64::from(node.health_score.is_some()))
    .bind(&node.token_hash)
    .bind(node.revision)
    .bind(&node.model_key)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_event(
    tx: &mut Transaction<'_, Any>,
    node_id: &str,
    at: i64,
    change: &StatusChange<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO node_events (node_id, at, kind, from_status, to_status, reason) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(node_id)
    .bind(at)
    .bind(change.kind.as_str())
    .bind(change.from.map(NodeStatus::as_str))
    .bind(change.to.as_str())
    .bind(change.reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("a string map always serialises")
}

fn heartbeat_json(hb: Option<&HeartbeatReport>) -> Option<String> {
    hb.map(|hb| serde_json::to_string(hb).expect("heartbeat reports always serialise"))
}

fn node_event_from_row(row: &AnyRow) -> Result<NodeEvent, StoreError> {
    let id: i64 = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let status = |column: &str| -> Result<Option<NodeStatus>, StoreError> {
        let Some(text) = row.try_get::<Option<String>, _>(column)? else {
            return Ok(None);
        };
        NodeStatus::parse(&text).map(Some).ok_or_else(|| {
            StoreError::Corrupt(format!("node event {id} has unknown {column} {text:?}"))
        })
    };
    Ok(NodeEvent {
        kind: NodeEventKind::parse(&kind).ok_or_else(|| {
            StoreError::Corrupt(format!("node event {id} has unknown kind {kind:?}"))
        })?,
        from_status: status("from_status")?,
        to_status: status("to_status")?,
        at: row.try_get("at")?,
        reason: row.try_get("reason")?,
        id,
    })
}

fn node_from_row(row: &AnyRow) -> Result<Node, StoreError> {
    let status: String = row.try_get("status")?;
    let labels: String = row.try_get("labels")?;
    let last_heartbeat: Option<String> = row.try_get("last_heartbeat")?;
    let id: String = row.try_get("id")?;
    Ok(Node {
        status: NodeStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("node {id} has unknown status {status:?}"))
        })?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("node {id} labels: {e}")))?,
        last_heartbeat: match last_heartbeat {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("node {id} heartbeat: {e}")))?,
            ),
            None => None,
        },
        name: row.try_get("name")?,
        model_name: row.try_get("model_name")?,
        endpoint_url: row.try_get("endpoint_url")?,
        provider: row.try_get("provider")?,
        region: row.try_get("region")?,
        zone: row.try_get("zone")?,
        gpu_type: row.try_get("gpu_type")?,
        gpu_count: row.try_get("gpu_count")?,
        instance_type: row.try_get("instance_type")?,
        spot_instance: row.try_get::<i64, _>("spot_instance")? != 0,
        agent_version: row.try_get("agent_version")?,
        status_reason: row.try_get("status_reason")?,
        token_hash: row.try_get("token_hash")?,
        launch_job_id: row.try_get("launch_job_id")?,
        health_score: row.try_get("health_score")?,
        last_heartbeat_at: row.try_get("last_heartbeat_at")?,
        registered_at: row.try_get("registered_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
        endpoint_pinned: row.try_get::<i64, _>("endpoint_pinned")? != 0,
        on_this_host: row.try_get::<i64, _>("on_this_host")? != 0,
        model_key: row.try_get("model_key")?,
        deployment: row.try_get("deployment")?,
        deployment_revision: row.try_get("deployment_revision")?,
        deployment_slot: row.try_get("deployment_slot")?,
        id,
    })
}

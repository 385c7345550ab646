//! The rows of deployments, their revisions and their actions. Every state change of an action
//! is a conditional update (`WHERE state = <the state it was read in>`), so when several
//! processes act on one action only one of them succeeds; the others see `false` and move on.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::model::{Action, ActionKind, ActionState, Deployment, DeploymentStatus, Drift, Risk};
use super::spec::{DeploymentRequest, Market};
use crate::store::{plausible_id, Store, StoreError};

const DEPLOYMENT_COLUMNS: &str = "name, uid, revision, spec, status, reason, unsatisfiable_until, \
     failures, last_failure_at, deleting, created_at, updated_at, last_scale";

const ACTION_COLUMNS: &str = "id, deployment, uid, revision, slot, kind, drift, risk, state, \
     market, reason, node_id, launch_job_id, created_at, updated_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn spec_json(spec: &DeploymentRequest) -> String {
    serde_json::to_string(spec).expect("a deployment spec serialises")
}

impl Store {
    /// Stores a new deployment and its first revision. A deployment with the same name is
    /// [`StoreError::Duplicate`].
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}, replicas) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&d.name)
        .bind(&d.uid)
        .bind(d.revision)
        .bind(spec_json(&d.spec))
        .bind(d.status.as_str())
        .bind(&d.reason)
        .bind(d.unsatisfiable_until)
        .bind(d.failures)
        .bind(d.last_failure_at)
        .bind(i64::from(d.deleting))
        .bind(d.created_at)
        .bind(d.updated_at)
        .bind(scale_json(d))
        .bind(i64::from(d.spec.replicas))
        .execute(&mut *tx)
        .await?;
        insert_revision(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>, StoreError> {
        if !plausible_id(name) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Every deployment, by name.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Writes a new spec, if the deployment is still at `expected_revision` and not being
    /// deleted. A new revision (stored for rollbacks, when `new_revision` is set) also clears
    /// the back-off, the failure count and a failed rollout: it may add capacity or fix the
    /// launch. A change of the replica count or the policies alone leaves them as they are.
    /// `false` when the deployment changed meanwhile.
    pub async fn update_deployment_spec(
        &self,
        d: &Deployment,
        expected_revision: i64,
        new_revision: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE deployments SET spec = $2, replicas = $3, revision = $4, updated_at = $6, \
             status = CASE WHEN $8 = 1 THEN $5 ELSE status END, \
             reason = CASE WHEN $8 = 1 THEN NULL ELSE reason END, \
             unsatisfiable_until = CASE WHEN $8 = 1 THEN NULL ELSE unsatisfiable_until END, \
             failures = CASE WHEN $8 = 1 THEN 0 ELSE failures END, \
             last_failure_at = CASE WHEN $8 = 1 THEN NULL ELSE last_failure_at END \
             WHERE name = $1 AND revision = $7 AND deleting = 0",
        )
        .bind(&d.name)
        .bind(spec_json(&d.spec))
        .bind(i64::from(d.spec.replicas))
        .bind(d.revision)
        .bind(d.status.as_str())
        .bind(d.updated_at)
        .bind(expected_revision)
        .bind(i64::from(new_revision))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return Ok(false);
        }
        if new_revision {
            insert_revision(&mut tx, d).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Writes an autoscaling decision: the new replica count and the decision, if the deployment
    /// still has the replica count it was decided from and is not being deleted. `false` when
    /// something changed it meanwhile (an admin's scale, another process's decision).
    pub async fn apply_scale(&self, d: &Deployment) -> Result<bool, StoreError> {
        let Some(decision) = &d.last_scale else {
            return Ok(false);
        };
        Ok(sqlx::query(
            "UPDATE deployments SET spec = $2, replicas = $3, last_scale = $4, updated_at = $5 \
             WHERE name = $1 AND uid = $6 AND revision = $7 AND replicas = $8 AND deleting = 0",
        )
        .bind(&d.name)
        .bind(spec_json(&d.spec))
        .bind(i64::from(d.spec.replicas))
        .bind(scale_json(d))
        .bind(d.updated_at)
        .bind(&d.uid)
        .bind(d.revision)
        .bind(i64::from(decision.from))
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// The spec a deployment had at `revision`.
    pub async fn deployment_revision(
        &self,
        uid: &str,
        revision: i64,
    ) -> Result<Option<DeploymentRequest>, StoreError> {
        let row =
            sqlx::query("SELECT spec FROM deployment_revisions WHERE uid = $1 AND revision = $2")
                .bind(uid)
                .bind(revision)
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| {
            let spec: String = r.try_get("spec")?;
            serde_json::from_str(&spec).map_err(|e| corrupt("deployment revision", e))
        })
        .transpose()
    }

    /// Writes what the reconciler concluded about a deployment (its status, reason, back-off),
    /// if the deployment is still at `revision`.
    pub async fn save_deployment_state(&self, d: &Deployment) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE deployments SET status = $2, reason = $3, unsatisfiable_until = $4, \
             updated_at = $5 WHERE name = $1 AND revision = $6 AND uid = $7",
        )
        .bind(&d.name)
        .bind(d.status.as_str())
        .bind(&d.reason)
        .bind(d.unsatisfiable_until)
        .bind(d.updated_at)
        .bind(d.revision)
        .bind(&d.uid)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Clears the back-off and the failure count ("retry now", or a spec change elsewhere).
    pub async fn clear_deployment_backoff(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE deployments SET unsatisfiable_until = NULL, failures = 0, \
             last_failure_at = NULL, reason = NULL, status = 'converging', updated_at = $2 \
             WHERE name = $1 AND deleting = 0",
        )
        .bind(name)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Marks a deployment deleted; the reconciler drains and terminates its replicas.
    pub async fn mark_deployment_deleting(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE deployments SET deleting = 1, status = 'deleting', reason = $2, \
             unsatisfiable_until = NULL, updated_at = $3 WHERE name = $1",
        )
        .bind(name)
        .bind("deleted by an admin: draining and terminating its replicas")
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Removes a deleted deployment with its revisions and actions (its nodes stay, terminated).
    pub async fn remove_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM deployment_actions WHERE uid = $1")
            .bind(&d.uid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deployment_revisions WHERE uid = $1")
            .bind(&d.uid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deployments WHERE name = $1 AND uid = $2 AND deleting = 1")
            .bind(&d.name)
            .bind(&d.uid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts a failed replica launch of the current revision (once per action: only the
    /// process that moves the action from `running` to `failed` counts it), and sets the
    /// back-off the reconciler chose.
    pub async fn fail_launch_action(
        &self,
        action: &Action,
        reason: &str,
        backoff_until: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        if !set_state_in(
            &mut tx,
            &action.id,
            ActionState::Running,
            ActionState::Failed,
            Some(reason),
            now,
        )
        .await?
        {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE deployments SET failures = failures + 1, last_failure_at = $2, \
             unsatisfiable_until = CASE WHEN $3 = 1 THEN $4 ELSE unsatisfiable_until END, \
             updated_at = $2 WHERE uid = $1 AND revision = $5",
        )
        .bind(&action.uid)
        .bind(now)
        .bind(i64::from(backoff_until.is_some()))
        .bind(backoff_until.unwrap_or(0))
        .bind(action.revision)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A replica launch succeeded: the action completes and the failure count restarts.
    pub async fn complete_launch_action(
        &self,
        action: &Action,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        if !set_state_in(
            &mut tx,
            &action.id,
            ActionState::Running,
            ActionState::Completed,
            Some(reason),
            now,
        )
        .await?
        {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE deployments SET failures = 0, last_failure_at = NULL, \
             unsatisfiable_until = NULL WHERE uid = $1 AND revision = $2",
        )
        .bind(&action.uid)
        .bind(action.revision)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a planned action unless its id exists already (planned before, by this or another
    /// process). `true` when this call stored it.
    pub async fn insert_action(&self, a: &Action) -> Result<bool, StoreError> {
        Ok(sqlx::query(&format!(
            "INSERT INTO deployment_actions ({ACTION_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&a.id)
        .bind(&a.deployment)
        .bind(&a.uid)
        .bind(a.revision)
        .bind(a.slot)
        .bind(a.kind.as_str())
        .bind(a.drift.as_str())
        .bind(a.risk.as_str())
        .bind(a.state.as_str())
        .bind(a.market.map(Market::as_str))
        .bind(&a.reason)
        .bind(&a.node_id)
        .bind(&a.launch_job_id)
        .bind(a.created_at)
        .bind(a.updated_at)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    pub async fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM deployment_actions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// A deployment's actions, newest first (at most `limit`).
    pub async fn deployment_actions(
        &self,
        uid: &str,
        limit: i64,
    ) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM deployment_actions WHERE uid = $1 \
             ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(uid)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Every deployment's actions that are not final yet (the reconciler's working set).
    pub async fn open_actions(&self) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM deployment_actions \
             WHERE state IN ('pending', 'approved', 'running') ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Actions in `state` (all of them when `None`), newest first, at most `limit`.
    pub async fn actions_in_state(
        &self,
        state: Option<ActionState>,
        limit: i64,
    ) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM deployment_actions \
             WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(state.map_or("", ActionState::as_str))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Moves an action from `from` to `to` with a reason; `false` when it was no longer in `from`.
    pub async fn set_action_state(
        &self,
        id: &str,
        from: ActionState,
        to: ActionState,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = set_state_in(&mut tx, id, from, to, reason, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Claims an approved drain or terminate action (or one whose claimant died: `running`
    /// with its lease past) for `owner` until `lease_until`.
    pub async fn claim_action(
        &self,
        id: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE deployment_actions SET state = 'running', lease_owner = $2, \
             lease_expires_at = $3, updated_at = $4 WHERE id = $1 AND \
             (state = 'approved' OR (state = 'running' AND launch_job_id IS NULL \
              AND lease_expires_at < $4))",
        )
        .bind(id)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Inside the transaction that queues a replica's launch: the approved action starts
    /// running with its launch job. `false` when another process started it first (then the
    /// caller rolls back, and nothing is launched twice).
    pub async fn start_launch_action_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &str,
        node_id: &str,
        job_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE deployment_actions SET state = 'running', launch_job_id = $2, \
             node_id = COALESCE(node_id, $3), updated_at = $4 \
             WHERE id = $1 AND state = 'approved'",
        )
        .bind(id)
        .bind(job_id)
        .bind(node_id)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1)
    }
}

async fn insert_revision(tx: &mut Transaction<'_, Any>, d: &Deployment) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO deployment_revisions (deployment, uid, revision, spec, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&d.name)
    .bind(&d.uid)
    .bind(d.revision)
    .bind(spec_json(&d.spec))
    .bind(d.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_state_in(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    from: ActionState,
    to: ActionState,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE deployment_actions SET state = $3, reason = COALESCE($4, reason), \
         updated_at = $5, lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

fn scale_json(d: &Deployment) -> Option<String> {
    d.last_scale
        .as_ref()
        .map(|s| serde_json::to_string(s).expect("a scale decision serialises"))
}

fn deployment_from_row(row: &AnyRow) -> Result<Deployment, StoreError> {
    let name: String = row.try_get("name")?;
    let last_scale: Option<String> = row.try_get("last_scale")?;
    let spec: String = row.try_get("spec")?;
    let status: String = row.try_get("status")?;
    Ok(Deployment {
        spec: serde_json::from_str(&spec)
            .map_err(|e| corrupt(&format!("deployment {name} spec"), e))?,
        status: DeploymentStatus::parse(&status).ok_or_else(|| {
            corrupt(
                &format!("deployment {name}"),
                format!("unknown status {status:?}"),
            )
        })?,
        uid: row.try_get("uid")?,
        revision: row.try_get("revision")?,
        reason: row.try_get("reason")?,
        unsatisfiable_until: row.try_get("unsatisfiable_until")?,
        failures: row.try_get("failures")?,
        last_failure_at: row.try_get("last_failure_at")?,
        deleting: row.try_get::<i64, _>("deleting")? != 0,
        last_scale: last_scale
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt(&format!("deployment {name} last_scale"), e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        name,
    })
}

fn action_from_row(row: &AnyRow) -> Result<Action, StoreError> {
    let id: String = row.try_get("id")?;
    let bad = |what: &str, value: &str| {
        corrupt(&format!("action {id}"), format!("unknown {what} {value:?}"))
    };
    let kind: String = row.try_get("kind")?;
    let drift: String = row.try_get("drift")?;
    let risk: String = row.try_get("risk")?;
    let state: String = row.try_get("state")?;
    let market: Option<String> = row.try_get("market")?;
    Ok(Action {
        kind: ActionKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        drift: Drift::parse(&drift).ok_or_else(|| bad("drift", &drift))?,
        risk: Risk::parse(&risk).ok_or_else(|| bad("risk", &risk))?,
        state: ActionState::parse(&state).ok_or_else(|| bad("state", &state))?,
        market: match market {
            Some(m) => Some(Market::parse(&m).ok_or_else(|| bad("market", &m))?),
            None => None,
        },
        deployment: row.try_get("deployment")?,
        uid: row.try_get("uid")?,
        revision: row.try_get("revision")?,
        slot: row.try_get("slot")?,
        reason: row.try_get("reason")?,
        node_id: row.try_get("node_id")?,
        launch_job_id: row.try_get("launch_job_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        id,
    })
}

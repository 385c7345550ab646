//! The rows of API keys and of metered usage. Every key change is announced on
//! [`KEY_CHANGES_CHANNEL`] (PostgreSQL) in the transaction that makes it, so the other
//! processes re-read the keys as soon as it is committed.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::model::ApiKey;
use crate::store::{Backend, Store, StoreError};

/// PostgreSQL channel on which key changes are announced.
pub const KEY_CHANGES_CHANNEL: &str = "skylaunch_api_keys";

const COLUMNS: &str = "id, name, hash, prefix, models, requests_per_minute, tokens_per_minute, \
     expires_at, revoked_at, created_at";

/// Counts of one minute, key, model and deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Where a count belongs: `key_id` is empty for an environment key or an open `/v1`,
/// `deployment` for a node of no deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub minute: i64,
    pub key_id: std::sync::Arc<str>,
    pub model: std::sync::Arc<str>,
    pub deployment: std::sync::Arc<str>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("api key: {e}"))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    pub async fn insert_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.hash)
        .bind(&k.prefix)
        .bind(
            k.models
                .as_ref()
                .map(|m| serde_json::to_string(m).unwrap_or_default()),
        )
        .bind(k.requests_per_minute.map(to_i64))
        .bind(k.tokens_per_minute.map(to_i64))
        .bind(k.expires_at)
        .bind(k.revoked_at)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        self.announce_key_change(&mut tx, &k.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every key, revoked ones included, newest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Marks a key revoked at `at` (once: a second revocation keeps the first time). `None`
    /// when there is no such key.
    pub async fn revoke_api_key(&self, id: &str, at: i64) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let key = row.as_ref().map(key_from_row).transpose()?;
        if key.is_some() {
            self.announce_key_change(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(key)
    }

    async fn announce_key_change(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<(), StoreError> {
        if self.backend() == Backend::Postgres {
            // Wrapped in a count: `pg_notify` returns `void`, a type the Any driver cannot describe.
            sqlx::query("SELECT count(*) FROM (SELECT pg_notify($1, $2)) AS sent")
                .bind(KEY_CHANGES_CHANNEL)
                .bind(format!("{} {id}", self.origin()))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Adds this process's counts to the stored ones, in one transaction.
    pub async fn add_usage(&self, counts: &[(UsageKey, Counts)]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for (k, c) in counts {
            sqlx::query(
                "INSERT INTO usage_minutes (minute, origin, key_id, model, deployment, requests, \
                 prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (minute, origin, key_id, model, deployment) DO UPDATE SET \
                 requests = usage_minutes.requests + excluded.requests, \
                 prompt_tokens = usage_minutes.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = usage_minutes.completion_tokens + excluded.completion_tokens",
            )
            .bind(k.minute)
            .bind(self.origin())
            .bind(&*k.key_id)
            .bind(&*k.model)
            .bind(&*k.deployment)
            .bind(to_i64(c.requests))
            .bind(to_i64(c.prompt_tokens))
            .bind(to_i64(c.completion_tokens))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes the usage counted before `before` (a minute's start): how many rows went.
    pub async fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM usage_minutes WHERE minute < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// What other processes counted per key since `since` (a minute's start): key id, minute,
    /// requests and tokens.
    pub async fn others_key_usage(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, minute, CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS tokens \
             FROM usage_minutes WHERE minute >= $1 AND origin <> $2 AND key_id <> '' \
             GROUP BY key_id, minute",
        )
        .bind(since)
        .bind(self.origin())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<String, _>("key_id")?,
                    r.try_get::<i64, _>("minute")?,
                    to_u64(r.try_get::<i64, _>("requests")?),
                    to_u64(r.try_get::<i64, _>("tokens")?),
                ))
            })
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

fn key_from_row(r: &AnyRow) -> Result<ApiKey, StoreError> {
    let models: Option<String> = r.try_get("models")?;
    let models = models
        .map(|m| serde_json::from_str::<Vec<String>>(&m))
        .transpose()
        .map_err(corrupt)?;
    Ok(ApiKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        hash: r.try_get("hash")?,
        prefix: r.try_get("prefix")?,
        models,
        requests_per_minute: r
            .try_get::<Option<i64>, _>("requests_per_minute")?
            .map(to_u64),
        tokens_per_minute: r
            .try_get::<Option<i64>, _>("tokens_per_minute")?
            .map(to_u64),
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        created_at: r.try_get("created_at")?,
    })
}

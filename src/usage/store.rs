//! Reading metered usage back: sums per key, model and deployment over a period, and sums per
//! bucket of time for the series.

use sqlx::Row;

use super::{Period, Used};
use crate::keys::Counts;
use crate::store::{Store, StoreError};

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn counts(r: &sqlx::any::AnyRow) -> Result<Counts, sqlx::Error> {
    Ok(Counts {
        requests: to_u64(r.try_get("requests")?),
        prompt_tokens: to_u64(r.try_get("prompt_tokens")?),
        completion_tokens: to_u64(r.try_get("completion_tokens")?),
    })
}

const SUMS: &str = "CAST(SUM(requests) AS BIGINT) AS requests, \
     CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
     CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens";

impl Store {
    /// Requests and tokens per key, model and deployment in `period`, every process together.
    pub async fn usage_in(&self, period: Period) -> Result<Vec<Used>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT key_id, model, deployment, {SUMS} FROM usage_minutes \
             WHERE minute >= $1 AND minute < $2 GROUP BY key_id, model, deployment"
        ))
        .bind(period.from)
        .bind(period.to)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| -> Result<Used, sqlx::Error> {
                Ok(Used {
                    key_id: r.try_get("key_id")?,
                    model: r.try_get("model")?,
                    deployment: r.try_get("deployment")?,
                    counts: counts(r)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Requests and tokens per bucket of `bucket_ms` from the period's start (the bucket's
    /// start, and its sums).
    pub async fn usage_buckets(
        &self,
        period: Period,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, Counts)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT CAST((minute - $1) / $3 AS BIGINT) AS bucket, {SUMS} FROM usage_minutes \
             WHERE minute >= $1 AND minute < $2 GROUP BY bucket ORDER BY bucket"
        ))
        .bind(period.from)
        .bind(period.to)
        .bind(bucket_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| -> Result<(i64, Counts), sqlx::Error> {
                let bucket: i64 = r.try_get("bucket")?;
                Ok((period.from + bucket * bucket_ms, counts(r)?))
            })
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

//! This installation's identity: one random id per database, made once and kept, that tells its
//! cloud resources apart from those of another installation in the same account.

use super::{Store, StoreError};

impl Store {
    /// The installation's id, made on the first call against a fresh database. Every process
    /// sharing the database gets the same one: a second process racing the first insert loses
    /// the race and reads the winner's.
    pub async fn installation_id(&self) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO installation (singleton, id, created_at) VALUES (1, $1, $2) \
             ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(crate::clock::now_ms())
        .execute(self.pool())
        .await?;
        let id: String = sqlx::query_scalar("SELECT id FROM installation WHERE singleton = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[tokio::test]
    async fn installation_id_is_made_once_and_kept_across_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = Store::sqlite_url_for(dir.path());
        let store = Store::connect(&url).await.expect("connects");
        let id = store.installation_id().await.expect("made");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
        assert_eq!(store.installation_id().await.expect("read"), id);
        store.close().await;
        let restarted = Store::connect(&url).await.expect("connects again");
        assert_eq!(restarted.installation_id().await.expect("read"), id);

        let elsewhere = tempfile::tempdir().expect("temp dir");
        let other = Store::connect(&Store::sqlite_url_for(elsewhere.path()))
            .await
            .expect("connects");
        assert_ne!(other.installation_id().await.expect("made"), id);
    }
}

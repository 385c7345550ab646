use super::*;

async fn keys(env: &[&str]) -> (Arc<Keys>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&Store::sqlite_url_for(dir.path()))
        .await
        .unwrap();
    let keys = Keys::load(
        store,
        env.iter().map(|k| k.to_string()).collect(),
        Arc::default(),
    )
    .await
    .unwrap();
    (keys, dir)
}

fn request(json: serde_json::Value) -> KeyRequest {
    serde_json::from_value(json).unwrap()
}

fn bearer(key: &str) -> Vec<u8> {
    format!("Bearer {key}").into_bytes()
}

#[tokio::test]
async fn v1_is_open_until_a_key_exists_and_stays_closed_when_all_are_revoked() {
    let (keys, _dir) = keys(&[]).await;
    assert!(matches!(keys.authenticate(None), Ok(Caller::Open)));
    let (view, secret) = keys
        .create(request(serde_json::json!({"name": "a"})))
        .await
        .unwrap();
    assert!(matches!(keys.authenticate(None), Err(KeyError::Missing)));
    assert!(matches!(
        keys.authenticate(Some(&bearer(&secret))),
        Ok(Caller::Key(k)) if k.key.id == view.id
    ));
    assert!(matches!(
        keys.authenticate(Some(&bearer("sk-sl-nope"))),
        Err(KeyError::Unknown)
    ));
    let revoked = keys.revoke(&view.id).await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    assert!(matches!(
        keys.authenticate(Some(&bearer(&secret))),
        Err(KeyError::Revoked { .. })
    ));
    assert!(matches!(keys.authenticate(None), Err(KeyError::Missing)));
    assert!(matches!(
        keys.revoke("nope").await,
        Err(KeyError::NotFound(_))
    ));
}

#[tokio::test]
async fn environment_keys_keep_working_beside_managed_ones() {
    let (keys, _dir) = keys(&["env-key"]).await;
    assert!(matches!(
        keys.authenticate(Some(&bearer("env-key"))),
        Ok(Caller::Env)
    ));
    let (_, secret) = keys
        .create(request(serde_json::json!({"name": "a"})))
        .await
        .unwrap();
    assert!(matches!(
        keys.authenticate(Some(&bearer("env-key"))),
        Ok(Caller::Env)
    ));
    assert!(matches!(
        keys.authenticate(Some(&bearer(&secret))),
        Ok(Caller::Key(_))
    ));
    assert!(keys.admit(&Caller::Env, "any").is_ok());
}

#[tokio::test]
async fn models_and_limits_are_enforced_per_key() {
    let (keys, _dir) = keys(&[]).await;
    let (_, secret) = keys
        .create(request(serde_json::json!({
            "name": "team",
            "models": ["m1"],
            "requests_per_minute": 2,
            "tokens_per_minute": 100
        })))
        .await
        .unwrap();
    let caller = keys.authenticate(Some(&bearer(&secret))).unwrap();
    match keys.admit(&caller, "m2") {
        Err(KeyError::ModelNotAllowed { allowed, .. }) => assert_eq!(allowed, "m1"),
        other => panic!("{other:?}"),
    }
    keys.admit(&caller, "m1").unwrap();
    // A token-heavy answer: the next request is refused on tokens.
    let (model, deployment) = (Arc::from("m1"), Arc::from(""));
    keys.record(
        &caller,
        &model,
        &deployment,
        Counts {
            requests: 1,
            prompt_tokens: 60,
            completion_tokens: 40,
        },
    );
    match keys.admit(&caller, "m1") {
        Err(KeyError::RateLimited {
            field,
            limit,
            retry_after_s,
            ..
        }) => {
            assert_eq!((field, limit), ("tokens_per_minute", 100));
            assert!(retry_after_s >= 1);
        }
        other => panic!("{other:?}"),
    }
    // A refused request does not count against the request limit of another key.
    let (_, other) = keys
        .create(request(
            serde_json::json!({"name": "b", "requests_per_minute": 1}),
        ))
        .await
        .unwrap();
    let b = keys.authenticate(Some(&bearer(&other))).unwrap();
    keys.admit(&b, "m1").unwrap();
    assert!(matches!(
        keys.admit(&b, "m1"),
        Err(KeyError::RateLimited {
            field: "requests_per_minute",
            ..
        })
    ));
    // Usage is written and kept per key and model.
    keys.flush().await.unwrap();
    keys.flush().await.unwrap();
}

#[tokio::test]
async fn counters_survive_a_reload() {
    let (keys, _dir) = keys(&[]).await;
    let (_, secret) = keys
        .create(request(
            serde_json::json!({"name": "a", "requests_per_minute": 1}),
        ))
        .await
        .unwrap();
    let caller = keys.authenticate(Some(&bearer(&secret))).unwrap();
    keys.admit(&caller, "m").unwrap();
    keys.reload().await.unwrap();
    let caller = keys.authenticate(Some(&bearer(&secret))).unwrap();
    assert!(keys.admit(&caller, "m").is_err());
}

#[tokio::test]
async fn usage_is_kept_until_pruned() {
    let (keys, _dir) = keys(&[]).await;
    let at = |minute| UsageKey {
        minute,
        key_id: Arc::from(""),
        model: Arc::from("m"),
        deployment: Arc::from(""),
    };
    let one = Counts {
        requests: 1,
        prompt_tokens: 2,
        completion_tokens: 3,
    };
    let store = keys.store();
    store
        .add_usage(&[(at(60_000), one), (at(120_000), one), (at(120_000), one)])
        .await
        .unwrap();
    let all = crate::usage::Period::new(0, 180_000).unwrap();
    let used = store.usage_in(all).await.unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].counts.requests, 3, "added up, not replaced");
    assert_eq!(store.prune_usage(120_000).await.unwrap(), 1);
    assert_eq!(store.usage_in(all).await.unwrap()[0].counts.requests, 2);
}

//! The fleet across processes: two fleets on one database stand for two control-plane
//! processes.

use std::sync::Arc;

use super::endpoint;
use super::node::{HeartbeatReport, NewNode, Registration};
use super::status::{HealthPolicy, NodeStatus};
use super::{token, Fleet};
use crate::metrics::Metrics;
use crate::store::Store;

fn registration() -> Registration {
    serde_json::from_value(serde_json::json!({
        "provider": "aws", "region": "us-east-1", "model_name": "m",
        "endpoint_url": "http://127.0.0.1:9", "gpu_type": "L4",
        "instance_type": "g6.xlarge", "spot_instance": false
    }))
    .unwrap()
}

fn healthy() -> HeartbeatReport {
    serde_json::from_value(serde_json::json!({
        "health_score": 0.9, "model_server": {"ready": true}
    }))
    .unwrap()
}

/// Two fleets on one database stand for two processes that have not heard of each other's
/// change yet: a heartbeat on A after a drain on B must not write `ready` over `draining`.
#[tokio::test]
async fn a_write_on_a_stale_copy_rereads_and_decides_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&Store::sqlite_url_for(dir.path()))
        .await
        .unwrap();
    let policy = HealthPolicy::default();
    let metrics = Arc::new(Metrics::default());
    let a = Fleet::load(store.clone(), policy.clone(), metrics.clone())
        .await
        .unwrap();
    let (node, token) = a
        .create_node(
            NewNode {
                name: "shared".into(),
                model_name: "m".into(),
                endpoint_url: None,
                provider: Some("local".into()),
                labels: None,
            },
            None,
        )
        .await
        .unwrap();
    let origin = endpoint::AgentOrigin {
        peer: "127.0.0.1".parse().unwrap(),
        own: Vec::new(),
        loopback_ok: false,
    };
    a.register(&node.id, &token, registration(), &origin)
        .await
        .unwrap();
    let b = Fleet::load(store.clone(), policy, metrics).await.unwrap();
    b.drain(&node.id, "drained on B").await.unwrap();

    // A still believes the node is registered; its heartbeat would make it ready.
    assert_eq!(
        a.get(&node.id).await.unwrap().status,
        NodeStatus::Registered
    );
    let ack = a.heartbeat(&node.id, &token, healthy()).await.unwrap();
    assert_eq!(ack.status, NodeStatus::Draining);
    assert_eq!(ack.desired, "drain");
    let stored = store.load_node(&node.id).await.unwrap().unwrap();
    assert_eq!(stored.status, NodeStatus::Draining);
    assert_eq!(a.get(&node.id).await.unwrap().status, NodeStatus::Draining);

    // Now B's copy falls behind (A issues a new token); B's terminate re-reads and lands.
    let new_token = a.rotate_token(&node.id).await.unwrap();
    let terminated = b.terminate(&node.id, "gone").await.unwrap();
    assert_eq!(terminated.status, NodeStatus::Terminated);
    let stored = store.load_node(&node.id).await.unwrap().unwrap();
    assert_eq!(stored.status, NodeStatus::Terminated);
    assert!(
        token::matches_hash(&new_token, &stored.token_hash),
        "A's token kept"
    );
}

//! Node changes for live views (the web UI's fleet table): every change the fleet makes, as a
//! snapshot of the node, to whoever is subscribed. Costs nothing while no one is.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::node::Node;

#[derive(Clone)]
pub struct NodeFeed {
    tx: broadcast::Sender<Arc<Node>>,
}

impl Default for NodeFeed {
    fn default() -> Self {
        NodeFeed {
            // Bounded in bytes too: a node's every text is bounded (a heartbeat report is at
            // most a few KiB), so this holds some megabytes at most. A subscriber that falls
            // behind is told and starts over from a snapshot.
            tx: broadcast::channel(1024).0,
        }
    }
}

impl NodeFeed {
    pub fn publish(&self, node: &Node) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(node.clone()));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Node>> {
        self.tx.subscribe()
    }
}

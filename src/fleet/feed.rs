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
            tx: broadcast::channel(8192).0,
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

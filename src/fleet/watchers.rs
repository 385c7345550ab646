//! Who hears of each node change: the routing table and the live views register a
//! [`NodeWatcher`], and every change the fleet makes or takes from another process reaches each
//! of them, in order per node.

use std::sync::{Arc, RwLock};

use super::node::Node;
use super::Fleet;

/// Told about a node each time its live state changes (created, registered, heartbeat,
/// status change), while the node's lock is held, so changes of one node arrive in order.
pub type NodeWatcher = Arc<dyn Fn(&Node) + Send + Sync>;

#[derive(Default)]
pub(super) struct Watchers(RwLock<Vec<NodeWatcher>>);

impl Watchers {
    fn add(&self, watcher: NodeWatcher) {
        self.0
            .write()
            .expect("watcher lock is never poisoned")
            .push(watcher);
    }

    fn tell(&self, node: &Node) {
        for watcher in self
            .0
            .read()
            .expect("watcher lock is never poisoned")
            .iter()
        {
            watcher(node);
        }
    }
}

impl Fleet {
    /// Adds a watcher and tells it about every node there is now.
    pub async fn watch(&self, watcher: NodeWatcher) {
        self.watchers.add(watcher.clone());
        for entry in self.entries() {
            watcher(&entry.lock().await.node);
        }
    }

    /// Tells every watcher about the node's new live state (called with its lock held).
    pub(super) fn changed(&self, node: &Node) {
        self.watchers.tell(node);
    }
}

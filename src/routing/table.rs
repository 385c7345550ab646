//! The routing table: for each model, the ready nodes serving it, kept in memory and updated by
//! the fleet on every registration, heartbeat and status change, so the request path never
//! queries the database. Each endpoint carries what the policy weighs (health score, requests
//! in flight) and what passive health decides (consecutive failures, ejection).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::route::{Route, RoutingPolicy};
use super::upstream::{Pool, Target};
use crate::fleet::node::Node;
use crate::fleet::status::NodeStatus;
use crate::metrics::{Counter, Histogram};

/// A node's load as this process's load balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointLoad {
    pub in_flight: usize,
    /// Requests sent so far (a counter; it restarts when the node registers again).
    pub started: u64,
    /// Answers whose first body byte came so far, and the sum of the times it took them, in
    /// microseconds (counters, restarting with `started`): the autoscaler's `ttft` over a
    /// window is the difference of two readings.
    pub answered: u64,
    pub ttfb_total_us: u64,
}

/// One ready node as the balancer sees it.
#[derive(Debug)]
pub struct Endpoint {
    pub node_id: String,
    /// The node id hashed: what a routing policy's index and hashing know it by.
    pub route_key: u64,
    /// `X-Skylaunch-Node` on every answer it gives: its node id.
    pub node_header: axum::http::HeaderValue,
    pub node_name: String,
    /// The deployment it is a replica of; empty outside any (usage is metered by it).
    pub deployment: Arc<str>,
    /// Base URL of the model server, without a trailing slash.
    pub url: String,
    /// The latest health score (f64 bits); 1.0 until a heartbeat says otherwise.
    health: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Requests sent to it so far by this process (the autoscaler's `rps`).
    pub started: AtomicU64,
    /// Answers whose first body byte came, and the sum of the times it took (µs): the
    /// autoscaler's `ttft`.
    answered: AtomicU64,
    ttfb_total_us: AtomicU64,
    /// Connection failures or 5xx answers in a row.
    pub failures: AtomicU32,
    /// Passive health: no traffic until this time (Unix ms); 0 when not ejected.
    pub ejected_until: AtomicI64,
    /// How many times in a row it was ejected (the backoff grows with it).
    pub ejections: AtomicU32,
    /// When the agent registered: a re-registration (restarted agent and model server) starts
    /// a fresh endpoint, without the old one's failures and ejection.
    registered_at: Option<i64>,
    /// The model server's own API key, which every forwarded request carries (the client's
    /// `Authorization` never goes on).
    model_key: Option<String>,
    /// Where requests go, from `url`; the reason when the URL cannot be used.
    pub target: Result<Target, String>,
    /// Idle keep-alive connections to the model server.
    pub pool: Pool,
    /// Its metric series for answers with status 200, upstream latency and time to the first
    /// byte of the answer's body, looked up on
    /// the first request and kept (the proxy's `Metrics`).
    pub series: std::sync::OnceLock<(Counter, Histogram, Histogram)>,
    /// Its model's token histograms (see [`super::meter::TokenSeries`]), made on first use.
    pub token_series: std::sync::OnceLock<Arc<super::meter::TokenSeries>>,
}

impl Endpoint {
    pub fn new(node_id: &str, node_name: &str, url: &str, health: f64) -> Endpoint {
        Endpoint::registered(node_id, node_name, url, health, None, None, None)
    }

    fn registered(
        node_id: &str,
        node_name: &str,
        url: &str,
        health: f64,
        registered_at: Option<i64>,
        model_key: Option<&str>,
        deployment: Option<&str>,
    ) -> Endpoint {
        let url = url.trim_end_matches('/');
        let route_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            node_id.hash(&mut h);
            h.finish()
        };
        Endpoint {
            node_id: node_id.to_string(),
            route_key,
            // A node id the header cannot carry (the registry issues UUIDs) shows as "invalid".
            node_header: axum::http::HeaderValue::from_str(node_id)
                .unwrap_or_else(|_| axum::http::HeaderValue::from_static("invalid")),
            node_name: node_name.to_string(),
            deployment: Arc::from(deployment.unwrap_or_default()),
            url: url.to_string(),
            health: AtomicU64::new(health.to_bits()),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            ttfb_total_us: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicI64::new(0),
            ejections: AtomicU32::new(0),
            registered_at,
            model_key: model_key.map(str::to_string),
            target: Target::parse(url).map(|t| t.with_key(model_key)),
            pool: Pool::default(),
            series: std::sync::OnceLock::new(),
            token_series: std::sync::OnceLock::new(),
        }
    }

    /// Records how long an answer's first body byte took (two counter increments: the request
    /// path neither locks nor allocates).
    pub fn note_first_byte(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.ttfb_total_us.fetch_add(us, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// What the autoscaler reads of this endpoint.
    pub fn load(&self) -> EndpointLoad {
        EndpointLoad {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            ttfb_total_us: self.ttfb_total_us.load(Ordering::Relaxed),
        }
    }

    pub fn health(&self) -> f64 {
        f64::from_bits(self.health.load(Ordering::Relaxed))
    }

    fn set_health(&self, score: f64) {
        self.health.store(score.to_bits(), Ordering::Relaxed);
    }

    pub fn is_ejected(&self, now_ms: i64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

/// No ready node serves a model; says how many nodes of it exist, by status.
#[derive(Debug, Clone, PartialEq)]
pub struct NoHealthyNodes {
    pub model: String,
    pub by_status: BTreeMap<&'static str, usize>,
}

impl std::fmt::Display for NoHealthyNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_status.is_empty() {
            return write!(
                f,
                "no healthy nodes for model {}: no node serves it",
                self.model
            );
        }
        let counts: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        write!(
            f,
            "no healthy nodes for model {}: {}",
            self.model,
            counts.join(", ")
        )
    }
}

#[derive(Default)]
struct Inner {
    /// Routable endpoints by model; a request takes the list with one reference count, and a
    /// change (rare: a node becomes routable or stops being) makes a new list.
    ready: HashMap<String, Arc<[Arc<Endpoint>]>>,
    /// Each routable node's endpoint and the model it is listed under.
    by_node: HashMap<String, (String, Arc<Endpoint>)>,
    /// Every node that is not terminated: (model, status), for the 503 message.
    nodes: HashMap<String, (String, NodeStatus)>,
    /// Endpoints that stopped being routable, while requests in flight may still hold them: a
    /// draining node is terminated only once they finished (see [`RoutingTable::in_flight`]).
    retired: HashMap<String, std::sync::Weak<Endpoint>>,
    /// Models whose deployment routes by another policy than `least_load`.
    routes: HashMap<String, Arc<Route>>,
}

/// A model's routable endpoints, or why there are none.
pub type Routable = Result<Arc<[Arc<Endpoint>]>, NoHealthyNodes>;

#[derive(Default)]
pub struct RoutingTable {
    inner: RwLock<Inner>,
    /// Requests answered with a server error (or not forwarded for want of a node), by model,
    /// since this process started (see [`RoutingTable::note_failed_answer`]).
    failed_answers: std::sync::Mutex<HashMap<String, u64>>,
    /// Models that may scale to zero, and the requests waiting for one of their replicas.
    pub cold: super::cold::ColdStarts,
}

impl RoutingTable {
    /// Takes in a node's latest state: routable when ready with an endpoint, gone otherwise.
    /// An endpoint that stays routable keeps its counters (requests in flight, failures).
    pub fn update(&self, node: &Node) {
        let routable = node.status == NodeStatus::Ready && node.endpoint_url.is_some();
        let url = node
            .endpoint_url
            .as_deref()
            .map(|u| u.trim_end_matches('/'))
            .unwrap_or_default();
        let health = node.health_score.unwrap_or(1.0);
        // The common case, a heartbeat that changes nothing but the score: no write lock.
        {
            let inner = self.inner.read().expect("routing lock is never poisoned");
            if let (true, Some((model, endpoint))) = (routable, inner.by_node.get(&node.id)) {
                let same_status = inner
                    .nodes
                    .get(&node.id)
                    .is_some_and(|(_, status)| *status == node.status);
                if *model == node.model_name
                    && endpoint.url == url
                    && endpoint.registered_at == node.registered_at
                    && endpoint.model_key == node.model_key
                    && same_status
                {
                    endpoint.set_health(health);
                    return;
                }
            }
        }
        let mut inner = self.inner.write().expect("routing lock is never poisoned");
        let existing = inner.by_node.remove(&node.id);
        if let Some((model, _)) = &existing {
            if let Some(endpoints) = inner.ready.remove(model) {
                let rest: Arc<[Arc<Endpoint>]> = endpoints
                    .iter()
                    .filter(|e| e.node_id != node.id)
                    .cloned()
                    .collect();
                if !rest.is_empty() {
                    inner.ready.insert(model.clone(), rest);
                }
            }
        }
        if let Some((_, endpoint)) = &existing {
            if !routable {
                inner
                    .retired
                    .insert(node.id.clone(), Arc::downgrade(endpoint));
            }
        }
        if routable {
            inner.retired.remove(&node.id);
        }
        if node.status == NodeStatus::Terminated {
            inner.nodes.remove(&node.id);
            inner.retired.remove(&node.id);
        } else {
            inner
                .nodes
                .insert(node.id.clone(), (node.model_name.clone(), node.status));
        }
        if !routable {
            return;
        }
        let endpoint = match existing {
            Some((_, e))
                if e.url == url
                    && e.registered_at == node.registered_at
                    && e.model_key == node.model_key
                    && *e.deployment == *node.deployment.as_deref().unwrap_or_default() =>
            {
                e.set_health(health);
                e
            }
            _ => Arc::new(Endpoint::registered(
                &node.id,
                &node.name,
                url,
                health,
                node.registered_at,
                node.model_key.as_deref(),
                node.deployment.as_deref(),
            )),
        };
        let listed = inner.ready.remove(&node.model_name);
        let endpoints: Arc<[Arc<Endpoint>]> = listed
            .iter()
            .flat_map(|list| list.iter())
            .chain([&endpoint])
            .cloned()
            .collect();
        inner.ready.insert(node.model_name.clone(), endpoints);
        inner
            .by_node
            .insert(node.id.clone(), (node.model_name.clone(), endpoint));
    }

    /// Counts a request for `model` that got a server error, or found no node to take it. Only
    /// for a model that has live nodes (the load balancer's answers say so: an unknown model is
    /// a 404 and not counted), so the map stays as small as the fleet's model list; no scan of
    /// the nodes on this failure path.
    pub fn note_failed_answer(&self, model: &str) {
        *self
            .failed_answers
            .lock()
            .expect("failed answers lock")
            .entry(model.to_string())
            .or_default() += 1;
    }

    /// Requests for `model` this process answered with a server error so far.
    pub fn failed_answers(&self, model: &str) -> u64 {
        self.failed_answers
            .lock()
            .expect("failed answers lock")
            .get(model)
            .copied()
            .unwrap_or(0)
    }

    /// Requests this process has in flight to a node's model server, also after the node
    /// stopped being routable (draining): what a drain waits for.
    pub fn in_flight(&self, node_id: &str) -> usize {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        if let Some((_, endpoint)) = inner.by_node.get(node_id) {
            return endpoint.in_flight.load(Ordering::SeqCst);
        }
        inner
            .retired
            .get(node_id)
            .and_then(std::sync::Weak::upgrade)
            .map_or(0, |e| e.in_flight.load(Ordering::SeqCst))
    }

    /// The load this process sees on a routable node's model server; `None` for a node that
    /// is not routable.
    pub fn load(&self, node_id: &str) -> Option<EndpointLoad> {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        inner.by_node.get(node_id).map(|(_, e)| e.load())
    }

    /// The routable endpoints of a model, or why there are none.
    pub fn endpoints(&self, model: &str) -> Result<Arc<[Arc<Endpoint>]>, NoHealthyNodes> {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        Self::endpoints_in(&inner, model)
    }

    /// [`RoutingTable::endpoints`], and the model's route when its deployment has a policy
    /// other than `least_load` (one lock for both).
    pub fn endpoints_and_route(&self, model: &str) -> (Routable, Option<Arc<Route>>) {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        (
            Self::endpoints_in(&inner, model),
            inner.routes.get(model).cloned(),
        )
    }

    /// Sets the routing policy of each model with a deployment (the reconciler, every pass):
    /// a model's route is kept, with what it learnt, while its policy stays the same.
    pub fn set_routes(&self, wanted: &[(String, RoutingPolicy)]) {
        let routed = || {
            wanted
                .iter()
                .filter(|(_, p)| p.policy != super::route::RoutePolicyKind::LeastLoad)
        };
        let same = {
            let inner = self.inner.read().expect("routing lock is never poisoned");
            routed().count() == inner.routes.len()
                && routed().all(|(model, policy)| {
                    inner.routes.get(model).is_some_and(|r| &r.spec == policy)
                })
        };
        if same {
            return;
        }
        let mut inner = self.inner.write().expect("routing lock is never poisoned");
        let mut routes = HashMap::new();
        for (model, policy) in routed() {
            match inner.routes.remove(model) {
                Some(kept) if &kept.spec == policy => {
                    routes.insert(model.clone(), kept);
                }
                _ => {
                    if let Some(route) = Route::new(policy) {
                        routes.insert(model.clone(), Arc::new(route));
                    }
                }
            }
        }
        inner.routes = routes;
    }

    fn endpoints_in(inner: &Inner, model: &str) -> Routable {
        match inner.ready.get(model) {
            Some(endpoints) if !endpoints.is_empty() => Ok(endpoints.clone()),
            _ => {
                let mut by_status = BTreeMap::new();
                for (m, status) in inner.nodes.values() {
                    if m == model {
                        *by_status.entry(status.as_str()).or_default() += 1;
                    }
                }
                Err(NoHealthyNodes {
                    model: model.to_string(),
                    by_status,
                })
            }
        }
    }

    /// Closes every routable endpoint's connections idle for too long (see `upstream.rs`).
    pub fn close_idle_connections(&self) {
        self.each_pool(Pool::close_expired);
    }

    /// Closes the idle connections kept for the threads that serve client connections (see
    /// `upstream::set_thread_slot`), once those threads' runtimes stopped.
    pub fn close_threads_connections(&self) {
        self.each_pool(Pool::close_threads_connections);
    }

    /// Runs `f` on every routable endpoint's pool of idle connections.
    fn each_pool(&self, f: impl Fn(&Pool)) {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        for (_, endpoint) in inner.by_node.values() {
            f(&endpoint.pool);
        }
    }

    /// Models with at least one ready node, and how many, sorted by name.
    pub fn models(&self) -> Vec<(String, usize)> {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        let mut models: Vec<(String, usize)> = inner
            .ready
            .iter()
            .map(|(m, e)| (m.clone(), e.len()))
            .collect();
        models.sort();
        models
    }

    /// Every routable endpoint (for metrics).
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        let inner = self.inner.read().expect("routing lock is never poisoned");
        inner.by_node.values().map(|(_, e)| e.clone()).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node as the fleet would hand it to the table (its endpoint on a port nothing listens on).
    pub(crate) fn node(id: &str, model: &str, status: NodeStatus, score: Option<f64>) -> Node {
        Node {
            id: id.into(),
            name: id.into(),
            status,
            status_reason: None,
            model_name: model.into(),
            endpoint_url: Some(format!("http://127.0.0.1:9/{id}/")),
            provider: "byo".into(),
            region: None,
            zone: None,
            gpu_type: None,
            gpu_count: None,
            instance_type: None,
            spot_instance: false,
            labels: Default::default(),
            agent_version: None,
            health_score: score,
            last_heartbeat_at: None,
            last_heartbeat: None,
            launch_job_id: None,
            deployment: None,
            deployment_revision: None,
            deployment_slot: None,
            registered_at: None,
            created_at: 0,
            updated_at: 0,
            token_hash: String::new(),
            revision: 0,
            endpoint_pinned: false,
            on_this_host: false,
            model_key: None,
        }
    }

    #[test]
    fn only_ready_nodes_are_routable_and_the_rest_are_counted() {
        let table = RoutingTable::default();
        table.update(&node("a", "m", NodeStatus::Ready, Some(0.9)));
        table.update(&node("b", "m", NodeStatus::Launching, None));
        table.update(&node("c", "m", NodeStatus::Unhealthy, Some(0.2)));
        let ready = table.endpoints("m").unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].url, "http://127.0.0.1:9/a");
        assert_eq!(ready[0].health(), 0.9);
        table.update(&node("a", "m", NodeStatus::Draining, Some(0.9)));
        let none = table.endpoints("m").unwrap_err();
        assert_eq!(
            none.to_string(),
            "no healthy nodes for model m: 1 draining, 1 launching, 1 unhealthy"
        );
        assert_eq!(
            table.endpoints("other").unwrap_err().to_string(),
            "no healthy nodes for model other: no node serves it"
        );
    }

    #[test]
    fn a_node_moving_to_another_model_or_endpoint_moves_in_the_table() {
        let table = RoutingTable::default();
        table.update(&node("a", "m", NodeStatus::Ready, Some(0.9)));
        let mut moved = node("a", "other", NodeStatus::Ready, Some(0.9));
        table.update(&moved);
        assert!(table.endpoints("m").is_err());
        assert_eq!(table.endpoints("other").unwrap().len(), 1);
        moved.endpoint_url = Some("http://127.0.0.1:10/".into());
        table.update(&moved);
        assert_eq!(
            table.endpoints("other").unwrap()[0].url,
            "http://127.0.0.1:10"
        );
        assert_eq!(table.all().len(), 1);
    }

    #[test]
    fn a_heartbeat_updates_the_score_and_keeps_the_counters() {
        let table = RoutingTable::default();
        table.update(&node("a", "m", NodeStatus::Ready, Some(0.9)));
        let before = table.endpoints("m").unwrap()[0].clone();
        before.in_flight.fetch_add(2, Ordering::SeqCst);
        table.update(&node("a", "m", NodeStatus::Ready, Some(0.6)));
        let after = table.endpoints("m").unwrap()[0].clone();
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.health(), 0.6);
        assert_eq!(after.in_flight.load(Ordering::SeqCst), 2);
        table.update(&node("a", "m", NodeStatus::Terminated, None));
        assert!(table.models().is_empty());
        assert!(table.endpoints("m").unwrap_err().by_status.is_empty());
    }
}

//! Forwarding one OpenAI-compatible request to a ready node, and passive health.
//!
//! The request body is read (up to the configured limit) to find its `model`, then sent to the
//! node the policy picks. A connection that fails before anything was sent back is retried on
//! another node; once a response has started, it is never retried. Responses are passed through
//! chunk by chunk as they arrive (server-sent events included); if the client goes away, the
//! stream is dropped and with it the upstream request. A pause between chunks longer than the
//! idle timeout ends the response. Connection failures and 5xx answers in a row eject a node
//! from routing for a growing backoff period, recorded as a node event.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

use super::meter::Meter;
use super::policy::{choose, SplitMix64};
use super::table::{Endpoint, NoHealthyNodes, RoutingTable};
use super::upstream::{Answer, Connector, Head, SendError, IDLE_FOR};
use crate::clock::now_ms;
use crate::fleet::events::NodeEventKind;
use crate::fleet::Fleet;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// Longest pause between two chunks of a response (and before its headers).
    pub idle_timeout: Duration,
    /// Largest request body accepted on `/v1/*`.
    pub body_limit: usize,
    /// Failures in a row that eject a node.
    pub eject_after: u32,
    /// The first ejection's length; each ejection in a row doubles it, up to 32 times.
    pub eject_for: Duration,
    /// Ask for a stream's usage when its client did not (see [`super::meter`]).
    pub meter_streams: bool,
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub enum ProxyError {
    NoHealthyNodes(NoHealthyNodes),
    /// Every node tried refused the connection.
    AllFailed {
        model: String,
        tried: usize,
    },
    /// The node accepted the request but sent no answer in time.
    Timeout {
        node: String,
    },
    Upstream {
        node: String,
        message: String,
    },
    /// The model's deployment is at zero replicas and no replica became ready within its
    /// cold-start timeout.
    ColdStartTimeout {
        model: String,
        waited: Duration,
    },
    /// The model's deployment is at zero replicas and the most requests that may wait for a
    /// replica wait already.
    ColdStartFull {
        model: String,
        max_held: usize,
    },
}

/// How often a request waiting for a cold start looks for a ready replica.
const COLD_START_POLL: Duration = Duration::from_millis(100);

const REQUESTS_HELP: &str = "Requests proxied to model servers, by model, node and status.";
const LATENCY_HELP: &str =
    "Time from sending a request to a model server to its response headers, in seconds, by model.";
const FIRST_BYTE_HELP: &str = "Time from sending a request to a model server to the first byte of its answer's body (for a stream, its first token), in seconds, by model.";
const EJECTIONS_HELP: &str =
    "Times a node was ejected from routing by passive health (failures in a row), by node.";

pub struct Proxy {
    pub table: Arc<RoutingTable>,
    pub settings: ProxySettings,
    /// Model servers are reached over HTTP/1.1 keep-alive connections kept per endpoint
    /// (`upstream.rs`), directly: no HTTP(S)_PROXY applies.
    connector: Connector,
    rng: SplitMix64,
    metrics: Arc<Metrics>,
    /// Where passive health records its ejections, as node events.
    fleet: Arc<Fleet>,
    /// The runtime that made the proxy: node events are written on it, where the database's
    /// connections live, whichever thread forwards the request.
    runtime: tokio::runtime::Handle,
}

/// Holds a request's place in its endpoint's in-flight count until dropped.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        endpoint.started.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A model server's response body on its way to the client, frame by frame as it arrives: never
/// buffered. It ends the response with an error when the model server fails mid-way or sends
/// nothing for the idle timeout. Dropping it (the client went away) drops the upstream request.
/// It holds the request's in-flight place until it is done, and passes on the body's size, so a
/// response with a `content-length` ends with its last byte. A body read to its end hands the
/// connection back to the endpoint's pool; any other ending closes it.
pub struct Relay {
    answer: Answer,
    idle: Duration,
    /// Made the first time the model server keeps the client waiting, then reused.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` counts the current wait (it is re-armed after each frame).
    armed: bool,
    /// `None` once the body ended or failed.
    guard: Option<InFlight>,
    /// When the request went to the model server, until the answer's first body byte (the
    /// autoscaler's time to first token).
    sent_at: Option<Instant>,
    /// Counts the answer's tokens, and takes out a usage chunk the client did not ask for.
    meter: Option<Box<Meter>>,
}

impl Relay {
    /// Meters the answer's tokens as it passes. An answer whose length was announced goes on
    /// byte for byte.
    pub fn meter(&mut self, mut meter: Meter) {
        if self.answer.remaining().is_some() {
            meter.keep_bytes();
        }
        if let Some(sent_at) = self.sent_at {
            meter.sent_at(sent_at);
        }
        self.meter = Some(Box::new(meter));
    }

    fn node_id(&self) -> &str {
        self.guard.as_ref().map_or("", |g| g.0.node_id.as_str())
    }

    /// Records the time to the first byte of the answer's body, once.
    fn first_byte(&mut self) {
        if let (Some(sent_at), Some(guard)) = (self.sent_at.take(), &self.guard) {
            let took = sent_at.elapsed();
            guard.0.note_first_byte(took);
            if let Some((_, _, first_byte)) = guard.0.series.get() {
                first_byte.observe(took.as_secs_f64());
            }
        }
    }

    /// Gives up the in-flight place; the connection goes back to the pool when the whole
    /// answer was read, and is closed otherwise.
    fn finish(&mut self, read_to_end: bool) {
        if let Some(guard) = self.guard.take() {
            if read_to_end {
                if let Some(conn) = self.answer.take_reusable() {
                    guard.0.pool.put(conn);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The server stops polling once `is_end_stream` says the last byte went out.
        let read_to_end = self.answer.is_end();
        self.finish(read_to_end);
    }
}

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match this.answer.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    this.armed = false;
                    if !data.is_empty() {
                        this.first_byte();
                    }
                    let data = match &mut this.meter {
                        Some(meter) => meter.feed(data),
                        None => data,
                    };
                    if data.is_empty() && this.meter.is_some() {
                        // All of it held back or taken out by the meter: read on.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(node_id = %this.node_id(), error = %e, "model server failed mid-response");
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.first_byte();
                    if let Some(held) = this.meter.as_mut().and_then(|m| m.finish()) {
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    this.finish(true);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if !this.armed {
                        let deadline = tokio::time::Instant::now() + this.idle;
                        match &mut this.timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        this.armed = true;
                    }
                    let timer = this.timer.as_mut().expect("armed above");
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    tracing::warn!(node_id = %this.node_id(), "model server went silent mid-response");
                    this.finish(false);
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the model server sent nothing within the idle timeout",
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none()
            || (self.answer.is_end() && !self.meter.as_ref().is_some_and(|m| m.holds()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.meter.as_ref().is_some_and(|m| m.rewrites()) {
            return SizeHint::default();
        }
        self.answer
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A model server's answer on its way to the client: its status, its end-to-end headers, and
/// its body as it arrives.
pub struct Forwarded {
    pub status: StatusCode,
    /// The model server's headers, as they came.
    pub headers: HeaderMap,
    /// [`NODE_HEADER`]'s value, the node that answered: written after `headers`, in place of
    /// any of that name among them (the server writes it straight into the head, with no map
    /// insertion on the request path).
    pub node: axum::http::HeaderValue,
    /// The deployment of the node that answered; empty for none.
    pub deployment: Arc<str>,
    /// The model's token histograms, for the answer's meter.
    pub tokens: Option<Arc<super::meter::TokenSeries>>,
    pub body: Relay,
}

impl Forwarded {
    pub fn into_response(self) -> Response {
        let mut out = Response::new(Body::new(self.body));
        *out.status_mut() = self.status;
        *out.headers_mut() = self.headers;
        out.headers_mut().insert(NODE_HEADER, self.node);
        out
    }
}

/// The header naming the node that served an answer.
pub const NODE_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-skylaunch-node");

impl Proxy {
    pub fn new(
        table: Arc<RoutingTable>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        fleet: Arc<Fleet>,
    ) -> Proxy {
        // Ends with the table: the task holds it weakly.
        let idle_table = Arc::downgrade(&table);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(IDLE_FOR);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(table) = idle_table.upgrade() else {
                    return;
                };
                table.close_idle_connections();
            }
        });
        Proxy {
            table,
            connector: Connector::new(settings.connect_timeout),
            settings,
            rng: SplitMix64::from_entropy(),
            metrics,
            fleet,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// No node is ready for `model`: if its deployment may scale to zero, the request waits
    /// (counted as demand) until a replica is ready or the cold-start timeout passes.
    async fn wait_for_cold_start(
        &self,
        model: &str,
        none: super::table::NoHealthyNodes,
    ) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        let Some(limits) = self.table.cold.limits(model) else {
            return Err(ProxyError::NoHealthyNodes(none));
        };
        let _held = match self.table.cold.hold(model) {
            None => return Err(ProxyError::NoHealthyNodes(none)),
            Some(Err(super::cold::NotHeld::Full { max_held })) => {
                return Err(ProxyError::ColdStartFull {
                    model: model.to_string(),
                    max_held,
                })
            }
            Some(Ok(held)) => held,
        };
        let started = Instant::now();
        tracing::info!(
            model,
            "no replica is ready: the request waits for a cold start"
        );
        loop {
            if let Ok(endpoints) = self.table.endpoints(model) {
                return Ok(endpoints);
            }
            if started.elapsed() >= limits.timeout {
                return Err(ProxyError::ColdStartTimeout {
                    model: model.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(COLD_START_POLL).await;
        }
    }

    /// Uses a seeded random source from now on (tests).
    pub fn seed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    /// Forwards `body` for `model` to `path` (its path and query, e.g.
    /// `/v1/chat/completions?x=1`) on a ready node, with `headers` (those
    /// [`crate::http::headers::forwarded_request_header`] lets through). `hints` are the
    /// request's `X-` headers, which a routing policy may read (`session`).
    pub async fn forward(
        &self,
        model: &str,
        path: &str,
        headers: &[(&[u8], &[u8])],
        hints: &[(&[u8], &[u8])],
        body: Bytes,
    ) -> Result<Forwarded, ProxyError> {
        let (endpoints, route) = match self.table.endpoints_and_route(model) {
            (Ok(endpoints), route) => (endpoints, route),
            (Err(none), _) => {
                let endpoints = self.wait_for_cold_start(model, none).await?;
                (endpoints, self.table.endpoints_and_route(model).1)
            }
        };
        let mut tried: Vec<String> = Vec::new();
        loop {
            // The deployment's routing policy first (its preferred replica, when it has one
            // that is usable), then load.
            let preference = route.as_ref().map(|route| {
                let usable = super::policy::usable(&endpoints, &tried, now_ms);
                (route, route.prefer(&usable, hints, &body))
            });
            let picked = match &preference {
                Some((_, p)) if p.endpoint.is_some() => p.endpoint.clone(),
                _ => choose(&endpoints, &tried, now_ms, &self.rng),
            };
            if let (Some((route, p)), Some(endpoint)) = (&preference, &picked) {
                if p.overloaded {
                    tracing::debug!(model, node_id = %endpoint.node_id, "the replica holding the prompt's prefix is overloaded: load chose another");
                }
                route.learn(&p.blocks, endpoint);
            }
            let Some(endpoint) = picked else {
                // Every node refused the connection, or every ready node is ejected for now.
                return Err(ProxyError::AllFailed {
                    model: model.to_string(),
                    tried: tried.len(),
                });
            };
            let guard = InFlight::new(endpoint.clone());
            let target = match &endpoint.target {
                Ok(target) => target,
                Err(message) => {
                    return Err(ProxyError::Upstream {
                        node: endpoint.node_name.clone(),
                        message: message.clone(),
                    })
                }
            };
            let head = target.post_head(path, headers, body.len());
            let started = Instant::now();
            let sent = tokio::time::timeout(
                self.settings.idle_timeout,
                self.connector.send(&endpoint.pool, target, head, &body),
            )
            .await;
            let (answer_head, answer) = match sent {
                Err(_) => {
                    // Slow is not broken: a long completion under load must not eject a node.
                    self.count(&endpoint, model, "timeout");
                    return Err(ProxyError::Timeout {
                        node: endpoint.node_name.clone(),
                    });
                }
                Ok(Err(SendError::Connect(error))) => {
                    // Nothing reached the model server: another node may take it.
                    self.failed(&endpoint, model, "connect_error").await;
                    tracing::warn!(node_id = %endpoint.node_id, model, error = %error, "model server refused the connection; trying another node");
                    tried.push(endpoint.node_id.clone());
                    continue;
                }
                Ok(Err(SendError::Closed(e))) => {
                    // The model server took the request and dropped the connection (it died, or
                    // closed a pooled connection) before any byte of an answer: nothing reached
                    // the client, so another node may take it.
                    self.failed(&endpoint, model, "closed").await;
                    tracing::warn!(node_id = %endpoint.node_id, model, error = %e, "model server closed the connection without answering; trying another node");
                    tried.push(endpoint.node_id.clone());
                    continue;
                }
                Ok(Err(SendError::Failed(e))) => {
                    self.failed(&endpoint, model, "upstream_error").await;
                    return Err(ProxyError::Upstream {
                        node: endpoint.node_name.clone(),
                        message: e,
                    });
                }
                Ok(Ok(sent)) => sent,
            };
            endpoint
                .token_series
                .get_or_init(|| Arc::new(super::meter::TokenSeries::new(&self.metrics, model)));
            let (ok, latency, _) = endpoint.series.get_or_init(|| {
                (
                    self.metrics.counter(
                        "skylaunch_proxy_requests_total",
                        REQUESTS_HELP,
                        &[
                            ("model", model),
                            ("node", &endpoint.node_name),
                            ("status", "200"),
                        ],
                    ),
                    self.metrics.histogram(
                        "skylaunch_proxy_upstream_seconds",
                        LATENCY_HELP,
                        &[("model", model)],
                    ),
                    self.metrics.histogram(
                        "skylaunch_proxy_first_byte_seconds",
                        FIRST_BYTE_HELP,
                        &[("model", model)],
                    ),
                )
            });
            latency.observe(started.elapsed().as_secs_f64());
            let status = answer_head.status;
            if status == StatusCode::OK {
                ok.inc();
                self.reset_failures(&endpoint);
                return Ok(self.stream_back(answer_head, answer, guard, started));
            }
            if status.is_server_error() {
                self.failed(&endpoint, model, status.as_str()).await;
            } else {
                self.succeeded(&endpoint, model, status.as_str());
            }
            return Ok(self.stream_back(answer_head, answer, guard, started));
        }
    }

    /// The upstream response, passed through as it arrives, with the model server's headers
    /// as they are (every value of a repeated one), less those of its connection.
    fn stream_back(
        &self,
        head: Head,
        answer: Answer,
        guard: InFlight,
        sent_at: Instant,
    ) -> Forwarded {
        Forwarded {
            status: head.status,
            headers: head.headers,
            // Which replica answered, for clients and tests.
            node: guard.0.node_header.clone(),
            deployment: guard.0.deployment.clone(),
            tokens: guard.0.token_series.get().cloned(),
            body: Relay {
                answer,
                idle: self.settings.idle_timeout,
                timer: None,
                armed: false,
                guard: Some(guard),
                sent_at: Some(sent_at),
                meter: None,
            },
        }
    }

    fn count(&self, endpoint: &Endpoint, model: &str, status: &str) {
        self.metrics.inc(
            "skylaunch_proxy_requests_total",
            REQUESTS_HELP,
            &[
                ("model", model),
                ("node", &endpoint.node_name),
                ("status", status),
            ],
        );
    }

    fn succeeded(&self, endpoint: &Endpoint, model: &str, status: &str) {
        self.count(endpoint, model, status);
        self.reset_failures(endpoint);
    }

    /// An answer that is not a failure ends a run of failures (and of ejections, once the
    /// node is back in routing).
    fn reset_failures(&self, endpoint: &Endpoint) {
        if endpoint.failures.load(Ordering::Relaxed) != 0 {
            endpoint.failures.store(0, Ordering::SeqCst);
        }
        if endpoint.ejections.load(Ordering::Relaxed) != 0 && !endpoint.is_ejected(now_ms()) {
            endpoint.ejections.store(0, Ordering::SeqCst);
        }
    }

    /// A connection failure or 5xx: ejects the node after enough of them in a row.
    async fn failed(&self, endpoint: &Endpoint, model: &str, status: &str) {
        self.count(endpoint, model, status);
        let now = now_ms();
        if endpoint.is_ejected(now) {
            // Requests that were in flight when it was ejected do not extend the ejection.
            return;
        }
        let failures = endpoint.failures.fetch_add(1, Ordering::SeqCst) + 1;
        // Of several requests failing at once, only the one that resets the count ejects.
        if failures < self.settings.eject_after
            || endpoint
                .failures
                .compare_exchange(failures, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let round = endpoint.ejections.fetch_add(1, Ordering::SeqCst).min(5);
        let length = self.settings.eject_for * 2u32.pow(round);
        endpoint
            .ejected_until
            .store(now + length.as_millis() as i64, Ordering::SeqCst);
        self.metrics.inc(
            "skylaunch_proxy_ejections_total",
            EJECTIONS_HELP,
            &[("node", &endpoint.node_name)],
        );
        let reason = format!(
            "ejected from routing for {} after {failures} failed requests in a row (last: {status})",
            crate::clock::fmt_duration(length)
        );
        tracing::warn!(node_id = %endpoint.node_id, reason = %reason, "passive health ejected a node");
        // Recorded off the request path: a slow database must not hold up the client.
        let fleet = self.fleet.clone();
        let node_id = endpoint.node_id.clone();
        self.runtime.spawn(async move {
            if let Err(e) = fleet
                .record_event(&node_id, NodeEventKind::Ejected, &reason)
                .await
            {
                tracing::error!(node_id = %node_id, error = %e, "could not record the ejection");
            }
        });
    }
}

//! `GET /metrics`: Prometheus metrics through `prometheus-client`, the Prometheus
//! project's own crate, whose text encoder writes the format Prometheus scrapes.
//!
//! Recording never takes a lock or allocates: every series is an atomic made at start,
//! found by index. That is why the series with labels and the histograms are Kitara's
//! own small types (`Grid`, `Labeled`, `Histogram`) that implement the crate's
//! `EncodeMetric`: the crate's `Family` finds a series through a lock, and its
//! `Histogram` observes under a mutex. Gauges that are a sum over stores (mailbox and
//! writer-queue depth) are read when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The statuses Kitara answers; anything else is counted as `other`.
const STATUSES: &[u16] = &[
    200, 201, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 500, 503,
];

/// An enum whose variants are the values of a metric's label: recording takes the
/// variant (an index, no lookup), and the label text is written only when scraped.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every label value, in the variants' order.
            pub const LABELS: &'static [&'static str] = &[$($label,)*];

            pub fn label(self) -> &'static str {
                Self::LABELS[self as usize]
            }
        }
    };
}

labels!(
    /// What a lock request ended as.
    LockOutcome {
        Placed = "placed",
        Replayed = "replayed",
        Invalid = "invalid",
        UserNotFound = "user_not_found",
        MixedStores = "mixed_stores",
        LimitExceeded = "limit_exceeded",
        NoneAvailable = "none_available",
        SomeAvailable = "some_available",
        KeyInProgress = "key_in_progress",
        KeyReused = "key_reused",
        Busy = "busy",
        Unavailable = "unavailable",
        Conflict = "conflict",
        OutcomeUnknown = "outcome_unknown",
        ShuttingDown = "shutting_down",
        /// Its store is moving between nodes, has no owner yet, or its owner could not
        /// be reached: 503.
        Moved = "moved",
        /// Sent to the node that owns its store, which counts what it ended as.
        Forwarded = "forwarded",
    }
);

labels!(
    /// Why the database failed Kitara.
    DbError {
        /// It refused writes memory allowed (stock changed behind Kitara's back).
        Refused = "refused",
        /// Unreachable, too slow, or failed before COMMIT.
        Unavailable = "unavailable",
        /// A COMMIT whose answer was lost (its token tells the outcome).
        CommitLost = "commit_lost",
        /// A COMMIT whose outcome was not learnt in time.
        OutcomeUnknown = "outcome_unknown",
        /// A COMMIT that lost a conflict (on Galera, a certification failure): rolled
        /// back whole, and written again.
        Conflict = "conflict",
        /// A store could not reload its stock.
        ReloadFailed = "reload_failed",
        /// A connection caught one answer behind, and closed.
        OutOfStep = "out_of_step",
    }
);

labels!(
    /// Why a webhook delivery failed (it is tried again).
    WebhookFailure {
        /// The endpoint answered, but not 2xx.
        Status = "status",
        /// No answer within the delivery timeout.
        Timeout = "timeout",
        /// The endpoint could not be reached, or the connection broke.
        Unreachable = "unreachable",
    }
);

/// Request latency buckets, in microseconds.
const LATENCY_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Commit duration buckets, in microseconds.
const COMMIT_US: &[u64] = &[
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Orders-per-commit buckets.
const ORDERS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024];

pub struct Metrics {
    /// Off only to measure what metrics cost (`KITARA_METRICS=false`).
    pub enabled: bool,
    registry: Registry,
    requests: Arc<Grid>,
    latency: Arc<ByRoute>,
    locks: Arc<Labeled>,
    db_errors: Arc<Labeled>,
    pub commit_seconds: Arc<Histogram>,
    pub orders_per_commit: Arc<Histogram>,
    pub holds_active: Gauge,
    pub expiries: Counter,
    pub events: Counter,
    pub webhook_deliveries: Counter,
    webhook_failures: Arc<Labeled>,
    /// The age of the oldest event not yet acknowledged by the webhook endpoint, in
    /// milliseconds, read when scraped.
    pub webhook_lag_ms: Gauge,
    pub mailbox_depth: Gauge,
    pub writer_queue: Gauge,
    pub stores_owned: Gauge,
    pub takeovers: Counter,
    pub fence_refusals: Counter,
    pub order_reads: Counter,
    pub forwarded_seconds: Arc<Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// `routes`: the labels requests are counted by (`http::route_labels`); the last is
    /// for a path that names no route.
    pub fn new(enabled: bool, routes: Vec<&'static str>) -> Self {
        let mut registry = Registry::with_prefix("kitara");
        let routes: &'static [&'static str] = Vec::leak(routes);
        let requests = Arc::new(Grid::new(routes));
        registry.register(
            "http_requests",
            "Requests answered, by route and status",
            Exported(requests.clone()),
        );
        let latency = Arc::new(ByRoute::new(routes));
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            Exported(latency.clone()),
        );
        let locks = Arc::new(Labeled::new("result", LockOutcome::LABELS));
        registry.register(
            "lock_outcomes",
            "Lock requests by what they ended as: placed, each refusal, each 503",
            Exported(locks.clone()),
        );
        let db_errors = Arc::new(Labeled::new("kind", DbError::LABELS));
        registry.register(
            "database_errors",
            "Database failures by kind (a refused batch, unreachable, a COMMIT whose answer was lost, an outcome not learnt in time, a store that could not reload, a connection caught out of step and closed)",
            Exported(db_errors.clone()),
        );
        let commit_seconds = Arc::new(Histogram::new(COMMIT_US, 1e-6));
        registry.register(
            "commit_duration_seconds",
            "Time of one write transaction, BEGIN to COMMIT",
            Exported(commit_seconds.clone()),
        );
        let orders_per_commit = Arc::new(Histogram::new(ORDERS, 1.0));
        registry.register(
            "orders_per_commit",
            "New orders in one committed transaction (group commit)",
            Exported(orders_per_commit.clone()),
        );
        let holds_active = registered(
            &mut registry,
            "holds_active",
            "Orders locked and not yet confirmed, cancelled or expired",
            Gauge::default(),
        );
        let expiries = registered(
            &mut registry,
            "expiries",
            "Holds that expired",
            Counter::default(),
        );
        let events = registered(
            &mut registry,
            "events",
            "Events of stores' changes committed by this node",
            Counter::default(),
        );
        let webhook_deliveries = registered(
            &mut registry,
            "webhook_deliveries",
            "Events the webhook endpoint acknowledged (2xx)",
            Counter::default(),
        );
        let webhook_failures = Arc::new(Labeled::new("kind", WebhookFailure::LABELS));
        registry.register(
            "webhook_failures",
            "Webhook deliveries that failed and will be tried again, by kind: a status that is not 2xx, no answer in time, an endpoint not reached",
            Exported(webhook_failures.clone()),
        );
        let webhook_lag_ms = registered(
            &mut registry,
            "webhook_lag_milliseconds",
            "How far webhook deliveries are behind: the age of the oldest event of the stores served here not yet acknowledged (0 when none is)",
            Gauge::default(),
        );
        let mailbox_depth = registered(
            &mut registry,
            "mailbox_depth_max",
            "Commands waiting in the fullest store mailbox",
            Gauge::default(),
        );
        let writer_queue = registered(
            &mut registry,
            "writer_queue_depth",
            "Submissions waiting for the database writer",
            Gauge::default(),
        );
        let stores_owned = registered(
            &mut registry,
            "stores_owned",
            "Stores this node owns and serves",
            Gauge::default(),
        );
        let takeovers = registered(
            &mut registry,
            "takeovers",
            "Stores this node took (each raised the store's epoch)",
            Counter::default(),
        );
        let fence_refusals = registered(
            &mut registry,
            "fence_refusals",
            "Stores whose writes the fence refused: another node had taken them",
            Counter::default(),
        );
        let order_reads = registered(
            &mut registry,
            "order_reads",
            "Orders read from the database by a confirm, a cancel or GET /api/v1/order/{id}; a confirm or cancel of a live hold of a store served here reads none",
            Counter::default(),
        );
        let forwarded_seconds = Arc::new(Histogram::new(COMMIT_US, 1e-6));
        registry.register(
            "forwarded_request_duration_seconds",
            "Requests forwarded to the node that owns their store, and the time their answer took",
            Exported(forwarded_seconds.clone()),
        );
        Self {
            enabled,
            registry,
            requests,
            latency,
            locks,
            db_errors,
            commit_seconds,
            orders_per_commit,
            holds_active,
            expiries,
            events,
            webhook_deliveries,
            webhook_failures,
            webhook_lag_ms,
            mailbox_depth,
            writer_queue,
            stores_owned,
            takeovers,
            fence_refusals,
            order_reads,
            forwarded_seconds,
        }
    }

    /// A request answered: its route (an index of the labels `new` was given), status
    /// and latency.
    pub fn request(&self, route: usize, status: u16, took: Duration) {
        if !self.enabled {
            return;
        }
        self.requests.add(route, status);
        self.latency.observe(route, took);
    }

    pub fn lock_outcome(&self, outcome: LockOutcome) {
        if self.enabled {
            self.locks.add(outcome as usize);
        }
    }

    pub fn db_error(&self, kind: DbError) {
        if self.enabled {
            self.db_errors.add(kind as usize);
        }
    }

    pub fn webhook_failure(&self, kind: WebhookFailure) {
        if self.enabled {
            self.webhook_failures.add(kind as usize);
        }
    }

    /// A committed transaction: how long it took and how many new orders it held (one
    /// of only ends of holds is not a commit of orders).
    pub fn commit(&self, took: Duration, orders: usize) {
        if self.enabled {
            self.commit_seconds.observe(took.as_micros() as u64);
            if orders > 0 {
                self.orders_per_commit.observe(orders as u64);
            }
        }
    }

    /// A request forwarded to its store's owner, answered (or not) after `took`.
    pub fn forwarded(&self, took: Duration) {
        if self.enabled {
            self.forwarded_seconds.observe(took.as_micros() as u64);
        }
    }

    /// The text Prometheus scrapes.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What Kitara's own series types write; `Exported` hands them to the registry while
/// the recording sites keep their `Arc`.
trait Series: Send + Sync + std::fmt::Debug + 'static {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error>;
    fn metric_type(&self) -> MetricType;
}

#[derive(Debug)]
struct Exported<T>(Arc<T>);

impl<T: Series> EncodeMetric for Exported<T> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Requests by route and status: one atomic per pair; only pairs seen are written.
#[derive(Debug)]
struct Grid {
    routes: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl Grid {
    fn new(routes: &'static [&'static str]) -> Self {
        let cells = routes.len() * (STATUSES.len() + 1);
        Self {
            routes,
            counts: (0..cells).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, route: usize, status: u16) {
        let column = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let cell = route.min(self.routes.len() - 1) * (STATUSES.len() + 1) + column;
        self.counts[cell].fetch_add(1, Ordering::Relaxed);
    }
}

impl Series for Grid {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (cell, count) in self.counts.iter().enumerate() {
            let n = count.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let route = self.routes[cell / (STATUSES.len() + 1)];
            let status = STATUSES
                .get(cell % (STATUSES.len() + 1))
                .map_or_else(|| "other".to_owned(), u16::to_string);
            let labels = [("route", route), ("status", status.as_str())];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A counter per value of one label, every value written (zeros too, so that rates
/// start from the first scrape).
#[derive(Debug)]
struct Labeled {
    label: &'static str,
    names: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl Labeled {
    fn new(label: &'static str, names: &'static [&'static str]) -> Self {
        Self {
            label,
            names,
            counts: names.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, index: usize) {
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Series for Labeled {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (name, count) in self.names.iter().zip(self.counts.iter()) {
            let labels = [(self.label, *name)];
            encoder
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram of whole units (microseconds, orders) with fixed bounds: one atomic per
/// bucket and one for the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// What one unit is in the exported value (1e-6 for microseconds as seconds).
    scale: f64,
    /// Per bucket, not cumulative; the last is above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64], scale: f64) -> Self {
        Self {
            bounds,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The encoder makes the buckets cumulative itself: it is given each bucket's own
    /// count.
    fn encode_into(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 * self.scale);
            buckets.push((bound, count));
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }
}

impl Series for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(&mut encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Request latency, one histogram per route; routes never asked for are left out.
#[derive(Debug)]
struct ByRoute {
    routes: &'static [&'static str],
    histograms: Box<[Histogram]>,
}

impl ByRoute {
    fn new(routes: &'static [&'static str]) -> Self {
        Self {
            routes,
            histograms: routes
                .iter()
                .map(|_| Histogram::new(LATENCY_US, 1e-6))
                .collect(),
        }
    }

    fn observe(&self, route: usize, took: Duration) {
        if let Some(histogram) = self.histograms.get(route) {
            histogram.observe(took.as_micros() as u64);
        }
    }
}

impl Series for ByRoute {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (route, histogram) in self.routes.iter().zip(self.histograms.iter()) {
            if histogram.count() == 0 {
                continue;
            }
            let labels = [("route", *route)];
            histogram.encode_into(&mut encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Registers `metric` under `name` and answers it, so the caller keeps a handle.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_written_in_the_text_format() {
        let metrics = Metrics::new(true, vec!["healthz", "lock", "unmatched"]);
        metrics.request(1, 200, Duration::from_micros(700));
        metrics.request(1, 200, Duration::from_millis(3));
        metrics.request(2, 418, Duration::from_micros(10));
        metrics.lock_outcome(LockOutcome::NoneAvailable);
        assert_eq!(
            LockOutcome::LABELS.len(),
            LockOutcome::Forwarded as usize + 1
        );
        assert_eq!(LockOutcome::KeyReused.label(), "key_reused");
        assert_eq!(DbError::OutOfStep.label(), "out_of_step");
        metrics.commit(Duration::from_millis(2), 120);
        metrics.holds_active.inc_by(3);
        let text = metrics.render().unwrap();
        for line in [
            r#"kitara_http_requests_total{route="lock",status="200"} 2"#,
            r#"kitara_http_requests_total{route="unmatched",status="other"} 1"#,
            r#"kitara_http_request_duration_seconds_bucket{le="0.001",route="lock"} 1"#,
            r#"kitara_http_request_duration_seconds_count{route="lock"} 2"#,
            // Cumulative: the 0.7 ms request is in every bucket from 1 ms up, the 3 ms
            // one from 5 ms up; +Inf is the count.
            r#"kitara_http_request_duration_seconds_bucket{le="0.0025",route="lock"} 1"#,
            r#"kitara_http_request_duration_seconds_bucket{le="0.005",route="lock"} 2"#,
            r#"kitara_http_request_duration_seconds_bucket{le="10.0",route="lock"} 2"#,
            r#"kitara_http_request_duration_seconds_bucket{le="+Inf",route="lock"} 2"#,
            r#"kitara_lock_outcomes_total{result="none_available"} 1"#,
            r#"kitara_lock_outcomes_total{result="placed"} 0"#,
            r#"kitara_orders_per_commit_bucket{le="128.0"} 1"#,
            r#"kitara_orders_per_commit_bucket{le="1024.0"} 1"#,
            r#"kitara_orders_per_commit_bucket{le="+Inf"} 1"#,
            r#"kitara_orders_per_commit_sum 120.0"#,
            "kitara_holds_active 3",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}

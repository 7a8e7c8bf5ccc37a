//! Webhooks (SPEC.md, "Every change as an event"): every event of the stores this node
//! serves is POSTed to `KITARA_WEBHOOK_URL`, in order per store, at least once, signed.
//!
//! One task per store served here reads the store's events from the outbox after its
//! delivered position, and POSTs them one at a time: event s is not sent before s − 1
//! got a 2xx. A failure (a status that is not 2xx, no answer within the timeout, an
//! endpoint that cannot be reached) is tried again after a backoff: 0.8 s, doubling,
//! capped at 10 s, each ±20 % (so the first retry comes within 1 s). Each attempt is
//! signed afresh: `Kitara-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
//!
//! The position is stored after every acknowledged delivery, without holding up the
//! next one: one write at a time per store, each with the newest position acknowledged
//! (a store's deliveries never wait for the database). After a restart or a change of
//! owner, the deliverer starts from the stored position, so what is sent again is at
//! most what was in flight or acknowledged since the last write of the position landed.
//! Nothing here touches the order path: a slow, failing or hanging endpoint only makes
//! its store's deliveries fall behind, which `/metrics` shows
//! (`kitara_webhook_lag_seconds`, `kitara_webhook_failures_total{kind}`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sea_orm::DatabaseConnection;
use sha2::Sha256;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cluster::{Cluster, Route};
use crate::db::call;
use crate::db::events::{self, Event};
use crate::domain::StoreId;
use crate::metrics::{Metrics, WebhookFailure};
use crate::store::Feed;

/// The shortest secret accepted.
pub const MIN_SECRET: usize = 16;

/// The first retry's delay before jitter; each next one doubles, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(800);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Outbox rows read at a time (each holds one transaction's events of the store).
const PAGE: u32 = 16;

/// How often the supervisor looks for stores this node started serving.
const LOOK: Duration = Duration::from_secs(1);

/// A deliverer with nothing to send waits for its store's head in the feed, which moves
/// with every event committed here (it watches before it first reads the outbox, so
/// none is missed); it reads the outbox anyway after this long. With 10,000 stores, a look
/// every 250 ms each would be 40,000 queries a second of an idle node.
const IDLE: Duration = Duration::from_secs(30);

/// A read of the outbox or of a position that failed is tried again after this.
const RETRY_READ: Duration = Duration::from_secs(1);

/// Where and how events are POSTed.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: Uri,
    secret: Arc<[u8]>,
    /// How long one delivery may take before it counts as failed.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the webhook settings were refused at start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("KITARA_WEBHOOK_URL must be an http:// or https:// URL with a host")]
    NotHttp,
    #[error("KITARA_WEBHOOK_URL needs KITARA_WEBHOOK_SECRET, of at least {MIN_SECRET} characters")]
    NoSecret,
    #[error("KITARA_WEBHOOK_SECRET must be at least {MIN_SECRET} characters")]
    ShortSecret,
}

impl WebhookConfig {
    /// The webhook settings, checked: `None` when no URL is set.
    pub fn new(
        url: Option<&str>,
        secret: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Self>, WebhookError> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let url: Uri = url.parse().map_err(|_| WebhookError::NotHttp)?;
        let http = matches!(url.scheme_str(), Some("http" | "https"));
        if !http || url.host().is_none_or(str::is_empty) {
            return Err(WebhookError::NotHttp);
        }
        let secret = secret
            .filter(|s| !s.is_empty())
            .ok_or(WebhookError::NoSecret)?;
        if secret.chars().count() < MIN_SECRET {
            return Err(WebhookError::ShortSecret);
        }
        Ok(Some(Self {
            url,
            secret: Arc::from(secret.as_bytes()),
            timeout,
        }))
    }

    /// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
    pub fn signature(&self, t: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(digest.len() * 2);
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        format!("t={t},v1={hex}")
    }
}

/// The deliverers of this node, one per store it serves.
pub struct Webhooks {
    config: WebhookConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    db: DatabaseConnection,
    cluster: Arc<Cluster>,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
    /// Per store with events not yet acknowledged: when the oldest was decided (Unix
    /// milliseconds).
    behind: DashMap<StoreId, i64>,
}

/// Why a deliverer stops: its store is no longer served here.
struct Gone;

/// What one attempt came to.
enum Attempt {
    Delivered,
    Failed(WebhookFailure),
}

impl Webhooks {
    pub fn new(
        config: WebhookConfig,
        db: DatabaseConnection,
        cluster: Arc<Cluster>,
        feed: Arc<Feed>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Arc::new(Self {
            config,
            client,
            db,
            cluster,
            feed,
            metrics,
            behind: DashMap::new(),
        })
    }

    /// How far behind the deliveries are: the age of the oldest event not yet
    /// acknowledged, over every store served here (0 when none is).
    pub fn lag(&self) -> Duration {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = self.behind.iter().map(|e| *e.value()).min();
        oldest.map_or(Duration::ZERO, |at| {
            Duration::from_millis(u64::try_from(now - at).unwrap_or(0))
        })
    }

    /// Starts the supervisor: a deliverer for every store this node serves, started as
    /// the node takes stores; each stops when its store leaves.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let webhooks = self.clone();
        tokio::spawn(async move {
            // Dropped when the supervisor is aborted (shutdown): every deliverer stops.
            let mut tasks = JoinSet::new();
            let mut running: HashMap<StoreId, AbortHandle> = HashMap::new();
            let mut look = tokio::time::interval(LOOK);
            loop {
                look.tick().await;
                while tasks.try_join_next().is_some() {}
                running.retain(|_, task| !task.is_finished());
                for store in webhooks.cluster.stores() {
                    if running.contains_key(&store) {
                        continue;
                    }
                    let deliverer = webhooks.clone();
                    let task = tasks.spawn(async move {
                        let _ = deliverer.deliver(store).await;
                        deliverer.behind.remove(&store);
                    });
                    running.insert(store, task);
                }
            }
        })
    }

    /// The epoch this node serves `store` at, if it serves it (`Some(None)` on SQLite).
    fn serving(&self, store: StoreId) -> Option<Option<i64>> {
        match self.cluster.route(store) {
            Route::Here(handle) => Some(handle.epoch()),
            _ => None,
        }
    }

    /// Delivers `store`'s events in order while it is served here.
    /// A deliverer serves one tenure of its store here: if the store leaves (and
    /// perhaps comes back at a newer epoch), it stops before its next event, and the
    /// supervisor starts another from the position stored meanwhile.
    async fn deliver(&self, store: StoreId) -> Result<(), Gone> {
        let mut head = self.feed.head(store);
        let tenure = self.serving(store).ok_or(Gone)?;
        let served = || self.serving(store) == Some(tenure);
        let mut position = self.position(store, &served).await?;
        let mut storing: Option<JoinHandle<()>> = None;
        let mut stored = position;
        loop {
            if !served() {
                return Err(Gone);
            }
            let page = self.page(store, position).await;
            let Some(first) = page.first() else {
                self.behind.remove(&store);
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            return Err(Gone);
                        }
                    }
                    () = tokio::time::sleep(IDLE) => {}
                }
                continue;
            };
            self.behind.insert(store, first.at_ms);
            for event in &page {
                if !served() {
                    return Err(Gone);
                }
                self.behind.insert(store, event.at_ms);
                self.deliver_one(event, &served).await?;
                position = event.seq;
                // One write of the position at a time, each with the newest.
                if storing.as_ref().is_none_or(JoinHandle::is_finished) && position > stored {
                    stored = position;
                    let db = self.db.clone();
                    storing = Some(tokio::spawn(async move {
                        let stored = call::detached(async move {
                            events::set_delivered(&db, store, position).await
                        });
                        if let Err(e) = stored.await {
                            crate::warn_summarised!("cannot store a webhook position", error = %e, "cannot store a webhook position");
                        }
                    }));
                }
            }
            // Caught up: whatever the last write missed is written now.
            if position > stored {
                if let Some(task) = storing.take() {
                    let _ = task.await;
                }
                stored = position;
                let db = self.db.clone();
                let _ = call::detached(
                    async move { events::set_delivered(&db, store, position).await },
                )
                .await;
            }
        }
    }

    /// Where `store`'s deliveries resume: tried until it is read, while the store is
    /// served here.
    async fn position(&self, store: StoreId, served: &impl Fn() -> bool) -> Result<i64, Gone> {
        loop {
            let db = self.db.clone();
            match call::detached(async move { events::delivered(&db, store).await }).await {
                Ok(position) => return Ok(position),
                Err(e) => {
                    crate::warn_summarised!("cannot read a webhook position", error = %e, "cannot read a webhook position");
                    tokio::time::sleep(RETRY_READ).await;
                    if !served() {
                        return Err(Gone);
                    }
                }
            }
        }
    }

    /// The next events of `store` after `position` (none if the read fails: it is
    /// tried again soon).
    async fn page(&self, store: StoreId, position: i64) -> Vec<Event> {
        let db = self.db.clone();
        let read = call::detached(async move { events::after(&db, store, position, PAGE).await });
        match read.await {
            Ok(page) => page,
            Err(e) => {
                crate::warn_summarised!("cannot read events to deliver", error = %e, "cannot read events to deliver");
                tokio::time::sleep(RETRY_READ).await;
                Vec::new()
            }
        }
    }

    /// POSTs one event until the endpoint answers 2xx, or its store leaves this node.
    async fn deliver_one(&self, event: &Event, served: &impl Fn() -> bool) -> Result<(), Gone> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.attempt(event).await {
                Attempt::Delivered => {
                    if self.metrics.enabled {
                        self.metrics.webhook_deliveries.inc();
                    }
                    return Ok(());
                }
                Attempt::Failed(kind) => {
                    self.metrics.webhook_failure(kind);
                    tracing::debug!(store = %event.store, seq = event.seq, failure = kind.label(), "a webhook delivery failed; retrying");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if !served() {
                        return Err(Gone);
                    }
                }
            }
        }
    }

    async fn attempt(&self, event: &Event) -> Attempt {
        let t = chrono::Utc::now().timestamp();
        let request = Request::post(self.config.url.clone())
            .header("content-type", "application/json")
            .header("kitara-event-id", format!("{}:{}", event.store, event.seq))
            .header("kitara-signature", self.config.signature(t, &event.body))
            .body(Full::new(event.body.clone()));
        let Ok(request) = request else {
            return Attempt::Failed(WebhookFailure::Unreachable);
        };
        let started = Instant::now();
        let answered = tokio::time::timeout(self.config.timeout, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read to its end, so the connection can be used again.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match answered {
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
            Ok(Ok(_)) => Attempt::Failed(WebhookFailure::Status),
            Ok(Err(_)) => Attempt::Failed(WebhookFailure::Unreachable),
            Err(_) => {
                tracing::debug!(took = ?started.elapsed(), "a webhook delivery timed out");
                Attempt::Failed(WebhookFailure::Timeout)
            }
        }
    }
}

/// `delay` ±20 %.
fn jittered(delay: Duration) -> Duration {
    // A fresh random state per call: random enough for jitter, and no crate for it.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.8 + 0.4 * (random % 10_000) as f64 / 10_000.0;
    delay.mul_f64(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_time_and_the_body() {
        let config = WebhookConfig::new(
            Some("http://127.0.0.1:9/hook"),
            Some("0123456789abcdef"),
            Duration::from_secs(1),
        )
        .unwrap()
        .unwrap();
        // HMAC-SHA256 of "1700000000.{}" keyed by "0123456789abcdef", as
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef` gives it.
        assert_eq!(
            config.signature(1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let new = |url, secret| {
            WebhookConfig::new(url, secret, Duration::from_secs(1)).map(|c| c.is_some())
        };
        assert_eq!(new(None, None), Ok(false));
        assert_eq!(
            new(Some("https://shop.example/hooks"), Some("a-secret-of-16-c")),
            Ok(true)
        );
        assert_eq!(
            new(Some("ftp://shop.example/"), Some("a-secret-of-16-c")),
            Err(WebhookError::NotHttp)
        );
        assert_eq!(
            new(Some("not a url"), Some("a-secret-of-16-c")),
            Err(WebhookError::NotHttp)
        );
        assert_eq!(
            new(Some("/relative"), Some("a-secret-of-16-c")),
            Err(WebhookError::NotHttp)
        );
        assert_eq!(
            new(Some("http://shop.example/"), None),
            Err(WebhookError::NoSecret)
        );
        assert_eq!(
            new(Some("http://shop.example/"), Some("short")),
            Err(WebhookError::ShortSecret)
        );
    }

    #[test]
    fn a_backoff_is_jittered_by_a_fifth_and_capped() {
        for _ in 0..1_000 {
            let first = jittered(FIRST_BACKOFF);
            assert!(
                first >= Duration::from_millis(640) && first <= Duration::from_millis(960),
                "{first:?}"
            );
            assert!(jittered(MAX_BACKOFF) <= MAX_BACKOFF);
        }
    }
}

//! The application layer: what happens to a validated request between the edge and the
//! store actors. `orders` judges rules 4 to 7 of a lock and the buyer of a confirm or
//! cancel, `admin` carries the store owner's changes to their store's actor (or, for
//! users and stores, to the writer), `keys` decides what a retry with an
//! `Idempotency-Key` gets, and `users` knows which buyers exist.
//!
//! Each part holds what it needs (shared `Arc`s of the catalog, the store registry and
//! the known users); none of them knows `AppState`, which only gathers them for the
//! front end.

pub mod admin;
pub mod events;
pub mod keys;
pub mod orders;
pub mod users;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::health::Readiness;
use crate::metrics::Metrics;

/// What every connection of the front end shares.
pub struct AppState {
    pub orders: orders::Orders,
    pub admin: admin::Admin,
    pub events: events::Events,
    /// The webhooks' deliverers, when `KITARA_WEBHOOK_URL` is set (`/metrics` shows
    /// their lag).
    pub webhooks: Option<std::sync::Arc<crate::webhooks::Webhooks>>,
    /// Set when the server starts shutting down: long-lived answers (event streams)
    /// end, so that draining requests does not wait for them.
    pub closing: tokio::sync::watch::Sender<bool>,
    pub catalog: Arc<Catalog>,
    /// Which stores this node serves, and the other nodes.
    pub cluster: Arc<Cluster>,
    /// What holds are timed by (tests move a manual one).
    pub clock: Clock,
    /// Whether the database answered lately (`GET /readyz`).
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Expires every hold that is due by the clock, in every store, and returns once
    /// those expiries committed (start-up, and tests that move a manual clock).
    pub async fn settle_due(&self) {
        self.orders.settle_due().await;
    }
}

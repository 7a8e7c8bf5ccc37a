//! The order desk: what happens to a validated order request before and after its store
//! actor (rules 4 to 7 of the judging order for a lock; the buyer check and the status
//! rules for a confirm or cancel).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::time::Instant;

use super::keys::InFlightKeys;
use super::users::KnownUsers;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::db::call::Reads;
use crate::db::load::{self, OrderRow};
use crate::db::write::KeyRecord;
use crate::domain::{Deadline, OrderId, OrderStatus, Resolution, Transition, UserId, transition};
use crate::store::{
    Failure, LockError, LockRequest, LockResult, Registry, ResolveError, StoreHandle,
};

/// The order desk: rules 4 to 7 of a lock, and the buyer check of a confirm or cancel.
pub struct Orders {
    pub catalog: Arc<Catalog>,
    /// The concurrent index from a store to its actor.
    pub stores: Arc<Registry>,
    pub users: Arc<KnownUsers>,
    /// Off only in tests that show the database guard alone stops oversell; it also
    /// turns off the sold-out fast path, which reads the same memory.
    pub memory_check: bool,
    /// What holds are timed by.
    pub clock: Clock,
    /// `KITARA_HOLD_SECONDS`: how long a lock that names no `hold_seconds` holds; 0
    /// holds until confirmed or cancelled.
    pub default_hold_seconds: u32,
    /// The keys of keyed requests in progress.
    pub keys: InFlightKeys,
    /// The reads of the order endpoints and of stored answers, capped so that a flood
    /// of them cannot take the pool's connections from the writer.
    pub reads: Reads,
    /// How long a request waits for the database before it is answered 503 (the pool's
    /// acquire timeout); a write whose COMMIT is in flight then also waits out the
    /// outcome deadline.
    pub answer_within: Duration,
}

/// Where a confirm or cancel leaves the order.
#[derive(Debug)]
pub enum Ended {
    /// The order as it is now: this request's change, or a harmless repeat.
    Order(OrderRow),
    /// The order ended otherwise and cannot change again.
    Conflict(OrderStatus),
    /// No such order of this buyer.
    NotFound,
}

impl Orders {
    /// When a request that starts now must be answered (see `answer_within`).
    pub fn answer_by(&self) -> Instant {
        Instant::now() + self.answer_within
    }

    /// The deadline of a lock that asked for `hold_seconds` (or for the default).
    pub fn deadline_for(&self, hold_seconds: Option<u32>) -> Option<Deadline> {
        match hold_seconds.unwrap_or(self.default_hold_seconds) {
            0 => None,
            seconds => Some(self.clock.deadline_after(seconds)),
        }
    }

    pub async fn lock(&self, request: LockRequest) -> LockResult {
        let order = &request.order;
        // Rule 4: the buyer must be a known user.
        match self.users.exists(order.buyer(), request.answer_by).await {
            Ok(true) => {}
            Ok(false) => return Err(LockError::UserNotFound),
            Err(e) => {
                crate::warn_summarised!("user lookup failed", error = %e, "user lookup failed");
                return Err(LockError::Failed(Failure::Unavailable));
            }
        }

        // Rule 5: the known products must all belong to one store. Unknown products
        // are simply lines that cannot be served (rule 6).
        let mut store = None;
        let mut sold_out = true;
        let catalog = self.catalog.snapshot();
        for line in order.lines() {
            let Some(product) = catalog.get(line.product) else {
                continue;
            };
            match store {
                None => store = Some(product.store),
                Some(s) if s != product.store => return Err(LockError::MixedStores),
                Some(_) => {}
            }
            // A limit is judged before availability, by the actor.
            if product.stock() >= line.quantity || product.max_per_customer.is_some() {
                sold_out = false;
            }
        }
        drop(catalog);
        let Some(store) = store else {
            return Err(LockError::NoneAvailable);
        };

        // Sold-out fast path: the actor publishes its stock after every change, so when
        // no line fits the published stock the actor would refuse the order too; the
        // refusal is answered without queueing behind the store's other orders.
        if self.memory_check && sold_out {
            return Err(LockError::NoneAvailable);
        }
        // Limits, availability and the write belong to the store's actor.
        let Some(handle) = self.stores.get(store) else {
            return Err(LockError::Failed(Failure::ShuttingDown));
        };
        handle.lock(request).await
    }

    /// Confirms or cancels an order of `buyer`; a keyed request stores `key` with the
    /// change.
    pub async fn end(
        &self,
        id: OrderId,
        buyer: UserId,
        resolution: Resolution,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
    ) -> Result<Ended, ResolveError> {
        // The second pass is for a hold that ended between the read and the actor.
        for _ in 0..2 {
            let order = self.order(id, answer_by).await.map_err(|e| {
                crate::warn_summarised!("order lookup failed", error = %e, "order lookup failed");
                ResolveError::Failed(Failure::Unavailable)
            })?;
            let Some(mut order) = order.filter(|o| o.buyer == buyer) else {
                return Ok(Ended::NotFound);
            };
            match transition(order.status, resolution) {
                Transition::AlreadyThere => return Ok(Ended::Order(order)),
                Transition::Conflict(status) => return Ok(Ended::Conflict(status)),
                Transition::Apply => {}
            }
            let Some(handle) = self.stores.get(order.store) else {
                return Err(ResolveError::NotHeld);
            };
            match handle
                .resolve(id, buyer, resolution, key.clone(), answer_by)
                .await
            {
                Ok(status) => {
                    order.status = status;
                    return Ok(match transition(status, resolution) {
                        Transition::Conflict(status) => Ended::Conflict(status),
                        _ => Ended::Order(order),
                    });
                }
                Err(ResolveError::NotHeld) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ResolveError::NotHeld)
    }

    /// Expires every hold that is due by the clock, in every store, and returns once
    /// those expiries committed (start-up, and tests that move a manual clock).
    pub async fn settle_due(&self) {
        let handles = self.stores.handles();
        futures_util::future::join_all(handles.iter().map(StoreHandle::settle_due)).await;
    }

    /// The order as the database has it: every change answered so far is there.
    pub async fn order(&self, id: OrderId, answer_by: Instant) -> Result<Option<OrderRow>, DbErr> {
        self.reads
            .run(
                answer_by,
                move |db| async move { load::order(&db, id).await },
            )
            .await
    }
}

//! When the database does not commit what a store decided: memory takes the decision
//! back (or, after a refusal or an unknown outcome, reloads the store from the database),
//! the request is decided once more if it can still be answered in time, or it is
//! answered 503.

use sea_orm::DbErr;
use tokio::time::Instant;

use super::actor::{RELOAD_INTERVAL, RELOAD_RETRY, StoreActor};
use super::attempt::{Asked, Attempt, Cause, EndRequest, LockAttempt};
use super::{Failure, HeldOrder};
use crate::backoff::Backoff;
use crate::catalog::Product;
use crate::db::call;
use crate::db::load::{self, StoreState};
use crate::db::write::PersistError;
use crate::domain::{HoldBook, LockOrder, OrderLine, ProductChange, ProductId, Purchases};
use crate::metrics::DbError;

impl StoreActor {
    /// A write that did not commit because the database could not be reached (or did
    /// not answer in time): memory takes it back, and it is decided once more if its
    /// request still has time, or answered 503.
    pub(super) fn retry_or_answer_lost(&mut self, attempt: Attempt, again: &mut Vec<Asked>) {
        let failure = Cause::Write(PersistError::Unavailable);
        self.decide_waiters_again(&attempt, again);
        // (`<=` would differ only at the deadline's very nanosecond: an equivalent
        // mutant, as mutation testing lists it.)
        let in_time = Instant::now() < attempt.answer_by();
        self.take_back(&attempt, failure);
        match attempt {
            Attempt::Lock(attempt) if in_time && !attempt.retried => {
                again.push(Asked::Lock(LockAttempt {
                    retried: true,
                    ..attempt
                }));
            }
            Attempt::End { request, .. }
                if in_time && !request.retried && request.respond_to.is_some() =>
            {
                again.push(Asked::End(EndRequest {
                    retried: true,
                    ..request
                }));
            }
            attempt => Self::answer_failed(attempt, failure),
        }
    }

    /// After the store reloaded (or failed to): decides a failed write once more against
    /// the truth, or answers it.
    pub(super) fn retry_or_answer(
        &mut self,
        attempt: Attempt,
        error: PersistError,
        reloaded: bool,
        again: &mut Vec<Asked>,
    ) {
        // A reload replaced the holds: what waited for this end is decided against them.
        self.decide_waiters_again(&attempt, again);
        let nothing_committed = matches!(
            error,
            PersistError::Refused | PersistError::Conflicted | PersistError::Unavailable
        );
        match attempt {
            // Asked it once more against the truth.
            Attempt::Lock(attempt) if nothing_committed && reloaded && !attempt.retried => {
                again.push(Asked::Lock(LockAttempt {
                    retried: true,
                    ..attempt
                }));
            }
            Attempt::End { request, .. }
                if nothing_committed
                    && reloaded
                    && !request.retried
                    && request.respond_to.is_some() =>
            {
                again.push(Asked::End(EndRequest {
                    retried: true,
                    ..request
                }));
            }
            // The reload replaced memory with the truth: only the answer is left (an
            // expiry's hold was re-armed by the reload).
            attempt if reloaded => Self::answer_failed(attempt, Cause::Write(error)),
            // Memory, not replaced by a reload, still counts the decision.
            attempt => self.undo(attempt, Cause::Write(error)),
        }
    }

    /// An end that did not commit: the requests that waited for it are decided again.
    pub(super) fn decide_waiters_again(&mut self, attempt: &Attempt, again: &mut Vec<Asked>) {
        if let Attempt::End { request, .. } = attempt
            && let Some(waiters) = self.waiting.remove(&request.order)
        {
            again.extend(waiters.into_iter().map(Asked::End));
        }
    }

    /// Takes back a decision that was not persisted, and answers it.
    pub(super) fn undo(&mut self, attempt: Attempt, failure: Cause) {
        self.take_back(&attempt, failure);
        Self::answer_failed(attempt, failure);
    }

    /// Takes back a decision that was not persisted. A lock whose outcome is unknown
    /// keeps its units: it may have committed, and the store reloads before it decides
    /// anything else.
    pub(super) fn take_back(&mut self, attempt: &Attempt, failure: Cause) {
        match attempt {
            Attempt::Lock(lock) if failure != Cause::Write(PersistError::OutcomeUnknown) => {
                // Or the published stock would turn orders away for units nobody bought.
                self.give_back(&lock.order);
            }
            Attempt::Lock(_) => {}
            Attempt::End { request, .. } => self.holds.abort(request.order),
            Attempt::Change(attempt) => {
                // (The edge refuses a delta of 0: `<= 0` is an equivalent mutant.)
                if let ProductChange::Restock { product, delta, .. } = attempt.change
                    && delta < 0
                    && failure != Cause::Write(PersistError::OutcomeUnknown)
                {
                    self.book.release(&[OrderLine {
                        product,
                        quantity: -delta,
                    }]);
                    self.publish(std::iter::once(product));
                }
            }
        }
    }

    /// Answers a decision that was not persisted. A refusal is a `Conflict` only where
    /// it is final: an order refused again after the store reloaded, or a product change
    /// (a confirm or cancel, or an order refused once, was decided again instead).
    pub(super) fn answer_failed(attempt: Attempt, cause: Cause) {
        let failure = |refused_is_final: bool| match cause {
            Cause::KeyTaken => Failure::KeyTaken,
            Cause::ShuttingDown => Failure::ShuttingDown,
            Cause::Write(PersistError::OutcomeUnknown) => Failure::OutcomeUnknown,
            Cause::Write(PersistError::Fenced) => Failure::Moved,
            Cause::Write(PersistError::Refused) if refused_is_final => Failure::Conflict,
            Cause::Write(_) => Failure::Unavailable,
        };
        match attempt {
            Attempt::Lock(attempt) => {
                let failure = failure(attempt.retried);
                attempt.answer(Err(failure.into()));
            }
            Attempt::End { mut request, .. } => request.answer(Err(failure(false).into())),
            Attempt::Change(attempt) => attempt.answer(Err(failure(true).into())),
        }
    }

    /// Replaces memory with the database's view of the store. Only called with nothing
    /// in flight. The read runs to its end on a task of its own (`db::call`); the actor
    /// waits for it until `deadline`, and a read still under way then is waited for
    /// again by the next reload rather than started twice. Its result is still the
    /// truth when it comes: a store that could not reload decides nothing (it answers
    /// 503, and its timer is off), so nothing of it is written meanwhile.
    pub(super) async fn reload(&mut self, deadline: Instant) -> bool {
        let mut backoff = Backoff::new(1, RELOAD_RETRY, RELOAD_INTERVAL);
        loop {
            let read = self.reloading.get_or_insert_with(|| {
                let (db, store) = (self.db.clone(), self.store);
                tokio::spawn(async move { load::stores(&db, Some(store)).await })
            });
            let result = match tokio::time::timeout_at(deadline, read).await {
                Ok(joined) => {
                    self.reloading = None;
                    joined.map_err(|e| DbErr::Custom(format!("a reload failed: {e}")))
                }
                Err(_) => Err(call::too_slow()),
            };
            match result.and_then(|r| r) {
                Ok(mut stores) => {
                    let state = stores.remove(&self.store).unwrap_or_default();
                    self.replace_state(state);
                    self.stale_since = None;
                    tracing::info!(store = %self.store, "reloaded the store from the database");
                    return true;
                }
                // A connection that died with the batch may still sit in the pool; a
                // failed read discards it, so another try soon reaches a live one. (A read
                // still under way has met the deadline: with `||` for `&&`, a read that
                // failed only after the deadline starts one more, which the deadline
                // then cuts off at once and the next reload waits for; `<=` differs only
                // at the deadline's very nanosecond: equivalent mutants.)
                Err(_) if self.reloading.is_none() && Instant::now() < deadline => {
                    backoff.wait(deadline).await;
                }
                Err(e) => {
                    self.metrics.db_error(DbError::ReloadFailed);
                    crate::warn_summarised!(
                        "cannot reload a store",
                        store = %self.store,
                        error = %e,
                        "cannot reload the store"
                    );
                    self.stale_since = Some(Instant::now());
                    return false;
                }
            }
        }
    }

    pub(super) fn replace_state(&mut self, state: StoreState) {
        // The catalog shows what was read: a change whose outcome was unknown, or a row
        // changed behind Kitara's back, is listed as the database has it.
        let products: Vec<Product> = state
            .products
            .into_iter()
            .map(|row| {
                let id = ProductId(row.id);
                let mut product = Product::from(row);
                if let Some(stock) = self.products.get(&id) {
                    product.stock = stock.clone();
                }
                product
            })
            .collect();
        self.products = products.iter().map(|p| (p.id, p.stock.clone())).collect();
        self.catalog.replace_store(self.store, products);
        self.book.replace(state.stock);
        self.purchases = Purchases::new(
            state.limits,
            state
                .purchases
                .iter()
                .map(|p| (p.buyer, p.product, p.units)),
        );
        if let Some(events) = &mut self.events {
            events.next_seq = state.last_event + 1;
        }
        self.forget_live_holds();
        for hold in &state.holds {
            self.live.insert(
                hold.id,
                HeldOrder {
                    store: self.store,
                    buyer: hold.order.buyer(),
                    expires_at: hold.expires_at,
                    details: hold.details.clone(),
                },
            );
        }
        self.holds = HoldBook::new(
            state
                .holds
                .into_iter()
                .map(|h| (h.id, h.order, h.expires_at)),
        );
        self.armed = None;
        self.publish_holds();
        let all: Vec<ProductId> = self.products.keys().copied().collect();
        self.publish(all.into_iter());
    }

    /// Reloads a store that went stale, at most once per `RELOAD_INTERVAL`. (`<` or
    /// `<=` at the interval's end is the same; mutation testing lists it as a survivor,
    /// an equivalent one.)
    pub(super) async fn reload_if_due(&mut self, deadline: Instant) -> bool {
        match self.stale_since {
            Some(since) if since.elapsed() < RELOAD_INTERVAL => false,
            _ => self.reload(deadline).await,
        }
    }

    /// Returns an order's reserved units to memory: nothing of it committed.
    pub(super) fn give_back(&mut self, order: &LockOrder) {
        self.book.release(order.lines());
        self.purchases.remove(order);
        self.publish(order.lines().iter().map(|l| l.product));
    }
}

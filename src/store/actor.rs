//! The store actor's task: the single owner of a store's stock, holds and purchases.
//! It takes one command at a time, decides it in memory, hands the decision to the
//! writer, and answers only when the writer says it committed; it also times holds'
//! expiry and reloads its state when the database could not say what it is.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::attempt::{Asked, Attempt, Cause, ChangeAttempt, EndRequest, LockAttempt};
use super::feed::{Feed, StoreEvents};
use super::{
    Command, Failure, HeldOrder, LiveHolds, LockError, Placed, Registry, ResolveError, StoreHandle,
};
use crate::catalog::{Catalog, Product, PublishedStock};
use crate::clock::Clock;
use crate::db::load::StoreState;
use crate::db::write::{Fence, PersistError, Settled, Write, Written};
use crate::domain::{
    Changes, Deadline, Ending, HoldBook, OrderId, ProductId, Purchases, Reservation, Resolution,
    StockBook, StoreId,
};
use crate::metrics::Metrics;
use crate::writer::WriterHandle;

/// While its stock is unknown (the database was unreachable), a store tries to reload it
/// at most this often; orders in between are answered 503 at once.
pub(super) const RELOAD_INTERVAL: Duration = Duration::from_millis(200);

/// A reload whose read failed tries again after this pause, until its deadline.
pub(super) const RELOAD_RETRY: Duration = Duration::from_millis(20);

/// An expiry submission holds up to this many batches' worth of holds: a wave of
/// expiries is bound by the database's row updates, and larger transactions of them
/// finish it sooner while orders still get a transaction between any two of them.
const EXPIRY_CHUNK_BATCHES: usize = 4;

pub struct ActorConfig {
    pub mailbox: usize,
    pub batch_size: usize,
    pub memory_check: bool,
}

/// What every store actor shares: where it publishes, what it writes through, what it
/// reloads from, and the clock its holds are timed by.
#[derive(Clone)]
pub struct Shared {
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    pub writer: WriterHandle,
    pub db: DatabaseConnection,
    pub clock: Clock,
    /// Where the store's handle is found; an actor whose store another node took
    /// removes its own handle from it.
    pub registry: Arc<Registry>,
    /// Where a confirm or cancel finds the live holds of this node's stores.
    pub live: Arc<LiveHolds>,
    /// Where committed events are published; `None` when events are off.
    pub feed: Option<Arc<Feed>>,
}

/// Starts the actor of one store with the state read from the database (a new store's
/// is empty). `epoch`: the epoch this node owns the store at (MySQL), proven by every
/// transaction of the store's writes; `None` on SQLite, where one process serves every
/// store.
pub fn spawn(
    store: StoreId,
    epoch: Option<i64>,
    products: Vec<Arc<Product>>,
    state: StoreState,
    shared: Shared,
    config: &ActorConfig,
) -> (StoreHandle, tokio::task::JoinHandle<()>) {
    let Shared {
        catalog,
        metrics,
        writer,
        db,
        clock,
        registry,
        live,
        feed,
    } = shared;
    let (sender, mailbox) = mpsc::channel(config.mailbox);
    let moved = clock.is_manual().then(|| clock.watch());
    let mut actor = StoreActor {
        store,
        fence: epoch.map(|epoch| Fence { store, epoch }),
        lost: false,
        registry,
        live,
        book: StockBook::default(),
        holds: HoldBook::default(),
        purchases: Purchases::default(),
        products: products
            .into_iter()
            .map(|p| (p.id, p.stock.clone()))
            .collect(),
        catalog,
        metrics,
        published_holds: 0,
        mailbox,
        writer,
        db,
        clock,
        moved,
        batch_size: config.batch_size,
        memory_check: config.memory_check,
        in_flight: FuturesUnordered::new(),
        stale_since: None,
        reloading: None,
        waiting: HashMap::new(),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed: None,
        expiring: false,
        reload_after: false,
        changes: Changes::default(),
        events: feed.map(|feed| StoreEvents::new(feed, 0)),
    };
    actor.replace_state(state);
    let handle = StoreHandle { sender, epoch };
    (handle, tokio::spawn(actor.run()))
}

type InFlight = Pin<Box<dyn Future<Output = (Vec<Attempt>, Settled)> + Send>>;

pub(super) struct StoreActor {
    pub(super) store: StoreId,
    /// What every transaction of this store's writes proves (MySQL).
    pub(super) fence: Option<Fence>,
    /// Another node took the store: everything still asked is answered `Moved`, and
    /// the actor stops once what it handed to the writer has come back.
    pub(super) lost: bool,
    pub(super) registry: Arc<Registry>,
    pub(super) live: Arc<LiveHolds>,
    /// The store's stock with every reservation in flight already taken off.
    pub(super) book: StockBook,
    /// The live holds: orders still locked, with their deadlines.
    pub(super) holds: HoldBook,
    /// What buyers hold or bought of the products with a per-customer limit.
    pub(super) purchases: Purchases,
    /// Where the stock of each product is published for readers that must not wait
    /// for the actor.
    pub(super) products: HashMap<ProductId, Arc<PublishedStock>>,
    /// The products every reader sees; the actor replaces its store's entries when a
    /// change of them committed.
    pub(super) catalog: Arc<Catalog>,
    pub(super) metrics: Arc<Metrics>,
    /// The live holds this store has counted into `metrics.holds_active`.
    pub(super) published_holds: i64,
    pub(super) mailbox: mpsc::Receiver<Command>,
    pub(super) writer: WriterHandle,
    /// For reloading the store after the database refused a batch.
    pub(super) db: DatabaseConnection,
    pub(super) clock: Clock,
    /// Tells when a manual clock moved, so that the timer is armed again.
    pub(super) moved: Option<watch::Receiver<u64>>,
    pub(super) batch_size: usize,
    pub(super) memory_check: bool,
    /// Submissions handed to the writer whose outcome has not come back yet.
    pub(super) in_flight: FuturesUnordered<InFlight>,
    /// Set while the store is unknown because a reload failed: when it was last tried.
    pub(super) stale_since: Option<Instant>,
    /// A reload's read still under way (see `reload`).
    pub(super) reloading:
        Option<tokio::task::JoinHandle<Result<HashMap<StoreId, StoreState>, DbErr>>>,
    /// Confirms and cancels of holds whose end is already on its way, answered when it
    /// has committed (or decided again if it failed).
    pub(super) waiting: HashMap<OrderId, Vec<EndRequest>>,
    /// One timer for the store: it fires at the earliest deadline of its holds.
    pub(super) timer: Pin<Box<tokio::time::Sleep>>,
    /// The deadline the timer is set for.
    pub(super) armed: Option<Deadline>,
    /// An expiry submission is in flight: the next waits for it, so that a wave of
    /// expiries takes turns with orders at the writer instead of queueing ahead of them.
    pub(super) expiring: bool,
    /// A limit was set on a product that had none: what buyers hold of it is read from
    /// the database before anything else is decided.
    pub(super) reload_after: bool,
    /// The owner's changes of the store's products that the writer has not answered.
    pub(super) changes: Changes,
    /// The store's events, when they are on.
    pub(super) events: Option<StoreEvents>,
}

impl StoreActor {
    async fn run(mut self) {
        // Grown as the mailbox fills, not sized for a full batch up front: a catalogue of
        // 10,000 stores runs 10,000 actors, most of them quiet.
        let mut batch = Vec::new();
        let mut open = true;
        loop {
            self.arm_timer();
            let timer_on =
                self.armed.is_some() && self.stale_since.is_none() && !self.expiring && !self.lost;
            tokio::select! {
                // Answering committed writes comes first: it frees clients soonest.
                biased;
                Some((attempts, settled)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(attempts, settled).await;
                }
                received = self.mailbox.recv_many(&mut batch, self.batch_size), if open => {
                    if received == 0 {
                        open = false;
                        continue;
                    }
                    let mut asked = Vec::with_capacity(received);
                    for command in batch.drain(..) {
                        match command {
                            Command::Lock { request, respond_to } => asked.push(Asked::Lock(LockAttempt {
                                order: Arc::new(request.order),
                                expires_at: request.expires_at,
                                key: request.key,
                                answer_by: request.answer_by,
                                respond_to,
                                retried: false,
                            })),
                            Command::Resolve { order, buyer, resolution, key, answer_by, respond_to } => {
                                asked.push(Asked::End(EndRequest {
                                    order,
                                    buyer: Some(buyer),
                                    asked: resolution,
                                    key,
                                    answer_by,
                                    respond_to: Some(respond_to),
                                    retried: false,
                                }))
                            }
                            Command::Change { change, key, answer_by, respond_to } => {
                                asked.push(Asked::Change(ChangeAttempt { change, key, answer_by, respond_to }))
                            }
                            Command::SettleDue { respond_to } => {
                                // What came before it is decided first.
                                self.decide(std::mem::take(&mut asked)).await;
                                self.settle_due().await;
                                let _ = respond_to.send(());
                            }
                        }
                    }
                    self.decide(asked).await;
                }
                () = &mut self.timer, if timer_on && open => {
                    self.armed = None;
                    self.expire_due(self.batch_size * EXPIRY_CHUNK_BATCHES).await;
                }
                moved = Self::clock_moved(&mut self.moved), if open && self.moved.is_some() => {
                    if moved {
                        self.armed = None;
                    } else {
                        self.moved = None;
                    }
                }
                // While the stock is unknown, keep trying to reload it, so the store is
                // ready again soon after the database is, even before the next order. Not
                // once the mailbox is closed: a store that is shutting down has nothing to
                // serve, and must not wait for the database to come back.
                () = tokio::time::sleep(RELOAD_INTERVAL), if self.stale_since.is_some() && open && !self.lost => {
                    // Nobody waits for this one: it holds the store up for at most an
                    // interval, and a read still under way is waited for again next time.
                    self.reload_if_due(Instant::now() + RELOAD_INTERVAL).await;
                }
                else => break,
            }
        }
        // Its holds are no longer this node's to end (the store was handed over, or the
        // node stops). A newer actor of the store, if one started, re-adds its own as
        // it loads; one removed here meanwhile only costs a confirm a read.
        self.forget_live_holds();
        tracing::debug!(store = %self.store, "store actor stopped");
    }

    /// Resolves when a manual clock moves (`true`) or can no longer move (`false`);
    /// never for the system clock.
    async fn clock_moved(moved: &mut Option<watch::Receiver<u64>>) -> bool {
        match moved {
            Some(moved) => moved.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    }

    /// Sets the timer for the earliest deadline, if that changed.
    fn arm_timer(&mut self) {
        let next = self.holds.next_deadline();
        if next != self.armed {
            if let Some(deadline) = next {
                let at = tokio::time::Instant::now() + self.clock.until(deadline);
                self.timer.as_mut().reset(at);
            }
            self.armed = next;
        }
    }

    /// Starts expiring up to `limit` holds that are due; returns whether any was.
    async fn expire_due(&mut self, limit: usize) -> bool {
        // The timer may fire a little early by the store's clock; it is armed again.
        let due = self.holds.begin_due(self.clock.now_seconds(), limit);
        if due.is_empty() {
            return false;
        }
        let mut attempts = Vec::with_capacity(due.len());
        let mut writes = Vec::with_capacity(due.len());
        let answer_by = Instant::now() + self.writer.answer_within();
        for id in due {
            let Some(hold) = self.holds.get(id) else {
                continue;
            };
            writes.push(Write::End {
                order_id: id,
                resolution: Resolution::Expire,
                order: hold.order.clone(),
                key: None,
                event: None,
            });
            attempts.push(Attempt::End {
                request: EndRequest {
                    order: id,
                    buyer: None,
                    asked: Resolution::Expire,
                    key: None,
                    answer_by,
                    respond_to: None,
                    retried: false,
                },
                resolution: Resolution::Expire,
            });
        }
        // The timer waits until this chunk settles, so that an expiry wave goes to the
        // writer a chunk at a time, between orders. Nothing answers differently if it
        // does not (mutation testing lists `attempts.is_empty()` here as a survivor):
        // the chunks would then go to the writer one after another without waiting.
        self.expiring = !attempts.is_empty();
        self.submit(attempts, writes).await;
        true
    }

    /// Expires everything that is due, then waits until nothing is in flight. (Chunks
    /// of another size would do too: `batch_size + 4` survives mutation testing.)
    async fn settle_due(&mut self) {
        if self.stale_since.is_none() {
            while self
                .expire_due(self.batch_size * EXPIRY_CHUNK_BATCHES)
                .await
            {}
        }
        while let Some((attempts, settled)) = self.in_flight.next().await {
            self.settle(attempts, settled).await;
        }
    }

    /// Decides each request in arrival order from memory, and hands what it decided
    /// to the writer in one submission.
    async fn decide(&mut self, requests: Vec<Asked>) {
        if requests.is_empty() {
            return;
        }
        if self.lost {
            for request in requests {
                request.refuse(Failure::Moved);
            }
            return;
        }
        let answer_by = requests
            .iter()
            .map(|r| match r {
                Asked::Lock(lock) => lock.answer_by,
                Asked::End(end) => end.answer_by,
                Asked::Change(change) => change.answer_by,
            })
            .min();
        if self.stale_since.is_some()
            && !self
                .reload_if_due(answer_by.unwrap_or_else(Instant::now))
                .await
        {
            for request in requests {
                request.refuse(Failure::Unavailable);
            }
            return;
        }
        let now = self.clock.now_seconds();
        let mut attempts = Vec::with_capacity(requests.len());
        let mut writes = Vec::with_capacity(requests.len());
        for request in requests {
            match request {
                Asked::Lock(attempt) => {
                    if !self.purchases.allows(&attempt.order) {
                        attempt.answer(Err(LockError::LimitExceeded));
                        continue;
                    }
                    let lines = attempt.order.lines();
                    let verdict = if self.memory_check {
                        self.book.try_reserve(lines)
                    } else {
                        self.book.reserve_unchecked(lines)
                    };
                    match verdict {
                        Reservation::Reserved => {
                            self.purchases.add(&attempt.order);
                            self.publish(lines.iter().map(|l| l.product));
                            writes.push(Write::Lock {
                                store: self.store,
                                order: attempt.order.clone(),
                                expires_at: attempt.expires_at,
                                key: attempt.key.clone(),
                                event: None,
                            });
                            attempts.push(Attempt::Lock(attempt));
                        }
                        Reservation::SomeAvailable => attempt.answer(Err(LockError::SomeAvailable)),
                        Reservation::NoneAvailable => attempt.answer(Err(LockError::NoneAvailable)),
                    }
                }
                Asked::End(mut request) => {
                    let buyer_holds = self
                        .holds
                        .get(request.order)
                        .is_some_and(|h| request.buyer.is_none_or(|b| h.order.buyer() == b));
                    if !buyer_holds {
                        request.answer(Err(ResolveError::NotHeld));
                        continue;
                    }
                    match self.holds.begin(request.order, request.asked, now) {
                        Ending::NotLive => request.answer(Err(ResolveError::NotHeld)),
                        Ending::Pending(_) => {
                            self.waiting.entry(request.order).or_default().push(request)
                        }
                        Ending::Started(resolution) => {
                            let Some(hold) = self.holds.get(request.order) else {
                                continue;
                            };
                            let order = hold.order.clone();
                            // A hold past due expires instead: the request's key is not
                            // stored, since its answer will not be a 200.
                            let key = if resolution == request.asked {
                                request.key.clone()
                            } else {
                                None
                            };
                            writes.push(Write::End {
                                order_id: request.order,
                                resolution,
                                order,
                                key,
                                event: None,
                            });
                            attempts.push(Attempt::End {
                                request,
                                resolution,
                            });
                        }
                    }
                }
                Asked::Change(attempt) => match self.begin_change(&attempt.change) {
                    Ok(write) => {
                        writes.push(Write::Admin {
                            change: write,
                            event: None,
                            key: attempt.key.clone(),
                        });
                        attempts.push(Attempt::Change(attempt));
                    }
                    Err(error) => attempt.answer(Err(error)),
                },
            }
        }
        self.submit(attempts, writes).await;
    }

    /// Hands decided writes to the writer; the outcome comes back through `in_flight`.
    /// With events on, what is decided while a submission is at the writer is held
    /// until it is back (`store::events`).
    async fn submit(&mut self, mut attempts: Vec<Attempt>, mut writes: Vec<Write>) {
        let mut first_event = None;
        if let Some(events) = &mut self.events {
            events.held.extend(attempts.into_iter().zip(writes));
            if !self.in_flight.is_empty() {
                return;
            }
            (attempts, writes) = std::mem::take(&mut events.held).into_iter().unzip();
            first_event = Some((self.store, events.next_seq));
            self.draft_events(&mut writes);
        }
        let Some(answer_by) = attempts.iter().map(Attempt::answer_by).min() else {
            return;
        };
        match self
            .writer
            .submit(writes, self.fence, first_event, answer_by)
            .await
        {
            Ok(outcome) => self.in_flight.push(Box::pin(async move {
                let settled = outcome.await.unwrap_or_else(|_| Settled {
                    outcome: vec![Err(PersistError::Unavailable); attempts.len()],
                    events: Vec::new(),
                });
                (attempts, settled)
            })),
            Err(_) => {
                for attempt in attempts {
                    if let Attempt::Change(change) = &attempt {
                        self.changes.landed(&change.change);
                    }
                    self.undo(attempt, Cause::ShuttingDown);
                }
            }
        }
    }

    /// Hands over what was held while a submission was at the writer, once none is.
    async fn submit_held(&mut self) {
        let held = self.events.as_ref().is_some_and(|e| !e.held.is_empty());
        if held && self.in_flight.is_empty() {
            self.submit(Vec::new(), Vec::new()).await;
        }
    }

    async fn settle(&mut self, attempts: Vec<Attempt>, settled: Settled) {
        let mut failed = Vec::new();
        let mut again = Vec::new();
        self.apply(attempts, settled, &mut failed, &mut again);
        self.publish_holds();
        // Nothing of a write that failed as `Unavailable` committed: memory takes it back
        // exactly, and it is decided once more if its request can still be answered in
        // time. Only a refusal (or an unknown outcome) can leave memory and database
        // apart, and only that costs a reload.
        let reload = self.reload_after
            || failed
                .iter()
                .any(|(_, error)| *error != PersistError::Unavailable);
        if reload {
            // Memory and database may now disagree. Wait until nothing of this store is
            // in flight, so the database holds every decision memory still counts, then
            // reload: what is read is then the whole truth. (What those writes came to
            // is sorted with the rest, below.)
            while let Some((attempts, settled)) = self.in_flight.next().await {
                self.apply(attempts, settled, &mut failed, &mut again);
            }
        }
        let (lost, failed): (Vec<_>, Vec<_>) = failed
            .into_iter()
            .partition(|(_, error)| *error == PersistError::Unavailable);
        for (attempt, _) in lost {
            self.retry_or_answer_lost(attempt, &mut again);
        }
        if reload {
            // Held decisions are in memory but not at the writer: a reload would lose
            // them. Nothing of them was written: they are decided again after it, as a
            // write that never reached the database is (a change is answered 503).
            for (attempt, _) in self
                .events
                .as_mut()
                .map(|e| std::mem::take(&mut e.held))
                .unwrap_or_default()
            {
                match &attempt {
                    Attempt::Change(change) => self.changes.landed(&change.change),
                    // An expiry nobody waits for: the reload re-arms its hold, and the
                    // timer must run again. (Held, an expiry is the only thing that can
                    // keep `expiring` set once nothing is in flight, so clearing it for
                    // every held end would answer the same: mutation testing lists this
                    // guard → `true` as a survivor, an equivalent one.)
                    Attempt::End { request, .. } if request.respond_to.is_none() => {
                        self.expiring = false;
                    }
                    _ => {}
                }
                self.retry_or_answer_lost(attempt, &mut again);
            }
            let deadline = failed
                .iter()
                .map(|(attempt, _)| attempt.answer_by())
                .min()
                .unwrap_or_else(|| Instant::now() + self.writer.answer_within());
            let reloaded = self.reload(deadline).await;
            self.reload_after = false;
            for (attempt, error) in failed {
                self.retry_or_answer(attempt, error, reloaded, &mut again);
            }
        }
        self.decide(again).await;
        self.submit_held().await;
    }

    /// Applies what committed and answers it; collects the writes that failed, and the
    /// requests to decide again.
    fn apply(
        &mut self,
        attempts: Vec<Attempt>,
        settled: Settled,
        failed: &mut Vec<(Attempt, PersistError)>,
        again: &mut Vec<Asked>,
    ) {
        self.committed_events(settled.events);
        for (attempt, result) in attempts.into_iter().zip(settled.outcome) {
            if matches!(attempt, Attempt::End { ref request, .. } if request.respond_to.is_none()) {
                self.expiring = false;
            }
            if let Attempt::Change(change) = &attempt {
                self.changes.landed(&change.change);
            }
            match (attempt, result) {
                (Attempt::Lock(attempt), Ok(Written::Placed(committed))) => {
                    self.holds.insert(
                        committed.order_id,
                        attempt.order.clone(),
                        attempt.expires_at,
                    );
                    let details = committed
                        .detail_ids
                        .into_iter()
                        .zip(attempt.order.lines().iter().copied())
                        .collect();
                    let placed = Placed {
                        order_id: committed.order_id,
                        details,
                        expires_at: attempt.expires_at,
                    };
                    self.live.insert(
                        placed.order_id,
                        HeldOrder {
                            store: self.store,
                            buyer: attempt.order.buyer(),
                            expires_at: placed.expires_at,
                            details: placed.details.clone(),
                        },
                    );
                    attempt.answer(Ok(placed));
                }
                (
                    Attempt::End {
                        mut request,
                        resolution,
                        ..
                    },
                    Ok(_),
                ) => {
                    self.live.remove(request.order);
                    if let Some(hold) = self.holds.finish(request.order)
                        && resolution.returns_units()
                    {
                        self.book.release(hold.order.lines());
                        self.purchases.remove(&hold.order);
                        self.publish(hold.order.lines().iter().map(|l| l.product));
                    }
                    if resolution == Resolution::Expire && self.metrics.enabled {
                        self.metrics.expiries.inc();
                    }
                    let status = resolution.status();
                    request.answer(Ok(status));
                    for mut waiter in self.waiting.remove(&request.order).unwrap_or_default() {
                        waiter.answer(Ok(status));
                    }
                }
                // Nothing of it was written: another node owns the store now.
                (attempt, Err(PersistError::Fenced)) => {
                    self.lose();
                    self.decide_waiters_again(&attempt, again);
                    self.undo(attempt, Cause::Write(PersistError::Fenced));
                }
                // Nothing of it was written: the key belongs to an earlier request.
                (attempt, Err(PersistError::KeyTaken)) => {
                    self.decide_waiters_again(&attempt, again);
                    self.undo(attempt, Cause::KeyTaken);
                }
                (Attempt::Change(attempt), Ok(Written::Admin(created))) => {
                    self.changed(attempt, created);
                }
                (attempt, Err(error)) => failed.push((attempt, error)),
                // The writer answers each write in kind; this cannot happen.
                (attempt, Ok(written)) => {
                    tracing::error!(?written, "the writer answered a write of another kind");
                    self.undo(attempt, Cause::Write(PersistError::Unavailable));
                }
            }
        }
    }

    /// Takes this store's holds out of `LiveHolds`: they are no longer this actor's to
    /// end (its store was lost or handed over, or is being reloaded). Leaving them
    /// would change no answer (an entry is used only while its store is served here, by
    /// asking the store's current actor, which decides from its own holds) but would
    /// keep their memory: mutation testing lists `()` here as a survivor.
    pub(super) fn forget_live_holds(&self) {
        for order in self.holds.ids() {
            self.live.remove(order);
        }
    }

    /// Another node took the store (a fence failed): no more requests reach this
    /// actor, and those already queued are answered `Moved`.
    fn lose(&mut self) {
        if self.lost {
            return;
        }
        self.lost = true;
        self.forget_live_holds();
        tracing::warn!(store = %self.store, "another node owns the store now; this node stops serving it");
        if let Some(fence) = self.fence {
            self.registry.remove_at(self.store, fence.epoch);
        }
        self.mailbox.close();
    }

    /// Counts this store's live holds into the gauge of all stores' holds. (`||` for
    /// the `&&` below survives mutation testing: it only adds 0, or moves a gauge that
    /// nobody reads when metrics are off.)
    pub(super) fn publish_holds(&mut self) {
        let holds = self.holds.len() as i64;
        if holds != self.published_holds && self.metrics.enabled {
            self.metrics
                .holds_active
                .inc_by(holds - self.published_holds);
            self.published_holds = holds;
        }
    }

    pub(super) fn publish(&self, products: impl Iterator<Item = ProductId>) {
        for id in products {
            if let Some(stock) = self.products.get(&id) {
                stock.publish(self.book.get(id).unwrap_or(0));
            }
        }
    }
}

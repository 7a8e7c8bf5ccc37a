use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    ChangeError, ChangeResult, Command, LockError, LockResult, Placed, ProductChange, ResolveError,
    ResolveResult, StoreHandle,
};
use crate::catalog::{Catalog, Product, PublishedStock};
use crate::clock::Clock;
use crate::db::call;
use crate::db::load::{self, StoreState};
use crate::db::write::{AdminWrite, KeyRecord, Outcome, PersistError, Write, Written};
use crate::domain::{
    Begin, Deadline, HoldBook, LockOrder, OrderId, OrderLine, ProductId, Purchases, Resolution,
    StockBook, StoreId, UserId, Verdict,
};
use crate::metrics::{DbError, Metrics};
use crate::writer::WriterHandle;

/// While its stock is unknown (the database was unreachable), a store tries to reload it
/// at most this often; orders in between are answered 503 at once.
const RELOAD_INTERVAL: Duration = Duration::from_millis(200);

/// A reload whose read failed tries again after this pause, until its deadline.
const RELOAD_RETRY: Duration = Duration::from_millis(20);

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
}

/// Starts the actor of one store with the state start-up read (a new store's is
/// empty).
pub fn spawn(
    store: StoreId,
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
    } = shared;
    let (sender, mailbox) = mpsc::channel(config.mailbox);
    let moved = clock.is_manual().then(|| clock.watch());
    let mut actor = StoreActor {
        store,
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
        changing: HashMap::new(),
    };
    actor.replace_state(state);
    (StoreHandle { sender }, tokio::spawn(actor.run()))
}

/// A lock the actor is handling, with its answer channel.
struct LockAttempt {
    order: Arc<LockOrder>,
    expires_at: Option<Deadline>,
    key: Option<Arc<KeyRecord>>,
    answer_by: Instant,
    respond_to: oneshot::Sender<LockResult>,
    /// Set when its first write failed (refused, or the connection was lost before
    /// COMMIT) and it is being judged again against the reloaded stock; a second failure
    /// is answered 503.
    retried: bool,
}

/// A request to end a hold: a confirm or cancel from a client, or an expiry.
struct EndRequest {
    order: OrderId,
    buyer: Option<UserId>,
    asked: Resolution,
    key: Option<Arc<KeyRecord>>,
    answer_by: Instant,
    /// `None` for an expiry, which nobody waits for.
    respond_to: Option<oneshot::Sender<ResolveResult>>,
    retried: bool,
}

impl EndRequest {
    fn answer(&mut self, result: ResolveResult) {
        if let Some(respond_to) = self.respond_to.take() {
            let _ = respond_to.send(result);
        }
    }
}

/// A change of the store's products the actor is handling.
struct ChangeAttempt {
    change: ProductChange,
    answer_by: Instant,
    respond_to: oneshot::Sender<ChangeResult>,
}

impl ChangeAttempt {
    fn answer(self, result: ChangeResult) {
        let _ = self.respond_to.send(result);
    }
}

/// What the actor has decided and handed to the writer.
enum Attempt {
    Lock(LockAttempt),
    Change(ChangeAttempt),
    End {
        request: EndRequest,
        /// The resolution under way: the asked one, or `Expire` for a hold past due.
        resolution: Resolution,
    },
}

impl Attempt {
    /// When its request must be answered.
    fn answer_by(&self) -> Instant {
        match self {
            Attempt::Lock(lock) => lock.answer_by,
            Attempt::Change(change) => change.answer_by,
            Attempt::End { request, .. } => request.answer_by,
        }
    }
}

/// Why a decision was not persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Its idempotency key is already stored: nothing of it was written.
    KeyTaken,
    /// The writer is gone.
    ShuttingDown,
    Write(PersistError),
}

/// What a store actor is to judge, in arrival order.
enum Judge {
    Lock(LockAttempt),
    End(EndRequest),
    Change(ChangeAttempt),
}

impl LockAttempt {
    fn answer(self, result: LockResult) {
        // The client may have gone away; the order stands either way.
        let _ = self.respond_to.send(result);
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Vec<Attempt>, Outcome)> + Send>>;

struct StoreActor {
    store: StoreId,
    /// The store's stock with every reservation in flight already taken off.
    book: StockBook,
    /// The live holds: orders still locked, with their deadlines.
    holds: HoldBook,
    /// What buyers hold or bought of the products with a per-customer limit.
    purchases: Purchases,
    /// Where the stock of each product is published for readers that must not wait
    /// for the actor.
    products: HashMap<ProductId, Arc<PublishedStock>>,
    /// The products every reader sees; the actor replaces its store's entries when a
    /// change of them committed.
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// The live holds this store has counted into `metrics.holds_active`.
    published_holds: i64,
    mailbox: mpsc::Receiver<Command>,
    writer: WriterHandle,
    /// For reloading the store after the database refused a batch.
    db: DatabaseConnection,
    clock: Clock,
    /// Tells when a manual clock moved, so that the timer is armed again.
    moved: Option<watch::Receiver<u64>>,
    batch_size: usize,
    memory_check: bool,
    /// Submissions handed to the writer whose outcome has not come back yet.
    in_flight: FuturesUnordered<InFlight>,
    /// Set while the store is unknown because a reload failed: when it was last tried.
    stale_since: Option<Instant>,
    /// A reload's read still under way (see `reload`).
    reloading: Option<tokio::task::JoinHandle<Result<HashMap<StoreId, StoreState>, DbErr>>>,
    /// Confirms and cancels of holds whose end is already on its way, answered when it
    /// has committed (or judged again if it failed).
    waiting: HashMap<OrderId, Vec<EndRequest>>,
    /// One timer for the store: it fires at the earliest deadline of its holds.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The deadline the timer is set for.
    armed: Option<Deadline>,
    /// An expiry submission is in flight: the next waits for it, so that a wave of
    /// expiries takes turns with orders at the writer instead of queueing ahead of them.
    expiring: bool,
    /// A limit was set on a product that had none: what buyers hold of it is read from
    /// the database before anything else is judged.
    reload_after: bool,
    /// The owner's changes of each product that the writer has not answered yet, and
    /// whether one of them edits or deletes it. Deltas commute, but an edit or a
    /// deletion does not, and with several writers transactions may commit in another
    /// order than they were decided: so an edit or a deletion goes alone.
    changing: HashMap<ProductId, (u32, bool)>,
}

impl StoreActor {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut open = true;
        loop {
            self.arm_timer();
            let timer_on = self.armed.is_some() && self.stale_since.is_none() && !self.expiring;
            tokio::select! {
                // Answering committed writes comes first: it frees clients soonest.
                biased;
                Some((attempts, outcome)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(attempts, outcome).await;
                }
                received = self.mailbox.recv_many(&mut batch, self.batch_size), if open => {
                    if received == 0 {
                        open = false;
                        continue;
                    }
                    let mut judge = Vec::with_capacity(received);
                    for command in batch.drain(..) {
                        match command {
                            Command::Lock { request, respond_to } => judge.push(Judge::Lock(LockAttempt {
                                order: Arc::new(request.order),
                                expires_at: request.expires_at,
                                key: request.key,
                                answer_by: request.answer_by,
                                respond_to,
                                retried: false,
                            })),
                            Command::Resolve { order, buyer, resolution, key, answer_by, respond_to } => {
                                judge.push(Judge::End(EndRequest {
                                    order,
                                    buyer: Some(buyer),
                                    asked: resolution,
                                    key,
                                    answer_by,
                                    respond_to: Some(respond_to),
                                    retried: false,
                                }))
                            }
                            Command::Change { change, answer_by, respond_to } => {
                                judge.push(Judge::Change(ChangeAttempt { change, answer_by, respond_to }))
                            }
                            Command::SettleDue { respond_to } => {
                                // What came before it is judged first.
                                self.decide(std::mem::take(&mut judge)).await;
                                self.settle_due().await;
                                let _ = respond_to.send(());
                            }
                        }
                    }
                    self.decide(judge).await;
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
                () = tokio::time::sleep(RELOAD_INTERVAL), if self.stale_since.is_some() && open => {
                    // Nobody waits for this one: it holds the store up for at most an
                    // interval, and a read still under way is waited for again next time.
                    self.reload_if_due(Instant::now() + RELOAD_INTERVAL).await;
                }
                else => break,
            }
        }
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
        self.expiring = !attempts.is_empty();
        self.submit(attempts, writes).await;
        true
    }

    /// Expires everything that is due, then waits until nothing is in flight.
    async fn settle_due(&mut self) {
        if self.stale_since.is_none() {
            while self
                .expire_due(self.batch_size * EXPIRY_CHUNK_BATCHES)
                .await
            {}
        }
        while let Some((attempts, outcome)) = self.in_flight.next().await {
            self.settle(attempts, outcome).await;
        }
    }

    /// Judges each request in arrival order against memory, and hands what it decided
    /// to the writer in one submission.
    async fn decide(&mut self, requests: Vec<Judge>) {
        if requests.is_empty() {
            return;
        }
        let answer_by = requests
            .iter()
            .map(|r| match r {
                Judge::Lock(lock) => lock.answer_by,
                Judge::End(end) => end.answer_by,
                Judge::Change(change) => change.answer_by,
            })
            .min();
        if self.stale_since.is_some()
            && !self
                .reload_if_due(answer_by.unwrap_or_else(Instant::now))
                .await
        {
            for request in requests {
                match request {
                    Judge::Lock(attempt) => attempt.answer(Err(LockError::Unavailable)),
                    Judge::End(mut request) => request.answer(Err(ResolveError::Unavailable)),
                    Judge::Change(attempt) => attempt.answer(Err(ChangeError::Unavailable)),
                }
            }
            return;
        }
        let now = self.clock.now_seconds();
        let mut attempts = Vec::with_capacity(requests.len());
        let mut writes = Vec::with_capacity(requests.len());
        for request in requests {
            match request {
                Judge::Lock(attempt) => {
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
                        Verdict::Reserved => {
                            self.purchases.add(&attempt.order);
                            self.publish(lines.iter().map(|l| l.product));
                            writes.push(Write::Lock {
                                store: self.store,
                                order: attempt.order.clone(),
                                expires_at: attempt.expires_at,
                                key: attempt.key.clone(),
                            });
                            attempts.push(Attempt::Lock(attempt));
                        }
                        Verdict::SomeAvailable => attempt.answer(Err(LockError::SomeAvailable)),
                        Verdict::NoneAvailable => attempt.answer(Err(LockError::NoneAvailable)),
                    }
                }
                Judge::End(mut request) => {
                    let buyer_holds = self
                        .holds
                        .get(request.order)
                        .is_some_and(|h| request.buyer.is_none_or(|b| h.order.buyer() == b));
                    if !buyer_holds {
                        request.answer(Err(ResolveError::NotHeld));
                        continue;
                    }
                    match self.holds.begin(request.order, request.asked, now) {
                        Begin::NotLive => request.answer(Err(ResolveError::NotHeld)),
                        Begin::Pending(_) => {
                            self.waiting.entry(request.order).or_default().push(request)
                        }
                        Begin::Started(resolution) => {
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
                            });
                            attempts.push(Attempt::End {
                                request,
                                resolution,
                            });
                        }
                    }
                }
                Judge::Change(attempt) => match self.judge_change(&attempt.change) {
                    Ok(write) => {
                        writes.push(Write::Admin(write));
                        attempts.push(Attempt::Change(attempt));
                    }
                    Err(error) => attempt.answer(Err(error)),
                },
            }
        }
        self.submit(attempts, writes).await;
    }

    /// Judges a change of the store's products against memory. A negative delta takes
    /// its units at once, as an order does; everything else changes memory only once
    /// it committed, so that no order counts on units that may not come.
    fn judge_change(&mut self, change: &ProductChange) -> Result<AdminWrite, ChangeError> {
        let known = |product: &ProductId| {
            if self.products.contains_key(product) {
                Ok(*product)
            } else {
                Err(ChangeError::NotFound)
            }
        };
        if let Some(product) = change.product() {
            let alone = !matches!(change, ProductChange::Restock { .. });
            if let Some(&(_, editing)) = self.changing.get(&product)
                && (alone || editing)
            {
                return Err(ChangeError::InProgress);
            }
        }
        let write = match change {
            ProductChange::Add {
                name, stock, limit, ..
            } => AdminWrite::NewProduct {
                store: self.store,
                name: name.clone(),
                stock: *stock,
                limit: *limit,
            },
            ProductChange::Restock {
                product,
                delta,
                reason,
            } => {
                let product = known(product)?;
                if *delta < 0 {
                    let taken = [OrderLine {
                        product,
                        quantity: -delta,
                    }];
                    if self.memory_check && self.book.try_reserve(&taken) != Verdict::Reserved {
                        return Err(ChangeError::NotEnoughStock);
                    }
                    if !self.memory_check {
                        self.book.reserve_unchecked(&taken);
                    }
                    self.publish(std::iter::once(product));
                }
                AdminWrite::Restock {
                    product,
                    delta: *delta,
                    reason: reason.clone(),
                }
            }
            ProductChange::Edit {
                product,
                name,
                limit,
            } => AdminWrite::EditProduct {
                product: known(product)?,
                name: name.clone(),
                limit: *limit,
            },
            ProductChange::Delete { product } => AdminWrite::DeleteProduct {
                product: known(product)?,
            },
        };
        if let Some(product) = change.product() {
            let entry = self.changing.entry(product).or_default();
            entry.0 += 1;
            entry.1 |= !matches!(change, ProductChange::Restock { .. });
        }
        Ok(write)
    }

    /// The writer answered a change of the store's products (or never will).
    fn change_landed(&mut self, change: &ProductChange) {
        if let Some(product) = change.product()
            && let Some(entry) = self.changing.get_mut(&product)
        {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.changing.remove(&product);
            }
        }
    }

    /// Applies a committed change of the store's products to memory and the catalog,
    /// and answers it.
    fn changed(&mut self, attempt: ChangeAttempt, created: i64) {
        let current = |catalog: &Catalog, id: ProductId| {
            catalog
                .snapshot()
                .get(id)
                .map(|p| (**p).clone())
                .ok_or(ChangeError::NotFound)
        };
        let result = match &attempt.change {
            ProductChange::Add {
                name,
                stock,
                limit,
                store_name,
            } => {
                let id = ProductId(created);
                let published = Arc::new(PublishedStock::new(*stock));
                self.book.insert(id, *stock);
                self.products.insert(id, published.clone());
                // A new product has no buyers yet.
                self.purchases.set_limit(id, *limit);
                let product = Product {
                    id,
                    name: name.clone(),
                    store: self.store,
                    store_name: store_name.clone(),
                    max_per_customer: *limit,
                    stock: published,
                };
                self.catalog.put(product.clone());
                Ok(product)
            }
            ProductChange::Restock { product, delta, .. } => {
                if *delta > 0 {
                    self.book.release(&[OrderLine {
                        product: *product,
                        quantity: *delta,
                    }]);
                    self.publish(std::iter::once(*product));
                }
                current(&self.catalog, *product)
            }
            ProductChange::Edit {
                product,
                name,
                limit,
            } => {
                if let Some(limit) = *limit {
                    if limit.is_some() && self.purchases.limit(*product).is_none() {
                        self.reload_after = true;
                    }
                    self.purchases.set_limit(*product, limit);
                }
                current(&self.catalog, *product).map(|mut edited| {
                    if let Some(name) = name {
                        edited.name = name.clone();
                    }
                    if let Some(limit) = *limit {
                        edited.max_per_customer = limit;
                    }
                    self.catalog.put(edited.clone());
                    edited
                })
            }
            ProductChange::Delete { product } => {
                let gone = current(&self.catalog, *product);
                self.book.remove(*product);
                self.products.remove(product);
                self.catalog.remove(*product);
                gone
            }
        };
        attempt.answer(result);
    }

    /// Hands decided writes to the writer; the outcome comes back through `in_flight`.
    async fn submit(&mut self, attempts: Vec<Attempt>, writes: Vec<Write>) {
        let Some(answer_by) = attempts.iter().map(Attempt::answer_by).min() else {
            return;
        };
        match self.writer.submit(writes, answer_by).await {
            Ok(outcome) => self.in_flight.push(Box::pin(async move {
                let outcome = outcome
                    .await
                    .unwrap_or_else(|_| vec![Err(PersistError::Unavailable); attempts.len()]);
                (attempts, outcome)
            })),
            Err(_) => {
                for attempt in attempts {
                    if let Attempt::Change(change) = &attempt {
                        self.change_landed(&change.change);
                    }
                    self.undo(attempt, Failure::ShuttingDown);
                }
            }
        }
    }

    async fn settle(&mut self, attempts: Vec<Attempt>, outcome: Outcome) {
        let mut failed = Vec::new();
        let mut again = Vec::new();
        self.apply(attempts, outcome, &mut failed, &mut again);
        self.publish_holds();
        // Nothing of a write that failed as `Unavailable` committed: memory takes it back
        // exactly, and it is judged once more if its request can still be answered in
        // time. Only a refusal (or an unknown outcome) can leave memory and database
        // apart, and only that costs a reload.
        let (lost, mut failed): (Vec<_>, Vec<_>) = failed
            .into_iter()
            .partition(|(_, error)| *error == PersistError::Unavailable);
        for (attempt, _) in lost {
            self.retry_or_answer_lost(attempt, &mut again);
        }
        if !failed.is_empty() || self.reload_after {
            // Memory and database may now disagree. Wait until nothing of this store is
            // in flight, so the database holds every decision memory still counts, then
            // reload: what is read is then the whole truth.
            while let Some((attempts, outcome)) = self.in_flight.next().await {
                let mut more = Vec::new();
                self.apply(attempts, outcome, &mut more, &mut again);
                for (attempt, error) in more {
                    if error == PersistError::Unavailable {
                        self.retry_or_answer_lost(attempt, &mut again);
                    } else {
                        failed.push((attempt, error));
                    }
                }
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
    }

    /// A write that did not commit because the database could not be reached (or did
    /// not answer in time): memory takes it back, and it is judged once more if its
    /// request still has time, or answered 503.
    fn retry_or_answer_lost(&mut self, attempt: Attempt, again: &mut Vec<Judge>) {
        let failure = Failure::Write(PersistError::Unavailable);
        self.judge_waiters_again(&attempt, again);
        let in_time = Instant::now() < attempt.answer_by();
        self.take_back(&attempt, failure);
        match attempt {
            Attempt::Lock(attempt) if in_time && !attempt.retried => {
                again.push(Judge::Lock(LockAttempt {
                    retried: true,
                    ..attempt
                }));
            }
            Attempt::End { request, .. }
                if in_time && !request.retried && request.respond_to.is_some() =>
            {
                again.push(Judge::End(EndRequest {
                    retried: true,
                    ..request
                }));
            }
            attempt => Self::answer_failed(attempt, failure),
        }
    }

    /// Applies what committed and answers it; collects the writes that failed, and the
    /// requests to judge again.
    fn apply(
        &mut self,
        attempts: Vec<Attempt>,
        outcome: Outcome,
        failed: &mut Vec<(Attempt, PersistError)>,
        again: &mut Vec<Judge>,
    ) {
        for (attempt, result) in attempts.into_iter().zip(outcome) {
            if matches!(attempt, Attempt::End { ref request, .. } if request.respond_to.is_none()) {
                self.expiring = false;
            }
            if let Attempt::Change(change) = &attempt {
                self.change_landed(&change.change);
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
                // Nothing of it was written: the key belongs to an earlier request.
                (attempt, Err(PersistError::KeyTaken)) => {
                    self.judge_waiters_again(&attempt, again);
                    self.undo(attempt, Failure::KeyTaken);
                }
                (Attempt::Change(attempt), Ok(Written::Admin(created))) => {
                    self.changed(attempt, created);
                }
                (attempt, Err(error)) => failed.push((attempt, error)),
                // The writer answers each write in kind; this cannot happen.
                (attempt, Ok(written)) => {
                    tracing::error!(?written, "the writer answered a write of another kind");
                    self.undo(attempt, Failure::Write(PersistError::Unavailable));
                }
            }
        }
    }

    /// After the store reloaded (or failed to): judges a failed write once more against
    /// the truth, or answers it.
    fn retry_or_answer(
        &mut self,
        attempt: Attempt,
        error: PersistError,
        reloaded: bool,
        again: &mut Vec<Judge>,
    ) {
        // A reload replaced the holds: what waited for this end is judged against them.
        self.judge_waiters_again(&attempt, again);
        let nothing_committed = matches!(error, PersistError::Refused | PersistError::Unavailable);
        match attempt {
            // Judge it once more against the truth.
            Attempt::Lock(attempt) if nothing_committed && reloaded && !attempt.retried => {
                again.push(Judge::Lock(LockAttempt {
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
                again.push(Judge::End(EndRequest {
                    retried: true,
                    ..request
                }));
            }
            // The reload replaced memory with the truth: only the answer is left (an
            // expiry's hold was re-armed by the reload).
            attempt if reloaded => Self::answer_failed(attempt, Failure::Write(error)),
            // Memory, not replaced by a reload, still counts the decision.
            attempt => self.undo(attempt, Failure::Write(error)),
        }
    }

    /// An end that did not commit: the requests that waited for it are judged again.
    fn judge_waiters_again(&mut self, attempt: &Attempt, again: &mut Vec<Judge>) {
        if let Attempt::End { request, .. } = attempt
            && let Some(waiters) = self.waiting.remove(&request.order)
        {
            again.extend(waiters.into_iter().map(Judge::End));
        }
    }

    /// Takes back a decision that was not persisted, and answers it.
    fn undo(&mut self, attempt: Attempt, failure: Failure) {
        self.take_back(&attempt, failure);
        Self::answer_failed(attempt, failure);
    }

    /// Takes back a decision that was not persisted. A lock whose outcome is unknown
    /// keeps its units: it may have committed, and the store reloads before it decides
    /// anything else.
    fn take_back(&mut self, attempt: &Attempt, failure: Failure) {
        match attempt {
            Attempt::Lock(lock) if failure != Failure::Write(PersistError::OutcomeUnknown) => {
                // Or the published stock would turn orders away for units nobody bought.
                self.give_back(&lock.order);
            }
            Attempt::Lock(_) => {}
            Attempt::End { request, .. } => self.holds.abort(request.order),
            Attempt::Change(attempt) => {
                if let ProductChange::Restock { product, delta, .. } = attempt.change
                    && delta < 0
                    && failure != Failure::Write(PersistError::OutcomeUnknown)
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

    fn answer_failed(attempt: Attempt, failure: Failure) {
        match attempt {
            Attempt::Lock(attempt) => {
                let retried = attempt.retried;
                attempt.answer(Err(match failure {
                    Failure::KeyTaken => LockError::KeyTaken,
                    Failure::ShuttingDown => LockError::ShuttingDown,
                    Failure::Write(PersistError::OutcomeUnknown) => LockError::OutcomeUnknown,
                    // Refused again after the store reloaded.
                    Failure::Write(PersistError::Refused) if retried => LockError::Conflict,
                    Failure::Write(_) => LockError::Unavailable,
                }))
            }
            Attempt::End { mut request, .. } => request.answer(Err(match failure {
                Failure::KeyTaken => ResolveError::KeyTaken,
                Failure::ShuttingDown => ResolveError::ShuttingDown,
                Failure::Write(PersistError::OutcomeUnknown) => ResolveError::OutcomeUnknown,
                Failure::Write(_) => ResolveError::Unavailable,
            })),
            Attempt::Change(attempt) => attempt.answer(Err(match failure {
                Failure::ShuttingDown => ChangeError::ShuttingDown,
                Failure::Write(PersistError::OutcomeUnknown) => ChangeError::OutcomeUnknown,
                Failure::Write(PersistError::Refused) => ChangeError::Conflict,
                Failure::KeyTaken | Failure::Write(_) => ChangeError::Unavailable,
            })),
        }
    }

    /// Replaces memory with the database's view of the store. Only called with nothing
    /// in flight. The read runs to its end on a task of its own (`db::call`); the actor
    /// waits for it until `deadline`, and a read still under way then is waited for
    /// again by the next reload rather than started twice. Its result is still the
    /// truth when it comes: a store that could not reload decides nothing (it answers
    /// 503, and its timer is off), so nothing of it is written meanwhile.
    async fn reload(&mut self, deadline: Instant) -> bool {
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
                // failed read discards it, so another try soon reaches a live one.
                Err(_) if self.reloading.is_none() && Instant::now() < deadline => {
                    tokio::time::sleep(RELOAD_RETRY.min(deadline - Instant::now())).await;
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

    fn replace_state(&mut self, state: StoreState) {
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

    async fn reload_if_due(&mut self, deadline: Instant) -> bool {
        match self.stale_since {
            Some(since) if since.elapsed() < RELOAD_INTERVAL => false,
            _ => self.reload(deadline).await,
        }
    }

    /// Counts this store's live holds into the gauge of all stores' holds.
    fn publish_holds(&mut self) {
        let holds = self.holds.len() as i64;
        if holds != self.published_holds && self.metrics.enabled {
            self.metrics
                .holds_active
                .inc_by(holds - self.published_holds);
            self.published_holds = holds;
        }
    }

    /// Returns an order's reserved units to memory: nothing of it committed.
    fn give_back(&mut self, order: &LockOrder) {
        self.book.release(order.lines());
        self.purchases.remove(order);
        self.publish(order.lines().iter().map(|l| l.product));
    }

    fn publish(&self, products: impl Iterator<Item = ProductId>) {
        for id in products {
            if let Some(stock) = self.products.get(&id) {
                stock.publish(self.book.get(id).unwrap_or(0));
            }
        }
    }
}

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};

use super::{LockCommand, LockError, LockResult, Placed, StoreHandle};
use crate::catalog::Product;
use crate::db::load;
use crate::domain::{LockOrder, ProductId, StockBook, StoreId, Verdict};
use crate::writer::{Outcome, PersistError, WriterHandle};

/// While its stock is unknown (the database was unreachable), a store tries to reload it
/// at most this often; orders in between are answered 503 at once.
const RELOAD_INTERVAL: Duration = Duration::from_millis(200);

/// Reads one reload makes before it gives up until the next interval.
const RELOAD_ATTEMPTS: u32 = 3;

pub struct ActorConfig {
    pub mailbox: usize,
    pub batch_size: usize,
    pub memory_check: bool,
}

/// Starts the actor of one store with the stock the catalog was loaded with.
pub fn spawn(
    store: StoreId,
    products: Vec<Arc<Product>>,
    writer: WriterHandle,
    db: DatabaseConnection,
    config: &ActorConfig,
) -> (StoreHandle, tokio::task::JoinHandle<()>) {
    let (sender, mailbox) = mpsc::channel(config.mailbox);
    let actor = StoreActor {
        store,
        book: StockBook::new(products.iter().map(|p| (p.id, p.stock()))),
        products: products.into_iter().map(|p| (p.id, p)).collect(),
        mailbox,
        writer,
        db,
        batch_size: config.batch_size,
        memory_check: config.memory_check,
        in_flight: FuturesUnordered::new(),
        stale_since: None,
    };
    (StoreHandle { sender }, tokio::spawn(actor.run()))
}

/// An order the actor is handling, with its answer channel.
struct Attempt {
    order: Arc<LockOrder>,
    respond_to: oneshot::Sender<LockResult>,
    /// Set when its first write failed (refused, or the connection was lost before
    /// COMMIT) and it is being judged again against the reloaded stock; a second failure
    /// is answered 503.
    retried: bool,
}

impl Attempt {
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
    /// Where the stock is published for readers that must not wait for the actor.
    products: HashMap<ProductId, Arc<Product>>,
    mailbox: mpsc::Receiver<LockCommand>,
    writer: WriterHandle,
    /// For reloading the stock after the database refused a batch.
    db: DatabaseConnection,
    batch_size: usize,
    memory_check: bool,
    /// Submissions handed to the writer whose outcome has not come back yet.
    in_flight: FuturesUnordered<InFlight>,
    /// Set while the stock is unknown because a reload failed: when it was last tried.
    stale_since: Option<Instant>,
}

impl StoreActor {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut open = true;
        loop {
            tokio::select! {
                // Answering committed orders comes first: it frees clients soonest.
                biased;
                Some((attempts, outcome)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(attempts, outcome).await;
                }
                received = self.mailbox.recv_many(&mut batch, self.batch_size), if open => {
                    if received == 0 {
                        open = false;
                        continue;
                    }
                    let attempts = batch.drain(..).map(|command| Attempt {
                        order: command.order,
                        respond_to: command.respond_to,
                        retried: false,
                    });
                    self.decide(attempts.collect()).await;
                }
                // While the stock is unknown, keep trying to reload it, so the store is
                // ready again soon after the database is, even before the next order. Not
                // once the mailbox is closed: a store that is shutting down has nothing to
                // serve, and must not wait for the database to come back.
                () = tokio::time::sleep(RELOAD_INTERVAL), if self.stale_since.is_some() && open => {
                    self.reload_if_due().await;
                }
                else => break,
            }
        }
        tracing::debug!(store = %self.store, "store actor stopped");
    }

    /// Judges each order in arrival order against memory, reserves the ones that fit and
    /// hands them to the writer together.
    async fn decide(&mut self, attempts: Vec<Attempt>) {
        if self.stale_since.is_some() && !self.reload_if_due().await {
            for attempt in attempts {
                attempt.answer(Err(LockError::Unavailable));
            }
            return;
        }
        let mut accepted = Vec::with_capacity(attempts.len());
        for attempt in attempts {
            let lines = attempt.order.lines();
            let verdict = if self.memory_check {
                self.book.try_reserve(lines)
            } else {
                self.book.reserve_unchecked(lines)
            };
            match verdict {
                Verdict::Reserved => {
                    self.publish(lines.iter().map(|l| l.product));
                    accepted.push(attempt);
                }
                Verdict::SomeAvailable => attempt.answer(Err(LockError::SomeAvailable)),
                Verdict::NoneAvailable => attempt.answer(Err(LockError::NoneAvailable)),
            }
        }
        if accepted.is_empty() {
            return;
        }
        let orders = accepted.iter().map(|a| a.order.clone()).collect();
        match self.writer.submit(self.store, orders).await {
            Ok(outcome) => self.in_flight.push(Box::pin(async move {
                let outcome = outcome
                    .await
                    .unwrap_or_else(|_| vec![Err(PersistError::Unavailable); accepted.len()]);
                (accepted, outcome)
            })),
            Err(_) => {
                for attempt in accepted {
                    self.give_back(&attempt.order);
                    attempt.answer(Err(LockError::ShuttingDown));
                }
            }
        }
    }

    async fn settle(&mut self, attempts: Vec<Attempt>, outcome: Outcome) {
        let mut failed = answer_committed(attempts, outcome);
        if failed.is_empty() {
            return;
        }
        // Memory and database may now disagree. Wait until nothing of this store is in
        // flight, so the database holds every reservation memory still counts, then
        // reload: the stock read is then the whole truth.
        while let Some((attempts, outcome)) = self.in_flight.next().await {
            failed.extend(answer_committed(attempts, outcome));
        }
        let reloaded = self.reload().await;
        let mut retry = Vec::new();
        for (attempt, error) in failed {
            match error {
                // Nothing of it committed: judge it once more against the truth.
                PersistError::Refused | PersistError::Unavailable
                    if reloaded && !attempt.retried =>
                {
                    retry.push(Attempt {
                        retried: true,
                        ..attempt
                    })
                }
                PersistError::Refused if reloaded => attempt.answer(Err(LockError::Conflict)),
                PersistError::Refused | PersistError::Unavailable => {
                    if !reloaded {
                        // Nothing of it committed, and memory, not replaced by a reload,
                        // still counts its reservation: give it back, or the published
                        // stock would turn orders away for units nobody bought.
                        self.give_back(&attempt.order);
                    }
                    attempt.answer(Err(LockError::Unavailable))
                }
                PersistError::OutcomeUnknown => attempt.answer(Err(LockError::OutcomeUnknown)),
            }
        }
        if !retry.is_empty() {
            self.decide(retry).await;
        }
    }

    /// Replaces memory with the database's stock. Only called with nothing in flight.
    async fn reload(&mut self) -> bool {
        // A connection that died with the batch may still sit in the pool; a failed
        // read discards it, so a couple of immediate retries reach a live one.
        let mut attempts = RELOAD_ATTEMPTS;
        let stock = loop {
            attempts -= 1;
            match load::store_stock(&self.db, self.store).await {
                Ok(stock) => break stock,
                Err(e) if attempts == 0 => {
                    tracing::warn!(store = %self.store, error = %e, "cannot reload stock");
                    self.stale_since = Some(Instant::now());
                    return false;
                }
                Err(_) => {}
            }
        };
        self.book.replace(stock);
        self.stale_since = None;
        let all: Vec<ProductId> = self.products.keys().copied().collect();
        self.publish(all.into_iter());
        tracing::info!(store = %self.store, "reloaded stock from the database");
        true
    }

    async fn reload_if_due(&mut self) -> bool {
        match self.stale_since {
            Some(since) if since.elapsed() < RELOAD_INTERVAL => false,
            _ => self.reload().await,
        }
    }

    /// Returns an order's reserved units to memory: nothing of it committed.
    fn give_back(&mut self, order: &LockOrder) {
        self.book.release(order.lines());
        self.publish(order.lines().iter().map(|l| l.product));
    }

    fn publish(&self, products: impl Iterator<Item = ProductId>) {
        for id in products {
            if let Some(product) = self.products.get(&id) {
                product.publish(self.book.get(id).unwrap_or(0));
            }
        }
    }
}

/// Answers the orders that committed; returns the others with why they failed.
fn answer_committed(attempts: Vec<Attempt>, outcome: Outcome) -> Vec<(Attempt, PersistError)> {
    let mut failed = Vec::new();
    for (attempt, result) in attempts.into_iter().zip(outcome) {
        match result {
            Ok(committed) => {
                let details = committed
                    .detail_ids
                    .into_iter()
                    .zip(attempt.order.lines().iter().copied())
                    .collect();
                attempt.answer(Ok(Placed {
                    order_id: committed.order_id,
                    details,
                }));
            }
            Err(error) => failed.push((attempt, error)),
        }
    }
    failed
}

//! The writer: persists what store actors decided, many orders per transaction.
//!
//! Actors decide and reserve in memory, then hand their decided orders to the writer
//! with a oneshot for the outcome. A writer task takes everything that queued while the
//! previous transaction was in flight (up to the batch size), from every store, writes
//! it in one transaction, and reports the outcome of every order only after COMMIT. A
//! lone order never waits for company: a transaction starts as soon as anything is
//! queued. Actors send through a bounded channel; the writer answers through oneshots,
//! which never block, so there is no cycle of bounded channels.
//!
//! When the database refuses a batch, its orders are written again one per transaction,
//! so that only the orders the database really refuses fail, unless the database turns
//! out to be unreachable, which fails the rest at once. When the connection dies
//! during COMMIT, the transaction's token tells whether it committed.
//!
//! The writer decides nothing about stock: it only persists decisions, so "only a store
//! actor decides its stock" holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::{self, load, persist};
use crate::domain::{LockOrder, OrderDetailId, OrderId, StoreId};

/// Why a submission was not persisted. The cause is logged by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// The database refused the transaction (a stock guard, a constraint): it rolled
    /// back and the store's memory may be out of step with the database.
    #[error("the database refused the batch")]
    Refused,
    /// The database could not be reached, or failed before COMMIT: nothing committed.
    #[error("the database is unavailable")]
    Unavailable,
    /// The connection died during COMMIT and the database stayed unreachable past the
    /// deadline: the batch may or may not have committed.
    #[error("the outcome of the commit is unknown")]
    OutcomeUnknown,
}

/// The ids a committed order got, its details in the order of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub order_id: OrderId,
    pub detail_ids: Vec<OrderDetailId>,
}

/// One result per order of a submission, in the order they were submitted.
pub type Outcome = Vec<Result<Committed, PersistError>>;

/// Orders one actor decided together, answered together.
struct Submission {
    store: StoreId,
    orders: Vec<Arc<LockOrder>>,
    done: oneshot::Sender<Outcome>,
}

/// The actors' side of the writer. Cloning it is cheap; the writer stops when every
/// handle is gone and its queue is empty.
#[derive(Clone)]
pub struct WriterHandle {
    sender: mpsc::Sender<Submission>,
}

/// The writer is gone (shutdown).
#[derive(Debug)]
pub struct WriterClosed;

impl WriterHandle {
    /// Queues decided orders; the receiver yields the outcome after the transaction
    /// holding them has committed or failed.
    pub async fn submit(
        &self,
        store: StoreId,
        orders: Vec<Arc<LockOrder>>,
    ) -> Result<oneshot::Receiver<Outcome>, WriterClosed> {
        let (done, outcome) = oneshot::channel();
        self.sender
            .send(Submission {
                store,
                orders,
                done,
            })
            .await
            .map_err(|_| WriterClosed)?;
        Ok(outcome)
    }
}

pub struct WriterConfig {
    pub batch_size: usize,
    pub queue: usize,
    pub outcome_deadline: Duration,
    /// Writer tasks, each with its own transaction in flight: while one commits, the
    /// next batch is already on its way to the database.
    pub writers: usize,
}

/// Starts the writer tasks. `last_ids` are the largest order and detail ids in the
/// database.
pub fn spawn(
    db: DatabaseConnection,
    config: WriterConfig,
    last_ids: (i64, i64),
) -> (WriterHandle, Vec<JoinHandle<()>>) {
    let (sender, receiver) = mpsc::channel(config.queue);
    let receiver = Arc::new(Mutex::new(receiver));
    let ids = Arc::new(Ids {
        order: AtomicI64::new(last_ids.0),
        detail: AtomicI64::new(last_ids.1),
    });
    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tasks = (0..config.writers.max(1))
        .map(|number| {
            let writer = Writer {
                db: db.clone(),
                receiver: receiver.clone(),
                batch_size: config.batch_size,
                outcome_deadline: config.outcome_deadline,
                ids: ids.clone(),
                token_prefix: [boot, u128::from(std::process::id()), number as u128],
                sequence: 0,
                opening: None,
            };
            tokio::spawn(writer.run())
        })
        .collect();
    (WriterHandle { sender }, tasks)
}

/// Kitara numbers order and detail rows itself (it owns the database while it runs),
/// so one multi-row insert can write a batch and still answer every id. Ids of a failed
/// batch are not reused.
struct Ids {
    /// The last order id handed out.
    order: AtomicI64,
    /// The last detail id handed out.
    detail: AtomicI64,
}

struct Writer {
    db: DatabaseConnection,
    /// Shared by the writers: whoever holds it gathers the next batch.
    receiver: Arc<Mutex<mpsc::Receiver<Submission>>>,
    batch_size: usize,
    outcome_deadline: Duration,
    ids: Arc<Ids>,
    /// Boot time, process and writer number: with `sequence`, makes every transaction
    /// token unique across writers and restarts.
    token_prefix: [u128; 3],
    sequence: u64,
    /// MySQL: the transaction the next batch will use, opened while the current one is
    /// in flight, so that BEGIN's round trip is off the path every order waits on.
    /// Always `None` on SQLite, where an open `BEGIN IMMEDIATE` would hold the
    /// database's write lock while idle.
    opening: Option<JoinHandle<(Result<DatabaseTransaction, DbErr>, Instant)>>,
}

/// A transaction opened ahead is used only if it waited less than this: after a longer
/// pause its connection may have been dropped, so a fresh one is opened instead (from
/// the pool, which pings a connection that sat idle this long).
const OPENED_AHEAD_FOR_AT_MOST: Duration = db::IDLE_BEFORE_PING;

impl Writer {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.persist(batch).await;
        }
        if let Some(opening) = self.opening.take()
            && let Ok((Ok(txn), _)) = opening.await
        {
            let _ = txn.rollback().await;
        }
        tracing::debug!("writer stopped");
    }

    /// Waits for the first submission, then takes whatever else is queued, up to the
    /// batch size: a lone order never waits for company.
    async fn next_batch(&self) -> Option<Vec<Submission>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut count = first.orders.len();
        let mut batch = vec![first];
        while count < self.batch_size {
            match receiver.try_recv() {
                Ok(next) => {
                    count += next.orders.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    async fn persist(&mut self, batch: Vec<Submission>) {
        let orders: Vec<(StoreId, &LockOrder)> = batch
            .iter()
            .flat_map(|s| s.orders.iter().map(move |o| (s.store, &**o)))
            .collect();
        let outcomes: Vec<Result<Committed, PersistError>> = match self.write(&orders).await {
            Ok(committed) => committed.into_iter().map(Ok).collect(),
            // One order the database refuses must not sink the others of the batch:
            // write each on its own, so that only the refused ones fail. Once the
            // database turns out to be unreachable, the rest fail at once (nothing of
            // them committed) instead of each waiting for it in turn.
            Err(PersistError::Refused) if orders.len() > 1 => {
                let mut outcomes = Vec::with_capacity(orders.len());
                let mut unreachable = false;
                for order in &orders {
                    let outcome = if unreachable {
                        Err(PersistError::Unavailable)
                    } else {
                        self.write(std::slice::from_ref(order))
                            .await
                            .map(|mut c| c.remove(0))
                    };
                    unreachable = matches!(
                        outcome,
                        Err(PersistError::Unavailable | PersistError::OutcomeUnknown)
                    );
                    outcomes.push(outcome);
                }
                outcomes
            }
            Err(error) => vec![Err(error); orders.len()],
        };
        drop(orders);
        let mut outcomes = outcomes.into_iter();
        for submission in batch {
            let mine = outcomes.by_ref().take(submission.orders.len()).collect();
            let _ = submission.done.send(mine);
        }
    }

    /// Numbers the orders and writes them in one transaction.
    async fn write(
        &mut self,
        orders: &[(StoreId, &LockOrder)],
    ) -> Result<Vec<Committed>, PersistError> {
        let lines: usize = orders.iter().map(|(_, o)| o.lines().len()).sum();
        let mut order_id = self
            .ids
            .order
            .fetch_add(orders.len() as i64, Ordering::Relaxed);
        let mut detail_id = self.ids.detail.fetch_add(lines as i64, Ordering::Relaxed);
        let committed: Vec<Committed> = orders
            .iter()
            .map(|(_, order)| {
                order_id += 1;
                let first_detail_id = detail_id + 1;
                detail_id += order.lines().len() as i64;
                Committed {
                    order_id: OrderId(order_id),
                    detail_ids: (first_detail_id..=detail_id).map(OrderDetailId).collect(),
                }
            })
            .collect();
        let rows: Vec<persist::NewOrder<'_>> = orders
            .iter()
            .zip(&committed)
            .map(|(&(store, order), c)| persist::NewOrder {
                id: c.order_id.0,
                buyer: order.buyer().0,
                store: store.0,
                total: order.total(),
                first_detail_id: c.detail_ids.first().map_or(0, |d| d.0),
                lines: order.lines(),
            })
            .collect();
        self.sequence += 1;
        let [boot, process, writer] = self.token_prefix;
        let token = persist::Token::new(&[boot, process, writer, u128::from(self.sequence)]);
        let outcome = self.transact(&rows, &token).await;
        if outcome == Err(PersistError::Refused) {
            // A duplicate id (a row inserted behind Kitara's back) is one way to be
            // refused: renumber from what the database has.
            self.resync_ids().await;
        }
        outcome.map(|()| committed)
    }

    async fn transact(
        &mut self,
        orders: &[persist::NewOrder<'_>],
        token: &persist::Token,
    ) -> Result<(), PersistError> {
        let txn = self.begin().await?;
        if self.db.get_database_backend() == DbBackend::MySql {
            let pool = self.db.clone();
            self.opening = Some(tokio::spawn(async move {
                let txn = pool
                    .begin_with_options(db::write_transaction_options())
                    .await;
                (txn, Instant::now())
            }));
        }
        if let Err(e) = persist::write_batch(&txn, orders, token).await {
            // Dropping `txn` rolls it back.
            return Err(match e {
                persist::WriteError::GuardTripped { .. } => {
                    tracing::warn!(error = %e, orders = orders.len(), "batch refused");
                    PersistError::Refused
                }
                persist::WriteError::Db(ref err) if db::is_refusal(err) => {
                    tracing::warn!(error = %e, orders = orders.len(), "batch refused");
                    PersistError::Refused
                }
                persist::WriteError::Db(_) => {
                    tracing::error!(error = %e, orders = orders.len(), "batch failed");
                    PersistError::Unavailable
                }
            });
        }
        match txn.commit().await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, token = token.as_str(), "COMMIT failed; looking up its outcome");
                self.resolve(token).await
            }
        }
    }

    /// The transaction opened ahead if it is fresh, otherwise a new one.
    async fn begin(&mut self) -> Result<DatabaseTransaction, PersistError> {
        let opened = match self.opening.take() {
            Some(opening) => opening.await.ok(),
            None => None,
        };
        let result = match opened {
            // Opened (or refused) just now: use it, or report why it could not open.
            Some((result, at)) if at.elapsed() < OPENED_AHEAD_FOR_AT_MOST => result,
            // None opened, or it waited too long (dropping it rolls it back).
            _ => {
                self.db
                    .begin_with_options(db::write_transaction_options())
                    .await
            }
        };
        result.map_err(|e| {
            tracing::warn!(error = %e, "cannot begin a transaction");
            PersistError::Unavailable
        })
    }

    /// After a failed COMMIT, asks the database whether the transaction's token is
    /// there, retrying on fresh connections until the deadline.
    async fn resolve(&self, token: &persist::Token) -> Result<(), PersistError> {
        let token = token.as_str();
        let deadline = Instant::now() + self.outcome_deadline;
        let mut pause = Duration::from_millis(20);
        // The pool may hold other connections that died with this one; each failed
        // attempt discards one, so the first few retries go without a pause.
        let mut quick_retries = 4;
        loop {
            // The deadline bounds each lookup too: one can wait for the row lock of a
            // transaction the server has not finished (its session outlived the
            // connection Kitara lost), or for a connection that no longer answers.
            let lookup = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline),
                load::token_committed(&self.db, token),
            );
            match lookup.await {
                Ok(Ok(true)) => {
                    tracing::info!(token, "the transaction committed after all");
                    return Ok(());
                }
                Ok(Ok(false)) => {
                    tracing::info!(token, "the transaction did not commit");
                    return Err(PersistError::Unavailable);
                }
                Err(_) => {
                    tracing::error!(token, "outcome unknown: the lookup outlasted the deadline");
                    return Err(PersistError::OutcomeUnknown);
                }
                Ok(Err(e)) if Instant::now() >= deadline => {
                    tracing::error!(error = %e, token, "outcome unknown past the deadline");
                    return Err(PersistError::OutcomeUnknown);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, token, "cannot look the outcome up yet");
                    if quick_retries > 0 {
                        quick_retries -= 1;
                        continue;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn resync_ids(&self) {
        match load::max_ids(&self.db).await {
            Ok((orders, details)) => {
                self.ids.order.fetch_max(orders, Ordering::Relaxed);
                self.ids.detail.fetch_max(details, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the largest ids"),
        }
    }
}

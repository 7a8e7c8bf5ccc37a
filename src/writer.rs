//! The writer: persists what store actors decided, many orders per transaction.
//!
//! Actors decide and reserve in memory, then hand their decided orders to the one
//! writer task with a oneshot for the outcome. The writer takes everything that queued
//! while its previous transaction was in flight (up to the batch size), writes it in one
//! transaction, and reports the outcome to every submission only after COMMIT. A lone
//! order never waits for company: the writer starts a transaction as soon as anything is
//! queued. Actors send to the writer through a bounded channel; the writer answers
//! through oneshots, which never block, so there is no cycle of bounded channels.
//!
//! The writer decides nothing about stock: it only persists decisions, so "only a store
//! actor decides its stock" holds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sea_orm::{DatabaseConnection, SqliteTransactionMode, TransactionOptions, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

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
}

/// Starts the writer task. `next_ids` are the largest order and detail ids in the
/// database.
pub fn spawn(
    db: DatabaseConnection,
    config: WriterConfig,
    next_ids: (i64, i64),
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(config.queue);
    let writer = Writer {
        db,
        receiver,
        batch_size: config.batch_size,
        outcome_deadline: config.outcome_deadline,
        last_order_id: next_ids.0,
        last_detail_id: next_ids.1,
        boot: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
        sequence: 0,
    };
    (WriterHandle { sender }, tokio::spawn(writer.run()))
}

struct Writer {
    db: DatabaseConnection,
    receiver: mpsc::Receiver<Submission>,
    batch_size: usize,
    outcome_deadline: Duration,
    /// Kitara numbers order and detail rows itself (it owns the database while it runs);
    /// ids of a failed batch are not reused.
    last_order_id: i64,
    last_detail_id: i64,
    /// With `sequence`, makes every transaction token unique across restarts.
    boot: u128,
    sequence: u64,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.receiver.recv().await {
            let mut count = first.orders.len();
            let mut batch = vec![first];
            while count < self.batch_size {
                match self.receiver.try_recv() {
                    Ok(next) => {
                        count += next.orders.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.persist(batch).await;
        }
        tracing::debug!("writer stopped");
    }

    async fn persist(&mut self, batch: Vec<Submission>) {
        let orders: Vec<(StoreId, &LockOrder)> = batch
            .iter()
            .flat_map(|s| s.orders.iter().map(move |o| (s.store, &**o)))
            .collect();
        let outcomes: Vec<Result<Committed, PersistError>> = match self.write(&orders).await {
            Ok(committed) => committed.into_iter().map(Ok).collect(),
            // One order the database refuses must not sink the others of the batch:
            // write each on its own, so that only the refused ones fail.
            Err(PersistError::Refused) if orders.len() > 1 => {
                let mut outcomes = Vec::with_capacity(orders.len());
                for order in &orders {
                    outcomes.push(
                        self.write(std::slice::from_ref(order))
                            .await
                            .map(|mut c| c.remove(0)),
                    );
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
        let committed: Vec<Committed> = orders
            .iter()
            .map(|(_, order)| {
                self.last_order_id += 1;
                let first_detail_id = self.last_detail_id + 1;
                self.last_detail_id += order.lines().len() as i64;
                Committed {
                    order_id: OrderId(self.last_order_id),
                    detail_ids: (first_detail_id..=self.last_detail_id)
                        .map(OrderDetailId)
                        .collect(),
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
        let token = persist::Token::new(&[
            self.boot,
            u128::from(std::process::id()),
            u128::from(self.sequence),
        ]);
        let outcome = self.transact(&rows, &token).await;
        if outcome == Err(PersistError::Refused) {
            // A duplicate id (a row inserted behind Kitara's back) is one way to be
            // refused: renumber from what the database has.
            self.resync_ids().await;
        }
        outcome.map(|()| committed)
    }

    async fn transact(
        &self,
        orders: &[persist::NewOrder<'_>],
        token: &persist::Token,
    ) -> Result<(), PersistError> {
        let options = TransactionOptions {
            // SQLite: take the write lock at BEGIN, so the transaction never has to
            // upgrade a read lock (which can fail with SQLITE_BUSY).
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self.db.begin_with_options(options).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot begin a transaction");
            PersistError::Unavailable
        })?;
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

    /// After a failed COMMIT, asks the database whether the transaction's token is
    /// there, retrying on fresh connections until the deadline.
    async fn resolve(&self, token: &persist::Token) -> Result<(), PersistError> {
        let token = token.as_str();
        let deadline = Instant::now() + self.outcome_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            match load::token_committed(&self.db, token).await {
                Ok(true) => {
                    tracing::info!(token, "the transaction committed after all");
                    return Ok(());
                }
                Ok(false) => {
                    tracing::info!(token, "the transaction did not commit");
                    return Err(PersistError::Unavailable);
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::error!(error = %e, token, "outcome unknown past the deadline");
                    return Err(PersistError::OutcomeUnknown);
                }
                Err(e) => {
                    tracing::warn!(error = %e, token, "cannot look the outcome up yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn resync_ids(&mut self) {
        match load::max_ids(&self.db).await {
            Ok((orders, details)) => {
                self.last_order_id = self.last_order_id.max(orders);
                self.last_detail_id = self.last_detail_id.max(details);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the largest ids"),
        }
    }
}

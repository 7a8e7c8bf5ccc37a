//! The writer: persists what store actors decided, many decisions per transaction.
//!
//! Actors decide in memory (an order reserved, a hold ended), then hand their decisions
//! to the writer as `Write`s with a oneshot for the outcome. A writer task takes
//! everything that queued while the previous transaction was in flight (up to the batch
//! size), from every store, writes it in one transaction, and reports the outcome of
//! every write only after COMMIT. A lone write never waits for company: a transaction
//! starts as soon as anything is queued. Actors send through a bounded channel; the
//! writer answers through oneshots, which never block, so there is no cycle of bounded
//! channels.
//!
//! A batch is data: new orders, ended holds and idempotency keys are rows of one
//! transaction (`persist::Batch`), not branches of the writer's loop. A keyed write
//! stores its key and the answer it keeps in the same transaction.
//!
//! When the database refuses a batch, the writes whose idempotency key is already
//! stored are set aside (`KeyTaken`) and the rest written again together; if that is
//! refused too, they are written one per transaction, so that only the writes the
//! database really refuses fail, unless the database turns out to be unreachable, which
//! fails the rest at once. When the connection dies during COMMIT, the transaction's
//! token tells whether it committed.
//!
//! The writer decides nothing about stock or status: it only persists decisions, so
//! "only a store actor decides its stock and its holds" holds.
//!
//! Its parts: `batch` numbers the rows and builds a batch; `transaction` runs one
//! transaction on a task of its own and gives it up before COMMIT if its answers are
//! due; `refused` finds out which writes of a refused batch the database refuses;
//! `outcome` learns whether a COMMIT whose answer was lost went through.

mod batch;
mod outcome;
mod refused;
mod transaction;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::DatabaseConnection;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::events::Stored;
use crate::db::write::{Fence, PersistError, Settled, Write, Written};
use crate::domain::{NodeId, StoreId};
use crate::metrics::Metrics;
use batch::Ids;
use transaction::{Chained, Reach};

/// Writes one actor decided together, answered together.
struct Submission {
    writes: Vec<Write>,
    /// The store the writes belong to and its epoch (MySQL), proven in their
    /// transaction; `None` for writes of no store (users, stores) and on SQLite.
    fence: Option<Fence>,
    /// The store whose events its writes carry, and the number its first event takes
    /// (events on). A store has at most one such submission at the writer at a time, so
    /// its number follows everything of the store that committed.
    events: Option<(StoreId, i64)>,
    /// When the first of its requests must be answered: a transaction holding it that
    /// has not sent its COMMIT by then is given up (nothing of it commits), and one
    /// whose COMMIT is in flight is waited for until the outcome deadline after it.
    answer_by: Instant,
    done: oneshot::Sender<Settled>,
}

/// The actors' side of the writer. Cloning it is cheap; the writer stops when every
/// handle is gone and its queue is empty.
#[derive(Clone)]
pub struct WriterHandle {
    sender: mpsc::Sender<Submission>,
    /// How long a write that nobody's request bounds may wait (`write`).
    answer_within: Duration,
}

/// The writer is gone (shutdown).
#[derive(Debug)]
pub struct WriterClosed;

impl WriterHandle {
    /// Queues decided writes; the receiver yields the outcome after the transaction
    /// holding them has committed or failed. `events`: the store whose events the
    /// writes carry and the number of the first.
    pub async fn submit(
        &self,
        writes: Vec<Write>,
        fence: Option<Fence>,
        events: Option<(StoreId, i64)>,
        answer_by: Instant,
    ) -> Result<oneshot::Receiver<Settled>, WriterClosed> {
        let (done, outcome) = oneshot::channel();
        self.sender
            .send(Submission {
                writes,
                fence,
                events,
                answer_by,
                done,
            })
            .await
            .map_err(|_| WriterClosed)?;
        Ok(outcome)
    }

    /// How long a write may wait for the database before it is answered 503 (the pool's
    /// acquire timeout): what a request's `answer_by` adds to its arrival.
    pub fn answer_within(&self) -> Duration {
        self.answer_within
    }

    /// Submissions waiting for a writer task.
    pub fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Persists one write on its own and waits for its outcome, answered by `answer_by`
    /// (plus the outcome deadline, for a COMMIT in flight): the admin API's users and
    /// stores, and start-up's adoption.
    pub async fn write(&self, write: Write, answer_by: Instant) -> Result<Written, PersistError> {
        let outcome = self
            .submit(vec![write], None, None, answer_by)
            .await
            .map_err(|_| PersistError::Unavailable)?;
        outcome
            .await
            .ok()
            .and_then(|mut settled| settled.outcome.pop())
            .unwrap_or(Err(PersistError::Unavailable))
    }
}

pub struct WriterConfig {
    pub batch_size: usize,
    pub queue: usize,
    /// How long a write may wait for the database (the pool's acquire timeout), for the
    /// writes no request bounds.
    pub answer_within: Duration,
    pub outcome_deadline: Duration,
    /// Off only in tests: see `Settings::database_guard`.
    pub stock_guard: bool,
    /// On a Galera node: each statement of a transaction in its own request (see
    /// `persist::Plan::statements_apart`).
    pub statements_apart: bool,
    /// Writer tasks, each with its own transaction in flight: while one commits, the
    /// next batch is already on its way to the database.
    pub writers: usize,
    pub metrics: Arc<Metrics>,
    /// This node (MySQL): after a fence failed, which stores it still owns tells which
    /// writes to set aside.
    pub node: Option<NodeId>,
}

/// Starts the writer tasks, with their first blocks of ids reserved.
pub async fn spawn(
    db: DatabaseConnection,
    config: WriterConfig,
) -> Result<(WriterHandle, Vec<JoinHandle<()>>), PersistError> {
    let (sender, receiver) = mpsc::channel(config.queue);
    let receiver = Arc::new(Mutex::new(receiver));
    let ids = Arc::new(Ids::default());
    ids.prefetch(&db, Instant::now() + config.answer_within)
        .await?;
    let reach = Arc::new(Reach::default());
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
                answer_within: config.answer_within,
                stock_guard: config.stock_guard,
                statements_apart: config.statements_apart,
                ids: ids.clone(),
                reach: reach.clone(),
                metrics: config.metrics.clone(),
                node: config.node.clone(),
                token_prefix: [boot, u128::from(std::process::id()), number as u128],
                sequence: 0,
                chained: None,
                next_seq: HashMap::new(),
                committed: Vec::new(),
            };
            tokio::spawn(writer.run())
        })
        .collect();
    let handle = WriterHandle {
        sender,
        answer_within: config.answer_within,
    };
    Ok((handle, tasks))
}

struct Writer {
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    node: Option<NodeId>,
    reach: Arc<Reach>,
    /// Shared by the writers: whoever holds it gathers the next batch.
    receiver: Arc<Mutex<mpsc::Receiver<Submission>>>,
    batch_size: usize,
    outcome_deadline: Duration,
    /// The bound of what no request bounds: giving ids back at shutdown.
    answer_within: Duration,
    stock_guard: bool,
    statements_apart: bool,
    ids: Arc<Ids>,
    /// Boot time, process and writer number: with `sequence`, makes every transaction
    /// token unique across writers and restarts.
    token_prefix: [u128; 3],
    sequence: u64,
    /// MySQL: the transaction the last `COMMIT AND CHAIN` opened, which the next batch
    /// writes in (`transaction`). Always `None` on SQLite, which has no such COMMIT and
    /// where an open `BEGIN IMMEDIATE` would hold the database's write lock while idle.
    chained: Option<Chained>,
    /// While a batch is written: the number the next event of each of its stores
    /// takes, moved on by each transaction that commits (`batch`).
    next_seq: HashMap<StoreId, i64>,
    /// While a batch is written: the events that committed.
    committed: Vec<Stored>,
}

impl Writer {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.persist(batch).await;
        }
        // Ids left unused go back, so a restart continues where this one stopped.
        self.ids
            .renew(&self.db, Instant::now() + self.answer_within)
            .await;
        if let Some(chained) = self.chained.take() {
            // Rolls back on its own task, whatever the database's state.
            tokio::spawn(async move {
                let _ = chained.txn.rollback().await;
            });
        }
        tracing::debug!("writer stopped");
    }

    /// Waits for the first submission, then takes whatever else is queued, up to the
    /// batch size: a lone order never waits for company.
    async fn next_batch(&self) -> Option<Vec<Submission>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut count = first.writes.len();
        let mut batch = vec![first];
        while count < self.batch_size {
            match receiver.try_recv() {
                Ok(next) => {
                    count += next.writes.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    async fn persist(&mut self, batch: Vec<Submission>) {
        let answer_by = batch
            .iter()
            .map(|s| s.answer_by)
            .min()
            .unwrap_or_else(Instant::now);
        let writes: Vec<&Write> = batch.iter().flat_map(|s| s.writes.iter()).collect();
        let fences: Vec<Option<Fence>> = batch
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.fence, s.writes.len()))
            .collect();
        self.next_seq = batch.iter().filter_map(|s| s.events).collect();
        let outcomes = self.write_all(&writes, &fences, answer_by).await;
        drop(writes);
        let mut committed = std::mem::take(&mut self.committed);
        committed.sort_unstable_by_key(|e| (e.store, e.seq));
        let mut outcomes = outcomes.into_iter();
        for submission in batch {
            let outcome = outcomes.by_ref().take(submission.writes.len()).collect();
            let events = match submission.events {
                Some((store, _)) => committed
                    .iter()
                    .filter(|e| e.store == store)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            let _ = submission.done.send(Settled { outcome, events });
        }
    }
}

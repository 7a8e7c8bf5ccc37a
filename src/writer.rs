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

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::{self, call, keys, load, persist};
use crate::domain::{
    Deadline, Fingerprint, IdempotencyKey, LockOrder, OrderDetailId, OrderId, ProductId,
    Resolution, StoreId, UserId,
};
use crate::metrics::{self, DB_ERRORS, Metrics};

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
    /// The write's idempotency key is already stored: a retry of a request that
    /// committed, or a key reused with another request. Nothing of it was written.
    #[error("the idempotency key is already stored")]
    KeyTaken,
}

/// The ids a committed order got, its details in the order of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub order_id: OrderId,
    pub detail_ids: Vec<OrderDetailId>,
}

/// One decision of a store actor (or of the admin API), to be persisted.
pub enum Write {
    /// A new order: its units are taken, and it is a hold from now on.
    Lock {
        store: StoreId,
        order: Arc<LockOrder>,
        expires_at: Option<Deadline>,
        key: Option<Arc<KeyRecord>>,
    },
    /// A hold that ends; cancelled and expired holds give their units back.
    End {
        order_id: OrderId,
        resolution: Resolution,
        order: Arc<LockOrder>,
        key: Option<Arc<KeyRecord>>,
    },
    /// A change the store's owner made; its ledger row, if it has one, is written with
    /// it.
    Admin(AdminWrite),
}

/// What the admin API changes. A change of a product's stock is decided by its store's
/// actor like an order; users and stores change no stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminWrite {
    NewUser {
        name: String,
    },
    /// Refused if the owner is gone.
    NewStore {
        name: String,
        owner: UserId,
    },
    /// With its `created` ledger row; refused if the store is gone.
    NewProduct {
        store: StoreId,
        name: String,
        stock: i64,
        limit: Option<i64>,
    },
    /// A delta of `current_stock`, guarded like an order's, with its ledger row.
    Restock {
        product: ProductId,
        delta: i64,
        reason: String,
    },
    /// `limit: Some(None)` clears the limit.
    EditProduct {
        product: ProductId,
        name: Option<String>,
        limit: Option<Option<i64>>,
    },
    /// A soft delete.
    DeleteProduct {
        product: ProductId,
    },
    /// Start-up: an `adopted` ledger row for every product that has none (made by SQL).
    Adopt,
}

impl Write {
    fn key(&self) -> Option<&KeyRecord> {
        match self {
            Write::Lock { key, .. } | Write::End { key, .. } => key.as_deref(),
            Write::Admin(_) => None,
        }
    }
}

/// An idempotency key to store with a write, bound to its request's fingerprint; the
/// row also names the write's order, from which a replay is answered.
pub struct KeyRecord {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
}

/// What a write became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Placed(Committed),
    Ended,
    /// An admin write: the id of the row it created, or for `Adopt` the number of
    /// products adopted; 0 for the others.
    Admin(i64),
}

/// One result per write of a submission, in the order they were submitted.
pub type Outcome = Vec<Result<Written, PersistError>>;

/// Writes one actor decided together, answered together.
struct Submission {
    writes: Vec<Write>,
    /// When the first of its requests must be answered: a transaction holding it that
    /// has not sent its COMMIT by then is given up (nothing of it commits), and one
    /// whose COMMIT is in flight is waited for until the outcome deadline after it.
    answer_by: Instant,
    done: oneshot::Sender<Outcome>,
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
    /// holding them has committed or failed.
    pub async fn submit(
        &self,
        writes: Vec<Write>,
        answer_by: Instant,
    ) -> Result<oneshot::Receiver<Outcome>, WriterClosed> {
        let (done, outcome) = oneshot::channel();
        self.sender
            .send(Submission {
                writes,
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

    /// Persists one write on its own and waits for its outcome: the admin API's users
    /// and stores, and start-up's adoption.
    pub async fn write(&self, write: Write) -> Result<Written, PersistError> {
        let outcome = self
            .submit(vec![write], Instant::now() + self.answer_within)
            .await
            .map_err(|_| PersistError::Unavailable)?;
        outcome
            .await
            .ok()
            .and_then(|mut o| o.pop())
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
    /// Writer tasks, each with its own transaction in flight: while one commits, the
    /// next batch is already on its way to the database.
    pub writers: usize,
    pub metrics: Arc<Metrics>,
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
                stock_guard: config.stock_guard,
                ids: ids.clone(),
                reach: reach.clone(),
                metrics: config.metrics.clone(),
                token_prefix: [boot, u128::from(std::process::id()), number as u128],
                sequence: 0,
                opening: None,
            };
            tokio::spawn(writer.run())
        })
        .collect();
    let handle = WriterHandle {
        sender,
        answer_within: config.answer_within,
    };
    (handle, tasks)
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

/// Whether the database can be reached, as the writers last found it. While it cannot,
/// a transaction is tried at most every `RETRY_UNREACHABLE`, and the batches in between
/// fail at once: during an outage requests get their 503 at once instead of each
/// waiting out its bound, and a stalled server is not sent more transactions to hold.
#[derive(Default)]
struct Reach {
    /// When the last transaction found the database unreachable (or when the last try
    /// since began); `None` while it answers.
    unreachable_at: std::sync::Mutex<Option<Instant>>,
}

/// How often the writers try the database while it is unreachable.
const RETRY_UNREACHABLE: Duration = Duration::from_millis(200);

impl Reach {
    /// Whether to try a transaction now; claims the try, so that one writer tries at a
    /// time while the database is unreachable.
    fn try_now(&self) -> bool {
        let mut at = self
            .unreachable_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *at {
            Some(since) if since.elapsed() < RETRY_UNREACHABLE => false,
            Some(_) => {
                *at = Some(Instant::now());
                true
            }
            None => true,
        }
    }

    fn reached(&self, yes: bool) {
        *self
            .unreachable_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (!yes).then(Instant::now);
    }
}

struct Writer {
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    reach: Arc<Reach>,
    /// Shared by the writers: whoever holds it gathers the next batch.
    receiver: Arc<Mutex<mpsc::Receiver<Submission>>>,
    batch_size: usize,
    outcome_deadline: Duration,
    stock_guard: bool,
    ids: Arc<Ids>,
    /// Boot time, process and writer number: with `sequence`, makes every transaction
    /// token unique across writers and restarts.
    token_prefix: [u128; 3],
    sequence: u64,
    /// MySQL: the transaction the next batch will use, opened while the current one is
    /// in flight, so that BEGIN's round trip is off the path every order waits on.
    /// Always `None` on SQLite, where an open `BEGIN IMMEDIATE` would hold the
    /// database's write lock while idle.
    opening: Option<Opening>,
}

/// A transaction being opened ahead, and when it was opened.
type Opening = JoinHandle<(Result<DatabaseTransaction, DbErr>, Instant)>;

/// A transaction opened ahead is used only if it waited less than this: after a longer
/// pause its connection may have been dropped, so a fresh one is opened instead (from
/// the pool, which pings a connection that sat idle this long).
const OPENED_AHEAD_FOR_AT_MOST: Duration = db::IDLE_BEFORE_PING;

/// Where a transaction stands, shared by the task that runs it and the writer that waits
/// for it: whichever of the two moves it out of `RUNNING` first decides whether COMMIT
/// is sent (`COMMITTING`) or never will be (`GIVEN_UP`).
const RUNNING: u8 = 0;
const COMMITTING: u8 = 1;
const GIVEN_UP: u8 = 2;

/// How a transaction's task ended.
enum Ran {
    Committed(Vec<i64>),
    /// It could not begin: the database is unreachable (or the pool exhausted).
    Unreachable,
    /// It failed before COMMIT: nothing of it committed.
    Failed(PersistError),
    /// COMMIT was sent and its answer was an error: the token tells the outcome.
    CommitFailed(DbErr, Vec<i64>),
    /// The writer gave it up before COMMIT; it rolled back.
    GivenUp,
}

impl Writer {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.persist(batch).await;
        }
        if let Some(opening) = self.opening.take() {
            // Rolls back on its own task, whatever the database's state.
            tokio::spawn(async move {
                if let Ok((Ok(txn), _)) = opening.await {
                    let _ = txn.rollback().await;
                }
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
        let outcomes = self.write_all(&writes, answer_by).await;
        drop(writes);
        let mut outcomes = outcomes.into_iter();
        for submission in batch {
            let mine = outcomes.by_ref().take(submission.writes.len()).collect();
            let _ = submission.done.send(mine);
        }
    }

    /// Writes everything in one transaction; if the database refuses it, finds out
    /// which writes it refuses (see the module's doc).
    async fn write_all(&mut self, writes: &[&Write], answer_by: Instant) -> Outcome {
        match self.write(writes, answer_by).await {
            Ok(written) => return written.into_iter().map(Ok).collect(),
            Err(PersistError::Refused) => {}
            Err(error) => return vec![Err(error); writes.len()],
        }
        let mut outcomes: Vec<Option<Result<Written, PersistError>>> = vec![None; writes.len()];
        // A key stored before refuses the whole batch: set its writes aside (nothing of
        // them was written) and write the others together again.
        let taken = self.taken_keys(writes, answer_by).await;
        let mut rest = Vec::with_capacity(writes.len());
        for (i, &write) in writes.iter().enumerate() {
            match write.key() {
                Some(record) if taken.iter().any(|k| k == record.key.as_bytes()) => {
                    outcomes[i] = Some(Err(PersistError::KeyTaken));
                }
                _ => rest.push(i),
            }
        }
        let mut tried_alone = writes.len() == 1;
        if !taken.is_empty() && !rest.is_empty() {
            let subset: Vec<&Write> = rest.iter().map(|&i| writes[i]).collect();
            match self.write(&subset, answer_by).await {
                Ok(written) => {
                    for (&i, w) in rest.iter().zip(written) {
                        outcomes[i] = Some(Ok(w));
                    }
                    rest.clear();
                }
                Err(PersistError::Refused) => tried_alone = rest.len() == 1,
                Err(error) => {
                    for &i in &rest {
                        outcomes[i] = Some(Err(error));
                    }
                    rest.clear();
                }
            }
        }
        // One write the database refuses must not sink the others: write each on its
        // own, so that only the refused ones fail. Once the database turns out to be
        // unreachable, the rest fail at once (nothing of them committed) instead of
        // each waiting for it in turn.
        if !rest.is_empty() && !tried_alone {
            tracing::warn!(
                writes = rest.len(),
                "the database refused a batch; writing its writes one by one"
            );
        }
        let mut unreachable = false;
        for i in rest {
            let outcome = if unreachable {
                Err(PersistError::Unavailable)
            } else if tried_alone {
                Err(PersistError::Refused)
            } else {
                self.write(std::slice::from_ref(&writes[i]), answer_by)
                    .await
                    .map(|mut w| w.remove(0))
            };
            unreachable = matches!(
                outcome,
                Err(PersistError::Unavailable | PersistError::OutcomeUnknown)
            );
            outcomes[i] = Some(outcome);
        }
        // A keyed write refused on its own may have lost its key to another write of the
        // same batch (a client that retried while its first request was still queued).
        let refused: Vec<usize> = (0..writes.len())
            .filter(|&i| {
                matches!(outcomes[i], Some(Err(PersistError::Refused))) && writes[i].key().is_some()
            })
            .collect();
        if !refused.is_empty() {
            let subset: Vec<&Write> = refused.iter().map(|&i| writes[i]).collect();
            let taken = self.taken_keys(&subset, answer_by).await;
            for i in refused {
                if writes[i]
                    .key()
                    .is_some_and(|k| taken.iter().any(|t| t == k.key.as_bytes()))
                {
                    outcomes[i] = Some(Err(PersistError::KeyTaken));
                }
            }
        }
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Some(Err(PersistError::Refused))))
            .count();
        if refused > 0 {
            tracing::warn!(refused, "the database refused writes that memory allowed");
            // Counted here, once the refusal is known to be one: a batch refused by a
            // key stored before (a client's retry, replayed) is not.
            for _ in 0..refused {
                self.metrics.db_error(metrics::index(DB_ERRORS, "refused"));
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(PersistError::Unavailable)))
            .collect()
    }

    /// The keys of these writes that are already stored; none if the lookup fails or
    /// outlasts `answer_by` (writing them one by one then tells).
    async fn taken_keys(&self, writes: &[&Write], answer_by: Instant) -> Vec<Vec<u8>> {
        let keys: Vec<Vec<u8>> = writes
            .iter()
            .filter_map(|w| w.key().map(|k| k.key.as_bytes().to_vec()))
            .collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let db = self.db.clone();
        let lookup = async move {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            keys::taken(&db, &keys).await
        };
        call::within(answer_by, lookup).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look up the idempotency keys of a refused batch");
            Vec::new()
        })
    }

    /// Numbers the new orders and writes everything in one transaction.
    async fn write(
        &mut self,
        writes: &[&Write],
        answer_by: Instant,
    ) -> Result<Vec<Written>, PersistError> {
        let locks = writes.iter().filter_map(|w| match w {
            Write::Lock { order, .. } => Some(order.lines().len() as i64),
            Write::End { .. } | Write::Admin(_) => None,
        });
        let (count, lines) = locks.fold((0i64, 0i64), |(c, l), n| (c + 1, l + n));
        let mut order_id = self.ids.order.fetch_add(count, Ordering::Relaxed);
        let mut detail_id = self.ids.detail.fetch_add(lines, Ordering::Relaxed);
        let mut batch = persist::Batch::default();
        let mut written = Vec::with_capacity(writes.len());
        for &w in writes {
            let (done, key_order) = match w {
                Write::Lock {
                    store,
                    order,
                    expires_at,
                    ..
                } => {
                    order_id += 1;
                    let first_detail_id = detail_id + 1;
                    detail_id += order.lines().len() as i64;
                    batch.orders.push(persist::NewOrder {
                        id: order_id,
                        buyer: order.buyer().0,
                        store: store.0,
                        total: order.total(),
                        first_detail_id,
                        lines: order.lines(),
                        expires_at: *expires_at,
                    });
                    let committed = Committed {
                        order_id: OrderId(order_id),
                        detail_ids: (first_detail_id..=detail_id).map(OrderDetailId).collect(),
                    };
                    (Written::Placed(committed), order_id)
                }
                Write::End {
                    order_id,
                    resolution,
                    order,
                    ..
                } => {
                    batch.ended.push(persist::EndedHold {
                        order_id: order_id.0,
                        status: resolution.status(),
                        returned: if resolution.returns_units() {
                            order.lines()
                        } else {
                            &[]
                        },
                    });
                    (Written::Ended, order_id.0)
                }
                Write::Admin(change) => {
                    batch.admin.push(change);
                    // Filled in with what the database answered.
                    (Written::Admin(0), 0)
                }
            };
            if let Some(record) = w.key() {
                batch.keys.push(persist::KeyRow {
                    key: record.key.as_bytes(),
                    fingerprint: &record.fingerprint.0,
                    order_id: key_order,
                });
            }
            written.push(done);
        }
        self.sequence += 1;
        let [boot, process, writer] = self.token_prefix;
        let token = persist::Token::new(&[boot, process, writer, u128::from(self.sequence)]);
        let plan = persist::Plan::new(&batch, &token, self.stock_guard);
        let orders = batch.orders.len();
        let writes = orders + batch.ended.len() + batch.admin.len();
        drop(batch);
        let outcome = self.transact(plan, token, writes, orders, answer_by).await;
        if outcome == Err(PersistError::Refused) {
            // A duplicate id (a row inserted behind Kitara's back) is one way to be
            // refused: renumber from what the database has.
            self.resync_ids(answer_by).await;
        }
        let mut answered = outcome?.into_iter();
        for w in &mut written {
            if let Written::Admin(value) = w {
                *value = answered.next().unwrap_or_default();
            }
        }
        Ok(written)
    }

    /// Runs the plan in one transaction, on a task of its own, and waits for it until
    /// `answer_by`; answers what its admin writes answered.
    ///
    /// The transaction is never cut off half-way (see `db::call`). If it has not sent its
    /// COMMIT by `answer_by`, the writer gives it up: it will roll back instead of
    /// committing, so its writes fail as `Unavailable` now, and their requests get 503
    /// within their bound. If its COMMIT is already in flight, the writer waits for its
    /// answer until the outcome deadline, then looks the token up.
    async fn transact(
        &mut self,
        plan: persist::Plan,
        token: persist::Token,
        writes: usize,
        orders: usize,
        answer_by: Instant,
    ) -> Result<Vec<i64>, PersistError> {
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let failed = move |kind: &str| metrics.db_error(metrics::index(DB_ERRORS, kind));
        if !self.reach.try_now() {
            crate::warn_summarised!(
                "the database is unreachable",
                writes,
                "the database is unreachable; failing a batch at once"
            );
            failed("unavailable");
            return Err(PersistError::Unavailable);
        }
        let opened = self.opening.take();
        if self.db.get_database_backend() == DbBackend::MySql {
            let pool = self.db.clone();
            self.opening = Some(tokio::spawn(async move {
                let txn = pool
                    .begin_with_options(db::write_transaction_options())
                    .await;
                (txn, Instant::now())
            }));
        }
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mut task = tokio::spawn(run_transaction(
            self.db.clone(),
            opened,
            plan,
            state.clone(),
            writes,
        ));
        let outcome_by = answer_by + self.outcome_deadline;
        let ran = match tokio::time::timeout_at(answer_by, &mut task).await {
            Ok(ran) => ran,
            Err(_) => {
                let given_up = state
                    .compare_exchange(RUNNING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if given_up {
                    self.reach.reached(false);
                    crate::warn_summarised!(
                        "gave up a transaction",
                        writes,
                        "the database did not answer in time; gave up a transaction before its COMMIT"
                    );
                    failed("unavailable");
                    return Err(PersistError::Unavailable);
                }
                // Its COMMIT is in flight: its answer is the outcome.
                match tokio::time::timeout_at(outcome_by, &mut task).await {
                    Ok(ran) => ran,
                    Err(_) => {
                        tracing::error!(
                            token = token.as_str(),
                            "outcome unknown: COMMIT got no answer by the outcome deadline"
                        );
                        failed("outcome_unknown");
                        return Err(PersistError::OutcomeUnknown);
                    }
                }
            }
        };
        let ran = ran.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a transaction's task failed");
            Ran::Failed(PersistError::Unavailable)
        });
        match ran {
            Ran::Committed(answered) => {
                self.reach.reached(true);
                self.metrics.commit(started.elapsed(), orders);
                Ok(answered)
            }
            Ran::Unreachable => {
                self.reach.reached(false);
                failed("unavailable");
                Err(PersistError::Unavailable)
            }
            Ran::Failed(error) => {
                self.reach.reached(true);
                // A refusal is counted by `write_all`, once it knows it is one.
                if error != PersistError::Refused {
                    failed("unavailable");
                }
                Err(error)
            }
            Ran::GivenUp => Err(PersistError::Unavailable),
            Ran::CommitFailed(e, answered) => {
                self.reach.reached(true);
                tracing::error!(error = %e, token = token.as_str(), "COMMIT failed; looking up its outcome");
                failed("commit_lost");
                let deadline = (Instant::now() + self.outcome_deadline).min(outcome_by);
                let outcome = self.resolve(&token, deadline).await;
                match outcome {
                    Ok(()) => self.metrics.commit(started.elapsed(), orders),
                    Err(PersistError::OutcomeUnknown) => failed("outcome_unknown"),
                    Err(_) => {}
                }
                outcome.map(|()| answered)
            }
        }
    }

    /// After a failed COMMIT, asks the database whether the transaction's token is
    /// there, retrying on fresh connections until `deadline`. Each lookup runs to its end
    /// on its own task (`db::call`): one that waits for the lock of a transaction the
    /// server has not finished (its session outlived the connection Kitara lost), or for
    /// a connection that no longer answers, is waited for only until the deadline.
    async fn resolve(&self, token: &persist::Token, deadline: Instant) -> Result<(), PersistError> {
        let mut pause = Duration::from_millis(20);
        // The pool may hold other connections that died with this one; each failed
        // attempt discards one, so the first few retries go without a pause.
        let mut quick_retries = 4;
        loop {
            let db = self.db.clone();
            let text = token.as_str().to_owned();
            let lookup = call::within(
                deadline,
                async move { load::token_committed(&db, &text).await },
            );
            let token = token.as_str();
            match lookup.await {
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
                    crate::warn_summarised!(
                        "cannot look an outcome up yet",
                        error = %e,
                        token,
                        "cannot look the outcome up yet"
                    );
                    if quick_retries > 0 {
                        quick_retries -= 1;
                        continue;
                    }
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn resync_ids(&self, answer_by: Instant) {
        let db = self.db.clone();
        let read = async move { load::max_ids(&db).await };
        match call::within(answer_by, read).await {
            Ok((orders, details)) => {
                self.ids.order.fetch_max(orders, Ordering::Relaxed);
                self.ids.detail.fetch_max(details, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the largest ids"),
        }
    }
}

/// A transaction, from BEGIN (or the one opened ahead) to COMMIT, on a task of its own
/// so that it is never cut off half-way. Before it sends COMMIT it checks that the
/// writer still waits for it; if not, it rolls back.
async fn run_transaction(
    db: DatabaseConnection,
    opened: Option<Opening>,
    plan: persist::Plan,
    state: Arc<AtomicU8>,
    writes: usize,
) -> Ran {
    let txn = match begin(&db, opened).await {
        Ok(txn) => txn,
        Err(e) => {
            crate::warn_summarised!(
                "cannot begin a transaction",
                error = %e,
                "cannot begin a transaction"
            );
            return Ran::Unreachable;
        }
    };
    let answered = match persist::write_plan(&txn, &plan).await {
        Ok(answered) => answered,
        Err(e) => {
            let error = match e {
                persist::WriteError::GuardTripped { .. } => {
                    tracing::warn!(error = %e, writes, "batch refused");
                    PersistError::Refused
                }
                // A constraint, or a key stored before: `write_all` finds out which.
                persist::WriteError::Db(ref err) if db::is_refusal(err) => {
                    tracing::debug!(error = %e, writes, "batch refused");
                    PersistError::Refused
                }
                persist::WriteError::Db(_) => {
                    tracing::error!(error = %e, writes, "batch failed");
                    PersistError::Unavailable
                }
            };
            let _ = txn.rollback().await;
            return Ran::Failed(error);
        }
    };
    let committing = state
        .compare_exchange(RUNNING, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if !committing {
        let _ = txn.rollback().await;
        return Ran::GivenUp;
    }
    match txn.commit().await {
        Ok(()) => Ran::Committed(answered),
        Err(e) => Ran::CommitFailed(e, answered),
    }
}

/// The transaction opened ahead if it is fresh, otherwise a new one.
async fn begin(
    db: &DatabaseConnection,
    opened: Option<Opening>,
) -> Result<DatabaseTransaction, DbErr> {
    let opened = match opened {
        Some(opening) => opening.await.ok(),
        None => None,
    };
    match opened {
        // Opened (or refused) just now: use it, or report why it could not open.
        Some((result, at)) if at.elapsed() < OPENED_AHEAD_FOR_AT_MOST => result,
        // None opened, or it waited too long (dropping it rolls it back).
        _ => db.begin_with_options(db::write_transaction_options()).await,
    }
}

//! One transaction, BEGIN to COMMIT, on a task of its own, so that it is never cut off
//! half-way (`db::call`): the writer waits for it until its answers are due, then gives
//! it up before its COMMIT, or, with COMMIT already sent, waits for the outcome.
//!
//! On MySQL a transaction ends with `COMMIT AND CHAIN`, which commits and opens the
//! next one in the same round trip, on the same connection, and the writer keeps that
//! one for its next batch. A transaction then costs two round trips, its plan and its
//! COMMIT: no BEGIN, and no check of a connection given back to the pool (`db::connect`'s
//! canary, a round trip of its own), since the connection stays with the writer. Given
//! back and checked out again per transaction, the same work took four, and on a busy
//! machine each round trip costs the database and Kitara a wake-up on both sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait,
};
use tokio::time::Instant;

use super::Writer;
use crate::db::write::PersistError;
use crate::db::{self, persist};
use crate::metrics::DbError;

/// Whether the database can be reached, as the writers last found it. While it cannot,
/// a transaction is tried at most every `RETRY_UNREACHABLE`, and the batches in between
/// fail at once: during an outage requests get their 503 at once instead of each
/// waiting out its bound, and a stalled server is not sent more transactions to hold.
#[derive(Default)]
pub(super) struct Reach {
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

/// The transaction a `COMMIT AND CHAIN` opened, kept for the writer's next batch, and
/// when it was opened.
pub(super) struct Chained {
    pub(super) txn: DatabaseTransaction,
    at: Instant,
}

/// A chained transaction is used only if it waited less than this: after a longer pause
/// its connection may have been dropped, so it is rolled back and a fresh one begun
/// (from the pool, which pings a connection that sat idle this long).
const CHAINED_FOR_AT_MOST: Duration = db::IDLE_BEFORE_PING;

/// Where a transaction stands, shared by the task that runs it and the writer that waits
/// for it: whichever of the two moves it out of `RUNNING` first decides whether COMMIT
/// is sent (`COMMITTING`) or never will be (`GIVEN_UP`).
const RUNNING: u8 = 0;
const COMMITTING: u8 = 1;
const GIVEN_UP: u8 = 2;

/// How a transaction's task ended.
enum Ran {
    /// Committed; on MySQL, with the transaction its `COMMIT AND CHAIN` opened.
    Committed(Vec<i64>, Option<DatabaseTransaction>),
    /// It could not begin: the database is unreachable (or the pool exhausted).
    Unreachable,
    /// It failed before COMMIT: nothing of it committed.
    Failed(PersistError),
    /// It lost a conflict before COMMIT (a deadlock, or on Galera an abort by another
    /// node's replicated write): rolled back whole, it is decided and written again.
    Conflicted,
    /// COMMIT was sent and its answer was an error: the token tells the outcome.
    CommitFailed(DbErr, Vec<i64>),
    /// The writer gave it up before COMMIT; it rolled back.
    GivenUp,
}

impl Writer {
    /// Runs the plan in one transaction, on a task of its own, and waits for it until
    /// `answer_by`; answers what its admin writes answered.
    ///
    /// The transaction is never cut off half-way (see `db::call`). If it has not sent its
    /// COMMIT by `answer_by`, the writer gives it up: it will roll back instead of
    /// committing, so its writes fail as `Unavailable` now, and their requests get 503
    /// within their bound. If its COMMIT is already in flight, the writer waits for its
    /// answer until the outcome deadline, then looks the token up.
    pub(super) async fn transact(
        &mut self,
        plan: persist::Plan,
        token: persist::Token,
        writes: usize,
        orders: usize,
        answer_by: Instant,
    ) -> Result<Vec<i64>, PersistError> {
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let failed = move |kind: DbError| metrics.db_error(kind);
        let unavailable = || {
            failed(DbError::Unavailable);
            Err(PersistError::Unavailable)
        };
        if !self.reach.try_now() {
            crate::warn_summarised!(
                "the database is unreachable",
                writes,
                "the database is unreachable; failing a batch at once"
            );
            return unavailable();
        }
        // A stale one is dropped here, which rolls it back.
        let chained = self
            .chained
            .take()
            .filter(|c| c.at.elapsed() < CHAINED_FOR_AT_MOST)
            .map(|c| c.txn);
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mut task = tokio::spawn(run_transaction(
            self.db.clone(),
            chained,
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
                    return unavailable();
                }
                // Its COMMIT is in flight: its answer is the outcome.
                match tokio::time::timeout_at(outcome_by, &mut task).await {
                    Ok(ran) => ran,
                    Err(_) => {
                        tracing::error!(
                            token = token.as_str(),
                            "outcome unknown: COMMIT got no answer by the outcome deadline"
                        );
                        failed(DbError::OutcomeUnknown);
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
            Ran::Committed(answered, next) => {
                self.chained = next.map(|txn| Chained {
                    txn,
                    at: Instant::now(),
                });
                self.reach.reached(true);
                self.metrics.commit(started.elapsed(), orders);
                Ok(answered)
            }
            Ran::Unreachable => {
                self.reach.reached(false);
                failed(DbError::Unavailable);
                Err(PersistError::Unavailable)
            }
            Ran::Failed(error) => {
                self.reach.reached(true);
                // A refusal is counted by `write_all`, once it knows it is one.
                if error != PersistError::Refused {
                    failed(DbError::Unavailable);
                }
                Err(error)
            }
            Ran::GivenUp => Err(PersistError::Unavailable),
            Ran::Conflicted => {
                self.reach.reached(true);
                failed(DbError::Conflict);
                Err(PersistError::Conflicted)
            }
            Ran::CommitFailed(e, answered) => {
                self.reach.reached(true);
                // On Galera a COMMIT that loses certification to another node's write is
                // rolled back whole (1213). Its token still decides: "not committed" is
                // then certain, and the writes are decided and written again.
                let conflict = db::is_conflict(&e);
                if conflict {
                    tracing::warn!(error = %e, token = token.as_str(), "COMMIT lost a conflict; looking up its outcome");
                    failed(DbError::Conflict);
                } else {
                    tracing::error!(error = %e, token = token.as_str(), "COMMIT failed; looking up its outcome");
                    failed(DbError::CommitLost);
                }
                let deadline = (Instant::now() + self.outcome_deadline).min(outcome_by);
                let outcome = self.resolve(&token, deadline).await;
                match outcome {
                    Ok(()) => {
                        self.metrics.commit(started.elapsed(), orders);
                        Ok(answered)
                    }
                    Err(PersistError::OutcomeUnknown) => {
                        failed(DbError::OutcomeUnknown);
                        Err(PersistError::OutcomeUnknown)
                    }
                    Err(PersistError::Unavailable) if conflict => Err(PersistError::Conflicted),
                    Err(error) => Err(error),
                }
            }
        }
    }
}

/// A transaction, from BEGIN (or the chained one) to COMMIT, on a task of its own so
/// that it is never cut off half-way. Before it sends COMMIT it checks that the writer
/// still waits for it; if not, it rolls back. Any failure drops the transaction, and
/// with it its connection, which goes back to the pool through the canary.
async fn run_transaction(
    db: DatabaseConnection,
    chained: Option<DatabaseTransaction>,
    plan: persist::Plan,
    state: Arc<AtomicU8>,
    writes: usize,
) -> Ran {
    let begun = match chained {
        Some(txn) => Ok(txn),
        None => db.begin_with_options(db::write_transaction_options()).await,
    };
    let txn = match begun {
        Ok(txn) => txn,
        Err(e) => {
            crate::warn_summarised!("cannot begin a transaction", error = %e, "cannot begin a transaction");
            return Ran::Unreachable;
        }
    };
    let answered = match persist::write_plan(&txn, &plan).await {
        Ok(answered) => answered,
        Err(e) => return not_written(txn, e, writes).await,
    };
    let committing = state
        .compare_exchange(RUNNING, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if !committing {
        let _ = txn.rollback().await;
        return Ran::GivenUp;
    }
    if txn.get_database_backend() == DbBackend::MySql {
        return match txn.execute_unprepared("COMMIT AND CHAIN").await {
            Ok(_) => Ran::Committed(answered, Some(txn)),
            Err(e) => Ran::CommitFailed(e, answered),
        };
    }
    match txn.commit().await {
        Ok(()) => Ran::Committed(answered, None),
        Err(e) => Ran::CommitFailed(e, answered),
    }
}

/// A plan the database did not write: refused, lost to a conflict, or failed. Rolls back.
async fn not_written(txn: DatabaseTransaction, e: persist::WriteError, writes: usize) -> Ran {
    let error = match e {
        persist::WriteError::GuardTripped { .. } => {
            tracing::warn!(error = %e, writes, "batch refused");
            PersistError::Refused
        }
        persist::WriteError::Db(ref err) if db::is_conflict(err) => {
            tracing::debug!(error = %e, writes, "batch lost a conflict");
            let _ = txn.rollback().await;
            return Ran::Conflicted;
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
    Ran::Failed(error)
}

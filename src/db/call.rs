//! Database calls that are never cut off half-way.
//!
//! A call whose future is dropped while the server's answer is on its way (a timeout
//! around it, a client that went away, an aborted task) leaves its connection one answer
//! behind. sqlx's test of a connection given back to the pool is a ping, and a cancelled
//! ping's answer passes it; then the next user of that connection reads the stale answer
//! as its own: an order "not found", a guard that "tripped" with ample stock.
//!
//! So Kitara never drops a database call. Each runs to its end on a task of its own, and
//! whoever waits for it waits only until its deadline, then answers 503. The call
//! finishes (or fails) in the background, and its connection goes back to the pool in
//! step with the server. A stalled server therefore holds a connection per call in
//! flight until it answers or the connection breaks; the `Reads` permits and the pool's
//! size bound how many.
//!
//! `connect`'s release check (the canary) is the second wall: a connection found out of
//! step anyway is closed, counted and logged, never reused.

use std::future::Future;
use std::sync::Arc;

use sea_orm::{ConnAcquireErr, DatabaseConnection, DbErr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinError;
use tokio::time::Instant;

/// Runs `call` to its end on a task of its own; answers what it gave, or, once
/// `deadline` has passed, that the database did not answer in time (the call goes on).
pub async fn within<T, F>(deadline: Instant, call: F) -> Result<T, DbErr>
where
    T: Send + 'static,
    F: Future<Output = Result<T, DbErr>> + Send + 'static,
{
    tokio::time::timeout_at(deadline, detached(call))
        .await
        .unwrap_or_else(|_| Err(too_slow()))
}

/// Runs `call` to its end on a task of its own, and waits for it: a caller that is itself
/// stopped (an aborted task) leaves the call running rather than cut off.
pub async fn detached<T, F>(call: F) -> Result<T, DbErr>
where
    T: Send + 'static,
    F: Future<Output = Result<T, DbErr>> + Send + 'static,
{
    joined(tokio::spawn(call).await)
}

/// What a database call run on a task of its own answered, its task's failure (a panic)
/// being the call's.
pub fn joined<T>(answer: Result<Result<T, DbErr>, JoinError>) -> Result<T, DbErr> {
    answer.unwrap_or_else(|join| Err(DbErr::Custom(format!("a database call failed: {join}"))))
}

/// The error of a call that outlasted its deadline: to the rest of Kitara it is the
/// pool's timeout, a database too slow to answer (503).
pub fn too_slow() -> DbErr {
    DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)
}

/// Reads of the front end (orders, keys, users, the owner's pages). At most `permits`
/// run at once, so that a flood of them, or a stall that holds them, cannot take the
/// pool's connections from the writer. A permit is held by the read itself, not by its
/// caller: a read its caller stopped waiting for keeps its permit until it ends.
#[derive(Clone)]
pub struct Reads {
    db: DatabaseConnection,
    permits: Arc<Semaphore>,
}

impl Reads {
    pub fn new(db: DatabaseConnection, permits: usize) -> Self {
        Self {
            db,
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// Runs `read` on a connection of the pool, waiting for a permit and for the answer
    /// until `deadline`.
    pub async fn run<T, F, Fut>(&self, deadline: Instant, read: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: FnOnce(DatabaseConnection) -> Fut,
        Fut: Future<Output = Result<T, DbErr>> + Send + 'static,
    {
        let permit: OwnedSemaphorePermit =
            match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(DbErr::Custom("reads closed".into())),
                Err(_) => return Err(too_slow()),
            };
        let call = read(self.db.clone());
        within(deadline, async move {
            let result = call.await;
            drop(permit);
            result
        })
        .await
    }
}

//! Store actors: one single-owner Tokio task per store serialises its orders, checks
//! and reserves them against its in-memory stock, and hands the reserved ones to the
//! writer. A `StoreHandle` is the only way in.

mod actor;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use actor::{ActorConfig, spawn};

use crate::domain::{LockOrder, OrderDetailId, OrderId, OrderLine};

/// A committed order, as answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub order_id: OrderId,
    /// One per line of the order, ascending product id.
    pub details: Vec<(OrderDetailId, OrderLine)>,
}

/// Why an order was not placed. `http::response` maps each to a status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("user not found")]
    UserNotFound,
    #[error("product must in same store")]
    MixedStores,
    #[error("all product not available")]
    NoneAvailable,
    #[error("some product not available")]
    SomeAvailable,
    /// The store's mailbox is full.
    #[error("store is busy")]
    Busy,
    /// The database is unreachable, too slow, or failed before COMMIT.
    #[error("database unavailable")]
    Unavailable,
    /// The database refused the order twice, even after the store reloaded its stock.
    #[error("stock changed concurrently")]
    Conflict,
    /// The connection died during COMMIT and the outcome could not be learnt in time.
    #[error("order outcome unknown")]
    OutcomeUnknown,
    /// Kitara is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

pub type LockResult = Result<Placed, LockError>;

/// A lock-order message: the order and where to send the answer.
struct LockCommand {
    order: Arc<LockOrder>,
    respond_to: oneshot::Sender<LockResult>,
}

/// The front end's side of a store actor. Cloning is cheap; the actor stops once every
/// handle is dropped and its orders are settled.
#[derive(Clone)]
pub struct StoreHandle {
    sender: mpsc::Sender<LockCommand>,
}

impl StoreHandle {
    /// Sends the order to the store's actor and waits for its answer, which comes only
    /// after the order's transaction committed. A full mailbox is answered at once.
    pub async fn lock(&self, order: LockOrder) -> LockResult {
        let (respond_to, answer) = oneshot::channel();
        let command = LockCommand {
            order: Arc::new(order),
            respond_to,
        };
        self.sender.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LockError::Busy,
            mpsc::error::TrySendError::Closed(_) => LockError::ShuttingDown,
        })?;
        answer.await.unwrap_or(Err(LockError::ShuttingDown))
    }
}

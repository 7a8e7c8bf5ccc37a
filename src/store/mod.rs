//! Store actors: one single-owner Tokio task per store serialises its orders and the
//! ends of its holds, checks and reserves orders against its in-memory stock, times its
//! holds' expiry, and hands every decision to the writer. A `StoreHandle` is the only
//! way in.

mod actor;
mod attempt;
mod events;
mod feed;
mod products;
mod recovery;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use crate::domain::ProductChange;
pub use actor::{ActorConfig, Shared, spawn};
pub use feed::{Feed, Published};

use crate::catalog::Product;
use crate::db::write::KeyRecord;
use crate::domain::{
    Deadline, LockOrder, OrderDetailId, OrderId, OrderLine, OrderStatus, Resolution, StoreId,
    UserId,
};

/// The concurrent index from a store to its actor: how the front end finds the one
/// actor that decides a store's orders.
#[derive(Default)]
pub struct Registry {
    handles: dashmap::DashMap<StoreId, StoreHandle>,
}

impl Registry {
    pub fn get(&self, store: StoreId) -> Option<StoreHandle> {
        self.handles.get(&store).map(|h| h.clone())
    }

    pub fn insert(&self, store: StoreId, handle: StoreHandle) {
        self.handles.insert(store, handle);
    }

    /// Removes the store's handle if it is the one of `epoch` (not a newer actor's).
    pub fn remove_at(&self, store: StoreId, epoch: i64) -> Option<StoreHandle> {
        self.handles
            .remove_if(&store, |_, h| h.epoch == Some(epoch))
            .map(|(_, h)| h)
    }

    /// Removes the store's handle: no new request reaches its actor.
    pub fn remove(&self, store: StoreId) -> Option<StoreHandle> {
        self.handles.remove(&store).map(|(_, h)| h)
    }

    /// The stores served here.
    pub fn stores(&self) -> Vec<StoreId> {
        self.handles.iter().map(|h| *h.key()).collect()
    }

    /// Every store's handle (start-up settles each store's holds through them).
    pub fn handles(&self) -> Vec<StoreHandle> {
        self.handles.iter().map(|e| e.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Drops every handle: each actor settles what it holds and stops (shutdown).
    pub fn clear(&self) {
        self.handles.clear();
    }

    /// Commands waiting in the fullest mailbox (`/metrics`).
    pub fn deepest_mailbox(&self) -> usize {
        self.handles
            .iter()
            .map(|s| s.value().depth())
            .max()
            .unwrap_or(0)
    }
}

/// A live hold as its lock committed it (or as its store loaded it): what a confirm or
/// cancel of it answers with, known without reading the order from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOrder {
    pub store: StoreId,
    pub buyer: UserId,
    pub expires_at: Option<Deadline>,
    /// One per detail, ascending product id.
    pub details: Vec<(OrderDetailId, OrderLine)>,
}

/// The live holds of the stores this node serves, by order id, so that a confirm or
/// cancel finds its store's actor without reading the order. Each store's actor adds
/// its holds as they commit (or load) and takes them out as they end; the actor still
/// decides every request from its own `HoldBook`, so an entry that lags behind costs
/// a read, never a wrong answer.
#[derive(Debug, Default)]
pub struct LiveHolds(dashmap::DashMap<OrderId, Arc<HeldOrder>>);

impl LiveHolds {
    pub fn get(&self, order: OrderId) -> Option<Arc<HeldOrder>> {
        self.0.get(&order).map(|held| held.clone())
    }

    pub(crate) fn insert(&self, order: OrderId, held: HeldOrder) {
        self.0.insert(order, Arc::new(held));
    }

    pub(crate) fn remove(&self, order: OrderId) {
        self.0.remove(&order);
    }
}

/// A committed order, as answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub order_id: OrderId,
    /// One per line of the order, ascending product id.
    pub details: Vec<(OrderDetailId, OrderLine)>,
    pub expires_at: Option<Deadline>,
}

/// Why a request an actor answers got no answer from what its store decided: its
/// store, the database, or shutdown. Every kind of request shares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The request's idempotency key is already stored; nothing was written.
    #[error("idempotency key already stored")]
    KeyTaken,
    /// The store's mailbox is full.
    #[error("store is busy")]
    Busy,
    /// The database is unreachable, too slow, or failed before COMMIT.
    #[error("database unavailable")]
    Unavailable,
    /// The database refused it, even after the store reloaded its stock.
    #[error("stock changed concurrently")]
    Conflict,
    /// The connection died during COMMIT and the outcome could not be learnt in time.
    #[error("order outcome unknown")]
    OutcomeUnknown,
    /// Kitara is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The store is moving to another node (this one lost it, or is handing it over,
    /// or does not own it): nothing of the request was written; a retry finds its new
    /// owner.
    #[error("store is moving to another node")]
    Moved,
    /// No node owns the store yet (its owner's lease lapsed and nobody has taken it).
    #[error("store has no owner yet")]
    Unowned,
    /// The request was forwarded to the store's owner, which could not be reached;
    /// nothing was sent to it.
    #[error("the node that owns the store cannot be reached")]
    OwnerUnreachable,
}

/// Why an order was not placed. `http::response` maps each to a status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("user not found")]
    UserNotFound,
    #[error("product must in same store")]
    MixedStores,
    #[error("purchase limit per customer exceeded")]
    LimitExceeded,
    #[error("all product not available")]
    NoneAvailable,
    #[error("some product not available")]
    SomeAvailable,
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl LockError {
    /// Whether the order was judged and refused (a 4xx of the judging order), or its key
    /// found already stored: for a keyed request, the key may hold the answer of an
    /// earlier request just like it that succeeded.
    ///
    /// A failure (busy, unavailable, moved, outcome unknown) is answered 503 without
    /// reading the key: the client retries, and the retry is judged or replayed then;
    /// a read now would add a round trip to a database that may be the trouble.
    /// Mutation testing lists `true` here as a survivor: the read would at most give a
    /// replay one attempt early.
    pub fn may_be_replayed(&self) -> bool {
        matches!(
            self,
            LockError::UserNotFound
                | LockError::MixedStores
                | LockError::LimitExceeded
                | LockError::NoneAvailable
                | LockError::SomeAvailable
                | LockError::Failed(Failure::KeyTaken)
        )
    }
}

pub type LockResult = Result<Placed, LockError>;

/// A lock the edge validated, with what the actor needs besides the order.
pub struct LockRequest {
    pub order: LockOrder,
    /// When the hold expires; `None` holds until confirmed or cancelled.
    pub expires_at: Option<Deadline>,
    pub key: Option<Arc<KeyRecord>>,
    /// When the request must be answered: the database is waited for until then (and,
    /// for a COMMIT in flight, until the outcome deadline after it), then it is a 503.
    pub answer_by: Instant,
}

/// Why a confirm or cancel got no `Resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The store holds no such live hold of that buyer: it ended since it was read, or
    /// it was written behind Kitara's back after start-up.
    #[error("order is not held by this store")]
    NotHeld,
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// The status a confirm or cancel left the order in (never `locked`): the one asked
/// for, or the one an earlier end (or the hold's deadline) gave it.
pub type ResolveResult = Result<OrderStatus, ResolveError>;

/// Why a product change was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The store has no such product (or it was deleted).
    #[error("product not found")]
    NotFound,
    #[error("not enough unheld stock")]
    NotEnoughStock,
    /// An edit or deletion of the product is on its way, or one is asked while a
    /// change of it is.
    #[error("another change of this product is in progress")]
    InProgress,
    #[error("{}", change_failure(*.0))]
    Failed(#[from] Failure),
}

/// A change is no order: its unknown outcome says so.
fn change_failure(failure: Failure) -> String {
    match failure {
        Failure::OutcomeUnknown => "outcome of the change unknown".to_owned(),
        other => other.to_string(),
    }
}

/// The product as the committed change left it (for a deletion, as it was).
pub type ChangeResult = Result<Product, ChangeError>;

/// Why a command did not reach the actor.
enum NotSent {
    /// The mailbox is full: answered 503 at once, never queued without bound.
    Busy,
    /// The actor is gone (shutdown).
    Closed,
}

impl From<NotSent> for Failure {
    fn from(e: NotSent) -> Self {
        match e {
            NotSent::Busy => Failure::Busy,
            NotSent::Closed => Failure::ShuttingDown,
        }
    }
}

/// What a store actor is asked to do.
enum Command {
    Lock {
        request: LockRequest,
        respond_to: oneshot::Sender<LockResult>,
    },
    Resolve {
        order: OrderId,
        buyer: UserId,
        resolution: Resolution,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
        respond_to: oneshot::Sender<ResolveResult>,
    },
    Change {
        change: ProductChange,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
        respond_to: oneshot::Sender<ChangeResult>,
    },
    /// Expire every hold that is due now, and answer once those expiries committed.
    SettleDue { respond_to: oneshot::Sender<()> },
}

/// The front end's side of a store actor. Cloning is cheap; the actor stops once every
/// handle is dropped and its writes are settled.
#[derive(Clone)]
pub struct StoreHandle {
    sender: mpsc::Sender<Command>,
    /// The epoch its actor owns the store at (MySQL).
    epoch: Option<i64>,
}

impl StoreHandle {
    /// Sends the order to the store's actor and waits for its answer, which comes only
    /// after the order's transaction committed. A full mailbox is answered at once.
    pub async fn lock(&self, request: LockRequest) -> LockResult {
        self.ask(|respond_to| Command::Lock {
            request,
            respond_to,
        })
        .await
    }

    /// Confirms or cancels a hold of `buyer`; answers after the change committed, or
    /// with where an earlier change left the order.
    pub async fn resolve(
        &self,
        order: OrderId,
        buyer: UserId,
        resolution: Resolution,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
    ) -> ResolveResult {
        self.ask(|respond_to| Command::Resolve {
            order,
            buyer,
            resolution,
            key,
            answer_by,
            respond_to,
        })
        .await
    }

    /// Makes a change of the store's products; answers after it committed (with `key`,
    /// if given, stored in its transaction).
    pub async fn change(
        &self,
        change: ProductChange,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
    ) -> ChangeResult {
        self.ask(|respond_to| Command::Change {
            change,
            key,
            answer_by,
            respond_to,
        })
        .await
    }

    /// Sends the command `ask` makes with the channel of its answer, and waits for that
    /// answer. A full mailbox, or an actor that is gone, is answered at once.
    async fn ask<T, E: From<Failure>>(
        &self,
        ask: impl FnOnce(oneshot::Sender<Result<T, E>>) -> Command,
    ) -> Result<T, E> {
        let (respond_to, answer) = oneshot::channel();
        self.send(ask(respond_to)).map_err(Failure::from)?;
        answer
            .await
            .unwrap_or_else(|_| Err(Failure::ShuttingDown.into()))
    }

    /// Expires every hold that is due by the store's clock, and returns once those
    /// expiries committed (or failed). Start-up calls it before serving; tests call it
    /// after moving a manual clock.
    pub async fn settle_due(&self) {
        let (respond_to, answer) = oneshot::channel();
        // Waits for room: this is not on the order path.
        if self
            .sender
            .send(Command::SettleDue { respond_to })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    /// The epoch its actor owns the store at (MySQL; `None` on SQLite).
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    /// Commands waiting in the mailbox.
    pub fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    fn send(&self, command: Command) -> Result<(), NotSent> {
        self.sender.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotSent::Busy,
            mpsc::error::TrySendError::Closed(_) => NotSent::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose actor never reads its mailbox, with `queued` commands in it.
    fn stuck(queued: usize) -> (StoreHandle, mpsc::Receiver<Command>) {
        let (sender, mailbox) = mpsc::channel(8);
        for _ in 0..queued {
            let (respond_to, _) = oneshot::channel();
            sender
                .try_send(Command::SettleDue { respond_to })
                .expect("room in the mailbox");
        }
        (
            StoreHandle {
                sender,
                epoch: None,
            },
            mailbox,
        )
    }

    #[test]
    fn an_actor_that_lost_its_store_removes_its_own_handle_not_a_newer_one() {
        let registry = Registry::default();
        let (handle, _mailbox) = stuck(0);
        let handle = StoreHandle {
            epoch: Some(3),
            ..handle
        };
        registry.insert(StoreId(1), handle);
        // A webhook deliverer tells one tenure of its store here from the next by it.
        assert_eq!(registry.get(StoreId(1)).map(|h| h.epoch()), Some(Some(3)));
        // The actor of epoch 2 learns it lost the store after the node took it again
        // at epoch 3: the newer actor's handle stays.
        assert!(registry.remove_at(StoreId(1), 2).is_none());
        assert!(registry.get(StoreId(1)).is_some());
        let removed = registry
            .remove_at(StoreId(1), 3)
            .expect("the handle of epoch 3");
        assert_eq!(removed.epoch, Some(3));
        assert!(registry.get(StoreId(1)).is_none());
        assert!(registry.remove_at(StoreId(1), 3).is_none());
    }

    #[test]
    fn a_store_stopped_here_leaves_the_registry_and_its_count() {
        let registry = Registry::default();
        let mut mailboxes = Vec::new();
        for store in [1, 2] {
            let (handle, mailbox) = stuck(0);
            registry.insert(StoreId(store), handle);
            mailboxes.push(mailbox);
        }
        assert_eq!(registry.len(), 2);
        assert!(registry.remove(StoreId(1)).is_some());
        assert!(registry.get(StoreId(1)).is_none(), "no request reaches it");
        assert_eq!(registry.len(), 1, "`stores_owned` counts what is left");
        assert_eq!(registry.stores(), vec![StoreId(2)]);
        assert!(registry.remove(StoreId(1)).is_none());
    }

    /// An ended hold must not stay in `LiveHolds`: no answer would change (its store's
    /// actor judges from its own holds), but a sale's every hold would stay in memory.
    #[test]
    fn an_ended_hold_leaves_the_live_holds() {
        let live = LiveHolds::default();
        let held = HeldOrder {
            store: StoreId(1),
            buyer: UserId(7),
            expires_at: None,
            details: Vec::new(),
        };
        live.insert(OrderId(1), held.clone());
        live.insert(OrderId(2), held);
        assert_eq!(live.get(OrderId(1)).map(|h| h.buyer), Some(UserId(7)));
        live.remove(OrderId(1));
        assert!(live.get(OrderId(1)).is_none());
        assert!(
            live.get(OrderId(2)).is_some(),
            "the other hold is still live"
        );
    }

    #[test]
    fn the_deepest_mailbox_is_the_fullest_of_all_stores() {
        let registry = Registry::default();
        assert_eq!(registry.deepest_mailbox(), 0);
        let mut mailboxes = Vec::new();
        for (store, queued) in [(1, 2), (2, 5), (3, 0)] {
            let (handle, mailbox) = stuck(queued);
            registry.insert(StoreId(store), handle);
            mailboxes.push(mailbox);
        }
        assert_eq!(registry.deepest_mailbox(), 5);
        registry.clear();
        assert_eq!(registry.deepest_mailbox(), 0);
    }
}

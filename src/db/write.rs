//! What the writer persists, as data: the decisions of store actors and of the admin API
//! (`Write`), and what each became (`Written`, or a `PersistError`). They live below the
//! writer so that `persist`, which turns a batch of them into SQL, need not know the
//! writer.

use std::sync::Arc;

use super::events::{EventDraft, Stored};
use crate::domain::{
    Deadline, Fingerprint, IdempotencyKey, LockOrder, NodeId, OrderDetailId, OrderId,
    ProductChange, ProductId, Resolution, StoreId, UserId,
};

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
    /// Another node took the write's store: its fence failed and nothing of it was
    /// written. The store's actor must stop.
    #[error("another node owns the store now")]
    Fenced,
    /// The transaction lost a conflict (a deadlock, or a Galera certification failure)
    /// and rolled back whole. The writer writes it again; a store never sees this.
    #[error("the transaction lost a conflict")]
    Conflicted,
}

/// What a write of a store proves in its transaction: that its node still owns the
/// store at the epoch it loaded it at (SPEC.md, "the fence"). MySQL only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence {
    pub store: StoreId,
    pub epoch: i64,
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
        event: Option<EventDraft>,
    },
    /// A hold that ends; cancelled and expired holds give their units back.
    End {
        order_id: OrderId,
        resolution: Resolution,
        order: Arc<LockOrder>,
        key: Option<Arc<KeyRecord>>,
        event: Option<EventDraft>,
    },
    /// A change the store's owner made; its ledger row, if it has one, is written with
    /// it.
    Admin {
        change: AdminWrite,
        event: Option<EventDraft>,
        /// Stored with the change, with the answer its request was given.
        key: Option<Arc<KeyRecord>>,
    },
}

/// What the admin API changes. A change of a product's stock is decided by its store's
/// actor like an order; users and stores change no stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminWrite {
    NewUser {
        name: String,
    },
    /// Refused if the owner is gone. With its row of the ownership table: owned at
    /// epoch 1 by `served_by` (a node, and its lease) on MySQL, unowned on SQLite.
    NewStore {
        name: String,
        owner: UserId,
        served_by: Option<(NodeId, std::time::Duration)>,
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

impl AdminWrite {
    /// The status its request is answered with (201 for what it creates), and the row
    /// the answer shows, given what the write created (see `Written::Admin`).
    pub fn answer(&self, created: i64) -> Option<(u16, super::keys::AnswerOf)> {
        use super::keys::AnswerOf;
        match self {
            AdminWrite::NewUser { .. } => Some((201, AnswerOf::User(created))),
            AdminWrite::NewStore { .. } => Some((201, AnswerOf::Store(created))),
            AdminWrite::NewProduct { .. } => Some((201, AnswerOf::Product(created))),
            AdminWrite::Restock { product, .. }
            | AdminWrite::EditProduct { product, .. }
            | AdminWrite::DeleteProduct { product } => Some((200, AnswerOf::Product(product.0))),
            AdminWrite::Adopt => None,
        }
    }

    /// What persists a change of `store`'s products its actor decided.
    pub fn of_change(store: StoreId, change: &ProductChange) -> Self {
        match change {
            ProductChange::Add {
                name, stock, limit, ..
            } => AdminWrite::NewProduct {
                store,
                name: name.clone(),
                stock: *stock,
                limit: *limit,
            },
            ProductChange::Restock {
                product,
                delta,
                reason,
            } => AdminWrite::Restock {
                product: *product,
                delta: *delta,
                reason: reason.clone(),
            },
            ProductChange::Edit {
                product,
                name,
                limit,
            } => AdminWrite::EditProduct {
                product: *product,
                name: name.clone(),
                limit: *limit,
            },
            ProductChange::Delete { product } => AdminWrite::DeleteProduct { product: *product },
        }
    }
}

impl Write {
    /// The idempotency key stored with it, if its request had one.
    pub fn key(&self) -> Option<&KeyRecord> {
        match self {
            Write::Lock { key, .. } | Write::End { key, .. } | Write::Admin { key, .. } => {
                key.as_deref()
            }
        }
    }

    /// The event of its change, if events are on and it has one.
    pub fn event(&self) -> Option<&EventDraft> {
        match self {
            Write::Lock { event, .. } | Write::End { event, .. } | Write::Admin { event, .. } => {
                event.as_ref()
            }
        }
    }
}

/// An idempotency key to store with a write, bound to its request's fingerprint; the
/// row also names the write's order, from which a replay is answered (an admin write's
/// row holds its answer).
#[derive(Debug)]
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

/// What became of a submission: its outcome, and the events of what committed, in
/// order.
#[derive(Debug, Default)]
pub struct Settled {
    pub outcome: Outcome,
    pub events: Vec<Stored>,
}

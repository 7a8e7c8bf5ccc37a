//! What a store actor is asked (`Asked`), and what it decided and handed to the writer
//! (`Attempt`), each with the channel its answer goes back on.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{ChangeResult, Failure, LockResult, ProductChange, ResolveResult};
use crate::db::write::{KeyRecord, PersistError};
use crate::domain::{Deadline, LockOrder, OrderId, Resolution, UserId};

/// A lock the actor is handling, with its answer channel.
pub(super) struct LockAttempt {
    pub(super) order: Arc<LockOrder>,
    pub(super) expires_at: Option<Deadline>,
    pub(super) key: Option<Arc<KeyRecord>>,
    pub(super) answer_by: Instant,
    pub(super) respond_to: oneshot::Sender<LockResult>,
    /// Set when its first write failed (refused, or the connection was lost before
    /// COMMIT) and it is being decided again against the reloaded stock; a second failure
    /// is answered 503.
    pub(super) retried: bool,
}

/// A request to end a hold: a confirm or cancel from a client, or an expiry.
pub(super) struct EndRequest {
    pub(super) order: OrderId,
    pub(super) buyer: Option<UserId>,
    pub(super) asked: Resolution,
    pub(super) key: Option<Arc<KeyRecord>>,
    pub(super) answer_by: Instant,
    /// `None` for an expiry, which nobody waits for.
    pub(super) respond_to: Option<oneshot::Sender<ResolveResult>>,
    pub(super) retried: bool,
}

impl EndRequest {
    pub(super) fn answer(&mut self, result: ResolveResult) {
        if let Some(respond_to) = self.respond_to.take() {
            let _ = respond_to.send(result);
        }
    }
}

/// A change of the store's products the actor is handling.
pub(super) struct ChangeAttempt {
    pub(super) change: ProductChange,
    /// Stored with the change, with its answer (`db::keys::store_admin`).
    pub(super) key: Option<Arc<KeyRecord>>,
    pub(super) answer_by: Instant,
    pub(super) respond_to: oneshot::Sender<ChangeResult>,
}

impl ChangeAttempt {
    pub(super) fn answer(self, result: ChangeResult) {
        let _ = self.respond_to.send(result);
    }
}

/// What the actor has decided and handed to the writer.
pub(super) enum Attempt {
    Lock(LockAttempt),
    Change(ChangeAttempt),
    End {
        request: EndRequest,
        /// The resolution under way: the asked one, or `Expire` for a hold past due.
        resolution: Resolution,
    },
}

impl Attempt {
    /// When its request must be answered.
    pub(super) fn answer_by(&self) -> Instant {
        match self {
            Attempt::Lock(lock) => lock.answer_by,
            Attempt::Change(change) => change.answer_by,
            Attempt::End { request, .. } => request.answer_by,
        }
    }
}

/// Why a decision was not persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its idempotency key is already stored: nothing of it was written.
    KeyTaken,
    /// The writer is gone.
    ShuttingDown,
    Write(PersistError),
}

/// What a store actor is asked to decide, in arrival order.
pub(super) enum Asked {
    Lock(LockAttempt),
    End(EndRequest),
    Change(ChangeAttempt),
}

impl Asked {
    /// Answers it with `failure`, undecided.
    pub(super) fn refuse(self, failure: Failure) {
        match self {
            Asked::Lock(attempt) => attempt.answer(Err(failure.into())),
            Asked::End(mut request) => request.answer(Err(failure.into())),
            Asked::Change(attempt) => attempt.answer(Err(failure.into())),
        }
    }
}

impl LockAttempt {
    pub(super) fn answer(self, result: LockResult) {
        // The client may have gone away; the order stands either way.
        let _ = self.respond_to.send(result);
    }
}

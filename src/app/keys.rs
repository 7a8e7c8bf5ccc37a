//! Safe retries, as the application uses them: which keys have a request in progress in
//! this process, what a key already stored says about a request that carries it, and
//! the task that purges keys past their time. The pure rules (a key's syntax, a
//! request's fingerprint) are `domain::key`'s; the storage is `db::keys`'.
//!
//! A key is stored with what its request committed, in the same transaction (the
//! writer), and the database's primary key on it decides a race between a request and
//! its retry. The claims here only let a retry that arrives while its original is still
//! in progress be told so (409) instead of waiting for the database to refuse it.

use std::time::Duration;

use dashmap::DashSet;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::call::Reads;
use crate::db::load::{self, OrderRow};
use crate::db::{call, keys};
use crate::domain::{Fingerprint, IdempotencyKey, OrderId};

/// The keys of requests in progress.
#[derive(Debug, Default)]
pub struct InFlightKeys {
    keys: DashSet<IdempotencyKey>,
}

/// A key claimed by the request in progress; dropping it (when the request ends, or the
/// client goes away) releases the key.
#[derive(Debug)]
pub struct Claim<'a> {
    keys: &'a InFlightKeys,
    key: IdempotencyKey,
}

impl InFlightKeys {
    /// Claims the key for a request, unless another request holds it.
    pub fn claim(&self, key: &IdempotencyKey) -> Option<Claim<'_>> {
        self.keys.insert(key.clone()).then(|| Claim {
            keys: self,
            key: key.clone(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.keys.keys.remove(&self.key);
    }
}

/// What went wrong with a request's key, rather than with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Another request with the key is in progress here (409).
    #[error("a request with this Idempotency-Key is in progress")]
    InProgress,
    /// The key was stored for another request (422).
    #[error("the Idempotency-Key was used for another request")]
    Reused,
    /// The key is stored, but the order it names is gone: a bug, or a row deleted
    /// behind Kitara's back (500).
    #[error("a stored key names order {0}, which is gone")]
    Orphan(OrderId),
    /// The key could not be looked up (503).
    #[error("the key could not be looked up")]
    Unavailable,
}

/// A keyed request's failure: its own, or its key's.
#[derive(Debug)]
pub enum Keyed<E> {
    Failed(E),
    Key(KeyError),
}

impl<E> From<KeyError> for Keyed<E> {
    fn from(error: KeyError) -> Self {
        Keyed::Key(error)
    }
}

/// The order `key` was stored with, if it was stored for this very request (its answer
/// is then rendered again from the order, as the database has it); a key stored for
/// another request, or naming an order that is gone, is the key's failure.
pub async fn replayed(
    reads: &Reads,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    answer_by: Instant,
) -> Result<Option<OrderRow>, KeyError> {
    match replay(reads, key, fingerprint, answer_by).await {
        Ok(Replay::Fresh) => Ok(None),
        Ok(Replay::Same(order)) => Ok(Some(order)),
        Ok(Replay::Reused) => Err(KeyError::Reused),
        Ok(Replay::Orphan(order)) => {
            tracing::error!(%order, "a stored key names an order that is gone");
            Err(KeyError::Orphan(order))
        }
        Err(e) => {
            crate::warn_summarised!(
                "idempotency key lookup failed",
                error = %e,
                "idempotency key lookup failed"
            );
            Err(KeyError::Unavailable)
        }
    }
}

/// How often the purge sweeps through the keys.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// What a key already stored says about a request that carries it.
#[derive(Debug)]
enum Replay {
    /// The key is not stored: the request is judged afresh.
    Fresh,
    /// Stored for this very request: its answer is rendered again from the order the key
    /// names, as the database has it.
    Same(OrderRow),
    /// Stored for another request (422).
    Reused,
    /// Stored, but its order is gone: a bug, or a row deleted behind Kitara's back.
    Orphan(OrderId),
}

/// Looks `key` up; the database is waited for until `answer_by`. Not the hot path: a
/// keyed request is judged like any other, and its key looked up only when the fresh
/// answer is not a 200 (or, for a confirm or cancel, first).
async fn replay(
    reads: &Reads,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    answer_by: Instant,
) -> Result<Replay, DbErr> {
    let text = key.clone();
    let stored = reads
        .run(answer_by, move |db| async move {
            keys::stored(&db, &text).await
        })
        .await?;
    let Some(stored) = stored else {
        return Ok(Replay::Fresh);
    };
    if stored.fingerprint != fingerprint {
        return Ok(Replay::Reused);
    }
    let id = stored.order_id;
    let order = reads
        .run(
            answer_by,
            move |db| async move { load::order(&db, id).await },
        )
        .await?;
    Ok(order.map_or(Replay::Orphan(id), Replay::Same))
}

/// Keys looked at per step of the sweep: small, so that a step never holds many row
/// locks.
const PURGE_STEP: u32 = 1_000;

/// A pause between steps, so that a sweep of a large table yields to the writer.
const PURGE_PAUSE: Duration = Duration::from_millis(10);

/// Starts the task that deletes keys stored more than `keep` ago: now, then every
/// `PURGE_INTERVAL`, sweeping through the keys in key order, `PURGE_STEP` at a time. It
/// runs on its own pooled connection, off the order path.
pub fn spawn_purger(db: DatabaseConnection, keep: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(keep) = chrono::Duration::from_std(keep) else {
            return;
        };
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // `created_at` is the database's own UTC time.
            let before = (chrono::Utc::now() - keep).naive_utc();
            let mut purged = 0u64;
            let mut after: Option<Vec<u8>> = None;
            loop {
                // Detached: shutdown aborts the purger, never a statement half-way.
                let (db, from) = (db.clone(), after.clone());
                let step = call::detached(async move {
                    keys::purge_step(&db, before, from.as_deref(), PURGE_STEP).await
                });
                match step.await {
                    Ok((deleted, next)) => {
                        purged += deleted;
                        let Some(next) = next else { break };
                        after = Some(next);
                        tokio::time::sleep(PURGE_PAUSE).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot purge idempotency keys");
                        break;
                    }
                }
            }
            if purged > 0 {
                tracing::info!(purged, "purged idempotency keys past their time");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_by_one_request_at_a_time() {
        let keys = InFlightKeys::default();
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let claim = keys.claim(&key).expect("free");
        assert!(keys.claim(&key).is_none());
        drop(claim);
        assert!(keys.claim(&key).is_some());
    }
}

//! A batch that lost a conflict is written again as it is, a few times. A batch the
//! database refused: which of its writes does it really refuse? A key stored
//! before refuses the whole batch, and so does the fence of a store another node took:
//! those writes are set aside (`KeyTaken`, `Fenced`) and the rest written again; what
//! is still refused is written one write per transaction, so that only the refused
//! writes fail, unless the database turns out to be unreachable, which fails the rest
//! at once.

use tokio::time::Instant;

use super::Writer;
use crate::db::write::{Fence, Outcome, PersistError, Write, Written};
use crate::db::{call, keys, owners};
use crate::metrics::DbError;

/// How many times a batch that lost a conflict is written again as it is, before its
/// writes fail as unavailable.
const CONFLICT_RETRIES: usize = 3;

impl Writer {
    /// Writes everything in one transaction; if the database refuses it, finds out
    /// which writes it refuses (see the module's doc).
    pub(super) async fn write_all(
        &mut self,
        writes: &[&Write],
        fences: &[Option<Fence>],
        answer_by: Instant,
    ) -> Outcome {
        let mut first = self.write(writes, fences, answer_by).await;
        for _ in 0..CONFLICT_RETRIES {
            if first != Err(PersistError::Conflicted) {
                break;
            }
            first = self.write(writes, fences, answer_by).await;
        }
        match first {
            Ok(written) => return written.into_iter().map(Ok).collect(),
            Err(PersistError::Refused) => {}
            // Still losing: another writer keeps writing these rows (a store another
            // node took would have failed its fence by now). Nothing committed; the
            // requests get 503 and their retries come later.
            Err(PersistError::Conflicted) => {
                return vec![Err(PersistError::Unavailable); writes.len()];
            }
            Err(error) => return vec![Err(error); writes.len()],
        }
        let mut outcomes: Vec<Option<Result<Written, PersistError>>> = vec![None; writes.len()];
        // A fence that failed, or a key stored before, refuses the whole batch: set
        // those writes aside (nothing of them was written) and write the others
        // together again.
        let lost = self.lost_stores(fences, answer_by).await;
        let taken = self.taken_keys(writes, answer_by).await;
        let mut rest = Vec::with_capacity(writes.len());
        for (i, &write) in writes.iter().enumerate() {
            if fences[i].is_some_and(|f| lost.contains(&f)) {
                outcomes[i] = Some(Err(PersistError::Fenced));
                continue;
            }
            match write.key() {
                Some(record) if taken.iter().any(|k| k == record.key.as_bytes()) => {
                    outcomes[i] = Some(Err(PersistError::KeyTaken));
                }
                _ => rest.push(i),
            }
        }
        let mut tried_alone = writes.len() == 1;
        if (!taken.is_empty() || !lost.is_empty()) && !rest.is_empty() {
            let subset: Vec<&Write> = rest.iter().map(|&i| writes[i]).collect();
            let subset_fences: Vec<Option<Fence>> = rest.iter().map(|&i| fences[i]).collect();
            match self.write(&subset, &subset_fences, answer_by).await {
                Ok(written) => {
                    for (&i, w) in rest.iter().zip(written) {
                        outcomes[i] = Some(Ok(w));
                    }
                    rest.clear();
                }
                Err(PersistError::Refused) => tried_alone = rest.len() == 1,
                Err(error) => {
                    let error = settled(error);
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
                self.write(std::slice::from_ref(&writes[i]), &fences[i..=i], answer_by)
                    .await
                    .map(|mut w| w.remove(0))
                    .map_err(settled)
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
                self.metrics.db_error(DbError::Refused);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(PersistError::Unavailable)))
            .collect()
    }

    /// The fences of this batch that fail now: their store has another epoch (another
    /// node took it). None if the lookup fails or outlasts `answer_by` (writing the
    /// writes one by one then tells).
    async fn lost_stores(&self, fences: &[Option<Fence>], answer_by: Instant) -> Vec<Fence> {
        let mut mine: Vec<Fence> = fences.iter().flatten().copied().collect();
        mine.sort_unstable();
        mine.dedup();
        let Some(node) = self.node.clone().filter(|_| !mine.is_empty()) else {
            return Vec::new();
        };
        let db = self.db.clone();
        let lookup = async move { owners::owned(&db, &node).await };
        let owned = match call::within(answer_by, lookup).await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up which stores this node still owns");
                return Vec::new();
            }
        };
        let lost: Vec<Fence> = mine
            .into_iter()
            .filter(|f| !owned.contains(&(f.store, f.epoch)))
            .collect();
        for fence in &lost {
            tracing::warn!(
                store = %fence.store,
                epoch = fence.epoch,
                "another node took the store: its writes were refused by the fence"
            );
            self.metrics.fence_refusals.inc();
        }
        lost
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
}

/// A conflict lost on a later try, after the batch's retries: nothing committed, as
/// for a database that did not answer.
fn settled(error: PersistError) -> PersistError {
    match error {
        PersistError::Conflicted => PersistError::Unavailable,
        error => error,
    }
}

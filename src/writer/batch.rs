//! A batch as rows: Kitara numbers the new orders and their details itself, so that one
//! multi-row insert writes a whole batch and every id can still be answered.

use std::ops::Range;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Writer;
use crate::db::call;
use crate::db::events::OrderFacts;
use crate::db::ids::{self, Sequence};
use crate::db::persist;
use crate::db::write::{Committed, Fence, PersistError, Write, Written};
use crate::domain::{OrderDetailId, OrderId, OrderStatus, ProductId};

/// Kitara numbers order and detail rows itself, so one multi-row insert can write a
/// batch and still answer every id. It numbers from blocks reserved in the database
/// (`db::ids`), so that several nodes on one database never hand out one id; the
/// writers of a node share its blocks. Ids of a failed batch are not reused.
#[derive(Default)]
pub(super) struct Ids {
    blocks: tokio::sync::Mutex<Blocks>,
}

#[derive(Default)]
struct Blocks {
    order: Block,
    detail: Block,
}

/// The ids at hand of one sequence, and the reservation of the next block if one is on
/// its way.
#[derive(Default)]
struct Block {
    ids: Range<i64>,
    /// A reservation that outlasted the batch that started it: it runs to its end on its
    /// own task (`db::call`), and the next batch short of ids waits for it rather than
    /// starting another, so a stalled database holds one connection per sequence for
    /// reservations, not one per batch.
    reserving: Option<JoinHandle<Result<Range<i64>, DbErr>>>,
}

/// Ids reserved at a time: a reservation is a short transaction of its own, so one per
/// this many orders (or lines) costs nothing noticeable.
const BLOCK: i64 = 100_000;

impl Ids {
    /// The first of `count` consecutive ids of each kind, from this node's blocks
    /// (reserving a new block when the one at hand is short). The wait for the blocks and
    /// for a reservation ends at `deadline`: a stalled database makes the batch
    /// unavailable (503) in time, like its transaction would.
    async fn take(
        &self,
        db: &DatabaseConnection,
        orders: i64,
        lines: i64,
        deadline: Instant,
    ) -> Result<(i64, i64), PersistError> {
        let mut blocks = tokio::time::timeout_at(deadline, self.blocks.lock())
            .await
            .map_err(|_| PersistError::Unavailable)?;
        let Blocks { order, detail } = &mut *blocks;
        let order = order.take(db, Sequence::Orders, orders, deadline).await?;
        let detail = detail.take(db, Sequence::Details, lines, deadline).await?;
        Ok((order, detail))
    }

    /// Reserves the first blocks, so that the order path starts with ids at hand.
    pub(super) async fn prefetch(
        &self,
        db: &DatabaseConnection,
        deadline: Instant,
    ) -> Result<(), PersistError> {
        self.take(db, 0, 0, deadline).await.map(|_| ())
    }

    /// Gives back what is left of the blocks at hand (if no node reserved past them):
    /// after a refused batch, which may have met rows inserted behind Kitara's back (the
    /// next block starts past the largest id), and at shutdown. Waits until `deadline`
    /// at most: an id block not given back is a gap in the ids, nothing more.
    pub(super) async fn renew(&self, db: &DatabaseConnection, deadline: Instant) {
        let Ok(mut blocks) = tokio::time::timeout_at(deadline, self.blocks.lock()).await else {
            return;
        };
        let Blocks { order, detail } = std::mem::take(&mut *blocks);
        drop(blocks);
        for (sequence, block) in [(Sequence::Orders, order), (Sequence::Details, detail)] {
            if block.ids.is_empty() {
                continue;
            }
            let db = db.clone();
            let (from, to) = (block.ids.start, block.ids.end);
            let given = call::within(deadline, async move {
                ids::give_back(&db, sequence, from, to).await
            });
            if let Err(e) = given.await {
                tracing::debug!(error = %e, "cannot give back the rest of an id block");
            }
        }
    }
}

impl Block {
    /// The first of `count` consecutive ids, reserving a new block (or waiting for the
    /// one on its way) while the one at hand is short.
    async fn take(
        &mut self,
        db: &DatabaseConnection,
        sequence: Sequence,
        count: i64,
        deadline: Instant,
    ) -> Result<i64, PersistError> {
        while self.ids.end - self.ids.start < count.max(1) {
            let size = BLOCK.max(count);
            let reserving = self.reserving.get_or_insert_with(|| {
                let db = db.clone();
                tokio::spawn(async move {
                    let first = ids::reserve(&db, sequence, size).await?;
                    Ok(first..first + size)
                })
            });
            // Still on its way at the deadline: it stays, for the next batch.
            let joined = tokio::time::timeout_at(deadline, reserving)
                .await
                .map_err(|_| PersistError::Unavailable)?;
            self.reserving = None;
            self.ids = call::joined(joined).map_err(|e| {
                crate::warn_summarised!("an id block could not be reserved", error = %e, "an id block could not be reserved");
                PersistError::Unavailable
            })?;
        }
        let first = self.ids.start;
        self.ids.start += count;
        Ok(first)
    }
}

impl Writer {
    /// Numbers the new orders and the events, and writes everything in one
    /// transaction. Events are numbered on from `next_seq`, which moves on only when
    /// the transaction committed: a write set aside (a key taken, a fence failed) takes
    /// no number, so each store's events stay 1, 2, 3, … with no gap.
    pub(super) async fn write(
        &mut self,
        writes: &[&Write],
        fences: &[Option<Fence>],
        answer_by: Instant,
    ) -> Result<Vec<Written>, PersistError> {
        let locks = writes.iter().filter_map(|w| match w {
            Write::Lock { order, .. } => Some(order.lines().len() as i64),
            Write::End { .. } | Write::Admin { .. } => None,
        });
        let (count, lines) = locks.fold((0i64, 0i64), |(c, l), n| (c + 1, l + n));
        let (first_order, first_detail) = self.ids.take(&self.db, count, lines, answer_by).await?;
        // Each is the id before the next row's.
        let mut order_id = first_order - 1;
        let mut detail_id = first_detail - 1;
        let mut fences: Vec<Fence> = fences.iter().flatten().copied().collect();
        fences.sort_unstable();
        fences.dedup();
        let mut batch = persist::Batch {
            fences,
            ..Default::default()
        };
        let mut next_seq = self.next_seq.clone();
        let mut written = Vec::with_capacity(writes.len());
        for &w in writes {
            let seq = w.event().map(|draft| {
                let next = next_seq.entry(draft.store).or_insert(1);
                *next += 1;
                *next - 1
            });
            let numbered = seq.zip(w.event());
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
                    if let Some((seq, draft)) = numbered {
                        batch.events.push(draft.render_order(
                            seq,
                            OrderFacts {
                                id: OrderId(order_id),
                                buyer: order.buyer(),
                                status: OrderStatus::Locked,
                                lines: order.lines(),
                                first_detail: Some(OrderDetailId(first_detail_id)),
                            },
                        ));
                    }
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
                    if let Some((seq, draft)) = numbered {
                        batch.events.push(draft.render_order(
                            seq,
                            OrderFacts {
                                id: *order_id,
                                buyer: order.buyer(),
                                status: resolution.status(),
                                lines: order.lines(),
                                first_detail: None,
                            },
                        ));
                    }
                    (Written::Ended, order_id.0)
                }
                Write::Admin { change, key, .. } => {
                    batch.admin.push(persist::AdminRow {
                        change,
                        event: numbered,
                        key: key.as_deref(),
                    });
                    // Filled in with what the database answered.
                    (Written::Admin(0), 0)
                }
            };
            // An admin write stores its key itself, with its answer (`persist`).
            if let Some(record) = w.key().filter(|_| !matches!(w, Write::Admin { .. })) {
                batch.keys.push(persist::KeyRow {
                    key: record.key.as_bytes(),
                    fingerprint: &record.fingerprint.0,
                    order_id: key_order,
                });
            }
            written.push(done);
        }
        batch.events.sort_unstable_by_key(|e| (e.store, e.seq));
        self.sequence += 1;
        let [boot, process, writer] = self.token_prefix;
        let token = persist::Token::new(&[boot, process, writer, u128::from(self.sequence)]);
        let plan = persist::Plan::new(&batch, &token, self.stock_guard)
            .statements_apart(self.statements_apart);
        let orders = batch.orders.len();
        let writes = orders + batch.ended.len() + batch.admin.len();
        let mut events = std::mem::take(&mut batch.events);
        let admin_events: Vec<_> = batch.admin.iter().map(|row| row.event).collect();
        let outcome = self.transact(plan, token, writes, orders, answer_by).await;
        if outcome == Err(PersistError::Refused) {
            // A duplicate id (a row inserted behind Kitara's back) is one way to be
            // refused: number from new blocks, past what the database has.
            self.ids.renew(&self.db, answer_by).await;
        }
        let mut answered = outcome?.into_iter();
        let mut admin_events = admin_events.into_iter();
        for w in &mut written {
            if let Written::Admin(value) = w {
                *value = answered.next().unwrap_or_default();
                // Rendered as the transaction wrote it, now that the id is known here.
                if let Some(Some((seq, draft))) = admin_events.next() {
                    events.push(draft.render_product(seq, ProductId(*value)));
                }
            }
        }
        drop(batch);
        self.next_seq = next_seq;
        self.committed.extend(events);
        Ok(written)
    }
}

//! A batch as rows: Kitara numbers the new orders and their details itself, so that one
//! multi-row insert writes a whole batch and every id can still be answered.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::time::Instant;

use super::Writer;
use crate::db::persist;
use crate::db::write::{Committed, Fence, PersistError, Write, Written};
use crate::domain::{OrderDetailId, OrderId};

/// Kitara numbers order and detail rows itself (it owns the database while it runs),
/// so one multi-row insert can write a batch and still answer every id. Ids of a failed
/// batch are not reused.
pub(super) struct Ids {
    /// The last order id handed out.
    pub(super) order: AtomicI64,
    /// The last detail id handed out.
    pub(super) detail: AtomicI64,
}

impl Writer {
    /// Numbers the new orders and writes everything in one transaction.
    pub(super) async fn write(
        &mut self,
        writes: &[&Write],
        fences: &[Option<Fence>],
        answer_by: Instant,
    ) -> Result<Vec<Written>, PersistError> {
        let locks = writes.iter().filter_map(|w| match w {
            Write::Lock { order, .. } => Some(order.lines().len() as i64),
            Write::End { .. } | Write::Admin(_) => None,
        });
        let (count, lines) = locks.fold((0i64, 0i64), |(c, l), n| (c + 1, l + n));
        let mut order_id = self.ids.order.fetch_add(count, Ordering::Relaxed);
        let mut detail_id = self.ids.detail.fetch_add(lines, Ordering::Relaxed);
        let mut fences: Vec<Fence> = fences.iter().flatten().copied().collect();
        fences.sort_unstable();
        fences.dedup();
        let mut batch = persist::Batch {
            fences,
            ..Default::default()
        };
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
}

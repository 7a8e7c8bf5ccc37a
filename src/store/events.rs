//! A store's events: its actor numbers them and writes each with its change; once they
//! committed, it publishes them in order to whoever follows the store here (`Feed`).
//!
//! The rule that keeps the numbers gap-free: while events are on, a store has at most one
//! submission at the writer. What it decides meanwhile is held and goes in the next
//! submission, numbered from the first number nothing committed has taken, so a write
//! that failed (nothing of it committed) leaves no hole behind a later one that
//! committed. Holding is group commit at the store: the held submission grows while
//! the one before commits. Its events' stock is computed when it is handed over, from
//! memory that then holds every committed change of the store, so each event shows the
//! stock its change left in the order the events commit.

use std::collections::HashMap;

use super::actor::StoreActor;
use crate::db::events::{EventData, EventDraft, EventKind, OrderEvent, ProductEvent, Stored};
use crate::db::write::{AdminWrite, Write};
use crate::domain::ProductId;

impl StoreActor {
    /// Takes what committed of a submission's events: the numbers move on, and they
    /// are published in order.
    pub(super) fn committed_events(&mut self, events: Vec<Stored>) {
        let Some(log) = &mut self.events else {
            return;
        };
        let Some(last) = events.last() else {
            return;
        };
        log.next_seq = last.seq + 1;
        if self.metrics.enabled {
            self.metrics.events.inc_by(events.len() as u64);
        }
        log.feed.publish(self.store, &events);
    }

    /// Gives every write its event, with the stock each change leaves, computed from
    /// memory, which holds every committed change and every reservation of these
    /// writes (and none of their returns, which apply when they commit).
    pub(super) fn draft_events(&self, writes: &mut [Write]) {
        let at_ms = chrono::Utc::now().timestamp_millis();
        // The stock before these writes: memory, with their reservations given back.
        let mut stock: HashMap<ProductId, i64> = HashMap::new();
        let mut before = |product: ProductId, stock: &mut HashMap<ProductId, i64>| {
            *stock
                .entry(product)
                .or_insert_with(|| self.book.get(product).unwrap_or(0))
        };
        for write in writes.iter() {
            match write {
                Write::Lock { order, .. } => {
                    for line in order.lines() {
                        before(line.product, &mut stock);
                        *stock.entry(line.product).or_default() += line.quantity;
                    }
                }
                // Units taken away are withheld in memory already (`< 0` or `<= 0` alike:
                // the edge refuses a delta of 0).
                Write::Admin {
                    change: AdminWrite::Restock { product, delta, .. },
                    ..
                } if *delta < 0 => {
                    before(*product, &mut stock);
                    *stock.entry(*product).or_default() -= delta;
                }
                _ => {}
            }
        }
        let catalog = self.catalog.snapshot();
        let name = |product: ProductId| {
            catalog
                .get(product)
                .map(|p| p.name.clone())
                .unwrap_or_default()
        };
        for write in writes.iter_mut() {
            let (kind, data) = match &*write {
                Write::Lock {
                    order, expires_at, ..
                } => {
                    let lines = order.lines();
                    let mut after = Vec::with_capacity(lines.len());
                    for line in lines {
                        let left = before(line.product, &mut stock) - line.quantity;
                        stock.insert(line.product, left);
                        after.push((line.product, left));
                    }
                    let data = OrderEvent {
                        expires_at: *expires_at,
                        details: Vec::new(),
                        names: lines.iter().map(|l| name(l.product)).collect(),
                        stock: after,
                    };
                    (EventKind::OrderLocked, EventData::Order(data))
                }
                Write::End {
                    order_id,
                    resolution,
                    order,
                    ..
                } => {
                    let lines = order.lines();
                    let mut after = Vec::with_capacity(lines.len());
                    for line in lines {
                        let mut left = before(line.product, &mut stock);
                        if resolution.returns_units() {
                            left += line.quantity;
                            stock.insert(line.product, left);
                        }
                        after.push((line.product, left));
                    }
                    let held = self.live.get(*order_id);
                    let data = OrderEvent {
                        expires_at: held.as_ref().and_then(|h| h.expires_at),
                        details: held
                            .map(|h| h.details.iter().map(|(id, _)| *id).collect())
                            .unwrap_or_default(),
                        names: lines.iter().map(|l| name(l.product)).collect(),
                        stock: after,
                    };
                    (EventKind::of_end(*resolution), EventData::Order(data))
                }
                Write::Admin { change, .. } => {
                    let Some(event) = self.product_event(change, &mut stock, &mut before) else {
                        continue;
                    };
                    event
                }
            };
            let draft = EventDraft {
                store: self.store,
                kind,
                at_ms,
                data,
            };
            match write {
                Write::Lock { event, .. }
                | Write::End { event, .. }
                | Write::Admin { event, .. } => *event = Some(draft),
            }
        }
    }

    /// The event of an owner's change of a product, and the stock it leaves.
    fn product_event(
        &self,
        change: &AdminWrite,
        stock: &mut HashMap<ProductId, i64>,
        before: &mut impl FnMut(ProductId, &mut HashMap<ProductId, i64>) -> i64,
    ) -> Option<(EventKind, EventData)> {
        let catalog = self.catalog.snapshot();
        let product = |id: ProductId, kind, current_stock, adjusted| {
            let p = catalog.get(id)?;
            Some((
                kind,
                EventData::Product(ProductEvent {
                    id: Some(id),
                    name: p.name.clone(),
                    current_stock,
                    max_per_customer: p.max_per_customer,
                    adjusted,
                }),
            ))
        };
        match change {
            AdminWrite::NewProduct {
                name, stock, limit, ..
            } => Some((
                EventKind::ProductCreated,
                EventData::Product(ProductEvent {
                    id: None,
                    name: name.clone(),
                    current_stock: *stock,
                    max_per_customer: *limit,
                    adjusted: None,
                }),
            )),
            AdminWrite::Restock {
                product: id,
                delta,
                reason,
            } => {
                let left = before(*id, stock) + delta;
                stock.insert(*id, left);
                product(
                    *id,
                    EventKind::StockAdjusted,
                    left,
                    Some((*delta, reason.clone())),
                )
            }
            AdminWrite::EditProduct {
                product: id,
                name,
                limit,
            } => {
                let current = before(*id, stock);
                let (kind, mut data) = product(*id, EventKind::ProductUpdated, current, None)?;
                if let EventData::Product(p) = &mut data {
                    if let Some(name) = name {
                        p.name = name.clone();
                    }
                    if let Some(limit) = limit {
                        p.max_per_customer = *limit;
                    }
                }
                Some((kind, data))
            }
            AdminWrite::DeleteProduct { product: id } => {
                let current = before(*id, stock);
                product(*id, EventKind::ProductDeleted, current, None)
            }
            AdminWrite::NewUser { .. } | AdminWrite::NewStore { .. } | AdminWrite::Adopt => None,
        }
    }
}

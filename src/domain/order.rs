//! A validated order: its lines merged by product and every number within the Go
//! version's 32-bit columns; what the edge hands to a store's actor.

use std::collections::BTreeMap;

use super::{ProductId, UserId};

/// Largest `user_id`, `product_id`, line quantity, merged quantity and order total: the
/// Go version's columns were 32-bit signed integers.
pub const MAX_QUANTITY: i64 = i32::MAX as i64;

/// Most lines a request may carry, counted before duplicate lines are merged.
pub const MAX_LINES: usize = 100;

/// Longest hold a lock may ask for (`hold_seconds`, `KITARA_HOLD_SECONDS`): a week.
pub const MAX_HOLD_SECONDS: u32 = 604_800;

/// One product of an order, after duplicate lines were merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub product: ProductId,
    /// In `1..=MAX_QUANTITY`.
    pub quantity: i64,
}

/// An order that passed the edge: one line per distinct product, ascending product id,
/// every quantity and the total within `MAX_QUANTITY`. Past the edge an invalid order
/// cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOrder {
    buyer: UserId,
    lines: Vec<OrderLine>,
    total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("products must not be empty")]
    Empty,
    #[error("products must have at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("quantity must be an integer between 1 and {MAX_QUANTITY}")]
    QuantityOutOfRange,
    #[error("quantity of product {0} exceeds {MAX_QUANTITY} after merging duplicate lines")]
    MergedQuantityTooLarge(ProductId),
    #[error("total quantity of the order exceeds {MAX_QUANTITY}")]
    TotalTooLarge,
}

impl LockOrder {
    /// Merges duplicate lines of one product and checks the limits of SPEC.md.
    pub fn new(
        buyer: UserId,
        lines: impl IntoIterator<Item = (ProductId, i64)>,
    ) -> Result<Self, OrderError> {
        let mut merged: BTreeMap<ProductId, i64> = BTreeMap::new();
        let mut count = 0usize;
        for (product, quantity) in lines {
            count += 1;
            if count > MAX_LINES {
                return Err(OrderError::TooManyLines);
            }
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(OrderError::QuantityOutOfRange);
            }
            // Both addends are at most MAX_QUANTITY: no i64 overflow is possible.
            let sum = merged.entry(product).or_insert(0);
            *sum += quantity;
            if *sum > MAX_QUANTITY {
                return Err(OrderError::MergedQuantityTooLarge(product));
            }
        }
        if merged.is_empty() {
            return Err(OrderError::Empty);
        }
        let total: i64 = merged.values().sum();
        if total > MAX_QUANTITY {
            return Err(OrderError::TotalTooLarge);
        }
        let lines = merged
            .into_iter()
            .map(|(product, quantity)| OrderLine { product, quantity })
            .collect();
        Ok(Self {
            buyer,
            lines,
            total,
        })
    }

    /// An order as the database holds it (a live hold read back at start-up or on a
    /// reload). It passed the edge when it was placed, or was written by a tool: its
    /// lines are merged, but the edge's limits are not applied again.
    pub fn stored(buyer: UserId, lines: impl IntoIterator<Item = (ProductId, i64)>) -> Self {
        let mut merged: BTreeMap<ProductId, i64> = BTreeMap::new();
        for (product, quantity) in lines {
            *merged.entry(product).or_insert(0) += quantity;
        }
        let total = merged.values().sum();
        let lines = merged
            .into_iter()
            .map(|(product, quantity)| OrderLine { product, quantity })
            .collect();
        Self {
            buyer,
            lines,
            total,
        }
    }

    pub fn buyer(&self) -> UserId {
        self.buyer
    }

    /// One line per distinct product, ascending product id.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// Sum of the quantities of all lines (`orders.quantity`).
    pub fn total(&self) -> i64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(i64, i64)]) -> Result<LockOrder, OrderError> {
        LockOrder::new(UserId(1), lines.iter().map(|&(p, q)| (ProductId(p), q)))
    }

    #[test]
    fn duplicate_lines_are_merged_and_sorted() {
        let order = order(&[(2, 1), (1, 2), (2, 3)]).unwrap();
        assert_eq!(
            order.lines(),
            &[
                OrderLine {
                    product: ProductId(1),
                    quantity: 2
                },
                OrderLine {
                    product: ProductId(2),
                    quantity: 4
                },
            ]
        );
        assert_eq!(order.total(), 6);
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(order(&[]), Err(OrderError::Empty));
        assert_eq!(order(&[(1, 0)]), Err(OrderError::QuantityOutOfRange));
        assert_eq!(
            order(&[(1, MAX_QUANTITY), (1, 1)]),
            Err(OrderError::MergedQuantityTooLarge(ProductId(1)))
        );
        assert_eq!(
            order(&[(1, MAX_QUANTITY), (2, 1)]),
            Err(OrderError::TotalTooLarge)
        );
        let lines: Vec<_> = (1..=101).map(|p| (p, 1)).collect();
        assert_eq!(order(&lines), Err(OrderError::TooManyLines));
        let lines: Vec<_> = (1..=100).map(|p| (p % 3, 1)).collect();
        assert_eq!(order(&lines).unwrap().lines().len(), 3);
    }

    #[test]
    fn a_stored_order_is_merged_but_not_limited() {
        let stored = LockOrder::stored(
            UserId(4),
            [
                (ProductId(2), 3),
                (ProductId(1), MAX_QUANTITY),
                (ProductId(2), 4),
            ],
        );
        assert_eq!(stored.buyer(), UserId(4));
        assert_eq!(
            stored.lines(),
            &[
                OrderLine {
                    product: ProductId(1),
                    quantity: MAX_QUANTITY
                },
                OrderLine {
                    product: ProductId(2),
                    quantity: 7
                },
            ]
        );
        assert_eq!(stored.total(), MAX_QUANTITY + 7);
    }
}

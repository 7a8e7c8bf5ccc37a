//! Flash-sale limits per customer (`products.max_per_customer`).
//!
//! A buyer's units of a limited product over all their orders that are locked or
//! confirmed, plus the new order's line, must not exceed the limit. The store actor
//! counts an order from the moment it reserves it, so a buyer who fires many requests at
//! once cannot pass the limit; a cancelled or expired order no longer counts.

use std::collections::HashMap;

use super::{LockOrder, ProductId, UserId};

/// The limits of one store's products, and what each buyer holds or bought of the
/// limited ones. Products without a limit are not counted, so memory grows only with
/// buyers of limited products.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purchases {
    limits: HashMap<ProductId, i64>,
    units: HashMap<(UserId, ProductId), i64>,
}

impl Purchases {
    /// `limits` per limited product; `units` what buyers hold or bought of them.
    pub fn new(
        limits: impl IntoIterator<Item = (ProductId, i64)>,
        units: impl IntoIterator<Item = (UserId, ProductId, i64)>,
    ) -> Self {
        let limits: HashMap<ProductId, i64> = limits.into_iter().collect();
        let units = units
            .into_iter()
            .filter(|(_, product, _)| limits.contains_key(product))
            .map(|(buyer, product, n)| ((buyer, product), n))
            .collect();
        Self { limits, units }
    }

    pub fn limit(&self, product: ProductId) -> Option<i64> {
        self.limits.get(&product).copied()
    }

    /// What the buyer holds or bought of a limited product.
    pub fn units(&self, buyer: UserId, product: ProductId) -> i64 {
        self.units.get(&(buyer, product)).copied().unwrap_or(0)
    }

    /// Sets or clears a product's limit. A product that had none was not counted, so
    /// its units start at zero here: the caller reloads them from the database.
    pub fn set_limit(&mut self, product: ProductId, limit: Option<i64>) {
        match limit {
            Some(limit) => {
                self.limits.insert(product, limit);
            }
            None => {
                self.limits.remove(&product);
                self.units.retain(|(_, p), _| *p != product);
            }
        }
    }

    /// Whether the order keeps its buyer within every limit.
    pub fn allows(&self, order: &LockOrder) -> bool {
        order
            .lines()
            .iter()
            .all(|line| match self.limit(line.product) {
                Some(limit) => self.units(order.buyer(), line.product) + line.quantity <= limit,
                None => true,
            })
    }

    /// The order now counts (it was reserved).
    pub fn add(&mut self, order: &LockOrder) {
        for line in order.lines() {
            if self.limits.contains_key(&line.product) {
                *self.units.entry((order.buyer(), line.product)).or_insert(0) += line.quantity;
            }
        }
    }

    /// The order no longer counts (it was not persisted, or it was cancelled or expired).
    pub fn remove(&mut self, order: &LockOrder) {
        for line in order.lines() {
            let key = (order.buyer(), line.product);
            if let Some(units) = self.units.get_mut(&key) {
                *units -= line.quantity;
                if *units <= 0 {
                    self.units.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(buyer: i64, lines: &[(i64, i64)]) -> LockOrder {
        LockOrder::new(UserId(buyer), lines.iter().map(|&(p, q)| (ProductId(p), q))).unwrap()
    }

    #[test]
    fn a_buyer_stays_within_the_limit_of_each_limited_product() {
        let mut purchases = Purchases::new([(ProductId(1), 3)], [(UserId(7), ProductId(1), 1)]);
        assert!(purchases.allows(&order(7, &[(1, 2), (2, 100)])));
        assert!(!purchases.allows(&order(7, &[(1, 3)])));
        // Other buyers count on their own.
        assert!(purchases.allows(&order(8, &[(1, 3)])));
        let two = order(7, &[(1, 2)]);
        purchases.add(&two);
        assert_eq!(purchases.units(UserId(7), ProductId(1)), 3);
        assert!(!purchases.allows(&order(7, &[(1, 1)])));
        // A cancelled order frees its units for the buyer again.
        purchases.remove(&two);
        assert!(purchases.allows(&order(7, &[(1, 2)])));
    }

    /// One step of a store's life with its limits.
    #[derive(Debug, Clone)]
    enum Step {
        SetLimit(i64, Option<i64>),
        Add(i64, Vec<(i64, i64)>),
        Remove(i64, Vec<(i64, i64)>),
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let lines = prop::collection::btree_map(1i64..4, 1i64..4, 1..3)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>());
        let step = prop_oneof![
            (1i64..4, prop::option::of(0i64..6)).prop_map(|(p, l)| Step::SetLimit(p, l)),
            (1i64..3, lines.clone()).prop_map(|(b, l)| Step::Add(b, l)),
            (1i64..3, lines).prop_map(|(b, l)| Step::Remove(b, l)),
        ];
        prop::collection::vec(step, 0..40)
    }

    proptest::proptest! {
        /// Against a model that counts, per buyer and limited product, the units of the
        /// orders added since the limit was set, never below zero: what is counted, and
        /// what is allowed, agree after every step.
        #[test]
        fn purchases_agree_with_a_model_of_what_buyers_hold(steps in steps()) {
            use proptest::prelude::*;
            use std::collections::BTreeMap;
            let mut purchases = Purchases::default();
            let mut limits: BTreeMap<i64, i64> = BTreeMap::new();
            let mut units: BTreeMap<(i64, i64), i64> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::SetLimit(product, limit) => {
                        purchases.set_limit(ProductId(product), limit);
                        match limit {
                            Some(limit) => {
                                limits.insert(product, limit);
                            }
                            None => {
                                limits.remove(&product);
                                units.retain(|&(_, p), _| p != product);
                            }
                        }
                    }
                    Step::Add(buyer, lines) => {
                        purchases.add(&order(buyer, &lines));
                        for (product, quantity) in lines {
                            if limits.contains_key(&product) {
                                *units.entry((buyer, product)).or_insert(0) += quantity;
                            }
                        }
                    }
                    Step::Remove(buyer, lines) => {
                        purchases.remove(&order(buyer, &lines));
                        for (product, quantity) in lines {
                            if let Some(n) = units.get_mut(&(buyer, product)) {
                                *n -= quantity;
                                if *n <= 0 {
                                    units.remove(&(buyer, product));
                                }
                            }
                        }
                    }
                }
                for buyer in 1..3 {
                    for product in 1..4 {
                        let held = units.get(&(buyer, product)).copied().unwrap_or(0);
                        prop_assert_eq!(purchases.units(UserId(buyer), ProductId(product)), held);
                        prop_assert_eq!(purchases.limit(ProductId(product)), limits.get(&product).copied());
                        for quantity in 1..4 {
                            let allowed = limits.get(&product).is_none_or(|&l| held + quantity <= l);
                            prop_assert_eq!(
                                purchases.allows(&order(buyer, &[(product, quantity)])),
                                allowed
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_without_a_limit_are_not_counted() {
        let mut purchases = Purchases::new([], [(UserId(1), ProductId(1), 5)]);
        purchases.add(&order(1, &[(1, 5)]));
        assert_eq!(purchases.units(UserId(1), ProductId(1)), 0);
        assert!(purchases.allows(&order(1, &[(1, 1_000)])));
    }
}

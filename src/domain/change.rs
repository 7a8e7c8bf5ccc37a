//! The store owner's changes of a store's products, and the rules a change follows while
//! orders and other changes are in flight.
//!
//! The store's actor decides a change in order with the store's orders, then hands it to
//! the writer; it touches memory only once it committed, so that no order counts on
//! units or a product that may not come, except a negative delta, which takes its units
//! at once, as an order does (and may take only unheld ones). Deltas commute, but an
//! edit or a deletion does not, and with several writers transactions may commit in
//! another order than they were decided; so an edit or a deletion goes alone: it is
//! refused while another change of the product is on its way, and a delta is refused
//! while an edit of it is.
//!
//! `Changes` is that record as plain data; the actor sequences it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{OrderLine, ProductId, Reservation, StockBook};

/// A change of a store's products, from the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductChange {
    Add {
        name: String,
        stock: i64,
        limit: Option<i64>,
        store_name: Arc<str>,
    },
    /// A delta of `current_stock` (never 0); a negative one may take only unheld units.
    Restock {
        product: ProductId,
        delta: i64,
        reason: String,
    },
    /// `limit: Some(None)` clears the limit.
    Edit {
        product: ProductId,
        name: Option<String>,
        limit: Option<Option<i64>>,
    },
    Delete {
        product: ProductId,
    },
}

impl ProductChange {
    /// The product it changes; `None` for a new one.
    pub fn product(&self) -> Option<ProductId> {
        match self {
            ProductChange::Add { .. } => None,
            ProductChange::Restock { product, .. }
            | ProductChange::Edit { product, .. }
            | ProductChange::Delete { product } => Some(*product),
        }
    }

    /// An edit or a deletion: it must go alone.
    fn goes_alone(&self) -> bool {
        matches!(
            self,
            ProductChange::Edit { .. } | ProductChange::Delete { .. }
        )
    }

    /// The units a negative delta takes at once. (`delta <= 0` would be the same: the
    /// edge refuses a delta of 0, and taking 0 units changes nothing; mutation testing
    /// lists that change as a survivor, an equivalent one.)
    fn taken(&self) -> Option<OrderLine> {
        match *self {
            ProductChange::Restock { product, delta, .. } if delta < 0 => Some(OrderLine {
                product,
                quantity: -delta,
            }),
            _ => None,
        }
    }
}

/// Why a change cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRefusal {
    /// The store has no such product (or it was deleted).
    NotFound,
    /// A negative delta larger than the unheld stock.
    NotEnoughStock,
    /// An edit or deletion of the product is on its way, or one is asked while a change
    /// of it is.
    InProgress,
}

/// The owner's changes of one store's products that the writer has not answered yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    in_flight: HashMap<ProductId, InFlight>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InFlight {
    count: u32,
    /// One of them is an edit or a deletion.
    alone: bool,
}

impl Changes {
    /// Starts `change` if its rules allow: `known` says whether the store has the
    /// product it names. A negative delta takes its units from `book` at once (without
    /// looking, if `memory_check` is off: the test-only switch of layer 3).
    pub fn begin(
        &mut self,
        change: &ProductChange,
        known: bool,
        book: &mut StockBook,
        memory_check: bool,
    ) -> Result<(), ChangeRefusal> {
        let Some(product) = change.product() else {
            return Ok(());
        };
        if let Some(flight) = self.in_flight.get(&product)
            && (flight.alone || change.goes_alone())
        {
            return Err(ChangeRefusal::InProgress);
        }
        if !known {
            return Err(ChangeRefusal::NotFound);
        }
        if let Some(taken) = change.taken() {
            let taken = [taken];
            if !memory_check {
                book.reserve_unchecked(&taken);
            } else if book.try_reserve(&taken) != Reservation::Reserved {
                return Err(ChangeRefusal::NotEnoughStock);
            }
        }
        let flight = self.in_flight.entry(product).or_default();
        flight.count += 1;
        flight.alone |= change.goes_alone();
        Ok(())
    }

    /// The writer answered a change that began (or never will).
    pub fn landed(&mut self, change: &ProductChange) {
        if let Some(product) = change.product()
            && let Some(flight) = self.in_flight.get_mut(&product)
        {
            flight.count -= 1;
            if flight.count == 0 {
                self.in_flight.remove(&product);
            }
        }
    }

    /// Changes of `product` on their way.
    pub fn in_flight(&self, product: ProductId) -> u32 {
        self.in_flight.get(&product).map_or(0, |f| f.count)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn restock(product: i64, delta: i64) -> ProductChange {
        ProductChange::Restock {
            product: ProductId(product),
            delta,
            reason: "r".into(),
        }
    }

    fn edit(product: i64) -> ProductChange {
        ProductChange::Edit {
            product: ProductId(product),
            name: Some("n".into()),
            limit: None,
        }
    }

    #[test]
    fn an_edit_goes_alone_and_deltas_go_together() {
        let mut book = StockBook::new([(ProductId(1), 10)]);
        let mut changes = Changes::default();
        assert_eq!(changes.begin(&restock(1, 5), true, &mut book, true), Ok(()));
        assert_eq!(
            changes.begin(&restock(1, -3), true, &mut book, true),
            Ok(())
        );
        assert_eq!(book.get(ProductId(1)), Some(7));
        assert_eq!(
            changes.begin(&edit(1), true, &mut book, true),
            Err(ChangeRefusal::InProgress)
        );
        changes.landed(&restock(1, 5));
        changes.landed(&restock(1, -3));
        assert_eq!(changes.in_flight(ProductId(1)), 0);
        assert_eq!(changes.begin(&edit(1), true, &mut book, true), Ok(()));
        assert_eq!(
            changes.begin(&restock(1, 1), true, &mut book, true),
            Err(ChangeRefusal::InProgress)
        );
        assert_eq!(
            changes.begin(&restock(1, -11), true, &mut book, true),
            Err(ChangeRefusal::InProgress)
        );
        assert_eq!(
            changes.begin(&restock(2, 1), false, &mut book, true),
            Err(ChangeRefusal::NotFound)
        );
    }

    #[test]
    fn a_negative_delta_takes_only_what_is_there_unless_memory_is_not_checked() {
        let mut book = StockBook::new([(ProductId(1), 2)]);
        let mut changes = Changes::default();
        assert_eq!(
            changes.begin(&restock(1, -3), true, &mut book, true),
            Err(ChangeRefusal::NotEnoughStock)
        );
        assert_eq!(changes.in_flight(ProductId(1)), 0);
        assert_eq!(
            changes.begin(&restock(1, -3), true, &mut book, false),
            Ok(())
        );
        assert_eq!(book.get(ProductId(1)), Some(-1));
        // A new product names none yet: nothing to wait for.
        let add = ProductChange::Add {
            name: "n".into(),
            stock: 1,
            limit: None,
            store_name: "s".into(),
        };
        assert_eq!(changes.begin(&add, false, &mut book, true), Ok(()));
    }

    /// One step: a change begins, or the oldest change in flight lands.
    #[derive(Debug, Clone)]
    enum Step {
        Begin(ProductChange),
        Land(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let change = prop_oneof![
            (1i64..3, -6i64..6)
                .prop_filter("never 0", |(_, d)| *d != 0)
                .prop_map(|(p, d)| restock(p, d)),
            (1i64..3).prop_map(edit),
            (1i64..3).prop_map(|p| ProductChange::Delete {
                product: ProductId(p)
            }),
        ];
        prop::collection::vec(
            prop_oneof![
                change.prop_map(Step::Begin),
                (0usize..4).prop_map(Step::Land)
            ],
            0..40,
        )
    }

    proptest! {
        /// Against a model that keeps the changes in flight as a list: a change begins
        /// exactly when no edit or deletion of its product is in flight and, for an edit
        /// or deletion, nothing of its product is; a negative delta takes its units only
        /// if they are there, and nothing else touches the stock.
        #[test]
        fn changes_agree_with_a_model_of_what_is_in_flight(steps in steps()) {
            let mut book = StockBook::new([(ProductId(1), 5), (ProductId(2), 5)]);
            let mut stock = [5i64, 5];
            let mut changes = Changes::default();
            let mut flying: Vec<ProductChange> = Vec::new();
            for step in steps {
                match step {
                    Step::Begin(change) => {
                        let product = change.product().unwrap();
                        let same: Vec<&ProductChange> =
                            flying.iter().filter(|c| c.product() == Some(product)).collect();
                        let blocked = same.iter().any(|c| c.goes_alone())
                            || (change.goes_alone() && !same.is_empty());
                        let index = product.0 as usize - 1;
                        let expected = match change.taken() {
                            _ if blocked => Err(ChangeRefusal::InProgress),
                            Some(t) if t.quantity > stock[index] => Err(ChangeRefusal::NotEnoughStock),
                            taken => {
                                stock[index] -= taken.map_or(0, |t| t.quantity);
                                flying.push(change.clone());
                                Ok(())
                            }
                        };
                        prop_assert_eq!(changes.begin(&change, true, &mut book, true), expected);
                    }
                    Step::Land(i) if i < flying.len() => {
                        let change = flying.remove(i);
                        changes.landed(&change);
                    }
                    Step::Land(_) => {}
                }
                for product in [1, 2] {
                    let count = flying.iter().filter(|c| c.product() == Some(ProductId(product))).count();
                    prop_assert_eq!(changes.in_flight(ProductId(product)), count as u32);
                    prop_assert_eq!(book.get(ProductId(product)), Some(stock[product as usize - 1]));
                }
            }
        }
    }
}

//! Availability (bad-input rules 6 and 7) as plain data: whether a store's stock can
//! serve an order, all or nothing, and what reserving or returning it does to the stock.

use std::collections::HashMap;

use super::{OrderLine, ProductId};

/// What a store's stock says about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Every line was reserved.
    Reserved,
    /// Some lines could be served, others not; nothing was reserved.
    SomeAvailable,
    /// No line could be served; nothing was reserved.
    NoneAvailable,
}

/// The stock of one store's products: the store actor's state, as plain data.
///
/// A product missing from the book is unknown to the store and can never be served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockBook {
    stock: HashMap<ProductId, i64>,
}

impl StockBook {
    pub fn new(stock: impl IntoIterator<Item = (ProductId, i64)>) -> Self {
        Self {
            stock: stock.into_iter().collect(),
        }
    }

    pub fn get(&self, product: ProductId) -> Option<i64> {
        self.stock.get(&product).copied()
    }

    /// Decides an order from the stock and, if every line can be served, reserves all
    /// of them. All or nothing: a refused order changes nothing.
    pub fn try_reserve(&mut self, lines: &[OrderLine]) -> Reservation {
        let servable = lines
            .iter()
            .filter(|line| self.get(line.product).is_some_and(|s| s >= line.quantity))
            .count();
        if servable < lines.len() {
            return if servable == 0 {
                Reservation::NoneAvailable
            } else {
                Reservation::SomeAvailable
            };
        }
        for line in lines {
            if let Some(stock) = self.stock.get_mut(&line.product) {
                *stock -= line.quantity;
            }
        }
        Reservation::Reserved
    }

    /// Reserves every line of a known product without looking at the stock, which may
    /// go negative. Only for the test-only switch that turns the in-memory check off, so
    /// that the database guard must stop the oversell on its own.
    pub fn reserve_unchecked(&mut self, lines: &[OrderLine]) -> Reservation {
        for line in lines {
            if let Some(stock) = self.stock.get_mut(&line.product) {
                *stock -= line.quantity;
            }
        }
        Reservation::Reserved
    }

    /// Gives back what `try_reserve` took (an order that will not be persisted).
    pub fn release(&mut self, lines: &[OrderLine]) {
        for line in lines {
            if let Some(stock) = self.stock.get_mut(&line.product) {
                *stock += line.quantity;
            }
        }
    }

    /// A product that joins the store (created by the admin API).
    pub fn insert(&mut self, product: ProductId, stock: i64) {
        self.stock.insert(product, stock);
    }

    /// A product that leaves the store (deleted): it can no longer be reserved.
    pub fn remove(&mut self, product: ProductId) {
        self.stock.remove(&product);
    }

    /// Replaces the stock with what the database says; products the database no longer
    /// has become unknown.
    pub fn replace(&mut self, stock: impl IntoIterator<Item = (ProductId, i64)>) {
        self.stock = stock.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn line(product: i64, quantity: i64) -> OrderLine {
        OrderLine {
            product: ProductId(product),
            quantity,
        }
    }

    #[test]
    fn an_order_is_reserved_whole_or_not_at_all() {
        let mut book = StockBook::new([(ProductId(1), 3), (ProductId(2), 1)]);
        assert_eq!(
            book.try_reserve(&[line(1, 2), line(2, 2)]),
            Reservation::SomeAvailable
        );
        assert_eq!(book.get(ProductId(1)), Some(3));
        assert_eq!(
            book.try_reserve(&[line(1, 4), line(9, 1)]),
            Reservation::NoneAvailable
        );
        assert_eq!(
            book.try_reserve(&[line(1, 3), line(2, 1)]),
            Reservation::Reserved
        );
        assert_eq!(book.get(ProductId(1)), Some(0));
        assert_eq!(book.get(ProductId(2)), Some(0));
        book.release(&[line(1, 3)]);
        assert_eq!(book.get(ProductId(1)), Some(3));
    }

    #[test]
    fn the_unchecked_reservation_takes_even_what_is_not_there() {
        let mut book = StockBook::new([(ProductId(1), 2)]);
        assert_eq!(
            book.reserve_unchecked(&[line(1, 5), line(9, 1)]),
            Reservation::Reserved
        );
        assert_eq!(book.get(ProductId(1)), Some(-3));
        assert_eq!(book.get(ProductId(9)), None);
    }

    #[test]
    fn a_product_that_leaves_the_store_can_no_longer_be_reserved() {
        let mut book = StockBook::new([(ProductId(1), 5), (ProductId(2), 5)]);
        book.remove(ProductId(1));
        assert_eq!(book.get(ProductId(1)), None);
        assert_eq!(book.try_reserve(&[line(1, 1)]), Reservation::NoneAvailable);
        book.insert(ProductId(3), 4);
        assert_eq!(book.get(ProductId(3)), Some(4));
        book.replace([(ProductId(2), 1)]);
        assert_eq!(
            (book.get(ProductId(2)), book.get(ProductId(3))),
            (Some(1), None)
        );
    }

    proptest! {
        /// Against a model that replays every reserved order: stock never goes negative,
        /// and initial stock = current stock + everything reserved.
        #[test]
        fn reservations_never_oversell(
            initial in prop::collection::vec(0i64..20, 1..6),
            orders in prop::collection::vec(
                prop::collection::btree_map(0i64..7, 1i64..8, 1..4), 0..60),
        ) {
            let mut book = StockBook::new(
                initial.iter().enumerate().map(|(i, &s)| (ProductId(i as i64), s)));
            let mut reserved = vec![0i64; initial.len()];
            for order in &orders {
                let lines: Vec<_> = order.iter().map(|(&p, &q)| line(p, q)).collect();
                let servable = lines.iter()
                    .filter(|l| book.get(l.product).is_some_and(|s| s >= l.quantity))
                    .count();
                let verdict = book.try_reserve(&lines);
                let expected = match servable {
                    n if n == lines.len() => Reservation::Reserved,
                    0 => Reservation::NoneAvailable,
                    _ => Reservation::SomeAvailable,
                };
                prop_assert_eq!(verdict, expected);
                if verdict == Reservation::Reserved {
                    for l in &lines {
                        reserved[l.product.0 as usize] += l.quantity;
                    }
                }
            }
            for (i, &s) in initial.iter().enumerate() {
                let now = book.get(ProductId(i as i64)).unwrap();
                prop_assert!(now >= 0);
                prop_assert_eq!(s, now + reserved[i]);
            }
        }
    }
}

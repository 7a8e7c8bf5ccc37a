//! The owner's changes of a store's products, as its actor begins them (by the rules of
//! `domain::Changes`) and applies them once committed: to its stock, its limits and the
//! catalog.

use std::sync::Arc;

use super::ChangeError;
use super::actor::StoreActor;
use super::attempt::ChangeAttempt;
use crate::catalog::{Catalog, Product, PublishedStock};
use crate::db::write::AdminWrite;
use crate::domain::{ChangeRefusal, OrderLine, ProductChange, ProductId};

impl StoreActor {
    /// Starts a change of the store's products if its rules allow (`domain::Changes`):
    /// a negative delta takes its units at once, as an order does; everything else
    /// changes memory only once it committed, so that no order counts on units that may
    /// not come.
    pub(super) fn begin_change(
        &mut self,
        change: &ProductChange,
    ) -> Result<AdminWrite, ChangeError> {
        let known = change
            .product()
            .is_some_and(|p| self.products.contains_key(&p));
        self.changes
            .begin(change, known, &mut self.book, self.memory_check)
            .map_err(|refusal| match refusal {
                ChangeRefusal::NotFound => ChangeError::NotFound,
                ChangeRefusal::NotEnoughStock => ChangeError::NotEnoughStock,
                ChangeRefusal::InProgress => ChangeError::InProgress,
            })?;
        // A negative delta took its units: readers see them gone at once. (The edge
        // refuses a delta of 0, so `<= 0` here is an equivalent mutant.)
        if let ProductChange::Restock { product, delta, .. } = change
            && *delta < 0
        {
            self.publish(std::iter::once(*product));
        }
        Ok(AdminWrite::of_change(self.store, change))
    }

    /// Applies a committed change of the store's products to memory and the catalog,
    /// and answers it.
    pub(super) fn changed(&mut self, attempt: ChangeAttempt, created: i64) {
        let current = |catalog: &Catalog, id: ProductId| {
            catalog
                .snapshot()
                .get(id)
                .map(|p| (**p).clone())
                .ok_or(ChangeError::NotFound)
        };
        let result = match &attempt.change {
            ProductChange::Add {
                name,
                stock,
                limit,
                store_name,
            } => {
                let id = ProductId(created);
                let published = Arc::new(PublishedStock::new(*stock));
                self.book.insert(id, *stock);
                self.products.insert(id, published.clone());
                // A new product has no buyers yet.
                self.purchases.set_limit(id, *limit);
                let product = Product {
                    id,
                    name: name.clone(),
                    store: self.store,
                    store_name: store_name.clone(),
                    max_per_customer: *limit,
                    stock: published,
                    rendered: Default::default(),
                };
                self.catalog.put(product.clone());
                Ok(product)
            }
            ProductChange::Restock { product, delta, .. } => {
                // A delta of 0 never gets here (the edge refuses it): `>= 0` is an
                // equivalent mutant.
                if *delta > 0 {
                    self.book.release(&[OrderLine {
                        product: *product,
                        quantity: *delta,
                    }]);
                    self.publish(std::iter::once(*product));
                }
                current(&self.catalog, *product)
            }
            ProductChange::Edit {
                product,
                name,
                limit,
            } => {
                if let Some(limit) = *limit {
                    // Only a limit where there was none needs what buyers hold, which
                    // memory does not keep for unlimited products. (Reloading more
                    // often would change no answer, only cost a read: mutation testing
                    // lists `&&` → `||` here as a survivor, an equivalent one.)
                    if limit.is_some() && self.purchases.limit(*product).is_none() {
                        self.reload_after = true;
                    }
                    self.purchases.set_limit(*product, limit);
                }
                current(&self.catalog, *product).map(|mut edited| {
                    if let Some(name) = name {
                        edited.name = name.clone();
                    }
                    if let Some(limit) = *limit {
                        edited.max_per_customer = limit;
                    }
                    self.catalog.put(edited.clone());
                    edited
                })
            }
            ProductChange::Delete { product } => {
                let gone = current(&self.catalog, *product);
                self.book.remove(*product);
                self.products.remove(product);
                self.catalog.remove(*product);
                gone
            }
        };
        attempt.answer(result);
    }
}

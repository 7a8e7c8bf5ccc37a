//! What the front end knows about products without asking an actor: name, store, limit,
//! and the stock its actor last published.
//!
//! Readers (`GET /api/v1/products`, the sold-out fast path, the answer to a lock) take
//! a snapshot, a lock-free load of an `Arc`: they never wait for an actor, the database
//! or an admin change. A store's actor replaces the snapshot when a change of its
//! products committed (a new product, a rename, a limit, a deletion); it writes the
//! stock figures in place, through each product's `PublishedStock`, which every
//! snapshot of that product shares. Rows changed behind Kitara's back are picked up at
//! the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::{ArcSwap, Guard};

use crate::db::load::ProductRow;
use crate::domain::{ProductId, StoreId};

/// The stock a store's actor published: its in-memory stock, reservations in flight
/// already taken off.
#[derive(Debug, Default)]
pub struct PublishedStock(AtomicI64);

impl PublishedStock {
    pub fn new(stock: i64) -> Self {
        Self(AtomicI64::new(stock))
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Only the owning store actor calls this.
    pub(crate) fn publish(&self, stock: i64) {
        self.0.store(stock, Ordering::Release);
    }
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub store: StoreId,
    pub store_name: Arc<str>,
    /// `products.max_per_customer`: the store's actor judges it; the front end only
    /// needs to know that a limit exists, for its sold-out fast path.
    pub max_per_customer: Option<i64>,
    pub stock: Arc<PublishedStock>,
}

impl Product {
    pub fn stock(&self) -> i64 {
        self.stock.get()
    }
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Product {
            id: ProductId(row.id),
            name: row.product_name,
            store: StoreId(row.store_id),
            store_name: row.store_name.into(),
            max_per_customer: row.max_per_customer,
            stock: Arc::new(PublishedStock::new(row.current_stock)),
        }
    }
}

/// One immutable view of every orderable product.
#[derive(Debug, Default)]
pub struct Listing {
    /// Ascending id, as `GET /api/v1/products` lists them.
    products: Vec<Arc<Product>>,
    by_id: HashMap<ProductId, Arc<Product>>,
}

impl Listing {
    /// The listing of products as the database has them (each store's name shared by
    /// its products).
    pub fn from_rows(rows: Vec<ProductRow>) -> Self {
        let mut store_names: HashMap<i64, Arc<str>> = HashMap::new();
        let products = rows
            .into_iter()
            .map(|row| {
                let store_name = store_names
                    .entry(row.store_id)
                    .or_insert_with(|| row.store_name.as_str().into())
                    .clone();
                Arc::new(Product {
                    store_name,
                    ..Product::from(row)
                })
            })
            .collect();
        Self::new(products)
    }

    fn new(mut products: Vec<Arc<Product>>) -> Self {
        products.sort_by_key(|p| p.id);
        let by_id = products.iter().map(|p| (p.id, p.clone())).collect();
        Self { products, by_id }
    }

    pub fn get(&self, id: ProductId) -> Option<&Arc<Product>> {
        self.by_id.get(&id)
    }

    /// Every orderable product, ascending id.
    pub fn products(&self) -> &[Arc<Product>] {
        &self.products
    }

    /// The products of each store.
    pub fn by_store(&self) -> HashMap<StoreId, Vec<Arc<Product>>> {
        let mut stores: HashMap<StoreId, Vec<Arc<Product>>> = HashMap::new();
        for product in &self.products {
            stores
                .entry(product.store)
                .or_default()
                .push(product.clone());
        }
        stores
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    current: ArcSwap<Listing>,
}

impl Catalog {
    pub fn new(rows: Vec<ProductRow>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Listing::from_rows(rows)),
        }
    }

    /// The listing as it is now, to keep past an `.await`.
    pub fn listing(&self) -> Arc<Listing> {
        self.current.load_full()
    }

    /// The listing as it is now; later changes make new listings and leave this one be.
    pub fn snapshot(&self) -> Guard<Arc<Listing>> {
        self.current.load()
    }

    /// Adds a product, or replaces the one with its id. Only its store's actor calls
    /// this, once the change committed.
    pub(crate) fn put(&self, product: Product) {
        let product = Arc::new(product);
        self.current.rcu(|listing| {
            let mut products: Vec<Arc<Product>> = listing
                .products
                .iter()
                .filter(|p| p.id != product.id)
                .cloned()
                .collect();
            products.push(product.clone());
            Listing::new(products)
        });
    }

    /// Replaces the products of one store with what its actor reloaded. Only that
    /// store's actor calls this.
    pub(crate) fn replace_store(&self, store: StoreId, products: Vec<Product>) {
        let products: Vec<Arc<Product>> = products.into_iter().map(Arc::new).collect();
        self.current.rcu(|listing| {
            let mut all: Vec<Arc<Product>> = listing
                .products
                .iter()
                .filter(|p| p.store != store)
                .cloned()
                .collect();
            all.extend(products.iter().cloned());
            Listing::new(all)
        });
    }

    /// Takes a product out of the listing (it was deleted). Only its store's actor
    /// calls this.
    pub(crate) fn remove(&self, id: ProductId) {
        self.current.rcu(|listing| {
            Listing::new(
                listing
                    .products
                    .iter()
                    .filter(|p| p.id != id)
                    .cloned()
                    .collect(),
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, store_id: i64, stock: i64) -> ProductRow {
        ProductRow {
            id,
            product_name: format!("p{id}"),
            current_stock: stock,
            store_id,
            store_name: format!("s{store_id}"),
            max_per_customer: None,
        }
    }

    #[test]
    fn a_snapshot_keeps_its_products_while_published_stock_stays_shared() {
        let catalog = Catalog::new(vec![row(2, 1, 5), row(1, 1, 3)]);
        let before = catalog.snapshot();
        let first = before.get(ProductId(1)).unwrap().clone();
        catalog.put(Product {
            name: "renamed".into(),
            ..(*first).clone()
        });
        catalog.put(Product::from(row(3, 2, 7)));
        catalog.remove(ProductId(2));
        first.stock.publish(1);

        let ids = |l: &Listing| l.products().iter().map(|p| p.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&before), [1, 2]);
        let after = catalog.snapshot();
        assert_eq!(ids(&after), [1, 3]);
        assert_eq!(after.get(ProductId(1)).unwrap().name, "renamed");
        // A rename shares the stock the actor publishes.
        assert_eq!(after.get(ProductId(1)).unwrap().stock(), 1);
        assert_eq!(before.get(ProductId(1)).unwrap().stock(), 1);
    }
}

//! What the front end knows about products without asking an actor: name, store, and
//! the stock its actor last published.
//!
//! Loaded once at start (rows added or deleted behind Kitara's back are picked up at the
//! next start). The stock figures are written only by the owning store actor; readers
//! (`GET /api/v1/products`, the sold-out fast path) never wait for an actor or the
//! database.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::db::load::ProductRow;
use crate::domain::{ProductId, StoreId};

#[derive(Debug)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub store: StoreId,
    pub store_name: Arc<str>,
    /// `products.max_per_customer`: the store's actor judges it; the front end only
    /// needs to know that a limit exists, for its sold-out fast path.
    pub max_per_customer: Option<i64>,
    /// The owning actor's in-memory stock: reservations in flight are already taken off.
    stock: AtomicI64,
}

impl Product {
    pub fn stock(&self) -> i64 {
        self.stock.load(Ordering::Acquire)
    }

    /// Only the owning store actor calls this.
    pub(crate) fn publish(&self, stock: i64) {
        self.stock.store(stock, Ordering::Release);
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    /// Ascending id, as `GET /api/v1/products` lists them.
    products: Vec<Arc<Product>>,
    by_id: HashMap<ProductId, Arc<Product>>,
}

impl Catalog {
    pub fn new(rows: Vec<ProductRow>) -> Self {
        let mut store_names: HashMap<i64, Arc<str>> = HashMap::new();
        let mut products: Vec<Arc<Product>> = rows
            .into_iter()
            .map(|row| {
                let store_name = store_names
                    .entry(row.store_id)
                    .or_insert_with(|| row.store_name.into())
                    .clone();
                Arc::new(Product {
                    id: ProductId(row.id),
                    name: row.product_name,
                    store: StoreId(row.store_id),
                    store_name,
                    max_per_customer: row.max_per_customer,
                    stock: AtomicI64::new(row.current_stock),
                })
            })
            .collect();
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

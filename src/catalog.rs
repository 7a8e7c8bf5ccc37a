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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, Guard};
use imbl::OrdMap;

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
    /// The product as the listing shows it, rendered once (by `http::views`).
    pub rendered: Rendered,
}

/// A product's JSON as the listing shows it, with a gap where its stock goes: the
/// stock changes with every order, the rest only with an edit, which makes a new
/// `Product`. Rendering a catalogue of 100,000 products is then copying bytes. A clone
/// starts empty, so that a product changed after cloning is rendered afresh.
#[derive(Debug, Default)]
pub struct Rendered(OnceLock<(Box<str>, usize)>);

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Rendered {
    /// The text before the stock and the text after it; `render` gives the whole text
    /// and where the stock goes, the first time.
    pub fn parts(&self, render: impl FnOnce() -> (String, usize)) -> (&str, &str) {
        let (text, gap) = self.0.get_or_init(|| {
            let (text, gap) = render();
            (text.into_boxed_str(), gap)
        });
        text.split_at(*gap)
    }
}

impl Product {
    pub fn stock(&self) -> i64 {
        self.stock.get()
    }

    /// Whether an order of `quantity` cannot be served by what the store's actor
    /// published: too little stock, and no per-customer limit (which the actor judges
    /// first).
    pub fn sold_out_for(&self, quantity: i64) -> bool {
        self.stock() < quantity && self.max_per_customer.is_none()
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
            rendered: Rendered::default(),
        }
    }
}

/// One immutable view of every orderable product.
///
/// Its maps are persistent (`imbl`): a change makes a new listing that shares all but
/// the nodes it touched with the old one, so a change costs O(log n), not a copy of a
/// catalogue of 100,000 products, and readers keep the listing they loaded.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Ascending id, as `GET /api/v1/products` lists them.
    products: OrdMap<ProductId, Arc<Product>>,
    /// The same products by store, then id: a store's page is a range.
    by_store: OrdMap<(StoreId, ProductId), Arc<Product>>,
}

impl Listing {
    /// The listing of products as the database has them (each store's name shared by
    /// its products).
    pub fn from_rows(rows: Vec<ProductRow>) -> Self {
        let mut store_names: HashMap<i64, Arc<str>> = HashMap::new();
        let mut listing = Self::default();
        for row in rows {
            let store_name = store_names
                .entry(row.store_id)
                .or_insert_with(|| row.store_name.as_str().into())
                .clone();
            listing.insert(Arc::new(Product {
                store_name,
                ..Product::from(row)
            }));
        }
        listing
    }

    fn insert(&mut self, product: Arc<Product>) {
        if let Some(old) = self.products.insert(product.id, product.clone()) {
            self.by_store.remove(&(old.store, old.id));
        }
        self.by_store.insert((product.store, product.id), product);
    }

    fn remove(&mut self, id: ProductId) {
        if let Some(old) = self.products.remove(&id) {
            self.by_store.remove(&(old.store, old.id));
        }
    }

    pub fn get(&self, id: ProductId) -> Option<&Arc<Product>> {
        self.products.get(&id)
    }

    /// How many products are listed.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Every orderable product, ascending id.
    pub fn products(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.products.values()
    }

    /// Up to `limit` products with an id above `after`, of `store` if it names one,
    /// ascending id.
    pub fn page(
        &self,
        store: Option<StoreId>,
        after: ProductId,
        limit: usize,
    ) -> Vec<&Arc<Product>> {
        let Some(from) = after.0.checked_add(1).map(ProductId) else {
            return Vec::new();
        };
        match store {
            None => self
                .products
                .range(from..)
                .take(limit)
                .map(|(_, p)| p)
                .collect(),
            Some(store) => self
                .by_store
                .range((store, from)..=(store, ProductId(i64::MAX)))
                .take(limit)
                .map(|(_, p)| p)
                .collect(),
        }
    }

    /// The products of each store.
    pub fn by_store(&self) -> HashMap<StoreId, Vec<Arc<Product>>> {
        let mut stores: HashMap<StoreId, Vec<Arc<Product>>> = HashMap::new();
        for ((store, _), product) in &self.by_store {
            stores.entry(*store).or_default().push(product.clone());
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

    /// Makes the next listing from the current one. Only store actors change the
    /// listing, each its own store's products; two may race, and `rcu` runs `change`
    /// again on the listing that won.
    fn change(&self, change: impl Fn(&mut Listing)) {
        self.current.rcu(|listing| {
            let mut next = Listing::clone(listing);
            change(&mut next);
            next
        });
    }

    /// Adds a product, or replaces the one with its id. Only its store's actor calls
    /// this, once the change committed.
    pub(crate) fn put(&self, product: Product) {
        let product = Arc::new(product);
        self.change(|listing| listing.insert(product.clone()));
    }

    /// Replaces the products of one store with what its actor reloaded. Only that
    /// store's actor calls this.
    pub(crate) fn replace_store(&self, store: StoreId, products: Vec<Product>) {
        let products: Vec<Arc<Product>> = products.into_iter().map(Arc::new).collect();
        self.change(|listing| {
            let gone: Vec<ProductId> = listing
                .by_store
                .range((store, ProductId(i64::MIN))..=(store, ProductId(i64::MAX)))
                .map(|((_, id), _)| *id)
                .collect();
            for id in gone {
                listing.remove(id);
            }
            for product in &products {
                listing.insert(product.clone());
            }
        });
    }

    /// Takes a product out of the listing (it was deleted). Only its store's actor
    /// calls this.
    pub(crate) fn remove(&self, id: ProductId) {
        self.change(|listing| listing.remove(id));
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

        let ids = |l: &Listing| l.products().map(|p| p.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&before), [1, 2]);
        let after = catalog.snapshot();
        assert_eq!(ids(&after), [1, 3]);
        assert_eq!(after.get(ProductId(1)).unwrap().name, "renamed");
        // A rename shares the stock the actor publishes.
        assert_eq!(after.get(ProductId(1)).unwrap().stock(), 1);
        assert_eq!(before.get(ProductId(1)).unwrap().stock(), 1);
    }

    #[test]
    fn pages_follow_ids_within_a_store_or_across_stores() {
        let rows = (1..=9).map(|id| row(id, 1 + id % 3, id * 10)).collect();
        let catalog = Catalog::new(rows);
        let listing = catalog.snapshot();
        let ids = |page: Vec<&Arc<Product>>| page.iter().map(|p| p.id.0).collect::<Vec<_>>();
        assert_eq!(ids(listing.page(None, ProductId(0), 4)), [1, 2, 3, 4]);
        assert_eq!(ids(listing.page(None, ProductId(7), 4)), [8, 9]);
        assert_eq!(ids(listing.page(Some(StoreId(2)), ProductId(0), 2)), [1, 4]);
        assert_eq!(ids(listing.page(Some(StoreId(2)), ProductId(4), 9)), [7]);
        assert_eq!(
            ids(listing.page(Some(StoreId(9)), ProductId(0), 9)),
            [] as [i64; 0]
        );
        assert_eq!(
            ids(listing.page(None, ProductId(i64::MAX), 9)),
            [] as [i64; 0]
        );
        assert_eq!(ids(listing.page(None, ProductId(-5), 1)), [1]);

        // Replacing store 2's products leaves the other stores' alone.
        catalog.replace_store(
            StoreId(2),
            vec![Product::from(row(4, 2, 1)), Product::from(row(12, 2, 1))],
        );
        let after = catalog.snapshot();
        assert_eq!(ids(after.page(Some(StoreId(2)), ProductId(0), 9)), [4, 12]);
        assert_eq!(
            ids(after.page(None, ProductId(0), 99)),
            [2, 3, 4, 5, 6, 8, 9, 12]
        );
        assert_eq!(after.len(), 8);
        assert_eq!(after.by_store()[&StoreId(3)].len(), 3);
        // A product that moves to another store leaves the old store's pages.
        catalog.put(Product::from(row(5, 2, 1)));
        let moved = catalog.snapshot();
        assert_eq!(ids(moved.page(Some(StoreId(3)), ProductId(0), 9)), [2, 8]);
        assert_eq!(
            ids(moved.page(Some(StoreId(2)), ProductId(0), 9)),
            [4, 5, 12]
        );
        assert_eq!(
            ids(listing.page(Some(StoreId(2)), ProductId(0), 9)),
            [1, 4, 7]
        );
    }
}

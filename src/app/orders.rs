//! The order desk: what happens to a validated order request before and after its store
//! actor (rules 4 to 7 of the judging order for a lock; the buyer check and the status
//! rules for a confirm or cancel).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::time::Instant;

use super::keys::{self, Claim, InFlightKeys, KeyError, Keyed};
use super::users::KnownUsers;
use crate::catalog::{Catalog, Listing, Product};
use crate::clock::Clock;
use crate::cluster::{Cluster, Peer, Route};
use crate::db::call::Reads;
use crate::db::load::{self, DetailRow, OrderRow};
use crate::db::write::KeyRecord;
use crate::domain::{Deadline, OrderId, OrderStatus, Resolution, Transition, UserId, transition};
use crate::domain::{Fingerprint, IdempotencyKey};
use crate::domain::{LockOrder, ProductId, StoreId};
use crate::metrics::Metrics;
use crate::store::{
    Failure, HeldOrder, LiveHolds, LockError, LockRequest, Placed, ResolveError, StoreHandle,
};

/// The order desk: rules 4 to 7 of a lock, and the buyer check of a confirm or cancel.
pub struct Orders {
    pub catalog: Arc<Catalog>,
    /// The live holds of the stores served here: a confirm or cancel of one goes
    /// straight to its store's actor.
    pub live: Arc<LiveHolds>,
    /// Counts the orders read from the database (`order_reads`).
    pub metrics: Arc<Metrics>,
    /// Which stores this node serves, and who serves the others.
    pub cluster: Arc<Cluster>,
    pub users: Arc<KnownUsers>,
    /// Off only in tests that show the database guard alone stops oversell; it also
    /// turns off the sold-out fast path, which reads the same memory.
    pub memory_check: bool,
    /// What holds are timed by.
    pub clock: Clock,
    /// `KITARA_HOLD_SECONDS`: how long a lock that names no `hold_seconds` holds; 0
    /// holds until confirmed or cancelled.
    pub default_hold_seconds: u32,
    /// The keys of keyed requests in progress.
    pub keys: InFlightKeys,
    /// The reads of the order endpoints and of stored answers, capped so that a flood
    /// of them cannot take the pool's connections from the writer.
    pub reads: Reads,
    /// How long a request waits for the database before it is answered 503 (the pool's
    /// acquire timeout); a write whose COMMIT is in flight then also waits out the
    /// outcome deadline.
    pub answer_within: Duration,
}

/// Where a lock ended up.
#[derive(Debug)]
pub enum Locked<'a> {
    /// Placed here.
    Here(Placed),
    /// Its store is another node's: the request goes there, as it came, with its key's
    /// claim here held until it is answered.
    There(Arc<Peer>, Option<Claim<'a>>),
    /// Its key was stored with this order by an earlier request just like it: the
    /// answer is that request's, again.
    Replayed(OrderRow),
}

/// A page of the catalogue, before it is picked out of the listing.
pub enum Page {
    /// Every product, in memory: the page is a range of it, rendered without a copy.
    Listed(Arc<Listing>),
    /// The page, as the database has it.
    Read(Vec<Arc<Product>>),
}

impl Page {
    /// The products of `store` (or of every store) with an id above `after`, ascending,
    /// at most `limit`.
    pub fn products(
        &self,
        store: Option<StoreId>,
        after: ProductId,
        limit: Option<u32>,
    ) -> Vec<&Arc<Product>> {
        match self {
            Page::Listed(listing) => {
                listing.page(store, after, limit.map_or(usize::MAX, |n| n as usize))
            }
            Page::Read(rows) => rows.iter().collect(),
        }
    }
}

/// Where a confirm or cancel leaves the order.
#[derive(Debug)]
pub enum Ended<'a> {
    /// Its store is another node's: the request goes there, as it came, with its key's
    /// claim here held until it is answered.
    There(Arc<Peer>, Option<Claim<'a>>),
    /// The order as it is now: this request's change, or a harmless repeat.
    Order(OrderRow),
    /// The order ended otherwise and cannot change again.
    Conflict(OrderStatus),
    /// No such order of this buyer.
    NotFound,
    /// Its key was stored by an earlier request just like it: the order as it is now.
    Replayed(OrderRow),
}

/// A key the database found taken that is not stored now (purged meanwhile): a 503,
/// so that the retry is judged afresh.
fn key_gone<E: From<Failure>>() -> Keyed<E> {
    Keyed::Failed(Failure::Unavailable.into())
}

impl Orders {
    /// When a request that starts now must be answered (see `answer_within`).
    pub fn answer_by(&self) -> Instant {
        Instant::now() + self.answer_within
    }

    /// The deadline of a lock that asked for `hold_seconds` (or for the default).
    pub fn deadline_for(&self, hold_seconds: Option<u32>) -> Option<Deadline> {
        match hold_seconds.unwrap_or(self.default_hold_seconds) {
            0 => None,
            seconds => Some(self.clock.deadline_after(seconds)),
        }
    }

    /// Places `order` for `hold_seconds` (or the default). A keyed lock claims its key
    /// for as long as it is in progress here, stores it with the order, and when it is
    /// refused, answers what the key was stored with, if anything.
    pub async fn lock(
        &self,
        order: LockOrder,
        hold_seconds: Option<u32>,
        key: Option<IdempotencyKey>,
    ) -> Result<Locked<'_>, Keyed<LockError>> {
        let expires_at = self.deadline_for(hold_seconds);
        let answer_by = self.answer_by();
        let Some(key) = key else {
            let request = LockRequest {
                order,
                expires_at,
                key: None,
                answer_by,
            };
            return self.place(request).await.map_err(Keyed::Failed);
        };
        let fingerprint = Fingerprint::of_lock(&order, hold_seconds);
        let claim = self.keys.claim(&key).ok_or(KeyError::InProgress)?;
        let record = Arc::new(KeyRecord {
            key: key.clone(),
            fingerprint,
        });
        let request = LockRequest {
            order,
            expires_at,
            key: Some(record),
            answer_by,
        };
        // A lock for another node's store is forwarded with its key: the owner claims
        // and stores it there, and the claim here lasts until the owner answered.
        match self.place(request).await {
            Ok(Locked::There(peer, _)) => Ok(Locked::There(peer, Some(claim))),
            Err(error) if error.may_be_replayed() => {
                match keys::replayed(&self.reads, &key, fingerprint, answer_by).await? {
                    Some(order) => Ok(Locked::Replayed(order)),
                    None if error == LockError::Failed(Failure::KeyTaken) => Err(key_gone()),
                    None => Err(Keyed::Failed(error)),
                }
            }
            other => other.map_err(Keyed::Failed),
        }
    }

    async fn place(&self, request: LockRequest) -> Result<Locked<'static>, LockError> {
        let order = &request.order;
        // Rule 4: the buyer must be a known user.
        match self.users.exists(order.buyer(), request.answer_by).await {
            Ok(true) => {}
            Ok(false) => return Err(LockError::UserNotFound),
            Err(e) => {
                crate::warn_summarised!("user lookup failed", error = %e, "user lookup failed");
                return Err(LockError::Failed(Failure::Unavailable));
            }
        }

        // Rule 5: the known products must all belong to one store. Unknown products
        // are simply lines that cannot be served (rule 6).
        let mut stores: Vec<StoreId> = Vec::with_capacity(1);
        let mut unknown = false;
        let catalog = self.catalog.snapshot();
        for line in order.lines() {
            let Some(product) = catalog.get(line.product) else {
                unknown = true;
                continue;
            };
            if !stores.contains(&product.store) {
                stores.push(product.store);
            }
        }
        drop(catalog);
        if (unknown || stores.len() > 1) && !self.cluster.everything_here() {
            // A node that does not serve every store may not know a product made on
            // another node, or still know one deleted there: the database says.
            let products: Vec<ProductId> = order.lines().iter().map(|l| l.product).collect();
            stores = self.stores_of(products, request.answer_by).await?;
        }
        let store = match stores[..] {
            [] => return Err(LockError::NoneAvailable),
            [store] => store,
            _ => return Err(LockError::MixedStores),
        };
        let handle = match self
            .cluster
            .route_now(store, &self.reads, request.answer_by)
            .await
        {
            Route::Here(handle) => handle,
            Route::There(peer) => return Ok(Locked::There(peer, None)),
            Route::Nowhere => return Err(LockError::Failed(Failure::Unowned)),
        };

        // Sold-out fast path: the actor publishes its stock after every change, so when
        // no line fits the published stock the actor would refuse the order too; the
        // refusal is answered without queueing behind the store's other orders. Only for
        // a store served here: another node's stock is published there.
        if self.memory_check && self.sold_out_here(order) {
            return Err(LockError::NoneAvailable);
        }
        // Limits, availability and the write belong to the store's actor.
        handle.lock(request).await.map(Locked::Here)
    }

    /// Whether no line fits the stock the store's actor published. Looked at once the
    /// actor is found, not before: until then the catalog may still show what a
    /// previous actor of the store on this node published, if the store was just taken
    /// back. A line whose product the catalog does not know goes to the actor.
    fn sold_out_here(&self, order: &LockOrder) -> bool {
        let catalog = self.catalog.snapshot();
        order.lines().iter().all(|line| {
            catalog
                .get(line.product)
                .is_some_and(|product| product.sold_out_for(line.quantity))
        })
    }

    /// The stores of the live ones of `products`, as the database has them.
    async fn stores_of(
        &self,
        products: Vec<ProductId>,
        answer_by: Instant,
    ) -> Result<Vec<StoreId>, LockError> {
        let read = move |db| async move {
            let mut stores = Vec::new();
            for product in products {
                if let Some(store) = load::store_of(&db, product).await?
                    && !stores.contains(&store)
                {
                    stores.push(store);
                }
            }
            Ok(stores)
        };
        self.reads.run(answer_by, read).await.map_err(|e| {
            crate::warn_summarised!("product lookup failed", error = %e, "product lookup failed");
            LockError::Failed(Failure::Unavailable)
        })
    }

    /// Confirms or cancels an order of `buyer`. A keyed request claims its key for as
    /// long as it is in progress here, answers again what the key was stored with, if
    /// anything, and otherwise stores the key with the change.
    pub async fn end(
        &self,
        id: OrderId,
        buyer: UserId,
        resolution: Resolution,
        key: Option<IdempotencyKey>,
    ) -> Result<Ended<'_>, Keyed<ResolveError>> {
        let answer_by = self.answer_by();
        let Some(key) = key else {
            return match self.resolve(id, buyer, resolution, None, answer_by).await {
                // Only a keyed write finds its key taken; were one to, it is unavailable.
                Err(ResolveError::Failed(Failure::KeyTaken)) => Err(key_gone()),
                other => other.map_err(Keyed::Failed),
            };
        };
        let fingerprint = Fingerprint::of_resolution(resolution, id, buyer);
        let claim = self.keys.claim(&key).ok_or(KeyError::InProgress)?;
        // Not the hot path: a keyed confirm looks its key up first, so that a retry of
        // one that committed is replayed rather than answered as a repeat.
        if let Some(order) = keys::replayed(&self.reads, &key, fingerprint, answer_by).await? {
            return Ok(Ended::Replayed(order));
        }
        let record = Arc::new(KeyRecord {
            key: key.clone(),
            fingerprint,
        });
        match self
            .resolve(id, buyer, resolution, Some(record), answer_by)
            .await
        {
            Ok(Ended::There(peer, _)) => Ok(Ended::There(peer, Some(claim))),
            // Stored since the look above, by a request just like this one, or (gone
            // now) a 503, so that the retry is judged afresh.
            Err(ResolveError::Failed(Failure::KeyTaken)) => {
                match keys::replayed(&self.reads, &key, fingerprint, answer_by).await? {
                    Some(order) => Ok(Ended::Replayed(order)),
                    None => Err(key_gone()),
                }
            }
            other => other.map_err(Keyed::Failed),
        }
    }

    async fn resolve(
        &self,
        id: OrderId,
        buyer: UserId,
        resolution: Resolution,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
    ) -> Result<Ended<'static>, ResolveError> {
        // A live hold of a store served here: its store's actor judges the buyer and
        // the hold, and the answer comes from what its lock committed. Anything else (a
        // hold that ended, another buyer, another node's store) reads the order.
        if let Some(held) = self.live.get(id)
            && let Route::Here(handle) = self.cluster.route(held.store)
        {
            match handle
                .resolve(id, buyer, resolution, key.clone(), answer_by)
                .await
            {
                Ok(status) => {
                    if let Transition::Conflict(status) = transition(status, resolution) {
                        return Ok(Ended::Conflict(status));
                    }
                    // A product deleted since the lock is no longer in the catalog; the
                    // database still has its name.
                    if let Some(order) = self.held_row(id, &held, status) {
                        return Ok(Ended::Order(order));
                    }
                }
                Err(ResolveError::NotHeld) => {}
                Err(e) => return Err(e),
            }
        }
        // The second pass is for a hold that ended between the read and the actor.
        for _ in 0..2 {
            let order = self.order(id, answer_by).await.map_err(|e| {
                crate::warn_summarised!("order lookup failed", error = %e, "order lookup failed");
                ResolveError::Failed(Failure::Unavailable)
            })?;
            let Some(mut order) = order.filter(|o| o.buyer == buyer) else {
                return Ok(Ended::NotFound);
            };
            match transition(order.status, resolution) {
                Transition::AlreadyThere => return Ok(Ended::Order(order)),
                Transition::Conflict(status) => return Ok(Ended::Conflict(status)),
                Transition::Apply => {}
            }
            let handle = match self
                .cluster
                .route_now(order.store, &self.reads, answer_by)
                .await
            {
                Route::Here(handle) => handle,
                Route::There(peer) => return Ok(Ended::There(peer, None)),
                Route::Nowhere => return Err(ResolveError::Failed(Failure::Unowned)),
            };
            match handle
                .resolve(id, buyer, resolution, key.clone(), answer_by)
                .await
            {
                Ok(status) => {
                    order.status = status;
                    return Ok(match transition(status, resolution) {
                        Transition::Conflict(status) => Ended::Conflict(status),
                        _ => Ended::Order(order),
                    });
                }
                Err(ResolveError::NotHeld) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ResolveError::NotHeld)
    }

    /// The order of a hold as its lock committed it, in `status`, with its products'
    /// names as the catalog has them now; `None` if one of them is no longer there.
    fn held_row(&self, id: OrderId, held: &HeldOrder, status: OrderStatus) -> Option<OrderRow> {
        let catalog = self.catalog.snapshot();
        let details = held
            .details
            .iter()
            .map(|(detail, line)| {
                catalog.get(line.product).map(|product| DetailRow {
                    id: *detail,
                    product: line.product,
                    product_name: product.name.clone(),
                    quantity: line.quantity,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(OrderRow {
            id,
            buyer: held.buyer,
            store: held.store,
            status,
            expires_at: held.expires_at,
            details,
        })
    }

    /// Expires every hold that is due by the clock, in every store, and returns once
    /// those expiries committed (start-up, and tests that move a manual clock).
    pub async fn settle_due(&self) {
        let handles = self.cluster.handles();
        futures_util::future::join_all(handles.iter().map(StoreHandle::settle_due)).await;
    }

    /// Every orderable product with its stock, reflecting every change answered by any
    /// node: from memory when this node serves every store (its actors publish every
    /// change), else from the database, where every answered change has committed.
    pub async fn listing(&self, answer_by: Instant) -> Result<Arc<Listing>, DbErr> {
        if self.cluster.everything_here() {
            return Ok(self.catalog.listing());
        }
        let rows = self
            .reads
            .run(answer_by, |db| async move { load::products(&db).await })
            .await?;
        Ok(Arc::new(Listing::from_rows(rows)))
    }

    /// Where a page of the catalogue comes from: the listing in memory when this node
    /// serves every store, else the rows read from the database, as `listing`. The
    /// handler picks the page out of it (`Page::products`).
    pub async fn page(
        &self,
        store: Option<StoreId>,
        after: ProductId,
        limit: Option<u32>,
        answer_by: Instant,
    ) -> Result<Page, DbErr> {
        if self.cluster.everything_here() {
            return Ok(Page::Listed(self.catalog.listing()));
        }
        let read = move |db| async move { load::products_page(&db, store, after, limit).await };
        let rows = self.reads.run(answer_by, read).await?;
        Ok(Page::Read(
            rows.into_iter().map(|row| Arc::new(row.into())).collect(),
        ))
    }

    /// One orderable product: from memory if its store is served here (or this node
    /// serves every store), else from the database.
    pub async fn product(
        &self,
        id: ProductId,
        answer_by: Instant,
    ) -> Result<Option<Arc<Product>>, DbErr> {
        let known = self.catalog.snapshot().get(id).cloned();
        let here = |p: &Product| matches!(self.cluster.route(p.store), Route::Here(_));
        if self.cluster.everything_here() || known.as_deref().is_some_and(here) {
            return Ok(known);
        }
        let read = move |db| async move { load::product(&db, id).await };
        let row = self.reads.run(answer_by, read).await?;
        Ok(row.map(|row| Arc::new(row.into())))
    }

    /// The order as the database has it: every change answered so far is there.
    pub async fn order(&self, id: OrderId, answer_by: Instant) -> Result<Option<OrderRow>, DbErr> {
        if self.metrics.enabled {
            self.metrics.order_reads.inc();
        }
        self.reads
            .run(
                answer_by,
                move |db| async move { load::order(&db, id).await },
            )
            .await
    }
}

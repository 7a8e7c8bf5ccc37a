//! The store owner's desk: what the admin API does between the edge and the actors.
//!
//! A change of a product (a new one, a stock delta, a rename, a limit, a deletion) is
//! sent to its store's actor, which decides it in order with the store's orders and has
//! the writer persist it with its ledger row. Users and stores change no stock: they
//! are written by the writer directly. A new store gets its own actor and index entry
//! before it is answered, so it takes orders at once (on a cluster, once the node it
//! belongs to has taken it: within the request's bound plus the lease).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sea_orm::{DatabaseConnection, DbErr};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::keys::{InFlightKeys, KeyError, Keyed};
use super::users::KnownUsers;
use crate::catalog::{Catalog, Product};
use crate::cluster::{Cluster, Manager, Peer, Route};
use crate::db::call::Reads;
use crate::db::keys;
use crate::db::load::{self, MovementRow, OrderFilter, OrderRow, StoreRow};
use crate::db::owners::{self, NodeRow, OwnerRow};
use crate::db::write::{AdminWrite, KeyRecord, PersistError, Write, Written};
use crate::domain::{Fingerprint, IdempotencyKey, ProductId, StoreId, UserId};
use crate::store::{ChangeError, Failure, ProductChange, StoreHandle};

/// The shortest `KITARA_ADMIN_TOKEN` Kitara starts with.
pub const MIN_TOKEN_LEN: usize = 16;

/// `KITARA_ADMIN_TOKEN`: what a bearer must present.
pub struct AdminToken(Box<[u8]>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "KITARA_ADMIN_TOKEN must be at least {MIN_TOKEN_LEN} characters (it has {0}); leave it unset to disable the admin API"
    )]
    TooShort(usize),
    #[error("KITARA_ADMIN_TOKEN must be visible ASCII characters only (it goes in a header)")]
    NotVisibleAscii,
}

impl AdminToken {
    /// The token, or `None` when it is unset or empty (the admin API is then disabled).
    pub fn new(text: Option<&str>) -> Result<Option<Self>, TokenError> {
        let text = text.unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(text.len()));
        }
        Ok(Some(Self(text.as_bytes().into())))
    }

    /// Compares in constant time, so that the answer's timing tells nothing of a guess:
    /// digests of equal length, so not even whether its length was right.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let (expected, given) = (Sha256::digest(&self.0), Sha256::digest(presented));
        expected[..].ct_eq(&given[..]).into()
    }
}

/// The store owner's side of Kitara: the token, the live stores, and what each change
/// does.
pub struct Admin {
    /// `None` while the admin API is disabled.
    pub token: Option<AdminToken>,
    /// The live stores: read at start (`Admin::live_stores`), added to by the admin API.
    pub store_rows: DashMap<StoreId, StoreRow>,
    pub catalog: Arc<Catalog>,
    /// Starts a new store's actor, and routes a change to its store's.
    pub cluster: Arc<Cluster>,
    pub users: Arc<KnownUsers>,
    pub reads: Reads,
    /// See `Orders::answer_within`.
    pub answer_within: Duration,
    /// The keys of admin writes in progress here.
    pub keys: InFlightKeys,
}

/// Where a change of a product ended up.
#[derive(Debug)]
pub enum Changed {
    /// Made here: the product as the committed change left it (for a deletion, as it
    /// was).
    Here(Product),
    /// Its store is another node's: the request goes there, as it came.
    There(Arc<Peer>),
}

/// Why an admin request was not done. `http::response` maps each to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("user {0} not found")]
    UserNotFound(UserId),
    #[error("store {0} not found")]
    StoreNotFound(StoreId),
    #[error("product {0} not found")]
    ProductNotFound(ProductId),
    /// A path that names no product id at all.
    #[error("product not found")]
    UnknownProduct,
    #[error(transparent)]
    Change(ChangeError),
    #[error("database unavailable")]
    Unavailable,
    #[error("shutting down")]
    ShuttingDown,
    /// The request's idempotency key is already stored: nothing of it was written.
    #[error("idempotency key already stored")]
    KeyTaken,
}

/// What a keyed admin write came to: done now, or the answer an earlier request with
/// the same key got, as the database had it when that one committed.
#[derive(Debug)]
pub enum Admitted<T> {
    Done(T),
    Replayed { status: u16, data: String },
}

impl From<DbErr> for AdminError {
    fn from(e: DbErr) -> Self {
        crate::warn_summarised!("an admin read failed", error = %e, "an admin read failed");
        AdminError::Unavailable
    }
}

impl Admin {
    /// The live stores as start-up read them, by id.
    pub fn live_stores(rows: Vec<StoreRow>) -> DashMap<StoreId, StoreRow> {
        rows.into_iter().map(|s| (StoreId(s.id), s)).collect()
    }

    fn answer_by(&self) -> Instant {
        Instant::now() + self.answer_within
    }

    /// Every live store, ascending id.
    pub async fn stores(&self) -> Result<Vec<StoreRow>, AdminError> {
        if !self.cluster.everything_here() {
            // Stores made on other nodes are only in the database.
            let read = move |db: DatabaseConnection| async move { load::store_rows(&db).await };
            return Ok(self.reads.run(self.answer_by(), read).await?);
        }
        let mut stores: Vec<StoreRow> = self.store_rows.iter().map(|s| s.value().clone()).collect();
        stores.sort_by_key(|s| s.id);
        Ok(stores)
    }

    /// Whether `store` is a live store (made here, or, on a node that does not serve
    /// every store, anywhere).
    pub async fn has_store(&self, store: StoreId, answer_by: Instant) -> Result<bool, AdminError> {
        if self.store_rows.contains_key(&store) {
            return Ok(true);
        }
        if self.cluster.everything_here() {
            return Ok(false);
        }
        Ok(self.store_row(store, answer_by).await?.is_some())
    }

    /// Runs an admin write under its `Idempotency-Key`, if it has one, with the rules of
    /// the order endpoints: the key is claimed while the request is in progress (409
    /// for another one), a key stored for this very request answers what that one got
    /// (its status and `data`), one stored for another request is a 422; otherwise
    /// `run` writes the change with the key in its transaction, and a key another
    /// request stored meanwhile is looked up again.
    pub async fn keyed<T, Fut>(
        &self,
        key: Option<(IdempotencyKey, Fingerprint)>,
        run: impl FnOnce(Option<Arc<KeyRecord>>) -> Fut,
    ) -> Result<Admitted<T>, Keyed<AdminError>>
    where
        Fut: std::future::Future<Output = Result<T, AdminError>>,
    {
        let Some((key, fingerprint)) = key else {
            return run(None).await.map(Admitted::Done).map_err(Keyed::Failed);
        };
        let _claim = self.keys.claim(&key).ok_or(KeyError::InProgress)?;
        if let Some(answer) = self.stored_answer(&key, fingerprint).await? {
            return Ok(answer);
        }
        let record = Arc::new(KeyRecord {
            key: key.clone(),
            fingerprint,
        });
        match run(Some(record)).await {
            Err(AdminError::KeyTaken) => match self.stored_answer(&key, fingerprint).await? {
                Some(answer) => Ok(answer),
                // Taken, then gone (purged) before it was read: nothing was written.
                None => Err(Keyed::Failed(AdminError::Unavailable)),
            },
            other => other.map(Admitted::Done).map_err(Keyed::Failed),
        }
    }

    /// What `key` was stored with, if it was stored for this very request.
    async fn stored_answer<T>(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
    ) -> Result<Option<Admitted<T>>, KeyError> {
        let text = key.clone();
        let read = move |db: DatabaseConnection| async move { keys::stored(&db, &text).await };
        let stored = self
            .reads
            .run(self.answer_by(), read)
            .await
            .map_err(|e| {
                crate::warn_summarised!("idempotency key lookup failed", error = %e, "idempotency key lookup failed");
                KeyError::Unavailable
            })?;
        match stored {
            None => Ok(None),
            Some(stored) if stored.fingerprint != fingerprint => Err(KeyError::Reused),
            Some(stored) => match stored.answer {
                Some((status, data)) => Ok(Some(Admitted::Replayed { status, data })),
                // An order's key: another request, whatever its fingerprint.
                None => Err(KeyError::Reused),
            },
        }
    }

    pub async fn create_user(
        &self,
        name: String,
        key: Option<Arc<KeyRecord>>,
    ) -> Result<UserId, AdminError> {
        let created = self
            .admin_write(AdminWrite::NewUser { name }, key, self.answer_by())
            .await?;
        let user = UserId(created);
        self.users.add(user);
        Ok(user)
    }

    /// Creates a store and starts its actor; it takes orders once this returns. On
    /// MySQL this node owns it at epoch 1 from its first transaction; if another node
    /// should own it, it is handed over there before this returns, or, if that takes
    /// longer than the request's bound plus the lease, soon after (its requests get 503
    /// with `Retry-After` meanwhile).
    pub async fn create_store(
        &self,
        name: String,
        owner: UserId,
        key: Option<Arc<KeyRecord>>,
    ) -> Result<StoreRow, AdminError> {
        let answer_by = self.answer_by();
        if !self.users.exists(owner, answer_by).await? {
            return Err(AdminError::UserNotFound(owner));
        }
        // Not once shutdown began: the store would be written but get no actor.
        if self.cluster.writer().is_none() {
            return Err(AdminError::ShuttingDown);
        }
        let served_by =
            (!self.cluster.is_solo()).then(|| (self.cluster.node.id.clone(), self.cluster.lease));
        let write = AdminWrite::NewStore {
            name: name.clone(),
            owner,
            served_by,
        };
        let id = match self.admin_write(write, key, answer_by).await {
            Err(AdminError::Change(ChangeError::Failed(Failure::Conflict))) => {
                return Err(AdminError::UserNotFound(owner));
            }
            other => other?,
        };
        let row = StoreRow {
            id,
            store_name: name,
            user_id: owner.0,
        };
        let store = StoreId(id);
        let epoch = (!self.cluster.is_solo()).then_some(1);
        let handle = self
            .cluster
            .start(store, epoch, load::StoreState::default())
            .ok_or(AdminError::ShuttingDown)?;
        self.cluster.serve(store, handle);
        self.store_rows.insert(store, row.clone());
        if !self.cluster.is_solo() {
            let cluster = self.cluster.clone();
            let deadline = answer_by + cluster.lease;
            let place = move |db: DatabaseConnection| async move {
                Manager::place_new(&db, &cluster, store, deadline).await
            };
            // The store is committed: a placement that did not finish (in time, or at
            // all: the manager's next look hands it over then) is no reason to answer
            // otherwise. Its requests get 503 with `Retry-After` until its node serves it.
            if let Err(error) = self.reads.run(deadline, place).await {
                tracing::warn!(%store, %error, "a new store is not yet served by the node it belongs to");
            }
        }
        Ok(row)
    }

    /// Adds a product to `store`: decided by the store's actor, here or on the node
    /// that owns it.
    pub async fn create_product(
        &self,
        store: StoreId,
        name: String,
        stock: i64,
        limit: Option<i64>,
        key: Option<Arc<KeyRecord>>,
    ) -> Result<Changed, AdminError> {
        let answer_by = self.answer_by();
        let store_name = match self.store_rows.get(&store).map(|s| s.store_name.clone()) {
            Some(name) => name,
            None if !self.cluster.everything_here() => {
                self.store_row(store, answer_by)
                    .await?
                    .ok_or(AdminError::StoreNotFound(store))?
                    .store_name
            }
            None => return Err(AdminError::StoreNotFound(store)),
        };
        let handle = match self.route(store, answer_by).await? {
            Ok(handle) => handle,
            Err(peer) => return Ok(Changed::There(peer)),
        };
        let change = ProductChange::Add {
            name,
            stock,
            limit,
            store_name: store_name.as_str().into(),
        };
        match handle.change(change, key, answer_by).await {
            Err(ChangeError::Failed(Failure::Conflict)) => Err(AdminError::StoreNotFound(store)),
            Err(ChangeError::Failed(Failure::KeyTaken)) => Err(AdminError::KeyTaken),
            other => other.map(Changed::Here).map_err(AdminError::Change),
        }
    }

    /// Sends a change of the orderable `product` to its store's actor, here or on the
    /// node that owns it.
    pub async fn change_product(
        &self,
        product: ProductId,
        change: ProductChange,
        key: Option<Arc<KeyRecord>>,
    ) -> Result<Changed, AdminError> {
        let answer_by = self.answer_by();
        let not_found = AdminError::ProductNotFound(product);
        let known = self.catalog.snapshot().get(product).map(|p| p.store);
        let store = match known {
            Some(store) => store,
            // Made on another node: the database knows it.
            None if !self.cluster.everything_here() => {
                let read =
                    move |db: DatabaseConnection| async move { load::store_of(&db, product).await };
                self.reads.run(answer_by, read).await?.ok_or(not_found)?
            }
            None => return Err(not_found),
        };
        let handle = match self.route(store, answer_by).await? {
            Ok(handle) => handle,
            Err(peer) => return Ok(Changed::There(peer)),
        };
        match handle.change(change, key, answer_by).await {
            Err(ChangeError::NotFound) => Err(not_found),
            Err(ChangeError::Failed(Failure::KeyTaken)) => Err(AdminError::KeyTaken),
            other => other.map(Changed::Here).map_err(AdminError::Change),
        }
    }

    /// The nodes and who owns which store, as the ownership table has them. On SQLite,
    /// this process alone, owning every store (at epoch 0: there is no fence).
    pub async fn cluster(&self) -> Result<(Vec<NodeRow>, Vec<OwnerRow>), AdminError> {
        if self.cluster.is_solo() {
            let node = &self.cluster.node;
            let me = NodeRow {
                node_id: node.id.to_string(),
                advertise_url: node.advertise_url.clone(),
                incarnation: node.incarnation,
                last_seen: chrono::Utc::now().naive_utc(),
                live: true,
            };
            let mut stores = self.cluster.stores();
            stores.sort();
            let owners = stores
                .into_iter()
                .map(|store| OwnerRow {
                    store,
                    owner: Some(node.id.to_string()),
                    epoch: 0,
                    lease_expires_at: None,
                    lapsed: false,
                })
                .collect();
            return Ok((vec![me], owners));
        }
        let lease = self.cluster.lease;
        let read = move |db: DatabaseConnection| async move {
            Ok((owners::nodes(&db, lease).await?, owners::owners(&db).await?))
        };
        Ok(self.reads.run(self.answer_by(), read).await?)
    }

    /// The actor of `store` if this node owns it, else the node that does; no owner
    /// yet is a 503.
    async fn route(
        &self,
        store: StoreId,
        answer_by: Instant,
    ) -> Result<Result<StoreHandle, Arc<Peer>>, AdminError> {
        match self.cluster.route_now(store, &self.reads, answer_by).await {
            Route::Here(handle) => Ok(Ok(handle)),
            Route::There(peer) => Ok(Err(peer)),
            Route::Nowhere => Err(AdminError::Change(ChangeError::Failed(Failure::Unowned))),
        }
    }

    /// A store's row as the database has it (a store made on another node).
    async fn store_row(
        &self,
        store: StoreId,
        answer_by: Instant,
    ) -> Result<Option<StoreRow>, AdminError> {
        let read = move |db: DatabaseConnection| async move { load::store_rows(&db).await };
        let rows = self.reads.run(answer_by, read).await?;
        Ok(rows.into_iter().find(|r| r.id == store.0))
    }

    /// The orders `filter` asks for; a store it names must be a live store.
    pub async fn orders(&self, filter: OrderFilter) -> Result<Vec<OrderRow>, AdminError> {
        let answer_by = self.answer_by();
        if let Some(store) = filter.store
            && !self.has_store(store, answer_by).await?
        {
            return Err(AdminError::StoreNotFound(store));
        }
        let read = move |db: DatabaseConnection| async move { load::orders(&db, filter).await };
        Ok(self.reads.run(answer_by, read).await?)
    }

    pub async fn movements(&self, product: ProductId) -> Result<Vec<MovementRow>, AdminError> {
        let read = move |db: DatabaseConnection| async move { load::movements(&db, product).await };
        self.reads
            .run(self.answer_by(), read)
            .await?
            .ok_or(AdminError::ProductNotFound(product))
    }

    /// A write that belongs to no store: through the writer, on its own.
    async fn admin_write(
        &self,
        write: AdminWrite,
        key: Option<Arc<KeyRecord>>,
        answer_by: Instant,
    ) -> Result<i64, AdminError> {
        let writer = self.cluster.writer().ok_or(AdminError::ShuttingDown)?;
        match writer
            .write(
                Write::Admin {
                    change: write,
                    event: None,
                    key,
                },
                answer_by,
            )
            .await
        {
            Ok(Written::Admin(created)) => Ok(created),
            Ok(_) => Err(AdminError::Unavailable),
            Err(PersistError::Refused | PersistError::Conflicted) => {
                Err(AdminError::Change(ChangeError::Failed(Failure::Conflict)))
            }
            Err(PersistError::OutcomeUnknown) => Err(AdminError::Change(ChangeError::Failed(
                Failure::OutcomeUnknown,
            ))),
            Err(PersistError::KeyTaken) => Err(AdminError::KeyTaken),
            Err(PersistError::Unavailable | PersistError::Fenced) => Err(AdminError::Unavailable),
        }
    }
}

//! The store owner's desk: what the admin API does between the edge and the actors.
//!
//! A change of a product (a new one, a stock delta, a rename, a limit, a deletion) is
//! sent to its store's actor, which decides it in order with the store's orders and has
//! the writer persist it with its ledger row. Users and stores change no stock: they
//! are written by the writer directly. A new store gets its own actor and index entry
//! before it is answered, so it takes orders at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use sea_orm::{DatabaseConnection, DbErr};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::users::KnownUsers;
use crate::catalog::{Catalog, Product};
use crate::db::call::Reads;
use crate::db::load::{self, MovementRow, OrderFilter, OrderRow, StoreRow};
use crate::db::write::{AdminWrite, PersistError, Write, Written};
use crate::domain::{ProductId, StoreId, UserId};
use crate::store::{self, ActorConfig, ChangeError, Failure, ProductChange, Registry, Shared};

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

/// What starts the actor of a store created while Kitara serves. Taken at shutdown, so
/// that the writer's last handle goes with the actors'.
pub struct Spawner {
    pub shared: Shared,
    pub config: ActorConfig,
    pub actors: Vec<JoinHandle<()>>,
}

/// The store owner's side of Kitara: the token, the live stores, and what each change
/// does.
pub struct Admin {
    /// `None` while the admin API is disabled.
    token: Option<AdminToken>,
    /// The live stores: read at start, added to by the admin API.
    store_rows: DashMap<StoreId, StoreRow>,
    spawner: Mutex<Option<Spawner>>,
    catalog: Arc<Catalog>,
    /// Where a new store's actor is registered.
    stores: Arc<Registry>,
    users: Arc<KnownUsers>,
    reads: Reads,
    /// See `Orders::answer_within`.
    answer_within: Duration,
}

/// What the owner's side is built from (`Admin::new`).
pub struct AdminParts {
    pub token: Option<AdminToken>,
    pub store_rows: Vec<StoreRow>,
    pub spawner: Spawner,
    pub catalog: Arc<Catalog>,
    pub stores: Arc<Registry>,
    pub users: Arc<KnownUsers>,
    pub reads: Reads,
    pub answer_within: Duration,
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
}

impl From<DbErr> for AdminError {
    fn from(e: DbErr) -> Self {
        crate::warn_summarised!("an admin read failed", error = %e, "an admin read failed");
        AdminError::Unavailable
    }
}

impl Admin {
    pub fn new(parts: AdminParts) -> Self {
        Self {
            token: parts.token,
            store_rows: parts
                .store_rows
                .into_iter()
                .map(|s| (StoreId(s.id), s))
                .collect(),
            spawner: Mutex::new(Some(parts.spawner)),
            catalog: parts.catalog,
            stores: parts.stores,
            users: parts.users,
            reads: parts.reads,
            answer_within: parts.answer_within,
        }
    }

    /// The token, or `None` while the admin API is disabled.
    pub fn token(&self) -> Option<&AdminToken> {
        self.token.as_ref()
    }

    fn answer_by(&self) -> Instant {
        Instant::now() + self.answer_within
    }

    /// Stops starting actors, and hands over the ones started since start-up.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        self.spawner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|s| s.actors)
            .unwrap_or_default()
    }

    /// Every live store, ascending id.
    pub fn stores(&self) -> Vec<StoreRow> {
        let mut stores: Vec<StoreRow> = self.store_rows.iter().map(|s| s.value().clone()).collect();
        stores.sort_by_key(|s| s.id);
        stores
    }

    /// Submissions waiting for the writer (0 once shutdown began).
    pub fn writer_depth(&self) -> usize {
        self.spawner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |s| s.shared.writer.depth())
    }

    pub fn has_store(&self, store: StoreId) -> bool {
        self.store_rows.contains_key(&store)
    }

    pub async fn create_user(&self, name: String) -> Result<UserId, AdminError> {
        let created = self.admin_write(AdminWrite::NewUser { name }).await?;
        let user = UserId(created);
        self.users.add(user);
        Ok(user)
    }

    /// Creates a store and starts its actor; it takes orders once this returns.
    pub async fn create_store(&self, name: String, owner: UserId) -> Result<StoreRow, AdminError> {
        if !self.users.exists(owner, self.answer_by()).await? {
            return Err(AdminError::UserNotFound(owner));
        }
        // Not once shutdown began: the store would be written but get no actor.
        if self
            .spawner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Err(AdminError::ShuttingDown);
        }
        let write = AdminWrite::NewStore {
            name: name.clone(),
            owner,
        };
        let id = match self.admin_write(write).await {
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
        {
            let mut spawner = self.spawner.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(spawner) = spawner.as_mut() else {
                return Err(AdminError::ShuttingDown);
            };
            let (handle, task) = store::spawn(
                store,
                Vec::new(),
                load::StoreState::default(),
                spawner.shared.clone(),
                &spawner.config,
            );
            spawner.actors.push(task);
            self.stores.insert(store, handle);
        }
        self.store_rows.insert(store, row.clone());
        Ok(row)
    }

    pub async fn create_product(
        &self,
        store: StoreId,
        name: String,
        stock: i64,
        limit: Option<i64>,
    ) -> Result<Product, AdminError> {
        let (Some(row), Some(handle)) = (
            self.store_rows.get(&store).map(|s| s.value().clone()),
            self.stores.get(store),
        ) else {
            return Err(AdminError::StoreNotFound(store));
        };
        let change = ProductChange::Add {
            name,
            stock,
            limit,
            store_name: row.store_name.as_str().into(),
        };
        match handle.change(change, self.answer_by()).await {
            Err(ChangeError::Failed(Failure::Conflict)) => Err(AdminError::StoreNotFound(store)),
            other => other.map_err(AdminError::Change),
        }
    }

    /// Sends a change of the orderable `product` to its store's actor.
    pub async fn change_product(
        &self,
        product: ProductId,
        change: ProductChange,
    ) -> Result<Product, AdminError> {
        let not_found = AdminError::ProductNotFound(product);
        let store = self
            .catalog
            .snapshot()
            .get(product)
            .map(|p| p.store)
            .ok_or(not_found)?;
        let handle = self.stores.get(store).ok_or(not_found)?;
        match handle.change(change, self.answer_by()).await {
            Err(ChangeError::NotFound) => Err(not_found),
            other => other.map_err(AdminError::Change),
        }
    }

    pub async fn orders(&self, filter: OrderFilter) -> Result<Vec<OrderRow>, AdminError> {
        let read = move |db: DatabaseConnection| async move { load::orders(&db, filter).await };
        Ok(self.reads.run(self.answer_by(), read).await?)
    }

    pub async fn movements(&self, product: ProductId) -> Result<Vec<MovementRow>, AdminError> {
        let read = move |db: DatabaseConnection| async move { load::movements(&db, product).await };
        self.reads
            .run(self.answer_by(), read)
            .await?
            .ok_or(AdminError::ProductNotFound(product))
    }

    /// A write that belongs to no store: through the writer, on its own.
    async fn admin_write(&self, write: AdminWrite) -> Result<i64, AdminError> {
        let writer = self
            .spawner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.shared.writer.clone())
            .ok_or(AdminError::ShuttingDown)?;
        match writer.write(Write::Admin(write)).await {
            Ok(Written::Admin(created)) => Ok(created),
            Ok(_) => Err(AdminError::Unavailable),
            Err(PersistError::Refused) => {
                Err(AdminError::Change(ChangeError::Failed(Failure::Conflict)))
            }
            Err(PersistError::OutcomeUnknown) => Err(AdminError::Change(ChangeError::Failed(
                Failure::OutcomeUnknown,
            ))),
            Err(PersistError::Unavailable | PersistError::KeyTaken) => Err(AdminError::Unavailable),
        }
    }
}

//! Several Kitara processes on one database: which stores this node serves, and where
//! the requests for the others go.
//!
//! On MySQL every process is a node, even alone: each store has at most one owner, at
//! an epoch that rises with every change of owner (`db::owners`), and only the owner
//! runs the store's actor. Every transaction of a store's writes proves the epoch its
//! actor was started at (`db::write::Fence`), so a node that lost a store can never
//! commit for it, whatever its clock says. `manager` keeps this node's share: it
//! renews the leases, takes the stores that are free or lapsed and are this node's by
//! rendezvous hashing, and hands over the ones that belong to another node.
//!
//! On SQLite one process serves every store (a second `serve` on the same file is
//! refused at start, by a lock on the file) and there is no fence.
//!
//! This module starts and stops store actors (the one place that does), and tells the
//! front end where a store's requests go: here, to its owner, or nowhere yet.

mod manager;
mod peers;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::call::Reads;
use crate::db::load::StoreState;
use crate::db::owners;
use crate::domain::{NodeId, StoreId};
use crate::metrics::Metrics;
use crate::store::{self, ActorConfig, Registry, Shared, StoreHandle};

pub use manager::{JoinError, Manager};
pub use peers::{NODE_HEADER, Peer, PeerError, Peers};

/// This node, as the others see it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    /// Where the others reach it (`--advertise-url`).
    pub advertise_url: String,
    /// Which start of the node this is: another start with its id replaces the row.
    pub incarnation: i64,
}

/// Where the requests of a store go.
pub enum Route {
    /// This node serves it.
    Here(StoreHandle),
    /// Another node owns it.
    There(Arc<Peer>),
    /// Nobody serves it now: its owner's lease lapsed and nobody took it yet, or this
    /// node is taking it or handing it over.
    Nowhere,
}

/// What starts store actors, and the tasks it started.
pub struct Spawner {
    pub shared: Shared,
    pub config: ActorConfig,
}

struct Actors {
    spawner: Spawner,
    tasks: Vec<(StoreId, JoinHandle<()>)>,
}

/// The stores this node serves and where the others are; shared by the front end.
pub struct Cluster {
    pub node: Node,
    pub lease: Duration,
    /// SQLite: the only process, serving every store, with no fence.
    solo: bool,
    registry: Arc<Registry>,
    /// `None` once shutdown began: no actor starts any more.
    actors: Mutex<Option<Actors>>,
    /// The stores another live node owns, and where to reach it.
    elsewhere: ArcSwap<HashMap<StoreId, Arc<Peer>>>,
    /// No other node owns a store: this node serves every store there is.
    everything_here: AtomicBool,
    /// Milliseconds after `started` until which this node's leases hold by its own
    /// clock (the start of its last heartbeat that got through, plus the lease).
    serving_until: AtomicU64,
    started: Instant,
    /// The live nodes at the last look (this one included), and where they are.
    live: ArcSwap<Vec<Arc<Peer>>>,
    /// Stores this node owns by the table but has not loaded yet (`/readyz`).
    loading: AtomicU64,
    /// Another start of this node took its id: this one must stop.
    evicted: Notify,
    pub peers: Peers,
    metrics: Arc<Metrics>,
}

impl Cluster {
    pub fn new(
        node: Node,
        lease: Duration,
        solo: bool,
        spawner: Spawner,
        peers: Peers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            node,
            lease,
            solo,
            registry: spawner.shared.registry.clone(),
            actors: Mutex::new(Some(Actors {
                spawner,
                tasks: Vec::new(),
            })),
            elsewhere: ArcSwap::default(),
            live: ArcSwap::default(),
            everything_here: AtomicBool::new(true),
            serving_until: AtomicU64::new(0),
            started: Instant::now(),
            loading: AtomicU64::new(0),
            evicted: Notify::new(),
            peers,
            metrics,
        }
    }

    /// Whether this is the only process (SQLite): every store is served here.
    pub fn is_solo(&self) -> bool {
        self.solo
    }

    /// Where `store`'s requests go now.
    pub fn route(&self, store: StoreId) -> Route {
        if let Some(handle) = self.registry.get(store) {
            return if self.serving() {
                Route::Here(handle)
            } else {
                Route::Nowhere
            };
        }
        match self.elsewhere.load().get(&store) {
            Some(peer) => Route::There(peer.clone()),
            None => Route::Nowhere,
        }
    }

    /// `route`, except that a store this node knows no owner for is looked up in the
    /// table: another node may have taken it since this node last looked.
    pub async fn route_now(&self, store: StoreId, reads: &Reads, answer_by: Instant) -> Route {
        let route = self.route(store);
        if self.solo || !matches!(route, Route::Nowhere) || self.registry.get(store).is_some() {
            return route;
        }
        let read = move |db| async move { owners::holder(&db, store).await };
        match reads.run(answer_by, read).await {
            Ok(Some((owner, url))) if owner != self.node.id.as_str() => Peer::parse(&owner, &url)
                .map_or(Route::Nowhere, |peer| Route::There(Arc::new(peer))),
            _ => Route::Nowhere,
        }
    }

    /// Whether this node serves every store there is (alone, or on SQLite): then what
    /// its memory shows of the stores is the whole truth, and listings need not read
    /// the database.
    pub fn everything_here(&self) -> bool {
        self.solo || self.everything_here.load(Ordering::Relaxed)
    }

    /// Whether this node's leases still hold by its own clock. A node that cannot renew
    /// them stops serving its stores when they run out, even before another node takes
    /// them (the fence alone decides safety; this keeps answers from waiting on it).
    pub fn serving(&self) -> bool {
        self.solo || self.millis_now() < self.serving_until.load(Ordering::Relaxed)
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A heartbeat that started at `at` got through: the leases hold until `at` plus the
    /// lease, by this node's clock (the database's may be ahead, never behind it).
    fn renewed(&self, at: Instant) {
        let until = at.saturating_duration_since(self.started) + self.lease;
        let until = u64::try_from(until.as_millis()).unwrap_or(u64::MAX);
        self.serving_until.fetch_max(until, Ordering::Relaxed);
    }

    /// The node that should own `store` among the live nodes at the last look (this one
    /// if it saw none).
    pub fn rightful(&self, store: StoreId) -> Arc<Peer> {
        let live = self.live.load();
        let me = self.node.id.as_str();
        let ids = live.iter().map(|p| p.node.as_str()).chain([me]);
        match crate::domain::rightful(store, ids) {
            Some(id) if id != me => live
                .iter()
                .find(|p| p.node.as_str() == id)
                .cloned()
                .unwrap_or_else(|| self.me()),
            _ => self.me(),
        }
    }

    fn me(&self) -> Arc<Peer> {
        Arc::new(Peer {
            node: self.node.id.clone(),
            url: self.node.advertise_url.as_str().into(),
        })
    }

    /// Whether every store this node owns is loaded (`/readyz`).
    pub fn loaded(&self) -> bool {
        self.loading.load(Ordering::Relaxed) == 0
    }

    /// Resolves when another start of this node took its id.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// The stores this node serves.
    pub fn stores(&self) -> Vec<StoreId> {
        self.registry.stores()
    }

    /// The handles of the stores this node serves.
    pub fn handles(&self) -> Vec<StoreHandle> {
        self.registry.handles()
    }

    /// Commands waiting in the fullest mailbox of the stores served here (`/metrics`).
    pub fn deepest_mailbox(&self) -> usize {
        self.registry.deepest_mailbox()
    }

    /// Starts the actor of `store` at `epoch` (`None` on SQLite) with its state, and
    /// serves it from now on. `None` once shutdown began.
    pub fn start(
        &self,
        store: StoreId,
        epoch: Option<i64>,
        state: StoreState,
    ) -> Option<StoreHandle> {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        let actors = actors.as_mut()?;
        let (handle, task) = store::spawn(
            store,
            epoch,
            Vec::new(),
            state,
            actors.spawner.shared.clone(),
            &actors.spawner.config,
        );
        actors.tasks.retain(|(_, t)| !t.is_finished());
        actors.tasks.push((store, task));
        Some(handle)
    }

    /// Serves `store` through `handle` from now on.
    pub fn serve(&self, store: StoreId, handle: StoreHandle) {
        self.registry.insert(store, handle);
        self.count_owned();
    }

    /// Stops serving `store`: no new request reaches its actor, which stops once what
    /// it holds is settled. Answers its task, to wait for that.
    fn stop(&self, store: StoreId) -> Vec<JoinHandle<()>> {
        self.registry.remove(store);
        self.count_owned();
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(actors) = actors.as_mut() else {
            return Vec::new();
        };
        let (stopped, kept) = std::mem::take(&mut actors.tasks)
            .into_iter()
            .partition(|(s, _)| *s == store);
        actors.tasks = kept;
        stopped.into_iter().map(|(_, t)| t).collect()
    }

    fn count_owned(&self) {
        if self.metrics.enabled {
            self.metrics.stores_owned.set(self.registry.len() as i64);
        }
    }

    /// Shutdown: stops serving every store and starting actors; answers every actor's
    /// task, to wait for them to settle what they hold.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        self.registry.clear();
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|a| a.tasks.into_iter().map(|(_, t)| t).collect())
            .unwrap_or_default()
    }

    /// Submissions waiting for the writer (0 once shutdown began).
    pub fn writer_depth(&self) -> usize {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |a| a.spawner.shared.writer.depth())
    }

    /// The writes of no store (users, new stores): `None` once shutdown began.
    pub fn writer(&self) -> Option<crate::writer::WriterHandle> {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|a| a.spawner.shared.writer.clone())
    }
}

//! Keeps this node's share of the stores (MySQL): renews its leases with a heartbeat,
//! looks at the ownership table, and does what `domain::plan_ownership` says: takes the
//! stores that are its own and free (loading each before it serves it), hands over the
//! ones another node should own (stopping their actors first), and stops serving the
//! ones another node took.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Cluster, Peer};
use crate::db::call;
use crate::db::load::{self, StoreState};
use crate::db::owners::{self, OwnerRow};
use crate::domain::{Seen, StoreId, plan_ownership};

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("node id {node} is in use by a live node at {url}; give this one another --node-id")]
    InUse { node: String, url: String },
    #[error("the database: {0}")]
    Db(#[from] DbErr),
}

/// Every this many looks, stores made by a tool get their row in the ownership table.
const ROWS_EVERY: u64 = 20;

/// Keeps this node's share; `spawn` runs it until `stop`.
pub struct Manager {
    db: DatabaseConnection,
    cluster: Arc<Cluster>,
    /// Stores being handed over: stopped here, released once their actors settled.
    handing_over: Arc<Mutex<HashSet<StoreId>>>,
    looks: u64,
    stop: Arc<Notify>,
}

impl Manager {
    /// Joins the cluster: records this node (refusing an id that a live node holds),
    /// renews, and takes this node's share of the stores that are free, lapsed or held
    /// under its id by an earlier start, each loaded and its due holds expired, before
    /// it returns. A node that starts alone serves every store when this returns.
    pub async fn join(db: DatabaseConnection, cluster: Arc<Cluster>) -> Result<Self, JoinError> {
        let node = &cluster.node;
        if let Some(row) = owners::node(&db, &node.id, cluster.lease).await?
            && row.live
            && row.incarnation != node.incarnation
            && cluster.peers.answers_as(&row.advertise_url, &node.id).await
        {
            return Err(JoinError::InUse {
                node: node.id.to_string(),
                url: row.advertise_url,
            });
        }
        owners::register(&db, &node.id, &node.advertise_url, node.incarnation).await?;
        let mut manager = Self {
            db,
            cluster,
            handing_over: Arc::default(),
            looks: 0,
            stop: Arc::new(Notify::new()),
        };
        manager.heartbeat().await?;
        owners::ensure_rows(&manager.db).await?;
        manager.look().await?;
        Ok(manager)
    }

    /// Runs the manager on a task of its own; `notify_one` on the answer stops it.
    pub fn spawn(self) -> (JoinHandle<()>, Arc<Notify>) {
        let stop = self.stop.clone();
        (tokio::spawn(self.run()), stop)
    }

    /// How often a node looks at the table: often enough that a store released by a
    /// node that leaves is taken well within SPEC's 2 s.
    fn look_every(&self) -> Duration {
        (self.cluster.lease / 10).clamp(Duration::from_millis(100), Duration::from_millis(500))
    }

    async fn run(mut self) {
        let beat_every = self.cluster.lease / 3;
        let mut next_beat = Instant::now() + beat_every;
        // Logged when the database stops answering and when it answers again, not at
        // every failed look: an outage is logged by the requests it fails already.
        let mut failing: Option<DbErr> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.look_every()) => {}
                () = self.stop.notified() => break,
            }
            let mut result = Ok(());
            if Instant::now() >= next_beat {
                // A heartbeat that failed is tried again at the next look, so that a
                // node whose leases ran out in an outage serves again soon after it.
                let started = Instant::now();
                result = self.heartbeat().await;
                if result.is_ok() {
                    next_beat = started + beat_every;
                }
            }
            if result.is_ok() {
                result = self.look().await;
            }
            match (result, failing.is_some()) {
                (Ok(()), true) => {
                    failing = None;
                    tracing::info!("the ownership table answers again");
                }
                (Err(e), false) => {
                    tracing::warn!(error = %e, "cannot renew the leases or look at the ownership table; this node stops serving its stores when its leases run out");
                    failing = Some(e);
                }
                _ => {}
            }
        }
    }

    /// Renews this node's row and its stores' leases. If another start of the node took
    /// its id, this one stops serving and asks to be shut down.
    async fn heartbeat(&self) -> Result<(), DbErr> {
        let started = Instant::now();
        let cluster = &self.cluster;
        let (db, node, incarnation, lease) = (
            self.db.clone(),
            cluster.node.id.clone(),
            cluster.node.incarnation,
            cluster.lease,
        );
        let beat = async move { owners::heartbeat(&db, &node, incarnation, lease).await };
        // A heartbeat may take a while under load; until the next one is due, it still
        // renews in time.
        match call::within(started + cluster.lease / 3, beat).await? {
            Some(_) => cluster.renewed(started),
            None => {
                tracing::error!(
                    node = %cluster.node.id,
                    "another start of this node took its id; this one stops serving"
                );
                for task in cluster.close() {
                    drop(task);
                }
                cluster.evicted.notify_waiters();
                cluster.evicted.notify_one();
            }
        }
        Ok(())
    }

    /// One look at the table, and what follows from it.
    async fn look(&mut self) -> Result<(), DbErr> {
        self.looks += 1;
        if self.looks.is_multiple_of(ROWS_EVERY) {
            owners::ensure_rows(&self.db).await?;
        }
        let deadline = Instant::now() + self.look_every().max(Duration::from_secs(1));
        let (db, lease) = (self.db.clone(), self.cluster.lease);
        let read = async move {
            let nodes = owners::nodes(&db, lease).await?;
            let rows = owners::owners(&db).await?;
            Ok::<_, DbErr>((nodes, rows))
        };
        let (nodes, rows) = call::within(deadline, read).await?;
        let me = self.cluster.node.id.clone();

        // Where the front end sends the requests of stores owned elsewhere: to any node
        // whose lease on the store holds, even if its heartbeat is late.
        let peers: HashMap<&str, Arc<Peer>> = nodes
            .iter()
            .filter(|n| n.incarnation != 0 && n.node_id != me.as_str())
            .filter_map(|n| {
                let peer = Peer::parse(&n.node_id, &n.advertise_url)?;
                Some((n.node_id.as_str(), Arc::new(peer)))
            })
            .collect();
        let mut elsewhere = HashMap::new();
        // Whether no other node owns a store, or did until its lease lapsed: then this
        // node's memory is the whole truth of every store (unless the plan below gives
        // one up). A store nobody owns yet is this node's to take.
        let mut everything_here = true;
        for row in &rows {
            if let Some(owner) = row.owner.as_deref()
                && owner != me.as_str()
            {
                everything_here = false;
                if let Some(peer) = peers.get(owner).filter(|_| !row.lapsed) {
                    elsewhere.insert(row.store, peer.clone());
                }
            }
        }
        self.cluster.elsewhere.store(Arc::new(elsewhere));
        let mut live_peers: Vec<Arc<Peer>> = nodes
            .iter()
            .filter(|n| n.live)
            .filter_map(|n| peers.get(n.node_id.as_str()).cloned())
            .collect();
        live_peers.sort_by(|a, b| a.node.cmp(&b.node));
        self.cluster.live.store(Arc::new(live_peers));

        let handing_over = self
            .handing_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let seen: Vec<Seen> = rows
            .iter()
            .filter(|r| !handing_over.contains(&r.store))
            .map(OwnerRow::seen)
            .collect();
        let live: Vec<&str> = nodes
            .iter()
            .filter(|n| n.live)
            .map(|n| n.node_id.as_str())
            .collect();
        let serving: HashSet<StoreId> = self.cluster.stores().into_iter().collect();
        let plan = plan_ownership(me.as_str(), &live, &seen, &serving);
        let epoch_of = |store: StoreId| rows.iter().find(|r| r.store == store).map(|r| r.epoch);
        // A store on its way to another node is not served here any more, although its
        // row still names this node: listings must then read the database.
        let giving_up = !(plan.lost.is_empty()
            && plan.hand_over.is_empty()
            && plan.release.is_empty()
            && handing_over.is_empty());
        self.cluster.everything_here.store(
            everything_here && !giving_up,
            std::sync::atomic::Ordering::Relaxed,
        );

        for &store in &plan.lost {
            tracing::warn!(%store, "another node owns the store now; this node stops serving it");
            // Its actor settles what it holds; what it still writes is fenced out.
            drop(self.cluster.stop(store));
        }
        if !plan.hand_over.is_empty() {
            self.hand_over(&plan.hand_over, &epoch_of);
        }
        let stale: Vec<(StoreId, i64)> = plan
            .release
            .iter()
            .filter_map(|&s| epoch_of(s).map(|e| (s, e)))
            .collect();
        owners::release(&self.db, &me, &stale).await?;
        if !plan.take.is_empty() {
            self.take(&plan.take).await?;
        }
        Ok(())
    }

    /// Stops serving `stores` and, once their actors settled what they hold, releases
    /// them for their rightful owner.
    fn hand_over(&self, stores: &[StoreId], epoch_of: &dyn Fn(StoreId) -> Option<i64>) {
        let released: Vec<(StoreId, i64)> = stores
            .iter()
            .filter_map(|&s| epoch_of(s).map(|e| (s, e)))
            .collect();
        let tasks: Vec<JoinHandle<()>> =
            stores.iter().flat_map(|&s| self.cluster.stop(s)).collect();
        self.handing_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(stores.iter().copied());
        tracing::info!(
            stores = stores.len(),
            "handing stores over to the nodes that should own them"
        );
        let (db, node, handing_over) = (
            self.db.clone(),
            self.cluster.node.id.clone(),
            self.handing_over.clone(),
        );
        tokio::spawn(async move {
            futures_util::future::join_all(tasks).await;
            if let Err(e) = owners::release(&db, &node, &released).await {
                tracing::warn!(error = %e, "cannot release the stores handed over; their leases will lapse");
            }
            let mut handing = handing_over.lock().unwrap_or_else(PoisonError::into_inner);
            for (store, _) in &released {
                handing.remove(store);
            }
        });
    }

    /// Takes `stores` (each still free, lapsed, or held under this node's id), loads
    /// what it got, expires their due holds, and serves them.
    async fn take(&self, stores: &[StoreId]) -> Result<(), DbErr> {
        let cluster = &self.cluster;
        cluster
            .loading
            .store(stores.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let taken = owners::take(&self.db, &cluster.node.id, stores, cluster.lease).await?;
            if taken.is_empty() {
                return Ok(());
            }
            if cluster.metrics.enabled {
                cluster.metrics.takeovers.inc_by(taken.len() as u64);
            }
            let ids: Vec<StoreId> = taken.iter().map(|(s, _)| *s).collect();
            let mut states = load_stores(&self.db, &ids).await?;
            let mut started = Vec::with_capacity(taken.len());
            for (store, epoch) in &taken {
                let state = states.remove(store).unwrap_or_default();
                let Some(handle) = cluster.start(*store, Some(*epoch), state) else {
                    break;
                };
                started.push((*store, *epoch, handle));
            }
            // Holds that fell due while nobody served the store expire before it serves.
            futures_util::future::join_all(started.iter().map(|(_, _, h)| h.settle_due())).await;
            for (store, epoch, handle) in started {
                tracing::info!(%store, epoch, "took the store");
                cluster.serve(store, handle);
            }
            Ok(())
        }
        .await;
        cluster
            .loading
            .store(0, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// A store this node just made, served here at epoch 1: if another node should own
    /// it, hands it over at once (nothing of it is in flight yet), and returns once that
    /// node owns it and has loaded it, or at `deadline`. So a store answered 201 takes
    /// orders at once, on the node it belongs to, unless that node took longer than the
    /// deadline (its requests get 503 with `Retry-After` until it serves the store).
    pub async fn place_new(
        db: &DatabaseConnection,
        cluster: &Cluster,
        store: StoreId,
        deadline: Instant,
    ) -> Result<(), DbErr> {
        let rightful = cluster.rightful(store);
        if rightful.node == cluster.node.id {
            return Ok(());
        }
        futures_util::future::join_all(cluster.stop(store)).await;
        owners::release(db, &cluster.node.id, &[(store, 1)]).await?;
        while Instant::now() < deadline {
            let owned = owners::owner_of(db, store).await?;
            if owned.as_deref() == Some(rightful.node.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while Instant::now() < deadline && !cluster.peers.is_ready(&rightful.url).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Leaves the cluster at shutdown, once every actor has settled what it holds:
    /// releases this node's stores and marks it gone, so that the others take them at
    /// once.
    pub async fn leave(db: &DatabaseConnection, cluster: &Cluster) {
        match owners::leave(db, &cluster.node.id, cluster.node.incarnation).await {
            Ok(released) => tracing::info!(stores = released, "left the cluster"),
            Err(e) => tracing::warn!(error = %e, "cannot leave the cluster; the leases will lapse"),
        }
    }
}

/// The state of `stores`: one by one for a few, in one read of every store for many (a
/// node that starts alone takes them all).
async fn load_stores(
    db: &DatabaseConnection,
    stores: &[StoreId],
) -> Result<HashMap<StoreId, StoreState>, DbErr> {
    if stores.len() <= 8 {
        let mut states = HashMap::new();
        for &store in stores {
            states.extend(load::stores(db, Some(store)).await?);
        }
        return Ok(states);
    }
    let wanted: HashSet<StoreId> = stores.iter().copied().collect();
    let mut states = load::stores(db, None).await?;
    states.retain(|s, _| wanted.contains(s));
    Ok(states)
}

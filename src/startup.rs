//! Building and running Kitara: connect, check the schema, load every store into its
//! actor, start the writer, expire the holds that fell due while Kitara was down, bind,
//! serve, and shut down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbBackend, DbErr};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::app::admin::{Admin, AdminToken};
use crate::app::events::{self, Events};
use crate::app::keys::{self, InFlightKeys};
use crate::app::orders::Orders;
use crate::app::users::KnownUsers;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::cluster::{Cluster, JoinError, Manager, Node, Peers, Spawner};
use crate::config::Settings;
use crate::db::call::Reads;
use crate::db::write::{AdminWrite, PersistError, Write, Written};
use crate::db::{self, load};
use crate::domain::NodeId;
use crate::domain::StoreId;
use crate::health::{self, Readiness};
use crate::http::{self, ServerConfig};
use crate::logs;
use crate::metrics::{DbError, Metrics};
use crate::store::{ActorConfig, Feed, LiveHolds, Registry, Shared};
use crate::webhooks::{WebhookConfig, WebhookError, Webhooks};
use crate::writer::WriterHandle;
use crate::writer::{self, WriterConfig};

/// Why Kitara did not start (the process boundary). Errors of the order path live with
/// their boundary: `store`'s, `db::write::PersistError`, and `http::response`.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error(transparent)]
    Schema(#[from] db::SchemaError),
    #[error(
        "KITARA_DB_POOL_SIZE is {pool}, but {writers} writer(s) need at least {needed} connections: two each (its transaction, and the next one while a transaction it gave up still ends) and two for stock reloads and lookups"
    )]
    PoolTooSmall {
        pool: u32,
        writers: u32,
        needed: u32,
    },
    #[error(transparent)]
    AdminToken(#[from] crate::app::admin::TokenError),
    #[error("cannot reserve order ids: {0}")]
    Ids(crate::db::write::PersistError),
    #[error("cannot adopt the products made by SQL into the ledger: {0}")]
    Adopt(crate::db::write::PersistError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Webhook(#[from] WebhookError),
    #[error("KITARA_WEBHOOK_URL needs events: KITARA_EVENTS must not be false")]
    WebhookWithoutEvents,
    #[error("cannot join the cluster: {0}")]
    Join(#[from] JoinError),
    #[error(
        "another kitara serves {path} already; on SQLite one process serves the database (run several nodes on MySQL)"
    )]
    SqliteInUse { path: String },
    #[error("cannot lock {path}: {source}")]
    SqliteLock {
        path: String,
        source: std::io::Error,
    },
}

/// A Kitara ready to serve: everything loaded, the port bound.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    db: DatabaseConnection,
    writers: Vec<JoinHandle<()>>,
    /// MySQL: the task that keeps this node's share of the stores, and its stop.
    manager: Option<(JoinHandle<()>, Arc<Notify>)>,
    /// SQLite: the lock that keeps a second `serve` off the file, held until exit.
    sqlite_lock: Option<std::fs::File>,
    purger: JoinHandle<()>,
    events_purger: JoinHandle<()>,
    /// The webhooks' supervisor, when `KITARA_WEBHOOK_URL` is set.
    deliverers: Option<JoinHandle<()>>,
    prober: JoinHandle<()>,
    summariser: JoinHandle<()>,
    server: ServerConfig,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// As `build`, with the clock holds are timed by (tests pass a manual one).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new(settings.metrics, http::route_labels()));
        let counted = metrics.clone();
        let db = db::connect_watched(
            &settings.database,
            Arc::new(move || counted.db_error(DbError::OutOfStep)),
        )
        .await?;
        let mysql = db.get_database_backend() == DbBackend::MySql;
        // On SQLite one process serves every store: a second one is refused here.
        let sqlite_lock = if mysql {
            None
        } else {
            lock_sqlite(&settings.database.database_url)?
        };
        db::prepare_for_serve(&db).await?;
        let webhook = WebhookConfig::new(
            settings.webhook_url.as_deref(),
            settings.webhook_secret.as_deref(),
            settings.webhook_timeout,
        )?;
        if webhook.is_some() && !settings.events {
            return Err(StartupError::WebhookWithoutEvents);
        }
        if mysql {
            enough_connections(settings.database.db_pool_size, settings.writers)?;
        }
        let listener = bind(&settings.host, settings.port)
            .await
            .map_err(|source| StartupError::Bind {
                addr: format!("{}:{}", settings.host, settings.port),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: format!("{}:{}", settings.host, settings.port),
            source,
        })?;

        let answer_within = settings.database.acquire_timeout;
        let node = Node {
            id: settings
                .node_id
                .clone()
                .unwrap_or_else(|| default_node_id(addr.port())),
            advertise_url: settings
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{}:{}", settings.host, addr.port())),
            incarnation: incarnation(),
        };
        let admin_token =
            AdminToken::new(settings.admin_token.as_deref()).map_err(StartupError::AdminToken)?;
        let catalog = Arc::new(Catalog::new(load::products(&db).await?));
        let users = Arc::new(KnownUsers::new(load::user_ids(&db).await?, db.clone()));
        let writers = if mysql { settings.writers as usize } else { 1 };
        let galera = db::is_galera(&db).await;
        if galera {
            tracing::info!(
                "the database is a Galera node: reads wait for the cluster's commits (wsrep_sync_wait = 1), a transaction's statements go one request each, and /readyz follows the node's wsrep_ready and wsrep_local_state"
            );
        }
        let (writer, writer_tasks) = writer::spawn(
            db.clone(),
            WriterConfig {
                batch_size: settings.batch_size as usize,
                queue: settings.writer_queue as usize,
                answer_within: settings.database.acquire_timeout,
                stock_guard: settings.database_guard,
                statements_apart: galera,
                outcome_deadline: settings.outcome_deadline,
                writers,
                metrics: metrics.clone(),
                node: mysql.then(|| node.id.clone()),
            },
        )
        .await
        .map_err(StartupError::Ids)?;

        let live = Arc::new(LiveHolds::default());
        let feed = Arc::new(Feed::default());
        let shared = Shared {
            catalog: catalog.clone(),
            metrics: metrics.clone(),
            writer,
            db: db.clone(),
            clock: clock.clone(),
            registry: Arc::new(Registry::default()),
            live: live.clone(),
            feed: settings.events.then(|| feed.clone()),
        };
        let adopted = adopt(&shared.writer).await.map_err(StartupError::Adopt)?;
        if adopted > 0 {
            tracing::info!(
                products = adopted,
                "adopted products made by SQL into the ledger"
            );
        }

        let actor_config = ActorConfig {
            mailbox: settings.mailbox_size as usize,
            batch_size: settings.batch_size as usize,
            memory_check: settings.memory_check,
        };
        let store_rows = load::store_rows(&db).await?;

        let peers = Peers::new(answer_within + settings.outcome_deadline + FORWARD_MARGIN);
        let cluster = Arc::new(Cluster::new(
            node,
            settings.lease,
            !mysql,
            Spawner {
                shared,
                config: actor_config,
            },
            peers,
            metrics.clone(),
        ));
        let manager = if mysql {
            // The heartbeat and the looks have connections of their own: a pool busy
            // with orders must never cost a node its leases.
            let mut own = settings.database.clone();
            own.db_pool_size = 2;
            let counted = metrics.clone();
            let cluster_db =
                db::connect_watched(&own, Arc::new(move || counted.db_error(DbError::OutOfStep)))
                    .await?;
            let manager = Manager::join(cluster_db, cluster.clone())
                .await
                .map_err(StartupError::Join)?;
            Some(manager)
        } else {
            // One process serves every store; every live store gets an actor, with
            // products or not: the admin API may add some.
            let mut states = load::stores(&db, None).await?;
            for row in &store_rows {
                let store = StoreId(row.id);
                let state = states.remove(&store).unwrap_or_default();
                if let Some(handle) = cluster.start(store, None, state) {
                    cluster.serve(store, handle);
                }
            }
            None
        };
        tracing::info!(
            node = %cluster.node.id,
            stores = cluster.stores().len(),
            products = catalog.snapshot().len(),
            "loaded stock and holds"
        );

        // What the writers leave of the pool (see `enough_connections`).
        let reads = Reads::new(
            db.clone(),
            (settings.database.db_pool_size as usize)
                .saturating_sub(2 * writers + 2)
                .max(2),
        );
        let events_reads = reads.clone();
        let webhooks = webhook.map(|config| {
            Webhooks::new(
                config,
                db.clone(),
                cluster.clone(),
                feed.clone(),
                metrics.clone(),
            )
        });
        let closing = tokio::sync::watch::Sender::new(false);
        let state = Arc::new(AppState {
            orders: Orders {
                catalog: catalog.clone(),
                live,
                metrics: metrics.clone(),
                cluster: cluster.clone(),
                users: users.clone(),
                memory_check: settings.memory_check,
                clock: clock.clone(),
                default_hold_seconds: settings.hold_seconds,
                keys: InFlightKeys::default(),
                reads: reads.clone(),
                answer_within,
            },
            admin: Admin {
                token: admin_token,
                store_rows: Admin::live_stores(store_rows),
                catalog: catalog.clone(),
                cluster: cluster.clone(),
                users,
                reads,
                answer_within,
                keys: InFlightKeys::default(),
            },
            webhooks: webhooks.clone(),
            events: Events {
                feed,
                reads: events_reads,
                cluster: cluster.clone(),
                closing: closing.subscribe(),
                answer_within,
            },
            closing,
            catalog,
            cluster,
            clock,
            readiness: Arc::new(Readiness::default()),
            metrics,
        });
        // Holds that fell due while Kitara was down expire before any store serves; the
        // others keep their deadline. (On MySQL each store's taker did this.)
        state.settle_due().await;
        let manager = manager.map(Manager::spawn);
        let prober = health::spawn_prober(db.clone(), galera, state.readiness.clone());
        let summariser = logs::spawn_summariser();

        Ok(Self {
            listener,
            addr,
            state,
            purger: keys::spawn_purger(db.clone(), settings.idempotency_keep()),
            events_purger: events::spawn_purger(db.clone(), settings.events_keep()),
            deliverers: webhooks.as_ref().map(Webhooks::spawn),
            prober,
            summariser,
            db,
            writers: writer_tasks,
            manager,
            sqlite_lock,
            server: ServerConfig {
                max_connections: settings.max_connections.max(1) as usize,
                request_timeout: settings.request_timeout,
                shutdown_timeout: settings.shutdown_timeout,
            },
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What the front end shares: the stores, the catalog, the clock.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves; then drains requests in flight, lets every
    /// actor settle its orders and the writer commit what it holds, and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(address = %self.addr, node = %self.state.cluster.node.id, "listening");
        let shutdown_timeout = self.server.shutdown_timeout;
        let cluster = self.state.cluster.clone();
        // A node whose id another start took stops as if told to.
        let shutdown = async {
            tokio::select! {
                () = shutdown => {}
                () = cluster.evicted() => {}
            }
        };
        http::serve(self.listener, self.state.clone(), self.server, shutdown).await;
        self.purger.abort();
        self.events_purger.abort();
        if let Some(deliverers) = &self.deliverers {
            deliverers.abort();
        }
        self.prober.abort();
        if let Some((task, stop)) = self.manager {
            stop.notify_one();
            let _ = task.await;
        }
        // Dropping the handles closes every mailbox: each actor settles what it holds
        // and stops, which drops the last writer handles, which stops the writer.
        for actor in cluster.close() {
            let _ = actor.await;
        }
        for writer in self.writers {
            let _ = writer.await;
        }
        // Everything this node decided is committed: the others may take its stores.
        if !cluster.is_solo() {
            Manager::leave(&self.db, &cluster).await;
        }
        // Closing the pool waits for every connection to close gracefully; one left
        // talking to an unreachable database must not hold up the exit.
        if tokio::time::timeout(shutdown_timeout, self.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still closing after the shutdown timeout");
        }
        drop(self.sqlite_lock);
        self.summariser.abort();
        tracing::info!("stopped");
    }
}

/// Start-up: gives every product without a ledger (made by SQL) its `adopted` row, so
/// that `kitara check` can prove its stock from then on. Returns how many.
async fn adopt(writer: &WriterHandle) -> Result<i64, PersistError> {
    let answer_by = tokio::time::Instant::now() + writer.answer_within();
    match writer
        .write(
            Write::Admin {
                change: AdminWrite::Adopt,
                event: None,
                key: None,
            },
            answer_by,
        )
        .await?
    {
        Written::Admin(adopted) => Ok(adopted),
        _ => Err(PersistError::Unavailable),
    }
}

/// What a forwarded request may take beyond its owner's own bound (the acquire timeout
/// plus the outcome deadline) before the forwarding node gives up on it.
const FORWARD_MARGIN: Duration = Duration::from_secs(2);

/// The lock that keeps a second `serve` off a SQLite file: an exclusive lock on the
/// database file itself (`flock`, which SQLite's own locks do not touch), held until
/// the process ends. `None` for an in-memory database.
fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>, StartupError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || path.starts_with("file:") {
        return Ok(None);
    }
    let file = std::fs::File::open(path).map_err(|source| StartupError::SqliteLock {
        path: path.to_owned(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartupError::SqliteInUse {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartupError::SqliteLock {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The default node id: this machine's host name and the port (SPEC.md).
fn default_node_id(port: u16) -> NodeId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(240)
        .collect();
    let host = if host.is_empty() {
        "kitara".to_owned()
    } else {
        host
    };
    NodeId::parse(&format!("{host}:{port}")).unwrap_or_else(|_| {
        unreachable!("a host name cut to letters, digits, '.' and '-' is a node id")
    })
}

/// A number for this start of the node, never 0 (0 marks a node that left).
fn incarnation() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (i64::try_from(nanos % (i64::MAX as u128)).unwrap_or(1) ^ i64::from(std::process::id())).max(1)
}

/// Connections a burst may open before Kitara accepts them (tokio's default is 1,024).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the host resolves to no address")))
}

/// On MySQL every writer holds a pooled connection for its transaction (in flight, or
/// chained and waiting for the next batch), and one more for the next transaction while
/// a transaction it gave up still ends on its own task; stock reloads, user lookups and
/// outcome lookups need connections besides. With fewer, writers could hold the whole
/// pool and every store would stall on its next reload.
fn enough_connections(pool: u32, writers: u32) -> Result<(), StartupError> {
    let needed = 2 * writers + 2;
    if pool < needed {
        return Err(StartupError::PoolTooSmall {
            pool,
            writers,
            needed,
        });
    }
    Ok(())
}

/// The Tokio runtime `kitara serve` runs on: `worker_threads` threads, or one per core
/// when it is 0. The benchmark builds Kitara's runtime with this too.
pub fn runtime(worker_threads: u32) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads as usize);
    }
    builder.thread_name("kitara-worker").enable_all().build()
}

/// `kitara serve`: runs until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> Result<(), StartupError> {
    let app = Application::build(settings).await?;
    app.run_until(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

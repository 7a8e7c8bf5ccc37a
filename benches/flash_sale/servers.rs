//! The servers under load, started in-process on the server runtime: Kitara as
//! shipped, and the row-lock baseline a careful conventional service would be.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kitara::config::Settings;
use kitara::http::response;
use kitara::startup::Application;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::db::BenchDb;
use crate::followers::{self, Attached};
use crate::server_runtime;

/// What serves a workload: Kitara as shipped, or a baseline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    Kitara,
    /// Kitara with `KITARA_METRICS=false`: what recording metrics costs.
    KitaraWithoutMetrics,
    /// Kitara with `KITARA_EVENTS=false`: what recording every change as an event costs.
    KitaraWithoutEvents,
    /// Kitara with 100 followers of the hot store's stream and a webhook receiver.
    KitaraFollowed,
    RowLock,
    /// Three Kitara nodes on one MySQL database, each owning its share of the stores;
    /// the load goes to all three, so two requests in three are forwarded.
    KitaraThreeNodes,
}

pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// The other nodes of a cluster.
    others: Vec<Running>,
    /// What follows the server's events (`KitaraFollowed`).
    pub(crate) attached: Option<Attached>,
}

impl Running {
    /// Builds and starts the server on the server runtime, so that its listener, pool
    /// and tasks all belong to that runtime.
    pub(crate) async fn start(db: &BenchDb, server: Server) -> Self {
        if server == Server::KitaraThreeNodes {
            return Self::cluster(db, 3).await;
        }
        let mut settings = Settings::local(&db.url);
        settings.metrics = server != Server::KitaraWithoutMetrics;
        settings.events = server != Server::KitaraWithoutEvents;
        let receiver = if server == Server::KitaraFollowed {
            let (url, seen, task) = Attached::receiver().await;
            settings.admin_token = Some(followers::TOKEN.into());
            settings.webhook_url = Some(url);
            settings.webhook_secret = Some(followers::SECRET.into());
            Some((seen, task))
        } else {
            None
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (addr, task) = server_runtime()
            .spawn(async move {
                match server {
                    Server::Kitara
                    | Server::KitaraWithoutMetrics
                    | Server::KitaraWithoutEvents
                    | Server::KitaraFollowed
                    | Server::KitaraThreeNodes => {
                        let app = Application::build(settings).await.expect("build Kitara");
                        let addr = app.addr();
                        (addr, tokio::spawn(app.run_until(stopped)))
                    }
                    Server::RowLock => {
                        let pool = kitara::db::connect(&settings.database)
                            .await
                            .expect("connect");
                        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                        let addr = listener.local_addr().expect("address");
                        (addr, tokio::spawn(row_lock_server(listener, pool, stopped)))
                    }
                }
            })
            .await
            .expect("start the server");
        Running {
            addr,
            stop,
            task,
            others: Vec::new(),
            attached: receiver.map(|(seen, task)| Attached::follow(addr, 1, seen, task)),
        }
    }

    /// `nodes` Kitara nodes on `db` (each named by its port), started one after the
    /// other; answers once every store is owned by one of them and each has loaded its
    /// share, so that the load meets a settled cluster.
    async fn cluster(db: &BenchDb, nodes: usize) -> Self {
        assert!(db.mysql, "a cluster needs MySQL");
        let mut first = Box::pin(Self::start(db, Server::Kitara)).await;
        for _ in 1..nodes {
            first
                .others
                .push(Box::pin(Self::start(db, Server::Kitara)).await);
        }
        let started = std::time::Instant::now();
        loop {
            let (owners, unowned) = db.owners().await;
            let mut ready = true;
            for addr in first.addrs() {
                ready &= readyz(addr).await;
            }
            if owners == nodes && unowned == 0 && ready {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the cluster did not settle: {owners} owners, {unowned} stores unowned"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        first
    }

    /// Every node's address: the load goes to all of them.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.others.iter().map(|o| o.addr))
            .collect()
    }

    pub(crate) async fn stop(self) {
        if let Some(attached) = &self.attached {
            attached.stop();
        }
        for other in self.others {
            Box::pin(other.stop()).await;
        }
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Whether the node at `addr` answers `/readyz` with 200 (it has loaded what it owns).
async fn readyz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_end(&mut answer).await.is_ok()
        && answer.starts_with(b"HTTP/1.1 200")
}

/// The baseline: what a careful conventional service does. One transaction per order
/// that locks the order's product rows (`SELECT … FOR UPDATE`), checks the stock, then
/// decrements and inserts; no actor, no batching. Same pool and connection settings as
/// Kitara, served by the same kind of hyper server.
pub(crate) async fn row_lock_server(
    listener: TcpListener,
    pool: DatabaseConnection,
    stop: impl std::future::Future<Output = ()>,
) {
    let pool = Arc::new(pool);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut stop => break,
        };
        stream.set_nodelay(true).ok();
        let pool = pool.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let pool = pool.clone();
            async move { Ok::<_, Infallible>(row_lock_order(&pool, request).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

pub(crate) async fn row_lock_order(
    pool: &DatabaseConnection,
    request: Request<Incoming>,
) -> Response<response::Body> {
    let refuse = |status, message: &str| response::json::<()>(status, message, None);
    let Ok(body) = request.into_body().collect().await else {
        return refuse(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "request body must be one JSON object",
        );
    };
    let buyer = value["user_id"].as_i64().unwrap_or(0);
    let mut lines: BTreeMap<i64, i64> = BTreeMap::new();
    for line in value["products"].as_array().into_iter().flatten() {
        *lines
            .entry(line["product_id"].as_i64().unwrap_or(0))
            .or_insert(0) += line["quantity"].as_i64().unwrap_or(0);
    }
    match row_lock_transaction(pool, buyer, &lines).await {
        Ok(Some((order_id, store))) => response::json(
            StatusCode::OK,
            "OK",
            Some(serde_json::json!({"order_id": order_id, "store_id": store})),
        ),
        Ok(None) => refuse(StatusCode::BAD_REQUEST, "all product not available"),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

pub(crate) async fn row_lock_transaction(
    pool: &DatabaseConnection,
    buyer: i64,
    lines: &BTreeMap<i64, i64>,
) -> Result<Option<(i64, i64)>, sea_orm::DbErr> {
    let backend = pool.get_database_backend();
    let txn = pool
        .begin_with_options(kitara::db::write_transaction_options())
        .await?;
    let mut store = 0;
    for (&product, &quantity) in lines {
        let sql = match backend {
            DbBackend::MySql => {
                "SELECT current_stock, store_id FROM products WHERE id = ? FOR UPDATE"
            }
            _ => "SELECT current_stock, store_id FROM products WHERE id = ?",
        };
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [Value::from(product)],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stock: i64 = row.try_get_by_index(0)?;
        store = row.try_get_by_index(1)?;
        if stock < quantity {
            return Ok(None);
        }
    }
    let now = chrono::Utc::now().naive_utc();
    for (&product, &quantity) in lines {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "UPDATE products SET current_stock = current_stock - ?, updated_at = ? WHERE id = ?",
            [quantity.into(), now.into(), product.into()],
        ))
        .await?;
    }
    let total: i64 = lines.values().sum();
    let order = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO orders (buyer_id, quantity, store_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [buyer.into(), total.into(), store.into(), now.into(), now.into()],
        ))
        .await?;
    let order_id = order.last_insert_id() as i64;
    for (&product, &quantity) in lines {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO order_details (order_id, product_id, quantity, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [order_id.into(), product.into(), quantity.into(), now.into(), now.into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(Some((order_id, store)))
}

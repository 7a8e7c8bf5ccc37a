use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kitara::app::AppState;
use kitara::clock::Clock;
use kitara::config::Settings;
use kitara::startup::Application;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// Runs each named test once per backend: `sqlite::name` and `mysql::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::Backend::Mysql.available() {
                        super::$name($crate::helpers::Backend::Mysql).await
                    }
                }
            )*
        }
    };
}

/// Tests that only MariaDB can run: `name => body;`, each a test that runs its body when
/// `KITARA_TEST_MYSQL_URL` is set (and fails under `CI=true` when it is not).
#[macro_export]
macro_rules! on_mysql {
    ($($name:ident => $body:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $crate::helpers::Backend::Mysql.available() {
                    $body
                }
            }
        )*
    };
}

/// A tool a test drives (chromedriver, schemathesis): the path in `var`, or `name` on
/// the `PATH`. Missing, the test is skipped, as the MariaDB tests are, except under
/// `CI=true`, where it fails with `install`.
pub fn tool(var: &str, name: &str, install: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    runnable(
        found.is_some(),
        &format!("CI=true but {name} is not installed ({install}, or set {var})"),
        &format!("skipping a test: {name} is not on the PATH (nor in {var})"),
    );
    found
}

/// Whether a test that needs what was `found` can run. When it cannot, it is skipped
/// on a workstation (saying `skipping`), but fails under `CI=true` (saying `in_ci`):
/// CI must not pass a test it never ran.
pub fn runnable(found: bool, in_ci: &str, skipping: &str) -> bool {
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{in_ci}");
        eprintln!("{skipping}");
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
}

const MYSQL_URL_VAR: &str = "KITARA_TEST_MYSQL_URL";

impl Backend {
    /// Whether the tests of this backend can run. Without `KITARA_TEST_MYSQL_URL` the
    /// MariaDB tests pass as no-ops on a workstation, but fail under CI.
    pub fn available(self) -> bool {
        runnable(
            self == Backend::Sqlite || std::env::var(MYSQL_URL_VAR).is_ok(),
            &format!("CI=true but {MYSQL_URL_VAR} is not set: the MariaDB tests cannot run"),
            &format!("skipping a MariaDB test: {MYSQL_URL_VAR} is not set"),
        )
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "kitara_test_{:x}_{:x}_{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of the test's own, dropped when the test ends.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: String,
    /// The SQLite file lives in here.
    _dir: Option<tempfile::TempDir>,
    pub conn: DatabaseConnection,
}

impl TestDb {
    /// A new, empty database with Kitara's schema (no demo data).
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::create(backend, None).await,
            Backend::Mysql => {
                let base = std::env::var(MYSQL_URL_VAR).expect("checked by available()");
                Self::create(backend, Some(&base)).await
            }
        }
    }

    /// A new, empty database with Kitara's schema on the MySQL server at `base` (a URL
    /// without a database), such as a test's private one.
    pub async fn on_server(base: &str) -> Self {
        Self::create(Backend::Mysql, Some(base)).await
    }

    async fn create(backend: Backend, base: Option<&str>) -> Self {
        let name = unique_name();
        let (url, dir) = match base {
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path: PathBuf = dir.path().join("kitara.db");
                (format!("sqlite://{}", path.display()), Some(dir))
            }
            Some(base) => {
                let base = base.trim_end_matches('/').to_owned();
                let admin = Database::connect(&base).await.expect("connect to MariaDB");
                admin
                    .execute_unprepared(&format!(
                        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                    ))
                    .await
                    .expect("create the test database");
                admin.close().await.ok();
                (format!("{base}/{name}"), None)
            }
        };
        let args = database_args(&url);
        let conn = kitara::db::connect(&args).await.expect("connect");
        kitara::db::migrate_and_seed(&conn, false)
            .await
            .expect("migrate");
        Self {
            backend,
            url,
            name,
            _dir: dir,
            conn,
        }
    }

    /// The URL of this database on another server (a node of the same cluster).
    pub fn url_on(&self, base: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.name)
    }

    /// A database with the demo data of `kitara migrate`.
    pub async fn with_demo_data(backend: Backend) -> Self {
        let db = Self::new(backend).await;
        kitara::db::migrate_and_seed(&db.conn, true)
            .await
            .expect("seed");
        db
    }

    /// A fresh pool, for a test that killed the connections of the old one.
    pub async fn reconnect(&mut self) {
        let conn = kitara::db::connect(&database_args(&self.url))
            .await
            .expect("reconnect");
        std::mem::replace(&mut self.conn, conn).close().await.ok();
    }

    pub async fn exec(&self, sql: &str) {
        self.conn
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The rows `sql` reads.
    async fn rows(&self, sql: &str) -> Vec<sea_orm::QueryResult> {
        self.conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                sql,
            ))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn query_i64s(&self, sql: &str) -> Vec<Vec<i64>> {
        self.rows(sql)
            .await
            .iter()
            .map(|row| {
                (0..)
                    .map_while(|i| row.try_get_by_index::<i64>(i).ok())
                    .collect()
            })
            .collect()
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.query_i64s(&format!("SELECT COUNT(*) FROM {table}"))
            .await[0][0]
    }

    /// Stock per product id.
    pub async fn stocks(&self) -> BTreeMap<i64, i64> {
        self.query_i64s("SELECT id, current_stock FROM products")
            .await
            .into_iter()
            .map(|r| (r[0], r[1]))
            .collect()
    }

    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            stocks: self.stocks().await,
            orders: self.count("orders").await,
            details: self.count("order_details").await,
        }
    }

    /// Units per product held or sold: the lines of live orders (locked or confirmed).
    pub async fn held_or_sold(&self) -> BTreeMap<i64, i64> {
        self.query_i64s(
            "SELECT d.product_id, CAST(SUM(d.quantity) AS SIGNED) FROM order_details d \
             JOIN orders o ON o.id = d.order_id WHERE o.deleted_at IS NULL \
             AND o.status IN ('locked', 'confirmed') GROUP BY d.product_id",
        )
        .await
        .into_iter()
        .map(|r| (r[0], r[1]))
        .collect()
    }

    /// `kitara check`'s verdict on this database: the products whose ledger does not
    /// add up.
    pub async fn unbalanced(&self) -> Vec<kitara::db::check::Balance> {
        let balances = kitara::db::check::balances(&self.conn)
            .await
            .expect("check");
        assert!(!balances.is_empty(), "no products to check");
        balances.into_iter().filter(|b| !b.holds()).collect()
    }

    /// The status of an order, as stored.
    pub async fn status(&self, order_id: i64) -> String {
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                format!("SELECT status FROM orders WHERE id = {order_id}"),
            ))
            .await
            .expect("status");
        rows.first()
            .map(|r| r.try_get_by_index::<String>(0).expect("status text"))
            .unwrap_or_else(|| "missing".into())
    }

    /// The invariants of SPEC.md, given each product's stock before any order (and no
    /// restock since): no oversell (initial stock = current stock + the lines of live
    /// orders, locked or confirmed), no negative stock, and every order whole.
    pub async fn assert_invariants(&self, initial: &BTreeMap<i64, i64>) {
        let stocks = self.stocks().await;
        let sold = self.held_or_sold().await;
        for (product, &start) in initial {
            let now = stocks[product];
            let sold = sold.get(product).copied().unwrap_or(0);
            assert!(now >= 0, "product {product} has negative stock {now}");
            assert_eq!(
                start,
                now + sold,
                "product {product}: initial {start} != current {now} + sold {sold}"
            );
        }
        let broken = self
            .query_i64s(
                "SELECT o.id FROM orders o LEFT JOIN order_details d ON d.order_id = o.id \
                 GROUP BY o.id, o.quantity HAVING COUNT(d.id) = 0 OR SUM(d.quantity) <> o.quantity",
            )
            .await;
        assert!(broken.is_empty(), "orders not whole: {broken:?}");
        let foreign = self
            .query_i64s(
                "SELECT d.id FROM order_details d JOIN orders o ON o.id = d.order_id \
                 JOIN products p ON p.id = d.product_id WHERE p.store_id <> o.store_id",
            )
            .await;
        assert!(
            foreign.is_empty(),
            "details outside their order's store: {foreign:?}"
        );
    }

    /// The end of a burst: the invariants hold (from `initial`), and `api` lists the
    /// stock the database holds, so that no answer came from a memory that drifted.
    pub async fn assert_settled(&self, initial: &BTreeMap<i64, i64>, api: &Api) {
        self.assert_invariants(initial).await;
        assert_eq!(api.listed_stocks().await, self.stocks().await);
    }

    /// Checks that an order answered 200 is stored exactly as answered.
    pub async fn assert_order_stored(&self, answer: &Value, buyer: i64) {
        let data = &answer["data"];
        let order_id = data["order_id"].as_i64().expect("order_id");
        let details = data["order_details"].as_array().expect("order_details");
        let order = self
            .query_i64s(&format!(
                "SELECT buyer_id, quantity FROM orders WHERE id = {order_id}"
            ))
            .await;
        let total: i64 = details
            .iter()
            .map(|d| d["quantity"].as_i64().unwrap())
            .sum();
        assert_eq!(order, vec![vec![buyer, total]], "order {order_id}");
        let stored = self
            .query_i64s(&format!(
                "SELECT id, product_id, quantity FROM order_details WHERE order_id = {order_id} ORDER BY product_id"
            ))
            .await;
        let answered: Vec<Vec<i64>> = details
            .iter()
            .map(|d| {
                vec![
                    d["order_detail_id"].as_i64().unwrap(),
                    d["product_id"].as_i64().unwrap(),
                    d["quantity"].as_i64().unwrap(),
                ]
            })
            .collect();
        assert_eq!(stored, answered, "details of order {order_id}");
    }

    /// `assert_order_stored` for many orders at once, in two reads: each order answered
    /// 200 (with its buyer) is stored exactly as answered.
    pub async fn assert_orders_stored(&self, answered: &[(i64, &Value)]) {
        let orders: BTreeMap<i64, (i64, i64)> = self
            .query_i64s("SELECT id, buyer_id, quantity FROM orders")
            .await
            .into_iter()
            .map(|r| (r[0], (r[1], r[2])))
            .collect();
        let mut details: BTreeMap<i64, Vec<Vec<i64>>> = BTreeMap::new();
        for r in self
            .query_i64s(
                "SELECT order_id, id, product_id, quantity FROM order_details ORDER BY order_id, product_id",
            )
            .await
        {
            details.entry(r[0]).or_default().push(r[1..].to_vec());
        }
        for &(buyer, answer) in answered {
            let data = &answer["data"];
            let order_id = data["order_id"].as_i64().expect("order_id");
            let lines: Vec<Vec<i64>> = data["order_details"]
                .as_array()
                .expect("order_details")
                .iter()
                .map(|d| {
                    ["order_detail_id", "product_id", "quantity"]
                        .iter()
                        .map(|field| d[*field].as_i64().unwrap())
                        .collect()
                })
                .collect();
            let total: i64 = lines.iter().map(|l| l[2]).sum();
            assert_eq!(
                orders.get(&order_id),
                Some(&(buyer, total)),
                "order {order_id}"
            );
            assert_eq!(
                details.get(&order_id),
                Some(&lines),
                "details of order {order_id}"
            );
        }
    }

    /// The first column of every row, as text.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .iter()
            .map(|r| r.try_get_by_index::<String>(0).expect("text"))
            .collect()
    }

    /// Every order's status, by id.
    pub async fn statuses(&self) -> BTreeMap<i64, String> {
        self.rows("SELECT id, status FROM orders")
            .await
            .iter()
            .map(|r| {
                (
                    r.try_get_by_index::<i64>(0).expect("id"),
                    r.try_get_by_index::<String>(1).expect("status"),
                )
            })
            .collect()
    }

    pub async fn drop_database(self) {
        if self.backend == Backend::Mysql {
            let name = self.name.clone();
            self.conn
                .execute_unprepared(&format!("DROP DATABASE `{name}`"))
                .await
                .ok();
        }
        self.conn.close().await.ok();
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stocks: BTreeMap<i64, i64>,
    pub orders: i64,
    pub details: i64,
}

pub fn database_args(url: &str) -> kitara::config::DatabaseArgs {
    settings(url).database
}

pub fn settings(url: &str) -> Settings {
    let mut settings = Settings::local(url);
    settings.database.db_pool_size = 8;
    // One id for every start in a test: a restart takes over its predecessor's stores
    // at once, as a node restarted with its id does.
    settings.node_id = Some(kitara::domain::NodeId::parse(TEST_NODE).expect("a node id"));
    settings
}

/// The node id of every Kitara a test starts, unless it says otherwise.
pub const TEST_NODE: &str = "test-node";

/// An HTTP client for one Kitara, in-process or not.
pub struct Api {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Kitara running in-process; derefs to its `Api`.
pub struct TestApp {
    api: Api,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The admin token of `spawn_admin_app`.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Starts Kitara in-process with the admin API on (`ADMIN_TOKEN`).
pub async fn spawn_admin_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |s| s.admin_token = Some(ADMIN_TOKEN.into())).await
}

/// Starts Kitara in-process on a random port against `db`.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_at(db, Clock::system(), tweak).await
}

/// A manual clock, as the tests of holds use it: it moves only when told. It starts on
/// a whole second, so a hold of N seconds ends exactly N seconds later.
pub fn manual_clock() -> Clock {
    let now = chrono::Utc::now().timestamp();
    Clock::manual(chrono::DateTime::from_timestamp(now, 0).expect("now"))
}

/// Starts Kitara in-process with holds timed by `clock`.
pub async fn spawn_app_at(db: &TestDb, clock: Clock, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        kitara::telemetry::init(kitara::config::LogFormat::Text);
    }
    let mut settings = settings(&db.url);
    tweak(&mut settings);
    let app = Application::build_with_clock(settings, clock)
        .await
        .expect("build Kitara");
    let addr = app.addr();
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        api: Api::new(addr),
        state,
        stop: Some(stop),
        task,
    }
}

impl TestApp {
    /// Stops an app that concurrent requests shared, once they are all done.
    pub async fn stop_shared(app: Arc<TestApp>) {
        let Ok(app) = Arc::try_unwrap(app) else {
            panic!("the app is still shared");
        };
        app.stop().await;
    }

    /// Moves the manual clock and waits until every hold that fell due has expired.
    pub async fn advance(&self, by: std::time::Duration) {
        self.state.clock.advance(by);
        self.state.settle_due().await;
    }

    /// Graceful shutdown: waits until every actor settled and the writer stopped. A panic
    /// of the server is the test's panic.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build_http();
        Self { addr, client }
    }

    /// Like `lock`, but a connection that fails (a server killed mid-request) is `None`.
    /// An answer that arrives whole must be JSON.
    pub async fn try_lock(&self, body: &Value) -> Option<(StatusCode, Value)> {
        self.try_post("/api/v1/order/lock", body, None).await
    }

    /// A JSON POST (with the admin token, if given) whose connection may fail (a server
    /// killed mid-request): then `None`. An answer that arrives whole must be JSON.
    pub async fn try_post(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Option<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.ok()?;
        let status = response.status();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        Some((status, value))
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        self.send(builder.body(Full::new(body.into())).unwrap())
            .await
    }

    /// A GET whose answer is text, such as `/metrics`.
    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(format!("http://{}{}", self.addr, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.expect("request");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A lock with `Idempotency-Key: key` (if given) whose connection may fail or hang (a
    /// node killed or paused): `None` then, or after `within`. An answer that arrives
    /// whole must be JSON.
    pub async fn try_lock_keyed(
        &self,
        body: &Value,
        key: Option<&str>,
        within: std::time::Duration,
    ) -> Option<(StatusCode, hyper::HeaderMap, Value)> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/api/v1/order/lock", self.addr))
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
            Some((status, headers, value))
        };
        tokio::time::timeout(within, exchange).await.ok().flatten()
    }

    /// Sends a request built by the test; the answer's status and JSON.
    pub async fn send_raw(&self, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
        let (status, _, value) = self.send(request).await;
        (status, value)
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Value) {
        let response = self.client.request(request).await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, headers, value)
    }

    /// An admin request with `ADMIN_TOKEN`; a body is sent as JSON.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, _, value) = self.admin_raw(method, path, Some(ADMIN_TOKEN), body).await;
        (status, value)
    }

    /// An admin request with `ADMIN_TOKEN` and `Idempotency-Key: key`; a body is sent as
    /// JSON, as it is written.
    pub async fn admin_keyed(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&str>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("idempotency-key", key);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let body = Bytes::from(body.unwrap_or_default().to_owned());
        self.send(builder.body(Full::new(body)).unwrap()).await
    }

    /// An admin request (as `admin`) that must be answered `expected`: the body, shown
    /// with the request when the status is another.
    pub async fn admin_expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> Value {
        let (status, answer) = self.admin(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        answer
    }

    /// An admin request as a client could write it: any token or none, any body bytes
    /// (sent as `application/json`).
    pub async fn admin_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Bytes>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        self.send(builder.body(Full::new(body.unwrap_or_default())).unwrap())
            .await
    }

    /// A JSON POST, with an `Idempotency-Key` if one is given.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json");
        if let Some(key) = key {
            // Raw bytes: a test may send what no well-behaved client would.
            let value =
                hyper::header::HeaderValue::from_bytes(key.as_bytes()).expect("header value");
            builder = builder.header("idempotency-key", value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(request).await
    }

    /// `POST /api/v1/order/{id}/confirm` or `/cancel` as `user`.
    pub async fn end(&self, id: i64, action: &str, user: i64) -> (StatusCode, Value) {
        let (status, _, body) = self
            .post(
                &format!("/api/v1/order/{id}/{action}"),
                &serde_json::json!({ "user_id": user }),
                None,
            )
            .await;
        (status, body)
    }

    /// `GET /api/v1/order/{id}`; the id may be anything a client could write.
    pub async fn get_order(&self, id: impl std::fmt::Display) -> (StatusCode, Value) {
        let (status, _, body) = self
            .request(
                Method::GET,
                &format!("/api/v1/order/{id}"),
                None,
                Bytes::new(),
            )
            .await;
        (status, body)
    }

    pub async fn lock(&self, body: &Value) -> (StatusCode, Value) {
        let (status, _, value) = self
            .request(
                Method::POST,
                "/api/v1/order/lock",
                Some("application/json"),
                body.to_string(),
            )
            .await;
        (status, value)
    }

    /// Stock per product as `GET /api/v1/products` lists it.
    pub async fn listed_stocks(&self) -> BTreeMap<i64, i64> {
        let (status, _, value) = self
            .request(Method::GET, "/api/v1/products", None, Bytes::new())
            .await;
        assert_eq!(status, StatusCode::OK);
        value["data"]
            .as_array()
            .expect("data array")
            .iter()
            .map(|p| {
                (
                    p["id"].as_i64().unwrap(),
                    p["current_stock"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// Sends raw bytes on a new connection and returns everything the server wrote
    /// before closing it (or within two seconds).
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Asserts an answer is a 503 that says `message` (its body shown if not).
#[track_caller]
pub fn assert_unavailable((status, body): &(StatusCode, Value), message: &str) {
    assert_eq!(
        (*status, body["message"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(message)),
        "{body}"
    );
}

/// The value of one series of `/metrics` text, such as
/// `kitara_database_errors_total{kind="refused"}`.
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Counts the answers 200 of concurrent requests; every other answer must be the 400
/// `refusal`.
pub async fn count_placed(
    answers: Vec<tokio::task::JoinHandle<(StatusCode, Value)>>,
    refusal: &str,
) -> usize {
    let mut placed = 0;
    for answer in answers {
        let (status, body) = answer.await.expect("a request task");
        match status {
            StatusCode::OK => placed += 1,
            _ => assert_eq!(
                (status, body["message"].as_str()),
                (StatusCode::BAD_REQUEST, Some(refusal)),
                "{body}"
            ),
        }
    }
    placed
}

/// `clients` customers ordering at once, each sending `orders` locks one after the
/// other (the body of client `c`'s `i`th is `body(c, i)`), as shoppers do who wait for
/// an answer before they order again: every answer, client by client.
pub async fn customers(
    app: &Arc<TestApp>,
    clients: i64,
    orders: i64,
    body: impl Fn(i64, i64) -> Value + Clone + Send + 'static,
) -> Vec<(StatusCode, Value)> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..orders {
                    answers.push(app.lock(&body(c, i)).await);
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("a client task"));
    }
    answers
}

/// A lock-order body.
pub fn order(user: i64, lines: &[(i64, i64)]) -> Value {
    serde_json::json!({
        "user_id": user,
        "products": lines.iter().map(|&(p, q)| serde_json::json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// A `kitara serve` started by a test: the process, a client, its log lines.
pub type Started = (
    tokio::process::Child,
    Api,
    tokio::sync::mpsc::UnboundedReceiver<String>,
);

/// The real binary, `kitara serve` on a free port against `url`, with `envs` besides
/// (text logs at `info` unless they say otherwise); its log lines are sent to the
/// receiver, and drained once it is dropped.
pub async fn start_kitara(url: &str, envs: &[(&str, &str)]) -> Started {
    start_kitara_with(&[], ("127.0.0.1", 0), url, envs).await
}

/// As `start_kitara`, listening on `host` and `port` (0: a free one), run by `launcher`
/// (a command and its arguments that run the program given after them, such as
/// `ip netns exec NS` or `faketime -f +5s`; none runs it directly).
pub async fn start_kitara_with(
    launcher: &[String],
    (host, port): (&str, u16),
    url: &str,
    envs: &[(&str, &str)],
) -> Started {
    let kitara = env!("CARGO_BIN_EXE_kitara");
    let mut command = match launcher.split_first() {
        Some((program, args)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(args).arg(kitara);
            command
        }
        None => tokio::process::Command::new(kitara),
    };
    let mut child = command
        .args(["serve", "--host", host, "--port", &port.to_string()])
        .env("DATABASE_URL", url)
        .env("KITARA_LOG", "info")
        .env("KITARA_LOG_FORMAT", "text")
        .env("KITARA_NODE_ID", TEST_NODE)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start kitara");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (send, mut receive) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = send.send(line);
        }
    });
    let prefix = format!("{host}:");
    let addr = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = receive.recv().await {
            if let Some(at) = line.find(&prefix)
                && line.contains("listening")
            {
                let addr: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                return addr.parse().expect("address");
            }
        }
        panic!("kitara exited before listening");
    })
    .await
    .expect("kitara listens within a minute");
    (child, Api::new(addr), receive)
}

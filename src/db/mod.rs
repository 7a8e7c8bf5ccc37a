//! The database: connecting, the schema, demo data, and the queries of the order path.
//!
//! Statements are plain SQL with `?` placeholders, which SQLite and MySQL both accept,
//! executed through SeaORM (`DatabaseConnection`, `DatabaseTransaction`).

pub mod call;
pub mod check;
pub mod events;
pub mod ids;
pub mod keys;
pub mod load;
pub mod owners;
pub mod persist;
mod seed;
mod sql;
pub mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::mysql::MySqlConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    SqliteTransactionMode, Statement, TransactionOptions, Value,
};

use crate::config::DatabaseArgs;

/// How long a SQLite connection waits for a lock held by another process (a tool
/// writing the file) before it gives up. Kitara itself has a single writer.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a pooled connection may sit idle before it is pinged on checkout.
pub(crate) const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Prepared statements each MySQL connection keeps. Kitara prepares only its reads, a
/// handful of shapes, so the cache never evicts (an eviction costs sqlx a "close
/// statement" round trip that stalls ~40 ms behind Nagle and delayed ACK). Times the
/// pool size it stays far below the server's `max_prepared_stmt_count` (16,382).
const MYSQL_STATEMENT_CACHE: usize = 256;

/// Told when the canary finds a connection out of step (the caller counts it).
pub type OutOfStep = Arc<dyn Fn() + Send + Sync>;

/// Opens the pool, for the tools (`migrate`, `check`) and tests: as `connect_watched`,
/// with nobody counting connections caught out of step.
pub async fn connect(args: &DatabaseArgs) -> Result<DatabaseConnection, DbErr> {
    connect_watched(args, Arc::new(|| {})).await
}

/// Opens the pool. SQLite gets WAL (readers never wait for the writer),
/// `synchronous=FULL` (an answered order survives power loss) and a busy timeout. A
/// MySQL connection given back to the pool must first prove it is in step with the
/// server (`in_step`); one that cannot is closed, and `out_of_step` is told.
pub async fn connect_watched(
    args: &DatabaseArgs,
    out_of_step: OutOfStep,
) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(args.database_url.clone());
    options
        .max_connections(args.db_pool_size.max(2))
        .min_connections(1)
        .acquire_timeout(args.acquire_timeout)
        .connect_timeout(args.acquire_timeout)
        // A ping on every checkout would add a round trip to every batch; ping only a
        // connection that sat idle long enough to have been dropped. A connection that
        // died while busy fails its statement, and the order path retries once.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            o.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        })
        .map_sqlx_mysql_opts(|o: MySqlConnectOptions| {
            o.statement_cache_capacity(MYSQL_STATEMENT_CACHE)
                .charset("utf8mb4")
        })
        .map_sqlx_mysql_pool_opts(move |pool| {
            let out_of_step = out_of_step.clone();
            pool.after_connect(|conn, _| Box::pin(async move { prepare_session(conn).await }))
                .after_release(move |conn, _| {
                    let out_of_step = out_of_step.clone();
                    Box::pin(async move {
                        match in_step(conn).await {
                            Ok(()) => Ok(true),
                            // sqlx closes it, quietly: the outage is logged elsewhere.
                            Err(CanaryError::Broken(_)) => Ok(false),
                            // sqlx drops it without a word to the server, which would read
                            // the words out of step too.
                            Err(e @ CanaryError::OutOfStep) => {
                                out_of_step();
                                Err(sea_orm::sqlx::Error::Protocol(e.to_string()))
                            }
                        }
                    })
                })
        });
    Database::connect(options).await
}

/// How long MariaDB lets a transaction that has written sit idle before it ends the
/// connection (and so the transaction, and its row locks).
const IDLE_WRITE_TIMEOUT_S: u32 = 1;

/// Sets up a new MySQL session.
///
/// A Kitara node paused, or cut off from the database, in the middle of a write keeps
/// its transaction open on the server, and with it the locks on its stores' ownership
/// and product rows: the node that takes such a store would wait for them, for as long
/// as the pause. MariaDB's `idle_write_transaction_timeout` ends such a transaction
/// after a second; a healthy writer is never idle mid-transaction for that long (it
/// sends its statements back to back; a transaction begun ahead has not written yet,
/// and is not ended). The fence keeps the stale writer out either way; this keeps the
/// new owner from waiting. MySQL has no such setting: there, a takeover may wait.
///
/// On a Galera node, `wsrep_sync_wait = 1` makes every read (and BEGIN) wait until the
/// node has applied everything the cluster committed before it: a store taken over is
/// loaded with its last owner's commits, an order locked through one node is found
/// through another, and an outcome looked up after a failed COMMIT is not a stale one.
/// Kitara's writes need no such wait: a store has one writer.
async fn prepare_session(
    conn: &mut sea_orm::sqlx::MySqlConnection,
) -> Result<(), sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Executor;
    let sql = format!("SET SESSION idle_write_transaction_timeout = {IDLE_WRITE_TIMEOUT_S}");
    match conn.execute(sea_orm::sqlx::AssertSqlSafe(sql)).await {
        Ok(_) => {}
        Err(sea_orm::sqlx::Error::Database(e)) => {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                tracing::warn!(error = %e, "the database cannot end idle write transactions (not MariaDB?): a node paused mid-write delays the takeover of its stores until its connection ends");
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    // `wsrep_on` is 0 on a MariaDB server outside a Galera cluster.
    match conn
        .execute("SET SESSION wsrep_sync_wait = IF(@@wsrep_on, 1, 0)")
        .await
    {
        Ok(_) | Err(sea_orm::sqlx::Error::Database(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a connection failed its release check; either way it is closed, not reused.
#[derive(Debug, thiserror::Error)]
enum CanaryError {
    /// It answered something other than what was asked: it is one answer behind.
    #[error("the connection was out of step with the server")]
    OutOfStep,
    /// It is broken (the server went away); nothing was misread.
    #[error("the connection is broken: {0}")]
    Broken(sea_orm::sqlx::Error),
}

/// The canary, run on every MySQL connection given back to the pool: it must answer a
/// number never asked before with that number. sqlx's own test, a ping, can be passed
/// by the stale answer of a ping that was cancelled; the stale answer of any call read
/// here gives no number, or another one, or a protocol error. So a connection one answer
/// behind is closed instead of being handed to the next caller (see `call`).
async fn in_step(conn: &mut sea_orm::sqlx::MySqlConnection) -> Result<(), CanaryError> {
    use sea_orm::sqlx::Error;
    static NONCE: AtomicI64 = AtomicI64::new(1);
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    let answer = sea_orm::sqlx::query_scalar::<_, i64>("SELECT ?")
        .bind(nonce)
        .fetch_optional(conn)
        .await;
    let misread = match answer {
        Ok(Some(echo)) if echo == nonce => return Ok(()),
        Err(
            e @ (Error::Io(_)
            | Error::Tls(_)
            | Error::Database(_)
            | Error::PoolTimedOut
            | Error::PoolClosed
            | Error::WorkerCrashed),
        ) => return Err(CanaryError::Broken(e)),
        Ok(answer) => format!("asked {nonce}, read {answer:?}"),
        Err(e) => e.to_string(),
    };
    crate::warn_summarised!(
        "a database connection was out of step",
        misread,
        "a database connection was out of step with the server; closed it"
    );
    Err(CanaryError::OutOfStep)
}

/// Why the schema is not ready to serve from.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error(
        "the database schema is missing or behind ({pending} pending migration(s)): run `kitara migrate` first"
    )]
    Behind { pending: usize },
}

/// `kitara migrate`: brings the schema up to date and, unless told not to, loads the
/// demo data into a database that has no stores yet. Running it again changes nothing.
pub async fn migrate(args: &DatabaseArgs, demo: bool) -> Result<(), SchemaError> {
    let db = connect(args).await?;
    migrate_and_seed(&db, demo).await?;
    db.close().await?;
    Ok(())
}

/// `kitara check`: every product's balance, read in one statement, and the orders
/// that keys name but that are missing (see `check`).
pub async fn check(args: &DatabaseArgs) -> Result<(Vec<check::Balance>, Vec<i64>), SchemaError> {
    let db = connect(args).await?;
    let balances = check::balances(&db).await;
    let orphans = check::orphan_keys(&db).await;
    db.close().await?;
    Ok((balances?, orphans?))
}

pub async fn migrate_and_seed(db: &DatabaseConnection, demo: bool) -> Result<(), SchemaError> {
    let pending = Migrator::get_pending_migrations(db).await?.len();
    Migrator::up(db, None).await?;
    tracing::info!(applied = pending, "schema is up to date");
    if demo && seed::load_demo_data(db).await? {
        tracing::info!("loaded the demo stores, products and users");
    }
    Ok(())
}

/// `sql` with its `?` values bound, for the connection's backend: how every read and
/// every statement that carries the owner's text is sent.
fn prepared(
    db: &impl ConnectionTrait,
    sql: impl Into<String>,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    Statement::from_sql_and_values(db.get_database_backend(), sql, values)
}

/// Before serving: SQLite databases are migrated (and seeded when empty) in place; a
/// MySQL schema that is missing or behind is refused, since migrating a production
/// database is a deliberate step (`kitara migrate`).
pub async fn prepare_for_serve(db: &DatabaseConnection) -> Result<(), SchemaError> {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            tracing::info!("embedded SQLite database: migrating and seeding it if needed");
            migrate_and_seed(db, true).await
        }
        _ => {
            let pending = Migrator::get_pending_migrations_read_only(db).await?.len();
            if pending > 0 {
                return Err(SchemaError::Behind { pending });
            }
            Ok(())
        }
    }
}

/// How every write transaction begins. On SQLite it takes the write lock at BEGIN
/// (`IMMEDIATE`), so the transaction never has to upgrade a read lock, which can fail
/// with `SQLITE_BUSY`.
pub fn write_transaction_options() -> TransactionOptions {
    TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    }
}

/// Whether the database itself refused a statement (a constraint, a CHECK, a duplicate
/// key, a deadlock or a Galera certification conflict), as opposed to the connection or
/// the pool failing. A refusal means the transaction did not commit and Kitara's memory
/// may be out of step with the database; a connection failure means the database could
/// not be reached. A Galera node outside the primary component answers every statement
/// with an error (1047, SQLSTATE class 08): that is the database unreachable, not a
/// refusal.
pub fn is_refusal(err: &DbErr) -> bool {
    database_error(err).is_some_and(|e| !e.code().is_some_and(|state| state.starts_with("08")))
}

/// Whether the transaction lost a conflict and was rolled back whole: a deadlock, or
/// (on Galera) a certification failure at COMMIT or an abort by a write set replicated
/// from another node. Nothing of it committed; written again, it may go through.
pub fn is_conflict(err: &DbErr) -> bool {
    database_error(err).is_some_and(|e| {
        e.code().as_deref() == Some("40001")
            || e.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| e.number() == ER_LOCK_DEADLOCK)
    })
}

/// MySQL's "Deadlock found when trying to get lock", which Galera also gives for a
/// certification failure.
const ER_LOCK_DEADLOCK: u16 = 1213;

fn database_error(err: &DbErr) -> Option<&(dyn sea_orm::sqlx::error::DatabaseError + 'static)> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => e.as_database_error(),
        _ => None,
    }
}

/// Whether this MySQL server is a node of a Galera cluster (`wsrep_on`). MySQL itself
/// has no such variable: not Galera.
pub async fn is_galera(db: &DatabaseConnection) -> bool {
    if db.get_database_backend() != DbBackend::MySql {
        return false;
    }
    let statement = Statement::from_string(DbBackend::MySql, "SELECT @@global.wsrep_on");
    match db.query_one_raw(statement).await {
        Ok(Some(row)) => row.try_get_by_index::<i64>(0).is_ok_and(|on| on != 0),
        _ => false,
    }
}

/// Whether a Galera node can take writes now: it is in the primary component
/// (`wsrep_ready`) and synced with it (`wsrep_local_state` 4). A node cut off from the
/// others' majority, or still catching up after a restart, is not.
pub async fn galera_synced(db: &DatabaseConnection) -> Result<bool, DbErr> {
    let statement = Statement::from_string(
        DbBackend::MySql,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')",
    );
    let rows = db.query_all_raw(statement).await?;
    let mut ready = false;
    let mut synced = false;
    for row in rows {
        let name: String = row.try_get_by_index(0)?;
        let value: String = row.try_get_by_index(1)?;
        match name.to_ascii_lowercase().as_str() {
            "wsrep_ready" => ready = value == "ON",
            "wsrep_local_state" => synced = value == "4",
            _ => {}
        }
    }
    Ok(ready && synced)
}

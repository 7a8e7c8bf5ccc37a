//! The cluster's tables (MySQL only; on SQLite one process serves every store): nodes
//! and their heartbeats, stores and their owners.
//!
//! Every time is the database's (`NOW(3)`), so nodes compare leases on one clock, and a
//! lease is a number of microseconds added to it. A takeover and a release are guarded
//! updates: the row changes only if it is still what the node saw, so two nodes that
//! try to take one store cannot both have it.

use std::time::Duration;

use chrono::NaiveDateTime;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, IsolationLevel,
    TransactionTrait, Value,
};

use super::sql::Sql;
use crate::domain::{NodeId, Seen, StoreId};

/// A node as `kitara_nodes` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub advertise_url: String,
    /// Which start of the node wrote the row; 0 once it left.
    pub incarnation: i64,
    pub last_seen: NaiveDateTime,
    /// Its heartbeat is younger than the lease, and it has not left.
    pub live: bool,
}

/// A store as `kitara_store_owners` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    pub store: StoreId,
    pub owner: Option<String>,
    pub epoch: i64,
    pub lease_expires_at: Option<NaiveDateTime>,
    /// No owner's lease covers it now, by the database's clock.
    pub lapsed: bool,
}

impl OwnerRow {
    pub fn seen(&self) -> Seen {
        Seen {
            store: self.store,
            owner: self.owner.clone(),
            epoch: self.epoch,
            lapsed: self.lapsed,
        }
    }
}

fn micros(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

const NODE_COLUMNS: &str = "SELECT node_id, advertise_url, incarnation, last_seen, \
     incarnation <> 0 AND last_seen > NOW(3) - INTERVAL ? MICROSECOND FROM kitara_nodes";

fn node_row(row: &sea_orm::QueryResult) -> Result<NodeRow, DbErr> {
    Ok(NodeRow {
        node_id: row.try_get_by_index(0)?,
        advertise_url: row.try_get_by_index(1)?,
        incarnation: row.try_get_by_index(2)?,
        last_seen: row.try_get_by_index(3)?,
        live: row.try_get_by_index::<i64>(4)? != 0,
    })
}

/// The row of `node`, if there is one.
pub async fn node(
    db: &impl ConnectionTrait,
    node: &NodeId,
    lease: Duration,
) -> Result<Option<NodeRow>, DbErr> {
    let sql = format!("{NODE_COLUMNS} WHERE node_id = ?");
    let values = [Value::from(micros(lease)), Value::from(node.as_str())];
    db.query_one_raw(super::prepared(db, sql, values))
        .await?
        .map(|row| node_row(&row))
        .transpose()
}

/// Every node, ascending id.
pub async fn nodes(db: &impl ConnectionTrait, lease: Duration) -> Result<Vec<NodeRow>, DbErr> {
    let sql = format!("{NODE_COLUMNS} ORDER BY node_id");
    let rows = db
        .query_all_raw(super::prepared(db, sql, [Value::from(micros(lease))]))
        .await?;
    rows.iter().map(node_row).collect()
}

/// Records this start of `node`, replacing an earlier one's row.
pub async fn register(
    db: &impl ConnectionTrait,
    node: &NodeId,
    advertise_url: &str,
    incarnation: i64,
) -> Result<(), DbErr> {
    let sql = "INSERT INTO kitara_nodes (node_id, advertise_url, incarnation, last_seen) \
               VALUES (?, ?, ?, NOW(3)) ON DUPLICATE KEY UPDATE \
               advertise_url = VALUES(advertise_url), incarnation = VALUES(incarnation), \
               last_seen = VALUES(last_seen)";
    let values = [
        Value::from(node.as_str()),
        Value::from(advertise_url),
        Value::from(incarnation),
    ];
    db.execute_raw(super::prepared(db, sql, values)).await?;
    Ok(())
}

/// The heartbeat: renews the node's row and, in the same transaction, the lease of
/// every store it owns (one statement, however many stores). `None` if another start
/// of the node has taken its id: this one must stop. Else the stores renewed.
pub async fn heartbeat(
    db: &DatabaseConnection,
    node: &NodeId,
    incarnation: i64,
    lease: Duration,
) -> Result<Option<u64>, DbErr> {
    let txn = scanning(db).await?;
    let sql = "UPDATE kitara_nodes SET last_seen = NOW(3) WHERE node_id = ? AND incarnation = ?";
    let values = [Value::from(node.as_str()), Value::from(incarnation)];
    if txn
        .execute_raw(super::prepared(&txn, sql, values))
        .await?
        .rows_affected()
        == 0
    {
        txn.rollback().await?;
        return Ok(None);
    }
    let sql = "UPDATE kitara_store_owners SET lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND \
               WHERE owner = ?";
    let values = [Value::from(micros(lease)), Value::from(node.as_str())];
    let renewed = txn
        .execute_raw(super::prepared(&txn, sql, values))
        .await?
        .rows_affected();
    txn.commit().await?;
    Ok(Some(renewed))
}

/// Gives every live store a row in the ownership table: stores made by the migration's
/// time have one, stores made later by a tool may not.
pub async fn ensure_rows(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let sql = "INSERT IGNORE INTO kitara_store_owners (store_id) SELECT s.id FROM stores s \
               WHERE s.deleted_at IS NULL AND NOT EXISTS \
               (SELECT 1 FROM kitara_store_owners o WHERE o.store_id = s.id)";
    Ok(db.execute_unprepared(sql).await?.rows_affected())
}

/// Every live store's row, ascending store id.
pub async fn owners(db: &impl ConnectionTrait) -> Result<Vec<OwnerRow>, DbErr> {
    let sql = "SELECT o.store_id, o.owner, o.epoch, o.lease_expires_at, \
               o.lease_expires_at IS NULL OR o.lease_expires_at < NOW(3) \
               FROM kitara_store_owners o JOIN stores s ON s.id = o.store_id \
               WHERE s.deleted_at IS NULL ORDER BY o.store_id";
    let rows = db.query_all_raw(super::prepared(db, sql, [])).await?;
    rows.iter()
        .map(|row| {
            Ok(OwnerRow {
                store: StoreId(row.try_get_by_index(0)?),
                owner: row.try_get_by_index(1)?,
                epoch: row.try_get_by_index(2)?,
                lease_expires_at: row.try_get_by_index(3)?,
                lapsed: row.try_get_by_index::<i64>(4)? != 0,
            })
        })
        .collect()
}

/// The node that owns `store` under a lease that holds, and where it is.
pub async fn holder(
    db: &impl ConnectionTrait,
    store: StoreId,
) -> Result<Option<(String, String)>, DbErr> {
    let sql = "SELECT o.owner, n.advertise_url FROM kitara_store_owners o \
               JOIN kitara_nodes n ON n.node_id = o.owner \
               WHERE o.store_id = ? AND o.lease_expires_at > NOW(3) AND n.incarnation <> 0";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(store.0)]))
        .await?;
    row.map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .transpose()
}

/// The owner of `store` now, if it has one.
pub async fn owner_of(db: &impl ConnectionTrait, store: StoreId) -> Result<Option<String>, DbErr> {
    let sql = "SELECT owner FROM kitara_store_owners WHERE store_id = ?";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(store.0)]))
        .await?;
    Ok(row
        .map(|r| r.try_get_by_index::<Option<String>>(0))
        .transpose()?
        .flatten())
}

/// Takes the stores that are still free, lapsed, or owned under `node`'s id (by an
/// earlier start of it), each at its epoch + 1, and answers which it got with their new
/// epochs. One statement for them all: a node that starts alone takes every store.
pub async fn take(
    db: &DatabaseConnection,
    node: &NodeId,
    stores: &[StoreId],
    lease: Duration,
) -> Result<Vec<(StoreId, i64)>, DbErr> {
    if stores.is_empty() {
        return Ok(Vec::new());
    }
    let txn = db
        .begin_with_options(super::write_transaction_options())
        .await?;
    let mut sql = Sql::new("UPDATE kitara_store_owners SET owner = ");
    sql.node(node)
        .text(", epoch = epoch + 1, fenced = fenced + 1, lease_expires_at = NOW(3) + INTERVAL ")
        .int(micros(lease))
        .text(" MICROSECOND WHERE store_id IN (")
        .list(stores.iter().map(|s| s.0))
        .text(") AND (owner IS NULL OR owner = ")
        .node(node)
        .text(" OR lease_expires_at IS NULL OR lease_expires_at < NOW(3))");
    txn.execute_unprepared(sql.as_str()).await?;
    let wanted: std::collections::HashSet<StoreId> = stores.iter().copied().collect();
    let taken = owned(&txn, node)
        .await?
        .into_iter()
        .filter(|(store, _)| wanted.contains(store))
        .collect();
    txn.commit().await?;
    Ok(taken)
}

/// Releases stores `node` owns at these epochs, so that their rightful owner can take
/// them at once instead of waiting for the lease. The epoch stays: the next owner's
/// takeover raises it.
pub async fn release(
    db: &DatabaseConnection,
    node: &NodeId,
    stores: &[(StoreId, i64)],
) -> Result<u64, DbErr> {
    if stores.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new(
        "UPDATE kitara_store_owners SET owner = NULL, lease_expires_at = NULL WHERE owner = ",
    );
    sql.node(node).text(" AND (");
    for (i, (store, epoch)) in stores.iter().enumerate() {
        sql.text(if i == 0 { "(" } else { " OR (" })
            .text("store_id = ")
            .int(store.0)
            .text(" AND epoch = ")
            .int(*epoch)
            .text(")");
    }
    sql.text(")");
    let txn = scanning(db).await?;
    let released = txn.execute_unprepared(sql.as_str()).await?.rows_affected();
    txn.commit().await?;
    Ok(released)
}

/// A transaction for the statements that pick a node's rows by `owner` and so scan the
/// table: at READ COMMITTED, InnoDB keeps locks only on the rows they change. At
/// MariaDB's default (REPEATABLE READ) a heartbeat would lock every store's row until
/// it commits, and every other node's fence would wait for it (measured: with 10,000
/// stores per node the renewal takes ~25 ms, and another node's fence blocked on it).
async fn scanning(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_config(Some(IsolationLevel::ReadCommitted), None)
        .await
}

/// A node that leaves: releases whatever it still owns and marks itself gone, so that
/// the others take its stores at once.
pub async fn leave(db: &DatabaseConnection, node: &NodeId, incarnation: i64) -> Result<u64, DbErr> {
    let txn = scanning(db).await?;
    let sql = "UPDATE kitara_nodes SET incarnation = 0 WHERE node_id = ? AND incarnation = ?";
    let values = [Value::from(node.as_str()), Value::from(incarnation)];
    let mine = txn
        .execute_raw(super::prepared(&txn, sql, values))
        .await?
        .rows_affected()
        == 1;
    let mut released = 0;
    if mine {
        let sql = "UPDATE kitara_store_owners SET owner = NULL, lease_expires_at = NULL \
                   WHERE owner = ?";
        released = txn
            .execute_raw(super::prepared(&txn, sql, [Value::from(node.as_str())]))
            .await?
            .rows_affected();
    }
    txn.commit().await?;
    Ok(released)
}

/// The stores `node` owns now, with their epochs, ascending store id. One shape of
/// statement whatever the stores: statements of ever-new shapes would churn the
/// connections' statement caches (see `db::connect_watched`).
pub async fn owned(db: &impl ConnectionTrait, node: &NodeId) -> Result<Vec<(StoreId, i64)>, DbErr> {
    let sql = "SELECT store_id, epoch FROM kitara_store_owners WHERE owner = ? ORDER BY store_id";
    let rows = db
        .query_all_raw(super::prepared(db, sql, [Value::from(node.as_str())]))
        .await?;
    rows.iter()
        .map(|row| Ok((StoreId(row.try_get_by_index(0)?), row.try_get_by_index(1)?)))
        .collect()
}

//! Release 3: several Kitara processes on one database. `kitara_nodes` records every
//! node with its heartbeat; `kitara_store_owners` gives each store at most one owner at
//! a time, with an epoch that rises at every change of owner and a lease the owner
//! renews. Every transaction that writes a store's orders, holds, stock or keys changes
//! its row's `fenced` counter where `store_id` and `epoch` still match: a node that lost
//! the store can no longer commit for it.
//!
//! `kitara_id_blocks` hands out blocks of order and detail ids, so that nodes that
//! number their rows themselves never hand out one id twice.
//!
//! Times are the database's own (`NOW(3)`), so that nodes compare leases on one clock.
//! A release-2 database gets a row, with no owner, for every store it holds. No foreign
//! key ties a row to its store: the rows are Kitara's bookkeeping, and a tool that
//! deletes and makes stores again by SQL must not be stopped by them (a row left by a
//! deleted store is only read when a store with its id exists again).

use sea_orm_migration::prelude::*;

use crate::for_mysql;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KitaraNodes {
    Table,
    NodeId,
    AdvertiseUrl,
    Incarnation,
    LastSeen,
}

#[derive(DeriveIden)]
enum KitaraIdBlocks {
    Table,
    Name,
    NextId,
}

#[derive(DeriveIden)]
enum KitaraStoreOwners {
    Table,
    StoreId,
    Owner,
    Epoch,
    LeaseExpiresAt,
    Fenced,
}

/// A time to the millisecond: leases are a few seconds long.
fn millis(column: &mut ColumnDef, backend: DbBackend) -> &mut ColumnDef {
    match backend {
        DbBackend::MySql => column.custom(Alias::new("DATETIME(3)")),
        _ => column.date_time(),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut nodes = Table::create();
        nodes
            .table(KitaraNodes::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KitaraNodes::NodeId)
                    .string_len(255)
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(KitaraNodes::AdvertiseUrl)
                    .string_len(1024)
                    .not_null(),
            )
            .col(
                ColumnDef::new(KitaraNodes::Incarnation)
                    .big_integer()
                    .not_null(),
            )
            .col(millis(&mut ColumnDef::new(KitaraNodes::LastSeen), backend).not_null());
        for_mysql(&mut nodes, backend);
        manager.create_table(nodes).await?;

        let mut owners = Table::create();
        owners
            .table(KitaraStoreOwners::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KitaraStoreOwners::StoreId)
                    .big_integer()
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(KitaraStoreOwners::Owner)
                    .string_len(255)
                    .null(),
            )
            .col(
                ColumnDef::new(KitaraStoreOwners::Epoch)
                    .big_integer()
                    .not_null()
                    .default(0),
            )
            .col(
                millis(
                    &mut ColumnDef::new(KitaraStoreOwners::LeaseExpiresAt),
                    backend,
                )
                .null(),
            )
            .col(
                ColumnDef::new(KitaraStoreOwners::Fenced)
                    .big_integer()
                    .not_null()
                    .default(0),
            );
        for_mysql(&mut owners, backend);
        manager.create_table(owners).await?;

        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO kitara_store_owners (store_id) SELECT id FROM stores \
                 WHERE id NOT IN (SELECT store_id FROM kitara_store_owners)",
            )
            .await?;

        let mut blocks = Table::create();
        blocks
            .table(KitaraIdBlocks::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KitaraIdBlocks::Name)
                    .string_len(32)
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(KitaraIdBlocks::NextId)
                    .big_integer()
                    .not_null(),
            );
        for_mysql(&mut blocks, backend);
        manager.create_table(blocks).await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO kitara_id_blocks (name, next_id) VALUES ('orders', 1), ('order_details', 1)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            KitaraIdBlocks::Table.into_iden(),
            KitaraStoreOwners::Table.into_iden(),
            KitaraNodes::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

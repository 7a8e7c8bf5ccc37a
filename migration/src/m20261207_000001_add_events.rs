//! Release 3: every change as an event. `kitara_events` is the outbox: events of one
//! store, numbered by the store's actor (1, 2, 3, … with no gap) and written in the
//! transaction of the change they record, so an event exists exactly when its change
//! does. A row holds a run of consecutive events of one store (`seq` to `last_seq`)
//! written by one transaction: `body` has one line per event, its number, type, time
//! and JSON as the stream and the webhooks send it, stored as bytes (the writer sends
//! it as a hexadecimal literal, never as SQL text). `at_ms` is when the row's last
//! change was decided, in Unix milliseconds, for the purge. The primary key is an
//! increasing `id`, so that rows are appended; a unique index on (`store_id`, `seq`)
//! finds a store's events. Keyed by store, the rows of a sale spread over many stores
//! went in at as many places of the table (BENCHMARKS.md, "What events cost").
//!
//! `kitara_webhook_positions` holds, per store, the last event the webhook endpoint
//! acknowledged, so a restart or a change of owner sends again at most what was in
//! flight.

use sea_orm_migration::prelude::*;

use crate::for_mysql;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KitaraEvents {
    Table,
    Id,
    StoreId,
    Seq,
    LastSeq,
    AtMs,
    Body,
}

#[derive(DeriveIden)]
enum KitaraWebhookPositions {
    Table,
    StoreId,
    Delivered,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let body = match backend {
            // A transaction's run of events passes BLOB's 64 KiB.
            DbBackend::MySql => ColumnDef::new(KitaraEvents::Body)
                .custom(Alias::new("MEDIUMBLOB"))
                .not_null()
                .to_owned(),
            _ => ColumnDef::new(KitaraEvents::Body)
                .blob()
                .not_null()
                .to_owned(),
        };
        let mut events = Table::create();
        events
            .table(KitaraEvents::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KitaraEvents::Id)
                    .big_integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(KitaraEvents::StoreId)
                    .big_integer()
                    .not_null(),
            )
            .col(ColumnDef::new(KitaraEvents::Seq).big_integer().not_null())
            .col(
                ColumnDef::new(KitaraEvents::LastSeq)
                    .big_integer()
                    .not_null(),
            )
            .col(ColumnDef::new(KitaraEvents::AtMs).big_integer().not_null())
            .col(body);
        for_mysql(&mut events, backend);
        manager.create_table(events).await?;
        manager
            .create_index(
                Index::create()
                    .name("kitara_events_store_seq")
                    .table(KitaraEvents::Table)
                    .col(KitaraEvents::StoreId)
                    .col(KitaraEvents::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;

        let mut positions = Table::create();
        positions
            .table(KitaraWebhookPositions::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(KitaraWebhookPositions::StoreId)
                    .big_integer()
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(KitaraWebhookPositions::Delivered)
                    .big_integer()
                    .not_null()
                    .default(0),
            );
        for_mysql(&mut positions, backend);
        manager.create_table(positions).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(KitaraWebhookPositions::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(KitaraEvents::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

//! Release 2: orders are holds (`orders.status`, `orders.expires_at`), per-customer
//! limits (`products.max_per_customer`), and the idempotency keys of safe retries.
//!
//! Every new column has a default or is nullable, so rows written by release 1, and by
//! tools that only know the original columns, stay valid: an order they wrote is
//! `locked` with no expiry, a product they wrote has no limit.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Status,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    MaxPerCustomer,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    /// The key, byte for byte (visible ASCII; binary so that case matters on MySQL too).
    IdempotencyKey,
    /// The first 16 bytes of the SHA-256 of the endpoint, the order id and the
    /// validated, merged body.
    Fingerprint,
    /// The order its request placed, confirmed or cancelled: the answer a replay
    /// carries is rendered from it.
    OrderId,
    /// Keys past their time are purged by a sweep in key order, not through an index
    /// on this column: a second index would cost every keyed order a second insert.
    CreatedAt,
}

const STATUSES: [&str; 4] = ["locked", "confirmed", "cancelled", "expired"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        // SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(
                        // CHAR(9), the longest status: a change of status is then an
                        // update in place (a VARCHAR whose length changes is not), which
                        // halves what an expiry wave costs MariaDB.
                        ColumnDef::new(Orders::Status)
                            .char_len(9)
                            .not_null()
                            .default("locked")
                            .check(Expr::col(Orders::Status).is_in(STATUSES)),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(ColumnDef::new(Orders::ExpiresAt).date_time().null())
                    .to_owned(),
            )
            .await?;
        // No index on `status`: every expiry, confirm and cancel would have to move
        // the order's entry in it, and an expiry wave is bound by exactly those row
        // updates. Live holds are read only at start-up and when a store reloads
        // (by `store_id`, which the foreign key indexes).
        manager
            .alter_table(
                Table::alter()
                    .table(Products::Table)
                    .add_column(
                        ColumnDef::new(Products::MaxPerCustomer)
                            .big_integer()
                            .null()
                            .check(Expr::col(Products::MaxPerCustomer).gte(1)),
                    )
                    .to_owned(),
            )
            .await?;

        let mut keys = Table::create();
        keys.table(IdempotencyKeys::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(IdempotencyKeys::IdempotencyKey)
                    .var_binary(255)
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(IdempotencyKeys::Fingerprint)
                    .var_binary(16)
                    .not_null(),
            )
            .col(
                ColumnDef::new(IdempotencyKeys::OrderId)
                    .big_integer()
                    .not_null(),
            )
            .col(
                ColumnDef::new(IdempotencyKeys::CreatedAt)
                    .date_time()
                    .not_null()
                    .default(Expr::current_timestamp()),
            );
        if backend == DbBackend::MySql {
            keys.engine("InnoDB");
        }
        manager.create_table(keys).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(IdempotencyKeys::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        for column in [Orders::Status, Orders::ExpiresAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Orders::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Products::Table)
                    .drop_column(Products::MaxPerCustomer)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

//! Release 2: the stock ledger `stock_movements`, so that `kitara check` can prove
//! `current_stock = Σ delta − Σ quantities of live order lines` for every product.
//!
//! A row records every change of `current_stock` other than an order's lines and their
//! return (orders are their own ledger): the stock a product was created with, each
//! delta of the admin API with its reason, and the `adopted` row start-up writes for a
//! product it finds without a ledger (one made by SQL).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StockMovements {
    Table,
    Id,
    ProductId,
    Delta,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
}

const PRODUCT_INDEX: &str = "idx_stock_movements_product_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut table = Table::create();
        table
            .table(StockMovements::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(StockMovements::Id)
                    .big_integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(StockMovements::ProductId)
                    .big_integer()
                    .not_null(),
            )
            .col(
                ColumnDef::new(StockMovements::Delta)
                    .big_integer()
                    .not_null(),
            )
            .col(
                ColumnDef::new(StockMovements::Reason)
                    .string_len(255)
                    .not_null(),
            )
            .col(
                ColumnDef::new(StockMovements::CreatedAt)
                    .date_time()
                    .not_null()
                    .default(Expr::current_timestamp()),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("fk_stock_movements_product_id")
                    .from(StockMovements::Table, StockMovements::ProductId)
                    .to(Products::Table, Products::Id)
                    .on_delete(ForeignKeyAction::Restrict)
                    .on_update(ForeignKeyAction::Restrict),
            );
        if backend == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate("utf8mb4_unicode_ci");
        }
        manager.create_table(table).await?;
        // MySQL indexes a foreign key by itself; SQLite needs it said. A product's ledger
        // is read by its id (the movements endpoint, `kitara check`).
        if backend == DbBackend::Sqlite {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(PRODUCT_INDEX)
                        .table(StockMovements::Table)
                        .col(StockMovements::ProductId)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(StockMovements::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

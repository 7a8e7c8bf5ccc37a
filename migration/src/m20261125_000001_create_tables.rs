use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Name,
}

#[derive(DeriveIden)]
enum Stores {
    Table,
    Id,
    StoreName,
    UserId,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    ProductName,
    CurrentStock,
    StoreId,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    BuyerId,
    Quantity,
    StoreId,
}

#[derive(DeriveIden)]
enum KitaraCommits {
    Table,
    Token,
    /// How many orders the transaction wrote.
    Orders,
}

#[derive(DeriveIden)]
enum OrderDetails {
    Table,
    Id,
    OrderId,
    ProductId,
    Quantity,
}

#[derive(DeriveIden)]
#[allow(clippy::enum_variant_names)] // the columns are named so
enum Timestamps {
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

/// `id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY` (`INTEGER PRIMARY KEY AUTOINCREMENT`
/// on SQLite).
fn id(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

/// A table in Kitara's dialect: utf8mb4 InnoDB on MySQL, so names such as "masker 😷"
/// survive. Its columns come first; `timestamps` appends the Go version's three.
fn table(name: impl IntoIden, backend: DbBackend) -> TableCreateStatement {
    let mut table = Table::create();
    table.table(name).if_not_exists();
    if backend == DbBackend::MySql {
        table
            .engine("InnoDB")
            .character_set("utf8mb4")
            .collate("utf8mb4_unicode_ci");
    }
    table
}

/// `created_at`, `updated_at` and `deleted_at`. The first two default to the current
/// time (UTC: Kitara's connections run in UTC) so that a tool may leave them out.
fn timestamps(table: &mut TableCreateStatement) -> TableCreateStatement {
    table
        .col(
            ColumnDef::new(Timestamps::CreatedAt)
                .date_time()
                .not_null()
                .default(Expr::current_timestamp()),
        )
        .col(
            ColumnDef::new(Timestamps::UpdatedAt)
                .date_time()
                .not_null()
                .default(Expr::current_timestamp()),
        )
        .col(ColumnDef::new(Timestamps::DeletedAt).date_time().null())
        .to_owned()
}

fn foreign_key(
    name: &str,
    from: (impl IntoIden, impl IntoIden),
    to: (impl IntoIden, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Restrict)
        .on_update(ForeignKeyAction::Restrict)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        manager
            .create_table(timestamps(
                &mut table(Users::Table, backend)
                    .col(id(Users::Id))
                    .col(ColumnDef::new(Users::Name).string_len(255).not_null())
                    .to_owned(),
            ))
            .await?;

        manager
            .create_table(timestamps(
                &mut table(Stores::Table, backend)
                    .col(id(Stores::Id))
                    .col(ColumnDef::new(Stores::StoreName).string_len(255).not_null())
                    .col(ColumnDef::new(Stores::UserId).big_integer().not_null())
                    .to_owned(),
            ))
            .await?;

        manager
            .create_table(timestamps(
                &mut table(Products::Table, backend)
                    .col(id(Products::Id))
                    .col(
                        ColumnDef::new(Products::ProductName)
                            .string_len(255)
                            .not_null(),
                    )
                    // The schema is the last wall against oversell: whatever a bug or a
                    // tool does, stock never goes below zero.
                    .col(
                        ColumnDef::new(Products::CurrentStock)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(Expr::col(Products::CurrentStock).gte(0)),
                    )
                    .col(ColumnDef::new(Products::StoreId).big_integer().not_null())
                    .foreign_key(&mut foreign_key(
                        "fk_products_store",
                        (Products::Table, Products::StoreId),
                        (Stores::Table, Stores::Id),
                    ))
                    .to_owned(),
            ))
            .await?;

        manager
            .create_table(timestamps(
                &mut table(Orders::Table, backend)
                    .col(id(Orders::Id))
                    .col(ColumnDef::new(Orders::BuyerId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::Quantity).big_integer().not_null())
                    .col(ColumnDef::new(Orders::StoreId).big_integer().not_null())
                    .foreign_key(&mut foreign_key(
                        "fk_orders_store",
                        (Orders::Table, Orders::StoreId),
                        (Stores::Table, Stores::Id),
                    ))
                    .to_owned(),
            ))
            .await?;

        // One row per transaction that wrote orders, inserted by that transaction: after
        // a connection dies during COMMIT, finding the token tells that it committed.
        // One row per transaction, not per order, keeps the order rows lean.
        manager
            .create_table(timestamps(
                &mut table(KitaraCommits::Table, backend)
                    .col(
                        ColumnDef::new(KitaraCommits::Token)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(KitaraCommits::Orders)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            ))
            .await?;

        manager
            .create_table(timestamps(
                &mut table(OrderDetails::Table, backend)
                    .col(id(OrderDetails::Id))
                    .col(
                        ColumnDef::new(OrderDetails::OrderId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrderDetails::ProductId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrderDetails::Quantity)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(OrderDetails::Quantity).gt(0)),
                    )
                    .foreign_key(&mut foreign_key(
                        "fk_order_details_order",
                        (OrderDetails::Table, OrderDetails::OrderId),
                        (Orders::Table, Orders::Id),
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_order_details_product",
                        (OrderDetails::Table, OrderDetails::ProductId),
                        (Products::Table, Products::Id),
                    ))
                    .to_owned(),
            ))
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            KitaraCommits::Table.into_iden(),
            OrderDetails::Table.into_iden(),
            Orders::Table.into_iden(),
            Products::Table.into_iden(),
            Stores::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

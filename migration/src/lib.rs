//! Kitara's schema, as sea-orm-migration migrations.
//!
//! Table and column names are the Go version's, so its clients and reports carry over.
//! Every column added beyond them has a default, so rows inserted by tools that only
//! know the original columns stay valid.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_tables;
mod m20261202_000001_add_holds_keys_limits;
mod m20261203_000001_add_stock_movements;
mod m20261206_000001_add_store_ownership;
mod m20261207_000001_add_events;
mod m20261208_000001_add_admin_keys;

pub struct Migrator;

/// A table of Kitara's own on MySQL: InnoDB, and UTF-8 whatever the server's default.
fn for_mysql(table: &mut TableCreateStatement, backend: sea_orm_migration::sea_orm::DbBackend) {
    if backend == sea_orm_migration::sea_orm::DbBackend::MySql {
        table
            .engine("InnoDB")
            .character_set("utf8mb4")
            .collate("utf8mb4_unicode_ci");
    }
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tables::Migration),
            Box::new(m20261202_000001_add_holds_keys_limits::Migration),
            Box::new(m20261203_000001_add_stock_movements::Migration),
            Box::new(m20261206_000001_add_store_ownership::Migration),
            Box::new(m20261207_000001_add_events::Migration),
            Box::new(m20261208_000001_add_admin_keys::Migration),
        ]
    }
}

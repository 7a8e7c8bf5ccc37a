//! Errors that stop Kitara from starting (the process boundary). Errors of the order
//! path live with their boundary: `store::LockError`, `writer::PersistError`, and the
//! HTTP mapping in `http::response`.

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error(
        "the database schema is missing or behind ({pending} pending migration(s)): run `kitara migrate` first"
    )]
    SchemaBehind { pending: usize },
    #[error(
        "KITARA_DB_POOL_SIZE is {pool}, but {writers} writer(s) need at least {needed} connections: two each (the transaction in flight and the next one, opened ahead) and two for stock reloads and lookups"
    )]
    PoolTooSmall {
        pool: u32,
        writers: u32,
        needed: u32,
    },
    #[error(transparent)]
    AdminToken(#[from] crate::admin::TokenError),
    #[error("cannot adopt the products made by SQL into the ledger: {0}")]
    Adopt(crate::writer::PersistError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

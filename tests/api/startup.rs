//! What Kitara refuses at start-up.

use kitara::startup::Application;

use crate::helpers::{Backend, TestDb, settings};

mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_too_small_for_the_writers_is_refused_mysql() {
        if Backend::Mysql.available() {
            pool_too_small().await;
        }
    }
}

async fn pool_too_small() {
    let db = TestDb::with_demo_data(Backend::Mysql).await;
    let mut too_many = settings(&db.url);
    too_many.writers = 8;
    too_many.database.db_pool_size = 16;
    let Err(error) = Application::build(too_many).await else {
        panic!("8 writers on a pool of 16 must be refused");
    };
    let message = error.to_string();
    assert!(message.contains("KITARA_DB_POOL_SIZE is 16"), "{message}");
    assert!(message.contains("at least 18"), "{message}");
    db.drop_database().await;
}

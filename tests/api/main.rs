//! Kitara's API tests: a real server on a random port, a fresh database per test, on the
//! embedded SQLite database and (test names under `mysql::`) on MariaDB when
//! `KITARA_TEST_MYSQL_URL` is set.

mod helpers;
mod mariadb;

mod admin;
mod admin_keys;
mod admin_page;
mod burst;
mod catalogue;
mod cluster;
mod cluster_steps;
mod commit;
mod contract;
mod durability;
mod events;
mod forward;
mod galera;
mod holds;
mod keys;
mod lifecycle;
mod limits;
mod openapi;
mod operations;
mod outcome;
mod races;
mod readme;
mod reconcile;
mod simulate;
mod stall;
mod startup;
mod webhooks;

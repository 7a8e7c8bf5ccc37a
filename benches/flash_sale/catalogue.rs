//! The catalogue at scale: 10,000 stores of 10 products. Pages of 100 products and
//! single-product lookups, each against `GET /healthz` on the same server in
//! alternating slices; the unfiltered listing (every product, as Go clients read it);
//! the time to start with such a catalogue, and the memory it takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use crate::Bench;
use crate::cpu::live_rss_mib;
use crate::db::BenchDb;
use crate::load::{Load, MakeRequest, Rng, drive, drive_with};
use crate::servers::{Running, Server};

const STORES: i64 = 10_000;
const PER_STORE: i64 = 10;
const PRODUCTS: i64 = STORES * PER_STORE;
const PAGE: i64 = 100;
/// The unfiltered listing is some 12 MB an answer: a few clients read it at once.
const LISTING_CONNECTIONS: usize = 4;

/// What the catalogue workload measured.
pub(crate) struct Catalogue {
    pub(crate) healthz: f64,
    pub(crate) page: f64,
    pub(crate) product: f64,
    pub(crate) listing: f64,
    pub(crate) listing_bytes: usize,
    pub(crate) started_in: Duration,
    /// RSS growth of the process when a server loads the catalogue, less that of a
    /// server of one product.
    pub(crate) rss_per_100k: Option<f64>,
}

fn get(path: String) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

pub(crate) async fn catalogue(bench: &Bench) -> Catalogue {
    let small = BenchDb::create(bench, 1, 1, 1).await;
    let before = live_rss_mib();
    let running = Running::start(&small, Server::Kitara).await;
    let rss_small = live_rss_mib()
        .zip(before)
        .map(|(after, before)| after - before);
    running.stop().await;
    small.drop().await;

    let db = BenchDb::create(bench, STORES, PER_STORE, 1_000).await;
    let before = live_rss_mib();
    let started = Instant::now();
    let running = Running::start(&db, Server::Kitara).await;
    let started_in = started.elapsed();
    let rss = live_rss_mib()
        .zip(before)
        .map(|(after, before)| after - before);
    let addrs = [running.addr];

    let healthz: MakeRequest =
        Arc::new(|_: &mut Rng, _: Option<&Bytes>| Some(get("/healthz".into())));
    let page: MakeRequest = Arc::new(|rng: &mut Rng, _: Option<&Bytes>| {
        let after = rng.below(PRODUCTS - PAGE);
        Some(get(format!(
            "/api/v1/products?after_id={after}&limit={PAGE}"
        )))
    });
    let product: MakeRequest = Arc::new(|rng: &mut Rng, _: Option<&Bytes>| {
        Some(get(format!("/api/v1/products/{}", rng.below(PRODUCTS) + 1)))
    });
    let mut loads = [Load::default(), Load::default(), Load::default()];
    let unit = bench.duration() / (3 * bench.rounds());
    for _ in 0..bench.rounds() {
        for (load, make) in loads.iter_mut().zip([&healthz, &page, &product]) {
            load.then(drive(&addrs, unit, make.clone()).await);
        }
    }
    let listing: MakeRequest =
        Arc::new(|_: &mut Rng, _: Option<&Bytes>| Some(get("/api/v1/products".into())));
    let listed = drive_with(&addrs, LISTING_CONNECTIONS, unit, listing).await;
    let listing_bytes = listed_bytes(running.addr).await;
    running.stop().await;
    db.drop().await;

    let rate = |load: &Load| {
        assert_eq!(load.other, 0, "catalogue: every answer a 200");
        load.ok as f64 / load.elapsed.as_secs_f64()
    };
    Catalogue {
        healthz: rate(&loads[0]),
        page: rate(&loads[1]),
        product: rate(&loads[2]),
        listing: rate(&listed),
        listing_bytes,
        started_in,
        rss_per_100k: rss
            .zip(rss_small)
            .map(|(rss, small)| (rss - small) * 100_000.0 / PRODUCTS as f64),
    }
}

/// The size of one answer of the unfiltered listing, and a check that it lists every
/// product.
async fn listed_bytes(addr: std::net::SocketAddr) -> usize {
    let body = crate::workloads::listing(addr).await.expect("the listing");
    let listing: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let listed = listing["data"].as_array().map_or(0, Vec::len);
    assert_eq!(listed as i64, PRODUCTS, "the listing names every product");
    body.len()
}

impl Catalogue {
    pub(crate) fn print(&self) {
        println!();
        println!(
            "catalogue: {STORES} stores × {PER_STORE} products; started in {:.2} s",
            self.started_in.as_secs_f64()
        );
        println!("  GET /healthz: {:.0}/s", self.healthz);
        println!(
            "  page of {PAGE} (after_id random, limit={PAGE}): {:.0}/s",
            self.page
        );
        println!(
            "  one product (GET /api/v1/products/{{id}}): {:.0}/s",
            self.product
        );
        println!(
            "  unfiltered listing, {LISTING_CONNECTIONS} connections: {:.1}/s, {:.1} MB an answer",
            self.listing,
            self.listing_bytes as f64 / 1e6
        );
        match self.rss_per_100k {
            Some(mib) => println!("  RSS per 100,000 products: {mib:.1} MiB"),
            None => println!("  RSS per 100,000 products: not measured"),
        }
        println!("ratio page/healthz: {:.2}", self.page / self.healthz);
        println!("ratio product/healthz: {:.2}", self.product / self.healthz);
    }
}

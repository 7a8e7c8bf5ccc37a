//! The report: the table of every workload and the ratio lines the verdict is given by.

use std::collections::BTreeMap;

use std::time::Duration;

use crate::TABLE_ORDER;
use crate::cpu::PerAnswer;

/// Holds that expire together, on product 2 of the hot store.
pub(crate) const WAVE: i64 = 100_000;

/// What the expiry wave measured.
pub(crate) struct Wave {
    /// From the holds' common deadline until the last of their units was listed again.
    pub(crate) back_after: Option<Duration>,
    /// Hot's p99 while the wave is being expired (deadline to deadline + 2 s), and
    /// outside that window.
    pub(crate) p99_during: f64,
    pub(crate) p99_outside: f64,
    /// RSS growth of the process when a server loads the wave's holds, against a
    /// server of the same store with none.
    pub(crate) rss_per_wave: Option<f64>,
    pub(crate) rss_empty: Option<f64>,
}

/// A latency in milliseconds, or a dash where nothing was timed.
pub(crate) fn ms(value: f64) -> String {
    if value.is_nan() {
        "–".into()
    } else {
        format!("{value:.2}")
    }
}

/// One line of the result table.
#[derive(Clone)]
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) answers: u64,
    pub(crate) ok: u64,
    /// Committed orders per second (200 answers), or answers per second for the
    /// workloads that commit nothing.
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// Where the CPU went, per counted answer (see `CpuUse`).
    pub(crate) cpu: Option<PerAnswer>,
    pub(crate) note: String,
}

/// Prints the table of every workload that ran, and the ratios.
pub(crate) fn print(rows: &BTreeMap<&'static str, Row>, rss: Option<f64>, wave: Option<&Wave>) {
    let table: Vec<&Row> = TABLE_ORDER.iter().filter_map(|key| rows.get(key)).collect();
    let rate = |key: &str| rows.get(key).map_or(f64::NAN, |row| row.rate);

    println!();
    println!(
        "| workload | answers | 200s | per second | p50 ms | p99 ms | p99.9 ms | CPU µs: bench process | CPU µs: database | idle | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in table {
        let (process, database, idle) = match row.cpu {
            Some(cpu) => (
                format!("{:.1}", cpu.process),
                cpu.database.map_or("n/a".into(), |d| format!("{d:.1}")),
                format!("{:.0} %", cpu.idle * 100.0),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {process} | {database} | {idle} | {} |",
            row.name,
            row.answers,
            row.ok,
            row.rate,
            ms(row.p50),
            ms(row.p99),
            ms(row.p999),
            row.note
        );
    }
    println!();
    println!(
        "CPU µs are per counted answer (committed order, or answer where nothing commits): \
         the bench process is Kitara (or the baseline) and the load generator; the database \
         is the local mysqld/mariadbd process when one is visible; idle is the machine's."
    );
    println!();
    if let Some(rss) = rss {
        println!(
            "RSS of the benchmark process at the end of the last interleaved group that ran \
             (its servers still running): {rss:.0} MiB"
        );
    }
    // A ratio is printed only when both of its workloads ran (`KITARA_BENCH_ONLY` may
    // leave either out).
    let ratio = |what: &str, of: &str, to: &str, decimals: usize| {
        if rows.contains_key(of) && rows.contains_key(to) {
            println!("{what}: {:.decimals$}", rate(of) / rate(to));
        }
    };
    ratio("ratio hot kitara/row-lock", "hot", "hot-row-lock", 2);
    ratio(
        "ratio spread kitara/row-lock",
        "spread",
        "spread-row-lock",
        2,
    );
    ratio(
        "ratio spread through 3 nodes/spread on 1 node (one machine: the cost of \
         forwarding and ownership)",
        "spread-3-nodes",
        "spread",
        2,
    );
    ratio("ratio hot kitara/ceiling", "hot", "ceiling", 2);
    ratio("ratio storm kitara/ceiling", "storm", "ceiling", 2);
    if rows.contains_key("database-alone") && rows.contains_key("ceiling") {
        println!(
            "for reference, the database alone (no HTTP) commits {:.2} of the ceiling",
            rate("database-alone") / rate("ceiling")
        );
    }
    ratio("ratio hot-holds/hot", "hot-holds", "hot", 2);
    ratio(
        "ratio hot/hot-no-metrics (what recording metrics costs)",
        "hot",
        "hot-no-metrics",
        3,
    );
    if rows.contains_key("hot-followed") {
        println!(
            "ratio hot-followed/hot (100 stream followers and a webhook attached): {:.2}",
            rate("hot-followed") / rate("hot")
        );
        let server = |key: &str| {
            rows.get(key)
                .and_then(|row| row.cpu)
                .map_or(f64::NAN, |cpu| cpu.server)
        };
        println!(
            "CPU µs per order of the server runtime's threads alone (Kitara, without the \
             load generator, on whose runtime the followers and the receiver run): hot {:.1}, \
             hot-followed {:.1}",
            server("hot"),
            server("hot-followed")
        );
    }
    for (with, without, what) in [
        ("hot", "hot-no-events", "hot"),
        ("spread", "spread-no-events", "spread"),
    ] {
        ratio(
            &format!("ratio {what} with events/without (what the outbox costs)"),
            with,
            without,
            2,
        );
    }
    for (kitara, redis, connections) in [
        ("hot-c16", "redis-c16", 16),
        ("hot-c256", "redis-c256", 256),
    ] {
        ratio(
            &format!("ratio hot-c{connections} kitara/redis-durable"),
            kitara,
            redis,
            2,
        );
    }
    if let Some(pairs) = rows.get("lock-confirm") {
        println!("lock then confirm: {:.0} pairs/s", pairs.rate);
    }
    if let Some(wave) = wave {
        match wave.back_after {
            Some(after) => println!(
                "expiry wave: all {WAVE} holds' units back {:.3} s after their deadline",
                after.as_secs_f64()
            ),
            None => println!("expiry wave: the units were NOT all back within 30 s"),
        }
        println!(
            "expiry wave: hot p99 during the wave {} ms, outside it {} ms (ratio {:.2})",
            ms(wave.p99_during),
            ms(wave.p99_outside),
            wave.p99_during / wave.p99_outside
        );
        if let (Some(with), Some(without)) = (wave.rss_per_wave, wave.rss_empty) {
            println!(
                "memory: RSS grows {with:.1} MiB when a server starts with {WAVE} live holds \
                 ({without:.1} MiB for the same server with none): {:.1} MiB per 100,000 holds",
                (with - without) * 100_000.0 / WAVE as f64
            );
        }
    }
}

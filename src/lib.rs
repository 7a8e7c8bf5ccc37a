//! Kitara: an order-lock service for online stores. It reserves limited stock for
//! customers who order at the same moment, all or nothing, and never oversells.
//!
//! # Layout
//!
//! An order runs down the first six, `http` → `app` → `cluster` → `store` → `writer` →
//! `db`, and its answer comes back up; none of them names one before it. `domain` is plain data
//! under all of them.
//!
//! - [`http`]: the hyper front end: the route table, the edge checks (content type,
//!   size, JSON, types, ranges), the JSON envelope, the OpenAPI document, and the one
//!   mapping of errors to statuses.
//! - [`app`]: what a validated request does next: the order desk (known user, one store,
//!   the sold-out fast path), the admin desk, the idempotency keys in flight, the users.
//! - [`cluster`]: which stores this node serves (one owner per store, an epoch fence on
//!   every write, leases), starting and stopping their actors, and where the requests
//!   of the others go.
//! - [`store`]: one single-owner actor per store, the only code that decides a change
//!   of its store's stock; it checks and reserves in memory, then hands decisions to the
//!   writer and answers only after they committed.
//! - [`writer`]: persists what actors decided, many decisions per transaction (group
//!   commit), takes back exactly what a failed transaction carried, and resolves a
//!   COMMIT whose connection died.
//! - [`db`]: connecting (and watching that the pool never misreads), the schema and its
//!   check, demo data, the ledger check, and every SQL statement.
//! - [`domain`]: plain data and rules: identifiers, the validated order, stock, holds,
//!   per-customer limits, product changes, idempotency keys.
//! - [`catalog`]: what the front end knows about products without asking an actor.
//! - [`clock`]: the time holds are judged by (the wall clock, or a manual one in tests).
//! - [`backoff`]: how long to wait before trying the database again.
//! - [`health`]: readiness, from a prober that pings the database.
//! - [`metrics`]: the Prometheus registry and its typed labels.
//! - [`logs`]: quiet logs under a flood: repeated warnings summarised once a second.
//! - [`simulate`]: `kitara simulate`, a flash-sale rehearsal against a running Kitara.
//! - [`config`]: the command line, the environment and `.env`, checked at start.
//! - [`telemetry`]: the tracing subscriber (text or JSON).
//! - [`console`]: what the command-line tools print, quietly cut short by a closed pipe.
//! - [`startup`]: wiring: opens the database, spawns the writer and the actors, serves,
//!   and shuts down gracefully.

pub mod app;
pub mod backoff;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod simulate;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod writer;

/// ARCHITECTURE.md's first invariant, checked on the source: the order path's layers
/// are `http` → `app` → `cluster` → `store` → `writer` → `db`, and no file of one names
/// a layer before it; `domain` names none of them.
#[cfg(test)]
mod layers {
    use std::path::Path;

    const LAYERS: [&str; 6] = ["http", "app", "cluster", "store", "writer", "db"];

    /// Every `crate::<module>` a file of `folder` (or of a folder inside it) names, as
    /// `crate::a::…` or inside `crate::{a::…, b}`; comments count too (a doc comment that
    /// sends the reader up a layer is a smell as well).
    fn named_by(folder: &str) -> Vec<(String, String)> {
        let mut named = Vec::new();
        let mut folders = vec![
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src")
                .join(folder),
        ];
        while let Some(dir) = folders.pop() {
            for entry in std::fs::read_dir(&dir).expect("a folder of src") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for (at, _) in text.match_indices("crate::") {
                    for module in modules_at(&text[at + "crate::".len()..]) {
                        named.push((path.display().to_string(), module));
                    }
                }
            }
        }
        named
    }

    /// The first segment of the path that starts `text`, or of each path in the braces
    /// that start it.
    fn modules_at(text: &str) -> Vec<String> {
        let name = |t: &str| -> String {
            t.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let Some(group) = text.strip_prefix('{') else {
            return vec![name(text)];
        };
        let (mut depth, mut names, mut start) = (0, Vec::new(), 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(name(&group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(name(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        names.retain(|n| !n.is_empty());
        names
    }

    #[test]
    fn no_layer_names_a_layer_before_it() {
        for (depth, layer) in LAYERS.iter().enumerate() {
            for (file, module) in named_by(layer) {
                let above = LAYERS[..depth].contains(&module.as_str());
                assert!(
                    !above,
                    "{file} names crate::{module}, a layer above {layer}"
                );
            }
        }
        for (file, module) in named_by("domain") {
            let layer = LAYERS.contains(&module.as_str());
            assert!(
                !layer,
                "{file} names crate::{module}: domain is under every layer"
            );
        }
    }

    #[test]
    fn grouped_paths_name_each_of_their_modules() {
        assert_eq!(modules_at("db::write::Fence;"), ["db"]);
        assert_eq!(
            modules_at("{app::keys::{Claim, KeyError}, store,\n    http::Call};"),
            ["app", "store", "http"]
        );
    }
}

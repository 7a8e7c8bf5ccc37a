//! The OpenAPI document against the server it describes: schemathesis (PyPI), run
//! against a live Kitara on SQLite with the admin token set, through every operation
//! with every check it has (`--checks all`): no server errors, documented status codes,
//! answers and headers that conform to the schema, the documented content type, and a
//! request the schema allows is not refused. `tests/api/schemathesis/` holds its
//! configuration and hooks, which say the two things a schema cannot (an integer
//! written `2.0`, and refusals for a request's data rather than its shape) and check
//! them instead.
//!
//! Without schemathesis the test is skipped, as the MariaDB tests are, except under
//! `CI=true`, where it fails. `KITARA_TEST_SCHEMATHESIS` names the executable if it is
//! not on the `PATH`; `.ci/run` installs it into `/opt/schemathesis`.

use std::path::PathBuf;

use crate::helpers::{ADMIN_TOKEN, Backend, TestDb, spawn_admin_app};

const SCHEMATHESIS_VAR: &str = "KITARA_TEST_SCHEMATHESIS";

fn schemathesis() -> Option<PathBuf> {
    crate::helpers::tool(SCHEMATHESIS_VAR, "schemathesis", "pip install schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_admin_app(&db).await;
    let base = format!("http://{}", app.addr);
    // It keeps a cache of what it found in its working directory: not in the repository.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/schemathesis");
    for file in ["schemathesis.toml", "hooks.py"] {
        std::fs::copy(format!("{config}/{file}"), scratch.path().join(file)).expect("copy");
    }
    let output = tokio::process::Command::new(schemathesis)
        .current_dir(scratch.path())
        .args([
            "--config-file",
            "schemathesis.toml",
            "run",
            &format!("{base}/api/v1/openapi.json"),
            "--url",
            &base,
            "--header",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            "--checks",
            // `all` is the built-in checks; the data refusals' check comes from hooks.py.
            "all,refused_only_for_its_data",
            "--max-examples",
            "50",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
    app.stop().await;
    db.drop_database().await;
}

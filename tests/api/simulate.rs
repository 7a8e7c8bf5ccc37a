//! `kitara simulate` against a live Kitara: the report, its verdict on the listing, and
//! its answers to nonsense flags, an unreachable URL and a remote one.

use std::process::Output;

use crate::helpers::{Backend, TestDb, spawn_app};

/// `kitara simulate` with the flags of `line`, split at white space as a shell would
/// split them (no flag here has a space in it): written as one line, a call reads as
/// the command a person would type.
async fn simulate(line: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kitara"))
        .arg("simulate")
        .args(line.split_whitespace())
        .output()
        .await
        .expect("run kitara simulate")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The stdout and stderr of a run that must have exited `code`; both are shown when it
/// did not, since either may say why.
fn exited(output: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(code), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_reports_what_it_sold_and_checks_the_listing() {
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_app(&db).await;
    let url = format!("http://{}", app.addr);

    let output = simulate(&format!(
        "--url {url} --customers 16 --orders 120 --product 1 --product 2 --confirm-ratio 0.5"
    ))
    .await;
    let (stdout, _) = exited(&output, 0);
    for line in [
        "orders: 120 sent by 16 customers",
        "refused 400 \"all product not available\"",
        "lock latency: p50",
        "the listing agrees with what was sold",
    ] {
        assert!(stdout.contains(line), "{line:?} not in\n{stdout}");
    }
    for product in [1, 2] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("product {product}: listed")))
            .unwrap_or_else(|| panic!("no line for product {product} in\n{stdout}"));
        assert!(line.ends_with("sold: agrees"), "{line}");
    }
    // What it says it sold is what the database holds: every other hold was cancelled.
    let sold: i64 = stdout
        .split_once(" units sold)")
        .and_then(|(head, _)| head.rsplit('(').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no units sold in\n{stdout}"));
    assert!(sold > 0 && sold <= 15, "{sold}");
    assert_eq!(db.held_or_sold().await.values().sum::<i64>(), sold);

    // Holds left to expire come back before the listing is checked.
    let output = simulate(&format!(
        "--url {url} --customers 4 --orders 8 --product 3 --hold-seconds 1 --confirm-ratio 0"
    ))
    .await;
    let (stdout, _) = exited(&output, 0);
    assert!(stdout.contains("8 left to expire"), "{stdout}");
    assert!(
        stdout.contains("product 3: listed 20 before, 20 after, 0 sold: agrees"),
        "{stdout}"
    );

    // A product that is not listed is refused before anything is sent.
    let output = simulate(&format!("--url {url} --orders 1 --product 9")).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unlisted product: {:?}",
        text(&output)
    );

    app.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_flags_an_unreachable_url_and_a_remote_one_get_clear_answers() {
    for args in [
        "--url http://127.0.0.1:6071 --customers 0",
        "--url http://127.0.0.1:6071 --confirm-ratio 2",
        "--url http://127.0.0.1:6071 --duration soon",
        "--url http://127.0.0.1:6071 --orders 5 --duration 5s",
        "--customers 4",
        "--url http://127.0.0.1:6071 --bogus",
    ] {
        let output = simulate(args).await;
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }

    // A port nobody listens on: one clear line, exit 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = simulate(&format!("--url http://127.0.0.1:{port} --orders 5")).await;
    let (_, stderr) = exited(&output, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach Kitara") && stderr.contains("refused"),
        "{stderr}"
    );

    let output = simulate("--url http://203.0.113.7:6071").await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    let output = simulate("--url https://127.0.0.1:6071").await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_does_not_add_up_exits_1() {
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = crate::helpers::spawn_admin_app(&db).await;
    let url = format!("http://{}", app.addr);
    let rehearsal = tokio::spawn(async move {
        simulate(&format!(
            "--url {url} --customers 4 --duration 2s --product 3"
        ))
        .await
    });
    // Another client restocks in the middle of it: once it has placed an order, it has
    // read the listing it compares with.
    let started = std::time::Instant::now();
    while db.count("orders").await == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the rehearsal placed no order"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.admin_expect(
        hyper::Method::POST,
        "/api/v1/admin/products/3/stock",
        Some(&serde_json::json!({"delta": 5, "reason": "mid-rehearsal"})),
        hyper::StatusCode::OK,
    )
    .await;
    let output = rehearsal.await.unwrap();
    let (stdout, stderr) = exited(&output, 1);
    assert!(
        stdout.contains("product 3: listed 20 before") && stdout.contains("DOES NOT AGREE"),
        "{stdout}"
    );
    assert!(stderr.contains("does not agree"), "{stderr}");
    app.stop().await;
    db.drop_database().await;
}

/// `kitara simulate … | head -1`: the reader has gone away before the report is written;
/// the report ends quietly and the verdict is still the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_piped_into_a_reader_that_left_ends_quietly() {
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_app(&db).await;
    let url = format!("http://{}", app.addr);
    // A pipe whose reader is gone: every write to it fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    // Not `output()`, which would capture stdout instead.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitara"))
        .args([
            "simulate",
            "--url",
            &url,
            "--customers",
            "4",
            "--orders",
            "20",
        ])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kitara simulate")
        .wait_with_output()
        .await
        .expect("simulate ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    app.stop().await;
    db.drop_database().await;
}

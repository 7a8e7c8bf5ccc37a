//! The owner's page `/admin` in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, from Debian's `chromium-driver`) by `fantoccini`, against a live
//! Kitara.
//!
//! Without a `chromedriver` the test is skipped, as the MariaDB tests are, except under
//! `CI=true`, where it fails. `KITARA_TEST_CHROMEDRIVER` names the driver if it is not
//! on the `PATH`.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, Backend, TestDb, order, spawn_admin_app};

const DRIVER_VAR: &str = "KITARA_TEST_CHROMEDRIVER";

/// How long the page may take to show a change (it polls a few times a second).
const PATIENCE: Duration = Duration::from_secs(10);

/// A name a careless page would run as markup.
const SCRIPT_LIKE: &str = "<img src=x onerror=alert(1)>";

fn chromedriver() -> Option<PathBuf> {
    crate::helpers::tool(
        DRIVER_VAR,
        "chromedriver",
        "apt-get install chromium chromium-driver",
    )
}

/// A chromedriver of the test's own, on a free port; killed when dropped.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    async fn start(path: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new",
                // CI runs as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1400",
            ]}),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

/// Waits until `check` says yes, or fails with what it saw last.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(seen) => last = seen,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {what}; last seen: {last}");
}

/// Yes, or what was seen instead.
fn seen(yes: bool, shown: impl std::fmt::Display) -> Result<bool, String> {
    if yes {
        Ok(true)
    } else {
        Err(shown.to_string())
    }
}

async fn text(browser: &Client, css: &str) -> Result<String, String> {
    let element = browser
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?;
    element.text().await.map_err(|e| format!("{css}: {e}"))
}

async fn click(browser: &Client, css: &str) {
    let element = browser.find(Locator::Css(css)).await.expect(css);
    element.click().await.expect(css);
}

async fn select(browser: &Client, css: &str, value: &str) {
    let element = browser.find(Locator::Css(css)).await.expect(css);
    element.select_by_value(value).await.expect(css);
}

async fn type_into(browser: &Client, css: &str, value: &str) {
    let field = browser.find(Locator::Css(css)).await.expect(css);
    field.clear().await.expect(css);
    field.send_keys(value).await.expect(css);
}

/// Waits until the `cell` (`name` or `stock`) of product `id`'s row reads `expected`.
async fn product_shows(browser: &Client, id: i64, cell: &str, expected: &str) {
    let css = format!("#products tr[data-product-id=\"{id}\"] .{cell}");
    eventually(&format!("product {id}'s {cell} {expected:?}"), || async {
        let shown = text(browser, &css).await?;
        seen(shown == expected, shown)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_page_works_in_a_real_browser() {
    let Some(path) = chromedriver() else {
        return;
    };
    let db = TestDb::with_demo_data(Backend::Sqlite).await;
    let app = spawn_admin_app(&db).await;
    let driver = Driver::start(path).await;
    let browser = driver.browser().await;
    let page = format!("http://{}/admin", app.addr);
    browser.goto(&page).await.expect("open /admin");

    // A wrong token is refused, clearly.
    type_into(&browser, "#token", "not-the-token-at-all").await;
    click(&browser, "#token-submit").await;
    eventually("the refusal of a wrong token", || async {
        let shown = text(&browser, "#token-error").await?;
        seen(shown.contains("401"), shown)
    })
    .await;

    // The right one shows the demo products with their stock.
    type_into(&browser, "#token", ADMIN_TOKEN).await;
    click(&browser, "#token-submit").await;
    for (id, name, stock) in [
        (1, "masker", "10"),
        (2, "sikat gigi", "5"),
        (3, "sabun", "20"),
    ] {
        eventually(&format!("product {id}"), || async {
            let row = format!("#products tr[data-product-id=\"{id}\"]");
            let shown = (
                text(&browser, &format!("{row} .name")).await?,
                text(&browser, &format!("{row} .stock")).await?,
            );
            seen(
                shown == (name.to_owned(), stock.to_owned()),
                format!("{shown:?}"),
            )
        })
        .await;
    }

    // A restock through the form shows the new stock.
    select(&browser, "#restock-product", "1").await;
    type_into(&browser, "#restock-delta", "5").await;
    type_into(&browser, "#restock-reason", "truck arrived").await;
    click(&browser, "#restock-submit").await;
    product_shows(&browser, 1, "stock", "15").await;
    assert_eq!(db.stocks().await[&1], 15);

    // A new product, named like markup, is listed by its name as text.
    type_into(&browser, "#new-name", SCRIPT_LIKE).await;
    select(&browser, "#new-store", "1").await;
    type_into(&browser, "#new-stock", "7").await;
    click(&browser, "#new-submit").await;
    product_shows(&browser, 4, "name", SCRIPT_LIKE).await;
    let images = browser
        .find_all(Locator::Css("#products img, #orders img"))
        .await
        .unwrap();
    assert!(images.is_empty(), "a name became markup");

    // An order placed through the API appears, locked: the page reads no orders after it
    // opened (with two stores it follows both streams and polls nothing), so what shows
    // it is the store's event stream, which the live feed lists too.
    let (status, placed) = app.lock(&order(2, &[(4, 2), (1, 1)])).await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    let order_id = placed["data"]["order_id"].as_i64().unwrap();
    eventually("the order, locked", || async {
        let row = format!("#orders tr[data-order-id=\"{order_id}\"]");
        let status = text(&browser, &format!("{row} .status")).await?;
        let items = text(&browser, &format!("{row} .items")).await?;
        seen(
            status == "locked" && items.contains(SCRIPT_LIKE),
            format!("{status} {items}"),
        )
    })
    .await;
    product_shows(&browser, 4, "stock", "5").await;
    eventually("the order in the live feed", || async {
        let kinds = text(&browser, "#feed li:first-child .type").await?;
        let what = text(&browser, "#feed li:first-child .what").await?;
        seen(
            kinds == "order.locked" && what.contains(&format!("order #{order_id} ")),
            format!("{kinds} {what}"),
        )
    })
    .await;

    // No alert ever opened: the name ran nowhere.
    assert!(browser.get_alert_text().await.is_err(), "an alert is open");

    let screenshot = browser.screenshot().await.expect("screenshot");
    let dir = tempfile::Builder::new()
        .prefix("kitara-admin-page-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let file = dir.join("admin.png");
    std::fs::write(&file, &screenshot).expect("save the screenshot");
    println!(
        "screenshot of /admin ({} bytes): {}",
        screenshot.len(),
        file.display()
    );

    browser.close().await.ok();
    drop(driver);
    app.stop().await;
    db.drop_database().await;
}

//! The status page in a real browser: headless Chromium (driven through chromedriver) loads
//! `handler serve`'s `/admin/outbox`, clicks "Requeue" on a dead letter, sees it leave the list,
//! and saves a screenshot to `target/status-page.png`. `make test` installs Chromium when it is
//! missing (`scripts/lib/test-chromium.sh`).

use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::support::{
    Handler, TestDb, app_settings, drain, receiver, relay, settings, write_documents,
};

const KEY: &str = "browser-key-51c9";

/// A chromedriver process on a free port, stopped when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn chromedriver() -> Driver {
    let port = devstack::pick_free_port().expect("free port");
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (Debian chromium-driver; `make test` installs it via scripts/lib/test-chromium.sh)");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Driver { _child: child, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not start");
}

#[tokio::test]
async fn chromium_requeues_a_dead_letter_from_the_page() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let ids = write_documents(&s, 4, |i| format!(r#"{{"_id":"browser-{i}"}}"#)).await;
    rx.handle()
        .reject_ids(Some(&format!("^({}|{})$", ids[1], ids[2])))
        .unwrap();
    assert_eq!(drain(&relay(&s)).await.dead_lettered, 2);
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
            ("STANDALONE_FUNCTION_KEY", KEY),
        ],
    ))
    .await;
    let driver = chromedriver().await;
    let profile =
        std::env::temp_dir().join(format!("outbox-chromium-{}", uuid::Uuid::new_v4().simple()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=430,932",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");

    browser
        .goto(&handler.url(&format!("/admin/outbox?code={KEY}")))
        .await
        .unwrap();
    browser
        .find(Locator::Id(&format!("dead-{}", ids[1])))
        .await
        .unwrap();
    browser
        .find(Locator::Id(&format!("requeue-{}", ids[1])))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = browser
        .wait()
        .for_element(Locator::Id("notice"))
        .await
        .unwrap();
    assert!(notice.text().await.unwrap().contains("requeued"));
    assert!(
        browser
            .find(Locator::Id(&format!("dead-{}", ids[1])))
            .await
            .is_err(),
        "the requeued entry left the dead letters"
    );
    browser
        .find(Locator::Id(&format!("dead-{}", ids[2])))
        .await
        .unwrap();
    assert_eq!(db.count_entries_with("dead").await, 1);
    let png = browser.screenshot().await.unwrap();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::write(&out, png).unwrap();
    let source = browser.source().await.unwrap();
    assert!(!source.contains(KEY), "the key is not on the page");
    browser.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    db.drop().await;
}

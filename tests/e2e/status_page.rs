//! The outbox status page of `handler serve` over real HTTP: protected by the function key,
//! shows the figures and the dead letters, requeues one through its form, refuses
//! cross-site and tokenless posts, and never shows a secret; and the same page as the
//! `OutboxStatusHttp` function under the host.

use serde_json::{Value, json};

use crate::support::{
    Handler, TestDb, app_settings, drain, receiver, relay, settings, write_documents,
};

const KEY: &str = "page-key-77aa";

fn token_of(html: &str) -> String {
    let start = html.find("name=\"token\" value=\"").expect("a form token") + 20;
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_page_shows_dead_letters_and_requeues_one_safely() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let ids = write_documents(&s, 3, |i| format!(r#"{{"_id":"page-{i}"}}"#)).await;
    rx.handle()
        .reject_ids(Some(&format!("^{}$", ids[1])))
        .unwrap();
    let report = drain(&relay(&s)).await;
    assert_eq!(
        (report.published, report.dead_lettered),
        (2, 1),
        "{report:?}"
    );
    let env = app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
            ("STANDALONE_FUNCTION_KEY", KEY),
        ],
    );
    let handler = Handler::standalone(&env).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = handler.url(&format!("/admin/outbox?code={KEY}"));

    let res = http.get(handler.url("/admin/outbox")).send().await.unwrap();
    assert_eq!(res.status(), 401, "the page is protected like the API");

    let res = http.get(&page).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains(&format!("id=\"dead-{}\"", ids[1])), "{html}");
    assert!(
        html.contains("name=\"viewport\"") && html.contains("<svg"),
        "{html}"
    );
    for (name, value) in &env {
        let secret = name == "STANDALONE_FUNCTION_KEY"
            || name == "EVENTGRID_TOPIC_KEY"
            || name == "MONGODB_URI";
        assert!(
            !(secret && html.contains(value.as_str())),
            "{name} is on the page"
        );
    }
    let token = token_of(&html);
    let form = |token: &str| format!("token={token}&op=requeue&id={}", ids[1]);

    let res = http
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(form(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a cross-site post is refused");
    let res = http
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        403,
        "a post without the page's token is refused"
    );
    assert_eq!(db.count_entries_with("dead").await, 1);

    let res = http
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(form(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let back = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with("/admin/outbox?") && back.contains("done=requeued"),
        "{back}"
    );
    assert_eq!(db.count_entries_with("dead").await, 0);
    let html = http
        .get(handler.url(&back))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains(&format!("id=\"dead-{}\"", ids[1])),
        "it moved: {html}"
    );
    assert!(html.contains("id=\"notice\""), "{html}");
    db.drop().await;
}

/// One host invocation of `OutboxStatusHttp`; returns `Outputs.res`.
async fn invoke_page(handler: &Handler, method: &str, headers: Value, body: Option<&str>) -> Value {
    let mut req = json!({
        "Url": "https://contoso-outbox.azurewebsites.net/api/outbox/status",
        "Method": method,
        "Query": {},
        "Headers": headers,
        "Params": {},
    });
    if let Some(b) = body {
        req["Body"] = Value::String(b.to_owned());
    }
    let answer = handler
        .invoke(
            "OutboxStatusHttp",
            &json!({ "Data": { "req": req }, "Metadata": {} }),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["Outputs"]["res"].clone()
}

#[tokio::test]
async fn the_same_page_is_an_admin_level_http_function_under_the_host() {
    let function: Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::support::host::app_root().join("OutboxStatusHttp/function.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        function["bindings"][0]["authLevel"], "admin",
        "the host asks for the master key"
    );
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let ids = write_documents(&s, 2, |i| format!(r#"{{"_id":"fn-page-{i}"}}"#)).await;
    rx.handle()
        .reject_ids(Some(&format!("^{}$", ids[0])))
        .unwrap();
    assert_eq!(drain(&relay(&s)).await.dead_lettered, 1);
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;

    let res = invoke_page(
        &handler,
        "GET",
        json!({ "Host": ["contoso-outbox.azurewebsites.net"] }),
        None,
    )
    .await;
    assert_eq!(res["statusCode"], 200, "{res}");
    assert!(
        res["headers"]["Content-Type"]
            .as_str()
            .unwrap()
            .starts_with("text/html"),
        "{res}"
    );
    let html = res["body"].as_str().unwrap();
    assert!(html.contains(&format!("id=\"dead-{}\"", ids[0])), "{html}");

    let form = format!("token={}&op=skip&id={}", token_of(html), ids[0]);
    let res = invoke_page(
        &handler,
        "POST",
        json!({
            "Host": ["contoso-outbox.azurewebsites.net"],
            "Origin": ["https://contoso-outbox.azurewebsites.net"],
            "Content-Type": ["application/x-www-form-urlencoded"],
        }),
        Some(&form),
    )
    .await;
    assert_eq!(res["statusCode"], 303, "{res}");
    let back = res["headers"]["Location"].as_str().unwrap();
    assert!(
        back.starts_with("/api/outbox/status?") && back.contains("done=skipped"),
        "{back}"
    );
    assert_eq!(db.count_entries_with("skipped").await, 1);
    db.drop().await;
}

/// The ids of the stream's dead letters listed on `html`, in order.
fn stream_dead_ids(html: &str) -> Vec<String> {
    html.split("id=\"stream-dead-")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// The text of the card `id` on `html`.
fn card<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id}: {html}"));
    let rest = &html[start..];
    let value = rest.find("<b>").unwrap() + 3;
    &rest[value..value + rest[value..].find("</b>").unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_change_stream_mode_the_page_shows_the_stream_and_decides_on_its_dead_letters() {
    use std::time::{Duration, Instant};

    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let env = crate::change_stream::stream_settings(&db, &rx, &[("STANDALONE_FUNCTION_KEY", KEY)]);
    let handler = Handler::standalone(&env).await;
    crate::change_stream::wait_for_position(&db, &handler).await;
    // Event Grid refuses every event: each change is dead-lettered.
    rx.handle().reject_ids(Some(".")).unwrap();
    for i in 0..2 {
        db.documents()
            .insert_one(mongodb::bson::doc! { "_id": format!("cs-page-{i}") })
            .await
            .unwrap();
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = handler.url(&format!("/admin/outbox?code={KEY}"));
    let get = || async { http.get(&page).send().await.unwrap().text().await.unwrap() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let html = loop {
        let html = get().await;
        // The page reads the dead letters and the checkpoint one after the other, and the
        // reader saves its position just after dead-lettering: wait for both.
        if stream_dead_ids(&html).len() == 2 && card(&html, "stream-position") != "none" {
            break html;
        }
        assert!(Instant::now() < deadline, "{html}\n{}", handler.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rx.handle().clear_faults();

    // The position as a time, the lag, the reader and its lease.
    let position = card(&html, "stream-position");
    assert!(
        chrono::DateTime::parse_from_rfc3339(position).is_ok(),
        "the position is a time: {position}"
    );
    let lag = card(&html, "stream-lag");
    assert!(
        lag.strip_suffix(" s")
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        "{lag}"
    );
    assert!(card(&html, "stream-reader").starts_with("pid "), "{html}");
    // The lease's expiry as a time (live while the reader renews it; a 2 s lease on a loaded
    // machine may be caught between a lapse and its renewal).
    let lease = card(&html, "stream-lease");
    let until = lease
        .strip_prefix("live until ")
        .or_else(|| lease.strip_prefix("expired at "))
        .unwrap_or_else(|| panic!("{lease}"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(until.split(' ').next().unwrap()).is_ok(),
        "{lease}"
    );
    assert!(card(&html, "stream-dead").starts_with("2 "), "{html}");
    for (name, value) in &env {
        let secret = name == "STANDALONE_FUNCTION_KEY"
            || name == "EVENTGRID_TOPIC_KEY"
            || name == "MONGODB_URI";
        assert!(
            !(secret && html.contains(value.as_str())),
            "{name} is on the page"
        );
    }

    // Requeue one through its form: the reader publishes it; skip the other.
    let ids = stream_dead_ids(&html);
    let token = token_of(&html);
    let post = |op: &str, id: &str| {
        http.post(&page)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(format!("token={token}&of=stream&op={op}&id={id}"))
            .send()
    };
    let res = post("requeue", &ids[0]).await.unwrap();
    assert_eq!(res.status(), 303);
    let back = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.contains("done=requeued"), "{back}");
    let res = post("skip", &ids[1]).await.unwrap();
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .contains("done=skipped")
    );
    crate::change_stream::wait_for(&rx, 1, &handler).await;
    assert_eq!(rx.handle().accepted_ids(), [ids[0].clone()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let html = get().await;
        if stream_dead_ids(&html).is_empty() {
            assert!(card(&html, "stream-dead").contains("1 skipped"), "{html}");
            break;
        }
        assert!(Instant::now() < deadline, "{html}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Changes after them flow, and each one's commit → accepted lag is in the metrics.
    db.documents()
        .insert_one(mongodb::bson::doc! { "_id": "cs-page-later" })
        .await
        .unwrap();
    crate::change_stream::wait_for(&rx, 2, &handler).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http
            .get(handler.url("/metrics"))
            .header("x-functions-key", KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let timed = text
            .lines()
            .find(|l| l.starts_with("outbox_change_stream_lag_seconds_count"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if timed.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no outbox.change_stream.lag:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The OutboxStatusHttp function serves the same page.
    let host = Handler::functions(&crate::change_stream::stream_settings(&db, &rx, &[])).await;
    let res = invoke_page(
        &host,
        "GET",
        json!({ "Host": ["contoso-outbox.azurewebsites.net"] }),
        None,
    )
    .await;
    let html = res["body"].as_str().unwrap();
    assert!(card(html, "stream-dead").contains("1 skipped"), "{html}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(card(html, "stream-position")).is_ok(),
        "{html}"
    );
    db.drop().await;
}

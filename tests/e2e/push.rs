//! The push path and the tail: events published without a timer run, what a killed handler
//! leaves behind, several instances at once, the tailing timer invocation, the rate limit.
//!
//! Latency is measured by `make bench` (the `latency` scenario), never asserted here; the
//! waits below only bound how long a test may take.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use outbox_relay::domain::{EventId, OutboxEvent};
use outbox_relay::outbox::store;
use serde_json::Value;

use crate::support::{ClientRequest, Handler, TestDb, app_settings, receiver};

/// Push on, tail off, a schedule that never fires: only the push path can publish.
const PUSH_ONLY: &[(&str, &str)] = &[
    ("OUTBOX_PUSH", "on"),
    ("OUTBOX_TAIL", "off"),
    ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
];

/// Short leases, so that an entry whose pusher died is due again within seconds.
const SHORT_LEASE: &[(&str, &str)] = &[
    ("EVENTGRID_PUBLISH_TIMEOUT_MS", "1000"),
    ("OUTBOX_LEASE_SECS", "2"),
    ("OUTBOX_TIME_BUDGET_SECS", "20"),
];

fn with<'a>(parts: &[&[(&'a str, &'a str)]]) -> Vec<(&'a str, &'a str)> {
    let mut all: BTreeMap<&str, &str> = BTreeMap::new();
    for part in parts {
        all.extend(part.iter().copied());
    }
    all.into_iter().collect()
}

async fn post(handler: &Handler, id: &str) -> String {
    let res = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"_id":"{id}","n":1}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", handler.output());
    let body: Value = res.json().await.unwrap();
    body["eventId"].as_str().unwrap().to_owned()
}

/// An entry written straight into the outbox by "another application": due now, held by no
/// one. Returns its event id.
async fn insert_unheld(db: &TestDb, id: &str) -> String {
    let event = OutboxEvent::new(
        EventId::for_change("other", "documents", id, "L", 1),
        format!("documents/{id}"),
        "Other.DocumentCreated".into(),
        "1.0".into(),
        serde_json::value::RawValue::from_string(format!(r#"{{"id":"{id}"}}"#)).unwrap(),
        chrono::Utc::now(),
    );
    db.outbox()
        .insert_one(store::new_entry(&event, "documents", id, None, None))
        .await
        .unwrap();
    event.id.to_string()
}

/// Waits until the handler's tail has opened its change stream `times` times (its debug log says
/// so each time).
async fn wait_until_watching(handler: &Handler, times: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while handler.output().matches("Watching the outbox").count() < times {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail did not open its change stream (#{times}):\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Change streams open on the entries' collection, as the server lists them (an awaiting
/// `getMore` or a cursor between two), whoever opened them.
async fn streams_on_the_outbox(db: &TestDb) -> usize {
    use futures_util::TryStreamExt as _;
    let outbox = db.outbox();
    let ns = format!("{}.{}", outbox.namespace().db, outbox.name());
    let ops: Vec<mongodb::bson::Document> = db
        .db()
        .client()
        .database("admin")
        .aggregate([
            mongodb::bson::doc! { "$currentOp": { "allUsers": true, "idleCursors": true } },
            mongodb::bson::doc! { "$match": {
                "ns": ns,
                "cursor.originatingCommand.pipeline.0.$changeStream": { "$exists": true },
            } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    ops.len()
}

/// A standalone handler with its tail on, logging at debug what the tail does (it says when it
/// watches), and `extra` settings.
async fn tailing_handler(
    db: &TestDb,
    rx: &receiver::RunningReceiver,
    extra: &[(&str, &str)],
) -> Handler {
    let tailing = [
        ("OUTBOX_TAIL", "on"),
        ("RUST_LOG", "info,outbox_relay::relay=debug"),
    ];
    Handler::standalone(&app_settings(db, rx, &with(&[&tailing, extra]))).await
}

fn accepted(rx: &receiver::RunningReceiver) -> BTreeSet<String> {
    rx.handle().accepted_ids().into_iter().collect()
}

#[tokio::test]
async fn a_committed_event_is_pushed_without_any_drain() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(&db, &rx, PUSH_ONLY)).await;

    let mut written = BTreeSet::new();
    for i in 0..20 {
        written.insert(post(&handler, &format!("push-{i}")).await);
    }

    assert!(
        rx.handle()
            .wait_for_events(20, Duration::from_secs(15))
            .await,
        "only the push path runs here, and it published nothing:\n{}",
        handler.output()
    );
    assert_eq!(accepted(&rx), written);
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    // The entries were marked published by the push path: nothing is left for a drain.
    for _ in 0..50 {
        if db.count_entries_with("published").await == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db.count_entries_with("published").await, 20);
    assert_eq!(db.count_entries_with("pending").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_write_that_waits_for_its_publish_answers_after_the_topic_accepted_it() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &with(&[PUSH_ONLY, &[("OUTBOX_WRITE_WAIT_MS", "5000")]]),
    ))
    .await;
    let write = |id: &'static str| {
        handler
            .http()
            .post(handler.url("/api/documents"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"_id":"{id}","n":1}}"#))
            .send()
    };

    let res = write("waits-1").await.unwrap();
    assert_eq!(res.status(), 201, "{}", handler.output());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["published"], true, "{body}");
    // Checked at once, no waiting: the topic had the event before the client had its answer.
    assert!(
        accepted(&rx).contains(body["eventId"].as_str().unwrap()),
        "the answer said published, but the receiver has not accepted {body}"
    );

    // The topic failing: the write still commits and answers 201, saying "not yet".
    rx.handle()
        .push_fault(receiver::Fault::Fail(receiver::FailRule {
            count: 1,
            status: 503,
            retry_after: None,
            retry_after_ms: None,
        }))
        .unwrap();
    let res = write("waits-2").await.unwrap();
    assert_eq!(res.status(), 201, "{}", handler.output());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["published"], false, "{body}");
    // The first is marked published within the push path's marking interval (a second); the
    // second stays pending: the sweeper owns it now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while db.count_entries_with("published").await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        db.count_entries_with("pending").await,
        1,
        "the sweeper owns it now"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_handler_killed_between_commit_and_publish_loses_nothing() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Every publish hangs past its timeout: the pushes are in flight when the kill lands.
    rx.handle().set_latency(Some(Duration::from_secs(3)));
    let mut first =
        Handler::standalone(&app_settings(&db, &rx, &with(&[PUSH_ONLY, SHORT_LEASE]))).await;
    let mut written = BTreeSet::new();
    for i in 0..10 {
        written.insert(post(&first, &format!("kill-{i}")).await);
    }
    first.kill().await;
    let held = db.count_entries_with("pending").await;
    assert_eq!(
        held, 10,
        "every committed entry is still pending after the kill"
    );
    rx.handle().set_latency(None);

    // Another instance's tail takes them once their holds end.
    let second = Handler::standalone(&app_settings(
        &db,
        &rx,
        &with(&[
            SHORT_LEASE,
            &[("OUTBOX_TAIL", "on"), ("OUTBOX_POLL_MS", "200")],
        ]),
    ))
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !written.is_subset(&accepted(&rx)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = accepted(&rx);
    let lost: Vec<_> = written.difference(&got).collect();
    assert!(lost.is_empty(), "lost {lost:?}:\n{}", second.output());
    assert!(got.is_subset(&written), "only written events are published");
    db.drop().await;
}

#[tokio::test]
async fn a_mark_that_fails_after_the_topic_accepted_leaves_the_events_to_the_sweeper_with_their_ids()
 {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let uri = db.uri_for_handler();
    let first = Handler::standalone(&app_settings(
        &db,
        &rx,
        &with(&[PUSH_ONLY, SHORT_LEASE, &[("MONGODB_URI", &uri)]]),
    ))
    .await;
    // The handler's first `update` fails: with the push path alone, that is its first mark
    // of published events (the writes only insert).
    let admin = db.client.database("admin");
    admin
        .run_command(mongodb::bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["update"], "errorCode": 2, "appName": db.app_name() },
        })
        .await
        .unwrap();
    let mut written = BTreeSet::new();
    for i in 0..10 {
        written.insert(post(&first, &format!("unmarked-{i}")).await);
    }
    assert!(
        rx.handle()
            .wait_for_events(10, Duration::from_secs(15))
            .await,
        "{}",
        first.output()
    );
    first
        .wait_for_output("Cannot mark pushed events published")
        .await;
    // Accepted by the topic, but the failed mark left some pending under the push hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unmarked = db.count_entries_with("pending").await;
    assert!(unmarked >= 1, "the failed mark left its events pending");
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);

    // Once their holds end, a tail publishes exactly those again, with the same ids.
    let second = Handler::standalone(&app_settings(
        &db,
        &rx,
        &with(&[
            SHORT_LEASE,
            &[("OUTBOX_TAIL", "on"), ("OUTBOX_POLL_MS", "200")],
        ]),
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.count_entries_with("pending").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            second.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted(&rx),
        written,
        "nothing lost, nothing else published"
    );
    // Each event left unmarked is published once more, under its own id (a mark still on its
    // way when they were counted may have taken one of them off the list).
    let repeats = rx.handle().stats().duplicate_deliveries;
    assert!(
        (1..=unmarked).contains(&repeats),
        "{repeats} repeats for {unmarked} unmarked"
    );
    assert_eq!(db.count_entries_with("published").await, 10);
    drop(first);
    db.drop().await;
}

#[tokio::test]
async fn with_a_short_lease_pushed_events_are_marked_before_their_holds_end() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Each request takes 300 ms, a hold lasts one second from the commit, and the tail looks
    // every 50 ms: a mark left for the push path's usual second would come after the holds
    // end, and the tail would publish the events a second time.
    rx.handle().set_latency(Some(Duration::from_millis(300)));
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_PUSH", "on"),
            ("OUTBOX_TAIL", "on"),
            ("OUTBOX_POLL_MS", "50"),
            ("OUTBOX_LEASE_SECS", "1"),
            ("EVENTGRID_PUBLISH_TIMEOUT_MS", "500"),
        ],
    ))
    .await;

    let mut written = BTreeSet::new();
    for i in 0..10 {
        written.insert(post(&handler, &format!("short-hold-{i}")).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rx.handle()
            .wait_for_events(10, Duration::from_secs(15))
            .await,
        "{}",
        handler.output()
    );
    // Long enough for any hold to end and the tail to look many times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accepted(&rx), written);
    assert_eq!(
        rx.handle().stats().duplicate_deliveries,
        0,
        "events published again after their holds ended:\n{}",
        handler.output()
    );
    assert_eq!(db.count_entries_with("published").await, 10);
    db.drop().await;
}

#[tokio::test]
async fn an_entry_nobody_holds_is_relayed_at_once_by_the_change_stream() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // The poll is a minute away: only the change stream can wake the tail within the test.
    let handler = tailing_handler(&db, &rx, &[("OUTBOX_POLL_MS", "60000")]).await;
    // The tail's first drain (at start) found nothing; wait until it watches.
    wait_until_watching(&handler, 1, Duration::from_secs(15)).await;
    assert!(
        streams_on_the_outbox(&db).await >= 1,
        "the server does not list the tail's change stream"
    );

    let id = insert_unheld(&db, "other-app-1").await;

    assert!(
        rx.handle()
            .wait_for_events(1, Duration::from_secs(20))
            .await,
        "the change stream did not wake the tail:\n{}",
        handler.output()
    );
    assert_eq!(rx.handle().accepted_ids(), vec![id]);
    db.drop().await;
}

#[tokio::test]
async fn without_its_watch_the_tail_opens_no_change_stream_and_finds_unheld_entries_by_its_poll() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = tailing_handler(
        &db,
        &rx,
        &[("OUTBOX_TAIL_WATCH", "off"), ("OUTBOX_POLL_MS", "300")],
    )
    .await;
    let pushed = post(&handler, "pushed-1").await;
    assert!(
        rx.handle()
            .wait_for_events(1, Duration::from_secs(15))
            .await,
        "the push path does not need the watch:\n{}",
        handler.output()
    );

    let id = insert_unheld(&db, "other-app-1").await;
    assert!(
        rx.handle()
            .wait_for_events(2, Duration::from_secs(15))
            .await,
        "the poll did not find the entry nobody holds:\n{}",
        handler.output()
    );
    assert_eq!(accepted(&rx), BTreeSet::from([pushed, id]));
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    assert_eq!(
        streams_on_the_outbox(&db).await,
        0,
        "OUTBOX_TAIL_WATCH=off, yet a change stream is open on the outbox"
    );
    assert!(
        !handler.output().contains("Watching the outbox"),
        "{}",
        handler.output()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cosmos_ru_the_tail_watches_with_rus_mandatory_stream_and_wakes_for_unheld_entries() {
    let proxy = crate::cosmos::proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    // The poll is a minute away: only the change stream can wake the tail within the test.
    let handler = Handler::standalone(&crate::cosmos::through(
        &proxy,
        app_settings(
            &db,
            &rx,
            &[
                ("OUTBOX_TAIL", "on"),
                ("OUTBOX_POLL_MS", "60000"),
                (
                    "RUST_LOG",
                    "info,outbox_relay::relay=debug,outbox_relay::outbox=debug",
                ),
            ],
        ),
    ))
    .await;
    wait_until_watching(&handler, 1, Duration::from_secs(15)).await;
    // RU refused the stream of our own shape, then took its mandatory one.
    let stats = proxy.handle().change_stream_stats();
    assert!(stats.refused >= 1 && stats.opened >= 1, "{stats:?}");

    // A document written beside the entries by another application, then entries nobody
    // holds: each entry wakes the tail.
    db.documents()
        .insert_one(mongodb::bson::doc! { "_id": "plain" })
        .await
        .unwrap();
    let mut ids = BTreeSet::new();
    for n in 1..=2 {
        ids.insert(insert_unheld(&db, &format!("ru-other-{n}")).await);
        assert!(
            rx.handle()
                .wait_for_events(n, Duration::from_secs(20))
                .await,
            "RU's change stream did not wake the tail for entry {n}:\n{}",
            handler.output()
        );
    }
    assert_eq!(accepted(&rx), ids);
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn two_pushing_instances_and_their_tails_publish_every_event_once() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_PUSH", "on"),
            ("OUTBOX_TAIL", "on"),
            ("OUTBOX_POLL_MS", "100"),
        ],
    );
    let a = Handler::standalone(&settings).await;
    let b = Handler::standalone(&settings).await;

    let writes = (0..60).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        async move { post(target, &format!("two-{i}")).await }
    });
    let written: BTreeSet<String> = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .collect();

    assert!(
        rx.handle()
            .wait_for_events(60, Duration::from_secs(20))
            .await,
        "{}\n{}",
        a.output(),
        b.output()
    );
    // Give a wrongly doubled publish time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(accepted(&rx), written);
    assert_eq!(
        rx.handle().stats().duplicate_deliveries,
        0,
        "no fault, so no duplicate"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_tailing_timer_invocation_relays_until_its_budget_and_returns_in_time() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(
        &db,
        &rx,
        &with(&[
            SHORT_LEASE,
            &[
                ("OUTBOX_TAIL", "on"),
                ("OUTBOX_PUSH", "on"),
                ("OUTBOX_POLL_MS", "200"),
                ("OUTBOX_TIME_BUDGET_SECS", "6"),
            ],
        ]),
    ))
    .await;

    // A write through the host's envelope is pushed with no timer run at all.
    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"fn-1"}"#))
        .await;
    assert_eq!(res.status, 201, "{:?}", res.body);
    assert!(
        rx.handle()
            .wait_for_events(1, Duration::from_secs(10))
            .await,
        "{}",
        handler.output()
    );

    let started = tokio::time::Instant::now();
    let tick = handler.try_tick(false, Some(Duration::from_secs(30)));
    let others = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = insert_unheld(&db, "during-1").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = insert_unheld(&db, "during-2").await;
        (first, second)
    };
    let (answer, (first, second)) = tokio::join!(tick, others);
    let took = started.elapsed();
    let answer = answer.expect("the invocation answered");

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(
        took <= Duration::from_secs(6),
        "the invocation must end within its 6 s budget, took {took:?}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "it relays for its budget rather than returning after one drain, took {took:?}"
    );
    let got = accepted(&rx);
    assert!(got.contains(&first) && got.contains(&second), "{got:?}");
    db.drop().await;
}

#[tokio::test]
async fn the_host_killing_the_handler_mid_invocation_loses_nothing() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = app_settings(
        &db,
        &rx,
        &with(&[
            SHORT_LEASE,
            &[
                ("OUTBOX_TAIL", "on"),
                ("OUTBOX_POLL_MS", "200"),
                ("OUTBOX_TIME_BUDGET_SECS", "10"),
                ("OUTBOX_BATCH_SIZE", "5"),
            ],
        ]),
    );
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        ids.insert(insert_unheld(&db, &format!("mid-{i}")).await);
    }
    rx.handle().set_latency(Some(Duration::from_millis(400)));
    let mut first = Handler::functions(&settings).await;
    let tick = first.try_tick(false, Some(Duration::from_secs(30)));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(900)).await;
        first.sigkill();
    };
    let (answer, ()) = tokio::join!(tick, kill);
    assert!(answer.is_err(), "the kill cut the invocation short");
    first.kill().await;
    rx.handle().set_latency(None);

    let second = Handler::functions(&settings).await;
    let answer = second.tick().await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let got = accepted(&rx);
    let lost: Vec<_> = ids.difference(&got).collect();
    assert!(lost.is_empty(), "lost {lost:?}:\n{}", second.output());
    db.drop().await;
}

#[tokio::test]
async fn the_rate_limit_spreads_a_burst_at_the_receiver() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    for i in 0..300 {
        insert_unheld(&db, &format!("rate-{i}")).await;
    }
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
            ("OUTBOX_BATCH_SIZE", "10"),
            ("EVENTGRID_MAX_EVENTS_PER_SEC", "100"),
        ],
    ))
    .await;

    let res = handler
        .http()
        .post(handler.url("/admin/functions/OutboxTimer"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let requests = rx.handle().requests();
    let events: u64 = requests
        .iter()
        .map(|r| r.event_count.unwrap_or(0) as u64)
        .sum();
    assert_eq!(events, 300);
    // A bucket of one second's events: no second-long window may see more than the bucket
    // plus one second of refill.
    for (i, start) in requests.iter().enumerate() {
        let in_window: u64 = requests[i..]
            .iter()
            .take_while(|r| r.decided_at_ms < start.decided_at_ms + 1000)
            .map(|r| r.event_count.unwrap_or(0) as u64)
            .sum();
        assert!(
            in_window <= 200,
            "{in_window} events within one second from request {}",
            start.seq
        );
    }
    let span = requests.last().unwrap().decided_at_ms - requests[0].decided_at_ms;
    assert!(
        span >= 1800,
        "300 events at 100/s after a 100-event burst take about 2 s, took {span} ms"
    );
    db.drop().await;
}

#[tokio::test]
async fn the_tail_reopens_its_change_stream_after_mongod_restarts() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tail-mongod-{}", uuid::Uuid::new_v4().simple()));
    let mut rs = devstack::ReplicaSet::start(devstack::ReplicaSetOptions::new(&dir))
        .await
        .expect("a replica set of this test's own");
    let uri = format!("{}&serverSelectionTimeoutMS=2000", rs.uri());
    let db = TestDb::on(&uri, &[]).await;
    let rx = receiver::start().await;
    // The poll is a minute away: within the test only the change stream wakes the tail.
    let handler = tailing_handler(&db, &rx, &[("OUTBOX_POLL_MS", "60000")]).await;
    wait_until_watching(&handler, 1, Duration::from_secs(15)).await;
    let before = insert_unheld(&db, "before-restart").await;
    assert!(
        rx.handle()
            .wait_for_events(1, Duration::from_secs(15))
            .await,
        "{}",
        handler.output()
    );

    rs.kill().await.expect("SIGKILL mongod");
    tokio::time::sleep(Duration::from_secs(1)).await;
    rs.restart().await.expect("restart mongod");
    wait_until_watching(&handler, 2, Duration::from_secs(30)).await;
    let after = insert_unheld(&db, "after-restart").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !accepted(&rx).contains(&after) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail did not relay after the restart:\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `before` may arrive twice: the relay records a publish without waiting for the journal,
    // and a SIGKILLed mongod can lose that record (a duplicate, never a loss).
    assert_eq!(accepted(&rx), BTreeSet::from([before, after]));
    drop(handler);
    db.drop().await;
    rs.stop().await.expect("stop mongod");
    let _ = std::fs::remove_dir_all(&dir);
}

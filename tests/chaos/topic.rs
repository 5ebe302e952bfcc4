//! Event Grid misbehaving: down (503), throttling (429 with `Retry-After`), answers lost after
//! the events were accepted, a poison event in a large batch, answers around the publish
//! timeout and the lease.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::harness::{
    Scale, Writes, chaos_settings, drain_to_completion, millis, teardown, tick, tick_until,
};
use crate::ledger::Ledger;
use crate::support::receiver::{FailRule, Fault};
use crate::support::{Handler, TestDb, receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_outage_delays_events_but_loses_and_repeats_none() {
    let scale = Scale::get();
    let ledger = Ledger::new("topic_down_503");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = chaos_settings(&db, &rx, &[("EVENTGRID_PUBLISH_RETRIES", "1")]);
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("down");
    writes.batch(&h, &ledger, 100, 4).await;
    let (outages, down) = (scale.pick(2, 6), scale.pick(2_000, 10_000));
    let mut failed_runs = 0;

    for _ in 0..outages {
        let stop = CancellationToken::new();
        let outage = async {
            tokio::time::sleep(millis(300, 1_200)).await;
            rx.handle()
                .push_fault(FailRule::new(1_000_000, 503).retry_after("1").into())
                .unwrap();
            tokio::time::sleep(Duration::from_millis(down)).await;
            rx.handle().clear_faults();
            tokio::time::sleep(millis(300, 1_000)).await;
            stop.cancel();
        };
        let (ticks, (), ()) = tokio::join!(
            tick_until(&h, Duration::from_millis(50), &stop, || {}),
            writes.until([&h], &ledger, 2, Duration::from_millis(5), &stop),
            outage,
        );
        failed_runs += ticks.failed;
    }
    drain_to_completion(&[&h], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler", &h.output());
    ledger.note("outages", outages);
    ledger.note("outage_ms", down);
    ledger.note("failed_runs", failed_runs);

    ledger.verify(&db, &rx, false).await;

    assert!(
        failed_runs > 0,
        "runs during the outage must fail so the host records them"
    );
    assert!(rx.handle().stats().injected_failures > 0);
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_of_429_with_retry_after_lose_and_repeat_nothing() {
    let scale = Scale::get();
    let ledger = Ledger::new("throttled_429");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Quick retries that wait out Retry-After: 1 s wait + 1 s request fit in a 3 s lease.
    let settings = chaos_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_PUBLISH_RETRIES", "2"),
            ("OUTBOX_LEASE_SECS", "3"),
        ],
    );
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("throttle");
    writes.batch(&h, &ledger, 100, 4).await;
    let storms = scale.pick(5, 60);
    let stop = CancellationToken::new();
    let weather = async {
        for s in 0..storms {
            tokio::time::sleep(millis(200, 1_200)).await;
            let rule = FailRule::new(rand::random_range(2..8), 429);
            let rule = if s % 2 == 0 {
                rule.retry_after("1")
            } else {
                rule.retry_after_ms(rand::random_range(200..1_200))
            };
            rx.handle().push_fault(rule.into()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
    };

    tokio::join!(
        tick_until(&h, Duration::from_millis(30), &stop, || {}),
        writes.until([&h], &ledger, 2, Duration::from_millis(5), &stop),
        weather,
    );
    rx.handle().clear_faults();
    drain_to_completion(&[&h], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler", &h.output());
    let throttled = rx
        .handle()
        .stats()
        .requests_by_status
        .get(&429)
        .copied()
        .unwrap_or(0);
    ledger.note("storms", storms);
    ledger.note("answered_429", throttled);

    ledger.verify(&db, &rx, false).await;

    assert!(throttled > 0, "the storms reached the relay");
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_after_acceptance_repeat_only_the_events_they_carried() {
    let scale = Scale::get();
    let ledger = Ledger::new("accept_then_drop");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = chaos_settings(&db, &rx, &[("EVENTGRID_PUBLISH_RETRIES", "1")]);
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("drop");
    writes.batch(&h, &ledger, 100, 4).await;
    let drops = scale.pick(8, 120);
    let stop = CancellationToken::new();
    let dropper = async {
        for _ in 0..drops {
            tokio::time::sleep(millis(100, 700)).await;
            rx.handle()
                .push_fault(Fault::DropAfterAccept {
                    count: rand::random_range(1..3),
                })
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
    };

    tokio::join!(
        tick_until(&h, Duration::from_millis(30), &stop, || {}),
        writes.until([&h], &ledger, 2, Duration::from_millis(5), &stop),
        dropper,
    );
    rx.handle().clear_faults();
    drain_to_completion(&[&h], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler", &h.output());
    let dropped = rx.handle().stats().dropped_responses;
    ledger.note("drop_rules", drops);

    let row = ledger.verify(&db, &rx, false).await;

    assert!(dropped > 0, "some answers were dropped");
    assert!(
        row.duplicated > 0,
        "dropped answers are unknown outcomes, so their events are sent again: {row:?}"
    );
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_in_a_large_batch_are_dead_lettered_and_block_nothing() {
    let scale = Scale::get();
    let ledger = Ledger::new("poison_in_large_batch");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let (docs, batch, poisons) = (
        scale.pick(1_500, 5_000),
        scale.pick("1000", "2500"),
        scale.pick(3, 10),
    );
    let settings = chaos_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_BATCH_SIZE", batch),
            ("EVENTGRID_PUBLISH_TIMEOUT_MS", "5000"),
            ("OUTBOX_LEASE_SECS", "15"),
            ("OUTBOX_TIME_BUDGET_SECS", "60"),
        ],
    );
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("poison");
    writes.batch(&h, &ledger, docs, 8).await;
    let created = ledger.created_ids();
    let mut chosen: Vec<String> = Vec::new();
    while chosen.len() < poisons {
        let id = &created[rand::random_range(0..created.len())];
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    for id in &chosen {
        ledger.poison(id);
    }
    rx.handle()
        .reject_ids(Some(&format!("^({})$", chosen.join("|"))))
        .unwrap();
    let committed = db.count_documents().await;

    let (first, answered) = tick(&h, false).await;

    assert!(answered, "{}", h.output());
    assert_eq!(
        first.published,
        committed - poisons as u64,
        "the first run delivers everything but the poison: {first:?}\n{}",
        crate::harness::tail(&h.output(), 40)
    );
    assert_eq!(db.count_entries_with("dead").await, poisons as u64);
    // More writes and runs: the dead letters stay out of the way.
    writes.batch(&h, &ledger, 50, 4).await;
    drain_to_completion(&[&h], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler", &h.output());
    ledger.note("poison_events", poisons);
    ledger.note("batch_size", batch);
    ledger.note("refused_400", rx.handle().stats().refused_requests);

    ledger.verify(&db, &rx, false).await;

    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_slower_than_the_timeout_and_near_the_lease_repeat_only_unknown_outcomes() {
    let scale = Scale::get();
    let ledger = Ledger::new("slow_publish_vs_lease");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Lease 2 s = 2 × the 1 s publish timeout: the tightest the settings allow.
    let settings = chaos_settings(
        &db,
        &rx,
        &[("OUTBOX_BATCH_SIZE", "5"), ("OUTBOX_LEASE_SECS", "2")],
    );
    let (a, b) = tokio::join!(Handler::functions(&settings), Handler::functions(&settings));
    let writes = Writes::new("slow");
    writes.batch(&a, &ledger, 60, 4).await;
    let phases = scale.pick(6, 80);
    let stop = CancellationToken::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let weather = async {
        let mut window = None;
        for p in 0..phases {
            // In time but slow; around the timeout; past it. Every phase after the first
            // three is random.
            let kind = if p < 3 { p } else { rand::random_range(0..3) };
            let (name, delay) = match kind {
                0 => ("in time", millis(400, 750)),
                1 => ("around the timeout", millis(900, 1_100)),
                _ => ("past the timeout", millis(1_200, 1_600)),
            };
            kinds.push(name);
            if kind > 0 && window.is_none() {
                window = Some(ledger.open_window(&rx, name));
            }
            rx.handle().set_latency(Some(delay));
            if kind == 0
                && let Some(w) = window.take()
            {
                ledger.close_window(&rx, w).await;
            }
            tokio::time::sleep(millis(1_200, 2_500)).await;
        }
        rx.handle().set_latency(None);
        if let Some(w) = window.take() {
            ledger.close_window(&rx, w).await;
        }
        stop.cancel();
    };

    let (ta, tb, (), ()) = tokio::join!(
        tick_until(&a, Duration::from_millis(20), &stop, || {}),
        tick_until(&b, Duration::from_millis(20), &stop, || {}),
        writes.until([&a, &b], &ledger, 2, Duration::from_millis(20), &stop),
        weather,
    );
    drain_to_completion(&[&a, &b], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler a", &a.output());
    ledger.keep_output("handler b", &b.output());
    ledger.note("phases", kinds.join(", "));
    ledger.note("published_by_a", ta.published);
    ledger.note("published_by_b", tb.published);
    let takeovers = [&a, &b]
        .iter()
        .map(|h| {
            h.output()
                .matches("claimed by another relay after our lease ran out")
                .count()
        })
        .sum::<usize>();
    ledger.note("lease_takeovers_logged", takeovers as u64);

    ledger.verify(&db, &rx, false).await;

    assert_eq!(
        takeovers, 0,
        "a publish outlived its lease and another relay took the entries over"
    );
    teardown(db).await;
}

//! Many relays at once: four handler processes ticking concurrently, and timer occurrences
//! replayed into one process while its run is still going. No faults: no duplicate at all.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::harness::{
    Scale, Ticks, Writes, chaos_settings, drain_to_completion, teardown, tick, tick_until,
};
use crate::ledger::Ledger;
use crate::support::{Handler, TestDb, receiver};

/// Timings without faults: a publish timeout no loaded machine misses, so that any duplicate
/// is a failure.
const CALM: &[(&str, &str)] = &[
    ("EVENTGRID_PUBLISH_TIMEOUT_MS", "5000"),
    ("OUTBOX_LEASE_SECS", "10"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_at_once_publish_each_event_once_and_all_take_part() {
    let scale = Scale::get();
    let ledger = Ledger::new("four_relays");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = chaos_settings(&db, &rx, CALM);
    let (a, b, c, d) = tokio::join!(
        Handler::functions(&settings),
        Handler::functions(&settings),
        Handler::functions(&settings),
        Handler::functions(&settings),
    );
    let relays = [&a, &b, &c, &d];
    let writes = Writes::new("four");
    tokio::join!(
        writes.batch(&a, &ledger, 100, 2),
        writes.batch(&b, &ledger, 100, 2),
        writes.batch(&c, &ledger, 100, 2),
        writes.batch(&d, &ledger, 100, 2),
    );
    let stop = CancellationToken::new();
    let run_for = Duration::from_secs(scale.pick(6, 60));
    let timer = async {
        tokio::time::sleep(run_for).await;
        stop.cancel();
    };

    let (ta, tb, tc, td, (), ()) = tokio::join!(
        tick_until(&a, Duration::from_millis(20), &stop, || {}),
        tick_until(&b, Duration::from_millis(20), &stop, || {}),
        tick_until(&c, Duration::from_millis(20), &stop, || {}),
        tick_until(&d, Duration::from_millis(20), &stop, || {}),
        writes.until(relays, &ledger, 4, Duration::ZERO, &stop),
        timer,
    );
    let last = drain_to_completion(&relays, &db, Duration::from_secs(60)).await;
    for (name, h) in ["a", "b", "c", "d"].iter().zip(relays) {
        ledger.keep_output(&format!("relay {name}"), &h.output());
    }
    let shares: Vec<u64> = [&ta, &tb, &tc, &td].iter().map(|t| t.published).collect();
    ledger.note("published_per_relay", format!("{shares:?}"));
    ledger.note("final_published", last.published);

    ledger.verify(&db, &rx, true).await;

    assert!(
        shares.iter().all(|&n| n > 0),
        "every relay took part (none starved): {shares:?}"
    );
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_occurrences_replayed_during_a_run_publish_each_event_once() {
    let scale = Scale::get();
    let ledger = Ledger::new("replayed_timer");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Slow answers keep each run going while the replays arrive.
    rx.handle().set_latency(Some(Duration::from_millis(25)));
    let settings = chaos_settings(&db, &rx, CALM);
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("replay");
    writes.batch(&h, &ledger, 200, 4).await;
    let stop = CancellationToken::new();
    let run_for = Duration::from_secs(scale.pick(6, 60));
    let mut rounds = 0_u64;
    let mut overlapping = 0_u64;
    let mut ticks = Ticks::default();
    let replays = async {
        let started = Instant::now();
        while started.elapsed() < run_for {
            // One occurrence, then the host replays it (IsPastDue) while it is running.
            let runs = (0..rand::random_range(2..5_usize)).map(|k| {
                let h = &h;
                async move {
                    tokio::time::sleep(Duration::from_millis(k as u64 * 15)).await;
                    tick(h, k > 0).await.0
                }
            });
            let results = futures_util::future::join_all(runs).await;
            rounds += 1;
            if results.iter().filter(|t| t.published > 0).count() > 1 {
                overlapping += 1;
            }
            for t in results {
                ticks.ticks += t.ticks;
                ticks.published += t.published;
                ticks.failed += t.failed;
            }
        }
        stop.cancel();
    };

    tokio::join!(
        writes.until([&h], &ledger, 3, Duration::ZERO, &stop),
        replays,
    );
    rx.handle().clear_faults();
    drain_to_completion(&[&h], &db, Duration::from_secs(60)).await;
    ledger.keep_output("handler", &h.output());
    ledger.note("rounds", rounds);
    ledger.note("rounds_with_overlapping_publishing_runs", overlapping);
    ledger.note("runs", ticks.ticks);

    ledger.verify(&db, &rx, true).await;

    assert_eq!(ticks.failed, 0, "no run failed: {ticks:?}");
    teardown(db).await;
}

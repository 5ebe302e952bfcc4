//! Crashes: the relay process SIGKILLed at random points, `mongod` killed and restarted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use devstack::{ReplicaSet, ReplicaSetOptions};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    Scale, Writes, chaos_settings, drain_to_completion, high_water, millis, teardown, tick_until,
};
use crate::ledger::{Ledger, WriteResult};
use crate::support::{Handler, TestDb, receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_points_lose_nothing_and_repeat_only_unrecorded_requests() {
    let scale = Scale::get();
    let ledger = Ledger::new("sigkill_mid_drain");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = chaos_settings(&db, &rx, &[]);
    let writes = Writes::new("kill");
    // Answers take a moment, so that kills land while requests are in flight or between a
    // 200 and its record.
    rx.handle().set_latency(Some(Duration::from_millis(40)));
    let iterations = scale.pick(5, 50);

    for i in 0..iterations {
        let h = Handler::functions(&settings).await;
        let lo = high_water(&rx);
        writes.batch(&h, &ledger, 30, 4).await;
        let stop = CancellationToken::new();
        let killer = async {
            if i % 2 == 0 {
                // Anywhere: claiming, publishing, recording, between runs, mid-write.
                tokio::time::sleep(millis(0, 600)).await;
            } else {
                // Right after the receiver accepted some events: before their 200 arrives.
                let seen = rx.handle().stats().accepted_events;
                rx.handle()
                    .wait_for_events(seen + rand::random_range(1..25), Duration::from_secs(5))
                    .await;
            }
            h.sigkill();
            stop.cancel();
        };
        tokio::join!(
            tick_until(&h, Duration::from_millis(10), &stop, || {}),
            writes.until([&h], &ledger, 2, Duration::ZERO, &stop),
            killer,
        );
        let mut h = h;
        h.kill().await;
        ledger.keep_output(&format!("handler #{i} (killed)"), &h.output());
        // The process is dead: whatever it had not recorded stays unrecorded.
        ledger
            .unrecorded_since(lo, &rx, &db, &format!("handler #{i} killed"))
            .await;
    }
    rx.handle().clear_faults();
    let last = Handler::functions(&settings).await;
    writes.batch(&last, &ledger, 10, 2).await;
    let ticks = drain_to_completion(&[&last], &db, Duration::from_secs(90)).await;
    ledger.keep_output("final handler", &last.output());
    ledger.note("kills", iterations);
    ledger.note("final_ticks", ticks.ticks);

    let row = ledger.verify(&db, &rx, false).await;

    assert!(row.committed >= 30 * iterations as u64, "{row:?}");
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_handlers_killed_while_writing_lose_nothing() {
    let scale = Scale::get();
    let ledger = Ledger::new("sigkill_mid_push");
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // The push path on: each committed event is published by the process that wrote it, at
    // once; a kill lands between commits and publishes, mid-publish, or between a 200 and
    // its record. The holds of a killed process's entries end after the 2 s lease; the final
    // handler's drains (the sweeper) take them then.
    let settings = chaos_settings(&db, &rx, &[("OUTBOX_PUSH", "on")]);
    let writes = Writes::new("push");
    rx.handle().set_latency(Some(Duration::from_millis(20)));
    let iterations = scale.pick(5, 40);

    for i in 0..iterations {
        let h = Handler::functions(&settings).await;
        let lo = high_water(&rx);
        let stop = CancellationToken::new();
        let killer = async {
            tokio::time::sleep(millis(50, 700)).await;
            h.sigkill();
            stop.cancel();
        };
        tokio::join!(
            writes.until([&h], &ledger, 4, Duration::ZERO, &stop),
            killer,
        );
        let mut h = h;
        h.kill().await;
        ledger.keep_output(&format!("pushing handler #{i} (killed)"), &h.output());
        ledger
            .unrecorded_since(lo, &rx, &db, &format!("pushing handler #{i} killed"))
            .await;
    }
    rx.handle().clear_faults();
    let last = Handler::functions(&settings).await;
    writes.batch(&last, &ledger, 10, 2).await;
    let ticks = drain_to_completion(&[&last], &db, Duration::from_secs(90)).await;
    ledger.keep_output("final handler", &last.output());
    ledger.note("kills", iterations);
    ledger.note("final_ticks", ticks.ticks);

    let row = ledger.verify(&db, &rx, false).await;

    assert!(row.committed > 0, "{row:?}");
    teardown(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongod_restarted_mid_drain_loses_nothing_and_the_handler_recovers_by_itself() {
    let scale = Scale::get();
    let ledger = Ledger::new("mongod_restart");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chaos-mongod-{}", uuid::Uuid::new_v4().simple()));
    let mut rs = ReplicaSet::start(ReplicaSetOptions::new(&dir))
        .await
        .expect("a replica set of this test's own");
    // Fail fast while the server is down (the default waits 5 s for a server).
    let uri = format!("{}&serverSelectionTimeoutMS=2000", rs.uri());
    let db = TestDb::on(&uri, &[]).await;
    let rx = receiver::start().await;
    rx.handle().set_latency(Some(Duration::from_millis(30)));
    let settings = chaos_settings(&db, &rx, &[("OUTBOX_LEASE_SECS", "3")]);
    let h = Handler::functions(&settings).await;
    let writes = Writes::new("mongod");
    writes.batch(&h, &ledger, 150, 4).await;
    let restarts = scale.pick(2, 12);
    let mut failed_runs = 0;

    for r in 0..restarts {
        let stop_ticks = CancellationToken::new();
        let ticks_ended = CancellationToken::new();
        let stop_writes = CancellationToken::new();
        // The receiver's mark when the current drain started.
        let drain_lo = AtomicU64::new(high_water(&rx));
        let ticker = async {
            let t = tick_until(&h, Duration::from_millis(10), &stop_ticks, || {
                drain_lo.store(high_water(&rx), Ordering::SeqCst);
            })
            .await;
            ticks_ended.cancel();
            t
        };
        let chaos = async {
            let seen = rx.handle().stats().accepted_events;
            rx.handle()
                .wait_for_events(seen + rand::random_range(1..30), Duration::from_secs(10))
                .await;
            // Mid-drain: requests are in flight, 200s are about to be recorded.
            let lo = drain_lo.load(Ordering::SeqCst);
            rs.kill().await.expect("SIGKILL mongod");
            tokio::time::sleep(millis(1_000, 4_000)).await;
            // Let the drains fail and end (the host records failed runs), so that nothing is
            // published again before the snapshot below; writes go on through the restart.
            stop_ticks.cancel();
            ticks_ended.cancelled().await;
            rs.restart().await.expect("restart mongod");
            // Nothing can record any more for the requests since the drain that was running
            // when mongod died, and no drain has run since the database came back.
            ledger
                .unrecorded_since(lo, &rx, &db, &format!("mongod killed (#{r})"))
                .await;
            tokio::time::sleep(millis(200, 1_000)).await;
            stop_writes.cancel();
        };
        let (ticks, (), ()) = tokio::join!(
            ticker,
            writes.until([&h], &ledger, 2, Duration::from_millis(5), &stop_writes),
            chaos,
        );
        failed_runs += ticks.failed;
    }
    // The same process, never restarted, writes and drains again.
    let before = ledger.writes().len();
    writes.batch(&h, &ledger, 20, 2).await;
    let after: Vec<_> = ledger.writes()[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|w| matches!(w.result, WriteResult::Created { .. })),
        "the handler did not recover its database connection by itself: {after:?}\n{}",
        crate::harness::tail(&h.output(), 60)
    );
    let ticks = drain_to_completion(&[&h], &db, Duration::from_secs(90)).await;
    ledger.keep_output("handler", &h.output());
    ledger.note("mongod_restarts", restarts);
    ledger.note("failed_runs_during_outages", failed_runs);
    ledger.note("final_ticks", ticks.ticks);

    ledger.verify(&db, &rx, false).await;

    drop(h);
    teardown(db).await;
    rs.stop().await.expect("stop mongod");
    let _ = std::fs::remove_dir_all(&dir);
}

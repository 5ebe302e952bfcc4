//! `OUTBOX_ORDERING=subject` under kills: documents change version after version while relays
//! are SIGKILLed at random points; afterwards every version of every document has been
//! published, nothing was published that was not committed, and no version of a subject was
//! first delivered after a newer one of the same subject.
//!
//! Out-of-order is judged on **first deliveries**: a repeat of an old version (an unknown
//! outcome redelivered) may follow a newer one — consumers de-duplicate it by id — but the first
//! time a version reaches Event Grid, every older version of its subject must already have.
//! Refused requests (503) make older versions back off while newer ones are due, and killed
//! relays leave claims to expire, so without ordering this scenario does see versions out of
//! order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::harness::{Scale, chaos_settings, drain_to_completion, millis, teardown, tick_until};
use crate::ledger::Row;
use crate::support::{ClientRequest, Handler, TestDb, receiver};

/// Writes new versions of `docs` (each document's versions one after another) until `stop`.
async fn keep_changing(h: &Handler, docs: &[String], stop: &CancellationToken) -> u64 {
    let mut sent = 0;
    while !stop.is_cancelled() {
        for id in docs {
            if stop.is_cancelled() {
                break;
            }
            let request = ClientRequest::put_json(id, format!(r#"{{"at":{sent}}}"#));
            let _ = h.try_write(&request, Some(Duration::from_secs(5))).await;
            sent += 1;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subject_order_holds_while_relays_are_killed() {
    let started = Instant::now();
    let scale = Scale::get();
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let rx = receiver::start().await;
    let settings = chaos_settings(
        &db,
        &rx,
        &[("OUTBOX_ORDERING", "subject"), ("OUTBOX_BATCH_SIZE", "7")],
    );
    rx.handle().set_latency(Some(Duration::from_millis(30)));
    let docs: Vec<String> = (0..6).map(|i| format!("ord-{i}")).collect();
    let mut writes = 0;

    for _ in 0..scale.pick(4, 20) {
        let mut h = Handler::functions(&settings).await;
        // A few refused requests: their entries back off while newer versions are due.
        rx.handle()
            .push_fault(eventgrid_receiver::Fault::fail(2, 503))
            .unwrap();
        let stop = CancellationToken::new();
        let killer = async {
            tokio::time::sleep(millis(200, 900)).await;
            h.sigkill();
            stop.cancel();
        };
        let (_, sent, ()) = tokio::join!(
            tick_until(&h, Duration::from_millis(20), &stop, || {}),
            keep_changing(&h, &docs, &stop),
            killer,
        );
        writes += sent;
        h.kill().await;
    }
    rx.handle().set_latency(None);
    rx.handle().clear_faults();
    let last = Handler::functions(&settings).await;
    drain_to_completion(&[&last], &db, Duration::from_secs(60)).await;

    // Every entry (every committed version) published; nothing accepted that is not an entry.
    let entries: Vec<Document> = futures_util::TryStreamExt::try_collect(
        db.outbox()
            .find(doc! { "_outbox": { "$exists": true } })
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let entry_ids: HashSet<String> = entries
        .iter()
        .filter_map(|e| match e.get("_id") {
            Some(Bson::Binary(b)) => uuid::Uuid::from_slice(&b.bytes).ok().map(|u| u.to_string()),
            _ => None,
        })
        .collect();
    let not_published = entries
        .iter()
        .filter(|e| e.get_document("_outbox").unwrap().get_str("status") != Ok("published"))
        .count();
    let accepted = rx.handle().accepted_ids();
    let distinct: HashSet<&String> = accepted.iter().collect();
    let lost = entry_ids.iter().filter(|id| !distinct.contains(id)).count() as u64;
    let orphaned = distinct
        .iter()
        .filter(|id| !entry_ids.contains(**id))
        .count() as u64;

    // First deliveries, per subject, in request order.
    let mut first: HashMap<String, (u64, String, u64)> = HashMap::new();
    for e in rx.handle().events() {
        let v: Value = e.to_value().unwrap();
        let version = v["data"]["version"].as_u64().unwrap();
        first
            .entry(e.id.clone())
            .or_insert((e.request, e.subject.clone(), version));
    }
    let mut by_subject: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (request, subject, version) in first.into_values() {
        by_subject
            .entry(subject)
            .or_default()
            .push((request, version));
    }
    let mut out_of_order = 0;
    let mut failures = Vec::new();
    for (subject, mut seen) in by_subject {
        seen.sort_unstable();
        for pair in seen.windows(2) {
            let ((r1, v1), (r2, v2)) = (pair[0], pair[1]);
            if r2 > r1 && v2 < v1 {
                out_of_order += 1;
                failures.push(format!(
                    "{subject}: v{v2} first delivered in request {r2}, after v{v1} in request {r1}"
                ));
            }
        }
    }
    if lost > 0 {
        failures.push(format!("{lost} committed versions never delivered"));
    }
    if orphaned > 0 {
        failures.push(format!(
            "{orphaned} deliveries of ids that are not outbox entries"
        ));
    }
    if not_published > 0 {
        failures.push(format!("{not_published} entries not published"));
    }
    let row = Row {
        scenario: "ordering_under_kills",
        writes,
        committed: entry_ids.len() as u64,
        published: distinct.len() as u64,
        lost,
        duplicated: (accepted.len() - distinct.len()) as u64,
        allowed_dup: (accepted.len() - distinct.len()) as u64,
        orphaned,
        out_of_order: Some(out_of_order),
    };
    let mut notes = BTreeMap::new();
    notes.insert("documents".into(), Value::from(docs.len()));
    // Duplicates are judged by the sigkill scenario; here only order and loss are.
    notes.insert("duplicates_judged".into(), Value::Bool(false));
    row.report(started.elapsed(), &notes, &failures);
    assert!(failures.is_empty(), "{failures:#?}\n{}", last.output());
    assert!(
        entry_ids.len() > docs.len(),
        "several versions per document were written"
    );
    teardown(db).await;
}

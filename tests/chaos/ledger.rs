//! The ledger: what the clients were told, what committed, what the receiver accepted, and the
//! evidence of unknown outcomes; checked once a scenario has drained (see the crate docs for
//! the rules), reported as one row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eventgrid_receiver::RequestOutcome;
use futures_util::StreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use outbox_relay::domain::EventId;
use outbox_relay::outbox::Placement;
use serde_json::{Value, json};

use crate::harness::{Scale, high_water, pending_ids, tail};
use crate::support::TestDb;
use crate::support::receiver::RunningReceiver;

/// What a client learnt from one write.
#[derive(Debug, Clone)]
pub enum WriteResult {
    /// `201`, with the event id it answered.
    Created { event_id: String },
    /// A `4xx`: nothing may have been written.
    Refused { status: u16 },
    /// The connection could not be made: nothing was sent.
    NotSent,
    /// A `5xx`, a client timeout, a connection lost mid-request: committed or not.
    Unknown { what: String },
}

#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub doc_id: String,
    pub result: WriteResult,
}

/// Receiver requests `(lo, hi]` whose answers may have come too late.
#[derive(Debug, Clone)]
struct Window {
    lo: u64,
    hi: u64,
    why: String,
}

/// Receiver requests `(lo, hi]` whose record may never have happened, for the entries still
/// pending when nothing could record any more.
#[derive(Debug, Clone)]
struct Epoch {
    lo: u64,
    hi: u64,
    pending: HashSet<String>,
    why: String,
}

/// An open slow window.
#[derive(Debug)]
pub struct OpenWindow {
    lo: u64,
    why: String,
}

/// Everything a scenario records while it runs.
pub struct Ledger {
    scenario: &'static str,
    started: Instant,
    writes: Mutex<Vec<WriteOutcome>>,
    windows: Mutex<Vec<Window>>,
    epochs: Mutex<Vec<Epoch>>,
    poison: Mutex<HashSet<String>>,
    outputs: Mutex<Vec<String>>,
    notes: Mutex<BTreeMap<String, Value>>,
}

/// How long after a fault ends requests may still be decided under it (their bodies were
/// being read when it ended).
const SETTLE: Duration = Duration::from_millis(300);

impl Ledger {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            started: Instant::now(),
            writes: Mutex::default(),
            windows: Mutex::default(),
            epochs: Mutex::default(),
            poison: Mutex::default(),
            outputs: Mutex::default(),
            notes: Mutex::default(),
        }
    }

    pub fn record(&self, w: WriteOutcome) {
        self.writes.lock().unwrap().push(w);
    }

    pub fn writes(&self) -> Vec<WriteOutcome> {
        self.writes.lock().unwrap().clone()
    }

    /// Event ids answered by a `201` so far.
    pub fn created_ids(&self) -> Vec<String> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|w| match &w.result {
                WriteResult::Created { event_id } => Some(event_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// An id the scenario made Event Grid reject: expected dead-lettered, never accepted.
    pub fn poison(&self, event_id: &str) {
        self.poison.lock().unwrap().insert(event_id.to_owned());
    }

    /// Keeps a handler's output (e.g. of a killed process) for the failure message; only the
    /// last few are kept.
    pub fn keep_output(&self, label: &str, output: &str) {
        let mut outputs = self.outputs.lock().unwrap();
        outputs.push(format!("== {label}\n{}", tail(output, 80)));
        let excess = outputs.len().saturating_sub(6);
        outputs.drain(..excess);
    }

    /// A number for the JSON report.
    pub fn note(&self, key: &str, value: impl Into<Value>) {
        self.notes.lock().unwrap().insert(key.into(), value.into());
    }

    /// Call *before* making answers slower than the publish timeout.
    pub fn open_window(&self, rx: &RunningReceiver, why: &str) -> OpenWindow {
        OpenWindow {
            lo: high_water(rx),
            why: why.into(),
        }
    }

    /// Call *after* making answers fast again; waits for requests in flight to be decided.
    pub async fn close_window(&self, rx: &RunningReceiver, open: OpenWindow) {
        tokio::time::sleep(SETTLE).await;
        self.windows.lock().unwrap().push(Window {
            lo: open.lo,
            hi: high_water(rx),
            why: open.why,
        });
    }

    /// Requests `(lo, now]` may never have been recorded; call when nothing can record any
    /// more (the relay is dead, or its drain has ended). Snapshots the pending entries.
    pub async fn unrecorded_since(&self, lo: u64, rx: &RunningReceiver, db: &TestDb, why: &str) {
        tokio::time::sleep(SETTLE).await;
        let hi = high_water(rx);
        let pending = pending_ids(db).await;
        self.epochs.lock().unwrap().push(Epoch {
            lo,
            hi,
            pending,
            why: why.into(),
        });
    }

    /// Checks the ledger against the database and the receiver, reports the row, and panics
    /// with the evidence if the promise was broken. `strict` (no faults): no duplicate at all.
    pub async fn verify(&self, db: &TestDb, rx: &RunningReceiver, strict: bool) -> Row {
        let mut failures: Vec<String> = Vec::new();
        let committed = committed(db).await;
        let entries = entries(db).await;
        let writes = self.writes();
        let poison = self.poison.lock().unwrap().clone();

        // Half writes.
        let committed_ids: HashSet<&String> = committed.keys().collect();
        for (id, doc_id) in &committed {
            if !entries.contains_key(id) {
                failures.push(format!(
                    "half write: document {doc_id} has no outbox entry {id}"
                ));
            }
        }
        for id in entries.keys() {
            if !committed_ids.contains(id) {
                failures.push(format!("half write: outbox entry {id} has no document"));
            }
        }
        let by_doc: HashMap<&str, &str> = committed
            .iter()
            .map(|(id, d)| (d.as_str(), id.as_str()))
            .collect();

        // What the clients were told.
        let (mut created, mut unknown_committed, mut unknown_absent, mut refused) = (0, 0, 0, 0);
        let mut unknown_reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut unknown_committed_examples: Vec<String> = Vec::new();
        for w in &writes {
            if let WriteResult::Unknown { what } = &w.result {
                let reason: String = what.chars().take(48).collect();
                *unknown_reasons.entry(reason).or_default() += 1;
            }
            let found = by_doc.get(w.doc_id.as_str()).copied();
            match (&w.result, found) {
                (WriteResult::Created { event_id }, Some(id)) => {
                    created += 1;
                    if event_id != id {
                        failures.push(format!(
                            "document {}: the 201 said event {event_id}, the database says {id}",
                            w.doc_id
                        ));
                    }
                }
                (WriteResult::Created { event_id }, None) => failures.push(format!(
                    "document {} was answered 201 (event {event_id}) but did not commit",
                    w.doc_id
                )),
                (WriteResult::Refused { status }, Some(_)) => failures.push(format!(
                    "document {} was refused with {status} but committed",
                    w.doc_id
                )),
                (WriteResult::NotSent, Some(_)) => failures.push(format!(
                    "document {} was never sent but committed",
                    w.doc_id
                )),
                (WriteResult::Refused { .. } | WriteResult::NotSent, None) => refused += 1,
                (WriteResult::Unknown { what }, Some(_)) => {
                    unknown_committed += 1;
                    if unknown_committed_examples.len() < 5 {
                        unknown_committed_examples.push(format!("{}: {what}", w.doc_id));
                    }
                }
                (WriteResult::Unknown { .. }, None) => unknown_absent += 1,
            }
        }
        let written: HashSet<&str> = writes.iter().map(|w| w.doc_id.as_str()).collect();
        for doc_id in committed.values() {
            if !written.contains(doc_id.as_str()) {
                failures.push(format!(
                    "document {doc_id} committed but no client wrote it"
                ));
            }
        }

        // What the receiver accepted.
        let outcomes: HashMap<u64, RequestOutcome> = rx
            .handle()
            .requests()
            .into_iter()
            .map(|r| (r.seq, r.outcome))
            .collect();
        let mut deliveries: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in rx.handle().events() {
            deliveries.entry(e.id).or_default().push(e.request);
        }
        let mut lost = Vec::new();
        let mut published = 0_u64;
        for id in committed.keys() {
            let delivered = deliveries.contains_key(id);
            let status = entries.get(id).map_or("missing", |e| e.status.as_str());
            if poison.contains(id) {
                if delivered {
                    failures.push(format!("poison event {id} was accepted"));
                }
                if status != "dead" {
                    failures.push(format!("poison event {id} is {status}, not dead-lettered"));
                }
                continue;
            }
            if delivered {
                published += 1;
            } else {
                lost.push(id.clone());
            }
            if status != published_status(db) {
                failures.push(format!(
                    "event {id} is {status} after the drain, not {}",
                    published_status(db)
                ));
            }
        }
        if !lost.is_empty() {
            failures.push(format!(
                "{} committed events never reached the topic: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            ));
        }
        let orphaned: Vec<&String> = deliveries
            .keys()
            .filter(|id| !committed_ids.contains(id))
            .collect();
        if !orphaned.is_empty() {
            failures.push(format!(
                "{} accepted events have no committed change: {:?}",
                orphaned.len(),
                &orphaned[..orphaned.len().min(20)]
            ));
        }

        // Duplicates.
        let windows = self.windows.lock().unwrap().clone();
        let epochs = self.epochs.lock().unwrap().clone();
        let (mut duplicated, mut allowed, mut extra_deliveries) = (0_u64, 0_u64, 0_u64);
        // Earlier deliveries by what explained them.
        let mut explained_by: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, seqs) in &deliveries {
            if seqs.len() < 2 {
                continue;
            }
            duplicated += 1;
            extra_deliveries += seqs.len() as u64 - 1;
            let relay_unknowns = entries.get(id).map_or(0, |e| e.unknown_outcomes);
            let mut unexplained = Vec::new();
            let mut evidence = Vec::new();
            for &seq in &seqs[..seqs.len() - 1] {
                let outcome = outcomes.get(&seq).copied();
                let (kind, why) = if outcome == Some(RequestOutcome::AcceptedThenDropped) {
                    ("dropped_answer", Some("accepted then dropped".to_owned()))
                } else if let Some(w) = windows.iter().find(|w| seq > w.lo && seq <= w.hi) {
                    ("slow_window", Some(format!("slow window ({})", w.why)))
                } else {
                    let epoch = epochs
                        .iter()
                        .find(|e| seq > e.lo && seq <= e.hi && e.pending.contains(id));
                    (
                        "unrecorded_epoch",
                        epoch.map(|e| format!("unrecorded ({})", e.why)),
                    )
                };
                *explained_by
                    .entry(if why.is_some() {
                        kind
                    } else {
                        "relay_history_or_unexplained"
                    })
                    .or_default() += 1;
                evidence.push(format!(
                    "#{seq} {outcome:?}: {}",
                    why.as_deref().unwrap_or("-")
                ));
                if why.is_none() {
                    unexplained.push(seq);
                }
            }
            let ok = if strict {
                false
            } else {
                unexplained.len() as u64 <= relay_unknowns
            };
            if ok {
                allowed += 1;
            } else {
                failures.push(format!(
                    "event {id} accepted {} times (requests {seqs:?}, last #{}); earlier deliveries: [{}]; the relay recorded {relay_unknowns} unknown outcomes; history: {}",
                    seqs.len(),
                    seqs[seqs.len() - 1],
                    evidence.join("; "),
                    entries.get(id).map_or_else(String::new, |e| e.history.clone()),
                ));
            }
        }

        let stats = rx.handle().stats();
        let row = Row {
            scenario: self.scenario,
            writes: writes.len() as u64,
            committed: committed.len() as u64,
            published,
            lost: lost.len() as u64,
            duplicated,
            allowed_dup: allowed,
            orphaned: orphaned.len() as u64,
            out_of_order: None,
        };
        let mut notes = self.notes.lock().unwrap().clone();
        notes.insert("created_201".into(), created.into());
        notes.insert("unknown_writes_committed".into(), unknown_committed.into());
        notes.insert("unknown_writes_absent".into(), unknown_absent.into());
        notes.insert("refused_or_not_sent".into(), refused.into());
        notes.insert("unknown_write_reasons".into(), json!(unknown_reasons));
        notes.insert("dead_lettered".into(), (poison.len() as u64).into());
        notes.insert("extra_deliveries".into(), extra_deliveries.into());
        notes.insert("requests".into(), stats.requests.into());
        notes.insert("dropped_responses".into(), stats.dropped_responses.into());
        notes.insert("injected_failures".into(), stats.injected_failures.into());
        notes.insert("refused_requests".into(), stats.refused_requests.into());
        notes.insert("slow_windows".into(), (windows.len() as u64).into());
        notes.insert("unrecorded_epochs".into(), (epochs.len() as u64).into());
        notes.insert("strict".into(), strict.into());
        notes.insert(
            "earlier_deliveries_explained_by".into(),
            json!(explained_by),
        );
        notes.insert(
            "unknown_writes_committed_examples".into(),
            json!(unknown_committed_examples),
        );
        row.report(self.started.elapsed(), &notes, &failures);
        if !failures.is_empty() {
            let shown: Vec<&String> = failures.iter().take(30).collect();
            let outputs = self.outputs.lock().unwrap().join("\n");
            panic!(
                "chaos scenario {} broke the promise ({} failures):\n- {}\n\nrow: {}\n\nhandler output:\n{outputs}",
                self.scenario,
                failures.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n- "),
                row.line(),
            );
        }
        row
    }
}

/// What a published event leaves behind: an entry marked `published`; with
/// `OUTBOX_RETENTION_HOURS=0` no entry (`deleted`, and a `published` one is a failure); in
/// `embedded`, nothing in the document, which counts as `published`.
fn published_status(db: &TestDb) -> &'static str {
    if db.placement == Placement::Embedded || db.settings.keeps_published() {
        "published"
    } else {
        "deleted"
    }
}

/// Committed documents: event id → document id.
async fn committed(db: &TestDb) -> BTreeMap<String, String> {
    // `embedded` documents carry their pending events and keys; its tombstones are not data.
    let filter = if db.placement == Placement::Embedded {
        doc! { "_meta.deleted": { "$ne": true } }
    } else {
        doc! { "_outbox": { "$exists": false }, "_idempotency": { "$exists": false } }
    };
    let mut cursor = db
        .documents()
        .find(filter)
        .projection(doc! { "_id": 1, "_meta": 1 })
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    while let Some(d) = cursor.next().await {
        let d = d.unwrap();
        let doc_id = d.get_str("_id").unwrap().to_owned();
        let meta = d.get_document("_meta").unwrap();
        let version = u64::try_from(meta.get_i64("version").unwrap()).unwrap();
        let lineage = meta.get_str("lineage").unwrap();
        let id = EventId::for_change(&db.name, &db.settings.collection, &doc_id, lineage, version);
        out.insert(id.to_string(), doc_id);
    }
    out
}

struct EntryView {
    status: String,
    unknown_outcomes: u64,
    history: String,
}

/// Outbox entries: id → status and the unknown outcomes its history records.
async fn entries(db: &TestDb) -> HashMap<String, EntryView> {
    let mut cursor = db
        .outbox()
        .find(doc! { "_outbox": { "$exists": true } })
        .projection(
            doc! { "_id": 1, "_outbox.status": 1, "_outbox.history": 1, "_outbox.attempts": 1 },
        )
        .await
        .unwrap();
    let mut states: Vec<(String, Document)> = Vec::new();
    while let Some(d) = cursor.next().await {
        let d = d.unwrap();
        let Some(Bson::Binary(b)) = d.get("_id") else {
            continue;
        };
        let id = uuid::Uuid::from_slice(&b.bytes).unwrap().to_string();
        states.push((id, d.get_document("_outbox").unwrap().clone()));
    }
    // `embedded`: events still pending sit in their documents.
    for mut element in db.embedded_pending().await {
        let Some(Bson::Binary(b)) = element.get("id") else {
            continue;
        };
        let id = uuid::Uuid::from_slice(&b.bytes).unwrap().to_string();
        element.insert("status", "pending");
        states.push((id, element));
    }
    let mut out = HashMap::new();
    for (id, state) in &states {
        let (id, state) = (id.clone(), state);
        let history: Vec<&Document> = state
            .get_array("history")
            .map(|a| a.iter().filter_map(Bson::as_document).collect())
            .unwrap_or_default();
        let mut unknown = history
            .iter()
            .filter(|h| h.get_str("kind") == Ok("unknown_outcome"))
            .count() as u64;
        // The history keeps the last 10 failures: beyond that, every further attempt may have
        // been an unknown outcome.
        let attempts = u64::try_from(state.get_i32("attempts").unwrap_or(0)).unwrap_or(0);
        if history.len() >= 10 {
            unknown += attempts.saturating_sub(history.len() as u64);
        }
        let mut text = String::new();
        for h in &history {
            let _ = write!(
                text,
                "[{} {}] ",
                h.get_str("kind").unwrap_or("?"),
                h.get_str("message").unwrap_or("")
            );
        }
        out.insert(
            id,
            EntryView {
                status: state.get_str("status").unwrap_or("?").to_owned(),
                unknown_outcomes: unknown,
                history: text,
            },
        );
    }
    if db.placement == Placement::Embedded || !db.settings.keeps_published() {
        // A published event leaves its document (embedded), or its entry is deleted
        // (`OUTBOX_RETENTION_HOURS=0`), and keeps no record. No half write can hide behind
        // this: an event whose entry never existed was never delivered, so it counts as lost.
        for id in committed(db).await.into_keys() {
            out.entry(id).or_insert_with(|| EntryView {
                status: published_status(db).to_owned(),
                unknown_outcomes: 0,
                history: String::new(),
            });
        }
    }
    out
}

/// One scenario's counts.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub writes: u64,
    pub committed: u64,
    pub published: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub allowed_dup: u64,
    pub orphaned: u64,
    /// With `OUTBOX_ORDERING=subject`: first deliveries of a subject's versions that came in a
    /// later request than a newer version's; `None` when ordering is not promised.
    pub out_of_order: Option<u64>,
}

pub const HEADER: &str = "scenario | writes | committed | published | lost | duplicated | allowed-dup | orphaned | out-of-order";

impl Row {
    pub fn line(&self) -> String {
        format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {}",
            self.scenario,
            self.writes,
            self.committed,
            self.published,
            self.lost,
            self.duplicated,
            self.allowed_dup,
            self.orphaned,
            self.out_of_order
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        )
    }

    /// Prints the row and writes `target/chaos/<scenario>.json`, then merges every scenario
    /// file into `report.json` and `report.txt`.
    pub fn report(&self, took: Duration, notes: &BTreeMap<String, Value>, failures: &[String]) {
        println!("{HEADER}\n{}", self.line());
        eprintln!("{}", self.line());
        let value = json!({
            "scenario": self.scenario,
            "scale": Scale::get().name(),
            "writes": self.writes,
            "committed": self.committed,
            "published": self.published,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "allowed_dup": self.allowed_dup,
            "orphaned": self.orphaned,
            "out_of_order": self.out_of_order.map_or(json!("n/a"), |n| json!(n)),
            "seconds": (took.as_secs_f64() * 10.0).round() / 10.0,
            "passed": failures.is_empty(),
            "failures": failures.iter().take(30).collect::<Vec<_>>(),
            "details": notes,
            "row": self.line(),
        });
        let dir = report_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&file, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
        merge(&dir);
    }
}

/// `target/chaos`.
fn report_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("chaos")
}

/// Merges the scenario files into `report.json` (an array, by scenario) and `report.txt`
/// (the table), under a lock: scenarios finish in parallel processes.
fn merge(dir: &std::path::Path) {
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let mut rows: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name().is_some_and(|n| n != "report.json")
        })
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect();
    rows.sort_by(|a, b| a["scenario"].as_str().cmp(&b["scenario"].as_str()));
    let write = |name: &str, bytes: &[u8]| {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    write("report.json", &serde_json::to_vec_pretty(&rows).unwrap());
    let mut text = format!("{HEADER} | seconds | passed\n");
    for r in &rows {
        let _ = writeln!(
            text,
            "{} | {} | {}",
            r["row"].as_str().unwrap_or(""),
            r["seconds"],
            r["passed"]
        );
    }
    write("report.txt", text.as_bytes());
    lock.unlock().unwrap();
}

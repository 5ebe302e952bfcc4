//! State shared by every connection: settings, the transaction table, counters, the log.
//!
//! Transactions are tracked per session (`lsid.id`), not per connection: drivers send a
//! transaction's commands over whichever pooled connection is free. One `std` mutex guards
//! everything; it is never held across an `.await` (decisions are synchronous).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bson::Document;

use crate::config::{Match, ProxyConfig};
use crate::cosmos::{CommandInfo, CosmosError, Rule, TxnRef};
use crate::sharding::Shards;
use crate::stats::{ProxyStats, TxnOutcome, TxnRecord};

/// How long a transaction's entry outlives its last command (so that a late command of an
/// expired or refused transaction still gets the right error).
const RETENTION: Duration = Duration::from_secs(60);

/// A transaction's identity: `lsid.id` bytes and `txnNumber`.
pub(crate) type TxnKey = (Vec<u8>, i64);

/// What to do with one client command.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Send it upstream unchanged.
    Forward {
        /// Answer with this error instead of the real reply (after the delay).
        replace: Option<(CosmosError, Duration)>,
        /// The command is this transaction's `commitTransaction`: record its result.
        commit_of: Option<TxnKey>,
    },
    /// Answer with an error without forwarding; first abort this transaction upstream.
    Refuse {
        /// The error to answer with.
        error: CosmosError,
        /// `(lsid, txnNumber)` to abort upstream.
        abort: Option<(Document, i64)>,
    },
}

impl Decision {
    fn forward() -> Self {
        Self::Forward {
            replace: None,
            commit_of: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    /// Commands are checked against the rules.
    Active,
    /// `commitTransaction` was forwarded; its reply decides.
    Committing,
    /// Committed or aborted by the client: everything passes through.
    Ended,
    /// The proxy aborted it: every further command but `abortTransaction` is refused.
    Refused,
}

#[derive(Debug)]
struct TxnEntry {
    seq: u64,
    lsid: Document,
    txn_number: i64,
    started: Instant,
    last_seen: Instant,
    state: TxnState,
    /// Whether any command of it reached `mongod` (else there is nothing to abort upstream).
    forwarded: bool,
    record: TxnRecord,
}

/// SplitMix64: small, seedable, good enough for fault injection.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        // 53 random bits: exactly representable.
        #[expect(clippy::cast_precision_loss, reason = "53-bit values are exact in f64")]
        let value = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        value
    }

    /// A random id in UUID layout, like Cosmos DB's `ActivityId`.
    fn activity_id(&mut self) -> String {
        let hi = self.next_u64();
        let lo = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0x0fff,
            (lo >> 48) & 0x3fff | 0x8000,
            lo & 0xffff_ffff_ffff
        )
    }
}

#[derive(Debug)]
struct Inner {
    config: ProxyConfig,
    /// Commands still to throttle regardless of the rate.
    throttle_next: u64,
    /// Commands still to answer with error 50.
    error50_next: u64,
    /// The current transaction of each session.
    txns: HashMap<Vec<u8>, TxnEntry>,
    /// Finished transactions, oldest first, with their sequence numbers.
    finished: VecDeque<(u64, TxnRecord)>,
    next_seq: u64,
    stats: ProxyStats,
    rng: Rng,
}

/// Everything connections and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// The `host:port` written into `hello` replies.
    pub(crate) advertised: String,
    /// Sharded namespaces and the document size limit ([`crate::sharding`]).
    pub(crate) shards: Shards,
    /// Cosmos DB RU's change-stream rules (their own lock).
    pub(crate) streams: crate::change_stream::Streams,
    /// Request ids for messages the proxy makes up; negative so they never collide with a
    /// driver's (which count up from 0 or 1).
    next_id: AtomicI32,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn fault_matches(rule: &Match, info: &CommandInfo, txn_namespaces: &[String]) -> bool {
    if !info.is_data() || (rule.writes_only && !info.is_write()) {
        return false;
    }
    if rule.namespace.is_none() {
        return true;
    }
    let namespaces = if info.name == "commitTransaction" {
        txn_namespaces
    } else {
        &info.namespaces
    };
    namespaces.iter().any(|ns| rule.namespace_matches(ns))
}

impl Inner {
    fn throttle_hits(&mut self, info: &CommandInfo, txn_namespaces: &[String]) -> bool {
        if !fault_matches(&self.config.throttle_match, info, txn_namespaces) {
            return false;
        }
        if self.throttle_next > 0 {
            self.throttle_next -= 1;
            return true;
        }
        self.config.throttle_rate > 0.0 && self.rng.next_f64() < self.config.throttle_rate
    }

    fn error50_hits(&mut self, info: &CommandInfo, txn_namespaces: &[String]) -> bool {
        if self.error50_next == 0
            || !fault_matches(&self.config.error50_match, info, txn_namespaces)
        {
            return false;
        }
        self.error50_next -= 1;
        true
    }

    fn throttle_error(&mut self) -> CosmosError {
        let id = self.rng.activity_id();
        if self.config.throttle_hint {
            CosmosError::too_many_requests(self.config.retry_after_ms, &id)
        } else {
            CosmosError::too_many_requests_unhinted(&id)
        }
    }

    fn not_active_error(&mut self) -> CosmosError {
        let id = self.rng.activity_id();
        CosmosError::transaction_not_active(
            self.config.txn_error_style,
            self.config.txn_errors_as_write_errors,
            &id,
        )
    }

    fn finish(&mut self, mut entry: TxnEntry) {
        if matches!(entry.state, TxnState::Active | TxnState::Committing)
            && entry.record.outcome == TxnOutcome::Open
        {
            entry.record.outcome = TxnOutcome::Superseded;
        }
        self.finished.push_back((entry.seq, entry.record));
        while self.finished.len() > self.config.txn_log_capacity {
            self.finished.pop_front();
        }
    }

    fn start_txn(&mut self, txn: &TxnRef, now: Instant) {
        if let Some(existing) = self.txns.get(&txn.lsid_id)
            && existing.txn_number == txn.txn_number
        {
            return;
        }
        if let Some(old) = self.txns.remove(&txn.lsid_id) {
            self.finish(old);
        }
        self.next_seq += 1;
        self.stats.transactions_seen += 1;
        self.txns.insert(
            txn.lsid_id.clone(),
            TxnEntry {
                seq: self.next_seq,
                lsid: txn.lsid.clone(),
                txn_number: txn.txn_number,
                started: now,
                last_seen: now,
                state: TxnState::Active,
                forwarded: false,
                record: TxnRecord {
                    lsid: hex(&txn.lsid_id),
                    txn_number: txn.txn_number,
                    namespaces: Vec::new(),
                    refused_namespace: None,
                    outcome: TxnOutcome::Open,
                    commands: 0,
                },
            },
        );
    }

    /// Marks an active transaction expired; returns what to abort upstream.
    fn expire(&mut self, entry: &mut TxnEntry) -> Option<(Document, i64)> {
        entry.state = TxnState::Refused;
        entry.record.outcome = TxnOutcome::Expired;
        self.stats.expired_transactions += 1;
        entry
            .forwarded
            .then(|| (entry.lsid.clone(), entry.txn_number))
    }

    fn decide_in_txn(
        &mut self,
        entry: &mut TxnEntry,
        info: &CommandInfo,
        now: Instant,
    ) -> Decision {
        entry.last_seen = now;
        entry.record.commands += 1;
        let is_abort = info.name == "abortTransaction";
        match entry.state {
            TxnState::Ended | TxnState::Committing => return Decision::forward(),
            TxnState::Refused if is_abort => return Decision::forward(),
            TxnState::Refused => {
                return Decision::Refuse {
                    error: self.not_active_error(),
                    abort: None,
                };
            }
            TxnState::Active => {}
        }
        let expired = now.duration_since(entry.started) > self.config.txn_limit;
        if is_abort {
            if expired {
                // The client's own abort does the upstream abort.
                let _ = self.expire(entry);
            } else {
                entry.state = TxnState::Ended;
                entry.record.outcome = TxnOutcome::Aborted;
            }
            return Decision::forward();
        }
        if expired {
            let abort = self.expire(entry);
            return Decision::Refuse {
                error: self.not_active_error(),
                abort,
            };
        }
        for ns in &info.namespaces {
            if !entry.record.namespaces.contains(ns) {
                entry.record.namespaces.push(ns.clone());
            }
        }
        self.stats.max_collections_per_transaction = self
            .stats
            .max_collections_per_transaction
            .max(entry.record.namespaces.len());
        if let Some(decision) = self.sharding_in_txn(entry, info) {
            return decision;
        }
        // Any command that added a second namespace is refused at once, so more than one
        // namespace means this command brought it.
        if self.config.enforce_one_collection && entry.record.namespaces.len() > 1 {
            let first = &entry.record.namespaces[0];
            entry.record.refused_namespace =
                info.namespaces.iter().find(|ns| *ns != first).cloned();
            entry.state = TxnState::Refused;
            entry.record.outcome = TxnOutcome::CrossCollectionRefused;
            self.stats.cross_collection_refusals += 1;
            return Decision::Refuse {
                error: self.not_active_error(),
                abort: entry
                    .forwarded
                    .then(|| (entry.lsid.clone(), entry.txn_number)),
            };
        }
        if self.throttle_hits(info, &entry.record.namespaces) {
            // A failed command aborts a Cosmos DB transaction, as it does a MongoDB one.
            entry.state = TxnState::Refused;
            entry.record.outcome = TxnOutcome::Throttled;
            self.stats.throttled_commands += 1;
            return Decision::Refuse {
                error: self.throttle_error(),
                abort: entry
                    .forwarded
                    .then(|| (entry.lsid.clone(), entry.txn_number)),
            };
        }
        let replace = self.error50_hits(info, &entry.record.namespaces).then(|| {
            self.stats.error50_commands += 1;
            (
                CosmosError::exceeded_time_limit(),
                self.config.error50_delay,
            )
        });
        let commit_of = (info.name == "commitTransaction").then(|| {
            entry.state = TxnState::Committing;
            let lsid_id = info
                .txn
                .as_ref()
                .map(|t| t.lsid_id.clone())
                .unwrap_or_default();
            (lsid_id, entry.txn_number)
        });
        entry.forwarded = true;
        Decision::Forward { replace, commit_of }
    }

    /// Cosmos DB RU's sharding rules inside a transaction: a sharded collection refuses the
    /// whole transaction (50841); a command breaking a sharding or size rule fails it. Either
    /// way it is aborted upstream, so nothing of it commits.
    fn sharding_in_txn(&mut self, entry: &mut TxnEntry, info: &CommandInfo) -> Option<Decision> {
        let (error, outcome) = if info.verdict.sharded {
            self.stats.sharded_transaction_refusals += 1;
            (
                CosmosError::sharded_transaction(),
                TxnOutcome::ShardedRefused,
            )
        } else {
            let (rule, error) = info.verdict.refusal.clone()?;
            self.count_refusal(rule);
            (error, TxnOutcome::CommandRefused)
        };
        entry.state = TxnState::Refused;
        entry.record.outcome = outcome;
        Some(Decision::Refuse {
            error,
            abort: entry
                .forwarded
                .then(|| (entry.lsid.clone(), entry.txn_number)),
        })
    }

    fn count_refusal(&mut self, rule: Rule) {
        match rule {
            Rule::ShardKey => self.stats.shard_key_refusals += 1,
            Rule::Size => self.stats.oversized_documents += 1,
        }
    }

    fn decide_plain(&mut self, info: &CommandInfo) -> Decision {
        if let Some((rule, error)) = info.verdict.refusal.clone() {
            self.count_refusal(rule);
            return Decision::Refuse { error, abort: None };
        }
        if self.config.ttl_only_on_ts && info.ttl_on_custom_field {
            self.stats.refused_ttl_indexes += 1;
            return Decision::Refuse {
                error: CosmosError::ttl_on_custom_field(),
                abort: None,
            };
        }
        if self.throttle_hits(info, &[]) {
            self.stats.throttled_commands += 1;
            return Decision::Refuse {
                error: self.throttle_error(),
                abort: None,
            };
        }
        let replace = self.error50_hits(info, &[]).then(|| {
            self.stats.error50_commands += 1;
            (
                CosmosError::exceeded_time_limit(),
                self.config.error50_delay,
            )
        });
        Decision::Forward {
            replace,
            commit_of: None,
        }
    }
}

impl Shared {
    pub(crate) fn new(config: ProxyConfig, advertised: String) -> Self {
        let seed = config.seed.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            // Truncation is fine: any bits make a seed.
            #[expect(clippy::cast_possible_truncation, reason = "any 64 bits make a seed")]
            let seed = nanos as u64 ^ u64::from(std::process::id()).rotate_left(32);
            seed
        });
        Self {
            shards: Shards::new(config.max_document_bytes),
            inner: Mutex::new(Inner {
                config,
                throttle_next: 0,
                error50_next: 0,
                txns: HashMap::new(),
                finished: VecDeque::new(),
                next_seq: 0,
                stats: ProxyStats::default(),
                rng: Rng(seed),
            }),
            advertised,
            streams: crate::change_stream::Streams::default(),
            next_id: AtomicI32::new(-1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A random id in the layout of Cosmos DB's `ActivityId`.
    pub(crate) fn activity_id(&self) -> String {
        self.lock().rng.activity_id()
    }

    /// A fresh negative request id.
    pub(crate) fn next_request_id(&self) -> i32 {
        let id = self.next_id.fetch_sub(1, Ordering::Relaxed);
        if id == i32::MIN {
            self.next_id.store(-1, Ordering::Relaxed);
        }
        id
    }

    /// Decides what happens to one `OP_MSG` command (not `hello`).
    pub(crate) fn decide(&self, info: &CommandInfo) -> Decision {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(txn) = &info.txn {
            if txn.start {
                inner.start_txn(txn, now);
            }
            let tracked = inner
                .txns
                .get(&txn.lsid_id)
                .is_some_and(|entry| entry.txn_number == txn.txn_number);
            if tracked && let Some(mut entry) = inner.txns.remove(&txn.lsid_id) {
                let decision = inner.decide_in_txn(&mut entry, info, now);
                inner.txns.insert(txn.lsid_id.clone(), entry);
                return decision;
            }
        }
        // Not in a transaction, or in one the proxy never saw start (it started before the
        // proxy did, or before a reset): only the faults apply.
        inner.decide_plain(info)
    }

    /// Records the reply to a forwarded `commitTransaction`.
    pub(crate) fn commit_result(&self, key: &TxnKey, ok: bool) {
        let mut inner = self.lock();
        let entry = inner
            .txns
            .get_mut(&key.0)
            .filter(|entry| entry.txn_number == key.1);
        if let Some(entry) = entry
            && entry.state == TxnState::Committing
        {
            if ok {
                entry.state = TxnState::Ended;
                entry.record.outcome = TxnOutcome::Committed;
            } else {
                // A failed commit may be retried; the rules apply again.
                entry.state = TxnState::Active;
            }
        }
    }

    /// Expires transactions past the limit and forgets old entries; returns the transactions
    /// to abort upstream.
    pub(crate) fn reap(&self) -> Vec<(Document, i64)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let limit = inner.config.txn_limit;
        let mut aborts = Vec::new();
        let keys: Vec<Vec<u8>> = inner.txns.keys().cloned().collect();
        for key in keys {
            let Some(mut entry) = inner.txns.remove(&key) else {
                continue;
            };
            if entry.state == TxnState::Active && now.duration_since(entry.started) > limit {
                aborts.extend(inner.expire(&mut entry));
            }
            if now.duration_since(entry.last_seen) > RETENTION + limit {
                inner.finish(entry);
            } else {
                inner.txns.insert(key, entry);
            }
        }
        aborts
    }

    /// Runs `f` on the counters.
    pub(crate) fn with_stats(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(&mut self.lock().stats);
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        self.lock().stats.clone()
    }

    pub(crate) fn transactions(&self) -> Vec<TxnRecord> {
        let inner = self.lock();
        let mut all: Vec<(u64, TxnRecord)> = inner.finished.iter().cloned().collect();
        all.extend(
            inner
                .txns
                .values()
                .map(|entry| (entry.seq, entry.record.clone())),
        );
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, record)| record).collect()
    }

    pub(crate) fn reset_stats(&self) {
        let mut inner = self.lock();
        let open = inner.stats.open_connections;
        inner.stats = ProxyStats {
            open_connections: open,
            ..ProxyStats::default()
        };
        inner.finished.clear();
        inner.txns.clear();
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ProxyConfig, &mut u64, &mut u64)) {
        let mut inner = self.lock();
        let Inner {
            config,
            throttle_next,
            error50_next,
            ..
        } = &mut *inner;
        f(config, throttle_next, error50_next);
    }

    pub(crate) fn config(&self) -> ProxyConfig {
        self.lock().config.clone()
    }

    pub(crate) fn pending_faults(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.throttle_next, inner.error50_next)
    }
}

#[cfg(test)]
mod tests {
    use bson::{Binary, doc, spec::BinarySubtype};

    use super::*;

    fn shared(config: ProxyConfig) -> Shared {
        Shared::new(
            ProxyConfig {
                seed: Some(7),
                ..config
            },
            "127.0.0.1:1".to_owned(),
        )
    }

    fn command(body: &Document) -> CommandInfo {
        CommandInfo::inspect(&bson::RawDocumentBuf::from_document(body).unwrap())
    }

    fn txn_cmd(name: &str, coll: &str, number: i64, start: bool) -> CommandInfo {
        let mut body = doc! { name: coll };
        body.insert(
            "lsid",
            doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] } },
        );
        body.insert("txnNumber", number);
        if start {
            body.insert("startTransaction", true);
        }
        body.insert("autocommit", false);
        body.insert("$db", "d");
        command(&body)
    }

    #[test]
    fn a_second_collection_is_refused_and_aborts_upstream() {
        let state = shared(ProxyConfig::default());
        assert!(matches!(
            state.decide(&txn_cmd("insert", "a", 1, true)),
            Decision::Forward {
                replace: None,
                commit_of: None
            }
        ));
        assert!(matches!(
            state.decide(&txn_cmd("find", "a", 1, false)),
            Decision::Forward { .. }
        ));
        let Decision::Refuse { error, abort } = state.decide(&txn_cmd("insert", "b", 1, false))
        else {
            panic!("second collection forwarded");
        };
        assert_eq!(error.code, 2);
        assert_eq!(abort.unwrap().1, 1);
        // The commit of the refused transaction is refused too, with nothing left to abort.
        let Decision::Refuse { abort, .. } =
            state.decide(&txn_cmd("commitTransaction", "1", 1, false))
        else {
            panic!("commit of a refused transaction forwarded");
        };
        assert!(abort.is_none());
        let stats = state.stats();
        assert_eq!(stats.cross_collection_refusals, 1);
        assert_eq!(stats.max_collections_per_transaction, 2);
        let log = state.transactions();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].namespaces, ["d.a", "d.b"]);
        assert_eq!(log[0].refused_namespace.as_deref(), Some("d.b"));
        assert_eq!(log[0].outcome, TxnOutcome::CrossCollectionRefused);
    }

    #[test]
    fn an_old_transaction_is_expired_by_the_reaper_or_its_next_command() {
        let state = shared(ProxyConfig {
            txn_limit: Duration::ZERO,
            ..ProxyConfig::default()
        });
        assert!(matches!(
            state.decide(&txn_cmd("insert", "a", 1, true)),
            Decision::Forward { .. }
        ));
        std::thread::sleep(Duration::from_millis(2));
        let aborts = state.reap();
        assert_eq!(aborts.len(), 1);
        assert!(matches!(
            state.decide(&txn_cmd("commitTransaction", "1", 1, false)),
            Decision::Refuse { abort: None, .. }
        ));
        assert_eq!(state.stats().expired_transactions, 1);
        assert!(state.reap().is_empty(), "expired once only");
    }

    #[test]
    fn a_new_transaction_number_supersedes_the_old_one() {
        let state = shared(ProxyConfig::default());
        let _ = state.decide(&txn_cmd("insert", "a", 1, true));
        let _ = state.decide(&txn_cmd("insert", "b", 2, true));
        let log = state.transactions();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].outcome, TxnOutcome::Superseded);
        assert_eq!(log[1].namespaces, ["d.b"]);
        assert_eq!(state.stats().cross_collection_refusals, 0);
    }

    #[test]
    fn ttl_indexes_are_refused_except_on_ts() {
        let state = shared(ProxyConfig::default());
        let create = |key: Document, ttl: bool| {
            let mut index = doc! { "key": key, "name": "i" };
            if ttl {
                index.insert("expireAfterSeconds", 60);
            }
            command(&doc! { "createIndexes": "c", "indexes": [index], "$db": "d" })
        };
        let refused = |info: &CommandInfo| {
            matches!(
                state.decide(info),
                Decision::Refuse { error, .. } if error.code == crate::cosmos::CANNOT_CREATE_INDEX
            )
        };
        assert!(refused(&create(doc! { "_outbox.published_at": 1 }, true)));
        assert!(!refused(&create(doc! { "_ts": 1 }, true)));
        assert!(!refused(&create(doc! { "_outbox.published_at": 1 }, false)));
        assert_eq!(state.stats().refused_ttl_indexes, 1);
        state.update(|config, _, _| config.ttl_only_on_ts = false);
        assert!(!refused(&create(doc! { "a": 1 }, true)));
    }

    #[test]
    fn the_throttle_schedule_comes_before_the_rate_and_skips_non_data_commands() {
        let state = shared(ProxyConfig::default());
        state.update(|_, throttle_next, _| *throttle_next = 2);
        let ping = command(&doc! { "ping": 1, "$db": "admin" });
        let find = command(&doc! { "find": "c", "$db": "d" });
        assert!(matches!(state.decide(&ping), Decision::Forward { .. }));
        assert!(matches!(state.decide(&find), Decision::Refuse { .. }));
        assert!(matches!(state.decide(&find), Decision::Refuse { .. }));
        assert!(matches!(state.decide(&find), Decision::Forward { .. }));
        assert_eq!(state.stats().throttled_commands, 2);
    }

    #[test]
    fn writes_only_throttling_lets_reads_through() {
        let state = shared(ProxyConfig {
            throttle_rate: 1.0,
            throttle_match: Match::writes(),
            ..ProxyConfig::default()
        });
        let find = command(&doc! { "find": "c", "$db": "d" });
        let insert = command(&doc! { "insert": "c", "$db": "d" });
        assert!(matches!(state.decide(&find), Decision::Forward { .. }));
        assert!(matches!(state.decide(&insert), Decision::Refuse { .. }));
    }

    #[test]
    fn the_rate_is_met_on_average() {
        let state = shared(ProxyConfig {
            throttle_rate: 0.25,
            ..ProxyConfig::default()
        });
        let find = command(&doc! { "find": "c", "$db": "d" });
        let throttled = (0..10_000)
            .filter(|_| matches!(state.decide(&find), Decision::Refuse { .. }))
            .count();
        assert!((2300..2700).contains(&throttled), "{throttled}");
    }

    #[test]
    fn activity_ids_look_like_uuids() {
        let id = Rng(1).activity_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}

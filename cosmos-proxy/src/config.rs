//! What the proxy emulates and how: [`ProxyConfig`] at start, changeable at run time through
//! [`ProxyHandle`](crate::ProxyHandle).

use std::time::Duration;

/// Cosmos DB's fixed transaction limit.
pub const DEFAULT_TXN_LIMIT: Duration = Duration::from_secs(5);
/// Cosmos DB for MongoDB RU's document limit (without the 16 MB capability).
pub const RU_MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;
/// `RetryAfterMs` sent with 16500 unless configured otherwise.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 12;

/// Which commands a fault (throttling, error 50) applies to.
///
/// Only data commands ever match: `insert`, `update`, `delete`, `findAndModify`, `bulkWrite`,
/// `commitTransaction` (the writes) and `find`, `aggregate`, `count`, `distinct`, `getMore`.
/// Handshake, monitoring, authentication, session and DDL commands (`hello`, `ping`,
/// `buildInfo`, `endSessions`, `saslStart`, `createIndexes`, …) never do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only writes (`insert`, `update`, `delete`, `findAndModify`, `bulkWrite`,
    /// `commitTransaction`).
    pub writes_only: bool,
    /// Only commands touching this namespace: a full `db.collection`, or a bare collection name
    /// (any database). A `commitTransaction` matches when its transaction touched it.
    pub namespace: Option<String>,
}

impl Match {
    /// Every data command.
    pub fn data() -> Self {
        Self::default()
    }

    /// Writes only.
    pub fn writes() -> Self {
        Self {
            writes_only: true,
            namespace: None,
        }
    }

    /// The same scope, restricted to one namespace (`db.collection` or a collection name).
    #[must_use]
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Whether a namespace matches the filter.
    pub(crate) fn namespace_matches(&self, ns: &str) -> bool {
        match &self.namespace {
            None => true,
            Some(filter) => {
                ns == filter
                    || ns
                        .split_once('.')
                        .is_some_and(|(_, collection)| collection == filter)
            }
        }
    }
}

/// How the proxy words the error for a command of a transaction that is no longer active
/// (past the limit, refused for touching a second collection, or aborted after throttling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxnErrorStyle {
    /// What Cosmos DB RU sends, as far as sources show: code 2, errmsg `Error=2, Details='…
    /// BadRequest (400); Substatus: 1101; … "Transaction is not active" …'`, no error label; on
    /// insert/update/delete as `writeErrors[0]` when
    /// [`ProxyConfig::txn_errors_as_write_errors`] is set. See [`crate::cosmos`].
    #[default]
    Cosmos,
    /// MongoDB's shape: code 251 `NoSuchTransaction`, errmsg starting "Transaction isn't
    /// active", label `TransientTransactionError` (so `with_transaction`-style loops retry),
    /// always a command error.
    NoSuchTransaction,
}

/// Start-up configuration. Every field but `advertised_host`, `seed` and `txn_log_capacity`
/// can be changed later through [`ProxyHandle`](crate::ProxyHandle).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// A transaction older than this (from its first command) is aborted upstream and its next
    /// command fails. Cosmos DB fixes it at 5 s; tests shorten it.
    pub txn_limit: Duration,
    /// Refuse the first command of a transaction that touches a second collection.
    pub enforce_one_collection: bool,
    /// Refuse TTL indexes on any field but `_ts`, as Cosmos DB RU does.
    pub ttl_only_on_ts: bool,
    /// Probability (0–1) that a matching command is throttled with 16500.
    pub throttle_rate: f64,
    /// The `RetryAfterMs=<n>` value in 16500 messages.
    pub retry_after_ms: u64,
    /// Whether 16500 messages carry `RetryAfterMs` at all.
    pub throttle_hint: bool,
    /// Which commands throttling applies to (rate and schedule).
    pub throttle_match: Match,
    /// Which commands the error-50 schedule applies to.
    pub error50_match: Match,
    /// How long to wait before answering error 50 (Cosmos DB waits 60 s; tests use 0).
    pub error50_delay: Duration,
    /// Wording of the "transaction is not active" error.
    pub txn_error_style: TxnErrorStyle,
    /// Answer insert/update/delete hit by a transaction error in the `writeErrors` shape
    /// (`ok: 1`, `writeErrors[0].code == 2`), as Cosmos DB was seen to; other commands always
    /// get a command error (`ok: 0`).
    pub txn_errors_as_write_errors: bool,
    /// The `host:port` that `hello` replies advertise; defaults to the bound address (an
    /// unspecified IP becomes 127.0.0.1).
    pub advertised_host: Option<String>,
    /// Seed for the throttle's random draws (and activity ids); `None` seeds from the clock.
    pub seed: Option<u64>,
    /// How many finished transactions [`ProxyHandle::transactions`](crate::ProxyHandle::transactions)
    /// keeps (oldest dropped first).
    pub txn_log_capacity: usize,
    /// The largest document an insert or a whole-document replacement may carry (Cosmos DB
    /// RU: 2 MB); `None` accepts any size `mongod` accepts.
    pub max_document_bytes: Option<usize>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            txn_limit: DEFAULT_TXN_LIMIT,
            enforce_one_collection: true,
            ttl_only_on_ts: true,
            throttle_rate: 0.0,
            retry_after_ms: DEFAULT_RETRY_AFTER_MS,
            throttle_hint: true,
            throttle_match: Match::data(),
            error50_match: Match::data(),
            error50_delay: Duration::ZERO,
            txn_error_style: TxnErrorStyle::Cosmos,
            txn_errors_as_write_errors: true,
            advertised_host: None,
            seed: None,
            txn_log_capacity: 10_000,
            max_document_bytes: Some(RU_MAX_DOCUMENT_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_filters_accept_full_namespaces_and_collection_names() {
        assert!(Match::data().namespace_matches("d.c"));
        let full = Match::data().in_namespace("d.c");
        assert!(full.namespace_matches("d.c"));
        assert!(!full.namespace_matches("e.c"));
        let bare = Match::writes().in_namespace("c");
        assert!(bare.namespace_matches("d.c"));
        assert!(bare.namespace_matches("e.c"));
        assert!(!bare.namespace_matches("d.cc"));
    }
}

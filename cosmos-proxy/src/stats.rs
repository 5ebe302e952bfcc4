//! Counters and the per-transaction log, as read by tests through
//! [`ProxyHandle`](crate::ProxyHandle).

use serde::Serialize;

/// Counters since start (or the last [`reset_stats`](crate::ProxyHandle::reset_stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections_accepted: u64,
    /// Client connections open right now (a gauge: never reset).
    pub open_connections: u64,
    /// Client messages forwarded upstream unchanged (any opcode).
    pub commands_forwarded: u64,
    /// Transactions started (commands with `startTransaction: true`).
    pub transactions_seen: u64,
    /// Most distinct namespaces one transaction's commands named, refused ones included (so
    /// `<= 1` means no transaction even tried a second collection).
    pub max_collections_per_transaction: usize,
    /// Commands refused for touching a second collection in a transaction.
    pub cross_collection_refusals: u64,
    /// Transactions aborted for exceeding the transaction limit.
    pub expired_transactions: u64,
    /// `createIndexes` commands refused for a TTL index on a field other than `_ts`.
    pub refused_ttl_indexes: u64,
    /// Writes refused with 61 for a missing shard key (sharded collections).
    pub shard_key_refusals: u64,
    /// Transactions refused with 50841 for touching a sharded collection.
    pub sharded_transaction_refusals: u64,
    /// Writes refused with 16 for a document over the size limit.
    pub oversized_documents: u64,
    /// Commands answered with 16500 instead of being forwarded.
    pub throttled_commands: u64,
    /// Commands forwarded, then answered with error 50 instead of the real reply.
    pub error50_commands: u64,
    /// `abortTransaction` commands the proxy sent upstream itself.
    pub upstream_aborts: u64,
    /// `hello`/`isMaster` replies whose topology fields were rewritten.
    pub hello_replies_rewritten: u64,
    /// What clients sent, by wire message kind.
    pub wire: WireStats,
}

/// Client-to-proxy messages by kind: shows how a driver talks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    /// `OP_MSG` messages.
    pub op_msg: u64,
    /// `OP_MSG` messages carrying at least one kind-1 section (document sequence).
    pub op_msg_with_document_sequences: u64,
    /// `OP_QUERY` messages (legacy; drivers use it for the first `hello` of a connection).
    pub op_query: u64,
    /// `OP_COMPRESSED` messages (passed through unseen).
    pub op_compressed: u64,
    /// Any other opcode (passed through).
    pub other: u64,
}

/// How a tracked transaction ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOutcome {
    /// Still running, or abandoned without commit or abort.
    Open,
    /// `commitTransaction` succeeded upstream (even if the client was told error 50).
    Committed,
    /// The client aborted it.
    Aborted,
    /// The proxy refused a command for touching a second collection and aborted it.
    CrossCollectionRefused,
    /// It outlived the transaction limit; the proxy aborted it.
    Expired,
    /// One of its commands was throttled (16500); the proxy aborted it.
    Throttled,
    /// It touched a sharded collection (50841); the proxy aborted it.
    ShardedRefused,
    /// One of its commands broke a sharding or size rule (61, 16); the proxy aborted it.
    CommandRefused,
    /// The session started its next transaction without ending this one (which `mongod`
    /// aborts).
    Superseded,
}

/// One transaction as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxnRecord {
    /// The session's `lsid.id`, in hex.
    pub lsid: String,
    /// `txnNumber`.
    pub txn_number: i64,
    /// Distinct `db.collection` namespaces its commands named, in first-use order, including
    /// a refused one.
    pub namespaces: Vec<String>,
    /// The namespace whose command was refused as a second collection, if any.
    pub refused_namespace: Option<String>,
    /// How it ended.
    pub outcome: TxnOutcome,
    /// Commands of this transaction the proxy saw (refused ones and the final
    /// `commitTransaction`/`abortTransaction` included).
    pub commands: u64,
}

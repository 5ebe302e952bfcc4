//! A MongoDB wire-protocol proxy that sits in front of a real `mongod` and imitates the rules
//! of Azure Cosmos DB for MongoDB (RU) that differ from MongoDB, so that tests can hold code to
//! them without a Cosmos DB account (there is no emulator here).
//!
//! Emulated (everything else passes through byte for byte):
//!
//! 1. **Topology**: `hello`/`isMaster` replies (`OP_MSG` and legacy `OP_REPLY`) advertise the
//!    proxy's own `host:port` in `hosts`, `me` and `primary`, so a client connected with
//!    `mongodb://PROXY/?replicaSet=rs0` keeps talking to the proxy.
//! 2. **One collection per transaction**: the first command of a transaction that names a
//!    second collection is refused without being forwarded, and the transaction is aborted
//!    upstream, so nothing of it commits.
//! 3. **Transaction limit** (5 s by default, from the first command): past it the transaction
//!    is aborted upstream and its next command, `commitTransaction` included, is refused.
//! 4. **Throttling**: a rate and/or a schedule of 16500 `TooManyRequests` errors whose message
//!    carries `RetryAfterMs=<n>`; a throttled command inside a transaction aborts it.
//! 5. **Error 50**: for the next N matching commands the command is forwarded (it *is*
//!    applied) and the client is told 50 `ExceededTimeLimit`, as when Cosmos DB's server-side
//!    retry gives up after 60 s.
//! 6. **TTL on `_ts` only**: a `createIndexes` asking for a TTL index on any other field is
//!    refused (`ProxyConfig::ttl_only_on_ts`, on by default).
//! 7. **Sharded collections** ([`sharding`]): created with `customAction: "CreateCollection"`
//!    (with `shardKey`) or `shardCollection`, or marked with
//!    [`ProxyHandle::shard_collection`]; described by `customAction: "GetCollection"` (with
//!    `shardKeyDefinition`). A multi-document transaction touching one is refused (50841) and
//!    aborted upstream; an insert of a document without the shard key, and an update, delete or
//!    findAndModify whose filter does not name it, are refused (61 `ShardKeyNotFound`).
//! 8. **Document size**: an inserted or replacing document over 2 MB is refused (16,
//!    `RequestEntityTooLarge`; `ProxyConfig::max_document_bytes`).
//! 9. **Change streams** ([`change_stream`]): only RU's mandatory pipeline is accepted (others
//!    are refused with RU's `BadValue`); events in the cursor's batches lose `operationType`
//!    and `updateDescription`, deletes are removed, every event of a batch carries the
//!    batch's token; a throttled `getMore` gets an empty page
//!    ([`ProxyHandle::throttle_change_stream_next`]).
//!
//! The exact error documents, and which parts come from Microsoft's documentation and which
//! are inferred, are in [`cosmos`].
//!
//! Module map:
//!
//! - [`config`]: [`ProxyConfig`], [`Match`], [`TxnErrorStyle`].
//! - [`cosmos`]: Cosmos DB's codes and error documents; which commands each rule applies to.
//! - [`sharding`]: sharded collections (custom commands, shard key rules) and the size limit.
//! - [`change_stream`]: RU's change-stream rules, their sources, [`ChangeStreamStats`].
//! - [`stats`]: [`ProxyStats`] and the per-transaction log ([`TxnRecord`]).
//! - `wire` (private): message framing, `OP_MSG`/`OP_QUERY`/`OP_REPLY`, `hello` rewriting.
//! - `state` (private): the transaction table and the rules, shared by all connections.
//! - `conn` (private): one client connection and its upstream connection.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use cosmos_ru_proxy::{ProxyConfig, start};
//!
//! let config = ProxyConfig { txn_limit: Duration::from_millis(500), ..ProxyConfig::default() };
//! let proxy = start(config, "127.0.0.1:0".parse()?, "127.0.0.1:27017".parse()?).await?;
//! let client = mongodb::Client::with_uri_str(proxy.uri("rs0")).await?;
//! proxy.handle().throttle_next(2);
//! // ... the next two data commands fail with 16500 ...
//! drop(client);
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod change_stream;
pub mod config;
mod conn;
pub mod cosmos;
pub mod sharding;
mod state;
pub mod stats;
mod unhinted;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use change_stream::ChangeStreamStats;
pub use config::{DEFAULT_RETRY_AFTER_MS, DEFAULT_TXN_LIMIT, Match, ProxyConfig, TxnErrorStyle};
pub use stats::{ProxyStats, TxnOutcome, TxnRecord, WireStats};

use crate::state::Shared;

/// How often the reaper looks for transactions past the limit.
const REAP_INTERVAL: Duration = Duration::from_millis(20);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no local address.
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
}

/// Starts the proxy: binds `listen` (port 0 picks one), then serves each client connection
/// over its own connection to `upstream` until [`RunningProxy::shutdown`].
///
/// # Errors
///
/// [`ProxyError::Bind`] when `listen` cannot be bound. `upstream` is not contacted here: a
/// client connection whose upstream connection fails is closed (and logged).
pub async fn start(
    config: ProxyConfig,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<RunningProxy, ProxyError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ProxyError::Bind {
            addr: listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(ProxyError::LocalAddr)?;
    let advertised = config.advertised_host.clone().unwrap_or_else(|| {
        let ip = if local_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local_addr.ip()
        };
        SocketAddr::new(ip, local_addr.port()).to_string()
    });
    let shared = Arc::new(Shared::new(config, advertised.clone()));
    let cancel = CancellationToken::new();
    let accept = tokio::spawn(accept_loop(
        listener,
        upstream,
        Arc::clone(&shared),
        cancel.clone(),
    ));
    let reaper = tokio::spawn(reap_loop(upstream, Arc::clone(&shared), cancel.clone()));
    tracing::info!(%local_addr, %upstream, %advertised, "Cosmos DB RU proxy listening");
    Ok(RunningProxy {
        local_addr,
        advertised,
        handle: ProxyHandle { shared },
        cancel,
        tasks: vec![accept, reaper],
    })
}

/// A running proxy. Dropping it stops accepting and closes every connection soon after;
/// [`shutdown`](Self::shutdown) also waits until they are closed.
#[derive(Debug)]
pub struct RunningProxy {
    local_addr: SocketAddr,
    advertised: String,
    handle: ProxyHandle,
    /// Cancelled by `shutdown` or drop; every task watches it.
    cancel: CancellationToken,
    /// The accept loop (which owns and awaits every connection task) and the reaper.
    tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `host:port` written into `hello` replies.
    pub fn advertised_host(&self) -> &str {
        &self.advertised
    }

    /// A connection string for the proxy: `mongodb://HOST:PORT/?replicaSet=<repl_set>`.
    pub fn uri(&self, repl_set: &str) -> String {
        format!("mongodb://{}/?replicaSet={repl_set}", self.advertised)
    }

    /// A handle to change faults and read stats, usable from anywhere.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// Stops accepting, closes every client and upstream connection and waits until all of
    /// the proxy's tasks have finished.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                tracing::error!(%error, "A proxy task panicked");
            }
        }
        tracing::info!(local_addr = %self.local_addr, "Cosmos DB RU proxy stopped");
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.with_stats(|s| {
                        s.connections_accepted += 1;
                        s.open_connections += 1;
                    });
                    let shared = Arc::clone(&shared);
                    let cancel = cancel.clone();
                    connections.spawn(async move {
                        conn::serve(stream, peer, upstream, Arc::clone(&shared), cancel).await;
                        shared.with_stats(|s| s.open_connections -= 1);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "Cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "A connection task panicked");
                }
            }
        }
    }
    drop(listener);
    while let Some(joined) = connections.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "A connection task panicked");
        }
    }
}

/// Aborts transactions upstream as soon as they pass the limit, as Cosmos DB does, rather
/// than only when their next command arrives: `mongod` would otherwise keep them (and their
/// locks) for its own 60 s.
async fn reap_loop(upstream: SocketAddr, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut sender = conn::AbortSender::new(upstream);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(REAP_INTERVAL) => {}
        }
        for (lsid, txn_number) in shared.reap() {
            tracing::info!(
                txn_number,
                "Transaction passed the limit; aborting it upstream"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sender.abort(&shared, &lsid, txn_number) => {}
            }
        }
    }
}

/// Changes faults and reads stats of a running proxy. Cheap to clone; every clone acts on the
/// same proxy. Changes apply to the next command.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// Counters since start or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Every tracked transaction, oldest first: finished ones (up to
    /// [`ProxyConfig::txn_log_capacity`]) and those still open.
    pub fn transactions(&self) -> Vec<TxnRecord> {
        self.shared.transactions()
    }

    /// Zeroes the counters and forgets the transaction log. Transactions in progress become
    /// untracked: their later commands are only subject to throttling and error 50.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
        self.shared.streams.reset_stats();
    }

    /// Turns every fault off: throttle rate 0, no scheduled 16500s, error 50s or throttled
    /// change-stream pages.
    pub fn clear_faults(&self) {
        self.shared.update(|config, throttle_next, error50_next| {
            config.throttle_rate = 0.0;
            *throttle_next = 0;
            *error50_next = 0;
        });
        self.shared.streams.throttle_next(0);
    }

    /// [`reset_stats`](Self::reset_stats) and [`clear_faults`](Self::clear_faults).
    pub fn reset(&self) {
        self.clear_faults();
        self.reset_stats();
    }

    /// The current settings.
    pub fn config(&self) -> ProxyConfig {
        self.shared.config()
    }

    /// Scheduled faults still to come: `(16500s, error 50s)`.
    pub fn pending_faults(&self) -> (u64, u64) {
        self.shared.pending_faults()
    }

    /// Throttles each matching command with probability `rate` (clamped to 0–1; NaN is 0).
    pub fn set_throttle_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.shared
            .update(|config, _, _| config.throttle_rate = rate);
    }

    /// Throttles the next `n` matching commands (before the rate is consulted); replaces any
    /// schedule still pending.
    pub fn throttle_next(&self, n: u64) {
        self.shared.update(|_, throttle_next, _| *throttle_next = n);
    }

    /// Sets the `RetryAfterMs` value of 16500 messages.
    pub fn set_retry_after_ms(&self, ms: u64) {
        self.shared
            .update(|config, _, _| config.retry_after_ms = ms);
    }

    /// Whether 16500 messages carry `RetryAfterMs` (`false`: no hint, as RU sometimes sends).
    pub fn set_throttle_hint(&self, hint: bool) {
        self.shared
            .update(|config, _, _| config.throttle_hint = hint);
    }

    /// Sets which commands throttling applies to.
    pub fn set_throttle_match(&self, rule: Match) {
        self.shared
            .update(|config, _, _| config.throttle_match = rule);
    }

    /// Answers the next `n` matching commands with error 50 after forwarding them (so they
    /// are applied); replaces any schedule still pending.
    pub fn error50_next(&self, n: u64) {
        self.shared.update(|_, _, error50_next| *error50_next = n);
    }

    /// Sets how long to wait before answering error 50.
    pub fn set_error50_delay(&self, delay: Duration) {
        self.shared
            .update(|config, _, _| config.error50_delay = delay);
    }

    /// Sets which commands the error-50 schedule applies to.
    pub fn set_error50_match(&self, rule: Match) {
        self.shared
            .update(|config, _, _| config.error50_match = rule);
    }

    /// Sets the transaction limit (applies to running transactions too).
    pub fn set_txn_limit(&self, limit: Duration) {
        self.shared.update(|config, _, _| config.txn_limit = limit);
    }

    /// Turns the one-collection-per-transaction rule on or off.
    pub fn set_enforce_one_collection(&self, enforce: bool) {
        self.shared
            .update(|config, _, _| config.enforce_one_collection = enforce);
    }

    /// Turns the refusal of TTL indexes on fields other than `_ts` on or off.
    pub fn set_ttl_only_on_ts(&self, only: bool) {
        self.shared
            .update(|config, _, _| config.ttl_only_on_ts = only);
    }

    /// Marks `namespace` (`db.collection`) as a collection sharded on `key` (a top-level or
    /// dotted field), as `customAction: "CreateCollection"` with `shardKey` would, without
    /// touching `mongod`: for a collection created straight on `mongod`.
    pub fn shard_collection(&self, namespace: &str, key: &str) {
        self.shared.shards.set(namespace, key);
    }

    /// The shard key of `namespace`, when it is sharded.
    pub fn shard_key(&self, namespace: &str) -> Option<String> {
        self.shared.shards.key_of(namespace)
    }

    /// Sets the largest document an insert or replacement may carry (`None`: no limit).
    pub fn set_max_document_bytes(&self, max: Option<usize>) {
        self.shared
            .update(|config, _, _| config.max_document_bytes = max);
        self.shared.shards.set_max_bytes(max);
    }

    /// Answers the next `n` `getMore`s on change streams with what a throttled Cosmos DB RU
    /// stream returns: an empty page (16500 underneath), the cursor left where it was. Replaces
    /// any schedule still pending. See [`change_stream`].
    pub fn throttle_change_stream_next(&self, n: u64) {
        self.shared.streams.throttle_next(n);
    }

    /// Throttled change-stream pages still to come.
    pub fn pending_change_stream_throttles(&self) -> u64 {
        self.shared.streams.pending_throttles()
    }

    /// What the change-stream rules did since start or the last
    /// [`reset_stats`](Self::reset_stats).
    pub fn change_stream_stats(&self) -> ChangeStreamStats {
        self.shared.streams.stats()
    }

    /// Whether every event of a change-stream batch carries the batch's
    /// `postBatchResumeToken` as its `_id`, as RU's pages share one token (on by default).
    pub fn set_change_stream_page_tokens(&self, on: bool) {
        self.shared.streams.set_page_tokens(on);
    }

    /// Turns Cosmos DB RU's change-stream rules on or off (on by default); off, change streams
    /// pass through as to `mongod`.
    pub fn set_change_stream_rules(&self, on: bool) {
        self.shared.streams.set_enabled(on);
    }

    /// Sets the wording of "transaction is not active" errors.
    pub fn set_txn_error_style(&self, style: TxnErrorStyle) {
        self.shared
            .update(|config, _, _| config.txn_error_style = style);
    }
}

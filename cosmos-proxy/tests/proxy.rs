//! The proxy in front of a real `mongod` replica set, driven by the real `mongodb` driver
//! through a `replicaSet=` URI. Every check of "nothing committed" reads `mongod` directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cosmos_ru_proxy::{Match, ProxyConfig, RunningProxy, TxnErrorStyle, TxnOutcome};
use devstack::{ReplicaSet, ReplicaSetOptions};
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Client, Collection};

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "cosmos-proxy-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("the temp dir is writable");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A replica set, the proxy in front of it, a client through the proxy and one straight to
/// `mongod`.
struct Env {
    rs: ReplicaSet,
    proxy: RunningProxy,
    /// Through the proxy, with `replicaSet=rs0`.
    client: Client,
    /// Straight to `mongod`: the ground truth.
    direct: Client,
    // Last: removed after the server has stopped.
    _dir: TempDir,
}

const DB: &str = "proxytest";

impl Env {
    async fn start(name: &str, config: ProxyConfig) -> anyhow::Result<Self> {
        let dir = TempDir::new(name);
        let rs = ReplicaSet::start(ReplicaSetOptions::new(dir.path())).await?;
        let upstream: SocketAddr = format!("127.0.0.1:{}", rs.port()).parse()?;
        let proxy = cosmos_ru_proxy::start(config, "127.0.0.1:0".parse()?, upstream).await?;
        let client = Client::with_uri_str(proxy.uri("rs0")).await?;
        let direct = Client::with_uri_str(rs.uri()).await?;
        Ok(Self {
            rs,
            proxy,
            client,
            direct,
            _dir: dir,
        })
    }

    /// Creates the collections up front (as the project does before data exists).
    async fn create(&self, names: &[&str]) -> anyhow::Result<()> {
        for name in names {
            self.direct.database(DB).create_collection(*name).await?;
        }
        Ok(())
    }

    fn proxied(&self, name: &str) -> Collection<Document> {
        self.client.database(DB).collection(name)
    }

    fn truth(&self, name: &str) -> Collection<Document> {
        self.direct.database(DB).collection(name)
    }

    async fn stop(self) -> anyhow::Result<()> {
        drop(self.client);
        drop(self.direct);
        self.proxy.shutdown().await;
        self.rs.stop().await
    }
}

/// The server error code and message of a driver error (command error or write error).
fn server_error(err: &mongodb::error::Error) -> Option<(i32, String)> {
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some((e.code, e.message.clone())),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some((e.code, e.message.clone())),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()?
            .first()
            .map(|w| (w.code, w.message.clone())),
        _ => None,
    }
}

fn error_code(err: &mongodb::error::Error) -> Option<i32> {
    server_error(err).map(|(code, _)| code)
}

#[tokio::test]
async fn plain_crud_works_through_a_replica_set_uri() -> anyhow::Result<()> {
    let env = Env::start("crud", ProxyConfig::default()).await?;
    let coll = env.proxied("items");

    coll.insert_one(doc! { "_id": 1, "name": "a" }).await?;
    coll.insert_many([doc! { "_id": 2 }, doc! { "_id": 3 }])
        .await?;
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "name": "b" } })
        .await?;
    coll.delete_one(doc! { "_id": 3 }).await?;
    let found = coll.find_one(doc! { "_id": 1 }).await?;
    assert_eq!(
        found
            .and_then(|d| d.get_str("name").ok().map(str::to_owned))
            .as_deref(),
        Some("b")
    );
    assert_eq!(coll.count_documents(doc! {}).await?, 2);
    assert_eq!(env.truth("items").count_documents(doc! {}).await?, 2);

    // The client sees the proxy, not mongod, as the replica set's only member.
    let hello = env
        .client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await?;
    let advertised = env.proxy.advertised_host().to_owned();
    assert_eq!(hello.get_str("setName")?, "rs0");
    assert_eq!(hello.get_str("me")?, advertised);
    assert_eq!(hello.get_str("primary")?, advertised);
    let hosts: Vec<&str> = hello
        .get_array("hosts")?
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert_eq!(hosts, [advertised.as_str()]);

    let stats = env.proxy.handle().stats();
    eprintln!("wire stats after CRUD: {:?}", stats.wire);
    assert!(stats.hello_replies_rewritten >= 2, "{stats:?}");
    assert!(stats.commands_forwarded >= 7, "{stats:?}");
    // What this driver sends (see the crate's report): OP_MSG only, and inserts' documents as
    // a kind-1 document sequence.
    assert_eq!(stats.wire.op_query, 0, "{stats:?}");
    assert!(stats.wire.op_msg_with_document_sequences >= 2, "{stats:?}");
    assert_eq!(stats.throttled_commands + stats.error50_commands, 0);

    // The monitor's exhaust stream (`hello` replies with `moreToCome`, one per heartbeat)
    // is rewritten too, so the client never learns mongod's own address.
    let fast =
        Client::with_uri_str(format!("{}&heartbeatFrequencyMS=500", env.proxy.uri("rs0"))).await?;
    fast.database("admin")
        .run_command(doc! { "ping": 1 })
        .await?;
    let before = env.proxy.handle().stats().hello_replies_rewritten;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = env.proxy.handle().stats().hello_replies_rewritten;
    assert!(after >= before + 3, "{before} -> {after}");
    env.proxy.handle().throttle_next(1);
    let err = fast
        .database(DB)
        .collection::<Document>("items")
        .insert_one(doc! { "_id": 9 })
        .await
        .expect_err("still through the proxy");
    assert_eq!(error_code(&err), Some(16500));
    drop(fast);
    env.stop().await
}

#[tokio::test]
async fn a_one_collection_transaction_commits() -> anyhow::Result<()> {
    let env = Env::start("one-coll", ProxyConfig::default()).await?;
    env.create(&["docs"]).await?;
    let coll = env.proxied("docs");

    let mut session = env.client.start_session().await?;
    session
        .start_transaction()
        .and_run2(async |s| {
            coll.insert_one(doc! { "_id": 1 }).session(&mut *s).await?;
            coll.insert_one(doc! { "_id": 2 }).session(&mut *s).await?;
            coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "outbox": true } })
                .session(&mut *s)
                .await?;
            Ok(())
        })
        .await?;

    assert_eq!(env.truth("docs").count_documents(doc! {}).await?, 2);
    let stats = env.proxy.handle().stats();
    assert_eq!(stats.transactions_seen, 1);
    assert_eq!(stats.max_collections_per_transaction, 1);
    assert_eq!(stats.cross_collection_refusals, 0);
    let log = env.proxy.handle().transactions();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].namespaces, [format!("{DB}.docs")]);
    assert_eq!(log[0].outcome, TxnOutcome::Committed);
    assert_eq!(log[0].commands, 4, "three writes and the commit");
    env.stop().await
}

#[tokio::test]
async fn a_two_collection_transaction_is_refused_at_the_second_and_leaves_nothing()
-> anyhow::Result<()> {
    let env = Env::start("two-coll", ProxyConfig::default()).await?;
    env.create(&["documents", "outbox"]).await?;
    let documents = env.proxied("documents");
    let outbox = env.proxied("outbox");

    // By hand: the first write is accepted, the second collection is refused.
    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    documents
        .insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await?;
    let refused = outbox
        .insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await
        .expect_err("second collection accepted");
    let (code, message) = server_error(&refused).expect("a server error");
    assert_eq!(code, 2, "{refused:?}");
    assert!(message.contains("Transaction is not active"), "{message}");
    assert!(
        matches!(*refused.kind, ErrorKind::Write(_)),
        "Cosmos DB answers writes with a write error: {refused:?}"
    );
    // Aborted upstream at once: a plain write of the key the transaction wrote goes through
    // instead of waiting for the transaction (mongod would hold it for its own 60 s).
    tokio::time::timeout(
        Duration::from_secs(5),
        env.truth("documents")
            .insert_one(doc! { "_id": 1, "from": "direct" }),
    )
    .await??;
    let commit = session
        .commit_transaction()
        .await
        .expect_err("commit of a refused transaction");
    assert_eq!(error_code(&commit), Some(2), "{commit:?}");

    // With the driver's convenient API: the error surfaces once, without retries.
    let mut session = env.client.start_session().await?;
    let result = session
        .start_transaction()
        .and_run2(async |s| {
            documents
                .insert_one(doc! { "_id": 2 })
                .session(&mut *s)
                .await?;
            outbox
                .insert_one(doc! { "_id": 2 })
                .session(&mut *s)
                .await?;
            Ok(())
        })
        .await;
    assert_eq!(
        result.as_ref().err().and_then(error_code),
        Some(2),
        "{result:?}"
    );

    // Nothing of either transaction: only the direct write.
    assert_eq!(env.truth("documents").count_documents(doc! {}).await?, 1);
    assert_eq!(
        env.truth("documents")
            .count_documents(doc! { "from": "direct" })
            .await?,
        1
    );
    assert_eq!(env.truth("outbox").count_documents(doc! {}).await?, 0);
    let stats = env.proxy.handle().stats();
    assert_eq!(stats.transactions_seen, 2, "no retry loop: {stats:?}");
    assert_eq!(stats.cross_collection_refusals, 2);
    assert_eq!(stats.max_collections_per_transaction, 2);
    assert!(stats.upstream_aborts >= 2, "{stats:?}");
    for record in env.proxy.handle().transactions() {
        assert_eq!(
            record.namespaces,
            [format!("{DB}.documents"), format!("{DB}.outbox")]
        );
        assert_eq!(record.refused_namespace, Some(format!("{DB}.outbox")));
        assert_eq!(record.outcome, TxnOutcome::CrossCollectionRefused);
    }
    env.stop().await
}

#[tokio::test]
async fn a_transaction_past_the_limit_fails_and_commits_nothing() -> anyhow::Result<()> {
    let config = ProxyConfig {
        txn_limit: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let env = Env::start("expired", config).await?;
    env.create(&["docs"]).await?;
    let coll = env.proxied("docs");

    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! { "_id": 1, "from": "transaction" })
        .session(&mut session)
        .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Aborted upstream at the limit, not only at the next command: a plain write of the same
    // key goes through at once instead of waiting for mongod's own 60 s limit.
    tokio::time::timeout(
        Duration::from_secs(5),
        env.truth("docs")
            .insert_one(doc! { "_id": 1, "from": "direct" }),
    )
    .await??;

    let commit = session
        .commit_transaction()
        .await
        .expect_err("commit after the limit");
    let (code, message) = server_error(&commit).expect("a server error");
    assert_eq!(code, 2, "{commit:?}");
    assert!(message.contains("Transaction is not active"), "{message}");
    assert!(!commit.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR));
    let only = env
        .truth("docs")
        .find_one(doc! {})
        .await?
        .expect("the direct write");
    assert_eq!(only.get_str("from")?, "direct");
    assert_eq!(env.truth("docs").count_documents(doc! {}).await?, 1);

    // MongoDB's shape instead, for code that wants the driver to retry.
    env.proxy
        .handle()
        .set_txn_error_style(TxnErrorStyle::NoSuchTransaction);
    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! { "_id": 2 })
        .session(&mut session)
        .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let late = coll
        .insert_one(doc! { "_id": 3 })
        .session(&mut session)
        .await
        .expect_err("write after the limit");
    assert_eq!(error_code(&late), Some(251), "{late:?}");
    assert!(late.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR));
    let (_, message) = server_error(&late).expect("a server error");
    assert!(message.contains("Transaction isn't active"), "{message}");
    let _ = session.abort_transaction().await;

    assert_eq!(env.truth("docs").count_documents(doc! {}).await?, 1);
    let stats = env.proxy.handle().stats();
    assert_eq!(stats.expired_transactions, 2, "{stats:?}");
    let log = env.proxy.handle().transactions();
    assert!(
        log.iter().all(|t| t.outcome == TxnOutcome::Expired),
        "{log:?}"
    );
    env.stop().await
}

#[tokio::test]
async fn a_throttle_schedule_gives_exactly_n_16500s_then_passes() -> anyhow::Result<()> {
    let env = Env::start("schedule", ProxyConfig::default()).await?;
    env.create(&["docs"]).await?;
    let coll = env.proxied("docs");
    let handle = env.proxy.handle();
    handle.set_retry_after_ms(37);
    handle.throttle_next(3);

    // Not data commands: never throttled.
    env.client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await?;
    env.client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await?;
    for id in 0..3 {
        let err = coll
            .insert_one(doc! { "_id": id })
            .await
            .expect_err("scheduled throttle");
        let (code, message) = server_error(&err).expect("a server error");
        assert_eq!(code, 16500, "{err:?}");
        assert!(
            message.starts_with("Error=16500, RetryAfterMs=37, Details='"),
            "{message}"
        );
    }
    coll.insert_one(doc! { "_id": 3 }).await?;
    assert_eq!(
        env.truth("docs").count_documents(doc! {}).await?,
        1,
        "throttled writes applied"
    );
    assert_eq!(handle.stats().throttled_commands, 3);

    // Writes only: reads pass, the write is throttled.
    handle.set_throttle_match(Match::writes());
    handle.throttle_next(1);
    coll.find_one(doc! {}).await?;
    let err = coll
        .insert_one(doc! { "_id": 4 })
        .await
        .expect_err("throttled write");
    assert_eq!(error_code(&err), Some(16500));

    // Inside a transaction a throttled command aborts it: nothing of it commits.
    handle.set_throttle_match(Match::data());
    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! { "_id": 10 })
        .session(&mut session)
        .await?;
    handle.throttle_next(1);
    let err = coll
        .insert_one(doc! { "_id": 11 })
        .session(&mut session)
        .await
        .expect_err("throttled in a transaction");
    assert_eq!(error_code(&err), Some(16500));
    let commit = session
        .commit_transaction()
        .await
        .expect_err("commit of an aborted transaction");
    assert_eq!(error_code(&commit), Some(2), "{commit:?}");
    assert_eq!(env.truth("docs").count_documents(doc! {}).await?, 1);
    let log = handle.transactions();
    assert_eq!(log.last().map(|t| t.outcome), Some(TxnOutcome::Throttled));
    assert_eq!(handle.stats().throttled_commands, 5);
    env.stop().await
}

#[tokio::test]
async fn the_throttle_rate_is_met_over_many_commands() -> anyhow::Result<()> {
    let config = ProxyConfig {
        throttle_rate: 0.2,
        seed: Some(42),
        ..ProxyConfig::default()
    };
    let env = Env::start("rate", config).await?;
    env.create(&["docs"]).await?;
    let coll = env.proxied("docs");
    let mut throttled = 0u64;
    for _ in 0..500 {
        match coll.find_one(doc! {}).await {
            Ok(_) => {}
            Err(err) if error_code(&err) == Some(16500) => throttled += 1,
            Err(err) => return Err(err.into()),
        }
    }
    // Mean 100, standard deviation about 9.
    assert!((60..=140).contains(&throttled), "{throttled} of 500");
    assert_eq!(env.proxy.handle().stats().throttled_commands, throttled);

    env.proxy.handle().set_throttle_rate(0.0);
    for _ in 0..20 {
        coll.find_one(doc! {}).await?;
    }
    env.stop().await
}

#[tokio::test]
async fn error_50_applies_the_write_but_reports_50() -> anyhow::Result<()> {
    let env = Env::start("error50", ProxyConfig::default()).await?;
    env.create(&["docs"]).await?;
    let coll = env.proxied("docs");
    let handle = env.proxy.handle();

    handle.error50_next(1);
    let err = coll
        .insert_one(doc! { "_id": 1 })
        .await
        .expect_err("error 50");
    let (code_value, message) = server_error(&err).expect("a server error");
    assert_eq!(code_value, 50, "{err:?}");
    assert!(
        message.contains("Retries due to rate limiting"),
        "{message}"
    );
    assert!(
        env.truth("docs")
            .find_one(doc! { "_id": 1 })
            .await?
            .is_some(),
        "applied"
    );
    coll.insert_one(doc! { "_id": 2 }).await?;

    // On a commit: committed upstream, reported as 50 (the driver marks the result unknown).
    handle.set_error50_match(Match::writes().in_namespace("docs"));
    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! { "_id": 3 })
        .session(&mut session)
        .await?;
    handle.error50_next(1);
    let commit = session
        .commit_transaction()
        .await
        .expect_err("error 50 on commit");
    assert_eq!(error_code(&commit), Some(50), "{commit:?}");
    assert!(commit.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT));
    assert!(
        env.truth("docs")
            .find_one(doc! { "_id": 3 })
            .await?
            .is_some(),
        "committed"
    );
    // Retrying the commit, as the driver's retry loop does, succeeds.
    session.commit_transaction().await?;

    let stats = handle.stats();
    assert_eq!(stats.error50_commands, 2);
    let log = handle.transactions();
    assert_eq!(log.last().map(|t| t.outcome), Some(TxnOutcome::Committed));
    env.stop().await
}

#[tokio::test]
async fn stats_record_the_namespaces_of_each_transaction() -> anyhow::Result<()> {
    let env = Env::start("log", ProxyConfig::default()).await?;
    env.create(&["a", "b"]).await?;
    let a = env.proxied("a");
    let b = env.proxied("b");
    let mut session = env.client.start_session().await?;

    session
        .start_transaction()
        .and_run2(async |s| {
            a.insert_one(doc! { "_id": 1 }).session(&mut *s).await?;
            Ok(())
        })
        .await?;
    session
        .start_transaction()
        .and_run2(async |s| {
            b.find_one(doc! {}).session(&mut *s).await?;
            b.insert_one(doc! { "_id": 1 }).session(&mut *s).await?;
            Ok(())
        })
        .await?;
    session.start_transaction().await?;
    a.insert_one(doc! { "_id": 2 })
        .session(&mut session)
        .await?;
    session.abort_transaction().await?;
    // Not transactions: not in the log.
    a.insert_one(doc! { "_id": 3 }).await?;

    let log = env.proxy.handle().transactions();
    let summary: Vec<(Vec<String>, TxnOutcome)> = log
        .iter()
        .map(|t| (t.namespaces.clone(), t.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            (vec![format!("{DB}.a")], TxnOutcome::Committed),
            (vec![format!("{DB}.b")], TxnOutcome::Committed),
            (vec![format!("{DB}.a")], TxnOutcome::Aborted),
        ]
    );
    assert!(
        log.windows(2).all(|w| w[0].lsid == w[1].lsid),
        "one session"
    );
    assert!(log.windows(2).all(|w| w[0].txn_number < w[1].txn_number));
    let stats = env.proxy.handle().stats();
    assert_eq!(stats.transactions_seen, 3);
    assert_eq!(stats.max_collections_per_transaction, 1);

    env.proxy.handle().reset_stats();
    assert!(env.proxy.handle().transactions().is_empty());
    assert_eq!(env.proxy.handle().stats().transactions_seen, 0);
    env.stop().await
}

/// Connections `mongod` has open right now.
async fn mongod_connections(direct: &Client) -> anyhow::Result<i64> {
    let status = direct
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await?;
    let current = status.get_document("connections")?.get("current");
    Ok(match current {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        other => anyhow::bail!("connections.current is {other:?}"),
    })
}

#[tokio::test]
async fn shutdown_closes_every_connection() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;

    let dir = TempDir::new("shutdown");
    let rs = ReplicaSet::start(ReplicaSetOptions::new(dir.path())).await?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", rs.port()).parse()?;
    let direct = Client::with_uri_str(rs.uri()).await?;
    let baseline = mongod_connections(&direct).await?;

    let proxy =
        cosmos_ru_proxy::start(ProxyConfig::default(), "127.0.0.1:0".parse()?, upstream).await?;
    let addr = proxy.local_addr();
    let handle = proxy.handle();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=1000",
        proxy.uri("rs0")
    ))
    .await?;
    let coll: Collection<Document> = client.database(DB).collection("docs");
    coll.insert_one(doc! { "_id": 1 }).await?;
    let mut raw = tokio::net::TcpStream::connect(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().open_connections < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(handle.stats().open_connections >= 3, "{:?}", handle.stats());
    assert!(mongod_connections(&direct).await? > baseline);

    proxy.shutdown().await;

    assert_eq!(handle.stats().open_connections, 0);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "client connection still open: {read:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
    assert!(
        coll.find_one(doc! {}).await.is_err(),
        "the client still reaches mongod"
    );
    // Every upstream connection is gone too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = mongod_connections(&direct).await?;
    while now > baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = mongod_connections(&direct).await?;
    }
    assert_eq!(now, baseline);

    drop(client);
    drop(direct);
    rs.stop().await
}

#[tokio::test]
async fn the_binary_prints_its_address_and_obeys_stdin_commands() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    let dir = TempDir::new("bin");
    let rs = ReplicaSet::start(ReplicaSetOptions::new(dir.path())).await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cosmos-ru-proxy"))
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("127.0.0.1:{}", rs.port()))
        .args(["--retry-after-ms", "99", "--txn-limit-ms", "5000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await??
        .unwrap_or_default();
    let addr = first
        .strip_prefix("cosmos-ru-proxy listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();

    stdin.write_all(b"throttle 1\n").await?;
    assert_eq!(stdout.next_line().await?.as_deref(), Some("ok"));
    let client = Client::with_uri_str(format!("mongodb://{addr}/?replicaSet=rs0")).await?;
    let coll: Collection<Document> = client.database(DB).collection("docs");
    let err = coll
        .insert_one(doc! { "_id": 1 })
        .await
        .expect_err("throttled");
    let (code, message) = server_error(&err).expect("a server error");
    assert_eq!(code, 16500);
    assert!(message.contains("RetryAfterMs=99"), "{message}");
    coll.insert_one(doc! { "_id": 2 }).await?;

    stdin.write_all(b"stats\n").await?;
    let stats: serde_json::Value =
        serde_json::from_str(&stdout.next_line().await?.unwrap_or_default())?;
    assert_eq!(stats["throttled_commands"], 1, "{stats}");
    stdin.write_all(b"bogus\n").await?;
    let reply = stdout.next_line().await?.unwrap_or_default();
    assert!(reply.starts_with("error:"), "{reply}");

    drop(client);
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "{status}");
    rs.stop().await
}

#[tokio::test]
async fn a_sharded_collection_gets_ru_rules_through_the_real_driver() -> anyhow::Result<()> {
    let env = Env::start("sharded", ProxyConfig::default()).await?;
    let database = env.client.database(DB);
    // Created as on RU: the extension command, then described by another.
    let created = database
        .run_command(doc! { "customAction": "CreateCollection", "collection": "orders", "shardKey": "tenant" })
        .await?;
    assert_eq!(created.get_f64("ok")?, 1.0);
    let names = env.direct.database(DB).list_collection_names().await?;
    assert!(
        names.contains(&"orders".to_owned()),
        "created upstream: {names:?}"
    );
    let described = database
        .run_command(doc! { "customAction": "GetCollection", "collection": "orders" })
        .await?;
    assert_eq!(
        described.get_document("shardKeyDefinition")?,
        &doc! { "tenant": "hashed" }
    );
    assert_eq!(described.get_i64("maxContentLength")?, 2_097_152);
    env.create(&["plain"]).await?;
    let plain = database
        .run_command(doc! { "customAction": "GetCollection", "collection": "plain" })
        .await?;
    assert!(!plain.contains_key("shardKeyDefinition"), "{plain}");
    let missing = database
        .run_command(doc! { "customAction": "GetCollection", "collection": "nowhere" })
        .await
        .expect_err("a missing collection");
    assert_eq!(error_code(&missing), Some(26));
    let by_admin = env
        .client
        .database("admin")
        .run_command(
            doc! { "shardCollection": format!("{DB}.events"), "key": { "region": "hashed" } },
        )
        .await?;
    assert_eq!(
        by_admin.get_str("collectionsharded")?,
        format!("{DB}.events")
    );
    assert_eq!(
        env.proxy
            .handle()
            .shard_key(&format!("{DB}.events"))
            .as_deref(),
        Some("region")
    );

    let orders = env.proxied("orders");
    orders.insert_one(doc! { "_id": 1, "tenant": "a" }).await?;
    let keyless = orders
        .insert_one(doc! { "_id": 2 })
        .await
        .expect_err("a document without the shard key");
    assert_eq!(error_code(&keyless), Some(61), "{keyless:?}");
    let untargeted = orders
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "v": 1 } })
        .await
        .expect_err("an update without the shard key");
    assert_eq!(
        server_error(&untargeted).map(|(c, m)| (c, m.contains("single shard key"))),
        Some((61, true))
    );
    orders
        .update_one(
            doc! { "_id": 1, "tenant": "a" },
            doc! { "$set": { "v": 1 } },
        )
        .await?;
    assert!(orders.delete_one(doc! { "_id": 1 }).await.is_err());
    assert!(
        orders
            .find_one_and_update(doc! { "_id": 1 }, doc! { "$set": { "v": 2 } })
            .await
            .is_err()
    );

    // A transaction on it is refused, and nothing of it commits.
    let mut session = env.client.start_session().await?;
    let result = session
        .start_transaction()
        .and_run2(async |s| {
            orders
                .insert_one(doc! { "_id": 3, "tenant": "a" })
                .session(&mut *s)
                .await?;
            Ok(())
        })
        .await;
    assert_eq!(
        result.as_ref().err().and_then(error_code),
        Some(50841),
        "{result:?}"
    );
    let mut session = env.client.start_session().await?;
    session.start_transaction().await?;
    env.proxied("plain")
        .insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await?;
    let refused = orders
        .insert_one(doc! { "_id": 4, "tenant": "a" })
        .session(&mut session)
        .await
        .expect_err("a sharded collection in a transaction");
    assert_eq!(error_code(&refused), Some(50841));
    assert!(session.commit_transaction().await.is_err());

    // Over 2 MB, anywhere.
    let big = "x".repeat(2 * 1024 * 1024);
    let too_large = env
        .proxied("plain")
        .insert_one(doc! { "_id": 9, "pad": big })
        .await
        .expect_err("a document over 2 MB");
    assert_eq!(error_code(&too_large), Some(16), "{too_large:?}");

    assert_eq!(env.truth("orders").count_documents(doc! {}).await?, 1);
    assert_eq!(env.truth("plain").count_documents(doc! {}).await?, 0);
    let stats = env.proxy.handle().stats();
    assert_eq!(stats.sharded_transaction_refusals, 2, "{stats:?}");
    assert!(stats.shard_key_refusals >= 4, "{stats:?}");
    assert_eq!(stats.oversized_documents, 1, "{stats:?}");
    assert!(stats.upstream_aborts >= 1, "{stats:?}");
    env.stop().await
}

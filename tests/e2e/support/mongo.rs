//! The real replica set `make test` started, and one fresh database per test.
//!
//! With `OUTBOX_TEST_COSMOS_SHARD_KEY=<field>` every test database sits behind its own
//! cosmos-ru-proxy with its documents' collection sharded on that field (and
//! `MONGODB_SHARD_KEY` set to it): handlers get the proxy's address, the test's own client
//! still reads `mongod` directly (`make test` runs part of the chaos suite so).
//!
//! A test's database is dropped when its [`TestDb`] goes, whether the test passed or failed
//! (`drop().await` on success, [`Drop`] on a panic or an early return), and the first
//! database a test process creates sweeps the databases of test processes that are gone (a
//! run killed before it could clean up).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::{Client, Collection, Database};
use outbox_relay::config::{Env, MongoSettings, PlacementSetting};
use outbox_relay::outbox::Placement;

/// Where `make test` tells us the replica set is.
pub const URI_VAR: &str = "OUTBOX_TEST_MONGODB_URI";

/// The connection string of the shared replica set.
///
/// # Panics
/// When `make test` did not start one: the tests need a real replica set and do not skip.
pub fn uri() -> String {
    #[expect(
        clippy::disallowed_methods,
        reason = "test support reads its own variable"
    )]
    let uri = std::env::var(URI_VAR);
    uri.unwrap_or_else(|_| {
        panic!(
            "{URI_VAR} is not set: run the tests with `make test`, which starts a real mongod replica set \
             (or start one with `target/debug/devstack mongod start --dir DIR --test-commands` and export {URI_VAR})"
        )
    })
}

/// A database of its own for one test, with the product's collections and indexes.
///
/// Named `test_<pid>_<random>`: the pid of the test process that created it tells the sweep
/// whether its owner is still running.
pub struct TestDb {
    /// Set by [`Self::drop`]; otherwise [`Drop`] cleans up.
    is_dropped: bool,
    pub name: String,
    /// The replica set's connection string.
    pub uri: String,
    /// What handlers connect to: the replica set, or the proxy in front of it.
    pub handler_uri: String,
    /// Straight to `mongod`.
    pub client: Client,
    pub settings: MongoSettings,
    pub placement: Placement,
    /// The cosmos-ru-proxy in front of the replica set (`OUTBOX_TEST_COSMOS_SHARD_KEY`).
    pub proxy: Option<cosmos_ru_proxy::RunningProxy>,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    /// With extra `MONGODB_*`/`OUTBOX_*` settings (e.g. other collection names).
    pub async fn with(extra: &[(&str, &str)]) -> Self {
        Self::on(&uri(), extra).await
    }

    /// On the replica set at `uri` (a test that starts its own, e.g. to restart it).
    pub async fn on(uri: &str, extra: &[(&str, &str)]) -> Self {
        Self::build(uri, extra, test_shard_key()).await
    }

    /// Behind a cosmos-ru-proxy of its own with the documents' collection sharded on
    /// `shard_key` (and `MONGODB_SHARD_KEY` set to it, unless `extra` says otherwise).
    pub async fn sharded(extra: &[(&str, &str)], shard_key: &str) -> Self {
        Self::build(&uri(), extra, Some(shard_key.to_owned())).await
    }

    /// The proxy in front of the replica set.
    ///
    /// # Panics
    /// When there is none.
    pub fn proxy(&self) -> cosmos_ru_proxy::ProxyHandle {
        self.proxy
            .as_ref()
            .expect("a database behind the proxy")
            .handle()
    }

    async fn build(uri: &str, extra: &[(&str, &str)], shard_key: Option<String>) -> Self {
        sweep_leftovers(uri).await;
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let mut map: HashMap<String, String> = HashMap::new();
        map.insert("MONGODB_URI".into(), uri.to_owned());
        // The suites run in every placement: `OUTBOX_TEST_PLACEMENT` names the one a test
        // gets unless it asks for one itself.
        if let Some(placement) = test_placement() {
            map.insert("OUTBOX_PLACEMENT".into(), placement);
        }
        if let Some(key) = &shard_key {
            map.insert("MONGODB_SHARD_KEY".into(), key.clone());
        }
        if let Some(hours) = test_retention_hours() {
            map.insert("OUTBOX_RETENTION_HOURS".into(), hours);
        }
        map.insert("MONGODB_DATABASE".into(), name.clone());
        for (k, v) in extra {
            map.insert((*k).into(), (*v).into());
        }
        let settings = MongoSettings::from_env(&Env::from_map(map)).expect("test settings");
        // A real replica set accepts transactions across collections: `auto` means separate.
        let placement = match settings.placement {
            PlacementSetting::Colocated => Placement::Colocated,
            PlacementSetting::Embedded => Placement::Embedded,
            PlacementSetting::Separate | PlacementSetting::Auto => Placement::Separate,
        };
        let client = Client::with_uri_str(uri).await.expect("client");
        outbox_relay::outbox::storage::ensure_indexes(
            &client.database(&name),
            &settings,
            placement,
        )
        .await
        .expect("ensure_indexes on the test database");
        let proxy = match shard_key {
            Some(key) => {
                let proxy = cosmos_ru_proxy::start(
                    cosmos_ru_proxy::ProxyConfig {
                        seed: Some(7),
                        ..cosmos_ru_proxy::ProxyConfig::default()
                    },
                    "127.0.0.1:0".parse().unwrap(),
                    upstream(uri),
                )
                .await
                .expect("start the proxy");
                proxy
                    .handle()
                    .shard_collection(&format!("{name}.{}", settings.collection), &key);
                Some(proxy)
            }
            None => None,
        };
        Self {
            is_dropped: false,
            handler_uri: proxy
                .as_ref()
                .map_or_else(|| uri.to_owned(), |p| p.uri("rs0")),
            name,
            uri: uri.to_owned(),
            client,
            settings,
            placement,
            proxy,
        }
    }

    /// With a proxy in front (`OUTBOX_TEST_COSMOS_SHARD_KEY`): panics unless Cosmos DB RU's
    /// rules for sharded collections held — no transaction, no write without the shard key,
    /// no document over the limit.
    pub fn assert_cosmos_rules_kept(&self) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let stats = proxy.handle().stats();
        assert!(
            stats.commands_forwarded > 0,
            "the handlers went through the proxy"
        );
        assert_eq!(
            (
                stats.transactions_seen,
                stats.shard_key_refusals,
                stats.sharded_transaction_refusals,
                stats.oversized_documents
            ),
            (0, 0, 0, 0),
            "through cosmos-ru-proxy on a sharded collection: {stats:?}"
        );
    }

    pub fn db(&self) -> Database {
        self.client.database(&self.name)
    }

    pub fn documents(&self) -> Collection<Document> {
        self.db().collection(&self.settings.collection)
    }

    /// Where entries (and idempotency records) live under this test's placement (for
    /// `embedded`: its dead letters and requeued events; pending events are in documents).
    pub fn outbox(&self) -> Collection<Document> {
        match self.placement {
            Placement::Separate | Placement::Embedded => {
                self.db().collection(&self.settings.outbox_collection)
            }
            Placement::Colocated => self.documents(),
        }
    }

    /// Business documents only (not entries or idempotency records beside them, nor
    /// `embedded` tombstones).
    pub async fn count_documents(&self) -> u64 {
        let filter = match self.placement {
            Placement::Embedded => doc! { "_meta.deleted": { "$ne": true } },
            _ => doc! { "_outbox": { "$exists": false }, "_idempotency": { "$exists": false } },
        };
        self.documents().count_documents(filter).await.unwrap()
    }

    /// Outbox entries; with `embedded`, the events pending in documents plus the entries of
    /// the outbox collection (published events leave documents, so they are not counted).
    pub async fn count_entries(&self) -> u64 {
        let entries = self
            .outbox()
            .count_documents(doc! { "_outbox": { "$exists": true } })
            .await
            .unwrap();
        entries + self.count_embedded_pending().await
    }

    /// Events pending inside documents (`embedded` placement; 0 otherwise).
    pub async fn count_embedded_pending(&self) -> u64 {
        self.embedded_pending().await.len() as u64
    }

    /// The pending elements of every document's `_outbox.events` (`embedded` placement).
    pub async fn embedded_pending(&self) -> Vec<Document> {
        use futures_util::TryStreamExt as _;
        if self.placement != Placement::Embedded {
            return Vec::new();
        }
        let docs: Vec<Document> = self
            .documents()
            .find(doc! { "_outbox.events": { "$exists": true } })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        docs.iter()
            .flat_map(|d| {
                d.get_document("_outbox")
                    .and_then(|o| o.get_array("events"))
                    .map(|a| a.iter().filter_map(|e| e.as_document().cloned()).collect())
                    .unwrap_or_else(|_| Vec::new())
            })
            .collect()
    }

    /// The `data` of every entry's event, parsed.
    pub async fn entries_data(&self) -> Vec<serde_json::Value> {
        use futures_util::TryStreamExt as _;
        let entries: Vec<Document> = self
            .outbox()
            .find(doc! { "_outbox": { "$exists": true } })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let events = entries
            .iter()
            .filter_map(|e| e.get_document("_outbox").ok().cloned())
            .chain(self.embedded_pending().await);
        events
            .map(|e| {
                let data = e
                    .get_document("event")
                    .and_then(|ev| ev.get_str("data"))
                    .expect("an entry's event data");
                serde_json::from_str(data).expect("event data is JSON")
            })
            .collect()
    }

    /// Entries in `status`; with `embedded`, the events pending in documents count as
    /// `pending`.
    pub async fn count_entries_with(&self, status: &str) -> u64 {
        let entries = self
            .outbox()
            .count_documents(doc! { "_outbox.status": status })
            .await
            .unwrap();
        if status == "pending" {
            entries + self.count_embedded_pending().await
        } else {
            entries
        }
    }

    /// The settings a handler needs to use this database.
    pub fn app_settings(&self) -> Vec<(String, String)> {
        let mut settings = vec![
            ("MONGODB_URI".into(), self.handler_uri.clone()),
            ("MONGODB_DATABASE".into(), self.name.clone()),
            (
                "MONGODB_COLLECTION".into(),
                self.settings.collection.clone(),
            ),
            (
                "OUTBOX_COLLECTION".into(),
                self.settings.outbox_collection.clone(),
            ),
            (
                "OUTBOX_PLACEMENT".into(),
                match self.placement {
                    Placement::Separate => "separate".into(),
                    Placement::Colocated => "colocated".into(),
                    Placement::Embedded => "embedded".into(),
                },
            ),
        ];
        if let Some(key) = &self.settings.shard_key {
            settings.push(("MONGODB_SHARD_KEY".into(), key.clone()));
        }
        if let Some(hours) = test_retention_hours() {
            settings.push(("OUTBOX_RETENTION_HOURS".into(), hours));
        }
        settings
    }

    /// The `appName` a handler of this test connects with (see [`Self::uri_for_handler`]), so
    /// that cleaning up can end the sessions it left.
    pub fn app_name(&self) -> String {
        app_name(&self.name)
    }

    /// What handlers connect to ([`Self::handler_uri`]) with this test's `appName`.
    pub fn uri_for_handler(&self) -> String {
        let separator = if self.handler_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}appName={}", self.handler_uri, self.app_name())
    }

    /// Ends the sessions this test's handlers left, then drops the database (and stops the
    /// proxy in front of it).
    pub async fn drop(mut self) {
        clean_up(&self.client, &self.name).await;
        self.is_dropped = true;
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown().await;
        }
    }
}

impl Drop for TestDb {
    /// A test that failed never reached `drop().await`: clean up here, so that its database
    /// does not outlive it.
    fn drop(&mut self) {
        if self.is_dropped {
            return;
        }
        let (uri, name) = (self.uri.clone(), self.name.clone());
        // `drop` cannot await, and the test's runtime may be the one unwinding: a thread with
        // a runtime and a client of its own, bounded in time (the replica set may be down).
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async {
                let cleanup = async {
                    if let Some(client) = short_lived_client(&uri).await {
                        clean_up(&client, &name).await;
                    }
                };
                if tokio::time::timeout(Duration::from_secs(20), cleanup)
                    .await
                    .is_err()
                {
                    eprintln!("test database {name} not dropped: the replica set did not answer");
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// A variable of the test support's own (`OUTBOX_TEST_*`), unset when empty.
fn test_variable(name: &str) -> Option<String> {
    #[expect(
        clippy::disallowed_methods,
        reason = "test support reads its own variables"
    )]
    let value = std::env::var(name).ok();
    value.filter(|v| !v.is_empty())
}

/// `OUTBOX_TEST_PLACEMENT`: the placement of every test that does not choose one (`make
/// test` runs the ledger suites once more with `embedded`).
pub fn test_placement() -> Option<String> {
    test_variable("OUTBOX_TEST_PLACEMENT")
}

/// `OUTBOX_TEST_RETENTION_HOURS`: the retention of every test database (`make test` runs part
/// of the chaos suite once more with `0`: published entries deleted at once).
pub fn test_retention_hours() -> Option<String> {
    test_variable("OUTBOX_TEST_RETENTION_HOURS")
}

/// `OUTBOX_TEST_COSMOS_SHARD_KEY`: put every test database behind cosmos-ru-proxy with its
/// documents' collection sharded on this field.
pub fn test_shard_key() -> Option<String> {
    test_variable("OUTBOX_TEST_COSMOS_SHARD_KEY")
}

/// The `host:port` of the replica set at `uri` (`mongodb://127.0.0.1:PORT/…`), for a proxy.
///
/// # Panics
/// When the URI names no single `host:port`.
pub fn upstream(uri: &str) -> SocketAddr {
    let rest = uri.trim_start_matches("mongodb://");
    let hostport = rest.split(['/', '?', ',']).next().unwrap_or_default();
    hostport
        .parse()
        .unwrap_or_else(|_| panic!("{uri} names no 127.0.0.1:PORT"))
}

fn app_name(database: &str) -> String {
    format!("handler-{database}")
}

/// A client that gives up quickly when the replica set is gone.
async fn short_lived_client(uri: &str) -> Option<Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await.ok()?;
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).ok()
}

/// Ends the sessions of the database's handlers, then drops it.
///
/// A handler SIGKILLed mid-write leaves its transaction open on the server until
/// `transactionLifetimeLimitSeconds` (60 s) runs out; until then it holds its locks and
/// `dropDatabase` waits. Only the sessions of this database's handlers are ended (by their
/// `appName`), never those of other tests sharing the replica set.
async fn clean_up(client: &Client, database: &str) {
    use futures_util::TryStreamExt as _;
    let admin = client.database("admin");
    let sessions: Vec<mongodb::bson::Bson> = match admin
        .aggregate(vec![
            doc! { "$currentOp": { "allUsers": true, "idleSessions": true } },
            doc! { "$match": { "appName": app_name(database), "lsid.id": { "$exists": true } } },
        ])
        .await
    {
        Ok(cursor) => cursor
            .try_collect::<Vec<Document>>()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|op| op.get_document("lsid").ok()?.get("id").cloned())
            .map(|id| doc! { "id": id }.into())
            .collect(),
        Err(_) => Vec::new(),
    };
    if !sessions.is_empty() {
        let _ = admin.run_command(doc! { "killSessions": sessions }).await;
    }
    if let Err(error) = client.database(database).drop().await {
        eprintln!("test database {database} not dropped: {error}");
    }
}

/// Once per test process: drops the `test_<pid>_…` databases whose process is gone. Tests and
/// the replica set run on one machine (as `make test` runs them), so `/proc` tells.
async fn sweep_leftovers(uri: &str) {
    static IS_SWEPT: AtomicBool = AtomicBool::new(false);
    if IS_SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some(client) = short_lived_client(uri).await {
        sweep_orphans(&client).await;
    }
}

/// Drops the `test_<pid>_…` databases whose process is gone.
pub async fn sweep_orphans(client: &Client) {
    let names = client
        .list_database_names()
        .filter(doc! { "name": { "$regex": "^test_[0-9]+_" } })
        .await
        .unwrap_or_default();
    for name in names.iter().filter(|name| is_orphaned(name)) {
        clean_up(client, name).await;
    }
}

/// Whether the test process that created database `name` (`test_<pid>_<random>`) is gone.
fn is_orphaned(name: &str) -> bool {
    let pid = name
        .strip_prefix("test_")
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new("/proc").join(pid.to_string()).exists()
    })
}

/// The ids of the events pending in an `embedded` document, oldest first.
pub fn pending_event_ids(document: &Document) -> Vec<String> {
    document
        .get_document("_outbox")
        .and_then(|o| o.get_array("events"))
        .map(|events| {
            events
                .iter()
                .filter_map(|e| match e.as_document()?.get("id")? {
                    mongodb::bson::Bson::Binary(b) => {
                        Some(uuid::Uuid::from_slice(&b.bytes).ok()?.to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An outbox entry's state document (`_outbox`), by event id.
pub async fn entry_state(db: &TestDb, event_id: &str) -> Document {
    let uuid = uuid::Uuid::parse_str(event_id).unwrap();
    let id = mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Uuid,
        bytes: uuid.as_bytes().to_vec(),
    };
    if let Some(entry) = db
        .outbox()
        .find_one(doc! { "_id": id.clone() })
        .await
        .unwrap()
    {
        return entry.get_document("_outbox").unwrap().clone();
    }
    // `embedded`: the event pending in its document, with the document's due time and lease.
    let holder = db
        .documents()
        .find_one(doc! { "_outbox.events.id": id.clone() })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no outbox entry {event_id}"));
    let outbox = holder.get_document("_outbox").unwrap();
    let mut state = outbox
        .get_array("events")
        .unwrap()
        .iter()
        .filter_map(|e| e.as_document())
        .find(|e| e.get("id") == Some(&mongodb::bson::Bson::Binary(id.clone())))
        .unwrap()
        .clone();
    state.insert("status", "pending");
    for field in ["due_at", "lease_token", "claims"] {
        if let Some(v) = outbox.get(field) {
            state.insert(field, v.clone());
        }
    }
    state
}

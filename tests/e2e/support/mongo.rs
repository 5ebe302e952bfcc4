//! The real replica set `make test` started, and one fresh database per test.

use std::collections::HashMap;

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
pub struct TestDb {
    pub name: String,
    /// The replica set's connection string.
    pub uri: String,
    pub client: Client,
    pub settings: MongoSettings,
    pub placement: Placement,
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
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut map: HashMap<String, String> = HashMap::new();
        map.insert("MONGODB_URI".into(), uri.to_owned());
        map.insert("MONGODB_DATABASE".into(), name.clone());
        for (k, v) in extra {
            map.insert((*k).into(), (*v).into());
        }
        let settings = MongoSettings::from_env(&Env::from_map(map)).expect("test settings");
        // A real replica set accepts transactions across collections: `auto` means separate.
        let placement = match settings.placement {
            PlacementSetting::Colocated => Placement::Colocated,
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
        Self {
            name,
            uri: uri.to_owned(),
            client,
            settings,
            placement,
        }
    }

    pub fn db(&self) -> Database {
        self.client.database(&self.name)
    }

    pub fn documents(&self) -> Collection<Document> {
        self.db().collection(&self.settings.collection)
    }

    /// Where entries (and idempotency records) live under this test's placement.
    pub fn outbox(&self) -> Collection<Document> {
        match self.placement {
            Placement::Separate => self.db().collection(&self.settings.outbox_collection),
            Placement::Colocated => self.documents(),
        }
    }

    /// Business documents only (not entries or idempotency records beside them).
    pub async fn count_documents(&self) -> u64 {
        self.documents()
            .count_documents(
                doc! { "_outbox": { "$exists": false }, "_idempotency": { "$exists": false } },
            )
            .await
            .unwrap()
    }

    pub async fn count_entries(&self) -> u64 {
        self.outbox()
            .count_documents(doc! { "_outbox": { "$exists": true } })
            .await
            .unwrap()
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
        entries
            .iter()
            .map(|e| {
                let data = e
                    .get_document("_outbox")
                    .and_then(|o| o.get_document("event"))
                    .and_then(|ev| ev.get_str("data"))
                    .expect("an entry's event data");
                serde_json::from_str(data).expect("event data is JSON")
            })
            .collect()
    }

    pub async fn count_entries_with(&self, status: &str) -> u64 {
        self.outbox()
            .count_documents(doc! { "_outbox.status": status })
            .await
            .unwrap()
    }

    /// The settings a handler needs to use this database.
    pub fn app_settings(&self) -> Vec<(String, String)> {
        vec![
            ("MONGODB_URI".into(), self.uri.clone()),
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
                },
            ),
        ]
    }

    pub async fn drop(self) {
        let _ = self.db().drop().await;
    }
}

/// An outbox entry's state document (`_outbox`), by event id.
pub async fn entry_state(db: &TestDb, event_id: &str) -> Document {
    let uuid = uuid::Uuid::parse_str(event_id).unwrap();
    let id = mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Uuid,
        bytes: uuid.as_bytes().to_vec(),
    };
    let entry = db
        .outbox()
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no outbox entry {event_id}"));
    entry.get_document("_outbox").unwrap().clone()
}

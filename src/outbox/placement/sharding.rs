//! How the documents' collection is sharded, as the server tells, and which placements that
//! leaves.
//!
//! Asked once, when the storage is prepared, with nothing but what a `readWrite` user may run:
//!
//! 1. Cosmos DB for MongoDB RU answers its extension command `{customAction:
//!    "GetCollection", collection}`; a sharded collection's answer has `shardKeyDefinition`
//!    (`{<key>: "hashed"}`). A collection that does not exist yet (26) is not sharded: the
//!    handler creates it, unsharded.
//! 2. Any other server refuses that command (MongoDB: 59 `CommandNotFound`; Cosmos DB vCore:
//!    115). Then `collStats` says `sharded: true` on a sharded MongoDB cluster, and
//!    `config.collections` names the key where the user may read it.
//! 3. A server that answers neither question is taken as unsharded.
//!
//! On RU a multi-document transaction may not touch a sharded collection, so only `embedded`
//! works there, and every write and relay update must name the shard key
//! (`MONGODB_SHARD_KEY`, unless the key is `_id`, which embedded filters always name). A
//! sharded MongoDB cluster runs transactions across shards, so every placement works; only a
//! `MONGODB_SHARD_KEY` naming another field than the real key is refused.

use mongodb::Database;
use mongodb::bson::{Document, doc};

use super::Placement;
use crate::config::MongoSettings;
use crate::db::{DbError, RuCollection, classify, get_collection};

/// What the server says about the documents' collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Collection {
    /// How it is sharded.
    pub(super) sharding: Sharding,
    /// The largest document it stores, where the server says (RU's `maxContentLength`).
    pub(super) max_document_bytes: Option<usize>,
}

/// How the documents' collection is sharded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharding {
    /// Not sharded, not created yet, or the server says nothing either way.
    Unsharded,
    /// Sharded on Cosmos DB for MongoDB RU: no multi-document transaction may touch it.
    CosmosRu {
        /// The shard key's field (a path).
        key: String,
    },
    /// Sharded on a MongoDB cluster: transactions span shards.
    MongoDb {
        /// The shard key's first field, when `config.collections` could be read.
        key: Option<String>,
    },
}

/// Why a placement cannot work on the collection as it is, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong, naming the collection and its shard key.
    pub problem: String,
    /// The settings to change.
    pub fix: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.problem, self.fix)
    }
}

/// Asks the server how `collection` of `database` is sharded.
///
/// # Errors
/// When the database cannot be reached or is busy (a later call tries again).
pub(super) async fn detect(database: &Database, collection: &str) -> Result<Collection, DbError> {
    let asked = get_collection(database, collection).await;
    let unknown_size = |sharding| Collection {
        sharding,
        max_document_bytes: None,
    };
    match asked {
        Ok(RuCollection::Described(answer)) => return Ok(from_get_collection(&answer)),
        Ok(RuCollection::Missing) => return Ok(unknown_size(Sharding::Unsharded)),
        Ok(RuCollection::NotRu) => {}
        Err(e) => {
            let e = classify(e);
            if e.is_retryable() {
                return Err(e);
            }
        }
    }
    let stats = match database.run_command(doc! { "collStats": collection }).await {
        Ok(stats) => stats,
        Err(e) => {
            let e = classify(e);
            if e.is_retryable() {
                return Err(e);
            }
            tracing::debug!(error = %crate::telemetry::chain(&e), "The server says nothing about sharding; taking the collection as unsharded");
            return Ok(unknown_size(Sharding::Unsharded));
        }
    };
    if stats.get_bool("sharded") != Ok(true) {
        return Ok(unknown_size(Sharding::Unsharded));
    }
    let namespace = format!("{}.{collection}", database.name());
    let key = database
        .client()
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! { "_id": &namespace })
        .await
        .ok()
        .flatten()
        .and_then(|c| first_field(c.get_document("key").ok()?));
    Ok(unknown_size(Sharding::MongoDb { key }))
}

/// What RU's `GetCollection` answer says.
fn from_get_collection(answer: &Document) -> Collection {
    let max = answer
        .get_i64("maxContentLength")
        .ok()
        .or_else(|| answer.get_i32("maxContentLength").ok().map(i64::from));
    Collection {
        sharding: answer
            .get_document("shardKeyDefinition")
            .ok()
            .and_then(first_field)
            .map_or(Sharding::Unsharded, |key| Sharding::CosmosRu { key }),
        max_document_bytes: max.and_then(|m| usize::try_from(m).ok()).filter(|m| *m > 0),
    }
}

fn first_field(d: &Document) -> Option<String> {
    d.keys().next().cloned()
}

impl Sharding {
    /// Whether multi-document transactions are unavailable on the collection.
    #[must_use]
    pub fn forbids_transactions(&self) -> bool {
        matches!(self, Self::CosmosRu { .. })
    }

    /// The collection's sharding in words, `None` when it is not sharded.
    #[must_use]
    pub fn describe(&self, settings: &MongoSettings) -> Option<String> {
        let ns = namespace(settings);
        match self {
            Self::Unsharded => None,
            Self::CosmosRu { key } => Some(format!(
                "the collection {ns} is sharded on Cosmos DB for MongoDB RU (shard key {key}), where no multi-document transaction may touch it"
            )),
            Self::MongoDb { key: Some(key) } => Some(format!(
                "the collection {ns} is sharded (shard key {key}); the cluster runs transactions across shards"
            )),
            Self::MongoDb { key: None } => Some(format!(
                "the collection {ns} is sharded; the cluster runs transactions across shards"
            )),
        }
    }

    /// Why `placement` cannot work on the collection with `settings`; `None` when it can.
    #[must_use]
    pub fn refusal(&self, placement: Placement, settings: &MongoSettings) -> Option<Refusal> {
        let ns = namespace(settings);
        let configured = settings.shard_key.as_deref();
        match self {
            Self::Unsharded | Self::MongoDb { key: None } => None,
            Self::CosmosRu { key } if placement != Placement::Embedded => Some(Refusal {
                problem: format!(
                    "OUTBOX_PLACEMENT={} cannot work: the collection {ns} is sharded on Cosmos DB for MongoDB RU (shard key {key}), where no multi-document transaction may touch it, and every {} write is one",
                    placement.as_str(),
                    placement.as_str()
                ),
                fix: format!(
                    "set OUTBOX_PLACEMENT=embedded (each write one single-document operation, no transaction){}",
                    if key == "_id" {
                        " and leave MONGODB_SHARD_KEY unset (the shard key is _id, which every embedded filter names)".to_owned()
                    } else {
                        format!(" and MONGODB_SHARD_KEY={key}")
                    }
                ),
            }),
            Self::CosmosRu { key } => match (key.as_str(), configured) {
                ("_id", None) => None,
                (real, Some(set)) if real == set => None,
                ("_id", Some(set)) => Some(Refusal {
                    problem: format!(
                        "the collection {ns} is sharded on Cosmos DB for MongoDB RU with the shard key _id, but MONGODB_SHARD_KEY={set}"
                    ),
                    fix: "unset MONGODB_SHARD_KEY (every embedded filter names _id)".to_owned(),
                }),
                (real, set) => Some(Refusal {
                    problem: format!(
                        "the collection {ns} is sharded on Cosmos DB for MongoDB RU with the shard key {real}, but MONGODB_SHARD_KEY {}: writes and relay updates would not name the shard key, and RU refuses those (ShardKeyNotFound, 61)",
                        set.map_or_else(|| "is unset".to_owned(), |s| format!("is {s}"))
                    ),
                    fix: format!("set MONGODB_SHARD_KEY={real}"),
                }),
            },
            Self::MongoDb { key: Some(real) } => match configured {
                Some(set) if set != real => Some(Refusal {
                    problem: format!(
                        "the collection {ns} is sharded with the shard key {real}, but MONGODB_SHARD_KEY={set}"
                    ),
                    fix: format!("set MONGODB_SHARD_KEY={real} (or leave it unset)"),
                }),
                _ => None,
            },
        }
    }
}

fn namespace(settings: &MongoSettings) -> String {
    format!("{}.{}", settings.database, settings.collection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn settings(shard_key: Option<&str>) -> MongoSettings {
        let mut map: std::collections::HashMap<String, String> =
            [("MONGODB_URI".to_owned(), "mongodb://h/".to_owned())].into();
        if let Some(k) = shard_key {
            map.insert("MONGODB_SHARD_KEY".to_owned(), k.to_owned());
        }
        MongoSettings::from_env(&Env::from_map(map)).unwrap()
    }

    fn ru(key: &str) -> Sharding {
        Sharding::CosmosRu {
            key: key.to_owned(),
        }
    }

    #[test]
    fn get_collection_answers_are_read_as_ru_documents_them() {
        let sharded = doc! {
            "database": "d", "collection": "c", "shardKeyDefinition": { "tenant": "hashed" },
            "provisionedThroughput": 400, "maxContentLength": 2_097_152, "ok": 1.0,
        };
        assert_eq!(
            from_get_collection(&sharded),
            Collection {
                sharding: ru("tenant"),
                max_document_bytes: Some(2_097_152)
            }
        );
        let plain = doc! { "database": "d", "collection": "c", "ok": 1.0 };
        assert_eq!(
            from_get_collection(&plain),
            Collection {
                sharding: Sharding::Unsharded,
                max_document_bytes: None
            }
        );
    }

    #[test]
    fn colocated_and_separate_on_a_sharded_ru_collection_are_refused_naming_embedded() {
        for placement in [Placement::Colocated, Placement::Separate] {
            let r = ru("tenant")
                .refusal(placement, &settings(Some("tenant")))
                .unwrap();
            let text = r.to_string();
            assert!(
                text.contains(&format!("OUTBOX_PLACEMENT={}", placement.as_str())),
                "{text}"
            );
            assert!(r.fix.contains("OUTBOX_PLACEMENT=embedded"), "{text}");
            assert!(r.fix.contains("MONGODB_SHARD_KEY=tenant"), "{text}");
            assert!(text.contains("outbox.documents"), "{text}");
        }
        let by_id = ru("_id")
            .refusal(Placement::Colocated, &settings(None))
            .unwrap();
        assert!(
            by_id.fix.contains("leave MONGODB_SHARD_KEY unset"),
            "{by_id}"
        );
    }

    #[test]
    fn embedded_on_a_sharded_ru_collection_needs_the_real_shard_key() {
        let s = ru("tenant");
        assert_eq!(
            s.refusal(Placement::Embedded, &settings(Some("tenant"))),
            None
        );
        let unset = s.refusal(Placement::Embedded, &settings(None)).unwrap();
        assert!(
            unset.problem.contains("MONGODB_SHARD_KEY is unset"),
            "{unset}"
        );
        assert!(unset.problem.contains("shard key tenant"), "{unset}");
        assert_eq!(unset.fix, "set MONGODB_SHARD_KEY=tenant");
        let other = s
            .refusal(Placement::Embedded, &settings(Some("region")))
            .unwrap();
        assert!(
            other.problem.contains("MONGODB_SHARD_KEY is region"),
            "{other}"
        );
        assert!(other.problem.contains("tenant"), "{other}");
        // Sharded on _id: every embedded filter names it already.
        assert_eq!(
            ru("_id").refusal(Placement::Embedded, &settings(None)),
            None
        );
        assert!(
            ru("_id")
                .refusal(Placement::Embedded, &settings(Some("tenant")))
                .is_some()
        );
    }

    #[test]
    fn a_sharded_mongodb_cluster_takes_every_placement_but_not_a_wrong_key() {
        let known = Sharding::MongoDb {
            key: Some("tenant".to_owned()),
        };
        for placement in [
            Placement::Separate,
            Placement::Colocated,
            Placement::Embedded,
        ] {
            assert_eq!(known.refusal(placement, &settings(None)), None);
            assert_eq!(known.refusal(placement, &settings(Some("tenant"))), None);
            assert!(
                known
                    .refusal(placement, &settings(Some("region")))
                    .is_some()
            );
            assert_eq!(
                Sharding::MongoDb { key: None }.refusal(placement, &settings(Some("x"))),
                None
            );
            assert_eq!(
                Sharding::Unsharded.refusal(placement, &settings(None)),
                None
            );
        }
        assert!(!known.forbids_transactions());
        assert!(ru("k").forbids_transactions());
    }
}

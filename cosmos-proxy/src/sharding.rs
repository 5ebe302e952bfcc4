//! Sharded collections as Cosmos DB for MongoDB RU has them, and its document size limit.
//!
//! - **Creating one**: the extension command `{customAction: "CreateCollection", collection,
//!   shardKey}` or the admin command `{shardCollection: "db.coll", key: {<field>: …}}`. The
//!   proxy sends `create` upstream in their place and, once `mongod` agreed, records the
//!   namespace's shard key. [`ProxyHandle::shard_collection`](crate::ProxyHandle::shard_collection)
//!   records one without touching `mongod` (for collections a test creates itself). A `drop` or
//!   `dropDatabase` through the proxy forgets it.
//! - **Describing one**: `{customAction: "GetCollection", collection}` is answered in RU's
//!   documented shape (`database`, `collection`, `shardKeyDefinition: {<field>: "hashed"}` when
//!   sharded, `provisionedThroughput`, `maxContentLength`), after asking `mongod` whether the
//!   collection exists (`listCollections`); a missing one gets 26 `NamespaceNotFound`.
//! - **Rules on a sharded collection**: a multi-document transaction that touches it is refused
//!   with 50841 and aborted upstream (the transaction table applies it); an `insert` of a document
//!   without the shard key, and an `update`, `delete` or `findAndModify` whose filter does not
//!   name the shard key (by value, `$eq` or `$in`, at the top level or in a top-level `$and`),
//!   are refused with 61 `ShardKeyNotFound`, without being forwarded.
//! - **Document size** (every collection): an inserted document, or a whole-document
//!   replacement in `update` / `findAndModify`, over the limit (2 MB by default) is refused
//!   with 16 (`RequestEntityTooLarge (413)`). Updates with operators are not measured: their
//!   result is only known to `mongod`.
//!
//! The sources of each answer are in the table of [`crate::cosmos`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bson::{Bson, Document, RawBsonRef, RawDocument, doc};

use crate::cosmos::{CommandInfo, CosmosError, Rule, Verdict};
use crate::wire::first_key;

pub use crate::config::RU_MAX_DOCUMENT_BYTES;
/// MongoDB's document limit, answered as `maxContentLength` when the size rule is off.
const MONGODB_MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Cosmos DB's code for a missing shard key.
pub const SHARD_KEY_NOT_FOUND: i32 = 61;
/// The code Cosmos DB RU answers a multi-document transaction on a sharded collection with.
pub const SHARDED_TRANSACTION: i32 = 50841;
/// The code Cosmos DB RU answers an oversized request with.
pub const REQUEST_ENTITY_TOO_LARGE: i32 = 16;
/// MongoDB's code for a missing collection.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// What `GetCollection` reports as the collection's throughput (RU's minimum).
const PROVISIONED_THROUGHPUT: i32 = 400;

impl CosmosError {
    /// 61: an insert's document without the shard key.
    pub(crate) fn document_without_shard_key() -> Self {
        Self::shard_key_not_found("document does not contain shard key")
    }

    /// 61: a filter that does not name the shard key.
    pub(crate) fn untargeted_filter() -> Self {
        Self::shard_key_not_found("query in command must target a single shard key")
    }

    fn shard_key_not_found(message: &str) -> Self {
        Self {
            code: SHARD_KEY_NOT_FOUND,
            code_name: "ShardKeyNotFound",
            errmsg: message.to_owned(),
            labels: Vec::new(),
            as_write_error: false,
        }
    }

    /// 50841: a multi-document transaction touching a sharded collection.
    pub(crate) fn sharded_transaction() -> Self {
        Self {
            code: SHARDED_TRANSACTION,
            code_name: "Location50841",
            errmsg: "Multi-document transactions cannot be run in a sharded collection".to_owned(),
            labels: Vec::new(),
            as_write_error: false,
        }
    }

    /// 16: a document over the size limit.
    pub(crate) fn request_entity_too_large(activity_id: &str) -> Self {
        Self {
            code: REQUEST_ENTITY_TOO_LARGE,
            code_name: "RequestEntityTooLarge",
            errmsg: format!(
                "Error=16, Details='Response status code does not indicate success: \
                 RequestEntityTooLarge (413); Substatus: 0; ActivityId: {activity_id}; Reason: \
                 (Message: {{\"Errors\":[\"Request size is too large\"]}}\r\nActivityId: \
                 {activity_id});'"
            ),
            labels: Vec::new(),
            as_write_error: false,
        }
    }
}

/// The shard keys of sharded namespaces, and the document size limit. Its own lock, taken
/// briefly, never together with the state's.
#[derive(Debug)]
pub(crate) struct Shards {
    keys: Mutex<HashMap<String, String>>,
    /// 0: no limit.
    max_bytes: AtomicUsize,
}

impl Shards {
    pub(crate) fn new(max_bytes: Option<usize>) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            max_bytes: AtomicUsize::new(max_bytes.unwrap_or(0)),
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `namespace` (`db.collection`) as sharded on `key`.
    pub(crate) fn set(&self, namespace: &str, key: &str) {
        self.keys().insert(namespace.to_owned(), key.to_owned());
    }

    /// The shard key of `namespace`, when it is sharded.
    pub(crate) fn key_of(&self, namespace: &str) -> Option<String> {
        self.keys().get(namespace).cloned()
    }

    /// Sets the document size limit (`None`: none).
    pub(crate) fn set_max_bytes(&self, max: Option<usize>) {
        self.max_bytes.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    fn max_bytes(&self) -> Option<usize> {
        Some(self.max_bytes.load(Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// Forgets what a `drop` / `dropDatabase` removes.
    fn forget(&self, info: &CommandInfo, body: &RawDocument) {
        match info.name.as_str() {
            "drop" => {
                let mut keys = self.keys();
                for ns in &info.namespaces {
                    keys.remove(ns);
                }
            }
            "dropDatabase" => {
                if let Ok(db) = body.get_str("$db") {
                    let prefix = format!("{db}.");
                    self.keys().retain(|ns, _| !ns.starts_with(&prefix));
                }
            }
            _ => {}
        }
    }

    /// Judges one command: `body` and the message's document sequences (`sequences` is
    /// called only when the command's documents are needed).
    pub(crate) fn judge<'a>(
        &self,
        info: &CommandInfo,
        body: &'a RawDocument,
        sequences: impl FnOnce() -> Vec<(&'a str, Vec<&'a RawDocument>)>,
        activity_id: impl FnOnce() -> String,
    ) -> Verdict {
        self.forget(info, body);
        let key = info
            .namespaces
            .first()
            .and_then(|ns| self.key_of(ns))
            .filter(|_| info.is_data());
        let max = self.max_bytes();
        let mut verdict = Verdict {
            sharded: key.is_some(),
            refusal: None,
        };
        let field = match info.name.as_str() {
            "insert" => "documents",
            "update" => "updates",
            "delete" => "deletes",
            "findAndModify" | "findandmodify" => {
                verdict.refusal = find_and_modify(body, key.as_deref(), max, activity_id);
                return verdict;
            }
            _ => return verdict,
        };
        if key.is_none() && (max.is_none() || field == "deletes") {
            return verdict;
        }
        let mut docs: Vec<&RawDocument> = body
            .get_array(field)
            .map(|a| {
                a.into_iter()
                    .flatten()
                    .filter_map(|d| d.as_document())
                    .collect()
            })
            .unwrap_or_default();
        for (name, sequence) in sequences() {
            if name == field {
                docs.extend(sequence);
            }
        }
        verdict.refusal = match field {
            "documents" => inserts(&docs, key.as_deref(), max, activity_id),
            "updates" => updates(&docs, key.as_deref(), max, activity_id),
            _ => deletes(&docs, key.as_deref()),
        };
        verdict
    }
}

fn too_large(
    doc: &RawDocument,
    max: Option<usize>,
    activity_id: impl FnOnce() -> String,
) -> Option<(Rule, CosmosError)> {
    let max = max?;
    (doc.as_bytes().len() > max).then(|| {
        (
            Rule::Size,
            CosmosError::request_entity_too_large(&activity_id()),
        )
    })
}

fn inserts(
    docs: &[&RawDocument],
    key: Option<&str>,
    max: Option<usize>,
    activity_id: impl FnOnce() -> String,
) -> Option<(Rule, CosmosError)> {
    if let Some(key) = key
        && docs.iter().any(|d| !has_path(d, key))
    {
        return Some((Rule::ShardKey, CosmosError::document_without_shard_key()));
    }
    docs.iter()
        .find(|d| max.is_some_and(|m| d.as_bytes().len() > m))
        .and_then(|d| too_large(d, max, activity_id))
}

fn updates(
    statements: &[&RawDocument],
    key: Option<&str>,
    max: Option<usize>,
    activity_id: impl FnOnce() -> String,
) -> Option<(Rule, CosmosError)> {
    if let Some(key) = key
        && statements
            .iter()
            .any(|s| !s.get_document("q").is_ok_and(|q| names_key(q, key)))
    {
        return Some((Rule::ShardKey, CosmosError::untargeted_filter()));
    }
    statements
        .iter()
        .filter_map(|s| s.get_document("u").ok())
        .find(|u| is_replacement(u) && max.is_some_and(|m| u.as_bytes().len() > m))
        .and_then(|u| too_large(u, max, activity_id))
}

fn deletes(statements: &[&RawDocument], key: Option<&str>) -> Option<(Rule, CosmosError)> {
    let key = key?;
    statements
        .iter()
        .any(|s| !s.get_document("q").is_ok_and(|q| names_key(q, key)))
        .then(|| (Rule::ShardKey, CosmosError::untargeted_filter()))
}

fn find_and_modify(
    body: &RawDocument,
    key: Option<&str>,
    max: Option<usize>,
    activity_id: impl FnOnce() -> String,
) -> Option<(Rule, CosmosError)> {
    if let Some(key) = key
        && !body.get_document("query").is_ok_and(|q| names_key(q, key))
    {
        return Some((Rule::ShardKey, CosmosError::untargeted_filter()));
    }
    body.get_document("update")
        .ok()
        .filter(|u| is_replacement(u))
        .and_then(|u| too_large(u, max, activity_id))
}

/// A whole document rather than update operators (`$set`, …).
fn is_replacement(u: &RawDocument) -> bool {
    first_key(u).is_some_and(|k| !k.starts_with('$'))
}

/// Whether `doc` has a value at the dotted `path`.
fn has_path(doc: &RawDocument, path: &str) -> bool {
    let mut current = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Ok(Some(value)) if parts.peek().is_none() => {
                return !matches!(value, RawBsonRef::Undefined);
            }
            Ok(Some(RawBsonRef::Document(inner))) => current = inner,
            _ => return false,
        }
    }
    false
}

/// Whether a filter pins the shard key: `{key: value}`, `{key: {$eq: v}}` or
/// `{key: {$in: [..]}}`, at the top level or inside a top-level `$and`.
fn names_key(filter: &RawDocument, key: &str) -> bool {
    filter.into_iter().flatten().any(|(name, value)| {
        if name == key {
            return pins(value);
        }
        name == "$and"
            && value.as_array().is_some_and(|clauses| {
                clauses
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_document())
                    .any(|c| names_key(c, key))
            })
    })
}

/// A value, `{$eq: v}` or `{$in: [...]}` — not a range, `$exists` or another operator.
fn pins(value: RawBsonRef<'_>) -> bool {
    let Some(condition) = value.as_document() else {
        return true;
    };
    match first_key(condition) {
        Some("$eq") => true,
        Some("$in") => condition.get_array("$in").is_ok(),
        Some(other) => !other.starts_with('$'),
        None => true,
    }
}

/// What the client is told once `mongod` answered the command sent in a custom command's
/// place.
#[derive(Debug)]
pub(crate) enum Translate {
    /// `CreateCollection` or `shardCollection`: `create` was sent; on success the namespace
    /// is sharded on `key` (if any).
    Created {
        namespace: String,
        key: Option<String>,
        /// `shardCollection` answers MongoDB's shape, `CreateCollection` RU's default one.
        admin: bool,
    },
    /// `GetCollection`: `listCollections` was sent.
    Described {
        database: String,
        collection: String,
    },
}

impl Translate {
    /// The command to send upstream in place of `body`, and how to answer, when `body` is a
    /// custom command the proxy implements.
    pub(crate) fn of(body: &RawDocument) -> Option<(Document, Self)> {
        let db = body.get_str("$db").ok()?;
        let (command, translate) = match first_key(body)? {
            "customAction" => {
                let collection = body.get_str("collection").ok()?;
                match body.get_str("customAction").ok()? {
                    "CreateCollection" => (
                        doc! { "create": collection },
                        Self::Created {
                            namespace: format!("{db}.{collection}"),
                            key: body.get_str("shardKey").ok().map(str::to_owned),
                            admin: false,
                        },
                    ),
                    "GetCollection" => (
                        doc! {
                            "listCollections": 1,
                            "filter": { "name": collection },
                            "nameOnly": true,
                        },
                        Self::Described {
                            database: db.to_owned(),
                            collection: collection.to_owned(),
                        },
                    ),
                    _ => return None,
                }
            }
            "shardCollection" | "shardcollection" => {
                let namespace = body
                    .get_str("shardCollection")
                    .or_else(|_| body.get_str("shardcollection"))
                    .ok()?;
                let (target_db, collection) = namespace.split_once('.')?;
                let key = body.get_document("key").ok().and_then(first_key)?;
                let mut command = doc! { "create": collection };
                command.insert("$db", target_db);
                (
                    command,
                    Self::Created {
                        namespace: namespace.to_owned(),
                        key: Some(key.to_owned()),
                        admin: true,
                    },
                )
            }
            _ => return None,
        };
        let mut command = command;
        // Session and cluster time go along; `$db` too, unless the command moved it.
        for (name, value) in body.into_iter().flatten() {
            if (name.starts_with('$') || name == "lsid")
                && !command.contains_key(name)
                && let Ok(value) = Bson::try_from(value)
            {
                command.insert(name, value);
            }
        }
        Some((command, translate))
    }

    /// The answer to the client, given `mongod`'s reply to the command sent instead.
    pub(crate) fn reply(self, upstream: &RawDocument, shards: &Shards) -> Document {
        let ok = crate::cosmos::reply_is_ok(upstream);
        match self {
            Self::Created {
                namespace,
                key,
                admin,
            } => {
                if !ok {
                    return Document::try_from(upstream).unwrap_or_default();
                }
                if let Some(key) = &key {
                    shards.set(&namespace, key);
                    tracing::info!(%namespace, %key, "Created a sharded collection");
                }
                if admin {
                    doc! { "collectionsharded": namespace, "ok": 1.0 }
                } else {
                    doc! { "ok": 1.0 }
                }
            }
            Self::Described {
                database,
                collection,
            } => {
                let exists = upstream
                    .get_document("cursor")
                    .and_then(|c| c.get_array("firstBatch"))
                    .is_ok_and(|batch| batch.into_iter().next().is_some());
                if !ok {
                    return Document::try_from(upstream).unwrap_or_default();
                }
                if !exists {
                    return doc! {
                        "ok": 0.0,
                        "errmsg": format!("Collection {database}.{collection} not found"),
                        "code": NAMESPACE_NOT_FOUND,
                        "codeName": "NamespaceNotFound",
                    };
                }
                let mut answer = doc! { "database": &database, "collection": &collection };
                if let Some(key) = shards.key_of(&format!("{database}.{collection}")) {
                    answer.insert("shardKeyDefinition", doc! { key: "hashed" });
                }
                answer.insert("provisionedThroughput", PROVISIONED_THROUGHPUT);
                let max = shards.max_bytes().unwrap_or(MONGODB_MAX_DOCUMENT_BYTES);
                answer.insert("maxContentLength", i64::try_from(max).unwrap_or(i64::MAX));
                answer.insert("ok", 1.0);
                answer
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bson::{RawDocumentBuf, doc};

    use super::*;

    fn raw(d: &Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(d).unwrap()
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "tests read better with the sequence built in place"
    )]
    fn judge(shards: &Shards, body: &Document, sequence: Option<(&str, Vec<Document>)>) -> Verdict {
        let body = raw(body);
        let info = CommandInfo::inspect(&body);
        let docs: Vec<RawDocumentBuf> = sequence
            .as_ref()
            .map(|(_, d)| d.iter().map(raw).collect())
            .unwrap_or_default();
        let name = sequence.as_ref().map_or("", |(n, _)| *n);
        shards.judge(
            &info,
            &body,
            || {
                if name.is_empty() {
                    Vec::new()
                } else {
                    vec![(name, docs.iter().map(AsRef::as_ref).collect())]
                }
            },
            || "a-1".to_owned(),
        )
    }

    fn code(v: &Verdict) -> Option<i32> {
        v.refusal.as_ref().map(|(_, e)| e.code)
    }

    fn sharded() -> Shards {
        let shards = Shards::new(Some(RU_MAX_DOCUMENT_BYTES));
        shards.set("d.c", "tenant");
        shards
    }

    #[test]
    fn inserts_into_a_sharded_collection_need_the_shard_key_in_every_document() {
        let shards = sharded();
        let with = judge(
            &shards,
            &doc! { "insert": "c", "$db": "d" },
            Some(("documents", vec![doc! { "_id": 1, "tenant": "a" }])),
        );
        assert_eq!((with.sharded, code(&with)), (true, None));
        let without = judge(
            &shards,
            &doc! { "insert": "c", "$db": "d" },
            Some((
                "documents",
                vec![doc! { "_id": 1, "tenant": "a" }, doc! { "_id": 2 }],
            )),
        );
        assert_eq!(code(&without), Some(61));
        let (_, e) = without.refusal.unwrap();
        assert_eq!(e.errmsg, "document does not contain shard key");
        let in_body = judge(
            &shards,
            &doc! { "insert": "c", "documents": [{ "_id": 3 }], "$db": "d" },
            None,
        );
        assert_eq!(code(&in_body), Some(61), "documents in the body count too");
        let other = judge(
            &shards,
            &doc! { "insert": "other", "documents": [{ "_id": 3 }], "$db": "d" },
            None,
        );
        assert_eq!((other.sharded, code(&other)), (false, None));
    }

    #[test]
    fn a_nested_shard_key_is_looked_up_by_path() {
        let shards = Shards::new(None);
        shards.set("d.c", "a.b");
        let insert = |d: Document| {
            code(&judge(
                &shards,
                &doc! { "insert": "c", "documents": [d], "$db": "d" },
                None,
            ))
        };
        assert_eq!(insert(doc! { "a": { "b": 1 } }), None);
        assert_eq!(insert(doc! { "a": 1 }), Some(61));
        assert_eq!(insert(doc! { "b": 1 }), Some(61));
    }

    #[test]
    fn updates_deletes_and_find_and_modify_must_name_the_shard_key() {
        let shards = sharded();
        let update = |q: Document| {
            code(&judge(
                &shards,
                &doc! { "update": "c", "$db": "d" },
                Some((
                    "updates",
                    vec![doc! { "q": q, "u": { "$set": { "x": 1 } } }],
                )),
            ))
        };
        assert_eq!(update(doc! { "_id": 1, "tenant": "a" }), None);
        assert_eq!(update(doc! { "_id": 1, "tenant": { "$eq": "a" } }), None);
        assert_eq!(
            update(doc! { "_id": 1, "tenant": { "$in": ["a", "b"] } }),
            None
        );
        assert_eq!(
            update(doc! { "$and": [{ "tenant": "a" }, { "_id": 1 }] }),
            None
        );
        assert_eq!(update(doc! { "_id": 1 }), Some(61));
        assert_eq!(update(doc! { "tenant": { "$exists": true } }), Some(61));
        assert_eq!(update(doc! { "tenant": { "$gt": "a" } }), Some(61));

        let delete = |q: Document| {
            code(&judge(
                &shards,
                &doc! { "delete": "c", "deletes": [{ "q": q, "limit": 1 }], "$db": "d" },
                None,
            ))
        };
        assert_eq!(delete(doc! { "_id": 1, "tenant": "a" }), None);
        let refused = judge(
            &shards,
            &doc! { "delete": "c", "deletes": [{ "q": { "_id": 1 }, "limit": 1 }], "$db": "d" },
            None,
        );
        let (rule, e) = refused.refusal.unwrap();
        assert_eq!((rule, e.code), (Rule::ShardKey, 61));
        assert_eq!(e.errmsg, "query in command must target a single shard key");
        assert_eq!(
            e.reply("delete").get_f64("ok").unwrap(),
            0.0,
            "a command error"
        );

        let fam = |query: Document| {
            code(&judge(
                &shards,
                &doc! { "findAndModify": "c", "query": query, "update": { "$set": { "x": 1 } }, "$db": "d" },
                None,
            ))
        };
        assert_eq!(fam(doc! { "_id": 1, "tenant": "a" }), None);
        assert_eq!(fam(doc! { "_id": 1 }), Some(61));
    }

    #[test]
    fn reads_of_a_sharded_collection_pass_but_count_as_sharded() {
        let shards = sharded();
        let find = judge(
            &shards,
            &doc! { "find": "c", "filter": {}, "$db": "d" },
            None,
        );
        assert_eq!((find.sharded, code(&find)), (true, None));
        let index = judge(
            &shards,
            &doc! { "createIndexes": "c", "indexes": [], "$db": "d" },
            None,
        );
        assert!(!index.sharded, "DDL is not a data command");
    }

    #[test]
    fn documents_over_the_limit_are_refused_with_16_anywhere() {
        let shards = Shards::new(Some(1024));
        let big = doc! { "_id": 1, "pad": "x".repeat(2000) };
        let small = doc! { "_id": 2, "pad": "x" };
        let insert = judge(
            &shards,
            &doc! { "insert": "any", "$db": "d" },
            Some(("documents", vec![small, big.clone()])),
        );
        let (rule, e) = insert.refusal.unwrap();
        assert_eq!((rule, e.code), (Rule::Size, 16));
        assert!(e.errmsg.starts_with("Error=16, Details='Response status code does not indicate success: RequestEntityTooLarge (413)"), "{}", e.errmsg);
        let replace = judge(
            &shards,
            &doc! { "update": "any", "updates": [{ "q": { "_id": 1 }, "u": big.clone() }], "$db": "d" },
            None,
        );
        assert_eq!(code(&replace), Some(16));
        let operators = judge(
            &shards,
            &doc! { "update": "any", "updates": [{ "q": { "_id": 1 }, "u": { "$set": { "pad": "x".repeat(2000) } } }], "$db": "d" },
            None,
        );
        assert_eq!(
            code(&operators),
            None,
            "an update with operators is not measured"
        );
        let fam = judge(
            &shards,
            &doc! { "findAndModify": "any", "query": { "_id": 1 }, "update": big, "$db": "d" },
            None,
        );
        assert_eq!(code(&fam), Some(16));
        shards.set_max_bytes(None);
        let off = judge(
            &shards,
            &doc! { "insert": "any", "documents": [{ "pad": "x".repeat(2000) }], "$db": "d" },
            None,
        );
        assert_eq!(code(&off), None);
    }

    #[test]
    fn create_collection_sends_create_and_records_the_shard_key_on_success() {
        let shards = Shards::new(None);
        let body = raw(&doc! {
            "customAction": "CreateCollection", "collection": "c", "shardKey": "tenant",
            "offerThroughput": 11000, "$db": "d", "lsid": { "id": 1 },
        });
        let (command, translate) = Translate::of(&body).unwrap();
        assert_eq!(
            command,
            doc! { "create": "c", "$db": "d", "lsid": { "id": 1 } }
        );
        let refused = translate_reply(
            Translate::of(&body).unwrap().1,
            &doc! { "ok": 0.0, "code": 48, "codeName": "NamespaceExists", "errmsg": "exists" },
            &shards,
        );
        assert_eq!(
            refused.get_i32("code").unwrap(),
            48,
            "mongod's refusal is answered"
        );
        assert_eq!(shards.key_of("d.c"), None);
        let answer = translate_reply(translate, &doc! { "ok": 1.0 }, &shards);
        assert_eq!(answer, doc! { "ok": 1.0 });
        assert_eq!(shards.key_of("d.c").as_deref(), Some("tenant"));
    }

    #[test]
    fn shard_collection_creates_the_namespace_in_its_own_database() {
        let shards = Shards::new(None);
        let body =
            raw(&doc! { "shardCollection": "d.c", "key": { "tenant": "hashed" }, "$db": "admin" });
        let (command, translate) = Translate::of(&body).unwrap();
        assert_eq!(command, doc! { "create": "c", "$db": "d" });
        let answer = translate_reply(translate, &doc! { "ok": 1.0 }, &shards);
        assert_eq!(answer.get_str("collectionsharded").unwrap(), "d.c");
        assert_eq!(shards.key_of("d.c").as_deref(), Some("tenant"));
    }

    #[test]
    fn get_collection_answers_in_ru_shape() {
        let shards = sharded();
        let body = raw(&doc! { "customAction": "GetCollection", "collection": "c", "$db": "d" });
        let (command, translate) = Translate::of(&body).unwrap();
        assert_eq!(command.get_i32("listCollections").unwrap(), 1);
        let listed = doc! { "cursor": { "id": 0_i64, "ns": "d.$cmd.listCollections", "firstBatch": [{ "name": "c", "type": "collection" }] }, "ok": 1.0 };
        let answer = translate_reply(translate, &listed, &shards);
        assert_eq!(answer.get_str("database").unwrap(), "d");
        assert_eq!(answer.get_str("collection").unwrap(), "c");
        assert_eq!(
            answer.get_document("shardKeyDefinition").unwrap(),
            &doc! { "tenant": "hashed" }
        );
        assert_eq!(answer.get_i64("maxContentLength").unwrap(), 2_097_152);
        assert_eq!(answer.get_f64("ok").unwrap(), 1.0);

        let unsharded =
            raw(&doc! { "customAction": "GetCollection", "collection": "u", "$db": "d" });
        let answer = translate_reply(Translate::of(&unsharded).unwrap().1, &listed, &shards);
        assert!(!answer.contains_key("shardKeyDefinition"));

        let empty = doc! { "cursor": { "id": 0_i64, "ns": "d.$cmd.listCollections", "firstBatch": [] }, "ok": 1.0 };
        let missing = translate_reply(Translate::of(&unsharded).unwrap().1, &empty, &shards);
        assert_eq!(missing.get_i32("code").unwrap(), 26);
    }

    #[test]
    fn other_custom_actions_and_commands_are_not_translated() {
        for body in [
            doc! { "customAction": "GetChangeStreamTokens", "collection": "c", "$db": "d" },
            doc! { "insert": "c", "$db": "d" },
        ] {
            assert!(Translate::of(&raw(&body)).is_none(), "{body}");
        }
    }

    #[test]
    fn drops_forget_the_shard_key() {
        let shards = sharded();
        shards.set("e.c", "k");
        let _ = judge(&shards, &doc! { "drop": "c", "$db": "d" }, None);
        assert_eq!(shards.key_of("d.c"), None);
        let _ = judge(&shards, &doc! { "dropDatabase": 1, "$db": "e" }, None);
        assert_eq!(shards.key_of("e.c"), None);
    }

    #[test]
    fn a_transaction_touching_a_sharded_collection_is_refused_and_aborted_upstream() {
        use crate::state::{Decision, Shared};
        let state = Shared::new(
            crate::ProxyConfig {
                seed: Some(7),
                ..crate::ProxyConfig::default()
            },
            "127.0.0.1:1".to_owned(),
        );
        state.shards.set("d.c", "tenant");
        let txn = |name: &str, coll: &str, number: i64, start: bool| {
            let mut body = doc! { name: coll };
            body.insert(
                "lsid",
                doc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![3; 16] } },
            );
            body.insert("txnNumber", number);
            if start {
                body.insert("startTransaction", true);
            }
            body.insert("autocommit", false);
            body.insert("$db", "d");
            let body = raw(&body);
            let mut info = CommandInfo::inspect(&body);
            info.verdict = state.shards.judge(&info, &body, Vec::new, String::new);
            state.decide(&info)
        };
        // First command on the sharded collection: nothing reached mongod, nothing to abort.
        let Decision::Refuse { error, abort } = txn("find", "c", 1, true) else {
            panic!("forwarded");
        };
        assert_eq!((error.code, abort), (SHARDED_TRANSACTION, None));
        assert!(matches!(
            txn("commitTransaction", "1", 1, false),
            Decision::Refuse { .. }
        ));
        // After a command on an unsharded collection reached mongod: aborted there.
        assert!(matches!(
            txn("insert", "u", 2, true),
            Decision::Forward { .. }
        ));
        let Decision::Refuse { error, abort } = txn("insert", "c", 2, false) else {
            panic!("forwarded");
        };
        assert_eq!(error.code, SHARDED_TRANSACTION);
        assert_eq!(abort.map(|(_, n)| n), Some(2));
        assert_eq!(state.stats().sharded_transaction_refusals, 2);
        let log = state.transactions();
        assert!(
            log.iter()
                .all(|t| t.outcome == crate::TxnOutcome::ShardedRefused),
            "{log:?}"
        );
        // Outside a transaction the same collection takes writes naming the shard key.
        let plain =
            raw(&doc! { "insert": "c", "documents": [{ "_id": 1, "tenant": "a" }], "$db": "d" });
        let mut info = CommandInfo::inspect(&plain);
        info.verdict = state.shards.judge(&info, &plain, Vec::new, String::new);
        assert!(matches!(state.decide(&info), Decision::Forward { .. }));
        let keyless = raw(&doc! { "insert": "c", "documents": [{ "_id": 2 }], "$db": "d" });
        let mut info = CommandInfo::inspect(&keyless);
        info.verdict = state.shards.judge(&info, &keyless, Vec::new, String::new);
        assert!(matches!(
            state.decide(&info),
            Decision::Refuse { abort: None, .. }
        ));
        assert_eq!(state.stats().shard_key_refusals, 1);
    }

    fn translate_reply(t: Translate, upstream: &Document, shards: &Shards) -> Document {
        t.reply(&raw(upstream), shards)
    }
}

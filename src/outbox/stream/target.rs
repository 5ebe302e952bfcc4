//! Whose change-stream rules apply (`OUTBOX_CHANGE_STREAM_TARGET`): the pipeline each target
//! needs, what each cannot deliver, and how `auto` finds out.
//!
//! `auto` decides once per process: a `*.mongo.cosmos.azure.com` host is Cosmos DB for MongoDB
//! RU and a `*.mongocluster.cosmos.azure.com` host Azure DocumentDB; otherwise the server is
//! asked `{customAction: "GetCollection", collection}`, a command only Cosmos DB for MongoDB RU
//! has (Microsoft Learn, "MongoDB extension commands"; `mongod` answers `CommandNotFound`,
//! DocumentDB `CommandNotSupported`, dsync#330): a server that answers it is RU. Anything else
//! is taken for MongoDB; Azure DocumentDB behind another name must be set explicitly.

use mongodb::bson::Document;

use crate::config::{MongoSettings, StreamTarget};
use crate::db::{Db, DbError, RuCollection, classify, get_collection};

/// The stages after `$changeStream` that `target`'s rules require (only Cosmos DB RU has any:
/// [`crate::db::ru_change_stream_pipeline`]; every target's stream is opened with
/// `fullDocument: "updateLookup"`).
#[must_use]
pub fn pipeline(target: StreamTarget) -> Vec<Document> {
    match target {
        StreamTarget::CosmosRu => crate::db::ru_change_stream_pipeline(),
        StreamTarget::MongoDb | StreamTarget::DocumentDb => Vec::new(),
    }
}

/// What the target cannot deliver, and what to do about it: said once at start-up.
#[must_use]
pub fn limits(target: StreamTarget) -> &'static [&'static str] {
    match target {
        StreamTarget::MongoDb => &[],
        StreamTarget::DocumentDb => &[
            "no update description and no pre-images on Azure DocumentDB: update events carry the document as looked up after the change",
            "Azure DocumentDB keeps 400 MB of change-stream history: a relay stopped for longer loses its position (then `handler outbox resync`)",
            "Azure DocumentDB cursors must be reopened after a failover: the relay reopens them from the checkpoint",
        ],
        StreamTarget::CosmosRu => &[
            "no delete events on Cosmos DB for MongoDB RU: use a soft-delete flag and a TTL, so a deletion arrives as an update",
            "no operationType on Cosmos DB for MongoDB RU: an insert cannot be told from an update or a replace, so every change is published as one <prefix>.DocumentChanged event",
            "order only per shard key on Cosmos DB for MongoDB RU: changes to documents of different shard keys may arrive in any order",
            "Cosmos DB for MongoDB RU may coalesce rapid updates of a document into one change (latest-version change feed): an event announces the document's state, not every write",
        ],
    }
}

/// Decides the target: the setting, else the host name, else the server.
///
/// # Errors
/// When the server cannot be asked (unreachable, throttled): the caller tries again later.
pub async fn resolve(db: &Db) -> Result<StreamTarget, DbError> {
    let settings = db.settings();
    let (target, why) = match settings.stream_target {
        Some(target) => (target, "set by OUTBOX_CHANGE_STREAM_TARGET"),
        None => match host_target(settings) {
            Some(target) => (
                target,
                "OUTBOX_CHANGE_STREAM_TARGET=auto: the host name says so",
            ),
            None => probe(db).await?,
        },
    };
    tracing::info!(
        change_stream.target = target.as_str(),
        "Change stream target: {} ({why})",
        target.as_str()
    );
    for limit in limits(target) {
        tracing::info!(
            change_stream.target = target.as_str(),
            "Change stream limit: {limit}"
        );
    }
    Ok(target)
}

fn host_target(settings: &MongoSettings) -> Option<StreamTarget> {
    use secrecy::ExposeSecret as _;
    StreamTarget::of_uri(settings.uri.expose_secret())
}

/// Asks the server `GetCollection`.
async fn probe(db: &Db) -> Result<(StreamTarget, &'static str), DbError> {
    let database = db.database().await?;
    interpret(get_collection(&database, &db.settings().collection).await)
}

fn interpret(
    asked: mongodb::error::Result<RuCollection>,
) -> Result<(StreamTarget, &'static str), DbError> {
    match asked {
        Ok(RuCollection::Described(_)) => Ok((
            StreamTarget::CosmosRu,
            "OUTBOX_CHANGE_STREAM_TARGET=auto: the server answers Cosmos DB RU's customAction GetCollection",
        )),
        Ok(RuCollection::Missing) => Ok((
            StreamTarget::CosmosRu,
            "OUTBOX_CHANGE_STREAM_TARGET=auto: the server knows Cosmos DB RU's customAction GetCollection (the collection does not exist yet)",
        )),
        Ok(RuCollection::NotRu) => Ok((
            StreamTarget::MongoDb,
            "OUTBOX_CHANGE_STREAM_TARGET=auto: neither the host name nor the server says Cosmos DB; set documentdb for Azure DocumentDB behind another name",
        )),
        Err(e) => {
            let e = classify(e);
            if e.is_retryable() {
                return Err(e);
            }
            tracing::debug!(error = %crate::telemetry::chain(&e), "The Cosmos DB probe failed");
            Ok((
                StreamTarget::MongoDb,
                "OUTBOX_CHANGE_STREAM_TARGET=auto: the server refused Cosmos DB RU's customAction GetCollection",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::read_get_collection;
    use mongodb::bson::doc;

    #[test]
    fn only_cosmos_ru_gets_the_mandatory_pipeline_and_mongodb_has_no_limits() {
        let ru = pipeline(StreamTarget::CosmosRu);
        assert_eq!(ru.len(), 2);
        assert_eq!(
            ru[0],
            doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace"] } } }
        );
        assert_eq!(
            ru[1],
            doc! { "$project": { "_id": 1, "fullDocument": 1, "ns": 1, "documentKey": 1 } }
        );
        assert!(pipeline(StreamTarget::MongoDb).is_empty());
        assert!(pipeline(StreamTarget::DocumentDb).is_empty());
        assert!(limits(StreamTarget::MongoDb).is_empty());
        assert!(limits(StreamTarget::CosmosRu)[0].contains("soft-delete flag and a TTL"));
        assert!(limits(StreamTarget::DocumentDb)[0].contains("pre-images"));
    }

    #[test]
    fn an_answer_to_get_collection_means_cosmos_ru_and_no_such_command_mongodb() {
        let ok = interpret(read_get_collection(Ok(doc! { "ok": 1 }))).unwrap();
        assert_eq!(ok.0, StreamTarget::CosmosRu);
        let refused = |code: i32, name: &str| {
            let command: mongodb::error::CommandError = mongodb::bson::from_document(doc! {
                "code": code, "codeName": name, "errmsg": "refused",
            })
            .unwrap();
            interpret(read_get_collection(Err(mongodb::error::Error::from(
                mongodb::error::ErrorKind::Command(command),
            ))))
            .unwrap()
            .0
        };
        assert_eq!(refused(59, "CommandNotFound"), StreamTarget::MongoDb);
        assert_eq!(refused(115, "CommandNotSupported"), StreamTarget::MongoDb);
        // RU's answer for a collection that does not exist yet.
        assert_eq!(refused(26, "NamespaceNotFound"), StreamTarget::CosmosRu);
    }
}

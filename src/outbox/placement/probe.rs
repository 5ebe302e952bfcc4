//! `OUTBOX_PLACEMENT=auto`: choosing the placement by looking at the server.
//!
//! A collection sharded on Cosmos DB for MongoDB RU (see `sharding.rs`) gets `embedded`: no
//! multi-document transaction may touch it there. A Cosmos DB for MongoDB RU host
//! (`*.mongo.cosmos.azure.com`) gets `colocated` at once. Otherwise a two-collection
//! transaction is tried and always aborted: a server that accepts it gets `separate`; one that
//! refuses it (Cosmos DB RU behind another name, or anything else that allows transactions in
//! one collection only) is tried with a one-collection transaction, also aborted, and gets
//! `colocated`, or `embedded` when it refuses that too (no transactions at all, e.g. a
//! standalone `mongod`).

use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use secrecy::ExposeSecret;

use super::Placement;
use super::sharding::Sharding;
use crate::config::MongoSettings;
use crate::db::{self, Db, DbError, classify, error_code, is_transaction_not_active};

/// Chooses the placement for `auto`, given how the documents' collection is sharded.
///
/// # Errors
/// When the database cannot be reached, or the probe failed transiently.
pub(super) async fn choose(db: &Db, sharding: &Sharding) -> Result<Placement, DbError> {
    let settings = db.settings();
    if let Sharding::CosmosRu { key } = sharding {
        tracing::info!(
            placement = "embedded",
            shard_key = %key,
            "OUTBOX_PLACEMENT=auto chose embedded: the collection is sharded on Cosmos DB for MongoDB RU, where multi-document transactions are unavailable"
        );
        return Ok(Placement::Embedded);
    }
    if is_cosmos_ru_host(settings) {
        tracing::info!(
            placement = "colocated",
            "OUTBOX_PLACEMENT=auto chose colocated: the host is a Cosmos DB for MongoDB RU account, which allows transactions inside one collection only"
        );
        return Ok(Placement::Colocated);
    }
    let client = db.client().await?;
    let database = client.database(&settings.database);
    for name in [&settings.collection, &settings.outbox_collection] {
        db::create_collection(&database, name).await?;
    }
    let both = [
        settings.collection.as_str(),
        settings.outbox_collection.as_str(),
    ];
    let refused = match verdict(try_transaction(client, &database, &both).await)? {
        Probe::Accepted => {
            tracing::info!(
                placement = "separate",
                "OUTBOX_PLACEMENT=auto chose separate: the server allows a transaction across the documents' and the outbox collections"
            );
            return Ok(Placement::Separate);
        }
        Probe::Inconclusive => {
            tracing::warn!(
                placement = "separate",
                "OUTBOX_PLACEMENT=auto could not probe transactions (a document validator refused the probe); chose separate — set OUTBOX_PLACEMENT explicitly"
            );
            return Ok(Placement::Separate);
        }
        Probe::Refused(reason) => reason,
    };
    let one = [settings.collection.as_str()];
    match verdict(try_transaction(client, &database, &one).await)? {
        Probe::Refused(reason) => {
            tracing::info!(
                placement = "embedded",
                error = %reason,
                "OUTBOX_PLACEMENT=auto chose embedded: the server refused even a transaction inside one collection (no multi-document transactions), and embedded needs none"
            );
            Ok(Placement::Embedded)
        }
        Probe::Accepted | Probe::Inconclusive => {
            tracing::info!(
                placement = "colocated",
                error = %refused,
                "OUTBOX_PLACEMENT=auto chose colocated: the server refused a transaction across two collections"
            );
            Ok(Placement::Colocated)
        }
    }
}

/// Inserts one probe document into each of `collections` inside one transaction, then
/// aborts it: the probe is never committed.
async fn try_transaction(
    client: &Client,
    database: &Database,
    collections: &[&str],
) -> mongodb::error::Result<()> {
    let probe_id = doc! { "outbox_relay_placement_probe": uuid::Uuid::new_v4().to_string() };
    let mut session = client.start_session().await?;
    session.start_transaction().await?;
    let outcome = async {
        for name in collections {
            database
                .collection::<Document>(name)
                .insert_one(doc! { "_id": probe_id.clone() })
                .session(&mut session)
                .await?;
        }
        Ok(())
    }
    .await;
    // Never commit the probe.
    let _ = session.abort_transaction().await;
    outcome
}

/// What one probe said.
enum Probe {
    /// The transaction was accepted (and aborted).
    Accepted,
    /// A document validator refused the probe document: that says nothing about transactions.
    Inconclusive,
    /// The server refused the transaction; why, in words.
    Refused(String),
}

/// What a probe's outcome says about the server.
fn verdict(outcome: mongodb::error::Result<()>) -> Result<Probe, DbError> {
    match outcome {
        Ok(()) => Ok(Probe::Accepted),
        Err(e) if error_code(&e) == Some(121) => Ok(Probe::Inconclusive),
        Err(e) => {
            // Cosmos DB RU refuses the second collection with "Transaction isn't active": that
            // is the answer, not a transient failure.
            let refused = is_transaction_not_active(&e);
            let e = classify(e);
            if e.is_retryable() && !refused {
                return Err(e);
            }
            Ok(Probe::Refused(crate::telemetry::chain(&e)))
        }
    }
}

pub(super) fn is_cosmos_ru_host(settings: &MongoSettings) -> bool {
    let Ok(cs) = mongodb::options::ConnectionString::parse(settings.uri.expose_secret()) else {
        return false;
    };
    let hosts: Vec<String> = match cs.host_info {
        mongodb::options::HostInfo::HostIdentifiers(hosts) => {
            hosts.iter().map(ToString::to_string).collect()
        }
        mongodb::options::HostInfo::DnsRecord(name) => vec![name],
        _ => Vec::new(),
    };
    hosts.iter().any(|h| {
        let host = h.split(':').next().unwrap_or_default().to_ascii_lowercase();
        host.ends_with(".mongo.cosmos.azure.com")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn settings(uri: &str) -> MongoSettings {
        let map = [("MONGODB_URI".to_owned(), uri.to_owned())].into();
        MongoSettings::from_env(&Env::from_map(map)).unwrap()
    }

    #[test]
    fn cosmos_ru_hosts_are_recognised_by_name() {
        for uri in [
            "mongodb://acct:pw@acct.mongo.cosmos.azure.com:10255/?ssl=true&replicaSet=globaldb",
            "mongodb+srv://acct.MONGO.cosmos.azure.com/",
        ] {
            assert!(is_cosmos_ru_host(&settings(uri)), "{uri}");
        }
        for uri in [
            "mongodb://127.0.0.1:27017/?replicaSet=rs0",
            "mongodb+srv://acct.mongocluster.cosmos.azure.com/",
        ] {
            assert!(!is_cosmos_ru_host(&settings(uri)), "{uri}");
        }
    }
}

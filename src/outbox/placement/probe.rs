//! `OUTBOX_PLACEMENT=auto`: choosing the placement by looking at the server.
//!
//! A Cosmos DB for MongoDB RU host (`*.mongo.cosmos.azure.com`) gets `colocated` at once.
//! Otherwise a two-collection transaction is tried and always aborted: a server that refuses
//! it (Cosmos DB RU behind another name, or anything else that allows transactions in one
//! collection only) gets `colocated`, one that accepts it gets `separate`.

use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use secrecy::ExposeSecret;

use super::Placement;
use crate::config::MongoSettings;
use crate::db::{self, Db, DbError, classify, error_code, is_transaction_not_active};

/// Chooses the placement for `auto`.
///
/// # Errors
/// When the database cannot be reached, or the probe failed transiently.
pub(super) async fn choose(db: &Db) -> Result<Placement, DbError> {
    let settings = db.settings();
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
    let outcome = try_two_collections(client, &database, settings).await;
    interpret(outcome)
}

/// Inserts one probe document into each collection inside one transaction, then aborts it:
/// the probe is never committed.
async fn try_two_collections(
    client: &Client,
    database: &Database,
    settings: &MongoSettings,
) -> mongodb::error::Result<()> {
    let probe_id = doc! { "outbox_relay_placement_probe": uuid::Uuid::new_v4().to_string() };
    let mut session = client.start_session().await?;
    session.start_transaction().await?;
    let outcome = async {
        for name in [&settings.collection, &settings.outbox_collection] {
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

/// What the probe's outcome says about the server.
fn interpret(outcome: mongodb::error::Result<()>) -> Result<Placement, DbError> {
    match outcome {
        Ok(()) => {
            tracing::info!(
                placement = "separate",
                "OUTBOX_PLACEMENT=auto chose separate: the server allows a transaction across the documents' and the outbox collections"
            );
            Ok(Placement::Separate)
        }
        // A document validator on either collection refused the probe document: that says
        // nothing about transactions.
        Err(e) if error_code(&e) == Some(121) => {
            tracing::warn!(
                placement = "separate",
                "OUTBOX_PLACEMENT=auto could not probe transactions (a document validator refused the probe); chose separate — set OUTBOX_PLACEMENT explicitly"
            );
            Ok(Placement::Separate)
        }
        Err(e) => {
            // Cosmos DB RU refuses the second collection with "Transaction isn't active": that
            // is the answer, not a transient failure.
            let refused = is_transaction_not_active(&e);
            let e = classify(e);
            if e.is_retryable() && !refused {
                return Err(e);
            }
            tracing::info!(
                placement = "colocated",
                error = %crate::telemetry::chain(&e),
                "OUTBOX_PLACEMENT=auto chose colocated: the server refused a transaction across two collections"
            );
            Ok(Placement::Colocated)
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

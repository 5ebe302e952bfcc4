//! The database checks: connection and authentication, transactions and the placement the
//! server allows, the claim index (present and used), TTL, change streams, clock skew.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::error::ErrorKind;
use secrecy::ExposeSecret;

use super::{Check, human};
use crate::config::{MongoSettings, Settings};
use crate::db::{Db, DbError};
use crate::outbox::Placement;
use crate::outbox::idempotency::EXPIRY_INDEX;
use crate::outbox::placement;
use crate::outbox::store::{
    CLAIM_INDEX, ClaimPlan, IndexInfo, OutboxStore, RETENTION_INDEX, SUBJECT_INDEX,
};

/// Skew above which leases and backoffs computed by different machines disagree noticeably.
const SKEW_WARN: Duration = Duration::from_secs(2);

/// What `hello` told us.
struct Hello {
    set_name: Option<String>,
    mongos: bool,
    /// The server's clock, and ours at the middle of the round trip.
    server_time: Option<DateTime<Utc>>,
    local_time: DateTime<Utc>,
    round_trip: Duration,
}

/// Runs the database checks in order; after a failure that the later ones depend on, they are
/// reported as skipped.
pub(super) async fn checks(settings: &Settings) -> Vec<Check> {
    let mongo = &settings.mongodb;
    let db = Db::new(mongo.clone());
    let hello = match connect(&db).await {
        Ok(hello) => hello,
        Err(check) => return vec![*check, skipped_rest()],
    };
    let mut out = vec![Check::pass(
        "database.connection",
        "database connection",
        format!(
            "reached {} and authenticated (round trip {} ms)",
            hosts(mongo),
            hello.round_trip.as_millis()
        ),
    )];
    out.push(transactions(&hello));
    let placement = match placement_check(&db, mongo).await {
        Ok((check, placement)) => {
            out.push(check);
            placement
        }
        Err(check) => {
            out.push(*check);
            return out;
        }
    };
    let database = match db.database().await {
        Ok(d) => d,
        Err(e) => {
            out.push(unexpected("database.indexes", "indexes", &e));
            return out;
        }
    };
    let collection = placement::store_for(placement, &database, mongo)
        .entries_collection()
        .to_owned();
    let store = OutboxStore::new(&database, &collection);
    out.extend(index_checks(&store, &collection, settings).await);
    out.push(change_streams(&store, settings).await);
    out.push(clock(&hello, settings));
    out
}

fn skipped_rest() -> Check {
    Check::skip(
        "database.rest",
        "other database checks",
        "skipped: the database cannot be reached",
    )
}

/// Hosts of the connection string, without credentials or options.
fn hosts(mongo: &MongoSettings) -> String {
    match mongodb::options::ConnectionString::parse(mongo.uri.expose_secret()) {
        Ok(cs) => match cs.host_info {
            mongodb::options::HostInfo::HostIdentifiers(hosts) => hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            mongodb::options::HostInfo::DnsRecord(name) => format!("{name} (SRV)"),
            _ => "the configured hosts".to_owned(),
        },
        Err(_) => "the configured hosts".to_owned(),
    }
}

/// Connects and runs `hello`: reachability and authentication in one round trip (the driver
/// authenticates the connection before the command).
async fn connect(db: &Db) -> Result<Hello, Box<Check>> {
    const ID: &str = "database.connection";
    const TITLE: &str = "database connection";
    let where_ = hosts(db.settings());
    let database = db.database().await.map_err(|e| {
        Box::new(Check::fail(
            ID,
            TITLE,
            format!("cannot resolve the connection string for {where_}: {}", chain(&e)),
            "check MONGODB_URI: for mongodb+srv:// the SRV and TXT records must resolve from this machine",
        ))
    })?;
    let started = Instant::now();
    let answer = database.run_command(doc! { "hello": 1 }).await;
    let round_trip = started.elapsed();
    let local_time = Utc::now() - round_trip / 2;
    let answer = answer.map_err(|e| Box::new(connection_failure(&where_, &e)))?;
    Ok(Hello {
        set_name: answer.get_str("setName").ok().map(str::to_owned),
        mongos: answer.get_str("msg").ok() == Some("isdbgrid"),
        server_time: answer
            .get_datetime("localTime")
            .ok()
            .map(|t| DateTime::<Utc>::from(t.to_system_time())),
        local_time,
        round_trip,
    })
}

fn connection_failure(where_: &str, e: &mongodb::error::Error) -> Check {
    const ID: &str = "database.connection";
    const TITLE: &str = "database connection";
    let authentication =
        matches!(*e.kind, ErrorKind::Authentication { .. }) || crate::db::error_code(e) == Some(18);
    let selection = matches!(*e.kind, ErrorKind::ServerSelection { .. });
    let message = crate::telemetry::chain(e);
    if authentication {
        Check::fail(
            ID,
            TITLE,
            format!("{where_} refused the credentials: {message}"),
            "check the user name, password and authSource in MONGODB_URI (for Cosmos DB: the account's connection string from the portal)",
        )
    } else if selection {
        Check::fail(
            ID,
            TITLE,
            format!("cannot reach {where_}: {message}"),
            "check the hosts and port in MONGODB_URI, that the server is running, and that firewalls / network rules allow this machine (tls=true for Cosmos DB)",
        )
    } else {
        Check::fail(
            ID,
            TITLE,
            format!("{where_} answered with an error: {message}"),
            "check MONGODB_URI and that the user may run commands on MONGODB_DATABASE",
        )
    }
}

fn transactions(hello: &Hello) -> Check {
    const ID: &str = "database.transactions";
    const TITLE: &str = "transactions";
    match (&hello.set_name, hello.mongos) {
        (Some(name), _) => Check::pass(
            ID,
            TITLE,
            format!("replica set {name}: multi-document transactions are available"),
        ),
        (None, true) => Check::pass(
            ID,
            TITLE,
            "a sharded cluster (mongos): transactions are available",
        ),
        (None, false) => Check::fail(
            ID,
            TITLE,
            "a standalone server: it has no transactions, so no document can be written with its event",
            "run MongoDB as a replica set (a single node is enough: mongod --replSet rs0, then rs.initiate()) and add replicaSet=<name> to MONGODB_URI",
        ),
    }
}

/// The placement the server allows (and how the collection is sharded) against the
/// configured one; the placement code decides, the check only reports.
async fn placement_check(db: &Db, mongo: &MongoSettings) -> Result<(Check, Placement), Box<Check>> {
    const ID: &str = "database.placement";
    const TITLE: &str = "placement";
    let report = placement::report(db)
        .await
        .map_err(|e| Box::new(unexpected(ID, TITLE, &e)))?;
    if let Some(refusal) = &report.refusal {
        let detail = format!(
            "{}; the server allows {}",
            refusal.problem,
            report.allowed.as_str()
        );
        return Err(Box::new(Check::fail(
            ID,
            TITLE,
            detail,
            refusal.fix.clone(),
        )));
    }
    Ok((
        Check::pass(ID, TITLE, report.summary(mongo.placement)),
        report.configured,
    ))
}

/// The claim index (and the subject index under subject ordering), the claim query's plan, and
/// the TTL indexes.
async fn index_checks(store: &OutboxStore, collection: &str, settings: &Settings) -> Vec<Check> {
    const ID: &str = "database.indexes";
    const TITLE: &str = "indexes";
    let indexes = match store.indexes().await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return vec![Check::warn(
                ID,
                TITLE,
                format!("the collection {collection} does not exist yet"),
                "start the handler (or run `handler outbox status`) once: it creates the collection and its indexes",
            )];
        }
        Err(e) => return vec![unexpected(ID, TITLE, &e)],
    };
    let has = |name: &str| indexes.iter().any(|i| i.name == name);
    let mut missing = vec![];
    if !has(CLAIM_INDEX) {
        missing.push(CLAIM_INDEX);
    }
    if settings.mongodb.ordered_by_subject && !has(SUBJECT_INDEX) {
        missing.push(SUBJECT_INDEX);
    }
    let mut out = vec![if missing.is_empty() {
        Check::pass(
            ID,
            TITLE,
            format!(
                "{collection} has {CLAIM_INDEX}{}",
                if settings.mongodb.ordered_by_subject {
                    " and outbox_subject"
                } else {
                    ""
                }
            ),
        )
    } else {
        Check::fail(
            ID,
            TITLE,
            format!(
                "{collection} lacks the index {}: the claim query scans the collection (Cosmos DB refuses it)",
                missing.join(" and ")
            ),
            "start the handler or run `handler outbox status` once: they create the missing indexes (the user needs the createIndex privilege); the claim index is createIndex({\"_outbox.status\": 1, \"_outbox.due_at\": 1}, {name: \"outbox_claim\"})",
        )
    }];
    out.push(claim_plan(store, settings).await);
    out.push(ttl(&indexes, settings));
    out
}

async fn claim_plan(store: &OutboxStore, settings: &Settings) -> Check {
    const ID: &str = "database.claim_plan";
    const TITLE: &str = "claim query plan";
    match store
        .explain_claim(Utc::now(), settings.relay.batch_size.get())
        .await
    {
        Ok(ClaimPlan::Indexed(names)) if names.iter().any(|n| n == CLAIM_INDEX) => Check::pass(
            ID,
            TITLE,
            format!("the server's explain shows the claim query using {CLAIM_INDEX}"),
        ),
        Ok(ClaimPlan::Indexed(names)) => Check::warn(
            ID,
            TITLE,
            format!(
                "the claim query uses {} rather than {CLAIM_INDEX}",
                names.join(", ")
            ),
            "drop indexes that lead with _outbox.status other than outbox_claim, or create outbox_claim",
        ),
        Ok(ClaimPlan::Scan(stage)) => Check::fail(
            ID,
            TITLE,
            format!(
                "the claim query's plan has a {stage} stage: it reads the whole outbox on every claim"
            ),
            "create the claim index (start the handler or run `handler outbox status` once)",
        ),
        Ok(ClaimPlan::Unknown) => Check::pass(
            ID,
            TITLE,
            "the server's explain output has no plan this can read (Cosmos DB RU); the index check above stands",
        ),
        Err(e) => Check::warn(
            ID,
            TITLE,
            format!("explain failed: {}", chain(&e)),
            "grant the user the find privilege on the outbox collection",
        ),
    }
}

fn ttl(indexes: &[IndexInfo], settings: &Settings) -> Check {
    const ID: &str = "database.ttl";
    const TITLE: &str = "TTL expiry";
    let ttl_of = |name: &str| {
        indexes
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.expire_after_secs)
    };
    let retention = i64::try_from(settings.mongodb.retention.as_secs()).unwrap_or(i64::MAX);
    match (ttl_of(RETENTION_INDEX), ttl_of(EXPIRY_INDEX)) {
        (Some(0), Some(_)) if retention == 0 => Check::pass(
            ID,
            TITLE,
            "published entries are deleted once published (OUTBOX_RETENTION_HOURS=0; the TTL index removes any left from before); a TTL index removes expired idempotency records",
        ),
        (Some(secs), Some(_)) if secs == retention => Check::pass(
            ID,
            TITLE,
            format!(
                "TTL indexes remove published entries after {secs} s and expired idempotency records"
            ),
        ),
        (Some(secs), Some(_)) => Check::warn(
            ID,
            TITLE,
            format!(
                "the TTL index keeps published entries {secs} s, OUTBOX_RETENTION_HOURS says {retention} s"
            ),
            "start the handler once: it changes the TTL index to the setting",
        ),
        _ => Check::warn(
            ID,
            TITLE,
            "no TTL index on the outbox: the server refused it (Cosmos DB RU offers TTL on _ts only) or it was never created, so the relay deletes expired data itself after each run",
            "nothing to do on Cosmos DB RU; elsewhere start the handler once to create the TTL indexes",
        ),
    }
}

/// Change streams, which the tail uses to hear of new entries at once (without them it polls).
async fn change_streams(store: &OutboxStore, settings: &Settings) -> Check {
    const ID: &str = "database.change_streams";
    const TITLE: &str = "change streams";
    // Hook: the change-stream event source, once it exists, needs them too (a failure then).
    if !settings.relay.tail {
        return Check::skip(ID, TITLE, "not needed: OUTBOX_TAIL=off");
    }
    if !settings.relay.watch {
        return Check::skip(
            ID,
            TITLE,
            format!(
                "not used: OUTBOX_TAIL_WATCH=off, the tail looks every {}",
                human(settings.relay.poll)
            ),
        );
    }
    match store.watch_new_unheld().await {
        Ok(stream) => {
            drop(stream);
            Check::pass(
                ID,
                TITLE,
                "available: the tail hears of new entries at once",
            )
        }
        Err(e) => Check::warn(
            ID,
            TITLE,
            format!(
                "the server refused a change stream on the outbox ({}): the tail polls every {} instead",
                chain(&e),
                human(settings.relay.poll)
            ),
            "use a replica set with change streams enabled (Cosmos DB RU: enable them on the account), or lower OUTBOX_POLL_MS",
        ),
    }
}

fn clock(hello: &Hello, settings: &Settings) -> Check {
    const ID: &str = "database.clock";
    const TITLE: &str = "clock skew";
    let Some(server) = hello.server_time else {
        return Check::skip(ID, TITLE, "the server does not report its time");
    };
    let skew = (hello.local_time - server)
        .abs()
        .to_std()
        .unwrap_or_default();
    let margin = settings.relay.lease / crate::config::LEASE_MARGIN_DIVISOR;
    let detail = format!(
        "this machine's clock is {} ms {} the database's",
        skew.as_millis(),
        if hello.local_time >= server {
            "ahead of"
        } else {
            "behind"
        }
    );
    let fix = "synchronise the clocks (NTP / chrony); the relay computes leases and backoffs from the local clock";
    if skew >= margin {
        Check::fail(
            ID,
            TITLE,
            format!("{detail}: more than the lease margin ({})", human(margin)),
            fix,
        )
    } else if skew >= SKEW_WARN {
        Check::warn(ID, TITLE, detail, fix)
    } else {
        Check::pass(ID, TITLE, detail)
    }
}

fn unexpected(id: &'static str, title: &'static str, e: &DbError) -> Check {
    Check::fail(
        id,
        title,
        format!("the database failed: {}", chain(e)),
        "run the doctor again; if it persists, check the server's log",
    )
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::telemetry::chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_server_fails_the_transaction_check() {
        let hello = Hello {
            set_name: None,
            mongos: false,
            server_time: None,
            local_time: Utc::now(),
            round_trip: Duration::ZERO,
        };
        let c = transactions(&hello);
        assert_eq!(c.verdict, super::super::Verdict::Fail);
        assert!(c.fix.unwrap().contains("replSet"));
    }
}

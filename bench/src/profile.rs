//! `--mongod-profile`: what each kind of server operation cost, from MongoDB's own profiler.
//!
//! Level 2 records every operation (it slows the server down, so figures taken with it are
//! for proportions, not for throughput). Operations are grouped by their shape — operation,
//! filter fields, update operators and fields — so that each of the relay's queries (and each
//! step of a document write) gets one line: count, server milliseconds, documents and keys
//! examined, documents modified or returned, and the plans used.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use serde_json::{Value, json};

/// Turns on profiling of every operation on `db`, into a `system.profile` large enough for a
/// whole scenario.
pub(crate) async fn start(db: &mongodb::Database) -> anyhow::Result<()> {
    db.run_command(doc! { "profile": 0 }).await?;
    let _ = db.collection::<Document>("system.profile").drop().await;
    db.create_collection("system.profile")
        .capped(true)
        .size(512 * 1024 * 1024)
        .await?;
    db.run_command(doc! { "profile": 2, "slowms": 0 }).await?;
    Ok(())
}

#[derive(Default)]
struct Agg {
    count: u64,
    millis: i64,
    docs: i64,
    keys: i64,
    modified: i64,
    inserted: i64,
    returned: i64,
    plans: BTreeSet<String>,
}

/// Turns profiling off and summarises what it recorded, by kind of operation, most expensive
/// first.
pub(crate) async fn read(db: &mongodb::Database) -> anyhow::Result<Value> {
    db.run_command(doc! { "profile": 0 }).await?;
    let rows: Vec<Document> = db
        .collection::<Document>("system.profile")
        .find(doc! { "ns": { "$ne": format!("{}.system.profile", db.name()) } })
        .projection(doc! {
            "op": 1, "ns": 1, "millis": 1, "planSummary": 1, "docsExamined": 1,
            "keysExamined": 1, "nModified": 1, "ninserted": 1, "nreturned": 1, "command": 1,
        })
        .await?
        .try_collect()
        .await?;
    let mut by_kind: BTreeMap<String, Agg> = BTreeMap::new();
    for r in &rows {
        let a = by_kind.entry(kind(r)).or_default();
        let int = |k: &str| match r.get(k) {
            Some(Bson::Int32(v)) => i64::from(*v),
            Some(Bson::Int64(v)) => *v,
            _ => 0,
        };
        a.count += 1;
        a.millis += int("millis");
        a.docs += int("docsExamined");
        a.keys += int("keysExamined");
        a.modified += int("nModified");
        a.inserted += int("ninserted");
        a.returned += int("nreturned");
        if let Ok(p) = r.get_str("planSummary") {
            a.plans.insert(p.to_owned());
        }
    }
    let mut kinds: Vec<(String, Agg)> = by_kind.into_iter().collect();
    kinds.sort_by_key(|(_, a)| std::cmp::Reverse(a.millis));
    let total_millis: i64 = kinds.iter().map(|(_, a)| a.millis).sum();
    let list: Vec<Value> = kinds
        .into_iter()
        .map(|(kind, a)| {
            json!({
                "kind": kind, "count": a.count, "millis": a.millis,
                "docs_examined": a.docs, "keys_examined": a.keys, "modified": a.modified,
                "inserted": a.inserted, "returned": a.returned, "plans": a.plans,
            })
        })
        .collect();
    Ok(json!({
        "note": "profiler level 2 (slows the server); server-side milliseconds per kind of operation, summed over concurrent operations",
        "operations": rows.len(),
        "total_millis": total_millis,
        "by_kind": list,
    }))
}

/// Field names without the entries' `_outbox.` prefix.
fn short(k: &str) -> &str {
    k.strip_prefix("_outbox.").unwrap_or(k)
}

fn keys(d: Option<&Document>) -> String {
    d.map(|d| d.keys().map(|k| short(k)).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The shape of a profiled operation: what it is, on which collection, with which fields.
fn kind(r: &Document) -> String {
    let op = r.get_str("op").unwrap_or("?");
    let coll = r
        .get_str("ns")
        .ok()
        .and_then(|ns| ns.split_once('.'))
        .map_or("?", |(_, c)| c);
    let command = r.get_document("command").ok();
    let sub = |k: &str| command.and_then(|c| c.get_document(k).ok());
    match op {
        "query" => {
            let mut s = format!("{coll}: find {{{}}}", keys(sub("filter")));
            for extra in ["sort", "skip", "limit"] {
                if command.is_some_and(|c| c.contains_key(extra)) {
                    s.push(' ');
                    s.push_str(extra);
                }
            }
            s
        }
        "update" => {
            let u = sub("u");
            let ops = u
                .map(|u| {
                    u.iter()
                        .map(|(op, fields)| match fields {
                            Bson::Document(f) => format!("{op}:{}", keys(Some(f))),
                            _ => op.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let multi = if command.and_then(|c| c.get_bool("multi").ok()) == Some(true) {
                "updateMany"
            } else {
                "update"
            };
            format!("{coll}: {multi} {{{}}} {ops}", keys(sub("q")))
        }
        "getmore" => format!("{coll}: getMore"),
        "insert" => format!("{coll}: insert"),
        "remove" => format!("{coll}: delete {{{}}}", keys(sub("q"))),
        "command" => {
            let name = command
                .and_then(|c| c.keys().next().cloned())
                .unwrap_or_default();
            format!("{coll}: {name}")
        }
        other => format!("{coll}: {other}"),
    }
}

//! Cosmos DB for MongoDB (RU)'s change-stream rules, applied to `aggregate` commands whose
//! pipeline starts with `$changeStream` and to the cursors they open.
//!
//! | rule | what the proxy does | source |
//! | --- | --- | --- |
//! | mandatory pipeline | a change stream is accepted only as `[{$changeStream: {…, fullDocument: "updateLookup"}}, {$match: {operationType: {$in: ["insert","update","replace"]}}}, {$project: {_id: 1, fullDocument: 1, ns: 1, documentKey: 1}}]`; the `$match` may also filter `fullDocument.<field>` (Microsoft's single-shard form, `$and` of both). Anything else is refused with 2 `BadValue` `Change stream must be followed by a match and then a project stage`, without being forwarded | Microsoft Learn, "Change streams in Azure Cosmos DB's API for MongoDB" (`$match`, `$project` and `fullDocument` "are required"; both example shapes); the error text is what users of third-party tools posted (rwynn/monstache#624). The refusal of a missing or other `fullDocument` reuses that code with its own wording: **guessed** |
//! | collection scope only | `aggregate: 1` (database or cluster watch) is refused with 2 `BadValue` `Expected type string but found int` | MicrosoftDocs/azure-docs#52077 (users' reports; Microsoft lists no such limit, so n/v) |
//! | no `operationType`, no `updateDescription` | both are removed from every event of `cursor.firstBatch` / `cursor.nextBatch` of such a cursor | same Microsoft page, "Current limitations" ("not yet supported in the output document") |
//! | no deletes | `delete` events are removed from batches; `postBatchResumeToken` is passed on unchanged, so a position saved after the batch is still after the removed event | same page ("the delete operation … not yet supported"); with the mandatory `$match` `mongod` never sends one, so this is a second fence |
//! | throttled stream | [`ProxyHandle::throttle_change_stream_next`](crate::ProxyHandle::throttle_change_stream_next): the next `n` `getMore`s of such cursors are answered by the proxy, without being forwarded, with an *empty page*: `ok: 1`, `nextBatch: []`, the cursor's id and its last `postBatchResumeToken`. The cursor does not move, so nothing is lost; a reader that does not back off spins on empty pages | same page, "Error handling": "HTTP error code 16500 – When the change stream is throttled, it returns an empty page". A 16500 *error* answer to `getMore` (ok: 0) is the ordinary throttle ([`ProxyHandle::throttle_next`](crate::ProxyHandle::throttle_next) with [`Match`](crate::Match) on reads) |
//!
//! | one token per page | every event of a batch gets the batch's `postBatchResumeToken` as its `_id` (resuming after it skips the whole page); [`ProxyHandle::set_change_stream_page_tokens`](crate::ProxyHandle::set_change_stream_page_tokens), on by default | Microsoft Learn, "Use MongoDB extension commands…", "Parallelizing change streams": "Each document returned includes a resume token (they're all the same for each page)"; that it is the position *after* the page is inferred from the example (its token is later than the one the stream was opened with) |
//!
//! Not imitated: `NamespaceNotFound` for a missing collection, per-partition tokens
//! (`GetChangeStreamTokens`), coalescing of repeated updates (inferred, n/v).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bson::{Bson, Document, RawDocument, doc};

use crate::cosmos::{CosmosError, TRANSACTION_NOT_ACTIVE};

/// The operation types RU's mandatory `$match` names.
const OPERATION_TYPES: [&str; 3] = ["insert", "update", "replace"];
/// The fields RU's mandatory `$project` keeps.
const PROJECTED: [&str; 4] = ["_id", "fullDocument", "ns", "documentKey"];
/// The error RU's users report for any other pipeline.
pub(crate) const SHAPE_ERROR: &str =
    "Change stream must be followed by a match and then a project stage";
/// The error users report for a database- or cluster-level watch.
pub(crate) const SCOPE_ERROR: &str = "Expected type string but found int";
/// The (guessed) error for a change stream without `fullDocument: "updateLookup"`.
pub(crate) const FULL_DOCUMENT_ERROR: &str =
    "Change stream requires the fullDocument option set to updateLookup";

/// What the proxy does with one command, as far as change streams go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamAction {
    /// Not a change-stream command, or the rules are off: the other rules decide.
    Pass,
    /// A change stream of RU's shape (`None`), or a `getMore` on one (its cursor id): forward
    /// it and rewrite its reply with [`Streams::on_reply`].
    Rewrite(Option<i64>),
    /// Refuse it without forwarding.
    Refuse(CosmosError),
    /// Answer it without forwarding (a throttled `getMore`: an empty page).
    Answer(Document),
}

/// Counters of the change-stream rules, since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeStreamStats {
    /// Change streams opened with RU's pipeline.
    pub opened: u64,
    /// Change streams refused (shape, scope or `fullDocument`).
    pub refused: u64,
    /// `getMore`s answered with an empty page (throttled).
    pub throttled_pages: u64,
    /// Delete events removed from batches.
    pub deletes_removed: u64,
    /// Events that lost `operationType` or `updateDescription`.
    pub events_stripped: u64,
    /// Batches passed on (first and next).
    pub batches: u64,
}

#[derive(Debug)]
struct Inner {
    enabled: bool,
    page_tokens: bool,
    throttle_next: u64,
    /// Open RU change-stream cursors: id → `(namespace, last postBatchResumeToken)`.
    cursors: HashMap<i64, (String, Option<Bson>)>,
    stats: ChangeStreamStats,
}

/// The change-stream rules' state, shared by every connection.
#[derive(Debug)]
pub(crate) struct Streams {
    inner: Mutex<Inner>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                enabled: true,
                page_tokens: true,
                throttle_next: 0,
                cursors: HashMap::new(),
                stats: ChangeStreamStats::default(),
            }),
        }
    }
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Turns the rules on or off (on by default).
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.lock().enabled = enabled;
    }

    /// Whether every event of a batch carries the batch's token (on by default).
    pub(crate) fn set_page_tokens(&self, on: bool) {
        self.lock().page_tokens = on;
    }

    /// Answers the next `n` `getMore`s of RU change-stream cursors with an empty page.
    pub(crate) fn throttle_next(&self, n: u64) {
        self.lock().throttle_next = n;
    }

    /// Throttled pages still to come.
    pub(crate) fn pending_throttles(&self) -> u64 {
        self.lock().throttle_next
    }

    pub(crate) fn stats(&self) -> ChangeStreamStats {
        self.lock().stats.clone()
    }

    pub(crate) fn reset_stats(&self) {
        self.lock().stats = ChangeStreamStats::default();
    }

    /// Decides what happens to a command named `name` with body `body`.
    pub(crate) fn on_command(&self, name: &str, body: &RawDocument) -> StreamAction {
        let mut inner = self.lock();
        if !inner.enabled {
            return StreamAction::Pass;
        }
        match name {
            "aggregate" => match check_open(body) {
                None => StreamAction::Pass,
                Some(Ok(())) => {
                    inner.stats.opened += 1;
                    StreamAction::Rewrite(None)
                }
                Some(Err(error)) => {
                    inner.stats.refused += 1;
                    StreamAction::Refuse(error)
                }
            },
            "getMore" => {
                let Some(id) = cursor_id(body) else {
                    return StreamAction::Pass;
                };
                let Some((ns, token)) = inner.cursors.get(&id).cloned() else {
                    return StreamAction::Pass;
                };
                if inner.throttle_next > 0 {
                    inner.throttle_next -= 1;
                    inner.stats.throttled_pages += 1;
                    return StreamAction::Answer(empty_page(id, &ns, token));
                }
                StreamAction::Rewrite(Some(id))
            }
            "killCursors" => {
                // The driver closes a stream it drops: forget its cursor.
                if let Ok(ids) = body.get_array("cursors") {
                    for id in ids.into_iter().flatten() {
                        if let Some(id) = id.as_i64() {
                            inner.cursors.remove(&id);
                        }
                    }
                }
                StreamAction::Pass
            }
            _ => StreamAction::Pass,
        }
    }

    /// Applies RU's output rules to a reply of an accepted `aggregate` or of a `getMore` on
    /// its cursor (`asked`), and remembers the cursor (or forgets it once exhausted or gone).
    pub(crate) fn on_reply(&self, reply: &mut Document, asked: Option<i64>) {
        let mut inner = self.lock();
        let page_tokens = inner.page_tokens;
        let Some(seen) = rewrite_batch(reply, page_tokens) else {
            // An error (the cursor is gone, or the stream failed): ask nothing more of it.
            if let Some(id) = asked {
                inner.cursors.remove(&id);
            }
            return;
        };
        inner.stats.batches += 1;
        inner.stats.deletes_removed += seen.deletes_removed;
        inner.stats.events_stripped += seen.stripped;
        if seen.cursor_id == 0 {
            // An exhausted or killed cursor: nothing more will be asked of it.
            if let Some(id) = asked {
                inner.cursors.remove(&id);
            }
            return;
        }
        let entry = inner
            .cursors
            .entry(seen.cursor_id)
            .or_insert_with(|| (seen.ns.clone(), None));
        if seen.post_batch_token.is_some() {
            entry.1 = seen.post_batch_token;
        }
    }
}

/// `getMore`'s cursor id.
fn cursor_id(body: &RawDocument) -> Option<i64> {
    body.get_i64("getMore")
        .ok()
        .or_else(|| body.get_i32("getMore").ok().map(i64::from))
}

/// `None` when `body` is not a change stream; else whether RU would accept it.
pub(crate) fn check_open(body: &RawDocument) -> Option<Result<(), CosmosError>> {
    let pipeline = Document::try_from(body).ok()?;
    let stages = pipeline.get_array("pipeline").ok()?;
    let first = stages.first()?.as_document()?;
    let options = first.get_document("$changeStream").ok()?;
    if !matches!(pipeline.get("aggregate"), Some(Bson::String(_))) {
        return Some(Err(bad_value(SCOPE_ERROR)));
    }
    if options.get_bool("allChangesForCluster").unwrap_or(false) {
        return Some(Err(bad_value(SCOPE_ERROR)));
    }
    let shaped = stages.len() == 3
        && stages[1]
            .as_document()
            .and_then(|s| s.get_document("$match").ok())
            .is_some_and(is_mandatory_match)
        && stages[2]
            .as_document()
            .and_then(|s| s.get_document("$project").ok())
            .is_some_and(is_mandatory_project);
    Some(if !shaped {
        Err(bad_value(SHAPE_ERROR))
    } else if options.get_str("fullDocument").ok() != Some("updateLookup") {
        Err(bad_value(FULL_DOCUMENT_ERROR))
    } else {
        Ok(())
    })
}

fn bad_value(errmsg: &str) -> CosmosError {
    CosmosError {
        code: TRANSACTION_NOT_ACTIVE,
        code_name: "BadValue",
        errmsg: errmsg.to_owned(),
        labels: Vec::new(),
        as_write_error: false,
    }
}

/// `{operationType: {$in: [insert, update, replace]}}`, maybe beside `fullDocument.<field>`
/// filters, or an `$and` of such parts.
fn is_mandatory_match(filter: &Document) -> bool {
    let mut names_types = false;
    for (key, value) in filter {
        match key.as_str() {
            "operationType" => names_types = is_mandatory_types(value),
            "$and" => {
                let Some(parts) = value.as_array() else {
                    return false;
                };
                for part in parts {
                    let Some(part) = part.as_document() else {
                        return false;
                    };
                    if part.contains_key("operationType") {
                        if !is_mandatory_match(part) {
                            return false;
                        }
                        names_types = true;
                    } else if !part.keys().all(|k| k.starts_with("fullDocument.")) {
                        return false;
                    }
                }
            }
            k if k.starts_with("fullDocument.") => {}
            _ => return false,
        }
    }
    names_types
}

fn is_mandatory_types(value: &Bson) -> bool {
    let Some(cond) = value.as_document() else {
        return false;
    };
    let Some(Bson::Array(types)) = cond.get("$in").filter(|_| cond.len() == 1) else {
        return false;
    };
    let mut named: Vec<&str> = types.iter().filter_map(Bson::as_str).collect();
    named.sort_unstable();
    named.dedup();
    let mut expected = OPERATION_TYPES;
    expected.sort_unstable();
    named.len() == types.len() && named == expected
}

fn is_mandatory_project(project: &Document) -> bool {
    project.len() == PROJECTED.len()
        && PROJECTED.iter().all(|field| {
            matches!(
                project.get(*field),
                Some(Bson::Int32(1) | Bson::Int64(1) | Bson::Boolean(true))
            ) || matches!(project.get(*field), Some(Bson::Double(v)) if *v == 1.0)
        })
}

/// What one rewritten batch showed.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    cursor_id: i64,
    ns: String,
    post_batch_token: Option<Bson>,
    deletes_removed: u64,
    stripped: u64,
}

/// Removes deletes and strips `operationType` / `updateDescription` in `cursor.firstBatch` or
/// `cursor.nextBatch`, and with `page_tokens` gives every event the batch's
/// `postBatchResumeToken` as its `_id`; `None` when the reply has no cursor (an error).
fn rewrite_batch(reply: &mut Document, page_tokens: bool) -> Option<Seen> {
    let cursor = reply.get_document_mut("cursor").ok()?;
    let mut seen = Seen {
        cursor_id: cursor.get_i64("id").unwrap_or(0),
        ns: cursor.get_str("ns").unwrap_or_default().to_owned(),
        post_batch_token: cursor.get("postBatchResumeToken").cloned(),
        ..Seen::default()
    };
    for key in ["firstBatch", "nextBatch"] {
        let Ok(batch) = cursor.get_array_mut(key) else {
            continue;
        };
        let before = batch.len();
        batch.retain(|event| {
            event
                .as_document()
                .and_then(|e| e.get_str("operationType").ok())
                != Some("delete")
        });
        seen.deletes_removed += (before - batch.len()) as u64;
        for event in batch.iter_mut() {
            if let Some(event) = event.as_document_mut() {
                if page_tokens && let Some(token) = &seen.post_batch_token {
                    event.insert("_id", token.clone());
                }
                let had_type = event.remove("operationType").is_some();
                let had_description = event.remove("updateDescription").is_some();
                if had_type || had_description {
                    seen.stripped += 1;
                }
            }
        }
    }
    Some(seen)
}

/// The page a throttled change stream returns: empty, the cursor where it was.
fn empty_page(cursor_id: i64, ns: &str, token: Option<Bson>) -> Document {
    let mut cursor = doc! { "id": cursor_id, "ns": ns, "nextBatch": [] };
    if let Some(token) = token {
        cursor.insert("postBatchResumeToken", token);
    }
    doc! { "cursor": cursor, "ok": 1.0 }
}

#[cfg(test)]
mod tests {
    use bson::RawDocumentBuf;

    use super::*;

    fn raw(d: &Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(d).unwrap()
    }

    fn ru_match() -> Document {
        doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace"] } } }
    }

    fn ru_project() -> Document {
        doc! { "$project": { "_id": 1, "fullDocument": 1, "ns": 1, "documentKey": 1 } }
    }

    fn open(coll: Bson, options: Document, rest: &[Document]) -> RawDocumentBuf {
        let mut pipeline = vec![Bson::Document(doc! { "$changeStream": options })];
        pipeline.extend(rest.iter().cloned().map(Bson::Document));
        raw(&doc! { "aggregate": coll, "pipeline": pipeline, "cursor": {}, "$db": "d" })
    }

    fn lookup() -> Document {
        doc! { "fullDocument": "updateLookup" }
    }

    #[test]
    fn the_mandatory_shape_is_accepted_with_or_without_a_shard_filter_or_resume_token() {
        let ok = |body: RawDocumentBuf| assert_eq!(check_open(&body), Some(Ok(())));
        ok(open("c".into(), lookup(), &[ru_match(), ru_project()]));
        let mut resumed = lookup();
        resumed.insert("resumeAfter", doc! { "_data": "82" });
        ok(open("c".into(), resumed, &[ru_match(), ru_project()]));
        let single_shard = doc! { "$match": { "$and": [
            { "fullDocument.a": 1 },
            { "operationType": { "$in": ["replace", "insert", "update"] } },
        ] } };
        ok(open("c".into(), lookup(), &[single_shard, ru_project()]));
    }

    #[test]
    fn other_pipelines_are_refused_with_rus_error() {
        let refused = |body: RawDocumentBuf, msg: &str| {
            let Some(Err(e)) = check_open(&body) else {
                panic!("accepted: {body:?}")
            };
            assert_eq!(
                (e.code, e.code_name, e.errmsg.as_str()),
                (2, "BadValue", msg)
            );
        };
        refused(open("c".into(), lookup(), &[]), SHAPE_ERROR);
        refused(
            open("c".into(), lookup(), &[ru_project(), ru_match()]),
            SHAPE_ERROR,
        );
        refused(open("c".into(), lookup(), &[ru_match()]), SHAPE_ERROR);
        let with_delete = doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace", "delete"] } } };
        refused(
            open("c".into(), lookup(), &[with_delete, ru_project()]),
            SHAPE_ERROR,
        );
        let inserts_only = doc! { "$match": { "operationType": "insert" } };
        refused(
            open("c".into(), lookup(), &[inserts_only, ru_project()]),
            SHAPE_ERROR,
        );
        let other_filter = doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace"] }, "ns.coll": "c" } };
        refused(
            open("c".into(), lookup(), &[other_filter, ru_project()]),
            SHAPE_ERROR,
        );
        let id_only = doc! { "$project": { "_id": 1 } };
        refused(
            open("c".into(), lookup(), &[ru_match(), id_only]),
            SHAPE_ERROR,
        );
        let more = doc! { "$project": { "_id": 1, "fullDocument": 1, "ns": 1, "documentKey": 1, "operationType": 1 } };
        refused(open("c".into(), lookup(), &[ru_match(), more]), SHAPE_ERROR);
        refused(
            open("c".into(), doc! {}, &[ru_match(), ru_project()]),
            FULL_DOCUMENT_ERROR,
        );
        refused(
            open(1.into(), lookup(), &[ru_match(), ru_project()]),
            SCOPE_ERROR,
        );
        // The proxy's answer is a command error, as for any refused command.
        let e = check_open(&open("c".into(), lookup(), &[]))
            .unwrap()
            .unwrap_err();
        let reply = e.reply("aggregate");
        assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
        assert_eq!(reply.get_i32("code").unwrap(), 2);
    }

    #[test]
    fn aggregates_that_are_not_change_streams_pass() {
        let body = raw(
            &doc! { "aggregate": "c", "pipeline": [{ "$match": {} }], "cursor": {}, "$db": "d" },
        );
        assert_eq!(check_open(&body), None);
        let streams = Streams::default();
        assert_eq!(streams.on_command("aggregate", &body), StreamAction::Pass);
        streams.set_enabled(false);
        let plain = open("c".into(), lookup(), &[]);
        assert_eq!(streams.on_command("aggregate", &plain), StreamAction::Pass);
    }

    fn batch_reply(key: &str, id: i64, events: Vec<Document>, token: &str) -> Document {
        doc! {
            "cursor": {
                key: events,
                "postBatchResumeToken": { "_data": token },
                "id": id,
                "ns": "d.c",
            },
            "ok": 1.0,
        }
    }

    fn event(op: &str, id: &str) -> Document {
        doc! {
            "_id": { "_data": format!("t-{id}") },
            "operationType": op,
            "documentKey": { "_id": id },
            "fullDocument": { "_id": id },
            "updateDescription": { "updatedFields": { "n": 2 } },
            "ns": { "db": "d", "coll": "c" },
        }
    }

    #[test]
    fn replies_lose_operation_type_update_description_and_deletes_but_keep_the_post_batch_token() {
        let streams = Streams::default();
        let mut first = batch_reply("firstBatch", 42, vec![event("insert", "a")], "p1");
        streams.on_reply(&mut first, None);
        let batch = first
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        let only = batch[0].as_document().unwrap();
        assert!(!only.contains_key("operationType") && !only.contains_key("updateDescription"));
        assert_eq!(
            only.get_document("documentKey").unwrap(),
            &doc! { "_id": "a" }
        );

        let mut next = batch_reply(
            "nextBatch",
            42,
            vec![
                event("update", "a"),
                event("delete", "b"),
                event("replace", "c"),
                event("delete", "d"),
            ],
            "p2",
        );
        streams.on_reply(&mut next, Some(42));
        let cursor = next.get_document("cursor").unwrap();
        let keys: Vec<&str> = cursor
            .get_array("nextBatch")
            .unwrap()
            .iter()
            .map(|e| {
                e.as_document()
                    .unwrap()
                    .get_document("documentKey")
                    .unwrap()
                    .get_str("_id")
                    .unwrap()
            })
            .collect();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(
            cursor.get_document("postBatchResumeToken").unwrap(),
            &doc! { "_data": "p2" }
        );
        let stats = streams.stats();
        assert_eq!(
            (stats.deletes_removed, stats.events_stripped, stats.batches),
            (2, 3, 2)
        );
        // Every event of the page carries the page's token.
        for e in cursor.get_array("nextBatch").unwrap() {
            assert_eq!(
                e.as_document().unwrap().get_document("_id").unwrap(),
                &doc! { "_data": "p2" }
            );
        }
        streams.set_page_tokens(false);
        let mut own = batch_reply("nextBatch", 42, vec![event("insert", "f")], "p4");
        streams.on_reply(&mut own, Some(42));
        let kept = own
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()[0]
            .as_document()
            .unwrap()
            .get_document("_id")
            .unwrap()
            .clone();
        assert_eq!(kept, doc! { "_data": "t-f" });

        // A batch of deletes only becomes an empty page that still moves the position.
        let mut deletes = batch_reply("nextBatch", 42, vec![event("delete", "e")], "p3");
        streams.on_reply(&mut deletes, Some(42));
        let cursor = deletes.get_document("cursor").unwrap();
        assert!(cursor.get_array("nextBatch").unwrap().is_empty());
        assert_eq!(
            cursor.get_document("postBatchResumeToken").unwrap(),
            &doc! { "_data": "p3" }
        );
    }

    #[test]
    fn a_throttled_get_more_is_an_empty_page_at_the_cursors_last_position() {
        let streams = Streams::default();
        let get_more = raw(&doc! { "getMore": 42_i64, "collection": "c", "$db": "d" });
        // Unknown cursors are not change streams.
        streams.throttle_next(1);
        assert_eq!(streams.on_command("getMore", &get_more), StreamAction::Pass);
        streams.on_reply(&mut batch_reply("firstBatch", 42, vec![], "p1"), None);
        assert_eq!(
            streams.on_command("getMore", &get_more),
            StreamAction::Answer(doc! {
                "cursor": { "id": 42_i64, "ns": "d.c", "nextBatch": [], "postBatchResumeToken": { "_data": "p1" } },
                "ok": 1.0,
            })
        );
        assert_eq!(streams.pending_throttles(), 0);
        assert_eq!(
            streams.on_command("getMore", &get_more),
            StreamAction::Rewrite(Some(42))
        );
        assert_eq!(streams.stats().throttled_pages, 1);
        // An exhausted cursor is forgotten.
        streams.on_reply(&mut batch_reply("nextBatch", 0, vec![], "p2"), Some(42));
        assert_eq!(streams.on_command("getMore", &get_more), StreamAction::Pass);
        // So is a killed one.
        streams.on_reply(&mut batch_reply("firstBatch", 43, vec![], "p1"), None);
        let kill = raw(&doc! { "killCursors": "c", "cursors": [43_i64], "$db": "d" });
        assert_eq!(streams.on_command("killCursors", &kill), StreamAction::Pass);
        let get_more = raw(&doc! { "getMore": 43_i64, "collection": "c", "$db": "d" });
        assert_eq!(streams.on_command("getMore", &get_more), StreamAction::Pass);
    }
}

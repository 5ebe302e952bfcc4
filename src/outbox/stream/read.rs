//! Reading the stream: opening it from a checkpoint, and what each raw change is.
//!
//! Changes are read as plain documents, not the driver's typed event: Cosmos DB RU's stream
//! has no `operationType`, which the typed event requires.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;

use super::{ChangeStore, Checkpoint, StreamError, chrono_time};
use crate::config::StreamTarget;
use crate::db::{classify, error_code, is_ru_pipeline_refusal};
use crate::domain::stream_change::{ChangeKind, StreamChange};
use crate::outbox::{idempotency, store};

/// `ChangeStreamHistoryLost`, `ChangeStreamFatalError`, `InvalidResumeToken`: the position
/// cannot be resumed from.
const POSITION_LOST_CODES: [i32; 3] = [286, 280, 260];

/// Where a relay-computed position travels with a Cosmos DB RU change (and so into its dead
/// letter, which is read again on requeue): the event id derives from it.
const RELAY_POSITION: &str = "_outbox_relay_position";

/// An open change stream on the documents' collection.
pub struct Changes {
    stream: ChangeStream<Document>,
    /// Cosmos DB RU only: the pages being read (see [`Pages`]).
    pages: Option<Pages>,
}

/// Cosmos DB RU gives every change of a page the same resume token, the position *after* the
/// page (Microsoft Learn, "MongoDB extension commands", "Parallelizing change streams":
/// "they're all the same for each page"). Saving a change's token while the rest of its page
/// is unpublished would skip that rest after a restart, so on RU the position saved is the end
/// of the last page read to its end, and the page being read is read again after a restart.
/// Its changes then get the same event ids: an id derives from where the page started (the
/// saved position), the document key, the document's content and how often that document
/// with that content came earlier in the page — not from the shared token, which depends on
/// where the server ended the page.
#[derive(Debug, Default)]
struct Pages {
    /// The token of the page being read.
    current: Option<Bson>,
    /// The end of the last page read to its end: the position safe to save.
    done: Option<ResumeToken>,
    /// `done` as text, for event ids.
    done_text: String,
    /// `(document key, content)` → how often seen in the page being read.
    seen: std::collections::HashMap<(String, String), u32>,
}

impl Pages {
    fn starting_at(token: Option<ResumeToken>) -> Self {
        let done_text = token
            .as_ref()
            .and_then(|t| mongodb::bson::to_bson(t).ok())
            .map_or_else(String::new, |t| position_text(&t));
        Self {
            done: token,
            done_text,
            ..Self::default()
        }
    }

    /// Notes one raw change; gives an RU change (no `operationType`) its position.
    fn on_change(&mut self, raw: &mut Document) {
        let token = raw.get("_id").cloned();
        if token != self.current {
            // A new page: the one before it was read to its end.
            if let Some(ended) = self.current.take() {
                *self = Self::starting_at(mongodb::bson::from_bson(ended).ok());
            }
            self.current = token;
        }
        if raw.contains_key("operationType") {
            return;
        }
        let key = raw
            .get_document("documentKey")
            .map(|k| Bson::Document(k.clone()).into_relaxed_extjson().to_string())
            .unwrap_or_default();
        let content = raw.get("fullDocument").map_or_else(String::new, |d| {
            let text = d.clone().into_relaxed_extjson().to_string();
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes())
                .simple()
                .to_string()
        });
        let n = self.seen.entry((key.clone(), content.clone())).or_insert(0);
        let position = format!("{}\0{key}\0{content}\0{n}", self.done_text);
        *n += 1;
        raw.insert(RELAY_POSITION, position);
    }

    /// An empty page: everything before the server's position was read.
    fn on_empty(&mut self, position: Option<ResumeToken>) {
        if position.is_some() {
            *self = Self::starting_at(position);
        }
    }

    /// The stream failed. The driver asks the server again (`getMore`, or the `aggregate` of
    /// its own resume) only once it has handed out every change of the page before, so that
    /// page was read to its end: a reader that settles what it read may save past it instead
    /// of reading it again (a throttled RU stream answers 16500 between pages).
    fn on_error(&mut self) {
        if let Some(ended) = self.current.take() {
            *self = Self::starting_at(mongodb::bson::from_bson(ended).ok());
        }
    }
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

/// What one raw change is.
#[derive(Debug)]
pub enum Read {
    /// A change to a document: publish it.
    Change(Box<StreamChange>, Document),
    /// Not a change to a document the relay announces (an outbox entry or an idempotency
    /// record, or an event type it does not publish): move past it.
    Skip,
    /// The stream ends here (the collection was dropped or renamed, or the stream
    /// invalidated): what comes next is not in this stream.
    End(String),
}

impl ChangeStore {
    /// Opens the stream after `from` (or at the server's present when no position was ever
    /// saved); each wait for changes lasts at most `wait`.
    ///
    /// # Errors
    /// [`StreamError::PositionLost`] when the server no longer has the position; the
    /// database's error otherwise.
    pub async fn open(&self, from: &Checkpoint, wait: Duration) -> Result<Changes, StreamError> {
        let mut watch = self
            .documents
            .watch()
            .pipeline(super::target::pipeline(self.target))
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(wait);
        if let Some(token) = &from.token {
            watch = watch.resume_after(token.clone());
        } else if let Some(at) = from.start_at {
            watch = watch.start_at_operation_time(at);
        }
        match watch.await {
            Ok(stream) => {
                let stream = stream.with_type::<Document>();
                let pages = (self.target == StreamTarget::CosmosRu).then(|| {
                    Pages::starting_at(from.token.clone().or_else(|| stream.resume_token()))
                });
                Ok(Changes { stream, pages })
            }
            Err(e) => Err(self.failed(e, from)),
        }
    }

    /// A stream error: a lost position is said as such, with the gap and the fix, and so is
    /// a pipeline the server refuses as Cosmos DB for MongoDB RU does.
    fn failed(&self, e: mongodb::error::Error, from: &Checkpoint) -> StreamError {
        if self.target != StreamTarget::CosmosRu && is_ru_pipeline_refusal(&e) {
            return StreamError::Refused(format!(
                "the server refused the change stream of {}.{} the way Cosmos DB for MongoDB RU refuses every pipeline but its own ({}): OUTBOX_CHANGE_STREAM_TARGET is {}; set it to cosmos-ru (or auto)",
                self.database,
                self.collection,
                crate::telemetry::chain(&e),
                self.target.as_str(),
            ));
        }
        match error_code(&e) {
            Some(code) if POSITION_LOST_CODES.contains(&code) => {
                let since = from
                    .position_time
                    .map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339());
                StreamError::PositionLost(format!(
                    "the change stream of {}.{} cannot resume: its saved position (last published change at {since}) is no longer in the server's history (code {code}: {}); changes made since then cannot be read from the stream. Publish the current documents with `handler outbox resync`, or delete the checkpoint document {:?} from the checkpoints collection to start from now and accept the gap; size the oplog (or DocumentDB's change-stream log) above the longest time the relay may be stopped",
                    self.database,
                    self.collection,
                    crate::telemetry::chain(&e),
                    self.collection,
                ))
            }
            _ => StreamError::Db(classify(e)),
        }
    }

    /// The next change, waiting at most the stream's `wait`; `None` when nothing came.
    ///
    /// # Errors
    /// As [`ChangeStore::open`]; the stream must be opened again after an error.
    pub async fn next(
        &self,
        changes: &mut Changes,
        from: &Checkpoint,
    ) -> Result<Option<Read>, StreamError> {
        match changes.stream.next_if_any().await {
            Ok(Some(mut raw)) => {
                if let Some(pages) = &mut changes.pages {
                    pages.on_change(&mut raw);
                }
                Ok(Some(read_change(&raw, Utc::now()).unwrap_or(Read::Skip)))
            }
            Ok(None) => {
                let position = changes.stream.resume_token();
                if let Some(pages) = &mut changes.pages {
                    pages.on_empty(position);
                }
                Ok(None)
            }
            Err(e) => {
                if let Some(pages) = &mut changes.pages {
                    pages.on_error();
                }
                Err(self.failed(e, from))
            }
        }
    }
}

impl Changes {
    /// The position after the last change returned (or the server's scan position when the
    /// last batch was empty); on Cosmos DB RU the end of the last page read to its end (see
    /// `Pages`).
    #[must_use]
    pub fn position(&self) -> Option<ResumeToken> {
        match &self.pages {
            Some(pages) => pages.done.clone(),
            None => self.stream.resume_token(),
        }
    }
}

/// What the raw change `raw` is; `None` when it has no usable document key.
pub(super) fn read_change(raw: &Document, now: DateTime<Utc>) -> Option<Read> {
    let kind = match raw.get_str("operationType") {
        Ok(op) => match ChangeKind::from_operation_type(op) {
            Some(kind) => kind,
            None if matches!(op, "drop" | "rename" | "dropDatabase" | "invalidate") => {
                return Some(Read::End(format!("the collection saw a {op:?} event")));
            }
            None => return Some(Read::Skip),
        },
        // Cosmos DB RU: no operationType; inserts, updates and replaces only.
        Err(_) => ChangeKind::Changed,
    };
    let full = raw.get_document("fullDocument").ok();
    if full.is_some_and(|d| d.contains_key(store::ROOT) || d.contains_key(idempotency::ROOT)) {
        return Some(Read::Skip);
    }
    let id = raw.get_document("documentKey").ok()?.get("_id")?;
    let cluster_time = raw.get_timestamp("clusterTime").ok();
    let at = raw
        .get_datetime("wallTime")
        .ok()
        .map(|t| chrono_time(*t))
        .or_else(|| cluster_time.and_then(|t| DateTime::from_timestamp(i64::from(t.time), 0)))
        .unwrap_or(now);
    // Cosmos DB RU: the position the reader gave the change (see `Pages`); a change without
    // one (read by an older relay) gets its token and document key.
    let position = match raw.get_str(RELAY_POSITION) {
        Ok(position) => position.to_owned(),
        Err(_) if kind == ChangeKind::Changed => format!(
            "{}\0{}",
            position_text(raw.get("_id")?),
            id.clone().into_relaxed_extjson()
        ),
        Err(_) => position_text(raw.get("_id")?),
    };
    let change = StreamChange {
        kind,
        document_id: id_text(id),
        document: full.map(|d| Bson::Document(d.clone()).into_relaxed_extjson()),
        position,
        sequence: cluster_time.map(|t| (u64::from(t.time) << 32) | u64::from(t.increment)),
        at,
    };
    Some(Read::Change(Box::new(change), raw.clone()))
}

/// A document id as text.
pub(super) fn id_text(id: &Bson) -> String {
    match id {
        Bson::String(s) => s.clone(),
        Bson::ObjectId(o) => o.to_hex(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// A resume token as text: its `_data`, or the whole token as JSON.
fn position_text(token: &Bson) -> String {
    match token {
        Bson::Document(d) => d.get_str("_data").map_or_else(
            |_| token.clone().into_relaxed_extjson().to_string(),
            str::to_owned,
        ),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Timestamp, doc};

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn an_update_is_read_with_its_post_image_and_position() {
        let raw = doc! {
            "_id": { "_data": "82ABC" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 5, increment: 2 },
            "documentKey": { "_id": "o-1" },
            "fullDocument": { "_id": "o-1", "n": 2 },
        };
        let Some(Read::Change(c, _)) = read_change(&raw, now()) else {
            panic!("a change")
        };
        assert_eq!(c.kind, ChangeKind::Updated);
        assert_eq!(c.document_id, "o-1");
        assert_eq!(c.position, "82ABC");
        assert_eq!(c.sequence, Some((5 << 32) | 2));
        assert_eq!(c.document, Some(serde_json::json!({"_id": "o-1", "n": 2})));
        assert_eq!(c.at, DateTime::from_timestamp(5, 0).unwrap());
    }

    #[test]
    fn without_an_operation_type_it_is_a_change_of_unknown_kind() {
        let raw = doc! { "_id": { "_data": "x" }, "documentKey": { "_id": 7 }, "fullDocument": { "_id": 7 } };
        let Some(Read::Change(c, _)) = read_change(&raw, now()) else {
            panic!("a change")
        };
        assert_eq!(
            (c.kind, c.document_id.as_str(), c.at),
            (ChangeKind::Changed, "7", now())
        );
    }

    fn ru_change(token: &str, id: &str, n: i32) -> Document {
        doc! { "_id": { "_data": token }, "documentKey": { "_id": id }, "fullDocument": { "_id": id, "n": n } }
    }

    fn positions(pages: &mut Pages, changes: &[Document]) -> Vec<String> {
        changes
            .iter()
            .map(|c| {
                let mut c = c.clone();
                pages.on_change(&mut c);
                c.get_str(RELAY_POSITION).unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn on_cosmos_ru_only_a_page_read_to_its_end_moves_the_position_and_ids_survive_a_reread() {
        let start: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! { "_data": "p0" })).unwrap();
        let page = [
            ru_change("p1", "a", 1),
            ru_change("p1", "b", 1),
            ru_change("p1", "a", 2),
            ru_change("p1", "a", 1),
        ];
        let mut pages = Pages::starting_at(Some(start.clone()));
        let first = positions(&mut pages, &page[..2]);
        // Mid-page the safe position is still the page's start.
        assert_eq!(pages.done, Some(start.clone()));
        let rest = positions(&mut pages, &page[2..]);
        let all: Vec<&String> = first.iter().chain(&rest).collect();
        let distinct: std::collections::HashSet<&&String> = all.iter().collect();
        assert_eq!(distinct.len(), 4, "one id per change: {all:?}");
        // Read again from the same start, even if the server now ends the page elsewhere.
        let mut again = Pages::starting_at(Some(start));
        let reread: Vec<Document> = page
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.insert("_id", doc! { "_data": "p9" });
                c
            })
            .collect();
        assert_eq!(positions(&mut again, &reread), [first, rest].concat());
        // The next page's first change ends the page before it.
        positions(&mut pages, &[ru_change("p2", "c", 1)]);
        let p1: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! { "_data": "p1" })).unwrap();
        assert_eq!(pages.done, Some(p1.clone()));
        // An empty page: everything up to the server's position was read.
        pages.on_empty(Some(p1.clone()));
        assert_eq!((pages.done, pages.current), (Some(p1), None));
    }

    #[test]
    fn on_cosmos_ru_an_error_after_a_page_ends_it_and_before_any_page_moves_nothing() {
        let token = |t: &str| -> ResumeToken {
            mongodb::bson::from_bson(Bson::Document(doc! { "_data": t })).unwrap()
        };
        let mut pages = Pages::starting_at(Some(token("p0")));
        pages.on_error();
        assert_eq!(pages.done, Some(token("p0")), "nothing read: nothing moves");
        positions(
            &mut pages,
            &[ru_change("p1", "a", 1), ru_change("p1", "b", 1)],
        );
        assert_eq!(pages.done, Some(token("p0")));
        // The driver asked the server again, so it had handed out all of p1.
        pages.on_error();
        assert_eq!((pages.done, pages.current), (Some(token("p1")), None));
    }

    #[test]
    fn changes_of_one_cosmos_ru_page_share_a_token_but_not_an_event_id() {
        let change = |id: &str| {
            let raw = doc! { "_id": { "_data": "page-1" }, "documentKey": { "_id": id }, "fullDocument": { "_id": id } };
            let Some(Read::Change(c, _)) = read_change(&raw, now()) else {
                panic!("a change")
            };
            c.event_id("db", "c")
        };
        assert_ne!(change("a"), change("b"));
        assert_eq!(change("a"), change("a"), "the same on every reading");
        // With an operationType (MongoDB, DocumentDB) the id is the token's alone, as before.
        let raw = doc! { "_id": { "_data": "82ABC" }, "operationType": "insert", "documentKey": { "_id": "a" } };
        let Some(Read::Change(c, _)) = read_change(&raw, now()) else {
            panic!("a change")
        };
        assert_eq!(c.position, "82ABC");
    }

    #[test]
    fn entries_records_and_other_events_are_skipped_and_drops_end_the_stream() {
        let entry = doc! { "_id": { "_data": "x" }, "operationType": "insert", "documentKey": { "_id": 1 }, "fullDocument": { "_id": 1, store::ROOT: {} } };
        assert!(matches!(read_change(&entry, now()), Some(Read::Skip)));
        let index = doc! { "_id": { "_data": "x" }, "operationType": "createIndexes" };
        assert!(matches!(read_change(&index, now()), Some(Read::Skip)));
        let drop = doc! { "_id": { "_data": "x" }, "operationType": "drop" };
        assert!(matches!(read_change(&drop, now()), Some(Read::End(_))));
    }
}

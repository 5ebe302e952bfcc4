//! What Azure Cosmos DB for MongoDB (RU) answers, as far as public sources show, and which
//! commands each rule applies to.
//!
//! Sources, and how sure each part is:
//!
//! | rule | code / codeName | source |
//! | --- | --- | --- |
//! | throttled | 16500 `TooManyRequests` | Microsoft Learn, "Troubleshoot common issues in Azure Cosmos DB for MongoDB" (code and name); the errmsg layout `Error=16500, RetryAfterMs=<n>, Details='Response status code does not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: …; Reason: (…Request rate is large…)'` is copied from errors users posted, not from Microsoft docs |
//! | server-side retry gave up | 50 `ExceededTimeLimit` | Microsoft Learn, "Prevent rate-limiting errors" (60 s, code 50) and the troubleshooting table ("Retrying a write operation that has received this error may result in a duplicate write"); the errmsg `Request timed out. Retries due to rate limiting: True.` is from a user's report on Microsoft Q&A |
//! | transaction past 5 s | 2, "Transaction isn't active" | Microsoft Learn troubleshooting table (code 2; that page words it "isn't"). Errors users posted from real accounts say `Error=2, Details='Response status code does not indicate success: BadRequest (400); Substatus: 1101; …Reason: (Message: {"Errors":["Transaction is not active"]}…'`, arriving as a *write error* (`writeErrors[0].code == 2`) on insert/delete. The codeName (`BadValue`, MongoDB's name for 2) is a guess; so is the absence of a `TransientTransactionError` label (not documented either way) |
//! | TTL index on a field other than `_ts` | 67 `CannotCreateIndex` | Microsoft Learn, "Expire data with Azure Cosmos DB for MongoDB": a TTL index is an index on `_ts` with `expireAfterSeconds`. The code and wording of the refusal are **guessed**; code that copes with it must not depend on them |
//! | transaction on a sharded collection | 50841, "Multi-document transactions cannot be run in a sharded collection" | An error a Prisma user posted from a real RU 4.0 account (prisma/prisma#9566); Microsoft's feature-support pages say only that transactions are supported "within a single nonsharded collection". The codeName (`Location50841`, MongoDB's form for a numbered assertion) is **inferred**; so is that it comes on the transaction's first command touching the collection |
//! | no shard key in an insert's document | 61 `ShardKeyNotFound`, "document does not contain shard key" | Microsoft Learn troubleshooting table (61 ShardKeyNotFound: "The document in your request didn't contain the collection's shard key"); the errmsg is from an error users posted (microsoft/vscode-cosmosdb#1341, #393). Answered as a command error (**inferred**) |
//! | no shard key in an update / delete / findAndModify filter | 61, "query in command must target a single shard key" | The full reply a user posted (`{"ok": 0, "code": 61, "errmsg": "query in command must target a single shard key"}`, hpgrahsl/kafka-connect-mongodb#87; also microsoft/vscode-cosmosdb#1118 for a delete). That `$in` over several values counts as naming the key, and that multi-document updates need it too, are **inferred** |
//! | document over 2 MB | 16, `Error=16, Details='Response status code does not indicate success: RequestEntityTooLarge (413); …"Request size is too large"…'` | The limit is Microsoft Learn's (2 MB unless the 16 MB capability is on); the errmsg prefix is what Microsoft's own Fluid Framework matches on for Cosmos DB (its Mongo retry rules) and users posted. The codeName is a guess. RU compresses documents, so real accounts take somewhat more; the proxy counts BSON bytes |
//! | `customAction: "CreateCollection"` / `"GetCollection"` | `{ok: 1}`; `{database, collection, shardKeyDefinition: {<key>: "hashed"}, provisionedThroughput, maxContentLength: 2097152, ok: 1}` | Microsoft Learn, "MongoDB extension commands" (fields and the default output); `shardKeyDefinition`'s `"hashed"` and `maxContentLength` from GetCollection replies a user recorded. A missing collection's 26 `NamespaceNotFound` is **inferred** (the page only says a failure returns the default output, which it spells `errMsg`; drivers read `errmsg`, which the proxy sends) |
//! | second collection in a transaction | 2, as above | **Guessed.** Microsoft only says transactions are "not supported across collections". Frameworks that write two collections in one transaction (Payload CMS deletes, Mongock's change log) report exactly the code-2 "Transaction is not active" write error above, so the proxy answers the same |
//! | change stream not of RU's mandatory shape | 2 `BadValue` `Change stream must be followed by a match and then a project stage` | Microsoft Learn, "Change streams in Azure Cosmos DB's API for MongoDB" (`$match` on insert/update/replace, `$project` of `_id`/`fullDocument`/`ns`/`documentKey` and `fullDocument: "updateLookup"` are required); the text is from users' reports (rwynn/monstache#624); for a missing `fullDocument` the text is **guessed**. Database-level watch: 2 `BadValue` `Expected type string but found int` (MicrosoftDocs/azure-docs#52077). Output rules (no `operationType`/`updateDescription`, no deletes, throttled empty pages): [`crate::change_stream`] |
//!
//! [`TxnErrorStyle::NoSuchTransaction`] swaps the
//! two transaction errors for MongoDB's own shape (251 `NoSuchTransaction` with the
//! `TransientTransactionError` label), for code that wants the driver's retry loop to see them.

use bson::{Bson, Document, RawDocument, doc};

use crate::TxnErrorStyle;
use crate::wire::first_key;

/// Cosmos DB's throttling code ("request rate is large", HTTP 429 underneath).
pub const TOO_MANY_REQUESTS: i32 = 16500;
/// Cosmos DB's code when its server-side retry of throttled requests gave up after 60 s.
pub const EXCEEDED_TIME_LIMIT: i32 = 50;
/// Cosmos DB's code for a transaction that is no longer active (past 5 s, or refused).
pub const TRANSACTION_NOT_ACTIVE: i32 = 2;
/// MongoDB's code for an unknown or aborted transaction, used by
/// [`TxnErrorStyle::NoSuchTransaction`].
pub const NO_SUCH_TRANSACTION: i32 = 251;
/// MongoDB's code for an index that cannot be created, used for a refused TTL index.
pub const CANNOT_CREATE_INDEX: i32 = 67;
/// The error label that makes drivers retry a whole transaction.
pub const TRANSIENT_TRANSACTION_ERROR: &str = "TransientTransactionError";

/// Commands that write (the throttle's "writes only" scope), `commitTransaction` included.
const WRITE_COMMANDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "bulkWrite",
    "commitTransaction",
];
/// Commands that read data.
const READ_COMMANDS: &[&str] = &["find", "aggregate", "count", "distinct", "getMore"];
/// Commands whose value is the collection they touch (besides data commands).
const COLLECTION_VALUED: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "find",
    "aggregate",
    "count",
    "distinct",
    "create",
    "createIndexes",
    "listIndexes",
    "drop",
    "dropIndexes",
];
/// Commands answered in the `writeErrors` shape when a transaction error hits them.
const WRITE_ERROR_SHAPED: &[&str] = &["insert", "update", "delete"];

/// Which rule refused a command (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// 61: no shard key where one is needed.
    ShardKey,
    /// 16: a document over the limit.
    Size,
}

/// What the sharding and size rules found in one command, judged before the transaction rules
/// run (they decide what a refusal inside a transaction does). Filled in by
/// [`crate::sharding`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Verdict {
    /// The command is a data command on a sharded collection: a transaction may not run it.
    pub(crate) sharded: bool,
    /// Refuse the command: which rule, with which error.
    pub(crate) refusal: Option<(Rule, CosmosError)>,
}

/// The transaction fields of a command sent with `autocommit: false`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TxnRef {
    /// `lsid.id` bytes: the session's identity.
    pub(crate) lsid_id: Vec<u8>,
    /// The whole `lsid` document, echoed in injected `abortTransaction` commands.
    pub(crate) lsid: Document,
    /// `txnNumber`.
    pub(crate) txn_number: i64,
    /// Whether the command carries `startTransaction: true`.
    pub(crate) start: bool,
}

/// What the proxy needs to know about one command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandInfo {
    /// The command name (first key of the body).
    pub(crate) name: String,
    /// `db.collection` namespaces the command touches.
    pub(crate) namespaces: Vec<String>,
    /// Present when the command is part of a multi-document transaction.
    pub(crate) txn: Option<TxnRef>,
    /// A `createIndexes` asking for a TTL index (`expireAfterSeconds`) on anything but
    /// `{_ts: 1}`, which Cosmos DB RU does not offer.
    pub(crate) ttl_on_custom_field: bool,
    /// What the sharding and size rules found ([`crate::sharding`]); set by the connection
    /// before the command is decided.
    pub(crate) verdict: Verdict,
}

impl CommandInfo {
    /// Reads a command body. Unknown shapes yield an empty name, which no rule matches.
    pub(crate) fn inspect(body: &RawDocument) -> Self {
        let name = first_key(body).unwrap_or_default().to_owned();
        let db = body.get_str("$db").ok();
        let mut namespaces = Vec::new();
        if let Some(db) = db {
            let collection = if name == "getMore" {
                body.get_str("collection").ok()
            } else if COLLECTION_VALUED.contains(&name.as_str()) {
                body.get_str(&name).ok()
            } else {
                None
            };
            if let Some(collection) = collection {
                namespaces.push(format!("{db}.{collection}"));
            }
        }
        if name == "bulkWrite" {
            // MongoDB 8.0's cross-namespace bulk write lists its namespaces in `nsInfo`.
            if let Ok(ns_info) = body.get_array("nsInfo") {
                for entry in ns_info.into_iter().flatten() {
                    if let Some(ns) = entry.as_document().and_then(|d| d.get_str("ns").ok())
                        && !namespaces.iter().any(|known| known == ns)
                    {
                        namespaces.push(ns.to_owned());
                    }
                }
            }
        }
        Self {
            txn: txn_ref(body),
            ttl_on_custom_field: name == "createIndexes" && asks_ttl_on_custom_field(body),
            verdict: Verdict::default(),
            name,
            namespaces,
        }
    }

    /// Whether the command writes (throttle scope "writes only").
    pub(crate) fn is_write(&self) -> bool {
        WRITE_COMMANDS.contains(&self.name.as_str())
    }

    /// Whether the command reads or writes data (the default throttle scope). Handshake,
    /// monitoring, authentication, session and DDL commands are not data commands.
    pub(crate) fn is_data(&self) -> bool {
        self.is_write() || READ_COMMANDS.contains(&self.name.as_str())
    }
}

fn asks_ttl_on_custom_field(body: &RawDocument) -> bool {
    let Ok(indexes) = body.get_array("indexes") else {
        return false;
    };
    indexes
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_document())
        .filter(|i| i.get("expireAfterSeconds").ok().flatten().is_some())
        .any(|i| {
            let keys: Vec<&str> = i
                .get_document("key")
                .map(|k| k.into_iter().flatten().map(|(name, _)| name).collect())
                .unwrap_or_default();
            keys != ["_ts"]
        })
}

fn txn_ref(body: &RawDocument) -> Option<TxnRef> {
    if body.get_bool("autocommit").ok() != Some(false) {
        return None;
    }
    let lsid = body.get_document("lsid").ok()?;
    let lsid_id = lsid.get_binary("id").ok()?.bytes.to_vec();
    // Drivers send an Int64; accept an Int32 from hand-written commands too.
    let txn_number = body
        .get_i64("txnNumber")
        .ok()
        .or_else(|| body.get_i32("txnNumber").ok().map(i64::from))?;
    Some(TxnRef {
        lsid_id,
        lsid: Document::try_from(lsid).ok()?,
        txn_number,
        start: body.get_bool("startTransaction").unwrap_or(false),
    })
}

/// Whether a reply body says `ok: 1`.
pub(crate) fn reply_is_ok(body: &RawDocument) -> bool {
    match body.get("ok") {
        Ok(Some(value)) => match value.to_raw_bson() {
            bson::RawBson::Double(v) => v == 1.0,
            bson::RawBson::Int32(v) => v == 1,
            bson::RawBson::Int64(v) => v == 1,
            bson::RawBson::Boolean(v) => v,
            _ => false,
        },
        _ => false,
    }
}

/// An error the proxy answers with instead of `mongod`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CosmosError {
    /// Server error code.
    pub(crate) code: i32,
    /// Server error code name.
    pub(crate) code_name: &'static str,
    /// Message text.
    pub(crate) errmsg: String,
    /// Error labels (top-level shape only).
    pub(crate) labels: Vec<&'static str>,
    /// Answer insert/update/delete with `ok: 1` and `writeErrors[0]` instead of `ok: 0`.
    pub(crate) as_write_error: bool,
}

impl CosmosError {
    /// Error 16500 with the `RetryAfterMs` hint in Cosmos DB's text layout.
    pub(crate) fn too_many_requests(retry_after_ms: u64, activity_id: &str) -> Self {
        Self {
            code: TOO_MANY_REQUESTS,
            code_name: "TooManyRequests",
            errmsg: format!(
                "Error=16500, RetryAfterMs={retry_after_ms}, Details='Response status code does \
                 not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: \
                 {activity_id}; Reason: (\r\nErrors : [\r\n  \"Request rate is large. More \
                 Request Units may be needed, so no changes were made. Please retry this request \
                 later. Learn more: http://aka.ms/cosmosdb-error-429\"\r\n]\r\n);"
            ),
            labels: Vec::new(),
            as_write_error: false,
        }
    }

    /// Error 50: the server-side retry of a throttled request gave up.
    pub(crate) fn exceeded_time_limit() -> Self {
        Self {
            code: EXCEEDED_TIME_LIMIT,
            code_name: "ExceededTimeLimit",
            errmsg: "Request timed out. Retries due to rate limiting: True.".to_owned(),
            labels: Vec::new(),
            as_write_error: false,
        }
    }

    /// The refusal of a TTL index on a field other than `_ts`.
    pub(crate) fn ttl_on_custom_field() -> Self {
        Self {
            code: CANNOT_CREATE_INDEX,
            code_name: "CannotCreateIndex",
            errmsg: "The expireAfterSeconds option is supported on the '_ts' field only."
                .to_owned(),
            labels: Vec::new(),
            as_write_error: false,
        }
    }

    /// The error for a command of a transaction that is no longer active (expired, refused
    /// for a second collection, or aborted after a throttled command).
    pub(crate) fn transaction_not_active(
        style: TxnErrorStyle,
        as_write_error: bool,
        activity_id: &str,
    ) -> Self {
        match style {
            TxnErrorStyle::Cosmos => Self {
                code: TRANSACTION_NOT_ACTIVE,
                code_name: "BadValue",
                errmsg: format!(
                    "Error=2, Details='Response status code does not indicate success: \
                     BadRequest (400); Substatus: 1101; ActivityId: {activity_id}; Reason: \
                     (Message: {{\"Errors\":[\"Transaction is not active\"]}}\r\nActivityId: \
                     {activity_id});'"
                ),
                labels: Vec::new(),
                as_write_error,
            },
            TxnErrorStyle::NoSuchTransaction => Self {
                code: NO_SUCH_TRANSACTION,
                code_name: "NoSuchTransaction",
                errmsg: format!(
                    "Transaction isn't active (Cosmos DB RU rule; ActivityId: {activity_id})"
                ),
                labels: vec![TRANSIENT_TRANSACTION_ERROR],
                as_write_error: false,
            },
        }
    }

    /// The reply body for `command_name`.
    pub(crate) fn reply(&self, command_name: &str) -> Document {
        if self.as_write_error && WRITE_ERROR_SHAPED.contains(&command_name) {
            let mut reply = doc! {
                "n": 0,
                "writeErrors": [{ "index": 0, "code": self.code, "errmsg": &self.errmsg }],
            };
            if command_name == "update" {
                reply.insert("nModified", 0);
            }
            reply.insert("ok", 1.0);
            return reply;
        }
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": &self.errmsg,
            "code": self.code,
            "codeName": self.code_name,
        };
        if !self.labels.is_empty() {
            let labels: Vec<Bson> = self.labels.iter().map(|l| Bson::from(*l)).collect();
            reply.insert("errorLabels", labels);
        }
        reply
    }
}

/// The `abortTransaction` command the proxy sends upstream on a client's behalf.
pub(crate) fn abort_command(lsid: &Document, txn_number: i64) -> Document {
    doc! {
        "abortTransaction": 1,
        "lsid": lsid.clone(),
        "txnNumber": txn_number,
        "autocommit": false,
        "$db": "admin",
    }
}

#[cfg(test)]
mod tests {
    use bson::{Binary, spec::BinarySubtype};

    use super::*;

    fn raw(doc: &Document) -> bson::RawDocumentBuf {
        bson::RawDocumentBuf::from_document(doc).unwrap()
    }

    fn lsid() -> Document {
        doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] } }
    }

    #[test]
    fn namespaces_come_from_the_command_value_or_get_more_collection() {
        let insert = raw(&doc! { "insert": "orders", "ordered": true, "$db": "shop" });
        let info = CommandInfo::inspect(&insert);
        assert_eq!(info.name, "insert");
        assert_eq!(info.namespaces, ["shop.orders"]);
        assert!(info.is_write() && info.is_data());

        let get_more = raw(&doc! { "getMore": 5_i64, "collection": "orders", "$db": "shop" });
        assert_eq!(CommandInfo::inspect(&get_more).namespaces, ["shop.orders"]);

        let db_aggregate = raw(&doc! { "aggregate": 1, "pipeline": [], "$db": "admin" });
        assert!(CommandInfo::inspect(&db_aggregate).namespaces.is_empty());

        let ping = raw(&doc! { "ping": 1, "$db": "admin" });
        let info = CommandInfo::inspect(&ping);
        assert!(!info.is_data() && info.namespaces.is_empty());
    }

    #[test]
    fn only_autocommit_false_commands_are_transactional() {
        let retryable_write =
            raw(&doc! { "insert": "c", "lsid": lsid(), "txnNumber": 3_i64, "$db": "d" });
        assert!(CommandInfo::inspect(&retryable_write).txn.is_none());

        let in_txn = raw(&doc! {
            "insert": "c", "lsid": lsid(), "txnNumber": 3_i64,
            "startTransaction": true, "autocommit": false, "$db": "d",
        });
        let txn = CommandInfo::inspect(&in_txn).txn.unwrap();
        assert_eq!(txn.lsid_id, vec![7; 16]);
        assert_eq!(txn.txn_number, 3);
        assert!(txn.start);
        assert_eq!(txn.lsid, lsid());
    }

    #[test]
    fn throttle_errors_carry_retry_after_ms_in_cosmos_layout() {
        let err = CosmosError::too_many_requests(12, "00000000-0000-0000-0000-000000000000");
        let reply = err.reply("insert");
        assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
        assert_eq!(reply.get_i32("code").unwrap(), 16500);
        assert_eq!(reply.get_str("codeName").unwrap(), "TooManyRequests");
        let msg = reply.get_str("errmsg").unwrap();
        assert!(
            msg.starts_with("Error=16500, RetryAfterMs=12, Details='"),
            "{msg}"
        );
        assert!(
            msg.contains("TooManyRequests (429); Substatus: 3200"),
            "{msg}"
        );
        assert!(!reply.contains_key("errorLabels"));
    }

    #[test]
    fn transaction_errors_are_write_errors_on_writes_and_command_errors_elsewhere() {
        let err = CosmosError::transaction_not_active(TxnErrorStyle::Cosmos, true, "a");
        let insert = err.reply("insert");
        assert_eq!(insert.get_f64("ok").unwrap(), 1.0);
        let write_error = insert.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(write_error.get_i32("code").unwrap(), 2);
        assert!(
            write_error
                .get_str("errmsg")
                .unwrap()
                .contains("Transaction is not active")
        );
        let commit = err.reply("commitTransaction");
        assert_eq!(commit.get_f64("ok").unwrap(), 0.0);
        assert_eq!(commit.get_i32("code").unwrap(), 2);

        let mongo =
            CosmosError::transaction_not_active(TxnErrorStyle::NoSuchTransaction, true, "a")
                .reply("insert");
        assert_eq!(mongo.get_i32("code").unwrap(), 251);
        assert_eq!(
            mongo.get_array("errorLabels").unwrap()[0].as_str(),
            Some(TRANSIENT_TRANSACTION_ERROR)
        );
    }

    #[test]
    fn ok_is_read_in_any_numeric_type() {
        assert!(reply_is_ok(&raw(&doc! { "ok": 1.0 })));
        assert!(reply_is_ok(&raw(&doc! { "ok": 1 })));
        assert!(!reply_is_ok(&raw(&doc! { "ok": 0.0, "code": 251 })));
        assert!(!reply_is_ok(&raw(&doc! { "n": 1 })));
    }
}

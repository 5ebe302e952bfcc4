//! Cosmos DB for MongoDB RU's extension commands (`customAction`), as far as code under test
//! uses them to recognise the server: `{customAction: "GetCollection", collection}` is
//! answered by the proxy with the documented output `{database, collection,
//! provisionedThroughput, ok: 1}` (Microsoft Learn, "Use MongoDB extension commands to manage
//! data stored in Azure Cosmos DB for MongoDB", "Get collection"; the throughput is the
//! documented minimum, 400 RU/s). The collection's existence is not checked. Other custom
//! actions go to `mongod`, which answers `CommandNotFound`.

use bson::{Document, RawDocument, doc};

/// The proxy's answer to a `customAction` it imitates; `None` for every other command.
pub(crate) fn answer(name: &str, body: &RawDocument) -> Option<Document> {
    if name != "customAction" || body.get_str("customAction").ok()? != "GetCollection" {
        return None;
    }
    let collection = body.get_str("collection").ok()?;
    let database = body.get_str("$db").unwrap_or("test");
    Some(doc! {
        "database": database,
        "collection": collection,
        "provisionedThroughput": 400,
        "ok": 1,
    })
}

#[cfg(test)]
mod tests {
    use bson::RawDocumentBuf;

    use super::*;

    #[test]
    fn get_collection_is_answered_like_cosmos_ru_and_nothing_else_is() {
        let ask = |d: Document| {
            answer(
                crate::wire::first_key(&RawDocumentBuf::from_document(&d).unwrap())
                    .unwrap_or_default(),
                &RawDocumentBuf::from_document(&d).unwrap(),
            )
        };
        assert_eq!(
            ask(doc! { "customAction": "GetCollection", "collection": "c", "$db": "d" }),
            Some(
                doc! { "database": "d", "collection": "c", "provisionedThroughput": 400, "ok": 1 }
            )
        );
        assert_eq!(
            ask(doc! { "customAction": "GetChangeStreamTokens", "collection": "c", "$db": "d" }),
            None
        );
        assert_eq!(ask(doc! { "find": "c", "$db": "d" }), None);
    }
}

//! What `handler outbox doctor` asks the entries' collection: which indexes exist, and which
//! one the claim query really uses (the server's `explain`). Read-only.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::OutboxStore;
use super::claim::due_by;
use super::fields::claim_order;
use crate::db::{DbError, error_code};

/// MongoDB's `NamespaceNotFound`: the collection does not exist (yet).
const NAMESPACE_NOT_FOUND: i32 = 26;

/// One index of the entries' collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    /// Its name.
    pub name: String,
    /// Its `expireAfterSeconds`, when it is a TTL index.
    pub expire_after_secs: Option<i64>,
}

/// How the server runs the claim query, from its winning plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPlan {
    /// An index scan over these indexes, with no in-memory sort.
    Indexed(Vec<String>),
    /// A scan of the whole collection, or an in-memory sort: slow as the outbox grows (and
    /// refused by Cosmos DB, which does not sort on unindexed fields).
    Scan(String),
    /// The server's explain output has a shape this does not know (Cosmos DB RU).
    Unknown,
}

impl OutboxStore {
    /// The collection's indexes; `None` when the collection does not exist yet.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn indexes(&self) -> Result<Option<Vec<IndexInfo>>, DbError> {
        let models = match self.entries.list_indexes().await {
            Ok(cursor) => cursor.try_collect::<Vec<_>>().await?,
            Err(e) if error_code(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(
            models
                .into_iter()
                .filter_map(|m| {
                    let options = m.options?;
                    Some(IndexInfo {
                        name: options.name?,
                        expire_after_secs: options
                            .expire_after
                            .and_then(|d| i64::try_from(d.as_secs()).ok()),
                    })
                })
                .collect(),
        ))
    }

    /// Asks the server how it would run the claim's first query (due entries, oldest first,
    /// `limit` of them) at `now`, without running it.
    ///
    /// # Errors
    /// When the database fails or refuses `explain`.
    pub async fn explain_claim(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<ClaimPlan, DbError> {
        let database = self.entries.client().database(&self.entries.namespace().db);
        let answer = database
            .run_command(doc! {
                "explain": {
                    "find": self.entries.name(),
                    "filter": due_by(now),
                    "sort": claim_order(),
                    "limit": i64::from(limit),
                },
                "verbosity": "queryPlanner",
            })
            .await?;
        let Some(plan) = answer
            .get_document("queryPlanner")
            .ok()
            .and_then(|p| p.get_document("winningPlan").ok())
        else {
            return Ok(ClaimPlan::Unknown);
        };
        let mut stages = Vec::new();
        let mut indexes = Vec::new();
        walk(plan, &mut stages, &mut indexes);
        if let Some(bad) = stages.iter().find(|s| *s == "COLLSCAN" || *s == "SORT") {
            return Ok(ClaimPlan::Scan(bad.clone()));
        }
        if indexes.is_empty() {
            return Ok(ClaimPlan::Unknown);
        }
        Ok(ClaimPlan::Indexed(indexes))
    }
}

/// Collects the stages and index names of a plan tree (`inputStage`, `inputStages`, and the
/// `queryPlan` that newer servers nest it in).
fn walk(plan: &Document, stages: &mut Vec<String>, indexes: &mut Vec<String>) {
    if let Ok(stage) = plan.get_str("stage") {
        stages.push(stage.to_owned());
    }
    if let Ok(name) = plan.get_str("indexName")
        && !indexes.iter().any(|i| i == name)
    {
        indexes.push(name.to_owned());
    }
    for key in ["inputStage", "queryPlan"] {
        if let Ok(child) = plan.get_document(key) {
            walk(child, stages, indexes);
        }
    }
    if let Ok(children) = plan.get_array("inputStages") {
        for child in children {
            if let Bson::Document(child) = child {
                walk(child, stages, indexes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_tree_gives_its_stages_and_indexes() {
        let plan = doc! {
            "queryPlan": { "stage": "LIMIT", "inputStage": {
                "stage": "FETCH",
                "inputStage": { "stage": "IXSCAN", "indexName": "outbox_claim" },
            } },
        };
        let (mut stages, mut indexes) = (Vec::new(), Vec::new());
        walk(&plan, &mut stages, &mut indexes);
        assert_eq!(stages, ["LIMIT", "FETCH", "IXSCAN"]);
        assert_eq!(indexes, ["outbox_claim"]);
    }
}

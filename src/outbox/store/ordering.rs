//! `OUTBOX_ORDERING=subject`: a claimed entry waits while an older unpublished entry of its
//! subject, outside the claim, has not gone yet.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, doc};
use mongodb::options::Hint;
use serde::Deserialize;

use super::OutboxStore;
use super::claim::{Claim, ClaimToken, fenced};
use super::entry::{Row, after, bson_time};
use super::fields::{SUBJECT_INDEX, field};
use crate::db::DbError;
use crate::domain::EventId;
use crate::outbox::{ClaimedEntry, EntryStatus};

/// How soon a subject held up by an entry another claim is publishing is looked at again.
const RECHECK_AFTER: chrono::Duration = chrono::Duration::seconds(1);

impl OutboxStore {
    /// `OUTBOX_ORDERING=subject`: takes out of `claim` every entry that an older unpublished
    /// entry of its subject (pending, or dead — a dead entry parks its subject until requeued
    /// or skipped) outside this claim must precede, and gives those back: due again when the
    /// blocker may have moved on (a dead blocker: after `parked_for`). Entries of one subject
    /// inside one claim may go together: they are published in one request, which Event Grid
    /// accepts or refuses whole. Returns how many were deferred.
    ///
    /// # Errors
    /// When the database fails; the deferred entries then stay claimed until the lease runs
    /// out, which only delays them.
    pub async fn defer_blocked(
        &self,
        claim: &mut Claim,
        now: DateTime<Utc>,
        parked_for: Duration,
    ) -> Result<u64, DbError> {
        let subjects: BTreeSet<&str> = claim
            .entries
            .iter()
            .map(|e| e.event.subject.as_str())
            .collect();
        if subjects.is_empty() {
            return Ok(0);
        }
        let blockers = self.blockers(subjects, claim.token, now).await?;
        let deferred = take_out_blocked(&mut claim.entries, &blockers, now, parked_for);
        let mut n = 0;
        for (id, again) in deferred {
            n += self
                .fenced_update(
                    fenced(claim.token, &[id]),
                    doc! { "$set": { field::DUE_AT: again, field::LEASE_TOKEN: Bson::Null } },
                )
                .await?;
        }
        Ok(n)
    }

    /// The oldest unpublished (pending or dead) entry of each of `subjects` outside the claim
    /// `token`.
    async fn blockers(
        &self,
        subjects: BTreeSet<&str>,
        token: ClaimToken,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Blocker>, DbError> {
        let rows: Vec<Row<BlockerState>> = self
            .entries
            .clone_with_type::<Row<BlockerState>>()
            .find(doc! {
                field::SUBJECT: { "$in": subjects.into_iter().collect::<Vec<_>>() },
                field::STATUS: { "$in": [EntryStatus::Pending.as_str(), EntryStatus::Dead.as_str()] },
                field::LEASE_TOKEN: { "$ne": token.bson() },
            })
            .projection(doc! {
                field::SUBJECT: 1, field::STATUS: 1, field::DUE_AT: 1, field::CREATED_AT: 1,
                field::LEASE_TOKEN: 1, field::SEQUENCE: 1,
            })
            // Named: for a claim of many subjects `mongod`'s planner otherwise picks the claim
            // index (`status` first) and reads every pending entry of the backlog.
            .hint(Hint::Name(SUBJECT_INDEX.to_owned()))
            .await?
            .try_collect()
            .await?;
        Ok(oldest_per_subject(rows, now))
    }
}

/// Where an entry stands among the changes of its subject: by when it was written, then by
/// its sequence (0 without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    created_ms: i64,
    sequence: i64,
}

impl Position {
    fn of(e: &ClaimedEntry) -> Self {
        Self {
            created_ms: e.event.event_time.timestamp_millis(),
            sequence: i64::try_from(e.event.sequence.unwrap_or(0)).unwrap_or(i64::MAX),
        }
    }
}

/// The oldest unpublished entry of a subject outside the claim: later entries of the subject
/// wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blocker {
    position: Position,
    /// A dead blocker parks its subject until an operator acts.
    is_dead: bool,
    /// When to look again for a live blocker: now if another claim is publishing it, else its
    /// `due_at` (the end of its backoff).
    due: bson::DateTime,
}

/// A possible blocker, as read.
#[derive(Deserialize)]
struct BlockerState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    due_at: Option<bson::DateTime>,
    #[serde(default)]
    created_at: Option<bson::DateTime>,
    /// `None` when missing or null: no claim holds it.
    #[serde(default)]
    lease_token: Option<Bson>,
    event: BlockerEvent,
}

#[derive(Deserialize)]
struct BlockerEvent {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    sequence: Option<i64>,
}

/// Per subject, the oldest of `rows` (the first read wins a tie).
fn oldest_per_subject(
    rows: Vec<Row<BlockerState>>,
    now: DateTime<Utc>,
) -> HashMap<String, Blocker> {
    let mut oldest: HashMap<String, Blocker> = HashMap::new();
    for row in rows {
        let state = row.state;
        let blocker = Blocker {
            position: Position {
                created_ms: state.created_at.map_or(0, |t| t.timestamp_millis()),
                sequence: state.event.sequence.unwrap_or(0),
            },
            is_dead: state.status == EntryStatus::Dead.as_str(),
            // A blocker held by another claim is being published now: look again soon. One
            // backing off is due at its `due_at`: look again then.
            due: match (state.lease_token, state.due_at) {
                (None, Some(due_at)) => due_at,
                _ => bson_time(now),
            },
        };
        let slot = oldest.entry(state.event.subject).or_insert(blocker);
        if blocker.position < slot.position {
            *slot = blocker;
        }
    }
    oldest
}

/// Removes from `entries` those an older blocker of their subject must precede; returns them
/// with when each is due again.
fn take_out_blocked(
    entries: &mut Vec<ClaimedEntry>,
    blockers: &HashMap<String, Blocker>,
    now: DateTime<Utc>,
    parked_for: Duration,
) -> Vec<(EventId, bson::DateTime)> {
    let mut deferred = Vec::new();
    entries.retain(|e| {
        let Some(blocker) = blockers.get(&e.event.subject) else {
            return true;
        };
        if blocker.position >= Position::of(e) {
            return true;
        }
        let again = if blocker.is_dead {
            bson_time(after(now, parked_for))
        } else {
            bson_time(now + RECHECK_AFTER).max(blocker.due)
        };
        deferred.push((e.event.id, again));
        false
    });
    deferred
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::domain::OutboxEvent;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn entry(subject: &str, version: u64, written_ms: i64) -> ClaimedEntry {
        ClaimedEntry {
            event: OutboxEvent::new(
                EventId::for_change("db", "c", subject, "l", version),
                subject.into(),
                "T".into(),
                "1".into(),
                RawValue::from_string("{}".into()).unwrap(),
                at(written_ms),
            ),
            attempts: 0,
        }
    }

    fn blocker(created_ms: i64, is_dead: bool, due_ms: i64) -> Blocker {
        Blocker {
            position: Position {
                created_ms,
                sequence: 0,
            },
            is_dead,
            due: bson::DateTime::from_millis(due_ms),
        }
    }

    #[test]
    fn only_entries_after_their_subjects_blocker_are_taken_out() {
        let mut entries = vec![entry("a", 1, 10), entry("a", 2, 30), entry("b", 1, 30)];
        let blockers = HashMap::from([("a".to_owned(), blocker(20, false, 0))]);
        let now = at(1_000);

        let deferred = take_out_blocked(&mut entries, &blockers, now, Duration::from_secs(60));

        assert_eq!(deferred.len(), 1);
        assert_eq!(deferred[0].0, entry("a", 2, 30).event.id);
        let left: Vec<_> = entries.iter().map(|e| e.event.id).collect();
        assert_eq!(
            left,
            [entry("a", 1, 10).event.id, entry("b", 1, 30).event.id]
        );
    }

    #[test]
    fn a_deferred_entry_is_due_again_after_its_blocker() {
        let now = at(1_000);
        let parked_for = Duration::from_secs(60);
        let cases = [
            // A live blocker due soon: look again in a second.
            (blocker(20, false, 1_500), 2_000),
            // A live blocker backing off: look again when it is due.
            (blocker(20, false, 9_000), 9_000),
            // A dead blocker: after `parked_for`.
            (blocker(20, true, 0), 61_000),
        ];
        for (b, due_ms) in cases {
            let mut entries = vec![entry("a", 2, 30)];
            let blockers = HashMap::from([("a".to_owned(), b)]);

            let deferred = take_out_blocked(&mut entries, &blockers, now, parked_for);

            assert_eq!(deferred[0].1.timestamp_millis(), due_ms, "{b:?}");
        }
    }

    #[test]
    fn the_oldest_row_of_a_subject_is_its_blocker_and_a_leased_one_is_due_now() {
        let row = |created_ms: i64, status: &str, leased: bool| Row {
            id: None,
            state: BlockerState {
                status: status.into(),
                due_at: Some(bson::DateTime::from_millis(5_000)),
                created_at: Some(bson::DateTime::from_millis(created_ms)),
                lease_token: leased.then(|| Bson::String("t".into())),
                event: BlockerEvent {
                    subject: "a".into(),
                    sequence: None,
                },
            },
        };
        let now = at(1_000);

        let oldest = oldest_per_subject(
            vec![
                row(30, "pending", false),
                row(10, "dead", true),
                row(20, "pending", false),
            ],
            now,
        );

        assert_eq!(oldest["a"], blocker(10, true, 1_000));
        let unleased = oldest_per_subject(vec![row(10, "pending", false)], now);
        assert_eq!(unleased["a"], blocker(10, false, 5_000));
    }
}

//! The hand-off from a committed write to this process's publisher (the push path).
//!
//! A write that will be pushed inserts its outbox entry already *held* for this process: its
//! `lease_token` is this process's [`Handoff`] token and its `due_at` the end of one lease
//! ([`Hold`]). After the commit, the write hands the event over here and answers its client at
//! once; the relay's push loop ([`crate::relay::Relay::push`]) takes it from the [`Inbox`],
//! publishes it and marks it published with one update fenced on the token.
//!
//! Nothing depends on the hand-off arriving: if the queue is full, or the process dies between
//! the commit and the publish, the entry stays pending and becomes due when its hold ends; the
//! sweeper (the ordinary drain) then takes it. No other relay claims a held entry before that,
//! so two processes never push the same event.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::domain::OutboxEvent;
use crate::outbox::store::{ClaimToken, Hold};

/// Events waiting for the push loop at most; past this a write's event is left to the sweeper
/// (it is published when its hold ends) rather than making the write wait.
pub const QUEUE_CAPACITY: usize = 10_000;

/// One committed event, handed to the publisher.
#[derive(Debug)]
pub struct Pushed {
    /// The event, exactly as its entry stores it.
    pub event: OutboxEvent,
    /// The hold its entry was written with.
    pub hold: Hold,
    /// Told once the event is published and recorded; dropped unsent otherwise (the write
    /// that waits for it, `OUTBOX_WRITE_WAIT_MS`, then answers "not yet").
    pub published: oneshot::Sender<()>,
}

/// What a write may wait on: resolves once its pushed event is published and recorded.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<()>);

/// The writing side of the hand-off, kept by the documents use case. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    token: ClaimToken,
    lease: Duration,
    /// `OUTBOX_WRITE_WAIT_MS`: how long a write waits for its own publish (zero: not at all).
    wait: Duration,
    queue: mpsc::Sender<Pushed>,
}

/// The publishing side: the push loop receives from it.
#[derive(Debug)]
pub struct Inbox {
    /// The token every held entry of this process carries.
    pub token: ClaimToken,
    /// The events, in commit order.
    pub queue: mpsc::Receiver<Pushed>,
}

/// A hand-off whose holds last `lease` (the relay's `OUTBOX_LEASE_SECS`, so that a pushed
/// event's publish has the same time as a claimed one's), and whose writes wait up to `wait`
/// for their own publish (`OUTBOX_WRITE_WAIT_MS`; zero: they answer at once).
#[must_use]
pub fn channel(lease: Duration, wait: Duration) -> (Handoff, Inbox) {
    let token = ClaimToken::new();
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (
        Handoff {
            token,
            lease,
            wait,
            queue,
        },
        Inbox {
            token,
            queue: receiver,
        },
    )
}

impl Handoff {
    /// The hold for an entry written now.
    #[must_use]
    pub fn hold(&self) -> Hold {
        let now = Utc::now();
        let until = chrono::Duration::from_std(self.lease)
            .ok()
            .and_then(|lease| now.checked_add_signed(lease))
            .unwrap_or(now);
        Hold {
            token: self.token,
            until,
        }
    }

    /// Hands a committed event to the publisher without waiting. When the queue is full (the
    /// topic is slower than the writes) or the push loop has stopped, the event is left to the
    /// sweeper: it is published when its hold ends (its receipt then never resolves).
    pub fn kick(&self, event: OutboxEvent, hold: Hold) -> Receipt {
        let id = event.id;
        let (published, receipt) = oneshot::channel();
        let pushed = Pushed {
            event,
            hold,
            published,
        };
        if let Err(e) = self.queue.try_send(pushed) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the push queue is full",
                mpsc::error::TrySendError::Closed(_) => "the push loop has stopped",
            };
            tracing::warn!(
                event.id = %id,
                reason = why,
                "An event was not pushed; the sweeper publishes it when its hold ends"
            );
        }
        Receipt(receipt)
    }

    /// Waits up to `OUTBOX_WRITE_WAIT_MS` for a kicked event's publish: `Some(true)` when it
    /// was published and recorded in time, `Some(false)` when not (yet: the push failed, or
    /// was slower than the wait; the sweeper owns it then), `None` when writes do not wait.
    pub async fn wait(&self, receipt: Receipt) -> Option<bool> {
        if self.wait.is_zero() {
            return None;
        }
        Some(matches!(
            tokio::time::timeout(self.wait, receipt.0).await,
            Ok(Ok(()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kicked_event_arrives_with_its_hold_and_the_shared_token() {
        let (handoff, mut inbox) = channel(Duration::from_secs(60), Duration::ZERO);
        let hold = handoff.hold();
        assert_eq!(hold.token, inbox.token);
        let ahead = hold.until - Utc::now();
        assert!(ahead > chrono::Duration::seconds(59) && ahead <= chrono::Duration::seconds(60));

        let event = crate::domain::OutboxEvent::new(
            crate::domain::EventId::for_change("d", "c", "1", "l", 1),
            "c/1".into(),
            "T".into(),
            "1.0".into(),
            serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            Utc::now(),
        );
        let receipt = handoff.kick(event.clone(), hold);
        let pushed = inbox.queue.recv().await.unwrap();
        assert_eq!(pushed.event.id, event.id);
        assert_eq!(pushed.hold, hold);
        assert_eq!(
            handoff.wait(receipt).await,
            None,
            "writes do not wait by default"
        );
    }

    #[tokio::test]
    async fn a_waiting_write_learns_whether_its_event_was_published_in_time() {
        let (handoff, mut inbox) = channel(Duration::from_secs(60), Duration::from_secs(5));
        let event = |n| {
            crate::domain::OutboxEvent::new(
                crate::domain::EventId::for_change("d", "c", "1", "l", n),
                "c/1".into(),
                "T".into(),
                "1.0".into(),
                serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                Utc::now(),
            )
        };
        let receipt = handoff.kick(event(1), handoff.hold());
        let pushed = inbox.queue.recv().await.unwrap();
        pushed.published.send(()).unwrap();
        assert_eq!(handoff.wait(receipt).await, Some(true));

        let receipt = handoff.kick(event(2), handoff.hold());
        drop(inbox.queue.recv().await.unwrap());
        assert_eq!(
            handoff.wait(receipt).await,
            Some(false),
            "a push that did not publish answers at once, without the whole wait"
        );
    }

    #[test]
    fn a_lease_too_long_to_add_holds_until_now_rather_than_panicking() {
        let (handoff, _inbox) = channel(Duration::MAX, Duration::ZERO);
        let hold = handoff.hold();
        assert!(hold.until <= Utc::now());
    }
}

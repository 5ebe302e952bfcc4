//! The chaos suite: the outbox's promise under crashes, restarts and Event Grid outages.
//!
//! **The promise.** Every committed change is published at least once; nothing is published
//! for a change that did not commit; duplicates are limited to requests whose outcome was
//! unknown; one bad event never blocks the others — on one instance or many.
//!
//! Every scenario drives real writes through the HTTP API of real `handler` processes (the
//! host's envelopes through the harness, or raw forwarded requests, alternately), makes faults
//! happen meanwhile (SIGKILL of the handler, SIGKILL of `mongod`, a topic answering 503 or 429,
//! responses dropped after the events were accepted, a poison event, slow answers, several
//! relays, replayed timer occurrences), then drains to completion with every fault cleared and
//! checks a **ledger** ([`ledger`]):
//!
//! - **committed** = the business documents actually in the database after the run, each
//!   mapped to its event id (`EventId::for_change(db, collection, _id, _meta.lineage,
//!   _meta.version)`); the outbox entries must be exactly these ids (a document without its
//!   entry, or an entry without its document, is a half write);
//! - every `201` must be committed, with the `eventId` it answered; a `4xx` or a request that
//!   was never sent (connection refused) must have left nothing; a write whose outcome the
//!   client could not know (client timeout, connection killed, `5xx`) may be committed or
//!   absent, never half, and if committed it is held to the same rules as a `201`;
//! - **lost** = committed ids the receiver never accepted (poison events the scenario planted
//!   are expected dead-lettered instead, and checked to be so);
//! - **orphaned** = accepted ids that are not committed;
//! - **duplicated** = ids accepted more than once; each must be **allowed** (below).
//!
//! # When a duplicate is allowed
//!
//! Deliveries of one id are causally ordered: a claim is exclusive, the next claim of the same
//! entry comes only after the previous one was recorded or its lease ran out, and quick retries
//! inside a claim are sequential. So the receiver's request sequence numbers
//! ([`eventgrid_receiver::RequestRecord::seq`], [`eventgrid_receiver::RecordedEvent::request`])
//! order the deliveries of an id, and a relay may send an id again only because the outcome of
//! an earlier send was unknown to it or could not be recorded. The rule: **every delivery of an
//! id except its last must be explained**; the delivery is explained when
//!
//! 1. its request ended `accepted_then_dropped` (the receiver recorded the events, then closed
//!    the connection without an answer) — read from the receiver's request records;
//! 2. its request was decided inside a **slow window**: the test notes the receiver's request
//!    high-water mark (`stats().requests`, which is the last `seq`) before it sets a latency at
//!    or above the publish timeout, and again a settle period after it clears it; every request
//!    decided in between may have been answered too late. The window is widened on both ends
//!    (latency is taken when a request arrives, its `seq` when its body has been read), so it
//!    may over-explain a request at its edges, never under-explain;
//! 3. its request was decided inside an **unrecorded epoch** *and* the entry was still
//!    `pending` in a snapshot of the outbox taken at the end of that epoch, when nothing could
//!    record any more: for a SIGKILL of the relay, the epoch is the killed process's life and
//!    the snapshot is taken after it died (a delivery whose entry was not marked published by
//!    then was in flight, or between its `200` and the record); for a `mongod` restart, the
//!    epoch runs from the start of the drain that was running when `mongod` was killed to a
//!    snapshot taken right after the restart (the record of a `200` may have failed with the
//!    database). The test lets the drains during the outage fail and end before it restarts
//!    `mongod`, so nothing can have been published again, and recorded, before the snapshot;
//!    writes go on through the restart;
//! 4. otherwise, at most as many unexplained deliveries as the entry's own history counts
//!    `unknown_outcome` failures (client timeouts the relay saw and recorded — on a loaded
//!    machine a response can miss the publish timeout outside any slow window). Scenarios
//!    with no faults at all (several relays, replayed timers) use a long publish timeout and
//!    require no duplicate at all.
//!
//! A relay that re-sends an id after recording it published, or a zombie publishing after its
//! lease was taken over, produces an unexplained earlier delivery: the scenario fails and
//! prints the id's deliveries, their outcomes, the entry's history and the handlers' output.
//!
//! # Reports
//!
//! Each scenario prints one row — `scenario | writes | committed | published | lost |
//! duplicated | allowed-dup | orphaned | out-of-order` (`n/a` where ordering is not promised;
//! the `ordering_under_kills` scenario runs with `OUTBOX_ORDERING=subject` and counts it) —
//! and writes it as JSON to `target/chaos/<scenario>.json`, then merges every scenario file
//! into `target/chaos/report.json` and `target/chaos/report.txt` under a file lock (nextest
//! runs scenarios in parallel processes).
//!
//! # Scale
//!
//! `CHAOS_SCALE=short` (the default, part of `make test`) keeps the whole binary around a
//! minute or two on two shared cores; `CHAOS_SCALE=full` (`make chaos`) runs many more
//! iterations and longer faults.

#![expect(
    unreachable_pub,
    reason = "test support is a private module tree; `pub` marks what tests may use"
)]
#![expect(
    clippy::unwrap_used,
    reason = "test support panics with the location on failure, which is what a test wants"
)]

#[path = "../e2e/support/mod.rs"]
mod support;

mod harness;
mod ledger;

mod concurrency;
mod crashes;
mod ordering;
mod topic;

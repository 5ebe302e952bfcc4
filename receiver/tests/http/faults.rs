//! Fault injection: fail N then recover, Retry-After, latency, drop after accept,
//! reject_ids, clearing.

use std::time::{Duration, Instant};

use eventgrid_receiver::{FailRule, Fault, RequestOutcome};

use crate::support::{Conn, Req, body_of, events, receiver, send};

#[tokio::test]
async fn fail_n_requests_then_recover() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(Fault::fail(2, 503))?;
    let body = body_of(&events("f", 2));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            send(receiver.local_addr(), &Req::publish(body.clone()))
                .await?
                .status,
        );
    }

    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(
        handle.accepted_ids(),
        ["f-0", "f-1"],
        "failed requests record nothing"
    );
    let outcomes: Vec<_> = handle.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            RequestOutcome::Injected,
            RequestOutcome::Injected,
            RequestOutcome::Accepted
        ]
    );
    assert_eq!(handle.requests()[0].event_count, Some(2));
    let stats = handle.stats();
    assert_eq!(stats.injected_failures, 2);
    assert_eq!(stats.requests_by_status.get(&503), Some(&2));
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn fail_rules_apply_before_validation_and_in_order() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(Fault::fail(1, 500))?;
    handle.push_fault(Fault::fail(1, 403))?;
    handle.push_fault(Fault::fail(1, 408))?;
    let addr = receiver.local_addr();

    // Even an unauthenticated, invalid request gets the injected status.
    let first = send(
        addr,
        &Req::publish(b"garbage".to_vec()).without("aeg-sas-key"),
    )
    .await?;
    // Requests to another path do not use up the rules.
    let other = send(addr, &Req::publish(b"[]".to_vec()).target("/other")).await?;
    let second = send(addr, &Req::publish(body_of(&events("o", 1)))).await?;
    let third = send(addr, &Req::publish(body_of(&events("o", 1)))).await?;
    let fourth = send(addr, &Req::publish(body_of(&events("o", 1)))).await?;

    assert_eq!(
        [
            first.status,
            other.status,
            second.status,
            third.status,
            fourth.status
        ],
        [500, 404, 403, 408, 200]
    );
    assert_eq!(first.error()?.1, "InjectedFault");
    assert_eq!(first.error()?.0, "InternalServerError");
    assert!(first.header("x-ms-request-id").is_some());
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn retry_after_and_retry_after_ms_are_passed_through_verbatim() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(
        FailRule::new(1, 429)
            .retry_after("2")
            .retry_after_ms(1500)
            .into(),
    )?;
    handle.push_fault(
        FailRule::new(1, 503)
            .retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
            .into(),
    )?;
    handle.push_fault(Fault::fail(1, 503))?;
    let body = body_of(&events("r", 1));

    let throttled = send(receiver.local_addr(), &Req::publish(body.clone())).await?;
    let dated = send(receiver.local_addr(), &Req::publish(body.clone())).await?;
    let bare = send(receiver.local_addr(), &Req::publish(body)).await?;

    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("2"));
    assert_eq!(throttled.header("retry-after-ms"), Some("1500"));
    assert_eq!(throttled.error()?.0, "TooManyRequests");
    assert_eq!(dated.status, 503);
    assert_eq!(
        dated.header("retry-after"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(dated.header("retry-after-ms"), None);
    assert_eq!(bare.header("retry-after"), None);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn invalid_fault_rules_are_refused() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();

    assert!(handle.push_fault(Fault::fail(1, 42)).is_err());
    assert!(
        handle
            .push_fault(FailRule::new(1, 503).retry_after("a\r\nb").into())
            .is_err()
    );
    assert!(handle.reject_ids(Some("([")).is_err());

    let reply = send(
        receiver.local_addr(),
        &Req::publish(body_of(&events("i", 1))),
    )
    .await?;
    assert_eq!(reply.status, 200, "nothing was queued");
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn drop_after_accept_records_then_closes_without_a_response_byte() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(Fault::DropAfterAccept { count: 1 })?;
    let body = body_of(&events("x", 3));

    // A keep-alive request (no `Connection: close`), so only the fault can explain the
    // close; the raw socket shows that not a single response byte arrives.
    let wire = Req::publish(body.clone());
    let mut raw = Conn::open(receiver.local_addr()).await?;
    raw.write(&wire).await?;
    let received = raw.read_to_close().await?;

    assert!(
        received.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(
        handle.accepted_ids(),
        ["x-0", "x-1", "x-2"],
        "the dropped request was accepted"
    );
    let stats = handle.stats();
    assert_eq!(stats.dropped_responses, 1);
    assert_eq!(stats.accepted_requests, 1);
    assert!(
        stats.requests_by_status.is_empty(),
        "no response was sent: {stats:?}"
    );
    assert_eq!(
        handle.requests()[0].outcome,
        RequestOutcome::AcceptedThenDropped
    );
    // The fault is used up: the retry (same ids) is answered, and counted as duplicates.
    let retry = Conn::open(receiver.local_addr()).await?.send(&wire).await?;
    assert_eq!(retry.status, 200);
    assert_eq!(handle.stats().duplicate_deliveries, 3);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn drop_after_accept_skips_refused_requests() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(Fault::DropAfterAccept { count: 1 })?;
    let mut conn = Conn::open(receiver.local_addr()).await?;

    let refused = conn.send(&Req::publish(b"[]".to_vec())).await?;
    conn.send(&Req::publish(body_of(&events("y", 1))))
        .await
        .expect_err("dropped");

    assert_eq!(refused.status, 400);
    assert_eq!(handle.accepted_ids(), ["y-0"]);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reject_ids_refuses_requests_carrying_a_poison_event() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.reject_ids(Some("^poison-"))?;
    let mut batch = events("ok", 3);
    batch[1]["id"] = "poison-1".into();

    let poisoned = send(receiver.local_addr(), &Req::publish(body_of(&batch))).await?;
    batch.remove(1);
    let clean = send(receiver.local_addr(), &Req::publish(body_of(&batch))).await?;
    handle.reject_ids(None)?;
    let unpoisoned = send(
        receiver.local_addr(),
        &Req::publish(body_of(&events("poison", 1))),
    )
    .await?;

    assert_eq!(poisoned.status, 400);
    let (code, detail, message) = poisoned.error()?;
    assert_eq!(
        (code.as_str(), detail.as_str()),
        ("BadRequest", "InputJsonInvalid")
    );
    assert!(message.contains("index 1"), "{message}");
    assert_eq!(clean.status, 200);
    assert_eq!(unpoisoned.status, 200);
    assert_eq!(handle.accepted_ids(), ["ok-0", "ok-2", "poison-0"]);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn latency_delays_answers_for_the_next_n_or_all() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let delay = Duration::from_millis(300);
    handle.push_fault(Fault::Latency {
        delay,
        count: Some(1),
    })?;
    let body = body_of(&events("l", 1));

    let started = Instant::now();
    let slow = send(receiver.local_addr(), &Req::publish(body.clone())).await?;
    let slow_elapsed = started.elapsed();
    handle.set_latency(Some(delay));
    let started = Instant::now();
    let refused = send(receiver.local_addr(), &Req::publish(b"[]".to_vec())).await?;
    let refused_elapsed = started.elapsed();

    assert_eq!(slow.status, 200);
    assert!(slow_elapsed >= delay, "{slow_elapsed:?}");
    assert_eq!(refused.status, 400);
    assert!(
        refused_elapsed >= delay,
        "latency applies to every answer: {refused_elapsed:?}"
    );
    // The event was recorded before the delayed answer went out.
    assert_eq!(handle.accepted_ids(), ["l-0"]);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_cuts_latency_short() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    receiver
        .handle()
        .set_latency(Some(Duration::from_secs(600)));
    let addr = receiver.local_addr();
    let pending =
        tokio::spawn(async move { send(addr, &Req::publish(body_of(&events("s", 1)))).await });
    assert!(
        receiver
            .handle()
            .wait_for_events(1, Duration::from_secs(20))
            .await
    );

    tokio::time::timeout(Duration::from_secs(20), receiver.shutdown()).await?;

    let reply = pending.await??;
    assert_eq!(reply.status, 200);
    Ok(())
}

#[tokio::test]
async fn clear_faults_removes_every_pending_fault() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    handle.push_fault(Fault::fail(5, 503))?;
    handle.push_fault(Fault::DropAfterAccept { count: 5 })?;
    handle.set_latency(Some(Duration::from_secs(600)));
    handle.reject_ids(Some("."))?;

    handle.clear_faults();
    let reply = send(
        receiver.local_addr(),
        &Req::publish(body_of(&events("c", 1))),
    )
    .await?;

    assert_eq!(reply.status, 200);
    receiver.shutdown().await;
    Ok(())
}

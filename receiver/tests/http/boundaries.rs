//! The 1 MiB body and 5,000-event limits: exactly at the limit accepted, one over refused.

use eventgrid_receiver::{MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST};
use serde_json::{Value, json};

use crate::support::{Req, body_of, body_of_size, receiver, send};

#[tokio::test]
async fn body_of_exactly_one_mebibyte_is_accepted() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let body = body_of_size(MAX_BODY_BYTES);

    let reply = send(receiver.local_addr(), &Req::publish(body.clone())).await?;

    assert_eq!(reply.status, 200);
    let recorded = receiver.handle().events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].raw.len(), MAX_BODY_BYTES - 2);
    assert_eq!(
        receiver.handle().requests()[0].body_bytes,
        MAX_BODY_BYTES as u64
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn body_one_byte_over_is_413_by_content_length() -> anyhow::Result<()> {
    let receiver = receiver().await?;

    let reply = send(
        receiver.local_addr(),
        &Req::publish(body_of_size(MAX_BODY_BYTES + 1)),
    )
    .await?;

    assert_eq!(reply.status, 413);
    assert_eq!(reply.error()?.0, "PayloadTooLarge");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(receiver.handle().events().is_empty());
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn chunked_body_is_counted_while_read() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let at_limit = Req::publish(body_of_size(MAX_BODY_BYTES)).chunked(64 * 1024);
    let over = Req::publish(body_of_size(MAX_BODY_BYTES + 1)).chunked(64 * 1024);
    let far_over = Req::publish(body_of_size(3 * MAX_BODY_BYTES)).chunked(16 * 1024);

    let accepted = send(receiver.local_addr(), &at_limit).await?;
    let refused = send(receiver.local_addr(), &over).await?;
    let refused_early = send(receiver.local_addr(), &far_over).await?;

    assert_eq!(accepted.status, 200);
    assert_eq!(refused.status, 413);
    assert_eq!(refused_early.status, 413);
    let requests = receiver.handle().requests();
    // Reading stops as soon as the limit is passed, not at the end of the body.
    assert!(
        requests[2].body_bytes <= MAX_BODY_BYTES as u64 + 16 * 1024,
        "{:?}",
        requests[2]
    );
    assert_eq!(receiver.handle().stats().accepted_events, 1);
    receiver.shutdown().await;
    Ok(())
}

/// Small events so that 5,000 fit in 1 MiB.
fn small_events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("s-{i}"),
                "subject": format!("orders/{i}"),
                "eventType": "Contoso.Orders.OrderPlaced",
                "eventTime": "2025-03-14T09:26:53.589Z",
                "dataVersion": "1.0",
                "data": { "n": i }
            })
        })
        .collect()
}

#[tokio::test]
async fn five_thousand_events_are_accepted_and_one_more_is_413() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let at_limit = body_of(&small_events(MAX_EVENTS_PER_REQUEST));
    let over = body_of(&small_events(MAX_EVENTS_PER_REQUEST + 1));
    assert!(
        over.len() <= MAX_BODY_BYTES,
        "the event count, not the size, must be the limit hit"
    );

    let accepted = send(receiver.local_addr(), &Req::publish(at_limit)).await?;
    let refused = send(receiver.local_addr(), &Req::publish(over)).await?;

    assert_eq!(accepted.status, 200);
    assert_eq!(refused.status, 413);
    assert_eq!(refused.error()?.1, "TooManyEvents");
    let ids = handle.accepted_ids();
    assert_eq!(ids.len(), MAX_EVENTS_PER_REQUEST);
    assert_eq!(ids[4_999], "s-4999");
    assert_eq!(
        handle.requests()[1].event_count,
        Some(MAX_EVENTS_PER_REQUEST + 1)
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn many_full_requests_of_one_kilobyte_events_are_all_recorded() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let pad = "x".repeat(800);
    let per_request = 900; // ~1 KB each: as many as fit in 1 MiB
    let mut conn = crate::support::Conn::open(receiver.local_addr()).await?;

    for r in 0..6 {
        let batch: Vec<Value> = (0..per_request)
            .map(|i| {
                let mut e = crate::support::event(&format!("r{r}-{i}"));
                e["data"]["pad"] = json!(pad);
                e
            })
            .collect();
        let body = body_of(&batch);
        assert!(body.len() <= MAX_BODY_BYTES);
        assert_eq!(conn.send(&Req::publish(body)).await?.status, 200);
    }

    assert!(
        handle
            .wait_for_events(6 * per_request as u64, std::time::Duration::from_secs(5))
            .await
    );
    assert_eq!(handle.stats().distinct_ids, 6 * per_request as u64);
    receiver.shutdown().await;
    Ok(())
}

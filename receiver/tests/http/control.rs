//! The HTTP control API under `/_receiver/`.

use serde_json::{Value, json};

use crate::support::{Req, body_of, events, receiver, send};

#[tokio::test]
async fn faults_can_be_scripted_over_http() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let addr = receiver.local_addr();
    let post = |rule: Value| {
        Req::control(
            "POST",
            "/_receiver/faults",
            serde_json::to_vec(&rule).unwrap(),
        )
    };
    let body = body_of(&events("h", 1));

    let posted = send(
        addr,
        &post(json!({"fail": {"count": 2, "status": 503, "retry_after": "1"}})),
    )
    .await?;
    send(addr, &post(json!({"reject_ids": "^poison-"}))).await?;
    send(addr, &post(json!({"drop_after_accept": {"count": 1}}))).await?;
    let view = send(addr, &post(json!({"latency_ms": 0}))).await?.json()?;
    let first = send(addr, &Req::publish(body.clone())).await?;
    let second = send(addr, &Req::publish(body.clone())).await?;

    assert_eq!(posted.status, 200);
    assert_eq!(posted.header("content-type"), Some("application/json"));
    assert_eq!(
        view["fail"],
        json!([{"count": 2, "status": 503, "retry_after": "1"}])
    );
    assert_eq!(view["reject_ids"], "^poison-");
    assert_eq!(view["drop_after_accept"], 1);
    assert_eq!(view["latency"], json!({"ms": 0, "count": null}));
    assert_eq!((first.status, second.status), (503, 503));
    assert_eq!(first.header("retry-after"), Some("1"));
    let faults = send(addr, &Req::control("GET", "/_receiver/faults", ""))
        .await?
        .json()?;
    assert_eq!(faults["fail"], json!([]));

    let always = send(
        addr,
        &post(json!({"fail_rate": {"rate": 1.0, "status": 500}})),
    )
    .await?
    .json()?;
    let failed = send(addr, &Req::publish(body.clone())).await?;
    assert_eq!(always["fail_rate_permille"], 1000);
    assert_eq!(failed.status, 500, "a rate of 1 fails every request");

    let cleared = send(addr, &Req::control("DELETE", "/_receiver/faults", "")).await?;
    let after = send(addr, &Req::publish(body)).await?;

    assert_eq!(cleared.status, 204);
    assert_eq!(after.status, 200, "drop_after_accept was cleared too");
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn counted_latency_and_poison_ids_over_http() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let addr = receiver.local_addr();
    let post = |rule: Value| {
        Req::control(
            "POST",
            "/_receiver/faults",
            serde_json::to_vec(&rule).unwrap(),
        )
    };

    let latency = send(addr, &post(json!({"latency": {"ms": 1, "count": 2}})))
        .await?
        .json()?;
    send(addr, &post(json!({"reject_ids": "^poison-"}))).await?;
    let poisoned = send(addr, &Req::publish(body_of(&events("poison", 1)))).await?;
    let view = send(addr, &post(json!({"reject_ids": null})))
        .await?
        .json()?;

    assert_eq!(latency["latency"], json!({"ms": 1, "count": 2}));
    assert_eq!(poisoned.status, 400);
    assert_eq!(view["reject_ids"], Value::Null);
    assert_eq!(view["latency"], json!({"ms": 1, "count": 1}));
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn invalid_fault_rules_get_400_with_the_error_shape() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let addr = receiver.local_addr();
    for body in [
        "not json",
        r#"{"explode":true}"#,
        r#"{"fail":{"status":503,"typo":1}}"#,
        r#"{"fail":{"count":1}}"#,
        r#"{"fail":{"count":1,"status":42}}"#,
        r#"{"reject_ids":"(["}"#,
        r#"{"latency_ms":1,"reject_ids":"x"}"#,
        r#"{"fail_rate":{"rate":1.5,"status":503}}"#,
        r#"{"fail_rate":{"rate":-0.1,"status":503}}"#,
    ] {
        let reply = send(addr, &Req::control("POST", "/_receiver/faults", body)).await?;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.error()?.1, "FaultInvalid", "{body}");
    }
    let faults = send(addr, &Req::control("GET", "/_receiver/faults", ""))
        .await?
        .json()?;
    assert_eq!(faults["fail"], json!([]));
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn recorded_events_ids_requests_and_stats_are_readable_and_resettable() -> anyhow::Result<()>
{
    let receiver = receiver().await?;
    let addr = receiver.local_addr();
    let first = events("e", 2);
    let second = events("f", 1);
    send(addr, &Req::publish(body_of(&first))).await?;
    send(addr, &Req::publish(b"[]".to_vec())).await?;
    send(addr, &Req::publish(body_of(&second))).await?;

    let all = send(addr, &Req::control("GET", "/_receiver/events", "")).await?;
    let since = send(addr, &Req::control("GET", "/_receiver/events?since=2", ""))
        .await?
        .json()?;
    let beyond = send(addr, &Req::control("GET", "/_receiver/events?since=99", ""))
        .await?
        .json()?;
    let ids = send(addr, &Req::control("GET", "/_receiver/ids?since=1", ""))
        .await?
        .json()?;
    let requests = send(addr, &Req::control("GET", "/_receiver/requests", ""))
        .await?
        .json()?;
    let stats = send(addr, &Req::control("GET", "/_receiver/stats", ""))
        .await?
        .json()?;
    let bad_since = send(addr, &Req::control("GET", "/_receiver/events?since=-1", "")).await?;

    assert_eq!(all.status, 200);
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert_eq!(all.json()?, json!([first[0], first[1], second[0]]));
    assert_eq!(since, json!([second[0]]));
    assert_eq!(beyond, json!([]));
    assert_eq!(ids, json!(["e-1", "f-0"]));
    assert_eq!(requests.as_array().map(Vec::len), Some(3));
    assert_eq!(requests[0]["outcome"], "accepted");
    assert_eq!(requests[0]["event_count"], 2);
    assert_eq!(requests[1]["outcome"], "refused");
    assert_eq!(requests[1]["status"], 400);
    assert_eq!(requests[1]["detail_code"], "InputJsonInvalid");
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["requests_by_status"], json!({"200": 2, "400": 1}));
    assert_eq!(stats["accepted_events"], 3);
    assert_eq!(stats["distinct_ids"], 3);
    assert_eq!(stats["duplicate_deliveries"], 0);
    assert_eq!(bad_since.status, 400);

    let reset = send(addr, &Req::control("DELETE", "/_receiver/events", "")).await?;
    let after = send(addr, &Req::control("GET", "/_receiver/events", ""))
        .await?
        .json()?;
    let stats = send(addr, &Req::control("GET", "/_receiver/stats", ""))
        .await?
        .json()?;

    assert_eq!(reset.status, 204);
    assert_eq!(after, json!([]));
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["accepted_events"], 0);
    assert!(receiver.handle().requests().is_empty());
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn control_api_needs_no_credentials_and_is_not_recorded() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let addr = receiver.local_addr();
    // Faults never apply to the control API.
    receiver
        .handle()
        .push_fault(eventgrid_receiver::Fault::fail(1, 503))?;

    let stats = send(addr, &Req::control("GET", "/_receiver/stats", "")).await?;
    let unknown = send(addr, &Req::control("GET", "/_receiver/nope", "")).await?;
    let wrong_method = send(addr, &Req::control("PUT", "/_receiver/stats", "")).await?;

    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()?["requests"], 0);
    assert_eq!(unknown.status, 404);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
    assert_eq!(receiver.handle().stats().requests, 0);
    receiver.shutdown().await;
    Ok(())
}

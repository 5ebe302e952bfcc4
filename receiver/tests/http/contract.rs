//! Every contract rule over HTTP: its status, Event Grid's error shape, nothing recorded.

use eventgrid_receiver::{ReceiverConfig, RequestOutcome, Schema};
use serde_json::json;

use crate::support::{Conn, Req, body_of, cloud_event, event, events, receiver, send};

#[tokio::test]
async fn valid_batch_is_accepted_with_an_empty_200_and_recorded_in_order() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let sent = events("a", 3);

    let reply = send(receiver.local_addr(), &Req::publish(body_of(&sent))).await?;

    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("content-length"), Some("0"));
    let request_id = reply
        .header("x-ms-request-id")
        .expect("x-ms-request-id on 200");
    uuid::Uuid::parse_str(request_id)?;
    let recorded = handle.events();
    assert_eq!(recorded.len(), 3);
    for (got, want) in recorded.iter().zip(&sent) {
        assert_eq!(got.raw, want.to_string());
        assert_eq!(got.id, want["id"].as_str().unwrap());
        assert_eq!(got.subject, want["subject"].as_str().unwrap());
        assert_eq!(got.event_type, "Contoso.Orders.OrderPlaced");
        assert_eq!(got.to_value()?, *want);
        assert_eq!(got.request, 1);
    }
    assert_eq!(handle.accepted_ids(), ["a-0", "a-1", "a-2"]);
    let stats = handle.stats();
    assert_eq!(
        (
            stats.requests,
            stats.accepted_requests,
            stats.accepted_events
        ),
        (1, 1, 3)
    );
    assert_eq!(stats.requests_by_status.get(&200), Some(&1));
    let requests = handle.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].outcome, RequestOutcome::Accepted);
    assert_eq!(requests[0].event_count, Some(3));
    assert_eq!(requests[0].body_bytes, body_of(&sent).len() as u64);
    assert_eq!(requests[0].request_id, request_id);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn charset_parameter_other_query_parameters_and_pretty_json_are_accepted()
-> anyhow::Result<()> {
    let receiver = receiver().await?;
    let pretty = serde_json::to_vec_pretty(&events("p", 2))?;
    let req = Req::publish(pretty)
        .header("Content-Type", "application/json; charset=utf-8")
        .target("/api/events?x=1&api-version=2018-01-01");

    let reply = send(receiver.local_addr(), &req).await?;

    assert_eq!(reply.status, 200);
    // Recorded compact, as it would be on Event Grid's side.
    assert_eq!(receiver.handle().events()[1].raw, event("p-1").to_string());
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_contract_violation_gets_its_status_and_nothing_is_recorded() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let good = body_of(&events("v", 2));
    let with = |name: &str, value: serde_json::Value| {
        let mut e = event("bad");
        e[name] = value;
        body_of(&[event("ok"), e])
    };
    let without = |name: &str| {
        let mut e = event("bad");
        e.as_object_mut().unwrap().shift_remove(name);
        body_of(&[e])
    };
    let bom = [b"\xEF\xBB\xBF".as_slice(), &good].concat();
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        (
            "wrong path",
            Req::publish(good.clone()).target("/api/event?api-version=2018-01-01"),
            404,
            "NotFound",
        ),
        (
            "trailing slash",
            Req::publish(good.clone()).target("/api/events/?api-version=2018-01-01"),
            404,
            "NotFound",
        ),
        (
            "GET",
            Req::publish(good.clone()).method("GET"),
            405,
            "MethodNotAllowed",
        ),
        (
            "PUT",
            Req::publish(good.clone()).method("PUT"),
            405,
            "MethodNotAllowed",
        ),
        (
            "no api-version",
            Req::publish(good.clone()).target("/api/events"),
            400,
            "BadRequest",
        ),
        (
            "other api-version",
            Req::publish(good.clone()).target("/api/events?api-version=2024-06-01"),
            400,
            "BadRequest",
        ),
        (
            "no credential",
            Req::publish(good.clone()).without("aeg-sas-key"),
            401,
            "Unauthorized",
        ),
        (
            "wrong key",
            Req::publish(good.clone()).header("aeg-sas-key", "nope"),
            401,
            "Unauthorized",
        ),
        (
            "bearer without a configured token",
            Req::publish(good.clone())
                .without("aeg-sas-key")
                .header("Authorization", "Bearer local-dev-key"),
            401,
            "Unauthorized",
        ),
        (
            "no content type",
            Req::publish(good.clone()).without("Content-Type"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "text/plain",
            Req::publish(good.clone()).header("Content-Type", "text/plain"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "cloudevents type on an Event Grid topic",
            Req::publish(good.clone()).header(
                "Content-Type",
                "application/cloudevents-batch+json; charset=utf-8",
            ),
            415,
            "UnsupportedMediaType",
        ),
        (
            "latin1",
            Req::publish(good.clone())
                .header("Content-Type", "application/json; charset=iso-8859-1"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "gzip",
            Req::publish(good.clone()).header("Content-Encoding", "gzip"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "two content types",
            Req::publish(good.clone()).add_header("Content-Type", "application/json"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "gzip transfer coding",
            Req::publish(good.clone())
                .chunked(100)
                .add_header("Transfer-Encoding", "gzip"),
            415,
            "UnsupportedMediaType",
        ),
        (
            "expect",
            Req::publish(good.clone()).header("Expect", "100-continue"),
            400,
            "BadRequest",
        ),
        ("no body", Req::publish(Vec::new()), 400, "BadRequest"),
        (
            "no body, no length",
            Req::publish(Vec::new()).no_content_length(),
            400,
            "BadRequest",
        ),
        ("BOM", Req::publish(bom), 400, "BadRequest"),
        (
            "not UTF-8",
            Req::publish(b"[\"\xC3\x28\"]".to_vec()),
            400,
            "BadRequest",
        ),
        (
            "not JSON",
            Req::publish(b"[{\"id\":".to_vec()),
            400,
            "BadRequest",
        ),
        (
            "an object",
            Req::publish(serde_json::to_vec(&event("x"))?),
            400,
            "BadRequest",
        ),
        (
            "empty array",
            Req::publish(b"[]".to_vec()),
            400,
            "BadRequest",
        ),
        (
            "topic",
            Req::publish(with("topic", json!("/subscriptions/x"))),
            400,
            "BadRequest",
        ),
        (
            "metadataVersion",
            Req::publish(with("metadataVersion", json!("1"))),
            400,
            "BadRequest",
        ),
        (
            "extra property",
            Req::publish(with("source", json!("x"))),
            400,
            "BadRequest",
        ),
        (
            "empty id",
            Req::publish(with("id", json!(""))),
            400,
            "BadRequest",
        ),
        (
            "numeric dataVersion",
            Req::publish(with("dataVersion", json!(1))),
            400,
            "BadRequest",
        ),
        (
            "eventTime without offset",
            Req::publish(with("eventTime", json!("2025-03-14T09:26:53"))),
            400,
            "BadRequest",
        ),
        (
            "data not an object",
            Req::publish(with("data", json!("text"))),
            400,
            "BadRequest",
        ),
        (
            "missing data",
            Req::publish(without("data")),
            400,
            "BadRequest",
        ),
        (
            "missing eventType",
            Req::publish(without("eventType")),
            400,
            "BadRequest",
        ),
        (
            "event not an object",
            Req::publish(b"[1]".to_vec()),
            400,
            "BadRequest",
        ),
    ];

    let count = cases.len();
    for (name, req, status, code) in cases {
        let reply = send(receiver.local_addr(), &req).await?;
        assert_eq!(
            reply.status,
            status,
            "{name}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let (got_code, detail, message) = reply.error()?;
        assert_eq!(got_code, code, "{name}");
        assert!(!detail.is_empty() && !message.is_empty(), "{name}");
        assert!(
            reply.header("x-ms-request-id").is_some(),
            "{name}: x-ms-request-id"
        );
        // Azure sends error bodies without a Content-Type; so does the receiver, so that
        // no publisher comes to depend on one.
        assert_eq!(reply.header("content-type"), None, "{name}");
        if status == 405 {
            assert_eq!(reply.header("allow"), Some("POST"), "{name}");
        }
    }

    assert!(handle.events().is_empty());
    let stats = handle.stats();
    assert_eq!(stats.accepted_events, 0);
    assert_eq!(stats.refused_requests, count as u64);
    assert!(
        handle
            .requests()
            .iter()
            .all(|r| r.outcome == RequestOutcome::Refused)
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn error_messages_name_the_event_index_and_the_property() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let mut bad = event("bad");
    bad["eventTime"] = json!("yesterday");
    let body = body_of(&[event("a"), event("b"), event("c"), bad]);

    let reply = send(receiver.local_addr(), &Req::publish(body)).await?;

    assert_eq!(reply.status, 400);
    let (_, detail, message) = reply.error()?;
    assert_eq!(detail, "InputJsonInvalid");
    assert!(
        message.contains("index 3") && message.contains("eventTime"),
        "{message}"
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn one_bad_event_refuses_the_whole_request() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let mut batch = events("good", 4);
    batch[2]["subject"] = json!("");

    let reply = send(receiver.local_addr(), &Req::publish(body_of(&batch))).await?;

    assert_eq!(reply.status, 400);
    assert!(
        handle.events().is_empty(),
        "nothing of a refused request is recorded"
    );
    assert!(handle.accepted_ids().is_empty());
    assert_eq!(handle.stats().accepted_events, 0);
    assert_eq!(handle.requests()[0].event_count, Some(4));
    // The same batch without the bad event goes through.
    batch.remove(2);
    let reply = send(receiver.local_addr(), &Req::publish(body_of(&batch))).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(handle.accepted_ids(), ["good-0", "good-1", "good-3"]);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_configured_bearer_token_is_accepted_instead_of_the_key() -> anyhow::Result<()> {
    let config = ReceiverConfig {
        bearer_token: Some("t0ken".into()),
        ..Default::default()
    };
    let receiver = eventgrid_receiver::start_local(config).await?;
    let body = body_of(&events("b", 1));
    let bearer = |token: &str| {
        Req::publish(body.clone())
            .without("aeg-sas-key")
            .header("Authorization", token)
    };

    assert_eq!(
        send(receiver.local_addr(), &bearer("Bearer t0ken"))
            .await?
            .status,
        200
    );
    assert_eq!(
        send(receiver.local_addr(), &bearer("Bearer t0ke"))
            .await?
            .status,
        401
    );
    assert_eq!(
        send(receiver.local_addr(), &bearer("t0ken")).await?.status,
        401
    );
    assert_eq!(
        send(receiver.local_addr(), &Req::publish(body.clone()))
            .await?
            .status,
        200
    );
    assert_eq!(receiver.handle().stats().accepted_events, 2);
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn cloud_events_topic_enforces_its_content_type_and_schema() -> anyhow::Result<()> {
    let config = ReceiverConfig {
        schema: Schema::CloudEvents,
        ..Default::default()
    };
    let receiver = eventgrid_receiver::start_local(config).await?;
    let handle = receiver.handle();
    let ce_type = "application/cloudevents-batch+json; charset=utf-8";
    let good = body_of(&[cloud_event("c-1"), cloud_event("c-2")]);

    let accepted = send(
        receiver.local_addr(),
        &Req::publish(good.clone()).header("Content-Type", ce_type),
    )
    .await?;
    let json_type = send(receiver.local_addr(), &Req::publish(good)).await?;
    let eg_events = send(
        receiver.local_addr(),
        &Req::publish(body_of(&[event("e-1")])).header("Content-Type", ce_type),
    )
    .await?;
    let mut both = cloud_event("c-3");
    both["data_base64"] = json!("aGVsbG8=");
    let both = send(
        receiver.local_addr(),
        &Req::publish(body_of(&[both])).header("Content-Type", ce_type),
    )
    .await?;

    assert_eq!(accepted.status, 200);
    assert_eq!(json_type.status, 415);
    assert_eq!(eg_events.status, 400);
    assert_eq!(both.status, 400);
    assert!(both.error()?.2.contains("data_base64"));
    assert_eq!(handle.accepted_ids(), ["c-1", "c-2"]);
    assert_eq!(handle.events()[0].event_type, "Contoso.Orders.OrderPlaced");
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn keep_alive_connection_survives_refused_requests() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let mut conn = Conn::open(receiver.local_addr()).await?;
    let good = body_of(&events("k", 2));

    let first = conn.send(&Req::publish(good.clone())).await?;
    let refused = conn
        .send(&Req::publish(good.clone()).header("aeg-sas-key", "wrong"))
        .await?;
    let not_found = conn
        .send(&Req::publish(good.clone()).target("/nope"))
        .await?;
    let invalid = conn.send(&Req::publish(b"[]".to_vec())).await?;
    let last = conn.send(&Req::publish(good)).await?;

    assert_eq!(
        [
            first.status,
            refused.status,
            not_found.status,
            invalid.status,
            last.status
        ],
        [200, 401, 404, 400, 200]
    );
    assert_eq!(receiver.handle().stats().accepted_events, 4);
    let ids: Vec<_> = [&first, &last]
        .iter()
        .map(|r| r.header("x-ms-request-id").map(str::to_owned))
        .collect();
    assert_ne!(ids[0], ids[1], "a fresh request id per response");
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn duplicate_ids_are_accepted_and_counted() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let handle = receiver.handle();
    let body = body_of(&events("d", 3));

    for _ in 0..2 {
        assert_eq!(
            send(receiver.local_addr(), &Req::publish(body.clone()))
                .await?
                .status,
            200
        );
    }

    let stats = handle.stats();
    assert_eq!(stats.accepted_events, 6);
    assert_eq!(stats.distinct_ids, 3);
    assert_eq!(stats.duplicate_deliveries, 3);
    assert_eq!(stats.duplicate_ids, 3);
    assert_eq!(handle.accepted_ids().len(), 6);
    receiver.shutdown().await;
    Ok(())
}

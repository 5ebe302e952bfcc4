//! Keep modes, the JSONL record file, waiting for events, shutdown.

use std::time::Duration;

use eventgrid_receiver::{Keep, ReceiverConfig};

use crate::support::{Conn, Req, body_of, events, send};

#[tokio::test]
async fn keep_ids_keeps_only_ids_and_keep_none_only_counters() -> anyhow::Result<()> {
    for keep in [Keep::Ids, Keep::None] {
        let receiver = eventgrid_receiver::start_local(ReceiverConfig {
            keep,
            ..Default::default()
        })
        .await?;
        let handle = receiver.handle();
        let body = body_of(&events("k", 2));

        send(receiver.local_addr(), &Req::publish(body.clone())).await?;
        send(receiver.local_addr(), &Req::publish(body)).await?;

        assert!(handle.events().is_empty(), "{keep}");
        let stats = handle.stats();
        assert_eq!(
            (
                stats.accepted_events,
                stats.distinct_ids,
                stats.duplicate_deliveries
            ),
            (4, 2, 2),
            "{keep}"
        );
        match keep {
            Keep::Ids => {
                assert_eq!(handle.accepted_ids(), ["k-0", "k-1", "k-0", "k-1"]);
                assert_eq!(handle.requests().len(), 2);
            }
            _ => {
                assert!(handle.accepted_ids().is_empty());
                assert!(handle.requests().is_empty());
            }
        }
        receiver.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn record_file_gets_one_json_line_per_accepted_event() -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("eventgrid-receiver-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.jsonl");
    let config = ReceiverConfig {
        record_path: Some(path.clone()),
        ..Default::default()
    };
    let receiver = eventgrid_receiver::start_local(config).await?;
    let first = events("j", 2);
    let pretty = serde_json::to_vec_pretty(&events("p", 1))?;

    send(receiver.local_addr(), &Req::publish(body_of(&first))).await?;
    send(receiver.local_addr(), &Req::publish(b"[]".to_vec())).await?;
    send(receiver.local_addr(), &Req::publish(pretty)).await?;

    // Flushed per request: readable before shutdown.
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            first[0].to_string(),
            first[1].to_string(),
            events("p", 1)[0].to_string()
        ]
    );
    receiver.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn unusable_configurations_are_refused_at_start() -> anyhow::Result<()> {
    let empty_key = ReceiverConfig {
        key: String::new(),
        ..Default::default()
    };
    let bad_path = ReceiverConfig {
        path: "/_receiver/x".into(),
        ..Default::default()
    };
    let bad_record = ReceiverConfig {
        record_path: Some("/nonexistent/dir/x.jsonl".into()),
        ..Default::default()
    };

    for config in [empty_key, bad_path, bad_record] {
        assert!(
            eventgrid_receiver::start_local(config.clone())
                .await
                .is_err(),
            "{config:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn custom_path_and_endpoint() -> anyhow::Result<()> {
    let config = ReceiverConfig {
        path: "/topics/orders".into(),
        key: "k2".into(),
        ..Default::default()
    };
    let receiver = eventgrid_receiver::start_local(config).await?;
    let req = Req::publish(body_of(&events("c", 1)))
        .target("/topics/orders?api-version=2018-01-01")
        .header("aeg-sas-key", "k2");

    let reply = send(receiver.local_addr(), &req).await?;
    let default_path = send(
        receiver.local_addr(),
        &req.clone().target("/api/events?api-version=2018-01-01"),
    )
    .await?;

    assert_eq!(reply.status, 200);
    assert_eq!(default_path.status, 404);
    assert_eq!(
        receiver.endpoint(),
        format!(
            "http://127.0.0.1:{}/topics/orders",
            receiver.local_addr().port()
        )
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_listening() -> anyhow::Result<()> {
    let receiver = crate::support::receiver().await?;
    let addr = receiver.local_addr();
    let handle = receiver.handle();
    let mut idle = Conn::open(addr).await?;
    assert_eq!(
        idle.send(&Req::publish(body_of(&events("z", 1))))
            .await?
            .status,
        200
    );

    tokio::time::timeout(Duration::from_secs(10), receiver.shutdown()).await?;

    assert!(
        idle.read_to_close().await?.is_empty(),
        "the idle connection is closed"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    assert_eq!(
        handle.accepted_ids(),
        ["z-0"],
        "the handle still reads after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn wait_for_events_times_out_when_nothing_arrives() -> anyhow::Result<()> {
    let receiver = crate::support::receiver().await?;
    assert!(
        !receiver
            .handle()
            .wait_for_events(1, Duration::from_millis(50))
            .await
    );
    assert!(
        receiver
            .handle()
            .wait_for_events(0, Duration::from_millis(50))
            .await
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_publishers_are_all_recorded() -> anyhow::Result<()> {
    let receiver = crate::support::receiver().await?;
    let addr = receiver.local_addr();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                for r in 0..10 {
                    let reply = conn
                        .send(&Req::publish(body_of(&events(&format!("t{t}r{r}"), 50))))
                        .await?;
                    anyhow::ensure!(reply.status == 200, "status {}", reply.status);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }

    let stats = receiver.handle().stats();
    assert_eq!(
        (
            stats.accepted_requests,
            stats.accepted_events,
            stats.distinct_ids
        ),
        (80, 4000, 4000)
    );
    receiver.shutdown().await;
    Ok(())
}

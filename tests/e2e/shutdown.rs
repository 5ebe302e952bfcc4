//! `handler serve` stops within a bounded time: SIGTERM or Ctrl-C give in-flight requests, open
//! connections and a running drain [`SHUTDOWN_GRACE`], then it exits; a second signal exits at
//! once. What it cuts short loses nothing: claimed entries stay pending until their lease runs
//! out.

use std::time::{Duration, Instant};

use outbox_relay::app::SHUTDOWN_GRACE;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::receiver::{self, Fault};
use crate::support::{Handler, TestDb, app_settings, settings, write_documents};

/// Room on top of the grace for the process to wind down and the test to notice, on a loaded
/// machine. Well under the time the cut-short work would otherwise take (see each test).
const SLACK: Duration = Duration::from_secs(5);

/// Sends `signal` (e.g. `"TERM"`) to the handler without waiting for it to exit.
fn send(handler: &Handler, signal: &str) {
    let pid = handler.pid().expect("the handler is running");
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Settings for a drain that cannot finish soon: every publish request gets its answer only
/// after 60 s, and times out after 25 s (the lease must be at least twice that). Without a
/// bound, a stop would wait for the requests in flight, at least 20 s.
fn slow_topic_settings() -> [(&'static str, &'static str); 5] {
    [
        ("OUTBOX_SCHEDULE", "*/1 * * * * *"),
        ("OUTBOX_BATCH_SIZE", "5"),
        ("EVENTGRID_PUBLISH_TIMEOUT_MS", "25000"),
        ("OUTBOX_LEASE_SECS", "50"),
        ("OUTBOX_TIME_BUDGET_SECS", "120"),
    ]
}

#[tokio::test]
async fn sigterm_during_a_long_drain_exits_within_the_grace_and_loses_no_entry() {
    // Arrange: a backlog, a topic that answers only after a minute, and a scheduled drain that
    // has claimed and sent entries.
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let extra = slow_topic_settings();
    let ids = write_documents(&settings(&db, &rx, &extra), 40, |i| {
        format!(r#"{{"_id":"stop-{i}"}}"#)
    })
    .await;
    rx.handle()
        .push_fault(Fault::Latency {
            delay: Duration::from_secs(60),
            count: None,
        })
        .unwrap();
    let mut handler = Handler::standalone(&app_settings(&db, &rx, &extra)).await;
    assert!(
        rx.handle()
            .wait_for_events(5, Duration::from_secs(20))
            .await,
        "the scheduled drain sent a request:\n{}",
        handler.output()
    );

    // Act
    let started = Instant::now();
    let status = handler.terminate().await;
    let took = started.elapsed();

    // Assert
    let output = handler.output();
    assert!(
        took < SHUTDOWN_GRACE + SLACK,
        "exited {took:?} after SIGTERM:\n{output}"
    );
    assert!(status.success(), "{status}:\n{output}");
    assert!(
        output.contains("did not finish within the shutdown grace"),
        "the cut-short drain is logged:\n{output}"
    );
    assert_eq!(
        db.count_entries().await,
        ids.len() as u64,
        "no entry is gone"
    );
    let pending = db.count_entries_with("pending").await;
    let published = db.count_entries_with("published").await;
    assert_eq!(
        pending + published,
        ids.len() as u64,
        "every entry is still pending (claimed ones until their lease runs out) or published:\n{output}"
    );
    assert_eq!(db.count_entries_with("dead").await, 0);
    db.drop().await;
}

/// Opens a connection, sends one complete request and reads its whole answer: the connection
/// is then an idle HTTP/1.1 keep-alive connection.
async fn idle_keep_alive_connection(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0_u8; 1024];
    // The health probe answers "ok" with a Content-Length, so the answer ends with it.
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the connection closed before the answer was complete"
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    stream
}

/// Whether the server has closed `stream` (end of file or reset), within a moment.
async fn is_closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0_u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn sigterm_with_idle_keep_alive_connections_exits_without_waiting_for_them() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(idle_keep_alive_connection(handler.port).await);
    }

    let started = Instant::now();
    let status = handler.terminate().await;
    let took = started.elapsed();

    let output = handler.output();
    // Idle connections are closed at once; they must not even use up the grace.
    assert!(
        took < SHUTDOWN_GRACE,
        "exited {took:?} after SIGTERM:\n{output}"
    );
    assert!(status.success(), "{status}:\n{output}");
    for c in &mut connections {
        assert!(is_closed_by_server(c).await);
    }
    db.drop().await;
}

#[tokio::test]
async fn sigterm_with_stalled_requests_exits_within_the_grace() {
    // Arrange: besides an idle keep-alive connection, a client that sent half of its request
    // headers and one that sent the headers and half of the body, then stalled. Neither
    // request ever completes, so without a bound the stop would wait for them forever.
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;
    let idle = idle_keep_alive_connection(handler.port).await;
    let mut half_headers = TcpStream::connect(("127.0.0.1", handler.port))
        .await
        .unwrap();
    half_headers
        .write_all(b"POST /api/documents HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(("127.0.0.1", handler.port))
        .await
        .unwrap();
    half_body
        .write_all(
            b"POST /api/documents HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"_id\":",
        )
        .await
        .unwrap();
    // Let the handler take in what was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act
    let started = Instant::now();
    let status = handler.terminate().await;
    let took = started.elapsed();

    // Assert
    let output = handler.output();
    assert!(
        took < SHUTDOWN_GRACE + SLACK,
        "exited {took:?} after SIGTERM:\n{output}"
    );
    assert!(status.success(), "{status}:\n{output}");
    assert!(
        output.contains("connections were still open"),
        "what was cut short is logged:\n{output}"
    );
    drop((idle, half_headers, half_body));
    assert_eq!(db.count_documents().await, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_second_signal_stops_it_at_once() {
    // Arrange: a stop that would take the whole grace (a request stalled mid-body).
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;
    let mut stalled = TcpStream::connect(("127.0.0.1", handler.port))
        .await
        .unwrap();
    stalled
        .write_all(
            b"POST /api/documents HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&handler, "INT");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act
    let started = Instant::now();
    let status = handler.terminate().await;
    let took = started.elapsed();

    // Assert
    let output = handler.output();
    assert!(
        took < SHUTDOWN_GRACE / 2,
        "exited {took:?} after the second signal:\n{output}"
    );
    assert!(
        !status.success(),
        "stopping without finishing is not a clean exit: {status}:\n{output}"
    );
    assert!(output.contains("Second signal"), "{output}");
    drop(stalled);
    db.drop().await;
}

#[tokio::test]
async fn sigterm_stops_it_when_its_output_pipes_are_closed() {
    // `make run 2>&1 | tee run.log`, then Ctrl-C: `tee` may die first, leaving stdout and
    // stderr a pipe without a reader. Logging "Shutting down" then failed, tracing reported the
    // failure with `eprintln!` on the same broken pipe, which panicked inside the task that turns
    // the signal into a shutdown, and the process never stopped.
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let port = devstack::pick_free_port().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["serve", "--port", &port.to_string()])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "info")
        .envs(app_settings(&db, &rx, &[]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    outbox_relay::publisher::install_crypto_provider();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the handler did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reader goes away.
    drop(child.stdout.take());
    drop(child.stderr.take());

    let pid = child.id().unwrap().to_string();
    let started = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::time::timeout(SHUTDOWN_GRACE + SLACK, child.wait()).await;

    assert!(
        exited.is_ok(),
        "still running {:?} after SIGTERM with its output pipes closed",
        started.elapsed()
    );
    db.drop().await;
}

//! The `eventgrid-receiver` binary: the one stdout line scripts parse, logging, SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::support::{Req, body_of, events, send};

#[tokio::test]
async fn binary_prints_its_endpoint_serves_logs_and_stops_on_sigterm() -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_eventgrid-receiver"))
        .args(["--port", "0", "--key", "bin-key", "--keep", "ids"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut first)).await??;
    let endpoint = first
        .trim_end()
        .strip_prefix("eventgrid-receiver listening on http://127.0.0.1:")
        .with_context(|| format!("unexpected first line {first:?}"))?;
    let port: u16 = endpoint
        .strip_suffix("/api/events")
        .context("path")?
        .parse()?;

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let accepted = send(
        addr,
        &Req::publish(body_of(&events("b", 2))).header("aeg-sas-key", "bin-key"),
    )
    .await?;
    let refused = send(addr, &Req::publish(body_of(&events("b", 2)))).await?;
    let ids = send(addr, &Req::control("GET", "/_receiver/ids", ""))
        .await?
        .json()?;
    assert_eq!((accepted.status, refused.status), (200, 401));
    assert_eq!(ids, serde_json::json!(["b-0", "b-1"]));

    let pid = child.id().context("pid")?.to_string();
    // The shell's built-in `kill`, so no procps is needed.
    let killed = tokio::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await?;

    assert!(status.success(), "exit status {status}");
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Request accepted"))
            .count(),
        1,
        "{rest}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Request refused"))
            .count(),
        1,
        "{rest}"
    );
    assert!(
        !rest.contains("orders/b-0"),
        "no event bodies in the log: {rest}"
    );
    assert!(!rest.contains("bin-key"), "no key in the log: {rest}");
    Ok(())
}

//! `eventgrid-receiver`: the local Event Grid-compatible receiver as a process.
//!
//! Prints exactly one line, `eventgrid-receiver listening on <endpoint>`, once bound
//! (scripts parse the port from it), then logs one line per request at `info` (via
//! `tracing`, to stdout; `RUST_LOG` filters) and stops on SIGTERM or Ctrl-C.

use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use eventgrid_receiver::{Keep, ReceiverConfig, Schema};

/// Local Event Grid-compatible receiver with fault injection.
#[derive(Debug, Parser)]
#[command(name = "eventgrid-receiver", version, about)]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Port to bind; 0 picks a free one (read it from the first output line).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Topic access key expected in `aeg-sas-key`.
    #[arg(long, default_value = eventgrid_receiver::DEFAULT_KEY)]
    key: String,
    /// Also accept `Authorization: Bearer <this token>`.
    #[arg(long)]
    bearer_token: Option<String>,
    /// Input schema of the emulated topic: eventgrid or cloudevents.
    #[arg(long, default_value_t = Schema::EventGrid)]
    schema: Schema,
    /// Publish path.
    #[arg(long, default_value = eventgrid_receiver::DEFAULT_PATH)]
    path: String,
    /// What to keep in memory: all, ids or none.
    #[arg(long, default_value_t = Keep::All)]
    keep: Keep,
    /// Append every accepted event as one JSON line to this file.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let config = ReceiverConfig {
        key: cli.key,
        bearer_token: cli.bearer_token,
        schema: cli.schema,
        path: cli.path,
        keep: cli.keep,
        record_path: cli.record,
    };
    let addr = SocketAddr::new(cli.bind, cli.port);
    let receiver = eventgrid_receiver::start(config, addr)
        .await
        .with_context(|| format!("cannot start the receiver on {addr}"))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "eventgrid-receiver listening on {}",
            receiver.endpoint()
        )
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    }

    wait_for_signal().await?;
    tracing::info!("Shutting down");
    receiver.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = terminate.recv() => {}
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

//! `devstack`: fetch a real `mongod`, start and stop a single-node replica set.
//!
//! ```text
//! devstack mongod start --dir DIR [--port P] [--test-commands]   # prints the URI
//! devstack mongod stop  --dir DIR
//! devstack mongod uri   --dir DIR                                # prints the URI
//! devstack mongod fetch                                          # prints the binary's path
//! ```
//!
//! Only the result goes to stdout, so scripts can capture it (`URI=$(devstack mongod start …)`);
//! logs go to stderr (`RUST_LOG` filters them, default `info`).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use devstack::{ReplicaSet, ReplicaSetOptions};
use tracing_subscriber::EnvFilter;

/// Development stack for outbox-relay.
#[derive(Debug, Parser)]
#[command(name = "devstack", version)]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// A real MongoDB 6.0.5 single-node replica set (rs0) on 127.0.0.1.
    Mongod {
        #[command(subcommand)]
        action: MongodAction,
    },
}

#[derive(Debug, Subcommand)]
enum MongodAction {
    /// Start a fresh replica set in DIR (wipes DIR/data), print its URI, leave it running.
    Start {
        /// Directory for data, log, pid file and uri file.
        #[arg(long)]
        dir: PathBuf,
        /// Port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Enable test commands (configureFailPoint, e.g. the failCommand fail point).
        #[arg(long)]
        test_commands: bool,
    },
    /// Stop the replica set recorded in DIR (fine if it is already gone).
    Stop {
        /// Directory the replica set was started in.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the URI of the replica set running from DIR.
    Uri {
        /// Directory the replica set was started in.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Download mongod into the cache if needed and print its path.
    Fetch,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "devstack: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Service::Mongod { action } = cli.service;
    match action {
        MongodAction::Start {
            dir,
            port,
            test_commands,
        } => {
            let rs = ReplicaSet::start(ReplicaSetOptions {
                port,
                enable_test_commands: test_commands,
                ..ReplicaSetOptions::new(dir)
            })
            .await?;
            print_line(rs.uri())?;
            rs.detach();
        }
        MongodAction::Stop { dir } => {
            if ReplicaSet::stop_in(&dir).await? {
                tracing::info!("Stopped the replica set in {}", dir.display());
            } else {
                tracing::info!(
                    "No mongod is running from {}; nothing to stop",
                    dir.display()
                );
            }
        }
        MongodAction::Uri { dir } => print_line(ReplicaSet::attach(&dir)?.uri())?,
        MongodAction::Fetch => print_line(&devstack::ensure_mongod().await?.display().to_string())?,
    }
    Ok(())
}

/// Writes the command's result to stdout (the only thing that goes there).
fn print_line(text: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{text}")?;
    Ok(())
}

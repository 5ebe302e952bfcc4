//! The `handler` binary: Functions mode (started by the Azure Functions host), standalone mode
//! (`handler serve`) and operator commands (`handler outbox …`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use outbox_relay::app::{App, Mode, SHUTDOWN_GRACE};
use outbox_relay::config::{self, Env, MongoSettings, Settings};
use outbox_relay::domain::EventId;
use outbox_relay::standalone::{self, Schedule};
use outbox_relay::{ops, telemetry};
use tokio_util::sync::CancellationToken;

/// Transactional outbox for MongoDB / Azure Cosmos DB for MongoDB, relayed to Azure Event Grid.
///
/// Without a command it runs as an Azure Functions custom handler on
/// FUNCTIONS_CUSTOMHANDLER_PORT. Settings come from the environment (see the README).
#[derive(Debug, Parser)]
#[command(name = "handler", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run without the Functions host: HTTP API, health, admin endpoint and the drain on its
    /// schedule.
    #[command(after_help = serve_help())]
    Serve {
        /// Port to listen on [default: STANDALONE_PORT, else 7071].
        #[arg(long)]
        port: Option<u16>,
    },
    /// Inspect the outbox, change dead-lettered entries (requeue, skip), check the set-up
    /// (doctor), publish retained events again (replay).
    ///
    /// `status` only reads; `requeue` and `skip` change entries in the database. They need
    /// MONGODB_URI and the same MONGODB_*/OUTBOX_* settings as the relay, so that they find the
    /// entries where it keeps them; `doctor` and `replay` need the topic's settings too.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Entries by state, the age of the oldest pending one, the oldest dead letters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check everything the relay depends on (database, indexes, Event Grid, timings) and say
    /// how to fix what is wrong; exits non-zero when a check fails. Publishes nothing.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish again the published events still retained in a time window, through the normal
    /// publisher and rate limit, with their original ids. Ctrl-C stops after the request in
    /// flight; the same command resumes without sending twice what Event Grid accepted.
    Replay {
        /// Events written at or after this time (RFC 3339, e.g. 2026-12-05T09:00:00Z).
        #[arg(long, value_parser = ops::replay::parse_time)]
        since: chrono::DateTime<chrono::Utc>,
        /// Events written before this time [default: when the replay first started].
        #[arg(long, value_parser = ops::replay::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events of this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give each event a derived id and a `replayof` naming the original.
        #[arg(long)]
        new_ids: bool,
    },
    /// Make dead-lettered entries pending again (attempts reset; history kept).
    // One of the two is required, and clap's error then names both.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all_dead"])))]
    Requeue {
        /// Event id of a dead letter (repeatable).
        #[arg(long = "id", value_name = "EVENT_ID")]
        ids: Vec<uuid::Uuid>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
    },
    /// Never publish these dead letters; with OUTBOX_ORDERING=subject this lets later entries
    /// of their subjects go.
    Skip {
        /// Event id of a dead letter (repeatable).
        #[arg(long = "id", value_name = "EVENT_ID", required = true)]
        ids: Vec<uuid::Uuid>,
    },
    /// OUTBOX_SOURCE=change-stream: publish every document as a DocumentSnapshot event, then
    /// let the stream resume from a position recorded before the snapshot (after a lost
    /// position). Needs the Event Grid settings too; no reader may be running.
    Resync,
}

/// The part of `handler serve --help` after the options: what it needs, and how it stops.
fn serve_help() -> String {
    format!(
        "Required settings (environment variables):\n  \
         MONGODB_URI               connection string of a replica set\n  \
         EVENTGRID_TOPIC_ENDPOINT  the topic's whole .../api/events URL\n  \
         STANDALONE_FUNCTION_KEY   only when STANDALONE_BIND is not a loopback address\n\
         Without EVENTGRID_TOPIC_KEY it authenticates with Entra ID. Every other setting has a \
         default (see the README).\n\n\
         SIGTERM or Ctrl-C stops it gracefully: requests in flight and a running drain get {} s, \
         then it exits; a second signal stops it at once.",
        SHUTDOWN_GRACE.as_secs()
    )
}

/// How long the runtime may take to stop once `main`'s work is done. Tasks a bounded stop cut
/// short (connections, a drain) are dropped then; this only bounds blocking work (such as a
/// name lookup) that cannot be dropped.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::process();
    match cli.command {
        Some(Command::Outbox { .. }) => {
            telemetry::init(&config::log_filter(&env, "warn"), telemetry::Output::Stderr);
        }
        _ => telemetry::init(&config::log_filter(&env, "info"), telemetry::Output::Split),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli, &env));
    runtime.shutdown_timeout(RUNTIME_STOP);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Exit non-zero: under the Functions host this makes it restart us and record why.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, env: &Env) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let port = config::functions_port(env)?;
            let settings = Settings::from_env(env)?;
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            serve(&settings, Mode::Functions, addr, None).await
        }
        Some(Command::Serve { port }) => {
            let settings = Settings::from_env(env)?;
            let schedule = standalone::schedule::resolve(&settings)?;
            let addr = SocketAddr::new(
                settings.standalone_bind,
                port.unwrap_or(settings.standalone_port),
            );
            serve(&settings, Mode::Standalone, addr, Some(schedule)).await
        }
        Some(Command::Outbox {
            command: OutboxCommand::Status { json },
        }) => {
            let settings = MongoSettings::from_env(env)?;
            let status = ops::status(settings)
                .await
                .context("cannot read the outbox")?;
            if json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&status)?));
            } else {
                emit(&ops::render_status(&status));
            }
            Ok(())
        }
        Some(Command::Outbox {
            command: OutboxCommand::Doctor { json },
        }) => doctor(env, json).await,
        Some(Command::Outbox {
            command:
                OutboxCommand::Replay {
                    since,
                    until,
                    subject,
                    event_type,
                    dry_run,
                    new_ids,
                },
        }) => {
            let request = ops::replay::ReplayRequest {
                since,
                until,
                subject,
                event_type,
                dry_run,
                new_ids,
            };
            replay(env, &request).await
        }
        Some(Command::Outbox {
            command: OutboxCommand::Requeue { ids, all_dead },
        }) => {
            let settings = MongoSettings::from_env(env)?;
            let ids: Vec<EventId> = ids.into_iter().map(EventId::from_uuid).collect();
            let n = ops::requeue(settings, (!all_dead).then_some(ids.as_slice()))
                .await
                .context("cannot requeue")?;
            emit(&format!("requeued {n} dead-lettered entries\n"));
            Ok(())
        }
        Some(Command::Outbox {
            command: OutboxCommand::Resync,
        }) => resync(env).await,
        Some(Command::Outbox {
            command: OutboxCommand::Skip { ids },
        }) => {
            let settings = MongoSettings::from_env(env)?;
            let ids: Vec<EventId> = ids.into_iter().map(EventId::from_uuid).collect();
            let n = ops::skip(settings, &ids).await.context("cannot skip")?;
            emit(&format!("skipped {n} dead-lettered entries\n"));
            Ok(())
        }
    }
}

/// Writes an operator command's output to stdout. A reader that went away (`handler outbox
/// status | head`) is not an error: the rest of the output is simply not wanted (`println!`
/// would panic on the broken pipe instead).
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::warn!(error = %e, "Cannot write the output");
    }
}

/// `handler outbox doctor`: the facts of the function app's files, the checks, the report.
async fn doctor(env: &Env, json: bool) -> anyhow::Result<()> {
    let settings = Settings::from_env(env)?;
    let app = ops::doctor::AppFacts {
        function_timeout: outbox_relay::functions::binding::function_timeout(&settings.app_root),
        schedule: standalone::schedule::resolve(&settings)
            .map(|s| ops::doctor::ScheduleFacts {
                expression: s.expression().to_owned(),
                interval: s.interval(),
            })
            .map_err(|e| e.to_string()),
    };
    let report = ops::doctor::run(&settings, &app).await;
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        emit(&report.render());
    }
    anyhow::ensure!(
        report.ok,
        "the doctor found problems; each has its fix above"
    );
    Ok(())
}

/// `handler outbox resync`, with a progress bar on a terminal and Ctrl-C.
async fn resync(env: &Env) -> anyhow::Result<()> {
    let settings = Settings::from_env(env)?;
    anyhow::ensure!(
        settings.mongodb.source == config::EventSource::ChangeStream,
        "resync is for OUTBOX_SOURCE=change-stream"
    );
    let storage = std::sync::Arc::new(outbox_relay::outbox::Storage::new(
        outbox_relay::db::Db::new(settings.mongodb.clone()),
    ));
    let publisher = outbox_relay::publisher::Publisher::new(&settings.eventgrid)?;
    let relay = outbox_relay::relay::Relay::new(storage, publisher, settings.relay.clone())
        .with_event_types(settings.event_types.clone());
    let interrupt = CancellationToken::new();
    ops::terminal::watch_interrupts(interrupt.clone());
    let bar = ops::terminal::Bar::new("documents");
    let done = relay
        .resync(&interrupt, &bar)
        .await
        .context("resync did not finish")?;
    drop(bar);
    emit(&format!(
        "resynced {} documents ({} published, {} dead-lettered); the stream resumes from before the snapshot\n",
        done.documents, done.published, done.dead_lettered
    ));
    Ok(())
}

/// `handler outbox replay`: the replay with a progress bar, stopped by Ctrl-C, and its summary.
async fn replay(env: &Env, request: &ops::replay::ReplayRequest) -> anyhow::Result<()> {
    let settings = Settings::from_env(env)?;
    let interrupt = CancellationToken::new();
    ops::terminal::watch_interrupts(interrupt.clone());
    let bar = ops::terminal::Bar::new("events");
    let summary = ops::replay::run(&settings, request, &interrupt, &bar).await;
    drop(bar);
    let summary = summary.context("replay stopped")?;
    emit(&ops::replay::render_summary(&summary));
    anyhow::ensure!(!summary.interrupted, "replay interrupted");
    Ok(())
}

async fn serve(
    settings: &Settings,
    mode: Mode,
    addr: SocketAddr,
    schedule: Option<Schedule>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Installed before anything starts, so that a signal during start-up is a graceful stop too.
    let signals = StopSignals::install().context("cannot handle SIGTERM and SIGINT")?;
    let app = App::build(settings, mode, addr, schedule, shutdown.clone()).await?;
    let watcher = tokio::spawn(stop_on_signals(signals, shutdown));
    let result = app.run().await;
    watcher.abort();
    let _ = watcher.await;
    result
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT (Ctrl-C), which gives the process
/// [`SHUTDOWN_GRACE`] to stop; exits at once on a second one. (The Functions host uses SIGKILL,
/// which nothing can catch; correctness never depends on this.)
async fn stop_on_signals(mut signals: StopSignals, shutdown: CancellationToken) {
    let first = signals.next().await;
    tracing::info!(
        signal = first.name,
        grace_secs = SHUTDOWN_GRACE.as_secs(),
        "Shutting down; a second signal stops at once"
    );
    shutdown.cancel();
    let second = signals.next().await;
    tracing::warn!(
        signal = second.name,
        "Second signal: stopping at once, cutting short what is still running (entries a drain claimed are published again when their lease runs out)"
    );
    // Our handlers replaced the default action, so a signal no longer ends the process: exit
    // as that default would have, with the status a shell reports for it.
    std::process::exit(second.exit_code);
}

/// A stop signal that arrived.
struct Received {
    name: &'static str,
    /// 128 + the signal's number.
    exit_code: i32,
}

/// SIGTERM and SIGINT, each received as often as it is sent.
#[cfg(unix)]
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.terminate.recv() => Received { name: "SIGTERM", exit_code: 143 },
            _ = self.interrupt.recv() => Received { name: "SIGINT", exit_code: 130 },
        }
    }
}

/// Ctrl-C, received as often as it is pressed.
#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> Received {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Received {
            name: "Ctrl-C",
            exit_code: 130,
        }
    }
}

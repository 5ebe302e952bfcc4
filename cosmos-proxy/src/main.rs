//! `cosmos-ru-proxy`: runs the Cosmos DB RU emulation proxy in front of a `mongod`.
//!
//! Prints one line, `cosmos-ru-proxy listening on HOST:PORT`, on stdout once it listens; logs
//! go to stderr (`RUST_LOG`, default `info`). It is controlled through stdin, one command a
//! line, each answered with one line on stdout (`ok`, a JSON document, or `error: …`):
//!
//! | command | effect |
//! | --- | --- |
//! | `throttle N` | throttle the next N matching commands with 16500 |
//! | `rate P` | throttle each matching command with probability P |
//! | `retry-after-ms N` | `RetryAfterMs` in 16500 messages |
//! | `writes-only on\|off` | throttle only writes, or all data commands |
//! | `error50 N` | forward the next N matching commands, answer error 50 |
//! | `error50-delay-ms N` | wait N ms before answering error 50 |
//! | `txn-limit-ms N` | transaction limit |
//! | `shard DB.COLL KEY` | mark a collection sharded on KEY (as `CreateCollection` would) |
//! | `stats` | counters as JSON |
//! | `transactions` | the per-transaction log as JSON |
//! | `reset` | zero the counters and turn every fault off |
//!
//! It stops on Ctrl-C or SIGTERM (not at the end of stdin, so it can run with stdin closed).

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use cosmos_ru_proxy::{Match, ProxyConfig, ProxyHandle};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "MongoDB proxy imitating Azure Cosmos DB for MongoDB (RU) rules"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The `mongod` to forward to.
    #[arg(long, default_value = "127.0.0.1:27017")]
    upstream: SocketAddr,
    /// Probability (0–1) that a data command is throttled with 16500.
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// `RetryAfterMs` in 16500 messages.
    #[arg(long, default_value_t = cosmos_ru_proxy::DEFAULT_RETRY_AFTER_MS)]
    retry_after_ms: u64,
    /// Throttle only writes (insert/update/delete/findAndModify/commitTransaction).
    #[arg(long)]
    throttle_writes_only: bool,
    /// Transaction limit in milliseconds.
    #[arg(long, default_value_t = 5000)]
    txn_limit_ms: u64,
    /// Seed for the throttle's random draws.
    #[arg(long)]
    seed: Option<u64>,
    /// Accept TTL indexes on any field (Cosmos DB RU offers them on `_ts` only).
    #[arg(long)]
    allow_custom_ttl: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = ProxyConfig {
        txn_limit: Duration::from_millis(args.txn_limit_ms),
        throttle_rate: args.throttle_rate.clamp(0.0, 1.0),
        retry_after_ms: args.retry_after_ms,
        throttle_match: if args.throttle_writes_only {
            Match::writes()
        } else {
            Match::data()
        },
        seed: args.seed,
        ttl_only_on_ts: !args.allow_custom_ttl,
        ..ProxyConfig::default()
    };
    let proxy = cosmos_ru_proxy::start(config, args.listen, args.upstream)
        .await
        .context("cannot start the proxy")?;
    println!("cosmos-ru-proxy listening on {}", proxy.local_addr());
    let handle = proxy.handle();
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            line = lines.recv(), if stdin_open => match line {
                Some(line) => println!("{}", control(&handle, &line)),
                None => stdin_open = false,
            },
        }
    }
    proxy.shutdown().await;
    Ok(())
}

/// Lines of stdin, read on a thread of their own.
///
/// Not `tokio::io::stdin`: its blocking read cannot be cancelled, so the runtime would wait
/// for one more line before the process could exit. This thread is the one piece not joined
/// at shutdown: it is blocked in `read`, and ends with the process.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(line) => {
                        if tx.blocking_send(line).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Cannot read stdin; control commands are off");
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "Cannot start the stdin reader; control commands are off");
    }
    rx
}

/// Runs one control command; returns the line to print.
fn control(handle: &ProxyHandle, line: &str) -> String {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    let number = || -> Result<u64, String> {
        arg.ok_or_else(|| format!("error: {command} needs a number"))?
            .parse::<u64>()
            .map_err(|err| format!("error: {err}"))
    };
    let result = match command {
        "" => return String::new(),
        "throttle" => number().map(|n| handle.throttle_next(n)),
        "rate" => arg
            .ok_or_else(|| "error: rate needs a probability".to_owned())
            .and_then(|p| p.parse::<f64>().map_err(|err| format!("error: {err}")))
            .map(|p| handle.set_throttle_rate(p)),
        "retry-after-ms" => number().map(|n| handle.set_retry_after_ms(n)),
        "writes-only" => match arg {
            Some("on") => Ok(Match::writes()),
            Some("off") => Ok(Match::data()),
            _ => Err("error: writes-only on|off".to_owned()),
        }
        .map(|rule| handle.set_throttle_match(rule)),
        "error50" => number().map(|n| handle.error50_next(n)),
        "error50-delay-ms" => number().map(|n| handle.set_error50_delay(Duration::from_millis(n))),
        "txn-limit-ms" => number().map(|n| handle.set_txn_limit(Duration::from_millis(n))),
        "shard" => match (arg, words.next()) {
            (Some(namespace), Some(key)) if namespace.contains('.') => {
                handle.shard_collection(namespace, key);
                Ok(())
            }
            _ => Err("error: shard DB.COLL KEY".to_owned()),
        },
        "stats" => return to_json(&handle.stats()),
        "transactions" => return to_json(&handle.transactions()),
        "reset" => {
            handle.reset();
            Ok(())
        }
        other => Err(format!("error: unknown command {other:?}")),
    };
    match result {
        Ok(()) => "ok".to_owned(),
        Err(message) => message,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| format!("error: {err}"))
}

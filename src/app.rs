//! Wiring: the listener, the shared clients, the router, and the background tasks; serving, and
//! a stop bounded by [`SHUTDOWN_GRACE`].

use std::future::{Future, IntoFuture as _};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{EventSchema, PlacementSetting, Settings};
use crate::db::{Db, DbError};
use crate::documents::DocumentService;
use crate::functions::binding::HttpFunction;
use crate::functions::{self, OutboxTimer, WriteDocumentHttp};
use crate::metrics::export::Exporters;
use crate::outbox::Storage;
use crate::publisher::Publisher;
use crate::push::{self, Handoff, Inbox};
use crate::relay::Relay;
use crate::standalone::{self, Schedule};
use crate::telemetry::chain;

/// How long a graceful stop may take. When shutdown begins the listener closes, and idle
/// keep-alive connections with it; requests in flight, connections still open and a running
/// drain then have this long before they are cut short and the process exits. Cutting them
/// short loses nothing: entries a drain had claimed stay pending and are published again once
/// their lease runs out (delivery is at least once).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the stop waits for the push exporters to send the last metrics.
const METRICS_FLUSH: Duration = Duration::from_secs(5);

/// Which routes to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Started by the Functions host: envelopes, and raw requests for forwarding mode.
    Functions,
    /// `handler serve`: raw requests and the admin endpoint.
    Standalone,
}

/// The push path's two ends, when it is on: `OUTBOX_PUSH=on`, except with
/// `OUTBOX_ORDERING=subject`, where a pushed event could overtake an older one of its subject
/// that is backing off (the drain defers such entries; the push path cannot see them).
fn push_path(settings: &Settings) -> Option<(Handoff, Inbox)> {
    if !settings.relay.push {
        return None;
    }
    if settings.mongodb.placement == PlacementSetting::Embedded {
        tracing::info!(
            "OUTBOX_PLACEMENT=embedded: the push path is off (events live in their documents, where a push cannot hold them); events are published by drains and the tail"
        );
        return None;
    }
    if settings.mongodb.ordered_by_subject {
        tracing::info!(
            "OUTBOX_ORDERING=subject: the push path is off, so that no event overtakes an older one of its subject; events are published by drains"
        );
        return None;
    }
    Some(push::channel(
        settings.relay.lease,
        settings.relay.write_wait,
    ))
}

/// A bound, ready-to-run handler.
pub struct App {
    listener: TcpListener,
    router: Router,
    mode: Mode,
    /// What runs beside serving: the standalone schedule or tail, the push path.
    background: Vec<Background>,
    storage: Arc<Storage>,
    shutdown: CancellationToken,
    /// The metrics' exporters, flushed when serving ends.
    exporters: Exporters,
}

/// Work that runs beside serving, started by [`App::run`] and stopped with it.
enum Background {
    /// The standalone timer and what it runs.
    Schedule(Box<Schedule>, OutboxTimer),
    /// Standalone mode's continuous relay (`OUTBOX_TAIL=on`).
    Tail(Relay),
    /// The push path's publisher (`OUTBOX_PUSH=on`).
    Push(Relay, Inbox),
    /// Reads the backlog for the metrics every interval, when anything exports them.
    Backlog(Relay, Duration),
}

impl Background {
    fn name(&self) -> &'static str {
        match self {
            Self::Schedule(..) => "schedule",
            Self::Tail(_) => "tail",
            Self::Push(..) => "push",
            Self::Backlog(..) => "backlog",
        }
    }

    fn spawn(self, shutdown: CancellationToken) -> (&'static str, JoinHandle<()>) {
        let name = self.name();
        let task = match self {
            Self::Schedule(schedule, timer) => {
                tokio::spawn(standalone::schedule::run(*schedule, timer, shutdown))
            }
            Self::Tail(relay) => tokio::spawn(async move {
                relay.tail(None, &shutdown).await;
            }),
            Self::Push(relay, inbox) => tokio::spawn(async move {
                relay.push(inbox, shutdown).await;
            }),
            Self::Backlog(relay, every) => tokio::spawn(async move {
                relay.sample_backlog(every, shutdown).await;
            }),
        };
        (name, task)
    }
}

impl App {
    /// Binds `addr` first (port 0 picks a free port), then builds the clients. Nothing here
    /// talks to the database: it connects on first use, so `GET /` answers at once.
    ///
    /// `schedule` is the standalone timer, if any. `shutdown` stops serving, the schedule and
    /// running drains.
    ///
    /// # Errors
    /// When the address cannot be bound or a client cannot be built.
    pub async fn build(
        settings: &Settings,
        mode: Mode,
        addr: SocketAddr,
        schedule: Option<Schedule>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        // Before anything records: the instruments bind to the provider installed here, and its
        // HTTP clients need the TLS provider.
        crate::publisher::install_crypto_provider();
        let exporters = Exporters::install(&settings.metrics, mode == Mode::Standalone)?;
        // The one place the core is built; every adapter gets its part of it.
        let storage = Arc::new(Storage::new(Db::new(settings.mongodb.clone())));
        let publisher = Publisher::new(&settings.eventgrid)?;
        let relay = Relay::new(Arc::clone(&storage), publisher, settings.relay.clone())
            .with_event_types(settings.event_types.clone());
        let mut documents =
            DocumentService::new(Arc::clone(&storage), settings.event_types.clone());
        if settings.eventgrid.schema == EventSchema::CloudEvents {
            documents = documents.with_cloudevents_source(settings.eventgrid.source.clone());
        }
        let mut background = Vec::new();
        if exporters.any(&settings.metrics) {
            background.push(Background::Backlog(
                relay.clone(),
                settings.metrics.backlog_interval,
            ));
        }
        if let Some((handoff, inbox)) = push_path(settings) {
            documents = documents.with_push(handoff);
            background.push(Background::Push(relay.clone(), inbox));
        }
        let write = WriteDocumentHttp::new(documents, HttpFunction::load(&settings.app_root)?);
        let timer = OutboxTimer::new(relay.clone(), settings.relay.time_budget, shutdown.clone());
        match schedule {
            Some(_) if settings.relay.tail => {
                tracing::info!(
                    poll_ms = settings.relay.poll.as_millis(),
                    "OUTBOX_TAIL=on: relaying continuously (OUTBOX_SCHEDULE is not used)"
                );
                background.push(Background::Tail(relay));
            }
            Some(schedule) => {
                background.push(Background::Schedule(Box::new(schedule), timer.clone()))
            }
            None => {}
        }
        let router = match mode {
            Mode::Functions => functions::router(
                write,
                timer,
                crate::admin::OutboxPage::new(Arc::clone(&storage)),
            ),
            Mode::Standalone => standalone::router(
                write,
                timer,
                crate::admin::OutboxPage::new(Arc::clone(&storage)).routes(),
                settings.standalone_key.clone(),
            ),
        };
        let router = match exporters.prometheus() {
            Some(text) => router.merge(standalone::metrics::routes(
                text,
                settings.standalone_key.clone(),
            )),
            None => router,
        };
        Ok(Self {
            listener,
            router,
            mode,
            background,
            storage,
            shutdown,
            exporters,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled (or serving fails), then gives in-flight
    /// requests, open connections and a running scheduled drain [`SHUTDOWN_GRACE`] to finish,
    /// and returns, logging what it cut short. Whatever is still running then stops when the
    /// runtime is shut down.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            mode,
            background,
            storage,
            shutdown,
            exporters,
        } = self;
        tracing::info!(
            address = %listener.local_addr()?,
            mode = ?mode,
            "Listening"
        );
        // Prepare the database in the background so the first request finds it ready; a
        // failure here is retried on first use, unless the database cannot serve the
        // configuration at all (a placement the collection does not allow): then the process
        // stops, naming the fix, as a bad setting would.
        let stop_on_refusal = shutdown.clone();
        let prepare: JoinHandle<Option<String>> = tokio::spawn(async move {
            match storage.ready().await {
                Ok(_) => None,
                Err(DbError::Misconfigured(reason)) => {
                    tracing::error!("The database cannot serve this configuration: {reason}");
                    stop_on_refusal.cancel();
                    Some(reason)
                }
                Err(e) => {
                    tracing::warn!(
                        error = %chain(&e),
                        "The database is not reachable yet; it will be tried again on first use"
                    );
                    None
                }
            }
        });
        let tasks: Vec<_> = background
            .into_iter()
            .map(|work| work.spawn(shutdown.clone()))
            .collect();
        let open = Open::default();
        let listener = CountingListener {
            inner: listener,
            connections: open.connections.clone(),
        };
        let router = router.layer(middleware::from_fn_with_state(
            open.requests.clone(),
            count_request,
        ));
        let serving = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        let served = serve_until_stopped(serving, &shutdown, &open, tasks).await;
        let refused = if prepare.is_finished() {
            prepare.await.ok().flatten()
        } else {
            prepare.abort();
            let _ = prepare.await;
            None
        };
        // The push exporters send what they have not yet: blocking, so off the workers, and
        // bounded, since an unreachable endpoint would hold the stop for its retries.
        let flush = tokio::task::spawn_blocking(move || exporters.shutdown());
        if tokio::time::timeout(METRICS_FLUSH, flush).await.is_err() {
            tracing::warn!("The last metrics could not be sent in time; stopping without them");
        }
        tracing::info!("Stopped");
        if let Some(reason) = refused {
            anyhow::bail!("the database cannot serve this configuration: {reason}");
        }
        served.context("serving HTTP failed")
    }
}

/// Awaits `serving` until `shutdown`, then gives it and the background `tasks` one
/// [`SHUTDOWN_GRACE`] together, cutting short (and logging) what is still running after it.
async fn serve_until_stopped(
    serving: impl Future<Output = io::Result<()>>,
    shutdown: &CancellationToken,
    open: &Open,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
) -> io::Result<()> {
    let mut serving = pin!(serving);
    let ended = tokio::select! {
        served = &mut serving => Some(served),
        () = shutdown.cancelled() => None,
    };
    // Serving can also end by itself (it failed): everything else stops then too.
    shutdown.cancel();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let served = match ended {
        Some(served) => served,
        None => finish_serving(serving, deadline, open).await,
    };
    for (name, task) in tasks {
        finish_task(name, task, deadline).await;
    }
    served
}

/// Lets graceful shutdown finish until `deadline`. It closes idle connections at once, but would
/// wait without end for a request that never completes (a client stalled mid-headers or
/// mid-body) or takes long (a drain behind the admin endpoint): past the deadline those are
/// left to the runtime's shutdown, which drops them.
async fn finish_serving(
    serving: Pin<&mut impl Future<Output = io::Result<()>>>,
    deadline: Instant,
    open: &Open,
) -> io::Result<()> {
    if let Ok(served) = tokio::time::timeout_at(deadline, serving).await {
        return served;
    }
    tracing::warn!(
        connections = open.connections.get(),
        requests = open.requests.get(),
        grace_secs = SHUTDOWN_GRACE.as_secs(),
        "HTTP connections were still open at the end of the shutdown grace; closing them and cutting short their requests"
    );
    Ok(())
}

/// Waits for a background task until `deadline`, then stops it with the work it is doing.
async fn finish_task(name: &'static str, mut task: JoinHandle<()>, deadline: Instant) {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(outcome) => report_exit(name, outcome),
        Err(_) => {
            tracing::warn!(
                task = name,
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "A background task did not finish within the shutdown grace; stopping it: the entries it held are published again when their lease runs out"
            );
            task.abort();
            // Dropped at its next await point, with the drain and its batch tasks.
            let _ = task.await;
        }
    }
}

fn report_exit(task: &str, outcome: Result<(), tokio::task::JoinError>) {
    match outcome {
        Ok(()) => tracing::debug!(task, "Background task ended"),
        Err(e) => tracing::error!(task, error = %e, "Background task failed"),
    }
}

/// What is open right now, so that a stop can say what it cut short.
#[derive(Debug, Clone, Default)]
struct Open {
    connections: Gauge,
    requests: Gauge,
}

/// A count of things open, each held by a [`GaugeGuard`].
#[derive(Debug, Clone, Default)]
struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    fn enter(&self) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.clone())
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one open thing until dropped.
#[derive(Debug)]
struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request from when routing gets it until its response is ready.
async fn count_request(State(requests): State<Gauge>, request: Request, next: Next) -> Response {
    let _open = requests.enter();
    next.run(request).await
}

/// The bound listener, counting the connections it accepted that are still open.
struct CountingListener {
    inner: TcpListener,
    connections: Gauge,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept logs and retries errors (out of file descriptors, say).
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let open = self.connections.enter();
        (CountedConnection { io, _open: open }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection, counted until it is closed (dropped).
struct CountedConnection {
    io: TcpStream,
    _open: GaugeGuard,
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

//! Wiring: the listener, the shared clients, the router, and the background tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::Db;
use crate::documents::DocumentService;
use crate::functions::binding::HttpFunction;
use crate::functions::{self, OutboxTimer, WriteDocumentHttp};
use crate::outbox::Storage;
use crate::publisher::Publisher;
use crate::relay::Relay;
use crate::standalone::{self, Schedule};
use crate::telemetry::chain;

/// Which routes to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Started by the Functions host: envelopes, and raw requests for forwarding mode.
    Functions,
    /// `handler serve`: raw requests and the admin endpoint.
    Standalone,
}

/// A bound, ready-to-run handler.
pub struct App {
    listener: TcpListener,
    router: Router,
    mode: Mode,
    /// The standalone timer and what it runs.
    schedule: Option<(Schedule, OutboxTimer)>,
    storage: Arc<Storage>,
    shutdown: CancellationToken,
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
        // The one place the core is built; every adapter gets its part of it.
        let storage = Arc::new(Storage::new(Db::new(settings.mongodb.clone())));
        let publisher = Publisher::new(&settings.eventgrid)?;
        let relay = Relay::new(Arc::clone(&storage), publisher, settings.relay.clone());
        let documents = DocumentService::new(Arc::clone(&storage), settings.event_types.clone());
        let write = WriteDocumentHttp::new(documents, HttpFunction::load(&settings.app_root)?);
        let timer = OutboxTimer::new(relay, settings.relay.time_budget, shutdown.clone());
        let router = match mode {
            Mode::Functions => functions::router(write, timer.clone()),
            Mode::Standalone => {
                standalone::router(write, timer.clone(), settings.standalone_key.clone())
            }
        };
        Ok(Self {
            listener,
            router,
            mode,
            schedule: schedule.map(|s| (s, timer)),
            storage,
            shutdown,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled, then waits for in-flight requests and
    /// background tasks to finish.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            mode,
            schedule,
            storage,
            shutdown,
        } = self;
        tracing::info!(
            address = %listener.local_addr()?,
            mode = ?mode,
            "Listening"
        );
        // Prepare the database in the background so the first request finds it ready; a
        // failure here is retried on first use.
        let prepare: JoinHandle<()> = tokio::spawn(async move {
            match storage.ready().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %chain(&e),
                    "The database is not reachable yet; it will be tried again on first use"
                ),
            }
        });
        let timer = schedule.map(|(schedule, timer)| {
            tokio::spawn(standalone::schedule::run(schedule, timer, shutdown.clone()))
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        if let Some(timer) = timer {
            report_exit("schedule", timer.await);
        }
        prepare.abort();
        let _ = prepare.await;
        tracing::info!("Stopped");
        served.context("serving HTTP failed")
    }
}

fn report_exit(task: &str, outcome: Result<(), tokio::task::JoinError>) {
    match outcome {
        Ok(()) => tracing::debug!(task, "Background task ended"),
        Err(e) => tracing::error!(task, error = %e, "Background task failed"),
    }
}

//! A single-node MongoDB replica set (`rs0`) that lives in one directory.
//!
//! Layout of the directory `DIR`:
//!
//! | path | what |
//! | --- | --- |
//! | `DIR/data` | the data files (`--dbpath`); wiped by [`ReplicaSet::start`], kept by restarts |
//! | `DIR/mongod.log` | the server log (appended to across restarts) |
//! | `DIR/mongod.pid` | the server's pid, written by `mongod` itself |
//! | `DIR/uri` | the connection string, written last: it exists once the node is a writable primary |
//!
//! `mongod` runs with `--fork`: it is a daemon, not a child of the caller, so it outlives the
//! process that started it (that is what lets `devstack mongod start` exit) and is addressed only
//! by its pid. Transactions and change streams need a replica set even for one node, hence `rs0`.

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind as DriverErrorKind;

use crate::fetch::tail_lines;
use crate::process::{self, Signal};

/// The replica set name every node started here uses.
pub const REPLICA_SET_NAME: &str = "rs0";

/// How long the `--fork` parent may take to report the server ready for connections.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a started node may take to become a writable primary (a second or two normally;
/// generous because the machine is shared).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGKILLed process may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(15);
/// Ports tried when the caller lets us pick one (another process may grab a picked port before
/// `mongod` binds it).
const START_ATTEMPTS: u32 = 5;
/// `mongod`'s exit code for a listener it could not set up (in practice: address in use).
const EXIT_NET_ERROR: i32 = 48;
/// Server error code for `replSetInitiate` on a node that already has a config.
const ALREADY_INITIALIZED: i32 = 23;

/// How to start a [`ReplicaSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetOptions {
    /// Directory that holds everything (data, log, pid file, uri file); created if missing.
    /// `DIR/data` is wiped on start.
    pub dir: PathBuf,
    /// Port on 127.0.0.1; `None` picks a free one (retrying if another process takes it first).
    pub port: Option<u16>,
    /// Start with `--setParameter enableTestCommands=1`, so tests can use `configureFailPoint`
    /// (for example the `failCommand` fail point).
    pub enable_test_commands: bool,
    /// WiredTiger cache, in MiB (`--wiredTigerCacheSizeGB`). Small by default, for tests that
    /// run several replica sets on a shared machine.
    pub cache_mb: u32,
    /// Oplog size, in MiB (`--oplogSize`).
    pub oplog_mb: u32,
}

impl ReplicaSetOptions {
    /// Options for `dir`, on a free port, without test commands.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            port: None,
            enable_test_commands: false,
            cache_mb: 256,
            oplog_mb: 64,
        }
    }
}

/// The files of one replica set directory.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
    uri_file: PathBuf,
}

impl Layout {
    /// `dir` must be absolute: `mongod --fork` changes directory to `/`, so relative paths in
    /// its arguments would point elsewhere.
    fn new(dir: PathBuf) -> Self {
        Self {
            data: dir.join("data"),
            log: dir.join("mongod.log"),
            pid_file: dir.join("mongod.pid"),
            uri_file: dir.join("uri"),
            dir,
        }
    }

    /// Canonical layout of an existing directory.
    fn existing(dir: &Path) -> anyhow::Result<Self> {
        let canonical = fs::canonicalize(dir)
            .with_context(|| format!("no replica set directory {}", dir.display()))?;
        Ok(Self::new(canonical))
    }

    /// The pid `mongod` recorded, if any.
    fn read_pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// Empties the data directory and removes the previous run's files.
    fn reset(&self) -> anyhow::Result<()> {
        match fs::remove_dir_all(&self.data) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("cannot wipe {}", self.data.display()));
            }
            _ => {}
        }
        fs::create_dir_all(&self.data)
            .with_context(|| format!("cannot create {}", self.data.display()))?;
        for file in [&self.log, &self.pid_file, &self.uri_file] {
            remove_if_exists(file)?;
        }
        Ok(())
    }

    /// Writes the uri file atomically (write a temp file, then rename), so a reader never sees
    /// a partial URI.
    fn write_uri(&self, uri: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".uri.{}", std::process::id()));
        fs::write(&tmp, format!("{uri}\n"))
            .and_then(|()| fs::rename(&tmp, &self.uri_file))
            .with_context(|| format!("cannot write {}", self.uri_file.display()))
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        const MAX_BYTES: u64 = 16 * 1024;
        let read = || -> std::io::Result<String> {
            let mut file = fs::File::open(&self.log)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        match read() {
            Ok(text) => format!(
                "last lines of {}:\n{}",
                self.log.display(),
                tail_lines(&text, 20)
            ),
            Err(err) => format!("(cannot read {}: {err})", self.log.display()),
        }
    }
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Why launching `mongod` failed.
enum LaunchError {
    /// The port was taken (exit code 48); worth retrying on another port.
    AddressInUse,
    /// Anything else.
    Other(anyhow::Error),
}

/// A running (or killed, awaiting [`restart`](Self::restart)) single-node replica set.
///
/// A value returned by [`start`](Self::start) owns its `mongod`: dropping it without
/// [`stop`](Self::stop) sends SIGTERM so a failed test does not leak a server (use
/// [`detach`](Self::detach) to leave it running on purpose). A value returned by
/// [`attach`](Self::attach) does not own it: dropping it does nothing.
#[derive(Debug)]
pub struct ReplicaSet {
    layout: Layout,
    /// The exact argv `mongod` was started with; [`restart`](Self::restart) replays it (same
    /// binary, port, data directory and parameters).
    args: Vec<OsString>,
    port: u16,
    uri: String,
    /// Pid of the current (or last) `mongod` process.
    pid: u32,
    /// Whether dropping `self` stops the server.
    owns_process: bool,
}

impl ReplicaSet {
    /// Starts a fresh single-node replica set: fetches `mongod` if needed
    /// ([`ensure_mongod`](crate::ensure_mongod)), wipes `DIR/data`, starts
    /// `mongod --replSet rs0 --fork` with a small footprint (WiredTiger cache 0.25 GB, oplog
    /// 64 MB, no diagnostic data, no Unix socket), initiates the replica set and waits until the
    /// node is a writable primary. Then writes `DIR/uri`.
    ///
    /// # Errors
    ///
    /// Fails when a `mongod` started from the same directory is still running, when `mongod`
    /// cannot be fetched or started (the requested port is in use, or no free port was found in
    /// a few attempts), or when the node does not become a writable primary in time; the error
    /// includes the tail of `DIR/mongod.log`.
    #[tracing::instrument(skip_all, fields(dir = %opts.dir.display()))]
    pub async fn start(opts: ReplicaSetOptions) -> anyhow::Result<Self> {
        fs::create_dir_all(&opts.dir)
            .with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let layout = Layout::existing(&opts.dir)?;
        if let Some(pid) = layout.read_pid()
            && process::is_our_mongod(pid, &layout.data)
        {
            bail!(
                "a mongod (pid {pid}) is already running from {}: stop it first \
                 (devstack mongod stop --dir {})",
                layout.dir.display(),
                layout.dir.display()
            );
        }
        let mongod = crate::ensure_mongod().await?;

        let attempts = if opts.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut attempt = 0;
        let (port, args, pid) = loop {
            attempt += 1;
            let port = match opts.port {
                Some(port) => port,
                None => crate::pick_free_port().context("cannot pick a free port")?,
            };
            layout.reset()?;
            let args = mongod_args(&mongod, &layout, port, &opts);
            match launch(&args, &layout).await {
                Ok(pid) => break (port, args, pid),
                Err(LaunchError::AddressInUse) if attempt < attempts => {
                    tracing::debug!("Port {port} was taken before mongod could bind it; retrying");
                }
                Err(LaunchError::AddressInUse) => bail!(
                    "cannot start mongod: port {port} on 127.0.0.1 is already in use (choose \
                     another port, or let devstack pick one); {}",
                    layout.log_tail()
                ),
                Err(LaunchError::Other(err)) => return Err(err),
            }
        };

        // From here on `rs` owns the process: if anything below fails, dropping it stops mongod.
        let rs = Self {
            layout,
            args,
            port,
            uri: uri_for(port),
            pid,
            owns_process: true,
        };
        rs.wait_writable_primary().await?;
        rs.layout.write_uri(&rs.uri)?;
        tracing::info!(
            port,
            pid,
            "Started single-node replica set {REPLICA_SET_NAME} on port {port}"
        );
        Ok(rs)
    }

    /// Re-opens the running replica set recorded in `dir` (its pid file and uri file). The value
    /// does not own the process: dropping it leaves `mongod` running, [`stop`](Self::stop) stops
    /// it.
    ///
    /// # Errors
    ///
    /// Fails when `dir` has no uri or pid file (nothing was started there, or it was stopped),
    /// or the recorded process is no longer running.
    pub fn attach(dir: &Path) -> anyhow::Result<Self> {
        let layout = Layout::existing(dir)?;
        if !layout.uri_file.exists() {
            bail!(
                "no replica set is running from {} (no {}): start one with \
                 devstack mongod start --dir {}",
                layout.dir.display(),
                layout.uri_file.display(),
                layout.dir.display()
            );
        }
        let pid = layout.read_pid().with_context(|| {
            format!(
                "no readable pid file {}: no replica set is running from {}",
                layout.pid_file.display(),
                layout.dir.display()
            )
        })?;
        if !process::is_our_mongod(pid, &layout.data) {
            bail!(
                "the mongod recorded in {} (pid {pid}) is not running (stopped or crashed); {}",
                layout.dir.display(),
                layout.log_tail()
            );
        }
        Self::from_running(layout, pid)
    }

    /// Stops the replica set recorded in `dir`, if one is running there. Returns whether one
    /// was running. Used by `devstack mongod stop`, which must not fail on an already stopped
    /// (or never started) directory.
    ///
    /// # Errors
    ///
    /// Fails when a running `mongod` cannot be stopped (see [`stop`](Self::stop)).
    pub async fn stop_in(dir: &Path) -> anyhow::Result<bool> {
        let Ok(layout) = Layout::existing(dir) else {
            return Ok(false);
        };
        let Some(pid) = layout.read_pid() else {
            return Ok(false);
        };
        if !process::is_our_mongod(pid, &layout.data) {
            remove_if_exists(&layout.uri_file)?;
            return Ok(false);
        }
        Self::from_running(layout, pid)?.stop().await?;
        Ok(true)
    }

    /// A non-owning handle on the live `mongod` `pid` of `layout`, its argv read from `/proc`.
    fn from_running(layout: Layout, pid: u32) -> anyhow::Result<Self> {
        let args = process::cmdline(pid)
            .with_context(|| format!("cannot read the command line of mongod pid {pid}"))?;
        let port = port_from_args(&args)
            .with_context(|| format!("mongod pid {pid} has no --port argument"))?;
        Ok(Self {
            layout,
            args,
            port,
            uri: uri_for(port),
            pid,
            owns_process: false,
        })
    }

    /// The connection string: `mongodb://127.0.0.1:PORT/?replicaSet=rs0`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the current (or, after [`kill`](Self::kill), the last) `mongod` process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory holding data, log, pid file and uri file.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The server log, `DIR/mongod.log`.
    pub fn log_path(&self) -> &Path {
        &self.layout.log
    }

    /// Whether the `mongod` process is alive (a zombie counts as gone).
    pub fn is_running(&self) -> bool {
        process::is_our_mongod(self.pid, &self.layout.data)
    }

    /// Whether the signalled process has finished exiting. Not `!is_running()`: an exiting
    /// process loses its command line before it is gone, so it stops looking like our mongod
    /// while it still holds its port and files.
    fn has_exited(&self) -> bool {
        !process::is_running(self.pid)
    }

    /// Leaves the server running when this value is dropped (it can be re-opened with
    /// [`attach`](Self::attach) and stopped with `devstack mongod stop`).
    pub fn detach(mut self) {
        self.owns_process = false;
    }

    /// Stops the server gracefully: SIGTERM to its pid (a clean shutdown), wait until the pid is
    /// gone; after 30 s, SIGKILL. Removes `DIR/uri`. Stopping an already dead server is fine.
    ///
    /// # Errors
    ///
    /// Fails when the signal cannot be sent or the process survives SIGKILL.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown().await
    }

    /// Like [`stop`](Self::stop), but keeps the handle, so [`restart`](Self::restart) can start
    /// the same node again (a clean restart, where [`kill`](Self::kill) is a crash).
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop).
    #[tracing::instrument(skip_all, fields(pid = self.pid))]
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            process::send(self.pid, Signal::Term).await?;
            if !process::wait_until(STOP_TIMEOUT, || self.has_exited()).await {
                tracing::warn!(
                    "mongod pid {} did not stop within {}s of SIGTERM; sending SIGKILL",
                    self.pid,
                    STOP_TIMEOUT.as_secs()
                );
                self.kill_and_wait().await?;
            }
            tracing::info!("Stopped mongod pid {}", self.pid);
        } else {
            tracing::info!("mongod pid {} was already gone", self.pid);
        }
        remove_if_exists(&self.layout.uri_file)
    }

    /// Kills the server with SIGKILL (as a crash would) and waits until the pid is gone. The
    /// data directory stays as the crash left it; [`restart`](Self::restart) recovers it.
    ///
    /// # Errors
    ///
    /// Fails when the signal cannot be sent or the process does not disappear.
    #[tracing::instrument(skip_all, fields(pid = self.pid))]
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill_and_wait().await
    }

    async fn kill_and_wait(&self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        process::send(self.pid, Signal::Kill).await?;
        if !process::wait_until(KILL_TIMEOUT, || self.has_exited()).await {
            bail!(
                "mongod pid {} is still running {}s after SIGKILL",
                self.pid,
                KILL_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Starts the server again after [`kill`](Self::kill), [`shutdown`](Self::shutdown) or a
    /// crash: same binary, port, data directory and parameters; waits until it is a writable
    /// primary again, and rewrites `DIR/uri`. Data written with the default write concern (majority, journaled) survives.
    ///
    /// # Errors
    ///
    /// Fails when the server is still running, when the port has been taken by another process
    /// meanwhile, or when the node does not become a writable primary in time (with the log
    /// tail).
    #[tracing::instrument(skip_all, fields(port = self.port))]
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!(
                "mongod pid {} is still running from {}: stop or kill it before restarting",
                self.pid,
                self.layout.dir.display()
            );
        }
        self.pid = match launch(&self.args, &self.layout).await {
            Ok(pid) => pid,
            Err(LaunchError::AddressInUse) => bail!(
                "cannot restart mongod: port {} on 127.0.0.1 has been taken by another process; {}",
                self.port,
                self.layout.log_tail()
            ),
            Err(LaunchError::Other(err)) => return Err(err),
        };
        self.wait_writable_primary().await?;
        self.layout.write_uri(&self.uri)?;
        tracing::info!(
            pid = self.pid,
            "Restarted replica set {REPLICA_SET_NAME} on port {}",
            self.port
        );
        Ok(())
    }

    /// Initiates the replica set if the node has no config yet, then waits until `hello`
    /// reports `isWritablePrimary: true`.
    async fn wait_writable_primary(&self) -> anyhow::Result<()> {
        // A direct connection: before the replica set exists there is no primary to discover.
        let client = mongodb::Client::with_uri_str(format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000\
             &connectTimeoutMS=2000",
            self.port
        ))
        .await
        .context("cannot create a MongoDB client")?;
        let admin = client.database("admin");
        let deadline = Instant::now() + PRIMARY_TIMEOUT;
        let mut initiated = false;
        let mut last: String;
        loop {
            if !self.is_running() {
                bail!(
                    "mongod pid {} exited while starting up; {}",
                    self.pid,
                    self.layout.log_tail()
                );
            }
            match admin.run_command(doc! { "hello": 1 }).await {
                Ok(hello) if hello.get_bool("isWritablePrimary").unwrap_or(false) => break,
                Ok(hello) => {
                    last = format!("hello: {}", summarize_hello(&hello));
                    // No `setName` means no replica set config yet (a fresh data directory). On
                    // a restart the config is loaded from disk and this is skipped; if it is
                    // still loading, the server answers AlreadyInitialized, which is fine too.
                    if !initiated && hello.get_str("setName").is_err() {
                        match admin.run_command(self.initiate_command()).await {
                            Ok(_) => initiated = true,
                            Err(err) if command_error_code(&err) == Some(ALREADY_INITIALIZED) => {
                                initiated = true;
                            }
                            Err(err) => last = format!("replSetInitiate: {err}"),
                        }
                    }
                }
                Err(err) => last = format!("hello: {err}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "mongod on port {} did not become a writable primary within {}s (last \
                     {last}); {}",
                    self.port,
                    PRIMARY_TIMEOUT.as_secs(),
                    self.layout.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.shutdown().await;
        Ok(())
    }

    fn initiate_command(&self) -> Document {
        doc! {
            "replSetInitiate": {
                "_id": REPLICA_SET_NAME,
                "members": [ { "_id": 0, "host": format!("127.0.0.1:{}", self.port) } ],
            }
        }
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        if self.owns_process && self.is_running() {
            tracing::warn!(
                "ReplicaSet in {} dropped without stop(); sending SIGTERM to mongod pid {}",
                self.layout.dir.display(),
                self.pid
            );
            process::send_now(self.pid, Signal::Term);
        }
    }
}

/// The argv that starts `mongod` for `layout` on `port`.
fn mongod_args(
    mongod: &Path,
    layout: &Layout,
    port: u16,
    opts: &ReplicaSetOptions,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![mongod.into()];
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        args.extend(items.iter().map(|item| item.as_ref().to_owned()));
    };
    push(&[&"--replSet", &REPLICA_SET_NAME]);
    push(&[&"--bind_ip", &"127.0.0.1", &"--port", &port.to_string()]);
    push(&[&"--dbpath", &layout.data]);
    push(&[&"--fork", &"--logpath", &layout.log, &"--logappend"]);
    push(&[&"--pidfilepath", &layout.pid_file]);
    // Small footprint for a shared 2-core machine; no /tmp/mongodb-PORT.sock left behind.
    push(&[&"--nounixsocket"]);
    let cache_gb = format!("{:.3}", f64::from(opts.cache_mb) / 1024.0);
    let oplog_mb = opts.oplog_mb.to_string();
    push(&[
        &"--wiredTigerCacheSizeGB",
        &cache_gb,
        &"--oplogSize",
        &oplog_mb,
    ]);
    push(&[&"--setParameter", &"diagnosticDataCollectionEnabled=false"]);
    if opts.enable_test_commands {
        push(&[&"--setParameter", &"enableTestCommands=1"]);
    }
    args
}

/// Runs the `--fork` parent, which returns once the daemon listens (or has failed), and returns
/// the daemon's pid.
async fn launch(args: &[OsString], layout: &Layout) -> Result<u32, LaunchError> {
    let Some((program, rest)) = args.split_first() else {
        return Err(LaunchError::Other(anyhow!("empty mongod command line")));
    };
    let mut command = tokio::process::Command::new(program);
    // The daemon redirects its own stdio to /dev/null once it is up, so capturing the parent's
    // output cannot keep a pipe open for the daemon's lifetime.
    command
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(LAUNCH_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Err(LaunchError::Other(
                anyhow!(err).context(format!("cannot run {}", Path::new(program).display())),
            ));
        }
        Err(_) => {
            if let Some(pid) = layout.read_pid()
                && process::is_our_mongod(pid, &layout.data)
            {
                process::send_now(pid, Signal::Kill);
            }
            return Err(LaunchError::Other(anyhow!(
                "mongod did not report ready for connections within {}s; {}",
                LAUNCH_TIMEOUT.as_secs(),
                layout.log_tail()
            )));
        }
    };
    if !output.status.success() {
        if output.status.code() == Some(EXIT_NET_ERROR) {
            return Err(LaunchError::AddressInUse);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(LaunchError::Other(anyhow!(
            "mongod failed to start ({}):\n{}\n{}\n{}",
            output.status,
            tail_lines(&stdout, 5),
            tail_lines(&stderr, 5),
            layout.log_tail()
        )));
    }
    let pid = layout.read_pid().ok_or_else(|| {
        LaunchError::Other(anyhow!(
            "mongod reported success but wrote no pid to {}",
            layout.pid_file.display()
        ))
    })?;
    Ok(pid)
}

/// `mongodb://127.0.0.1:PORT/?replicaSet=rs0`.
fn uri_for(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?replicaSet={REPLICA_SET_NAME}")
}

/// The value after `--port` in a `mongod` argv.
fn port_from_args(args: &[OsString]) -> Option<u16> {
    args.windows(2)
        .find(|pair| pair[0] == "--port")
        .and_then(|pair| pair[1].to_str()?.parse().ok())
}

/// The fields of a `hello` reply that explain why a node is not a writable primary yet.
fn summarize_hello(hello: &Document) -> String {
    let field = |name: &str| {
        hello
            .get(name)
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    };
    format!(
        "isWritablePrimary={} secondary={} setName={} info={}",
        field("isWritablePrimary"),
        field("secondary"),
        field("setName"),
        field("info")
    )
}

/// The server error code of a command error, if that is what `err` is.
fn command_error_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        DriverErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_the_replica_set() {
        assert_eq!(uri_for(27017), "mongodb://127.0.0.1:27017/?replicaSet=rs0");
    }

    #[test]
    fn args_are_absolute_and_round_trip_the_port() {
        let layout = Layout::new(PathBuf::from("/srv/rs"));
        let mut opts = ReplicaSetOptions::new("/srv/rs");
        opts.enable_test_commands = true;
        opts.cache_mb = 2048;
        let args = mongod_args(Path::new("/bin/mongod"), &layout, 4242, &opts);
        assert_eq!(port_from_args(&args), Some(4242));
        let joined: Vec<String> = args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        assert!(joined.starts_with("/bin/mongod --replSet rs0 --bind_ip 127.0.0.1"));
        assert!(joined.contains("--dbpath /srv/rs/data"));
        assert!(joined.contains("--pidfilepath /srv/rs/mongod.pid"));
        assert!(joined.contains("--fork --logpath /srv/rs/mongod.log"));
        assert!(joined.ends_with("--setParameter enableTestCommands=1"));
        assert!(joined.contains("--wiredTigerCacheSizeGB 2.000 --oplogSize 64"));

        let plain = mongod_args(
            Path::new("/bin/mongod"),
            &layout,
            4242,
            &ReplicaSetOptions::new("/srv/rs"),
        );
        assert!(!plain.iter().any(|arg| arg == "enableTestCommands=1"));
    }

    #[test]
    fn port_is_absent_without_the_flag() {
        assert_eq!(port_from_args(&[OsString::from("mongod")]), None);
    }
}

//! The processes the benchmark starts (receiver, handler) and what `/proc` says about them.
//!
//! Every process is addressed through its own child handle or pid, never by name. A [`Proc`]
//! kills its process when dropped, so an error or an interrupt anywhere leaves nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// A child process, killed (through its handle) when dropped.
pub(crate) struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    fn new(child: Child) -> anyhow::Result<Self> {
        let pid = child.id().context("the child exited at once")?;
        Ok(Self { child, pid })
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops it: SIGKILL through the handle, then reaps it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Spawns the release `name` with `args`, reads its first output line,
/// `<name> listening on <address>`, and returns it with the address. Its output keeps being
/// read so it never blocks on a full pipe; `stdin` is what its standard input gets.
async fn spawn_announcing(
    bins: &Path,
    name: &str,
    args: &[&str],
    stdin: Stdio,
) -> anyhow::Result<(Proc, String)> {
    let exe = bins.join(name);
    let mut child = Command::new(&exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (scripts/bench.sh builds it)",
                exe.display()
            )
        })?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let proc = Proc::new(child)?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .with_context(|| format!("{name} did not report its address within 15 s"))??
        .with_context(|| format!("{name} exited before reporting its address"))?;
    let address = first
        .strip_prefix(&format!("{name} listening on "))
        .with_context(|| format!("unexpected first line from {name}: {first:?}"))?
        .trim()
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((proc, address))
}

/// Starts the release `eventgrid-receiver` (`--port 0 --keep ids`) and returns it with its
/// publish endpoint.
pub(crate) async fn start_receiver(bins: &Path) -> anyhow::Result<(Proc, String)> {
    start_receiver_keeping(bins, "ids").await
}

/// Starts the release `eventgrid-receiver` keeping `keep` (`all`, `ids` or `none`) and returns
/// it with its publish endpoint.
pub(crate) async fn start_receiver_keeping(
    bins: &Path,
    keep: &str,
) -> anyhow::Result<(Proc, String)> {
    spawn_announcing(
        bins,
        "eventgrid-receiver",
        &["--port", "0", "--keep", keep],
        Stdio::null(),
    )
    .await
}

/// Starts the release `cosmos-ru-proxy` in front of the replica set on `upstream_port` and
/// returns it with the connection string a handler uses through it. Its stdin (commands) stays
/// open, and unused, for as long as it runs.
pub(crate) async fn start_proxy(bins: &Path, upstream_port: u16) -> anyhow::Result<(Proc, String)> {
    let upstream = format!("127.0.0.1:{upstream_port}");
    let (proc, addr) = spawn_announcing(
        bins,
        "cosmos-ru-proxy",
        &["--listen", "127.0.0.1:0", "--upstream", &upstream],
        Stdio::piped(),
    )
    .await?;
    Ok((proc, format!("mongodb://{addr}/?replicaSet=rs0")))
}

/// Starts the release `handler serve --port P`, configured only through `env` (the
/// environment is cleared first), and waits until `GET /` answers and a moment more, so that
/// its background database set-up is done before anything is timed.
pub(crate) async fn start_handler(
    bins: &Path,
    env: &BTreeMap<String, String>,
    http: &reqwest::Client,
) -> anyhow::Result<(Proc, String)> {
    spawn_handler(bins, env, http, Mode::Standalone).await
}

/// Starts the release `handler` in Functions mode (no command, `FUNCTIONS_CUSTOMHANDLER_PORT`
/// set, as the host starts it) with exactly `env`, and waits until it answers `GET /` as the
/// host's readiness probe does. Returns it with its base URL, where the envelope routes are.
pub(crate) async fn start_functions_handler(
    bins: &Path,
    env: &BTreeMap<String, String>,
    http: &reqwest::Client,
) -> anyhow::Result<(Proc, String)> {
    spawn_handler(bins, env, http, Mode::Functions).await
}

/// How a handler is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standalone,
    Functions,
}

/// Starts the release `handler` on a free port in `mode` with only `env` (the environment is
/// cleared first), and waits until it is ready.
async fn spawn_handler(
    bins: &Path,
    env: &BTreeMap<String, String>,
    http: &reqwest::Client,
    mode: Mode,
) -> anyhow::Result<(Proc, String)> {
    let exe = bins.join("handler");
    let port = devstack::pick_free_port().context("cannot pick a port for the handler")?;
    let mut command = Command::new(&exe);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env);
    match mode {
        Mode::Standalone => command.args(["serve", "--port", &port.to_string()]),
        Mode::Functions => command.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()),
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (scripts/bench.sh builds it)",
                exe.display()
            )
        })?;
    let proc = Proc::new(child)?;
    // The handler prepares the database (collections, indexes) in the background right after
    // it starts listening; `wait_until_ready` lets that finish outside the measurements.
    wait_until_ready(proc, format!("http://127.0.0.1:{port}"), http).await
}

/// Waits until `proc` answers `GET /` on `base` (30 s at most), then a second for its start-up
/// work (collections, indexes) to finish outside the measurements.
async fn wait_until_ready(
    mut proc: Proc,
    base: String,
    http: &reqwest::Client,
) -> anyhow::Result<(Proc, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!("the handler exited at start-up ({status}); its log is above");
        }
        if Instant::now() > deadline {
            bail!("the handler did not answer GET / within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((proc, base))
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) a process has used so far; `None` if it is gone.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of a process's or a thread's `stat` line, in seconds.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// CPU seconds of each thread of `pid` by the thread's name (`mongod` names the thread serving
/// a connection `conn<id>`); threads of the same name are summed. Empty if it cannot be read.
pub(crate) fn thread_cpu_secs(pid: u32) -> std::collections::HashMap<String, f64> {
    let mut by_name = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Some(cpu)) = (
            std::fs::read_to_string(path.join("comm")),
            task.file_name()
                .to_str()
                .and_then(|tid| tid.parse().ok())
                .and_then(|tid: u32| thread_cpu(pid, tid)),
        ) else {
            continue;
        };
        *by_name.entry(name.trim().to_owned()).or_insert(0.0) += cpu;
    }
    by_name
}

fn thread_cpu(pid: u32, tid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// A `kB` value of `/proc/<pid>/status` (`VmHWM`, `VmRSS`); `None` if it cannot be read.
pub(crate) fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Busy CPU seconds of the whole machine so far (every state of `/proc/stat`'s `cpu` line
/// except idle and iowait).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(busy / TICKS_PER_SEC)
}

/// CPU seconds used by several processes between two points in time, and by everything else
/// on the machine (other work sharing the cores shows up there).
pub(crate) struct CpuMeter {
    pids: Vec<(&'static str, u32)>,
    start: Vec<Option<f64>>,
    machine_start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring the named pids.
    pub(crate) fn start(pids: Vec<(&'static str, u32)>) -> Self {
        let start = pids.iter().map(|(_, pid)| cpu_secs(*pid)).collect();
        Self {
            pids,
            start,
            machine_start: machine_busy_secs(),
        }
    }

    /// CPU seconds each used since [`CpuMeter::start`] (to the tick), plus `other`: the rest of
    /// the machine's busy time.
    pub(crate) fn read(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut ours = 0.0;
        let mut out: serde_json::Map<String, serde_json::Value> = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((name, pid), start)| {
                let used = match (start, cpu_secs(*pid)) {
                    (Some(a), Some(b)) => {
                        ours += b - a;
                        serde_json::json!(crate::round(b - a, 2))
                    }
                    _ => serde_json::Value::Null,
                };
                ((*name).to_owned(), used)
            })
            .collect();
        if let (Some(a), Some(b)) = (self.machine_start, machine_busy_secs()) {
            out.insert(
                "other".into(),
                serde_json::json!(crate::round((b - a - ours).max(0.0), 2)),
            );
        }
        out
    }
}

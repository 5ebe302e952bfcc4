//! `make run` (`scripts/run.sh`) and `make services` (`scripts/services.sh`), run for real:
//! Ctrl-C stops everything they started even when their output goes through `tee`, a taken port
//! stops them before they claim to be running, and `make services` writes a
//! `local.settings.json` for `func start` without overwriting one that exists.
//!
//! The scripts run with `RUN_SKIP_BUILD=1` (the test build has built the binaries; a `cargo
//! build` inside `cargo test` would wait for cargo's own lock), on free ports, in directories
//! of their own under `target/test-services/`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::host::app_root;

/// How long a script may take to start mongod, the receiver and the handler.
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long everything may take to stop after Ctrl-C (the scripts' own deadline is 10 s, then
/// SIGKILL; stopping mongod cleanly takes a few more).
const STOP_LIMIT: Duration = Duration::from_secs(40);

#[test]
fn ctrl_c_stops_everything_make_run_started_even_through_tee() {
    let [handler_port, receiver_port] = free_ports();
    let run = Script::start(
        "run.sh",
        "ctrl-c",
        &[
            ("HANDLER_PORT", handler_port.to_string()),
            ("RECEIVER_PORT", receiver_port.to_string()),
        ],
    );
    run.wait_for_output("outbox-relay is running");
    let pids = run.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["mongod", "receiver", "handler"] {
        assert!(names.contains(&expected), "{expected} in {pids:?}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", handler_port)).is_ok(),
        "the handler answers on its port"
    );

    run.interrupt_like_a_terminal();

    run.assert_stopped(&pids);
}

#[test]
fn make_run_refuses_a_taken_port_and_names_it() {
    for taken in ["HANDLER_PORT", "RECEIVER_PORT"] {
        let [handler_port, receiver_port] = free_ports();
        let port = if taken == "HANDLER_PORT" {
            handler_port
        } else {
            receiver_port
        };
        let _other_server = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let dir = test_dir(&format!("taken-{port}"));

        let output = Command::new(app_root().join("scripts/run.sh"))
            .envs([
                ("HANDLER_PORT", handler_port.to_string()),
                ("RECEIVER_PORT", receiver_port.to_string()),
                ("RUN_DIR", dir.display().to_string()),
                ("RUN_SKIP_BUILD", "1".to_owned()),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();

        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{taken}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("port {port} ")) && stderr.contains("already in use"),
            "{taken}: the error names the port: {stderr}"
        );
        assert!(
            stderr.contains(taken),
            "{taken}: says how to move it: {stderr}"
        );
        assert!(!stdout.contains("is running"), "{taken}: {stdout}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn make_services_writes_settings_for_func_start_and_stops_on_ctrl_c() {
    let [mongod_port, receiver_port] = free_ports();
    let settings_dir = test_dir("services-settings");
    std::fs::create_dir_all(&settings_dir).unwrap();
    let settings_file = settings_dir.join("local.settings.json");
    let env = [
        ("MONGOD_PORT", mongod_port.to_string()),
        ("RECEIVER_PORT", receiver_port.to_string()),
        ("LOCAL_SETTINGS", settings_file.display().to_string()),
    ];
    let services = Script::start("services.sh", "services", &env);
    services.wait_for_output("Services for func start are running");
    let pids = services.pids();

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_file).unwrap()).unwrap();
    let values = &written["Values"];
    let uri = format!("mongodb://127.0.0.1:{mongod_port}/?replicaSet=rs0");
    let endpoint = format!("http://127.0.0.1:{receiver_port}/api/events");
    assert_eq!(values["MONGODB_URI"], uri.as_str());
    assert_eq!(values["EVENTGRID_TOPIC_ENDPOINT"], endpoint.as_str());
    assert_eq!(values["EVENTGRID_TOPIC_KEY"], "local-dev-key");
    assert_eq!(
        values["FUNCTIONS_WORKER_RUNTIME"], "custom",
        "the rest from the example"
    );
    assert_eq!(
        http_status(receiver_port, "/_receiver/stats"),
        200,
        "the receiver answers"
    );
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    client
        .database("admin")
        .run_command(mongodb::bson::doc! { "ping": 1 })
        .await
        .expect("the replica set answers");
    drop(client);

    services.interrupt_like_a_terminal();
    services.assert_stopped(&pids);

    // A second start leaves an existing file alone and says so; SIGTERM to the script alone
    // stops it too.
    let mine = r#"{"IsEncrypted":false,"Values":{"MONGODB_URI":"mongodb://elsewhere/"}}"#;
    std::fs::write(&settings_file, mine).unwrap();
    let again = Script::start("services.sh", "services-again", &env);
    let output = again.wait_for_output("Services for func start are running");
    assert!(output.contains("left as it is"), "{output}");
    assert!(output.contains(&uri), "it shows what to set: {output}");
    assert_eq!(std::fs::read_to_string(&settings_file).unwrap(), mine);
    let pids = again.pids();
    again.terminate_script_only();
    again.assert_stopped(&pids);
    let _ = std::fs::remove_dir_all(settings_dir);
}

/// Two ports nothing listens on now.
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ]
}

fn test_dir(name: &str) -> PathBuf {
    app_root()
        .join("target/test-services")
        .join(format!("{name}-{}", std::process::id()))
}

/// A script started as `script 2>&1 | tee LOG` in a process group of its own, the way a shell
/// runs a pipeline as one job.
struct Script {
    pipeline: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Script {
    fn start(script: &str, name: &str, env: &[(&str, String)]) -> Self {
        for binary in ["handler", "eventgrid-receiver", "devstack"] {
            let path = app_root().join("target/debug").join(binary);
            assert!(
                path.exists(),
                "{} is missing: run `cargo build --workspace --bins` (make test does)",
                path.display()
            );
        }
        let dir = test_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("output.log");
        let pipeline = Command::new("bash")
            .arg("-c")
            .arg(format!("scripts/{script} 2>&1 | tee {}", shell_quote(&log)))
            .current_dir(app_root())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs([
                ("RUN_DIR", dir.display().to_string()),
                ("SERVICES_DIR", dir.display().to_string()),
                ("RUN_SKIP_BUILD", "1".to_owned()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Self { pipeline, dir, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `text`; returns the output.
    fn wait_for_output(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "no {text:?} after {} s:\n{output}",
                START_LIMIT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the script started (`name pid` lines of `DIR/pids`).
    fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap()
            .lines()
            .filter_map(|line| {
                let (name, pid) = line.split_once(' ')?;
                Some((name.to_owned(), pid.trim().parse().ok()?))
            })
            .collect()
    }

    /// SIGINT to the whole job (script, `tee`), as a terminal sends it on Ctrl-C. Which of them
    /// runs first is up to the scheduler; a terminal typically lets `tee` die before the script's
    /// trap runs, the hard case (the cleanup then writes to a closed pipe), so the test makes it
    /// so: `tee` first, then the whole group.
    fn interrupt_like_a_terminal(&self) {
        let tee = self.child_named("tee");
        signal("-INT", &tee.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(tee) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-INT", &format!("-{}", self.pipeline.id()));
    }

    /// The pid of the pipeline's child running `comm` (`bash` is the script, `tee` is tee).
    fn child_named(&self, comm: &str) -> u32 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pipeline.id()))
                .unwrap();
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    == comm
            })
            .unwrap_or_else(|| panic!("no {comm} in the pipeline: {children}"))
    }

    /// SIGTERM to the script alone (not `tee`, not its children).
    fn terminate_script_only(&self) {
        signal("-TERM", &self.child_named("bash").to_string());
    }

    /// Every process in `pids` is gone within [`STOP_LIMIT`], and so is the pipeline.
    fn assert_stopped(mut self, pids: &[(String, u32)]) {
        let started = Instant::now();
        loop {
            let alive: Vec<&(String, u32)> =
                pids.iter().filter(|(_, pid)| is_alive(*pid)).collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < STOP_LIMIT,
                "still running {} s after the signal: {alive:?}\n{}",
                STOP_LIMIT.as_secs(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pipeline.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the script itself did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Script {
    /// A failed test still stops what it started: the job's group, then every recorded pid.
    fn drop(&mut self) {
        if self.pipeline.try_wait().ok().flatten().is_some() && !self.dir.exists() {
            return;
        }
        signal("-KILL", &format!("-{}", self.pipeline.id()));
        let _ = self.pipeline.wait();
        for (_, pid) in self.pids_if_any() {
            signal("-KILL", &format!("-{pid}"));
            signal("-KILL", &pid.to_string());
        }
        let _ = Command::new(app_root().join("target/debug/devstack"))
            .args(["mongod", "stop", "--dir"])
            .arg(self.dir.join("mongod"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Script {
    fn pids_if_any(&self) -> Vec<(String, u32)> {
        if self.dir.join("pids").exists() {
            self.pids()
        } else {
            Vec::new()
        }
    }
}

/// `kill SIGNAL TARGET` (a negative target is a process group); processes are only ever
/// addressed by the pids the test knows.
fn signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

/// Alive and not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// The status of `GET path` on a local port (plain HTTP/1.1, no client to set up).
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

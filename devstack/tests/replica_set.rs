//! Integration tests against a real `mongod` (downloaded on first use, as in every other test).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use devstack::{ReplicaSet, ReplicaSetOptions};
use mongodb::Client;
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("devstack-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("the temp dir is writable");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(name: &str, enable_test_commands: bool) -> anyhow::Result<(TempDir, ReplicaSet)> {
    let dir = TempDir::new(name);
    let rs = ReplicaSet::start(ReplicaSetOptions {
        enable_test_commands,
        ..ReplicaSetOptions::new(dir.path())
    })
    .await?;
    Ok((dir, rs))
}

/// Whether `/proc` says `pid` is gone (absent, or a zombie awaiting its reaper).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .expect("stat has (comm)")
                .1
                .trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
        Err(_) => true,
    }
}

fn command_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

#[derive(Debug)]
struct Abort;

#[tokio::test]
async fn a_two_collection_transaction_commits_or_aborts_as_a_whole() -> anyhow::Result<()> {
    // Arrange
    let (_dir, rs) = start("tx", false).await?;
    let client = Client::with_uri_str(rs.uri()).await?;
    let db = client.database("tx");
    db.create_collection("documents").await?;
    db.create_collection("outbox").await?;
    let documents = db.collection::<Document>("documents");
    let outbox = db.collection::<Document>("outbox");
    let mut session = client.start_session().await?;

    // Act: one transaction that commits...
    session
        .start_transaction()
        .and_run2(async |s| {
            documents
                .insert_one(doc! { "_id": 1, "v": "committed" })
                .session(&mut *s)
                .await?;
            outbox
                .insert_one(doc! { "_id": 1, "document": 1 })
                .session(&mut *s)
                .await?;
            Ok(())
        })
        .await?;
    // ...and one whose callback fails after writing to both collections.
    let aborted = session
        .start_transaction()
        .and_run2(async |s| {
            documents
                .insert_one(doc! { "_id": 2, "v": "aborted" })
                .session(&mut *s)
                .await?;
            outbox
                .insert_one(doc! { "_id": 2, "document": 2 })
                .session(&mut *s)
                .await?;
            Err::<(), _>(mongodb::error::Error::custom(Abort))
        })
        .await;

    // Assert
    let err = aborted.expect_err("the callback's error must end the transaction");
    assert!(
        err.get_custom::<Abort>().is_some(),
        "unexpected error: {err}"
    );
    for coll in [&documents, &outbox] {
        assert_eq!(coll.count_documents(doc! {}).await?, 1, "{}", coll.name());
        assert!(coll.find_one(doc! { "_id": 1 }).await?.is_some());
        assert!(coll.find_one(doc! { "_id": 2 }).await?.is_none());
    }
    // Without --test-commands, fail points are not available.
    let fail_point = client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await;
    assert!(fail_point.is_err(), "fail points must be off by default");

    drop(session);
    client.shutdown().await;
    rs.stop().await
}

#[tokio::test]
async fn committed_data_survives_kill_and_restart_and_clean_restart() -> anyhow::Result<()> {
    // Arrange
    let (_dir, mut rs) = start("crash", false).await?;
    let uri = rs.uri().to_owned();
    let client = Client::with_uri_str(&uri).await?;
    let coll = client.database("crash").collection::<Document>("documents");
    coll.insert_one(doc! { "_id": "before-crash" }).await?;
    client.shutdown().await;
    let first_pid = rs.pid();

    // Act
    rs.kill().await?;
    assert!(is_gone(first_pid), "SIGKILLed mongod must be gone");
    assert!(!rs.is_running());
    rs.restart().await?;

    // Assert
    assert_ne!(rs.pid(), first_pid);
    assert!(!is_gone(rs.pid()));
    assert_eq!(rs.uri(), uri, "a restart keeps the port");
    let client = Client::with_uri_str(rs.uri()).await?;
    let coll = client.database("crash").collection::<Document>("documents");
    assert!(
        coll.find_one(doc! { "_id": "before-crash" })
            .await?
            .is_some()
    );
    coll.insert_one(doc! { "_id": "after-restart" }).await?;
    assert_eq!(coll.count_documents(doc! {}).await?, 2);
    assert_eq!(
        std::fs::read_to_string(rs.dir().join("uri"))?.trim(),
        uri,
        "the uri file is rewritten"
    );
    client.shutdown().await;

    // A clean shutdown and restart keeps the data too.
    let second_pid = rs.pid();
    rs.shutdown().await?;
    assert!(is_gone(second_pid));
    rs.restart().await?;
    let client = Client::with_uri_str(rs.uri()).await?;
    let coll = client.database("crash").collection::<Document>("documents");
    assert_eq!(coll.count_documents(doc! {}).await?, 2);
    client.shutdown().await;
    rs.stop().await
}

#[tokio::test]
async fn restart_refuses_a_running_server() -> anyhow::Result<()> {
    let (_dir, mut rs) = start("busy", false).await?;
    let err = rs.restart().await.expect_err("restart of a running mongod");
    assert!(err.to_string().contains("still running"), "{err:#}");
    rs.stop().await
}

#[tokio::test]
async fn stop_ends_the_process_and_forgets_the_uri() -> anyhow::Result<()> {
    // Arrange
    let (dir, rs) = start("stop", false).await?;
    let attached = ReplicaSet::attach(dir.path())?;
    assert_eq!(attached.pid(), rs.pid());
    assert_eq!(attached.uri(), rs.uri());
    assert_eq!(attached.port(), rs.port());
    drop(attached); // a non-owning handle: dropping it must leave the server running
    assert!(rs.is_running());
    let pid = rs.pid();

    // Act
    rs.stop().await?;

    // Assert
    assert!(is_gone(pid), "pid {pid} still alive after stop");
    assert!(!dir.path().join("uri").exists());
    let err = ReplicaSet::attach(dir.path()).expect_err("attach after stop");
    assert!(err.to_string().contains("no replica set"), "{err:#}");
    assert!(!ReplicaSet::stop_in(dir.path()).await?, "already stopped");
    Ok(())
}

#[tokio::test]
async fn dropping_an_owned_replica_set_stops_mongod() -> anyhow::Result<()> {
    let (_dir, rs) = start("drop", false).await?;
    let pid = rs.pid();
    drop(rs);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived the drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn fail_points_work_when_test_commands_are_enabled() -> anyhow::Result<()> {
    // Arrange
    let (_dir, rs) = start("failpoint", true).await?;
    let client = Client::with_uri_str(rs.uri()).await?;
    let coll = client.database("fp").collection::<Document>("documents");
    coll.insert_one(doc! { "_id": 0 }).await?;
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["insert"], "errorCode": 2 },
        })
        .await?;

    // Act
    let failed = coll.insert_one(doc! { "_id": 1 }).await;
    let retried = coll.insert_one(doc! { "_id": 2 }).await;

    // Assert: 2 (BadValue) is not retryable, so the driver surfaces it; `times: 1` spends the
    // fail point, so the next insert succeeds.
    let err = failed.expect_err("the fail point must fail the insert");
    assert_eq!(command_code(&err), Some(2), "{err}");
    retried?;
    client.shutdown().await;
    rs.stop().await
}

#[tokio::test]
async fn concurrent_cold_fetches_install_one_complete_binary() -> anyhow::Result<()> {
    // Arrange: an empty cache, so this really downloads.
    let cache = TempDir::new("cache");
    let cache_path = cache.path().to_owned();

    // Act
    let fetches: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache_path.clone();
            tokio::spawn(async move { devstack::ensure_mongod_in(&cache).await })
        })
        .collect();
    let mut paths = Vec::new();
    for fetch in fetches {
        paths.push(fetch.await??);
    }

    // Assert
    assert!(paths.windows(2).all(|pair| pair[0] == pair[1]), "{paths:?}");
    let output = Command::new(&paths[0]).arg("--version").output()?;
    assert!(String::from_utf8_lossy(&output.stdout).contains("db version v6.0.5"));
    let leftovers: Vec<_> = std::fs::read_dir(cache.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name.to_string_lossy().starts_with(".fetch-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch dirs left: {leftovers:?}");
    // A warm call does not download again (and is fast).
    let started = Instant::now();
    assert_eq!(devstack::ensure_mongod_in(cache.path()).await?, paths[0]);
    assert!(started.elapsed() < Duration::from_secs(1));
    Ok(())
}

#[test]
fn cli_prints_only_the_uri_and_stops_idempotently() {
    let dir = TempDir::new("cli");
    let devstack = env!("CARGO_BIN_EXE_devstack");
    let run = |args: &[&str]| {
        Command::new(devstack)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };

    let started = run(&["mongod", "start", "--test-commands"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let uri = String::from_utf8(started.stdout).unwrap();
    let uri = uri
        .strip_suffix('\n')
        .expect("one line on stdout")
        .to_owned();
    assert!(
        uri.starts_with("mongodb://127.0.0.1:") && uri.ends_with("/?replicaSet=rs0"),
        "{uri}"
    );
    let pid: u32 = std::fs::read_to_string(dir.path().join("mongod.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!is_gone(pid), "mongod must outlive `devstack mongod start`");

    let printed = run(&["mongod", "uri"]);
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8(printed.stdout).unwrap(),
        format!("{uri}\n")
    );

    let stopped = run(&["mongod", "stop"]);
    assert!(stopped.status.success());
    assert!(stopped.stdout.is_empty());
    assert!(is_gone(pid));

    let again = run(&["mongod", "stop"]);
    assert!(again.status.success(), "stopping twice is fine");
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to stop"));
    assert!(!run(&["mongod", "uri"]).status.success());
}

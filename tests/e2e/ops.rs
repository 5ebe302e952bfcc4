//! Operator commands through the real binary: `handler outbox status` and `requeue`.

use serde_json::Value;

use crate::support::host::handler_command;
use crate::support::{TestDb, drain, receiver, relay, settings, write_documents};

async fn handler(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = handler_command(args, env.iter().cloned())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() || out.stdout.is_empty(),
        "a failed command prints nothing on stdout"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        (true, stdout)
    } else {
        (false, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn status_lists_dead_letters_and_requeue_brings_them_back() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let ids = write_documents(&s, 4, |i| format!(r#"{{"_id":"op-{i}"}}"#)).await;
    rx.handle()
        .reject_ids(Some(&format!("^({}|{})$", ids[1], ids[2])))
        .unwrap();
    let report = drain(&relay(&s)).await;
    assert_eq!(
        (report.published, report.dead_lettered),
        (2, 2),
        "{report:?}"
    );
    let env = db.app_settings();

    let (ok, text) = handler(&["outbox", "status", "--json"], &env).await;
    assert!(ok, "{text}");
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["dead"], 2, "{status}");
    assert_eq!(status["published"], 2);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["placement"], "separate");
    assert_eq!(
        status["expiry"],
        serde_json::json!({"published_by_ttl": true, "records_by_ttl": true}),
        "mongod keeps TTL indexes: {status}"
    );
    let listed: Vec<&str> = status["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&ids[1].as_str()) && listed.contains(&ids[2].as_str()),
        "{status}"
    );
    assert_eq!(status["dead_letters"][0]["status"], 400);
    let (ok, text) = handler(&["outbox", "status"], &env).await;
    assert!(
        ok && text.contains("dead:         2")
            && text.contains("requeue with")
            && text.contains("published entries by TTL index"),
        "{text}"
    );

    let (ok, text) = handler(&["outbox", "requeue", "--id", &ids[1]], &env).await;
    assert!(ok && text.contains("requeued 1"), "{text}");
    let (ok, text) = handler(&["outbox", "requeue", "--all-dead"], &env).await;
    assert!(ok && text.contains("requeued 1"), "{text}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["outbox", "requeue"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "an id or --all-dead is required");

    rx.handle().reject_ids(None).unwrap();
    let report = drain(&relay(&s)).await;
    assert_eq!(report.published, 2, "{report:?}");
    assert_eq!(db.count_entries_with("published").await, 4);
    db.drop().await;
}

#[tokio::test]
async fn status_fails_clearly_without_a_database() {
    let (ok, text) = handler(
        &["outbox", "status"],
        &[(
            "MONGODB_URI".into(),
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200".into(),
        )],
    )
    .await;
    assert!(!ok);
    assert!(text.contains("cannot read the outbox"), "{text}");
    let (ok, text) = handler(&["outbox", "status"], &[]).await;
    assert!(!ok && text.contains("MONGODB_URI"), "{text}");
}

/// `handler outbox status | head`: the reader goes away before the output is written. The
/// command ends as it would have, with no panic about the broken pipe.
#[tokio::test]
async fn status_into_a_pipe_whose_reader_is_gone_exits_cleanly() {
    let db = TestDb::new().await;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = handler_command(&["outbox", "status"], db.app_settings())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{:?}\n{stderr}",
        out.status
    );
}

//! Each test's database goes when the test ends, passed or failed, and the databases of test
//! processes that were killed are swept by the next run.

use mongodb::bson::doc;

use crate::support::TestDb;
use crate::support::mongo::{sweep_orphans, uri};

async fn database_names(client: &mongodb::Client) -> Vec<String> {
    client.list_database_names().await.unwrap()
}

#[tokio::test]
async fn a_failing_test_still_drops_its_database() {
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();
    let failing_test = tokio::spawn(async move {
        let db = TestDb::new().await;
        db.documents()
            .insert_one(doc! { "_id": "x" })
            .await
            .unwrap();
        name_tx.send(db.name.clone()).unwrap();
        panic!("the test fails before it reaches db.drop()");
    });
    assert!(failing_test.await.unwrap_err().is_panic());
    let name = name_rx.await.unwrap();

    let client = mongodb::Client::with_uri_str(uri()).await.unwrap();
    assert!(
        !database_names(&client).await.contains(&name),
        "{name} was dropped"
    );
}

#[tokio::test]
async fn databases_of_test_processes_that_are_gone_are_swept() {
    let client = mongodb::Client::with_uri_str(uri()).await.unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let orphan = format!("test_{}_swept", gone.id());
    let ours = format!("test_{}_kept", std::process::id());
    for name in [&orphan, &ours] {
        client
            .database(name)
            .collection("c")
            .insert_one(doc! { "a": 1 })
            .await
            .unwrap();
    }

    sweep_orphans(&client).await;

    let names = database_names(&client).await;
    client.database(&ours).drop().await.unwrap();
    assert!(
        !names.contains(&orphan),
        "the gone process's database is swept"
    );
    assert!(
        names.contains(&ours),
        "a running process's database is kept"
    );
}

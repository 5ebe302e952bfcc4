//! What a pooled hyper client (the one under reqwest) sees: the outcomes a publisher
//! has to classify.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use eventgrid_receiver::{Fault, MAX_BODY_BYTES};

use crate::support::{KEY, body_of, body_of_size, events, receiver};

fn publish(endpoint: &str, body: Vec<u8>) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::post(format!("{endpoint}?api-version=2018-01-01"))
        .header("aeg-sas-key", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?)
}

#[tokio::test]
async fn pooled_client_sees_200_then_an_incomplete_message_on_drop_after_accept()
-> anyhow::Result<()> {
    let receiver = receiver().await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let endpoint = receiver.endpoint();

    let first = client
        .request(publish(&endpoint, body_of(&events("h", 2)))?)
        .await?;
    let status = first.status();
    let body = first.into_body().collect().await?.to_bytes();
    receiver
        .handle()
        .push_fault(Fault::DropAfterAccept { count: 1 })?;
    let dropped = client
        .request(publish(&endpoint, body_of(&events("h", 2)))?)
        .await;
    let after = client
        .request(publish(&endpoint, body_of(&events("h", 2)))?)
        .await?;

    assert_eq!(status, 200);
    assert!(body.is_empty());
    let error = dropped.expect_err("no response was sent");
    let source = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<hyper::Error>());
    assert!(
        source.is_some_and(hyper::Error::is_incomplete_message),
        "expected 'connection closed before message completed', got {error:?}"
    );
    assert_eq!(after.status(), 200);
    assert_eq!(
        receiver.handle().stats().accepted_events,
        6,
        "the dropped request was accepted"
    );
    receiver.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pooled_client_reads_the_413_for_an_oversized_body() -> anyhow::Result<()> {
    let receiver = receiver().await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let reply = client
        .request(publish(
            &receiver.endpoint(),
            body_of_size(MAX_BODY_BYTES + 1),
        )?)
        .await?;

    assert_eq!(reply.status(), 413);
    receiver.shutdown().await;
    Ok(())
}

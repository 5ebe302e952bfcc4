//! A raw HTTP/1.1 client and event builders.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub(crate) const KEY: &str = "local-dev-key";
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A request, built field by field so tests can break any part of it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` in chunks of this size.
    pub(crate) chunked: Option<usize>,
    /// Omit `Content-Length` (for chunked bodies this is automatic).
    pub(crate) content_length: bool,
}

impl Req {
    /// A valid publish request for the Event Grid schema.
    pub(crate) fn publish(body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            target: "/api/events?api-version=2018-01-01".into(),
            headers: vec![
                ("Host".into(), "localhost".into()),
                ("aeg-sas-key".into(), KEY.into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: body.into(),
            chunked: None,
            content_length: true,
        }
    }

    /// A request without body or credentials (control API).
    pub(crate) fn control(method: &str, target: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            headers: vec![("Host".into(), "localhost".into())],
            body: body.into(),
            chunked: None,
            content_length: true,
        }
    }

    pub(crate) fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    pub(crate) fn target(mut self, target: &str) -> Self {
        self.target = target.into();
        self
    }

    /// Sets (replacing) a header.
    pub(crate) fn header(self, name: &str, value: &str) -> Self {
        let mut this = self.without(name);
        this.headers.push((name.into(), value.into()));
        this
    }

    /// Adds a header, keeping any with the same name.
    pub(crate) fn add_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub(crate) fn chunked(mut self, chunk_size: usize) -> Self {
        self.chunked = Some(chunk_size);
        self
    }

    pub(crate) fn no_content_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    fn head(&self, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.chunked.is_some() {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else if self.content_length {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// The whole request on the wire.
    pub(crate) fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut bytes = self.head(close);
        match self.chunked {
            Some(size) => {
                for chunk in self.body.chunks(size.max(1)) {
                    bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    bytes.extend_from_slice(chunk);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
            None => bytes.extend_from_slice(&self.body),
        }
        bytes
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body: {}", String::from_utf8_lossy(&self.body)))
    }

    /// `error.details[0].code` and `error.message` of an Event Grid error body.
    pub(crate) fn error(&self) -> anyhow::Result<(String, String, String)> {
        let body = self.json()?;
        let code = body["error"]["code"]
            .as_str()
            .context("error.code")?
            .to_owned();
        let detail = body["error"]["details"][0]["code"]
            .as_str()
            .context("details[0].code")?
            .to_owned();
        let message = body["error"]["message"]
            .as_str()
            .context("error.message")?
            .to_owned();
        Ok((code, detail, message))
    }
}

/// A connection that can carry several requests (keep-alive).
pub(crate) struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Sends one request without reading anything.
    pub(crate) async fn write(&mut self, req: &Req) -> anyhow::Result<()> {
        self.stream.write_all(&req.to_bytes(false)).await?;
        Ok(())
    }

    /// Sends one request and reads its response.
    pub(crate) async fn send(&mut self, req: &Req) -> anyhow::Result<Reply> {
        self.stream.write_all(&req.to_bytes(false)).await?;
        tokio::time::timeout(IO_TIMEOUT, self.read_reply())
            .await
            .context("timed out waiting for a response")?
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        let mut chunk = [0_u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                bail!(
                    "connection closed after {} response bytes",
                    self.buffer.len()
                );
            }
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().context("status line")?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .context("status code")?
            .parse()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse())
            .transpose()?
            .context("the receiver always sends Content-Length")?;
        let body_start = head_end + 4;
        while self.buffer.len() < body_start + length {
            if self.fill().await? == 0 {
                bail!("connection closed in the middle of the response body");
            }
        }
        let body = self.buffer[body_start..body_start + length].to_vec();
        self.buffer.drain(..body_start + length);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Reads until the server closes; returns the bytes received.
    pub(crate) async fn read_to_close(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.buffer);
        tokio::time::timeout(IO_TIMEOUT, self.stream.read_to_end(&mut rest))
            .await
            .context("the server did not close the connection")??;
        Ok(rest)
    }
}

/// Sends one request on a fresh connection (`Connection: close`), writing and reading
/// concurrently so a server that answers before reading everything cannot block us.
pub(crate) async fn send(addr: SocketAddr, req: &Req) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.into_split();
    let bytes = req.to_bytes(true);
    let writer = tokio::spawn(async move {
        // The server may answer and close before reading everything (413): ignore.
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut received = Vec::new();
    let result = tokio::time::timeout(IO_TIMEOUT, read.read_to_end(&mut received)).await;
    let _write_half = writer.await?;
    match result {
        Ok(Ok(_)) => {}
        // A reset after the response arrived (the server closed with our bytes unread).
        Ok(Err(e)) if !received.is_empty() => eprintln!("read ended with {e} after the response"),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => bail!("timed out waiting for the server to answer and close"),
    }
    let mut conn = ParsedBytes(received);
    conn.reply()
}

struct ParsedBytes(Vec<u8>);

impl ParsedBytes {
    fn reply(&mut self) -> anyhow::Result<Reply> {
        let data = &self.0;
        let head_end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .with_context(|| format!("no complete response in {} bytes", data.len()))?;
        let head = String::from_utf8(data[..head_end].to_vec())?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .context("status line")?
            .split(' ')
            .nth(1)
            .context("status")?
            .parse()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let body = data[head_end + 4..].to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// A valid Event Grid event.
pub(crate) fn event(id: &str) -> Value {
    json!({
        "id": id,
        "subject": format!("orders/{id}"),
        "eventType": "Contoso.Orders.OrderPlaced",
        "eventTime": "2025-03-14T09:26:53.589Z",
        "dataVersion": "1.0",
        "data": { "orderId": id, "total": 129.5, "currency": "EUR" }
    })
}

/// A valid CloudEvent.
pub(crate) fn cloud_event(id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/outbox/orders",
        "type": "Contoso.Orders.OrderPlaced",
        "time": "2025-03-14T09:26:53.589Z",
        "subject": format!("orders/{id}"),
        "datacontenttype": "application/json",
        "data": { "orderId": id }
    })
}

/// A JSON array body of these events, compact.
pub(crate) fn body_of(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(events).expect("JSON values serialize")
}

/// Valid events with ids `{prefix}-0`, `{prefix}-1`, …
pub(crate) fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| event(&format!("{prefix}-{i}"))).collect()
}

/// A body of exactly `size` bytes: one event padded inside `data`.
pub(crate) fn body_of_size(size: usize) -> Vec<u8> {
    let mut one = event("big");
    one["data"]["pad"] = json!("");
    let base = body_of(std::slice::from_ref(&one)).len();
    one["data"]["pad"] = json!("x".repeat(size - base));
    let body = body_of(&[one]);
    assert_eq!(body.len(), size);
    body
}

/// Starts a receiver with the default configuration on a free loopback port.
pub(crate) async fn receiver() -> anyhow::Result<eventgrid_receiver::RunningReceiver> {
    Ok(eventgrid_receiver::start_local(eventgrid_receiver::ReceiverConfig::default()).await?)
}

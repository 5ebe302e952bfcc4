//! One client connection: its own upstream connection, two directions pumped concurrently.
//!
//! The two directions are independent because the protocol is not strictly request/response:
//! a driver's monitoring connection asks for an exhaust stream (`exhaustAllowed`), after which
//! `mongod` sends `hello` replies with `moreToCome` and no request. Client → upstream reads a
//! command, decides (forward / refuse / forward-then-replace), and may inject an
//! `abortTransaction` of its own; upstream → client looks each reply's `responseTo` up in the
//! table of pending actions: swallow the reply to an injected command, rewrite a `hello`
//! reply, replace a reply with error 50, record a commit's outcome, or pass it through.
//! Anything the proxy does not understand passes through byte for byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::Document;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::change_stream::StreamAction;
use crate::cosmos::{CommandInfo, abort_command, reply_is_ok};
use crate::sharding::Translate;
use crate::state::{Decision, Shared, TxnKey};
use crate::wire::{
    self, MORE_TO_COME, Message, OP_COMPRESSED, OP_MSG, OP_QUERY, OP_REPLY, WireError,
};

/// How long an injected `abortTransaction` may take to answer.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot build a message: {0}")]
    Wire(#[from] WireError),
}

/// What to do with the reply to one request.
#[derive(Debug)]
enum ReplyAction {
    /// Rewrite the topology fields of a `hello` reply (and of the stream that may follow).
    RewriteHello,
    /// The reply to a command the proxy injected: hand it over, never to the client.
    Swallow(oneshot::Sender<Message>),
    /// The reply to a command sent in place of a custom one: answer as Cosmos DB would.
    Translate(crate::sharding::Translate),
    /// A batch of a Cosmos DB RU change stream: apply RU's output rules (the `getMore`'s
    /// cursor id, `None` for the opening `aggregate`).
    StreamBatch(Option<i64>),
    /// Possibly replace the reply; possibly record a commit's outcome.
    Intercept {
        replace: Option<(crate::cosmos::CosmosError, Duration, String)>,
        commit_of: Option<TxnKey>,
    },
}

/// Serves one accepted client until either side closes or `cancel` fires.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    upstream_addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let upstream = tokio::select! {
        () = cancel.cancelled() => return,
        connected = TcpStream::connect(upstream_addr) => match connected {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%peer, %upstream_addr, %error, "Cannot connect upstream; closing the client connection");
                return;
            }
        },
    };
    // Small request/response messages: do not wait to coalesce them.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let conn = Conn {
        shared,
        client_write: tokio::sync::Mutex::new(client_write),
        pending: Mutex::new(HashMap::new()),
    };
    let ended = tokio::select! {
        () = cancel.cancelled() => Ok(()),
        ended = conn.client_to_upstream(client_read, upstream_write) => ended,
        ended = conn.upstream_to_client(upstream_read) => ended,
    };
    match ended {
        Ok(()) => tracing::debug!(%peer, "Connection closed"),
        Err(error) => tracing::debug!(%peer, %error, "Connection ended"),
    }
}

struct Conn {
    shared: Arc<Shared>,
    /// Written by both directions: replies from upstream, and the proxy's own replies.
    client_write: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Actions for replies still to come, by the request id they answer.
    pending: Mutex<HashMap<i32, ReplyAction>>,
}

impl Conn {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i32, ReplyAction>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn to_client(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.client_write.lock().await.write_all(bytes).await
    }

    async fn client_to_upstream(
        &self,
        mut reader: OwnedReadHalf,
        mut upstream: OwnedWriteHalf,
    ) -> Result<(), ConnError> {
        while let Some(msg) = wire::read_message(&mut reader).await? {
            match msg.header.op_code {
                OP_MSG => self.on_op_msg(msg, &mut upstream).await?,
                OP_QUERY => {
                    self.shared.with_stats(|s| s.wire.op_query += 1);
                    let is_hello =
                        wire::parse_op_query(&msg.bytes).is_ok_and(|q| wire::is_legacy_hello(&q));
                    if is_hello {
                        self.pending()
                            .insert(msg.header.request_id, ReplyAction::RewriteHello);
                    }
                    self.forward(&msg, &mut upstream).await?;
                }
                op_code => {
                    self.shared.with_stats(|s| {
                        if op_code == OP_COMPRESSED {
                            s.wire.op_compressed += 1;
                        } else {
                            s.wire.other += 1;
                        }
                    });
                    self.forward(&msg, &mut upstream).await?;
                }
            }
        }
        Ok(())
    }

    async fn forward(&self, msg: &Message, upstream: &mut OwnedWriteHalf) -> std::io::Result<()> {
        upstream.write_all(&msg.bytes).await?;
        self.shared.with_stats(|s| s.commands_forwarded += 1);
        Ok(())
    }

    async fn on_op_msg(
        &self,
        msg: Message,
        upstream: &mut OwnedWriteHalf,
    ) -> Result<(), ConnError> {
        let (flags, info, translate, stream) = match wire::parse_op_msg(&msg.bytes) {
            Ok(op) => {
                let sequences = op.document_sequences;
                self.shared.with_stats(|s| {
                    s.wire.op_msg += 1;
                    if sequences > 0 {
                        s.wire.op_msg_with_document_sequences += 1;
                    }
                });
                let mut info = CommandInfo::inspect(op.body);
                info.verdict = self.shared.shards.judge(
                    &info,
                    op.body,
                    || wire::document_sequences(&msg.bytes).unwrap_or_default(),
                    || self.shared.activity_id(),
                );
                let stream = self.shared.streams.on_command(&info.name, op.body);
                (op.flags, info, Translate::of(op.body), stream)
            }
            Err(error) => {
                tracing::debug!(%error, "Unparsable OP_MSG passed through");
                self.shared.with_stats(|s| s.wire.op_msg += 1);
                return Ok(self.forward(&msg, upstream).await?);
            }
        };
        // `moreToCome` on a request: the client expects no reply (e.g. `w: 0` writes).
        let expects_reply = flags & MORE_TO_COME == 0;
        if wire::is_hello_name(&info.name) {
            if expects_reply {
                self.pending()
                    .insert(msg.header.request_id, ReplyAction::RewriteHello);
            }
            return Ok(self.forward(&msg, upstream).await?);
        }
        if let Some((command, translate)) = translate {
            // A custom command `mongod` does not know: send what it stands for, under the
            // client's request id, and answer from its reply.
            if expects_reply {
                self.pending()
                    .insert(msg.header.request_id, ReplyAction::Translate(translate));
            }
            let bytes = wire::build_op_msg(msg.header.request_id, 0, flags, &command)?;
            upstream.write_all(&bytes).await?;
            self.shared.with_stats(|s| s.commands_forwarded += 1);
            return Ok(());
        }
        let rewrite_stream = match stream {
            StreamAction::Pass => None,
            StreamAction::Rewrite(cursor) => Some(cursor),
            StreamAction::Refuse(error) => {
                tracing::info!(
                    code = error.code,
                    "Refused a change stream the way Cosmos DB RU would"
                );
                return self
                    .answer(&msg, expects_reply, &error.reply(&info.name))
                    .await;
            }
            StreamAction::Answer(page) => {
                tracing::debug!(command = %info.name, "Answered a command the way Cosmos DB RU would");
                return self.answer(&msg, expects_reply, &page).await;
            }
        };
        match self.shared.decide(&info) {
            Decision::Forward {
                replace: None,
                commit_of: None,
            } if expects_reply && rewrite_stream.is_some() => {
                self.pending().insert(
                    msg.header.request_id,
                    ReplyAction::StreamBatch(rewrite_stream.flatten()),
                );
                self.forward(&msg, upstream).await?;
            }
            Decision::Forward { replace, commit_of } => {
                if expects_reply && (replace.is_some() || commit_of.is_some()) {
                    let replace = replace.map(|(error, delay)| (error, delay, info.name.clone()));
                    self.pending().insert(
                        msg.header.request_id,
                        ReplyAction::Intercept { replace, commit_of },
                    );
                }
                self.forward(&msg, upstream).await?;
            }
            Decision::Refuse { error, abort } => {
                tracing::info!(
                    command = %info.name,
                    namespaces = ?info.namespaces,
                    code = error.code,
                    "Refused a command the way Cosmos DB would"
                );
                if let Some((lsid, txn_number)) = abort {
                    // Abort before answering, so that nothing of the transaction can commit
                    // once the client has seen the error.
                    self.inject_abort(upstream, &lsid, txn_number).await?;
                }
                if expects_reply {
                    let reply = wire::build_op_msg(
                        self.shared.next_request_id(),
                        msg.header.request_id,
                        0,
                        &error.reply(&info.name),
                    )?;
                    self.to_client(&reply).await?;
                }
            }
        }
        Ok(())
    }

    /// Answers `msg` with `body` instead of `mongod` (when it expects a reply).
    async fn answer(
        &self,
        msg: &Message,
        expects_reply: bool,
        body: &Document,
    ) -> Result<(), ConnError> {
        if expects_reply {
            let reply = wire::build_op_msg(
                self.shared.next_request_id(),
                msg.header.request_id,
                0,
                body,
            )?;
            self.to_client(&reply).await?;
        }
        Ok(())
    }

    /// Sends `abortTransaction` for `(lsid, txn_number)` upstream and waits for its reply,
    /// which the client never sees.
    async fn inject_abort(
        &self,
        upstream: &mut OwnedWriteHalf,
        lsid: &Document,
        txn_number: i64,
    ) -> Result<(), ConnError> {
        let id = self.shared.next_request_id();
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, ReplyAction::Swallow(tx));
        let command = wire::build_op_msg(id, 0, 0, &abort_command(lsid, txn_number))?;
        upstream.write_all(&command).await?;
        self.shared.with_stats(|s| s.upstream_aborts += 1);
        match tokio::time::timeout(ABORT_TIMEOUT, rx).await {
            Ok(Ok(reply)) => log_abort_reply(&reply, txn_number),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(txn_number, "No reply to the injected abortTransaction");
            }
        }
        Ok(())
    }

    async fn upstream_to_client(&self, mut reader: OwnedReadHalf) -> Result<(), ConnError> {
        while let Some(msg) = wire::read_message(&mut reader).await? {
            let action = self.pending().remove(&msg.header.response_to);
            match action {
                None => self.to_client(&msg.bytes).await?,
                Some(ReplyAction::Swallow(tx)) => {
                    let _ = tx.send(msg);
                }
                Some(ReplyAction::Translate(translate)) => {
                    let answer = match wire::parse_op_msg(&msg.bytes) {
                        Ok(op) => translate.reply(op.body, &self.shared.shards),
                        Err(error) => {
                            tracing::debug!(%error, "Unparsable reply to a translated command");
                            self.to_client(&msg.bytes).await?;
                            continue;
                        }
                    };
                    let reply = wire::build_op_msg(
                        msg.header.request_id,
                        msg.header.response_to,
                        0,
                        &answer,
                    )?;
                    self.to_client(&reply).await?;
                }
                Some(ReplyAction::RewriteHello) => {
                    if msg.op_msg_flags().is_some_and(|f| f & MORE_TO_COME != 0) {
                        // Exhaust stream: the next reply answers this one's request id.
                        self.pending()
                            .insert(msg.header.request_id, ReplyAction::RewriteHello);
                    }
                    let bytes = match rewrite_hello(&msg, &self.shared.advertised) {
                        Ok(Some(bytes)) => {
                            self.shared.with_stats(|s| s.hello_replies_rewritten += 1);
                            bytes
                        }
                        Ok(None) => msg.bytes,
                        Err(error) => {
                            tracing::debug!(%error, "Unparsable hello reply passed through");
                            msg.bytes
                        }
                    };
                    self.to_client(&bytes).await?;
                }
                Some(ReplyAction::StreamBatch(asked)) => {
                    let bytes = match rewrite_stream_batch(&self.shared, &msg, asked) {
                        Ok(bytes) => bytes,
                        Err(error) => {
                            tracing::debug!(%error, "Unparsable change-stream reply passed through");
                            msg.bytes
                        }
                    };
                    self.to_client(&bytes).await?;
                }
                Some(ReplyAction::Intercept { replace, commit_of }) => {
                    if let Some(key) = commit_of {
                        let ok =
                            wire::parse_op_msg(&msg.bytes).is_ok_and(|op| reply_is_ok(op.body));
                        self.shared.commit_result(&key, ok);
                    }
                    match replace {
                        Some((error, delay, name)) => {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let reply = wire::build_op_msg(
                                msg.header.request_id,
                                msg.header.response_to,
                                0,
                                &error.reply(&name),
                            )?;
                            self.to_client(&reply).await?;
                        }
                        None => self.to_client(&msg.bytes).await?,
                    }
                }
            }
        }
        Ok(())
    }
}

fn log_abort_reply(reply: &Message, txn_number: i64) {
    match wire::parse_op_msg(&reply.bytes) {
        Ok(op) if reply_is_ok(op.body) => {
            tracing::debug!(txn_number, "Aborted the transaction upstream");
        }
        Ok(op) => {
            // NoSuchTransaction is expected when mongod had already dropped it.
            let code = op.body.get_i32("code").unwrap_or_default();
            tracing::debug!(txn_number, code, "Upstream abortTransaction failed");
        }
        Err(error) => tracing::debug!(txn_number, %error, "Unparsable abortTransaction reply"),
    }
}

/// A change stream's reply with Cosmos DB RU's output rules applied.
fn rewrite_stream_batch(
    shared: &Shared,
    msg: &Message,
    asked: Option<i64>,
) -> Result<Vec<u8>, WireError> {
    let op = wire::parse_op_msg(&msg.bytes)?;
    let mut doc = Document::try_from(op.body)?;
    shared.streams.on_reply(&mut doc, asked);
    wire::build_op_msg(
        msg.header.request_id,
        msg.header.response_to,
        op.flags,
        &doc,
    )
}

/// The rewritten bytes of a `hello` reply, or `None` when it is not one.
fn rewrite_hello(msg: &Message, advertised: &str) -> Result<Option<Vec<u8>>, WireError> {
    match msg.header.op_code {
        OP_MSG => {
            let op = wire::parse_op_msg(&msg.bytes)?;
            let mut doc = Document::try_from(op.body)?;
            if !wire::rewrite_hello_reply(&mut doc, advertised) {
                return Ok(None);
            }
            Ok(Some(wire::build_op_msg(
                msg.header.request_id,
                msg.header.response_to,
                op.flags,
                &doc,
            )?))
        }
        OP_REPLY => {
            let Some(first) = wire::op_reply_first_doc(&msg.bytes)? else {
                return Ok(None);
            };
            let mut doc = Document::try_from(first)?;
            if !wire::rewrite_hello_reply(&mut doc, advertised) {
                return Ok(None);
            }
            Ok(Some(wire::replace_op_reply_first_doc(&msg.bytes, &doc)?))
        }
        _ => Ok(None),
    }
}

/// Sends injected aborts for the reaper over a connection of its own.
#[derive(Debug)]
pub(crate) struct AbortSender {
    upstream: SocketAddr,
    stream: Option<TcpStream>,
}

impl AbortSender {
    pub(crate) fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            stream: None,
        }
    }

    /// Aborts one transaction upstream; on failure the connection is dropped and the next
    /// call reconnects.
    pub(crate) async fn abort(&mut self, shared: &Shared, lsid: &Document, txn_number: i64) {
        let result =
            tokio::time::timeout(ABORT_TIMEOUT, self.try_abort(shared, lsid, txn_number)).await;
        match result {
            Ok(Ok(reply)) => log_abort_reply(&reply, txn_number),
            Ok(Err(error)) => {
                self.stream = None;
                tracing::warn!(txn_number, %error, "Cannot abort an expired transaction upstream");
            }
            Err(_) => {
                self.stream = None;
                tracing::warn!(
                    txn_number,
                    "Upstream abort of an expired transaction timed out"
                );
            }
        }
    }

    async fn try_abort(
        &mut self,
        shared: &Shared,
        lsid: &Document,
        txn_number: i64,
    ) -> Result<Message, ConnError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.upstream).await?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(ConnError::Io(std::io::ErrorKind::NotConnected.into()));
        };
        let id = shared.next_request_id();
        let command = wire::build_op_msg(id, 0, 0, &abort_command(lsid, txn_number))?;
        write_all(stream, &command).await?;
        shared.with_stats(|s| s.upstream_aborts += 1);
        loop {
            let reply = wire::read_message(stream)
                .await?
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            if reply.header.response_to == id {
                return Ok(reply);
            }
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await
}

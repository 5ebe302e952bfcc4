//! MongoDB wire protocol: framing, and just enough of `OP_MSG`, `OP_QUERY` and `OP_REPLY` to
//! read commands, rewrite `hello` replies and write the proxy's own replies.
//!
//! Every message starts with a 16-byte little-endian header: `messageLength` (the whole
//! message, header included), `requestID`, `responseTo`, `opCode`. `OP_MSG` (2013) then has
//! `flagBits` (u32), sections (kind 0: one BSON body; kind 1: `i32 size`, a C string
//! identifier, BSON documents up to `size`), and a trailing CRC-32C when `checksumPresent` is
//! set. A message the proxy rewrites is rebuilt without the checksum (the flag is cleared), which
//! the protocol allows: the checksum is optional.

use std::io;

use bson::{Document, RawDocument};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// `OP_REPLY`: legacy reply to `OP_QUERY`.
pub(crate) const OP_REPLY: i32 = 1;
/// `OP_QUERY`: legacy query, still used by drivers for the first `hello` of a connection.
pub(crate) const OP_QUERY: i32 = 2004;
/// `OP_COMPRESSED`: a compressed wrapper around another message.
pub(crate) const OP_COMPRESSED: i32 = 2012;
/// `OP_MSG`: every command since MongoDB 3.6.
pub(crate) const OP_MSG: i32 = 2013;

/// `OP_MSG` flag: a CRC-32C checksum follows the sections.
pub(crate) const CHECKSUM_PRESENT: u32 = 1;
/// `OP_MSG` flag: another message follows without a request (exhaust streams, `w: 0`).
pub(crate) const MORE_TO_COME: u32 = 1 << 1;

/// Size of the standard header.
pub(crate) const HEADER_LEN: usize = 16;
/// Largest message accepted (mongod's `maxMessageSizeBytes` is 48,000,000).
const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Why bytes are not a well-formed message of the expected kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The message is shorter than its fixed fields.
    #[error("message truncated")]
    Truncated,
    /// A section, document or string does not fit in the message.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A BSON document is invalid.
    #[error("invalid BSON: {0}")]
    Bson(#[from] bson::raw::Error),
    /// A BSON document could not be serialised.
    #[error("cannot serialise BSON: {0}")]
    Serialize(#[from] bson::ser::Error),
}

/// The standard message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Total length in bytes, header included.
    pub(crate) length: i32,
    /// Identifier chosen by the sender.
    pub(crate) request_id: i32,
    /// The `request_id` this message answers (0 for requests).
    pub(crate) response_to: i32,
    /// Message kind.
    pub(crate) op_code: i32,
}

fn le_i32(bytes: &[u8], at: usize) -> Result<i32, WireError> {
    let slice = bytes.get(at..at + 4).ok_or(WireError::Truncated)?;
    let mut buf = [0u8; 4];
    buf.copy_from_slice(slice);
    Ok(i32::from_le_bytes(buf))
}

fn le_u32(bytes: &[u8], at: usize) -> Result<u32, WireError> {
    let slice = bytes.get(at..at + 4).ok_or(WireError::Truncated)?;
    let mut buf = [0u8; 4];
    buf.copy_from_slice(slice);
    Ok(u32::from_le_bytes(buf))
}

/// Length of a BSON document starting at `at` (its own leading `i32`), checked to fit.
fn doc_len(bytes: &[u8], at: usize, end: usize) -> Result<usize, WireError> {
    let len = usize::try_from(le_i32(bytes, at)?).map_err(|_| WireError::Malformed("document"))?;
    if len < 5 || at + len > end {
        return Err(WireError::Malformed("document"));
    }
    Ok(len)
}

/// Position just after the NUL that ends the C string starting at `at`.
fn cstring_end(bytes: &[u8], at: usize, end: usize) -> Result<usize, WireError> {
    let window = bytes.get(at..end).ok_or(WireError::Truncated)?;
    let nul = window
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed("C string"))?;
    Ok(at + nul + 1)
}

/// One whole message as read from a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The header, decoded from the first 16 bytes.
    pub(crate) header: Header,
    /// Every byte of the message, header included.
    pub(crate) bytes: Vec<u8>,
}

impl Message {
    /// Wraps complete message bytes.
    ///
    /// # Errors
    ///
    /// Fails when the bytes are shorter than a header or disagree with its length.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Self, WireError> {
        let header = Header {
            length: le_i32(&bytes, 0)?,
            request_id: le_i32(&bytes, 4)?,
            response_to: le_i32(&bytes, 8)?,
            op_code: le_i32(&bytes, 12)?,
        };
        if usize::try_from(header.length).ok() != Some(bytes.len()) {
            return Err(WireError::Malformed("message length"));
        }
        Ok(Self { header, bytes })
    }

    /// `OP_MSG` flag bits, if this is an `OP_MSG`.
    pub(crate) fn op_msg_flags(&self) -> Option<u32> {
        if self.header.op_code == OP_MSG {
            le_u32(&self.bytes, HEADER_LEN).ok()
        } else {
            None
        }
    }
}

/// Reads one message; `Ok(None)` on a clean end of stream before its first byte.
///
/// # Errors
///
/// I/O errors, an end of stream inside a message, or an impossible length.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    // The first read distinguishes a clean close (0 bytes) from a torn message.
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += n;
    }
    let length = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let length = usize::try_from(length)
        .ok()
        .filter(|&len| (HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad message length"))?;
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(&header);
    bytes.resize(length, 0);
    reader.read_exact(&mut bytes[HEADER_LEN..]).await?;
    Message::from_bytes(bytes)
        .map(Some)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// A parsed `OP_MSG`, borrowing the message bytes.
#[derive(Debug)]
pub(crate) struct OpMsg<'a> {
    /// Flag bits.
    pub(crate) flags: u32,
    /// The kind-0 section: the command or reply document.
    pub(crate) body: &'a RawDocument,
    /// How many kind-1 sections (document sequences) the message carries.
    pub(crate) document_sequences: usize,
}

/// Parses an `OP_MSG` (header included).
///
/// # Errors
///
/// Fails when sections do not fit, when there is not exactly one body, or on invalid BSON.
pub(crate) fn parse_op_msg(bytes: &[u8]) -> Result<OpMsg<'_>, WireError> {
    let flags = le_u32(bytes, HEADER_LEN)?;
    let mut end = bytes.len();
    if flags & CHECKSUM_PRESENT != 0 {
        end = end.checked_sub(4).ok_or(WireError::Truncated)?;
    }
    let mut pos = HEADER_LEN + 4;
    let mut body = None;
    let mut document_sequences = 0;
    while pos < end {
        let kind = bytes[pos];
        pos += 1;
        match kind {
            0 => {
                let len = doc_len(bytes, pos, end)?;
                if body.is_some() {
                    return Err(WireError::Malformed("OP_MSG: two bodies"));
                }
                body = Some(RawDocument::from_bytes(&bytes[pos..pos + len])?);
                pos += len;
            }
            1 => {
                let size = usize::try_from(le_i32(bytes, pos)?)
                    .map_err(|_| WireError::Malformed("document sequence"))?;
                if size < 4 || pos + size > end {
                    return Err(WireError::Malformed("document sequence"));
                }
                document_sequences += 1;
                pos += size;
            }
            _ => return Err(WireError::Malformed("OP_MSG section kind")),
        }
    }
    let body = body.ok_or(WireError::Malformed("OP_MSG without body"))?;
    Ok(OpMsg {
        flags,
        body,
        document_sequences,
    })
}

/// The kind-1 sections (document sequences) of an `OP_MSG` (header included): each one's
/// identifier (`documents`, `updates`, `deletes`, …) and documents. Drivers send the documents
/// of `insert`, `update` and `delete` this way rather than in the body.
///
/// # Errors
///
/// Fails as [`parse_op_msg`] does.
pub(crate) fn document_sequences(
    bytes: &[u8],
) -> Result<Vec<(&str, Vec<&RawDocument>)>, WireError> {
    let flags = le_u32(bytes, HEADER_LEN)?;
    let mut end = bytes.len();
    if flags & CHECKSUM_PRESENT != 0 {
        end = end.checked_sub(4).ok_or(WireError::Truncated)?;
    }
    let mut pos = HEADER_LEN + 4;
    let mut sequences = Vec::new();
    while pos < end {
        let kind = bytes[pos];
        pos += 1;
        match kind {
            0 => pos += doc_len(bytes, pos, end)?,
            1 => {
                let size = usize::try_from(le_i32(bytes, pos)?)
                    .map_err(|_| WireError::Malformed("document sequence"))?;
                if size < 4 || pos + size > end {
                    return Err(WireError::Malformed("document sequence"));
                }
                let section_end = pos + size;
                let name_end = cstring_end(bytes, pos + 4, section_end)?;
                let name = std::str::from_utf8(&bytes[pos + 4..name_end - 1])
                    .map_err(|_| WireError::Malformed("document sequence identifier"))?;
                let mut docs = Vec::new();
                let mut at = name_end;
                while at < section_end {
                    let len = doc_len(bytes, at, section_end)?;
                    docs.push(RawDocument::from_bytes(&bytes[at..at + len])?);
                    at += len;
                }
                sequences.push((name, docs));
                pos = section_end;
            }
            _ => return Err(WireError::Malformed("OP_MSG section kind")),
        }
    }
    Ok(sequences)
}

/// Builds an `OP_MSG` with one body section and no checksum (the checksum flag is cleared
/// from `flags`).
///
/// # Errors
///
/// Fails when the document cannot be serialised.
pub(crate) fn build_op_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
) -> Result<Vec<u8>, WireError> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes.extend_from_slice(&(flags & !CHECKSUM_PRESENT).to_le_bytes());
    bytes.push(0);
    body.to_writer(&mut bytes)?;
    finish_header(&mut bytes, request_id, response_to, OP_MSG)?;
    Ok(bytes)
}

fn finish_header(
    bytes: &mut [u8],
    request_id: i32,
    response_to: i32,
    op_code: i32,
) -> Result<(), WireError> {
    let length = i32::try_from(bytes.len()).map_err(|_| WireError::Malformed("message length"))?;
    bytes[0..4].copy_from_slice(&length.to_le_bytes());
    bytes[4..8].copy_from_slice(&request_id.to_le_bytes());
    bytes[8..12].copy_from_slice(&response_to.to_le_bytes());
    bytes[12..16].copy_from_slice(&op_code.to_le_bytes());
    Ok(())
}

/// The parts of an `OP_QUERY` the proxy looks at.
#[derive(Debug)]
pub(crate) struct OpQuery<'a> {
    /// `db.collection`; commands go to `db.$cmd`.
    pub(crate) full_collection_name: &'a str,
    /// The query document (for commands: the command, maybe wrapped in `$query`).
    pub(crate) query: &'a RawDocument,
}

/// Parses an `OP_QUERY` (header included).
///
/// # Errors
///
/// Fails when fields do not fit or on invalid BSON.
pub(crate) fn parse_op_query(bytes: &[u8]) -> Result<OpQuery<'_>, WireError> {
    let start = HEADER_LEN + 4;
    let name_end = cstring_end(bytes, start, bytes.len())?;
    let full_collection_name = std::str::from_utf8(&bytes[start..name_end - 1])
        .map_err(|_| WireError::Malformed("collection name"))?;
    let query_at = name_end + 8;
    let len = doc_len(bytes, query_at, bytes.len())?;
    let query = RawDocument::from_bytes(&bytes[query_at..query_at + len])?;
    Ok(OpQuery {
        full_collection_name,
        query,
    })
}

/// Byte offset of the first document in an `OP_REPLY`.
const OP_REPLY_DOCS_AT: usize = HEADER_LEN + 20;

/// The first document of an `OP_REPLY` (header included), if any.
///
/// # Errors
///
/// Fails when fields do not fit or on invalid BSON.
pub(crate) fn op_reply_first_doc(bytes: &[u8]) -> Result<Option<&RawDocument>, WireError> {
    let returned = le_i32(bytes, HEADER_LEN + 16)?;
    if returned < 1 || bytes.len() <= OP_REPLY_DOCS_AT {
        return Ok(None);
    }
    let len = doc_len(bytes, OP_REPLY_DOCS_AT, bytes.len())?;
    Ok(Some(RawDocument::from_bytes(
        &bytes[OP_REPLY_DOCS_AT..OP_REPLY_DOCS_AT + len],
    )?))
}

/// Rebuilds an `OP_REPLY` (header included) with its first document replaced.
///
/// # Errors
///
/// Fails when fields do not fit or the document cannot be serialised.
pub(crate) fn replace_op_reply_first_doc(
    bytes: &[u8],
    doc: &Document,
) -> Result<Vec<u8>, WireError> {
    let old_len = doc_len(bytes, OP_REPLY_DOCS_AT, bytes.len())?;
    let mut out = bytes[..OP_REPLY_DOCS_AT].to_vec();
    doc.to_writer(&mut out)?;
    out.extend_from_slice(&bytes[OP_REPLY_DOCS_AT + old_len..]);
    let header = Message::from_bytes(bytes.to_vec())?.header;
    finish_header(&mut out, header.request_id, header.response_to, OP_REPLY)?;
    Ok(out)
}

/// Whether a command name is one of the handshake / monitoring commands.
pub(crate) fn is_hello_name(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// Whether an `OP_QUERY` is a legacy `hello`/`isMaster` command.
pub(crate) fn is_legacy_hello(query: &OpQuery<'_>) -> bool {
    if !query.full_collection_name.ends_with(".$cmd") {
        return false;
    }
    let command = match query.query.get_document("$query") {
        Ok(inner) => inner,
        Err(_) => query.query,
    };
    first_key(command).is_some_and(is_hello_name)
}

/// The first key of a document: a command's name.
pub(crate) fn first_key(doc: &RawDocument) -> Option<&str> {
    doc.iter().next()?.ok().map(|(key, _)| key)
}

/// Rewrites the topology fields of a `hello`/`isMaster` reply so that clients keep talking to
/// `advertised`: `hosts` becomes `[advertised]`, `me` and `primary` become `advertised`;
/// `passives` and `arbiters` are removed (every member would map to the one proxy address), and
/// so is `compression`, so that drivers never compress and every command stays visible to the
/// proxy. Returns whether the document looked like a hello reply (and was changed).
pub(crate) fn rewrite_hello_reply(doc: &mut Document, advertised: &str) -> bool {
    let is_hello = doc.contains_key("maxWireVersion")
        || doc.contains_key("isWritablePrimary")
        || doc.contains_key("ismaster");
    if !is_hello {
        return false;
    }
    if doc.contains_key("hosts") {
        doc.insert("hosts", vec![bson::Bson::String(advertised.to_owned())]);
    }
    for key in ["me", "primary"] {
        if doc.contains_key(key) {
            doc.insert(key, advertised);
        }
    }
    for key in ["passives", "arbiters", "compression"] {
        doc.remove(key);
    }
    true
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn op_msg_with_sequence(checksum: bool) -> Vec<u8> {
        let body = doc! { "insert": "c", "$db": "d" };
        let mut bytes = vec![0u8; HEADER_LEN];
        let flags = if checksum { CHECKSUM_PRESENT } else { 0 };
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.push(0);
        body.to_writer(&mut bytes).unwrap();
        // kind 1: size, "documents\0", two documents
        let mut seq = Vec::new();
        seq.extend_from_slice(b"documents\0");
        doc! { "_id": 1 }.to_writer(&mut seq).unwrap();
        doc! { "_id": 2 }.to_writer(&mut seq).unwrap();
        bytes.push(1);
        bytes.extend_from_slice(&(i32::try_from(seq.len() + 4).unwrap()).to_le_bytes());
        bytes.extend_from_slice(&seq);
        if checksum {
            bytes.extend_from_slice(&[1, 2, 3, 4]);
        }
        finish_header(&mut bytes, 7, 0, OP_MSG).unwrap();
        bytes
    }

    #[test]
    fn op_msg_with_document_sequence_and_checksum_parses() {
        for checksum in [false, true] {
            let bytes = op_msg_with_sequence(checksum);
            let msg = Message::from_bytes(bytes.clone()).unwrap();
            assert_eq!(msg.header.request_id, 7);
            assert_eq!(msg.header.op_code, OP_MSG);
            let parsed = parse_op_msg(&bytes).unwrap();
            assert_eq!(first_key(parsed.body), Some("insert"));
            assert_eq!(parsed.body.get_str("$db").unwrap(), "d");
            assert_eq!(parsed.document_sequences, 1);
            assert_eq!(parsed.flags & CHECKSUM_PRESENT != 0, checksum);
        }
    }

    #[test]
    fn document_sequences_are_read_with_their_identifier() {
        for checksum in [false, true] {
            let bytes = op_msg_with_sequence(checksum);
            let sequences = document_sequences(&bytes).unwrap();
            assert_eq!(sequences.len(), 1);
            assert_eq!(sequences[0].0, "documents");
            let ids: Vec<i32> = sequences[0]
                .1
                .iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect();
            assert_eq!(ids, [1, 2]);
        }
    }

    #[test]
    fn built_op_msg_drops_the_checksum_flag_and_round_trips() {
        let body = doc! { "ok": 1.0, "n": 3 };
        let bytes = build_op_msg(-5, 9, CHECKSUM_PRESENT | MORE_TO_COME, &body).unwrap();
        let msg = Message::from_bytes(bytes.clone()).unwrap();
        assert_eq!(msg.header.request_id, -5);
        assert_eq!(msg.header.response_to, 9);
        assert_eq!(msg.op_msg_flags(), Some(MORE_TO_COME));
        let parsed = parse_op_msg(&bytes).unwrap();
        assert_eq!(Document::try_from(parsed.body).unwrap(), body);
    }

    #[test]
    fn truncated_sections_are_rejected() {
        let mut bytes = op_msg_with_sequence(false);
        bytes.truncate(bytes.len() - 3);
        let len = i32::try_from(bytes.len()).unwrap();
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
        assert!(parse_op_msg(&bytes).is_err());
    }

    #[test]
    fn legacy_hello_is_recognised_and_its_reply_rewritten() {
        let mut query = vec![0u8; HEADER_LEN];
        query.extend_from_slice(&0i32.to_le_bytes());
        query.extend_from_slice(b"admin.$cmd\0");
        query.extend_from_slice(&0i32.to_le_bytes());
        query.extend_from_slice(&(-1i32).to_le_bytes());
        doc! { "isMaster": 1, "helloOk": true }
            .to_writer(&mut query)
            .unwrap();
        finish_header(&mut query, 1, 0, OP_QUERY).unwrap();
        let parsed = parse_op_query(&query).unwrap();
        assert!(is_legacy_hello(&parsed));

        let mut reply = vec![0u8; HEADER_LEN];
        reply.extend_from_slice(&8i32.to_le_bytes());
        reply.extend_from_slice(&0i64.to_le_bytes());
        reply.extend_from_slice(&0i32.to_le_bytes());
        reply.extend_from_slice(&1i32.to_le_bytes());
        doc! { "ismaster": true, "hosts": ["127.0.0.1:1"], "me": "127.0.0.1:1", "primary": "127.0.0.1:1", "arbiters": ["x:1"], "compression": ["zstd"], "maxWireVersion": 17 }
            .to_writer(&mut reply)
            .unwrap();
        finish_header(&mut reply, 2, 1, OP_REPLY).unwrap();
        let mut doc = Document::try_from(op_reply_first_doc(&reply).unwrap().unwrap()).unwrap();
        assert!(rewrite_hello_reply(&mut doc, "127.0.0.1:9"));
        let rebuilt = replace_op_reply_first_doc(&reply, &doc).unwrap();
        let msg = Message::from_bytes(rebuilt.clone()).unwrap();
        assert_eq!(msg.header.response_to, 1);
        let back = Document::try_from(op_reply_first_doc(&rebuilt).unwrap().unwrap()).unwrap();
        assert_eq!(back.get_array("hosts").unwrap().len(), 1);
        assert_eq!(back.get_str("me").unwrap(), "127.0.0.1:9");
        assert_eq!(back.get_str("primary").unwrap(), "127.0.0.1:9");
        assert!(!back.contains_key("arbiters"));
        assert!(!back.contains_key("compression"));
    }

    #[test]
    fn non_hello_replies_are_left_alone() {
        let mut doc = doc! { "ok": 1.0, "cursor": { "id": 0_i64 }, "hosts": "not topology" };
        assert!(!rewrite_hello_reply(&mut doc, "x:1"));
        assert_eq!(doc.get_str("hosts").unwrap(), "not topology");
    }

    #[tokio::test]
    async fn read_message_reads_whole_messages_and_clean_eof() {
        let one = build_op_msg(1, 0, 0, &doc! { "ping": 1 }).unwrap();
        let two = build_op_msg(2, 0, 0, &doc! { "ping": 2 }).unwrap();
        let mut stream: &[u8] = &[one.clone(), two.clone()].concat();
        assert_eq!(read_message(&mut stream).await.unwrap().unwrap().bytes, one);
        assert_eq!(read_message(&mut stream).await.unwrap().unwrap().bytes, two);
        assert!(read_message(&mut stream).await.unwrap().is_none());
        let mut torn: &[u8] = &one[..10];
        assert!(read_message(&mut torn).await.is_err());
    }
}

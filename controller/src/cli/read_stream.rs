//! The CLI's side of a read's stream (`ReadLog`, `ReadJournal`): the calls, and a decoder of
//! `ReadLogChunk` that hands the file's bytes on without copying them.
//!
//! **Why not prost's decoder.** The generated client decodes each message with prost into
//! `ReadLogChunk`, whose `bytes data` is a `Vec<u8>`: every byte the CLI prints was copied once
//! more, out of tonic's receive buffer into a fresh allocation per message (issue #15, the CLI's
//! CPU per GiB). [`ChunkDecoder`] reads the same wire format by hand and returns `data` as a
//! [`Bytes`] slice of tonic's buffer (`DecodeBuf::copy_to_bytes` splits it off; no copy). The
//! proto's Rust types stay as they are: the agent still encodes with prost.
//!
//! **Strict by design.** The input is the agent's, and an agent can be compromised: every
//! varint is bounded to ten bytes, every length checked against what remains of the message
//! before it is used, and anything the agent does not send is an error that names itself — a
//! wrong wire type, a second item in one message, an empty message. No input panics. A field
//! this CLI does not know is skipped, as prost skips it (its length checked like any other), so
//! a later agent may add a field to `ReadLogChunk` without breaking the CLIs already deployed;
//! only a group (wire types 3 and 4, unused by proto3) and the undefined wire types 6 and 7 are
//! refused. What is accepted decodes exactly as prost decodes it (the property test below
//! compares the two on well-formed, random and truncated inputs); what prost rejects is
//! rejected here too.

use bytes::{Buf, Bytes};
use loggate_proto as pb;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, StdError};
use tonic::{Status, Streaming};

/// One message of a read's stream, as [`ChunkDecoder`] decodes it.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// The stream's first message: which grant allowed it.
    Start(pb::StreamStart),
    /// Redacted bytes of the file (or journal), in order; a slice of tonic's receive buffer.
    Data(Bytes),
}

/// Why a message is not a `ReadLogChunk` this decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A varint ran past the message's end.
    TruncatedVarint,
    /// A varint longer than ten bytes, or one whose value does not fit 64 bits.
    VarintOverflow,
    /// A field's key names field 0 or a field number beyond 32 bits.
    InvalidKey(u64),
    /// A field this CLI does not know, with a wire type it cannot skip (a group, 3 or 4, or
    /// the undefined 6 and 7).
    UnskippableField { field: u64, wire_type: u8 },
    /// Field 1 or 2 with another wire type than length-delimited (2).
    WrongWireType { field: u64, wire_type: u8 },
    /// A length-delimited field longer than what remains of the message.
    LengthPastEnd {
        field: u64,
        length: u64,
        remaining: usize,
    },
    /// More than one item in one message (the oneof is set once per message).
    SecondItem,
    /// A message with no item.
    NoItem,
    /// Field 1's `StreamStart` did not decode (prost's own check of it).
    InvalidStart,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::TruncatedVarint => write!(f, "a varint runs past the message's end"),
            ChunkError::VarintOverflow => write!(f, "a varint longer than 64 bits"),
            ChunkError::InvalidKey(key) => write!(f, "invalid field key {key}"),
            ChunkError::UnskippableField { field, wire_type } => {
                write!(f, "unknown field {field} with wire type {wire_type}")
            }
            ChunkError::WrongWireType { field, wire_type } => {
                write!(f, "field {field} with wire type {wire_type} (expected 2)")
            }
            ChunkError::LengthPastEnd {
                field,
                length,
                remaining,
            } => write!(
                f,
                "field {field} says {length} bytes, {remaining} remain in the message"
            ),
            ChunkError::SecondItem => write!(f, "more than one item in one message"),
            ChunkError::NoItem => write!(f, "a message with no item"),
            ChunkError::InvalidStart => write!(f, "the stream's start does not decode"),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Reads a protobuf varint (at most ten bytes; the tenth may only carry the 64th bit).
fn varint(buf: &mut impl Buf) -> Result<u64, ChunkError> {
    let mut value = 0u64;
    for i in 0..10 {
        if !buf.has_remaining() {
            return Err(ChunkError::TruncatedVarint);
        }
        let byte = buf.get_u8();
        if i == 9 && byte > 1 {
            return Err(ChunkError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(ChunkError::VarintOverflow)
}

/// Skips the value of a field this CLI does not know: a varint (wire type 0), 8 bytes (1), a
/// length-delimited value (2) or 4 bytes (5), each checked against what remains of the message.
fn skip_field(buf: &mut impl Buf, field: u64, wire_type: u8) -> Result<(), ChunkError> {
    let length = match wire_type {
        0 => return varint(buf).map(drop),
        1 => 8,
        2 => varint(buf)?,
        5 => 4,
        _ => return Err(ChunkError::UnskippableField { field, wire_type }),
    };
    let remaining = buf.remaining();
    match usize::try_from(length) {
        Ok(len) if len <= remaining => {
            buf.advance(len);
            Ok(())
        }
        _ => Err(ChunkError::LengthPastEnd {
            field,
            length,
            remaining,
        }),
    }
}

/// Decodes one whole `ReadLogChunk` from `buf` (all of it: `buf` holds exactly one message, as
/// tonic hands it over), taking `data` out as a [`Bytes`] of `buf` without copying when `buf`
/// is a `Bytes` or tonic's `DecodeBuf`.
pub fn decode_chunk(buf: &mut impl Buf) -> Result<Chunk, ChunkError> {
    let mut item = None;
    while buf.has_remaining() {
        let key = varint(buf)?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(ChunkError::InvalidKey(key));
        }
        // The low three bits: the cast cannot lose anything.
        let wire_type = (key & 7) as u8;
        if field != 1 && field != 2 {
            skip_field(buf, field, wire_type)?;
            continue;
        }
        if wire_type != 2 {
            return Err(ChunkError::WrongWireType { field, wire_type });
        }
        let length = varint(buf)?;
        let remaining = buf.remaining();
        let len = match usize::try_from(length) {
            Ok(len) if len <= remaining => len,
            _ => {
                return Err(ChunkError::LengthPastEnd {
                    field,
                    length,
                    remaining,
                })
            }
        };
        if item.is_some() {
            return Err(ChunkError::SecondItem);
        }
        let bytes = buf.copy_to_bytes(len);
        item = Some(if field == 1 {
            Chunk::Start(pb::StreamStart::decode(bytes).map_err(|_| ChunkError::InvalidStart)?)
        } else {
            Chunk::Data(bytes)
        });
    }
    item.ok_or(ChunkError::NoItem)
}

/// tonic's decoder of a read's stream: [`decode_chunk`] on each message.
#[derive(Debug, Default)]
pub struct ChunkDecoder;

impl Decoder for ChunkDecoder {
    type Item = Chunk;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Chunk>, Status> {
        // On an error the rest of the message is left unread: every caller ends the read at
        // its first error, so nothing is ever decoded from the middle of a message.
        decode_chunk(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("the agent sent an invalid message: {e}")))
    }
}

/// The request's encoder: prost's, as the generated client's.
#[derive(Debug)]
pub struct RequestEncoder<T>(std::marker::PhantomData<T>);

impl<T: Message> Encoder for RequestEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))
    }
}

/// A read's call: request `T` (encoded by prost), the answer a stream of [`Chunk`]s.
#[derive(Debug)]
pub struct ReadCodec<T>(std::marker::PhantomData<T>);

impl<T> Default for ReadCodec<T> {
    fn default() -> Self {
        ReadCodec(std::marker::PhantomData)
    }
}

impl<T: Message + Send + 'static> Codec for ReadCodec<T> {
    type Encode = T;
    type Decode = Chunk;
    type Encoder = RequestEncoder<T>;
    type Decoder = ChunkDecoder;

    fn encoder(&mut self) -> RequestEncoder<T> {
        RequestEncoder(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> ChunkDecoder {
        ChunkDecoder
    }
}

/// The agent's two read calls, the same as the generated `AgentClient`'s (path, method
/// extension, readiness) but with [`ReadCodec`].
#[derive(Debug, Clone)]
pub struct ReadClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> ReadClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    pub fn new(channel: T) -> Self {
        ReadClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// `Agent/ReadLog`.
    pub async fn read_log(
        &mut self,
        request: pb::ReadLogRequest,
    ) -> Result<tonic::Response<Streaming<Chunk>>, Status> {
        self.call(request, "/loggate.v1.Agent/ReadLog", "ReadLog")
            .await
    }

    /// `Agent/ReadJournal`.
    pub async fn read_journal(
        &mut self,
        request: pb::ReadJournalRequest,
    ) -> Result<tonic::Response<Streaming<Chunk>>, Status> {
        self.call(request, "/loggate.v1.Agent/ReadJournal", "ReadJournal")
            .await
    }

    async fn call<R: Message + Send + 'static>(
        &mut self,
        request: R,
        path: &'static str,
        method: &'static str,
    ) -> Result<tonic::Response<Streaming<Chunk>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))?;
        let mut request = tonic::Request::new(request);
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("loggate.v1.Agent", method));
        self.inner
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(path),
                ReadCodec::<R>::default(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// prost's decoding of `bytes`, as [`Chunk`] (`None` for a message with no item, which
    /// prost accepts and this decoder does not).
    fn by_prost(bytes: &[u8]) -> Result<Option<Chunk>, prost::DecodeError> {
        Ok(match pb::ReadLogChunk::decode(bytes)?.item {
            Some(pb::read_log_chunk::Item::Start(s)) => Some(Chunk::Start(s)),
            Some(pb::read_log_chunk::Item::Data(d)) => Some(Chunk::Data(Bytes::from(d))),
            None => None,
        })
    }

    /// The property: what this decoder accepts, prost decodes to the same chunk; what prost
    /// rejects, this decoder rejects.
    /// Whether the input was accepted (and then decoded as prost decodes it).
    fn agrees_with_prost(bytes: &[u8]) -> bool {
        let ours = decode_chunk(&mut Bytes::copy_from_slice(bytes));
        match (&ours, by_prost(bytes)) {
            (Ok(chunk), Ok(Some(theirs))) => {
                assert_eq!(chunk, &theirs, "input {bytes:02x?}");
                true
            }
            (Ok(chunk), theirs) => {
                panic!("accepted {chunk:?}, prost says {theirs:?}; input {bytes:02x?}")
            }
            (Err(_), _) => false,
        }
    }

    fn data(bytes: &[u8]) -> Vec<u8> {
        pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Data(bytes.to_vec())),
        }
        .encode_to_vec()
    }

    fn start() -> pb::StreamStart {
        pb::StreamStart {
            grant_id: "g-1".into(),
            grant_not_after_unix: 1_800_000_000,
            redaction_profile: "default".into(),
            path: "/var/log/app.log".into(),
        }
    }

    #[test]
    fn data_decodes_as_a_slice_of_the_message_without_a_copy() {
        let message = Bytes::from(data(b"line one\nline two\n"));
        let mut buf = message.clone();
        let Ok(Chunk::Data(got)) = decode_chunk(&mut buf) else {
            panic!("not data");
        };
        assert_eq!(&got[..], b"line one\nline two\n");
        // The same memory as the message's (after its two bytes of key and length).
        assert_eq!(got.as_ptr(), message[2..].as_ptr());
        assert!(!buf.has_remaining());
    }

    #[test]
    fn fields_a_later_agent_may_add_are_skipped_as_prost_skips_them() {
        // Field 3 as a varint, 8 bytes, a length-delimited value and 4 bytes, before and after
        // the data: an older CLI still reads the data, and reads it as prost does.
        let extras: [&[u8]; 4] = [
            &[0x18, 0x96, 0x01],
            &[0x19, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0x1a, 0x03, b'a', b'b', b'c'],
            &[0x1d, 1, 2, 3, 4],
        ];
        for extra in extras {
            let mut message = extra.to_vec();
            message.extend(data(b"kept\n"));
            message.extend(extra);
            let Ok(Chunk::Data(got)) = decode_chunk(&mut Bytes::from(message.clone())) else {
                panic!("field 3 not skipped: {message:02x?}");
            };
            assert_eq!(&got[..], b"kept\n");
            assert!(agrees_with_prost(&message), "{message:02x?}");
        }
    }

    #[test]
    fn well_formed_messages_decode_as_prost_decodes_them() {
        let big = vec![b'x'; 300_000];
        for message in [
            data(b""),
            data(b"a\n"),
            data(&big),
            pb::ReadLogChunk {
                item: Some(pb::read_log_chunk::Item::Start(start())),
            }
            .encode_to_vec(),
            pb::ReadLogChunk {
                item: Some(pb::read_log_chunk::Item::Start(pb::StreamStart::default())),
            }
            .encode_to_vec(),
        ] {
            assert!(decode_chunk(&mut Bytes::from(message.clone())).is_ok());
            agrees_with_prost(&message);
        }
    }

    #[test]
    fn what_the_agent_does_not_send_is_a_named_error() {
        let cases: &[(&[u8], ChunkError)] = &[
            (&[], ChunkError::NoItem),
            (&[0x12], ChunkError::TruncatedVarint),
            (&[0x12, 0x80], ChunkError::TruncatedVarint),
            (
                &[0x12, 0x05, b'a'],
                ChunkError::LengthPastEnd {
                    field: 2,
                    length: 5,
                    remaining: 1,
                },
            ),
            (
                &[
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                ChunkError::LengthPastEnd {
                    field: 2,
                    length: u64::MAX,
                    remaining: 0,
                },
            ),
            (
                &[
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                ChunkError::VarintOverflow,
            ),
            (
                &[
                    0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                ChunkError::VarintOverflow,
            ),
            (
                &[0x10, 0x01],
                ChunkError::WrongWireType {
                    field: 2,
                    wire_type: 0,
                },
            ),
            (
                &[0x0d, 0, 0, 0, 0],
                ChunkError::WrongWireType {
                    field: 1,
                    wire_type: 5,
                },
            ),
            // An unknown field is skipped, but a message of nothing else has no item.
            (&[0x1a, 0x00], ChunkError::NoItem),
            (
                &[0x1b, 0x1c, 0x12, 0x00],
                ChunkError::UnskippableField {
                    field: 3,
                    wire_type: 3,
                },
            ),
            (
                &[0x1e, 0x12, 0x00],
                ChunkError::UnskippableField {
                    field: 3,
                    wire_type: 6,
                },
            ),
            (
                &[0x1a, 0x05, 0x00],
                ChunkError::LengthPastEnd {
                    field: 3,
                    length: 5,
                    remaining: 1,
                },
            ),
            (
                &[0x19, 0, 0, 0],
                ChunkError::LengthPastEnd {
                    field: 3,
                    length: 8,
                    remaining: 3,
                },
            ),
            (&[0x18, 0x80], ChunkError::TruncatedVarint),
            (&[0x02, 0x00], ChunkError::InvalidKey(2)),
            (&[0x12, 0x00, 0x12, 0x00], ChunkError::SecondItem),
            (&[0x0a, 0x00, 0x12, 0x00], ChunkError::SecondItem),
            // StreamStart's field 1 (a string) with invalid UTF-8.
            (&[0x0a, 0x03, 0x0a, 0x01, 0xff], ChunkError::InvalidStart),
        ];
        for (input, expected) in cases {
            assert_eq!(
                decode_chunk(&mut Bytes::from_static(input)),
                Err(*expected),
                "input {input:02x?}"
            );
            agrees_with_prost(input);
        }
    }

    #[test]
    fn random_and_truncated_inputs_never_decode_otherwise_than_prost() {
        // The fixed seed's inputs have 3,385 accepted and compared; a floor well under that.
        const MIN_ACCEPTED: usize = 1_000;
        // A fixed seed: the same inputs on every run (a failure names its input).
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let start = pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Start(start())),
        }
        .encode_to_vec();
        let mut accepted = 0usize;
        for round in 0..20_000 {
            let len = rng.random_range(0..48);
            let mut input: Vec<u8> = match round % 4 {
                // Random bytes.
                0 => (0..len).map(|_| rng.random()).collect(),
                // Random bytes behind a plausible key (fields 0..4, any wire type).
                1 => {
                    let mut v = vec![rng.random_range(0..0x28u8)];
                    v.extend((0..len).map(|_| rng.random::<u8>()));
                    v
                }
                // A well-formed message, cut short or with one byte changed.
                _ => {
                    let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    let mut m = if round % 8 < 4 {
                        data(&body)
                    } else {
                        start.clone()
                    };
                    if rng.random_bool(0.5) {
                        let cut = rng.random_range(0..=m.len());
                        m.truncate(cut);
                    } else if !m.is_empty() {
                        let at = rng.random_range(0..m.len());
                        m[at] = rng.random();
                    }
                    m
                }
            };
            accepted += usize::from(agrees_with_prost(&input));
            // And every prefix of it.
            while input.pop().is_some() {
                accepted += usize::from(agrees_with_prost(&input));
            }
        }
        // Not a test that passes by rejecting everything: a share of these inputs (whole
        // messages, and prefixes cut at a field's end) are accepted and compared.
        assert!(
            accepted >= MIN_ACCEPTED,
            "only {accepted} inputs accepted and compared"
        );
    }
}

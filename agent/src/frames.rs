//! The `ReadLog` and `ReadJournal` responses written as gRPC frames by the agent itself.
//!
//! **Why** (issue #15). Through tonic's generated server, every message of a read was encoded
//! by prost into tonic's encode buffer (a copy of the redacted chunk) and that buffer was split
//! off and frozen per yield, so allocated again per message: with 64 streams, about 4 % of the
//! agent's samples (docs/performance.md). Here the redactor writes a chunk's content into a
//! buffer that already has room in front ([`HEADROOM`]) for the 5-byte gRPC prefix and the
//! protobuf key and length of `ReadLogChunk.data`; [`Chunk::into_frame`] writes that framing
//! into the room and hands the same allocation to hyper as [`Bytes`], with no further copy.
//!
//! **What the client sees** is what tonic sent: each frame is one gRPC message, uncompressed,
//! whose protobuf is the `ReadLogChunk` prost encodes (`data` is field 2 of the `item` oneof,
//! wire type 2; a set oneof field is written even when empty), and the response ends with the
//! same trailers ([`FramedBody`]: `grpc-status`, `grpc-message`, the status's metadata). The
//! route that serves it is `crate::routes`.

use bytes::{Buf, Bytes};
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::Status;

/// The gRPC message prefix: a compression flag (0: none) and the message's length, a u32
/// big-endian.
const GRPC_PREFIX: usize = 5;
/// `ReadLogChunk.data`'s key: field 2, wire type 2 (length-delimited).
const DATA_KEY: u8 = (2 << 3) | 2;
/// The longest varint of a length that fits the gRPC prefix's u32.
const MAX_LENGTH_VARINT: usize = 5;
/// Bytes a [`Chunk`]'s buffer keeps in front of its content for the framing.
pub const HEADROOM: usize = GRPC_PREFIX + 1 + MAX_LENGTH_VARINT;

/// One data message's content, in a buffer whose first [`HEADROOM`] bytes are kept for its
/// framing: the redactor appends to it ([`Chunk::buffer`]), the response sends it as it is.
pub struct Chunk(Vec<u8>);

/// A chunk whose message would not fit the gRPC prefix's length (4 GiB): never built by a
/// stream, whose messages are one read (64 KiB) redacted; refused rather than framed wrong.
#[derive(Debug, thiserror::Error)]
#[error("a message of {0} bytes is larger than a gRPC message can be")]
pub struct TooLarge(usize);

impl Chunk {
    /// An empty chunk with room for `content` bytes.
    pub fn with_capacity(content: usize) -> Chunk {
        let mut buf = Vec::with_capacity(HEADROOM + content);
        buf.resize(HEADROOM, 0);
        Chunk(buf)
    }

    /// A chunk holding a copy of `content` (notices, raw chunks, journal pieces).
    pub fn copy_of(content: &[u8]) -> Chunk {
        let mut chunk = Chunk::with_capacity(content.len());
        chunk.0.extend_from_slice(content);
        chunk
    }

    /// The buffer to **append** content to (a writer that cut it short of [`HEADROOM`] would
    /// have its chunk refused by [`Chunk::into_frame`]).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The content.
    pub fn content(&self) -> &[u8] {
        self.0.get(HEADROOM..).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.content().is_empty()
    }

    /// Bytes held allocated (what the queue budget charges).
    pub fn allocated(&self) -> usize {
        self.0.capacity()
    }

    /// The chunk with its spare capacity given back when it holds less than half of it (a
    /// grep or a time range keeping a few lines of a read): a queued message holds its
    /// allocation until the client takes it, and the queue budget charges that allocation, so
    /// a sparse message is copied to its size rather than kept at a read's 72 KiB. A full
    /// chunk (`cat`, most of a `tail`) is kept as it is: no copy on the fast path.
    pub fn fit_for_queue(mut self) -> Chunk {
        if self.0.len() < self.0.capacity() / 2 {
            self.0.shrink_to_fit();
        }
        self
    }

    /// The gRPC frame of the message `ReadLogChunk { data: content }`, in the chunk's own
    /// allocation: the framing is written into the room in front, and the frame starts
    /// where the framing does.
    pub fn into_frame(self) -> Result<Bytes, TooLarge> {
        let Chunk(mut buf) = self;
        let start = frame_in_place(&mut buf)?;
        let mut frame = Bytes::from(buf);
        frame.advance(start);
        Ok(frame)
    }

    /// [`Chunk::into_frame`], the frame's allocation holding `held` until the frame's last
    /// user drops it (HTTP/2, once it has written the frame): what a stream served in its
    /// response's poll charges to the queue budget is held by the frames themselves
    /// ([`crate::pull`]).
    pub fn into_frame_holding<T: Send + 'static>(self, held: T) -> Result<Bytes, TooLarge> {
        let Chunk(mut buf) = self;
        let start = frame_in_place(&mut buf)?;
        let mut frame = Bytes::from_owner(Holding { buf, _held: held });
        frame.advance(start);
        Ok(frame)
    }
}

/// A frame's buffer and what it holds while HTTP/2 holds the frame.
struct Holding<T> {
    buf: Vec<u8>,
    _held: T,
}

impl<T> AsRef<[u8]> for Holding<T> {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Writes the framing of the message `ReadLogChunk { data: content }` into the room in front
/// of `buf`'s content; where the frame starts.
fn frame_in_place(buf: &mut [u8]) -> Result<usize, TooLarge> {
    let content = buf.len().checked_sub(HEADROOM).ok_or(TooLarge(0))?;
    let mut varint = [0u8; MAX_LENGTH_VARINT];
    let varint_len = put_varint(&mut varint, content).ok_or(TooLarge(content))?;
    let message = u32::try_from(1 + varint_len + content).map_err(|_| TooLarge(content))?;
    let start = HEADROOM - GRPC_PREFIX - 1 - varint_len;
    let framing = &mut buf[start..HEADROOM];
    framing[0] = 0;
    framing[1..GRPC_PREFIX].copy_from_slice(&message.to_be_bytes());
    framing[GRPC_PREFIX] = DATA_KEY;
    framing[GRPC_PREFIX + 1..].copy_from_slice(&varint[..varint_len]);
    Ok(start)
}

/// Writes `value` as a protobuf varint into `out`; its length, or `None` when it needs more
/// than [`MAX_LENGTH_VARINT`] bytes (beyond 2^35).
fn put_varint(out: &mut [u8; MAX_LENGTH_VARINT], mut value: usize) -> Option<usize> {
    for (i, byte) in out.iter_mut().enumerate() {
        let low = value.to_le_bytes()[0];
        if value < 0x80 {
            *byte = low;
            return Some(i + 1);
        }
        *byte = (low & 0x7f) | 0x80;
        value >>= 7;
    }
    None
}

/// The gRPC frame of any message (the stream's opening `StreamStart`), encoded by prost.
pub fn message_frame(message: &impl prost::Message) -> Result<Bytes, TooLarge> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| TooLarge(len))?;
    let mut buf = Vec::with_capacity(GRPC_PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message.encode(&mut buf).map_err(|_| TooLarge(len))?;
    Ok(Bytes::from(buf))
}

/// A response's body: each item of `S` (a gRPC frame, or the stream's final error) as one
/// HTTP/2 DATA frame, then the trailers tonic's server writes: the final status's
/// (`grpc-status`, `grpc-message`, its metadata such as `loggate-end`), or `grpc-status: 0`
/// when the stream ended without one.
pub struct FramedBody<S> {
    frames: S,
    ended: bool,
}

impl<S> FramedBody<S> {
    pub fn new(frames: S) -> Self {
        FramedBody {
            frames,
            ended: false,
        }
    }
}

/// The trailers of `status`, as tonic writes them.
fn trailers(status: &Status) -> Result<Frame<Bytes>, Status> {
    let mut map = http::HeaderMap::with_capacity(3 + status.metadata().len());
    status.add_header(&mut map)?;
    Ok(Frame::trailers(map))
}

impl<S> http_body::Body for FramedBody<S>
where
    S: Stream<Item = Result<Bytes, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = match Pin::new(&mut self.frames).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        Poll::Ready(Some(match next {
            Some(Ok(frame)) => Ok(Frame::data(frame)),
            Some(Err(status)) => {
                self.ended = true;
                trailers(&status)
            }
            None => {
                self.ended = true;
                trailers(&Status::ok(""))
            }
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use loggate_proto as pb;
    use prost::Message;

    /// The message of one gRPC frame, checked against its prefix.
    fn message_of(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0, "uncompressed");
        let len = u32::from_be_bytes(frame[1..5].try_into().expect("prefix"));
        let len = usize::try_from(len).expect("fits");
        assert_eq!(
            len,
            frame.len() - GRPC_PREFIX,
            "the prefix says the frame's length"
        );
        &frame[GRPC_PREFIX..]
    }

    /// The CLI decodes the agent's frames with prost's `ReadLogChunk`: they must decode to the
    /// same data, and be the bytes prost itself writes, for every length varint size
    /// (1/2/3/4 bytes: the boundaries at 2^7, 2^14, 2^21) and the empty chunk.
    #[test]
    fn hand_written_frames_decode_with_prost_to_the_same_data() {
        let mut sizes = vec![0usize, 1];
        for bits in [7u32, 14, 21] {
            let edge = 1usize << bits;
            sizes.extend([edge - 1, edge, edge + 1]);
        }
        sizes.push(64 * 1024 + 8 * 1024);
        for size in sizes {
            let content: Vec<u8> = (0..size)
                .map(|i| u8::try_from(i * 7 % 251).expect("a byte"))
                .collect();
            let frame = Chunk::copy_of(&content).into_frame().expect("frames");
            let message = message_of(&frame);
            let decoded = pb::ReadLogChunk::decode(message).expect("prost decodes it");
            assert_eq!(
                decoded.item,
                Some(pb::read_log_chunk::Item::Data(content.clone())),
                "{size} bytes"
            );
            let prost = pb::ReadLogChunk {
                item: Some(pb::read_log_chunk::Item::Data(content)),
            }
            .encode_to_vec();
            assert_eq!(
                message,
                prost.as_slice(),
                "{size} bytes: prost's own encoding"
            );
        }
    }

    /// A chunk written by appending (as the redactor does) is framed in its own allocation.
    #[test]
    fn a_chunk_is_framed_without_a_copy() {
        let mut chunk = Chunk::with_capacity(1000);
        chunk.buffer().extend_from_slice(b"line one\nline two\n");
        let content_at = chunk.content().as_ptr();
        let frame = chunk.into_frame().expect("frames");
        assert_eq!(frame[frame.len() - 18..].as_ptr(), content_at);
        assert_eq!(
            pb::ReadLogChunk::decode(message_of(&frame))
                .expect("decodes")
                .item,
            Some(pb::read_log_chunk::Item::Data(
                b"line one\nline two\n".to_vec()
            ))
        );
    }

    #[test]
    fn a_chunk_cut_into_its_headroom_is_refused() {
        let mut chunk = Chunk::with_capacity(8);
        chunk.buffer().truncate(3);
        assert!(chunk.into_frame().is_err());
    }

    #[test]
    fn the_opening_message_is_prosts_encoding() {
        let opening = pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Start(pb::StreamStart {
                grant_id: "g-1".into(),
                grant_not_after_unix: 1_800_000_000,
                redaction_profile: "default".into(),
                path: "/var/log/app.log".into(),
            })),
        };
        let frame = message_frame(&opening).expect("frames");
        assert_eq!(message_of(&frame), opening.encode_to_vec().as_slice());
    }

    /// The body: each frame as a DATA frame, then the trailers tonic writes for the final
    /// status (its code, message and metadata), or `grpc-status: 0` at a clean end.
    #[tokio::test]
    async fn the_body_ends_with_the_trailers_tonic_writes() {
        let data = Chunk::copy_of(b"x\n").into_frame().expect("frames");
        let mut cut = Status::aborted("the grant was revoked");
        cut.metadata_mut()
            .insert("loggate-end", "revoked".parse().expect("value"));
        for (last, code, message) in [
            (Some(cut), "10", Some("the%20grant%20was%20revoked")),
            (None, "0", None),
        ] {
            let items: Vec<Result<Bytes, Status>> = std::iter::once(Ok(data.clone()))
                .chain(last.map(Err))
                .collect();
            let mut body = FramedBody::new(tokio_stream::iter(items));
            let first = body.frame().await.expect("a frame").expect("ok");
            assert_eq!(first.into_data().expect("data"), data);
            let end = body.frame().await.expect("a frame").expect("ok");
            let trailers = end.into_trailers().expect("trailers");
            assert_eq!(trailers["grpc-status"], code);
            assert_eq!(
                trailers
                    .get("grpc-message")
                    .map(|v| v.to_str().expect("ascii")),
                message
            );
            if code == "10" {
                assert_eq!(trailers["loggate-end"], "revoked");
            }
            assert!(http_body::Body::is_end_stream(&body));
            assert!(body.frame().await.is_none());
        }
    }
}

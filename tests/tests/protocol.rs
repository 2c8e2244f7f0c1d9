//! End-to-end: malformed and oversized protobuf messages get an error, and the agent keeps
//! serving.

use bytes::{Buf, BufMut};
use loggate_tests::{text, Fixture};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Sends and receives raw bytes as gRPC messages, so tests can send what no client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn send_raw(f: &Fixture, body: Vec<u8>) -> Result<Vec<Vec<u8>>, Status> {
    let files = f.cluster.tls_files_of("users/alice");
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )
        .map_err(|e| Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/loggate.v1.Agent/ReadLog");
    let mut stream = grpc
        .server_streaming(tonic::Request::new(body), path, RawCodec)
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await? {
        messages.push(m);
    }
    Ok(messages)
}

fn still_serves(f: &Fixture) -> anyhow::Result<()> {
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(
        out.status.success(),
        "agent stopped serving: {}",
        text(&out).1
    );
    Ok(())
}

#[tokio::test]
async fn malformed_protobuf_gets_an_error_and_the_agent_keeps_serving() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(|| -> anyhow::Result<Fixture> {
        let f = Fixture::start()?;
        f.grant("alice", "30m")?;
        Ok(f)
    })
    .await??;
    for garbage in [
        vec![0xff; 16],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x12, 0x05, b'a'],
    ] {
        let result = send_raw(&f, garbage.clone()).await;
        let status = result.expect_err("garbage was accepted");
        assert!(
            matches!(
                status.code(),
                tonic::Code::Internal | tonic::Code::InvalidArgument
            ),
            "{garbage:?}: {status:?}"
        );
    }
    let f = tokio::task::spawn_blocking(move || still_serves(&f).map(|_| f)).await??;
    drop(f);
    Ok(())
}

#[tokio::test]
async fn oversized_request_gets_an_error_and_the_agent_keeps_serving() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(|| -> anyhow::Result<Fixture> {
        let f = Fixture::start()?;
        f.grant("alice", "30m")?;
        Ok(f)
    })
    .await??;
    // A ReadLogRequest whose path field (1) is 200 KiB: over the 64 KiB request limit.
    let mut body = vec![0x0a];
    let mut len = 200 * 1024u32;
    while len >= 0x80 {
        body.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    body.push(len as u8);
    body.extend(std::iter::repeat_n(b'a', 200 * 1024));
    let status = send_raw(&f, body)
        .await
        .expect_err("oversized request was accepted");
    // tonic's code for a message over the decoder's bound (the agent's route decodes the
    // request as tonic does: agent/src/routes.rs tests).
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let f = tokio::task::spawn_blocking(move || still_serves(&f).map(|_| f)).await??;
    drop(f);
    Ok(())
}

#[tokio::test]
async fn oversized_grep_pattern_and_bad_mode_are_refused() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(|| -> anyhow::Result<Fixture> {
        let f = Fixture::start()?;
        f.grant("alice", "30m")?;
        Ok(f)
    })
    .await??;
    use prost::Message;
    let long = loggate_proto::ReadLogRequest {
        path: f.api_log(),
        mode: loggate_proto::ReadMode::Grep as i32,
        pattern: "a".repeat(5000),
        ..Default::default()
    };
    let status = send_raw(&f, long.encode_to_vec())
        .await
        .expect_err("long pattern accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let bad_mode = loggate_proto::ReadLogRequest {
        path: f.api_log(),
        mode: 42,
        ..Default::default()
    };
    let status = send_raw(&f, bad_mode.encode_to_vec())
        .await
        .expect_err("bad mode accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let f = tokio::task::spawn_blocking(move || still_serves(&f).map(|_| f)).await??;
    drop(f);
    Ok(())
}

//! `mqtt::broker::websocket` against a hand-written WebSocket client over in-memory pipes
//! (handshake refusals, every frame rule, reads and writes split anywhere, cancelled
//! writes) and against a real client, paho-mqtt's `transport="websockets"`, for MQTT 3.1.1
//! and 5.0 packets decoded with our codec.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::broker::websocket::{FrameError, WsError, WsLimits, WsStream, accept};
use fieldgate::mqtt::codec::{decode, encode};
use fieldgate::mqtt::packet::*;
use fieldgate::mqtt::topic::TopicName;
use proptest::prelude::*;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, duplex,
};
use tokio::net::TcpListener;

use crate::support;

/// The nonce of RFC 6455 §1.3 and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The mask key of the RFC 6455 §5.7 examples.
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const DEADLINE: Duration = Duration::from_secs(20);

fn upgrade_request(headers: &[(&str, &str)]) -> String {
    let mut text = String::from("GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text + "\r\n"
}

fn good_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "mqtt"),
    ]
}

/// A client frame (always masked, as RFC 6455 §5.3 requires of clients).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_with(u8::from(fin) << 7 | opcode, payload, true)
}

fn client_frame_with(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// One server frame as the client sees it.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    body
}

/// Reads one server frame; `None` at a clean end of stream. Server frames must be
/// unmasked (RFC 6455 §5.1) and use no reserved bits.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Frame> {
    let mut head = [0u8; 2];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("client read: {e}"),
    }
    assert_eq!(head[0] & 0x70, 0, "reserved bits in {head:02x?}");
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            r.read_exact(&mut ext).await.unwrap();
            let len = u16::from_be_bytes(ext) as usize;
            assert!(len >= 126, "length {len} not in its shortest form");
            len
        }
        127 => {
            let mut ext = [0u8; 8];
            r.read_exact(&mut ext).await.unwrap();
            let len = u64::from_be_bytes(ext) as usize;
            assert!(len > 0xFFFF, "length {len} not in its shortest form");
            len
        }
        short => short as usize,
    };
    // A garbled stream would otherwise ask for terabytes here.
    assert!(len <= 1 << 20, "implausible frame length {len}");
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.unwrap();
    Some(Frame {
        fin: head[0] & 0x80 != 0,
        opcode: head[0] & 0x0F,
        payload,
    })
}

/// Reads the server's HTTP response head.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(r.read(&mut byte).await.unwrap(), 1, "response cut short");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Runs the handshake on `server` while `client` sends a good request and reads the 101.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    server: S,
    client: &mut DuplexStream,
    limits: WsLimits,
) -> WsStream<S> {
    let request = upgrade_request(&good_headers());
    let (ws, response) = tokio::join!(accept(server, &limits), async {
        client.write_all(request.as_bytes()).await.unwrap();
        read_response(client).await
    });
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    ws.unwrap()
}

/// A server stream and the client end of its pipe, after a successful handshake.
async fn connected(pipe: usize, limits: WsLimits) -> (WsStream<DuplexStream>, DuplexStream) {
    let (mut client, server) = duplex(pipe);
    let ws = handshake(server, &mut client, limits).await;
    (ws, client)
}

/// The frame error inside a read error.
fn frame_error(e: &io::Error) -> FrameError {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameError>())
        .unwrap_or_else(|| panic!("not a frame error: {e:?}"))
        .clone()
}

async fn expect_close<R: AsyncRead + Unpin>(client: &mut R, code: u16) {
    let frame = read_frame(client).await.expect("a close frame");
    assert_eq!(
        frame,
        Frame {
            fin: true,
            opcode: OP_CLOSE,
            payload: code.to_be_bytes().to_vec()
        }
    );
}

#[tokio::test]
async fn the_handshake_answers_101_with_the_accept_key_and_the_mqtt_subprotocol() {
    let (mut client, server) = duplex(4096);
    let request = upgrade_request(&good_headers());
    let limits = WsLimits::default();
    let (ws, _) = tokio::join!(
        accept(server, &limits),
        client.write_all(request.as_bytes())
    );
    let ws = ws.unwrap();
    assert_eq!((ws.path(), ws.subprotocol()), ("/mqtt", "mqtt"));
    let response = read_response(&mut client).await;
    let lines: Vec<&str> = response.split("\r\n").collect();
    assert_eq!(lines[0], "HTTP/1.1 101 Switching Protocols");
    for expected in [
        "Upgrade: websocket".to_string(),
        "Connection: Upgrade".to_string(),
        format!("Sec-WebSocket-Accept: {ACCEPT}"),
        "Sec-WebSocket-Protocol: mqtt".to_string(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected} in {response}"
        );
    }
}

/// Sends `request` and returns what `accept` said and what the client read until EOF.
async fn refused(request: Vec<u8>, limits: WsLimits) -> (WsError, String) {
    let (mut client, server) = duplex(64 * 1024);
    let (result, response) = tokio::join!(accept(server, &limits), async {
        client.write_all(&request).await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        response
    });
    (result.expect_err("a refusal"), response)
}

#[tokio::test]
async fn a_refused_handshake_gets_an_http_status_and_a_typed_error() {
    let with = |name: &str, value: &'static str| {
        let mut headers: Vec<(&str, &str)> = good_headers()
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect();
        headers.push((name, value));
        upgrade_request(&headers).into_bytes()
    };
    let without = |name: &str| {
        let headers: Vec<_> = good_headers()
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect();
        upgrade_request(&headers).into_bytes()
    };
    let not_get = upgrade_request(&good_headers()).replacen("GET", "POST", 1);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("missing key", without("Sec-WebSocket-Key"), 400),
        ("wrong version", with("Sec-WebSocket-Version", "8"), 426),
        (
            "no mqtt subprotocol",
            with("Sec-WebSocket-Protocol", "wamp"),
            400,
        ),
        (
            "no subprotocol at all",
            without("Sec-WebSocket-Protocol"),
            400,
        ),
        ("not GET", not_get.into_bytes(), 405),
        ("not an upgrade", without("Upgrade"), 426),
    ];
    for (what, request, status) in cases {
        let (e, response) = refused(request, WsLimits::default()).await;
        assert_eq!(e.http_status(), Some(status), "{what}: {e}");
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {response}"
        );
        assert!(response.contains("Content-Length: "), "{what}: {response}");
    }
    let (e, response) = refused(with("Sec-WebSocket-Version", "8"), WsLimits::default()).await;
    assert!(
        matches!(e, WsError::UnsupportedVersion(ref v) if v == "8"),
        "{e:?}"
    );
    assert!(
        response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{response}"
    );
    let (e, _) = refused(without("Sec-WebSocket-Key"), WsLimits::default()).await;
    assert!(
        matches!(e, WsError::MissingHeader("Sec-WebSocket-Key")),
        "{e:?}"
    );
    let (e, _) = refused(without("Sec-WebSocket-Protocol"), WsLimits::default()).await;
    assert!(matches!(e, WsError::NoMqttSubprotocol), "{e:?}");
}

#[tokio::test]
async fn a_header_block_over_the_limit_gets_431() {
    let limits = WsLimits {
        max_header: 1024,
        ..WsLimits::default()
    };
    let padding = "x".repeat(2000);
    let mut headers = good_headers();
    headers.push(("X-Padding", &padding));
    let (e, response) = refused(upgrade_request(&headers).into_bytes(), limits).await;
    assert!(matches!(e, WsError::HeaderTooLarge { max: 1024 }), "{e:?}");
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_gets_no_answer() {
    let (mut client, server) = duplex(4096);
    client
        .write_all(b"GET /mqtt HTTP/1.1\r\nUpg")
        .await
        .unwrap();
    drop(client);
    let e = accept(server, &WsLimits::default()).await.unwrap_err();
    assert!(matches!(e, WsError::Eof), "{e:?}");
    assert_eq!(e.http_status(), None);
}

#[tokio::test]
async fn frames_sent_right_behind_the_request_are_kept() {
    let (mut client, server) = duplex(4096);
    let mut bytes = upgrade_request(&good_headers()).into_bytes();
    bytes.extend(client_frame(true, OP_BINARY, b"\xC0\x00"));
    client.write_all(&bytes).await.unwrap();
    let mut ws = accept(server, &WsLimits::default()).await.unwrap();
    let mut pingreq = [0u8; 2];
    ws.read_exact(&mut pingreq).await.unwrap();
    assert_eq!(pingreq, [0xC0, 0x00]);
}

#[tokio::test]
async fn an_unmasked_frame_is_answered_with_close_1002() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    client
        .write_all(&client_frame_with(0x82, b"\xC0\x00", false))
        .await
        .unwrap();
    let e = ws.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(frame_error(&e), FrameError::Unmasked);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    expect_close(&mut client, 1002).await;
    // The read side stays failed, and nothing more may be written after the close.
    let again = ws.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(frame_error(&again), FrameError::Unmasked);
    let write = ws.write(b"late").await.unwrap_err();
    assert_eq!(write.kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn a_text_frame_is_refused_with_close_1003() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    client
        .write_all(&client_frame(true, OP_TEXT, b"{}"))
        .await
        .unwrap();
    let e = ws.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(frame_error(&e), FrameError::Text);
    expect_close(&mut client, 1003).await;
}

#[tokio::test]
async fn reserved_bits_and_opcodes_are_refused_with_close_1002() {
    for (first, expected) in [
        (0xA2, FrameError::ReservedBits),
        (0x83, FrameError::ReservedOpcode(3)),
        (0x8F, FrameError::ReservedOpcode(0xF)),
        (0x80, FrameError::UnexpectedContinuation),
        (0x09, FrameError::BadControl),
    ] {
        let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
        client
            .write_all(&client_frame_with(first, b"ab", true))
            .await
            .unwrap();
        let e = ws.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(frame_error(&e), expected);
        expect_close(&mut client, 1002).await;
    }
}

#[tokio::test]
async fn an_oversized_frame_is_refused_with_close_1009_before_its_payload_arrives() {
    let limits = WsLimits {
        max_frame: 1000,
        ..WsLimits::default()
    };
    let (mut ws, mut client) = connected(4096, limits).await;
    // Only the header: the refusal must not wait for 1001 payload bytes.
    let frame = client_frame(true, OP_BINARY, &[0u8; 1001]);
    client.write_all(&frame[..8]).await.unwrap();
    let e = ws.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(
        frame_error(&e),
        FrameError::TooLarge {
            len: 1001,
            max: 1000
        }
    );
    expect_close(&mut client, 1009).await;
}

#[tokio::test]
async fn a_frame_at_the_limit_is_accepted() {
    let limits = WsLimits {
        max_frame: 1000,
        ..WsLimits::default()
    };
    let (mut ws, mut client) = connected(4096, limits).await;
    client
        .write_all(&client_frame(true, OP_BINARY, &[7u8; 1000]))
        .await
        .unwrap();
    let mut payload = [0u8; 1000];
    ws.read_exact(&mut payload).await.unwrap();
    assert_eq!(payload, [7u8; 1000]);
}

#[tokio::test]
async fn pings_and_pongs_interleave_with_a_fragmented_message() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    let mut bytes = Vec::new();
    bytes.extend(client_frame(false, OP_BINARY, b"hel"));
    bytes.extend(client_frame(true, OP_PING, b"p1"));
    bytes.extend(client_frame(false, OP_CONTINUATION, b"lo "));
    bytes.extend(client_frame(true, OP_PONG, b"unsolicited"));
    bytes.extend(client_frame(false, OP_CONTINUATION, b""));
    bytes.extend(client_frame(true, OP_CONTINUATION, b"world"));
    bytes.extend(client_frame(true, OP_BINARY, b"!"));
    client.write_all(&bytes).await.unwrap();
    let mut text = [0u8; 12];
    ws.read_exact(&mut text).await.unwrap();
    assert_eq!(&text, b"hello world!");
    let pong = read_frame(&mut client).await.unwrap();
    assert_eq!(
        pong,
        Frame {
            fin: true,
            opcode: OP_PONG,
            payload: b"p1".to_vec()
        }
    );
}

#[tokio::test]
async fn a_server_that_only_reads_still_answers_a_ping_larger_than_the_pipe() {
    // The 127-byte pong cannot go out at once through 8 bytes of pipe; the server never
    // writes or flushes, it only waits for data, which the client sends after the pong.
    let (mut ws, client) = connected(8, WsLimits::default()).await;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let ping = [0x5A; 125];
    let server = async {
        let mut data = [0u8; 2];
        ws.read_exact(&mut data).await.unwrap();
        data
    };
    let client = async {
        client_write
            .write_all(&client_frame(true, OP_PING, &ping))
            .await
            .unwrap();
        let pong = read_frame(&mut client_read).await.unwrap();
        assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &ping[..]));
        client_write
            .write_all(&client_frame(true, OP_BINARY, b"\xC0\x00"))
            .await
            .unwrap();
    };
    let both = async { tokio::join!(server, client) };
    let (data, ()) = tokio::time::timeout(DEADLINE, both)
        .await
        .expect("the pong left while the server was only reading");
    assert_eq!(data, [0xC0, 0x00]);
}

#[tokio::test]
async fn a_new_binary_frame_inside_a_fragmented_message_is_refused() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    let mut bytes = client_frame(false, OP_BINARY, b"ab");
    bytes.extend(client_frame(true, OP_BINARY, b"cd"));
    client.write_all(&bytes).await.unwrap();
    let mut first = [0u8; 2];
    ws.read_exact(&mut first).await.unwrap();
    let e = ws.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(frame_error(&e), FrameError::UnfinishedMessage);
    expect_close(&mut client, 1002).await;
}

#[tokio::test]
async fn a_client_close_is_echoed_then_the_stream_ends() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    let mut bytes = client_frame(true, OP_BINARY, b"last");
    bytes.extend(client_frame(
        true,
        OP_CLOSE,
        &close_body(1001, "going away"),
    ));
    client.write_all(&bytes).await.unwrap();
    let mut data = Vec::new();
    ws.read_to_end(&mut data).await.unwrap();
    assert_eq!(data, b"last");
    expect_close(&mut client, 1001).await;
    assert_eq!(ws.read(&mut [0u8; 4]).await.unwrap(), 0, "EOF stays EOF");
    let write = ws.write(b"late").await.unwrap_err();
    assert_eq!(write.kind(), io::ErrorKind::BrokenPipe);
    // Shutdown sends no second close, only ends the transport.
    ws.shutdown().await.unwrap();
    assert_eq!(read_frame(&mut client).await, None);
}

#[tokio::test]
async fn a_close_with_a_reserved_code_is_a_protocol_error() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    client
        .write_all(&client_frame(true, OP_CLOSE, &close_body(1005, "")))
        .await
        .unwrap();
    let e = ws.read(&mut [0u8; 4]).await.unwrap_err();
    assert_eq!(frame_error(&e), FrameError::BadClose);
    expect_close(&mut client, 1002).await;
}

#[tokio::test]
async fn shutdown_sends_the_data_then_close_1000_then_ends_the_transport() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    ws.write_all(b"\xD0\x00").await.unwrap();
    ws.shutdown().await.unwrap();
    let data = read_frame(&mut client).await.unwrap();
    assert_eq!(
        data,
        Frame {
            fin: true,
            opcode: OP_BINARY,
            payload: vec![0xD0, 0x00]
        }
    );
    expect_close(&mut client, 1000).await;
    assert_eq!(read_frame(&mut client).await, None);
    // The client's close reply is read as the end of the stream.
    client
        .write_all(&client_frame(true, OP_CLOSE, &close_body(1000, "")))
        .await
        .unwrap();
    assert_eq!(ws.read(&mut [0u8; 4]).await.unwrap(), 0);
}

#[tokio::test]
async fn the_connection_ending_mid_frame_is_an_unexpected_eof() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    let frame = client_frame(true, OP_BINARY, b"abcdef");
    client.write_all(&frame[..frame.len() - 2]).await.unwrap();
    drop(client);
    let mut got = Vec::new();
    let e = ws.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(got, b"abcd");
}

#[tokio::test]
async fn the_connection_ending_between_frames_is_the_end_of_the_stream() {
    let (mut ws, mut client) = connected(4096, WsLimits::default()).await;
    client
        .write_all(&client_frame(true, OP_BINARY, b"abc"))
        .await
        .unwrap();
    drop(client);
    let mut got = Vec::new();
    ws.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abc");
}

/// Reads server frames until close or EOF and returns the binary payloads joined.
async fn collect_binary<R: AsyncRead + Unpin>(client: &mut R) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(frame) = read_frame(client).await {
        match frame.opcode {
            OP_BINARY => {
                assert!(frame.fin, "server frames are final");
                assert!(!frame.payload.is_empty(), "no empty data frames");
                data.extend(frame.payload);
            }
            OP_CLOSE => break,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    data
}

#[tokio::test]
async fn a_large_write_through_a_three_byte_pipe_arrives_unchanged() {
    let (mut ws, client) = connected(3, WsLimits::default()).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (mut client_read, _client_write) = tokio::io::split(client);
    let expected = data.clone();
    let (_, received) = tokio::join!(
        async {
            ws.write_all(&data).await.unwrap();
            ws.shutdown().await.unwrap();
        },
        collect_binary(&mut client_read)
    );
    assert!(received == expected, "{} bytes differ", received.len());
}

#[tokio::test]
async fn a_write_abandoned_while_pending_is_neither_lost_nor_repeated() {
    let (mut ws, client) = connected(16, WsLimits::default()).await;
    let first = vec![1u8; 100];
    // The pipe takes 16 bytes of the first frame: it is committed, so all of it counts as
    // written and the rest is kept.
    let written = poll_fn(|cx| Poll::Ready(Pin::new(&mut ws).poll_write(cx, &first))).await;
    assert!(matches!(written, Poll::Ready(Ok(100))), "{written:?}");
    // Now the pipe is full: a second write takes nothing, and is abandoned.
    let abandoned = poll_fn(|cx| Poll::Ready(Pin::new(&mut ws).poll_write(cx, &[2u8; 50]))).await;
    assert!(abandoned.is_pending());
    let (mut client_read, _client_write) = tokio::io::split(client);
    let (_, received) = tokio::join!(
        async {
            ws.write_all(&[3u8; 30]).await.unwrap();
            ws.shutdown().await.unwrap();
        },
        collect_binary(&mut client_read)
    );
    let mut expected = first;
    expected.extend([3u8; 30]);
    assert_eq!(received, expected);
}

/// A transport wrapper for the property test: caps each read and write at the next size
/// from its list, returns `Pending` (after waking itself) every `stall`-th call (0: never), and
/// claims vectored writes or not, so every path of `WsStream` meets every split.
struct Choppy {
    inner: DuplexStream,
    sizes: Vec<usize>,
    next: usize,
    stall: usize,
    calls: usize,
    vectored: bool,
}

impl Choppy {
    /// The next size cap, or `None` when this call stalls.
    fn turn(&mut self, cx: &mut Context<'_>) -> Option<usize> {
        self.calls += 1;
        if self.stall > 0 && self.calls.is_multiple_of(self.stall) {
            cx.waker().wake_by_ref();
            return None;
        }
        self.next = (self.next + 1) % self.sizes.len();
        Some(self.sizes[self.next])
    }
}

impl AsyncRead for Choppy {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(cap) = this.turn(cx) else {
            return Poll::Pending;
        };
        let cap = cap.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(cap));
        let ready = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        buf.advance(n);
        ready
    }
}

impl AsyncWrite for Choppy {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(cap) = this.turn(cx) else {
            return Poll::Pending;
        };
        Pin::new(&mut this.inner).poll_write(cx, &buf[..cap.min(buf.len())])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(cap) = this.turn(cx) else {
            return Poll::Pending;
        };
        // Gather at most `cap` bytes across the slices, as a kernel writev might take.
        let mut gathered = Vec::new();
        for slice in bufs {
            let room = cap - gathered.len();
            gathered.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        Pin::new(&mut this.inner).poll_write(cx, &gathered)
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How one property-test case cuts things up: `frame_sizes` for the client's frames,
/// `write_sizes` for writes, `read_sizes` for the server's read buffers, `io_sizes` for
/// what the server's transport takes per call (see [`Choppy`]), `pipe` bytes of buffer in
/// between.
#[derive(Debug, Clone)]
struct Splits {
    frame_sizes: Vec<usize>,
    write_sizes: Vec<usize>,
    read_sizes: Vec<usize>,
    io_sizes: Vec<usize>,
    pipe: usize,
    stall: usize,
    vectored: bool,
}

impl Splits {
    /// A connected server stream on a [`Choppy`] transport, and the client's pipe end.
    async fn connect(&self) -> (WsStream<Choppy>, DuplexStream) {
        let (mut client, server) = duplex(self.pipe);
        let choppy = Choppy {
            inner: server,
            sizes: self.io_sizes.clone(),
            next: 0,
            stall: self.stall,
            calls: 0,
            vectored: self.vectored,
        };
        let ws = handshake(choppy, &mut client, WsLimits::default()).await;
        (ws, client)
    }
}

/// Client → server: `data` cut into frames (fragmented messages, pings and an empty frame
/// between), written in pieces, read by the server in pieces, then the close handshake.
async fn upstream_round_trip(data: &[u8], splits: &Splits) {
    let (mut ws, client) = splits.connect().await;
    let (mut client_read, mut client_write) = tokio::io::split(client);

    // The data as a sequence of messages, each fragmented into frames.
    let mut wire = Vec::new();
    let mut rest = data;
    let mut sizes = splits.frame_sizes.iter().cycle();
    let mut in_message = false;
    let mut frames = 0usize;
    while !rest.is_empty() {
        // An empty frame every fifth: legal, and it must not read as the end of stream.
        let size = if frames % 5 == 4 {
            0
        } else {
            *sizes.next().unwrap()
        };
        let (payload, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        frames += 1;
        // Every third frame ends its message; a ping after every second.
        let fin = frames.is_multiple_of(3) || rest.is_empty();
        let opcode = if in_message {
            OP_CONTINUATION
        } else {
            OP_BINARY
        };
        wire.extend(client_frame(fin, opcode, payload));
        in_message = !fin;
        if frames.is_multiple_of(2) {
            wire.extend(client_frame(true, OP_PING, &frames.to_be_bytes()));
        }
    }
    wire.extend(client_frame(true, OP_CLOSE, &close_body(1000, "")));

    let upstream = async {
        // The client writes its frames in pieces of the write sizes.
        let mut sizes = splits.write_sizes.iter().cycle();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let take = (*sizes.next().unwrap()).min(rest.len());
            client_write.write_all(&rest[..take]).await.unwrap();
            rest = &rest[take..];
        }
    };
    let server = async {
        // The server reads with buffers of the read sizes until the close ends the stream.
        let mut received = Vec::new();
        let mut sizes = splits.read_sizes.iter().cycle();
        loop {
            let mut buf = vec![0u8; *sizes.next().unwrap()];
            let n = ws.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        // As a broker does at the end of a stream: this sends the close reply if the
        // pipe was too full to take it when the client's close was read.
        ws.shutdown().await.unwrap();
        received
    };
    let downstream = async {
        // Pongs (any number: one may answer several pings), then the close reply.
        loop {
            let frame = read_frame(&mut client_read).await.expect("a close reply");
            match frame.opcode {
                OP_PONG => {}
                OP_CLOSE => {
                    assert_eq!(frame.payload, close_body(1000, ""), "the code is echoed");
                    break;
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    };
    let (_, received, _) = tokio::join!(upstream, server, downstream);
    assert!(received == data, "client → server bytes differ");
}

/// Server → client: `data` written in pieces, then shutdown; the client joins the binary
/// payloads.
async fn downstream_round_trip(data: &[u8], splits: &Splits) {
    let (mut ws, mut client) = splits.connect().await;
    let writer = async {
        let mut sizes = splits.write_sizes.iter().cycle();
        let mut rest = data;
        while !rest.is_empty() {
            let take = (*sizes.next().unwrap()).min(rest.len());
            ws.write_all(&rest[..take]).await.unwrap();
            rest = &rest[take..];
        }
        ws.shutdown().await.unwrap();
    };
    let (_, received) = tokio::join!(writer, collect_binary(&mut client));
    assert!(received == data, "server → client bytes differ");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bytes_cross_unchanged_whatever_the_frame_read_and_write_sizes(
        data in proptest::collection::vec(any::<u8>(), 1..100_000),
        frame_sizes in proptest::collection::vec(1usize..80_000, 1..6),
        write_sizes in proptest::collection::vec(1usize..80_000, 1..6),
        read_sizes in proptest::collection::vec(1usize..20_000, 1..6),
        io_sizes in proptest::collection::vec(1usize..10_000, 1..6),
        pipe in 1usize..4096,
        stall in prop_oneof![Just(0usize), 2usize..6],
        vectored in any::<bool>(),
    ) {
        let splits = Splits {
            frame_sizes,
            write_sizes,
            read_sizes,
            io_sizes,
            pipe,
            stall,
            vectored,
        };
        block_on(upstream_round_trip(&data, &splits));
        block_on(downstream_round_trip(&data, &splits));
    }
}

/// Runs paho-mqtt over WebSocket against a one-connection server built from `accept` and
/// our codec: CONNECT/CONNACK, a small and a 200 KiB PUBLISH up, a 150 KiB PUBLISH down,
/// DISCONNECT.
async fn paho_over_websocket(version: &'static str, protocol: ProtocolVersion) {
    if !support::require_peer("paho-mqtt") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let down: Bytes = (0..150 * 1024u32).map(|i| (i % 241) as u8).collect();
    let down_for_server = down.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = accept(tcp, &WsLimits::default()).await.unwrap();
        assert_eq!(ws.path(), "/mqtt");
        let mut buf = BytesMut::new();
        // CONNECT names its own version; the argument only matters for later packets.
        let Packet::Connect(connect) = next_packet(&mut ws, &mut buf, ProtocolVersion::V5).await
        else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.protocol, protocol);
        send(
            &mut ws,
            protocol,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::SUCCESS,
                properties: ConnAckProperties::default(),
            }),
        )
        .await;
        let mut received = Vec::new();
        for _ in 0..2 {
            match next_packet(&mut ws, &mut buf, protocol).await {
                Packet::Publish(publish) => received.push(publish),
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        send(
            &mut ws,
            protocol,
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: TopicName::try_from("ws/down").unwrap(),
                packet_id: None,
                payload: down_for_server,
                properties: PublishProperties::default(),
            }),
        )
        .await;
        match next_packet(&mut ws, &mut buf, protocol).await {
            Packet::Disconnect(_) => {}
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        // paho has closed the socket by now: the close frame is best effort.
        let _ = ws.shutdown().await;
        received
    });

    let output = tokio::task::spawn_blocking(move || {
        support::run_python(PAHO_SCRIPT, &[&port.to_string(), version])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "paho failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let received = tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server finished")
        .unwrap();
    assert_eq!(received[0].topic.as_str(), "ws/small");
    assert_eq!(&received[0].payload[..], b"hello over websocket");
    assert_eq!(received[1].topic.as_str(), "ws/big");
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert!(received[1].payload == big, "the 200 KiB payload differs");
    assert_eq!(
        stdout.trim(),
        format!("ws/down {} {}", down.len(), checksum(&down))
    );
}

/// The same sum the Python script prints: cheap, order-sensitive, no hashing library.
fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .fold(0u64, |sum, &b| (sum * 31 + u64::from(b)) % 1_000_000_007)
}

const PAHO_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

port, version = int(sys.argv[1]), sys.argv[2]
protocol = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}[version]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-" + version,
                     protocol=protocol, transport="websockets")
client.ws_set_options(path="/mqtt")
connected, got = threading.Event(), threading.Event()
received = {}
client.on_connect = lambda c, u, flags, rc, props: connected.set()
def on_message(c, u, msg):
    received["msg"] = msg
    got.set()
client.on_message = on_message
client.connect("127.0.0.1", port, keepalive=30)
client.loop_start()
assert connected.wait(10), "no CONNACK"
client.publish("ws/small", b"hello over websocket", qos=0).wait_for_publish(10)
big = bytes(i % 251 for i in range(200 * 1024))
client.publish("ws/big", big, qos=0).wait_for_publish(10)
assert got.wait(10), "no PUBLISH from the server"
msg = received["msg"]
total = 0
for b in msg.payload:
    total = (total * 31 + b) % 1_000_000_007
print(msg.topic, len(msg.payload), total)
client.disconnect()
client.loop_stop()
"#;

async fn next_packet<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WsStream<S>,
    buf: &mut BytesMut,
    protocol: ProtocolVersion,
) -> Packet {
    loop {
        if let Some(packet) = decode(buf, 1 << 20, protocol).expect("decodes") {
            return packet;
        }
        let n = tokio::time::timeout(DEADLINE, ws.read_buf(buf))
            .await
            .expect("a packet in time")
            .unwrap();
        assert!(n > 0, "the client left mid-packet");
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WsStream<S>,
    protocol: ProtocolVersion,
    packet: Packet,
) {
    let mut out = BytesMut::new();
    encode(&packet, protocol, &mut out).unwrap();
    ws.write_all(&out).await.unwrap();
    ws.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_over_websocket_speaks_mqtt_3_1_1_through_accept() {
    paho_over_websocket("3.1.1", ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_over_websocket_speaks_mqtt_5_through_accept() {
    paho_over_websocket("5", ProtocolVersion::V5).await;
}

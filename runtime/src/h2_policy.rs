//! HTTP/2 frame policing that hyper and h2 do not offer: keepalive enforcement as grpc-go does
//! it, and a budget for control frames that cost the server work but carry no request.
//!
//! h2 already bounds rapid resets, CONTINUATION floods and oversized header lists (GOAWAY
//! `ENHANCE_YOUR_CALM`), but it answers every PING and SETTINGS frame however fast they come,
//! and has no minimum ping interval. This policy reads the frame headers as bytes pass through
//! the connection (9 bytes per frame; payloads are skipped, never copied) and, on a violation,
//! writes a GOAWAY `ENHANCE_YOUR_CALM` between two of the server's own frames and closes:
//!
//! - **Pings** (grpc-go's `keepalive.EnforcementPolicy`): a PING less than `min_ping_interval`
//!   after the previous one is a strike; the third strike ends the connection with debug data
//!   `too_many_pings`, which grpc-go clients recognise (they double their keepalive interval).
//!   Strikes reset whenever the server sends HEADERS or DATA, so pings that follow real
//!   traffic (grpc-go's BDP estimation) never count.
//! - **Control frames**: more than `max_control_frames` SETTINGS and PRIORITY frames within
//!   [`CONTROL_WINDOW`] end the connection with `too_many_control_frames`.
//!
//! Connections that do not start with the HTTP/2 preface (HTTP/1.1 gRPC-Web) are not policed.

use std::time::{Duration, Instant};

/// The window of the control-frame budget.
pub const CONTROL_WINDOW: Duration = Duration::from_secs(10);
/// Strikes tolerated before GOAWAY (grpc-go's `maxPingStrikes`).
const MAX_PING_STRIKES: u32 = 2;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
/// The HTTP/2 error code of abuse.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The policy's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicyLimits {
    pub(crate) min_ping_interval: Duration,
    pub(crate) max_control_frames: u32,
}

/// Why a connection is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    TooManyPings,
    TooManyControlFrames,
}

impl Violation {
    fn debug_data(self) -> &'static [u8] {
        match self {
            Violation::TooManyPings => b"too_many_pings",
            Violation::TooManyControlFrames => b"too_many_control_frames",
        }
    }
}

/// Incremental parser of one direction's frame headers.
#[derive(Debug, Default)]
struct FrameCursor {
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// The first 8 payload bytes of the current frame, kept for GOAWAY frames only (last
    /// stream id and error code).
    goaway: Option<([u8; 8], usize)>,
    /// The error code of the last complete GOAWAY payload seen.
    goaway_code: Option<u32>,
}

impl FrameCursor {
    /// Feeds bytes; calls `on_frame(type, flags, stream)` for each completed frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if let Some((prefix, have)) = self.goaway.as_mut() {
                    let take = (8 - *have).min(n);
                    prefix[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    if *have == 8 {
                        self.goaway_code =
                            Some(u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]));
                        self.goaway = None;
                    }
                }
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.header;
                self.skip = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.have = 0;
                self.goaway = (h[3] == GOAWAY && self.skip >= 8).then_some(([0; 8], 0));
                on_frame(h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff);
            }
        }
    }

    /// Whether the bytes fed so far end exactly at a frame boundary.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// The policy of one connection.
#[derive(Debug)]
pub(crate) struct FramePolicy {
    limits: PolicyLimits,
    /// Preface bytes matched so far; `None` once decided.
    preface: Option<usize>,
    /// Whether the connection is HTTP/2 (and so policed).
    http2: bool,
    incoming: FrameCursor,
    outgoing: FrameCursor,
    last_ping: Option<Instant>,
    strikes: u32,
    window_start: Instant,
    control_frames: u32,
    /// The highest client stream id in bytes already handed to h2.
    last_stream: u32,
}

impl FramePolicy {
    pub(crate) fn new(limits: PolicyLimits) -> Self {
        FramePolicy {
            limits,
            preface: Some(0),
            http2: false,
            incoming: FrameCursor::default(),
            outgoing: FrameCursor::default(),
            last_ping: None,
            strikes: 0,
            window_start: Instant::now(),
            control_frames: 0,
            last_stream: 0,
        }
    }

    /// Feeds bytes the client sent; returns a violation when one occurs.
    pub(crate) fn on_read(&mut self, mut bytes: &[u8]) -> Option<Violation> {
        if let Some(matched) = self.preface {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                self.preface = None; // not HTTP/2 with prior knowledge or ALPN h2: not policed
                return None;
            }
            bytes = &bytes[n..];
            if matched + n == PREFACE.len() {
                self.preface = None;
                self.http2 = true;
            } else {
                self.preface = Some(matched + n);
                return None;
            }
        }
        if !self.http2 {
            return None;
        }
        let mut violation = None;
        // The clock is read only when a policed frame arrives.
        let mut now = None;
        // A violating read is withheld from h2 (the connection sees end of stream), so the
        // GOAWAY's last stream id must not count streams it opens.
        let handed_over = self.last_stream;
        let mut cursor = std::mem::take(&mut self.incoming);
        cursor.feed(bytes, |kind, flags, stream| {
            let violated = self.on_frame(kind, flags, stream, &mut now);
            violation = violation.or(violated);
        });
        self.incoming = cursor;
        if violation.is_some() {
            self.last_stream = handed_over;
        }
        violation
    }

    fn on_frame(&mut self, kind: u8, flags: u8, stream: u32, now: &mut Option<Instant>) -> Option<Violation> {
        match kind {
            HEADERS => {
                self.last_stream = self.last_stream.max(stream);
                None
            }
            PING if flags & ACK == 0 => {
                let now = *now.get_or_insert_with(Instant::now);
                let early = self
                    .last_ping
                    .is_some_and(|last| now.duration_since(last) < self.limits.min_ping_interval);
                self.last_ping = Some(now);
                if early {
                    self.strikes += 1;
                }
                (self.strikes > MAX_PING_STRIKES).then_some(Violation::TooManyPings)
            }
            PRIORITY | SETTINGS if kind == PRIORITY || flags & ACK == 0 => {
                let now = *now.get_or_insert_with(Instant::now);
                if now.duration_since(self.window_start) >= CONTROL_WINDOW {
                    self.window_start = now;
                    self.control_frames = 0;
                }
                self.control_frames += 1;
                (self.control_frames > self.limits.max_control_frames)
                    .then_some(Violation::TooManyControlFrames)
            }
            _ => None,
        }
    }

    /// Feeds bytes the server wrote. Returns true when they complete a GOAWAY
    /// `ENHANCE_YOUR_CALM`: h2 itself caught the peer abusing the connection (rapid resets,
    /// CONTINUATION floods, oversized headers).
    pub(crate) fn on_write(&mut self, bytes: &[u8]) -> bool {
        if !self.http2 {
            return false;
        }
        let mut reset = false;
        self.outgoing.feed(bytes, |kind, _, _| reset |= kind == HEADERS || kind == DATA);
        if reset {
            self.strikes = 0;
        }
        self.outgoing.goaway_code.take() == Some(ENHANCE_YOUR_CALM)
    }

    /// Whether the server's output is between two frames (where a GOAWAY may go).
    pub(crate) fn at_write_boundary(&self) -> bool {
        self.outgoing.at_boundary()
    }

    /// The GOAWAY frame ending the connection for `violation`.
    pub(crate) fn goaway(&self, violation: Violation) -> Vec<u8> {
        let debug = violation.debug_data();
        let len = 8 + debug.len();
        let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x7, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&self.last_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(debug);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn policy() -> FramePolicy {
        let mut p = FramePolicy::new(PolicyLimits {
            min_ping_interval: Duration::from_secs(60),
            max_control_frames: 5,
        });
        assert_eq!(p.on_read(&PREFACE[..10]), None);
        assert_eq!(p.on_read(&PREFACE[10..]), None);
        p
    }

    #[test]
    fn the_third_early_ping_is_a_violation_unless_the_server_sent_data_between() {
        let mut p = policy();
        let ping = frame(PING, 0, 0, &[0; 8]);
        assert_eq!(p.on_read(&ping), None, "the first ping is never early");
        assert_eq!(p.on_read(&ping), None, "strike 1");
        // Data from the server resets the strikes (grpc-go's BDP pings follow data).
        p.on_write(&frame(DATA, 0, 1, b"hello"));
        assert_eq!(p.on_read(&ping), None, "strike 1 again");
        assert_eq!(p.on_read(&ping), None, "strike 2");
        // A PING ACK is an answer, not a ping; split across reads it still parses.
        let ack = frame(PING, ACK, 0, &[0; 8]);
        assert_eq!(p.on_read(&ack[..4]), None);
        assert_eq!(p.on_read(&ack[4..]), None);
        assert_eq!(p.on_read(&ping), Some(Violation::TooManyPings));
        let goaway = p.goaway(Violation::TooManyPings);
        assert_eq!(goaway[3], 0x7);
        assert!(goaway.ends_with(b"too_many_pings"));
    }

    #[test]
    fn control_frames_over_the_budget_are_a_violation_and_http1_is_not_policed() {
        let mut p = policy();
        let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
        let settings_ack = frame(SETTINGS, ACK, 0, &[]);
        for _ in 0..5 {
            assert_eq!(p.on_read(&settings), None);
            assert_eq!(p.on_read(&settings_ack), None, "acks are answers");
        }
        assert_eq!(p.on_read(&settings), Some(Violation::TooManyControlFrames));

        let mut h1 = FramePolicy::new(PolicyLimits {
            min_ping_interval: Duration::from_secs(60),
            max_control_frames: 0,
        });
        assert_eq!(h1.on_read(b"POST /a.B/C HTTP/1.1\r\n"), None);
        for _ in 0..100 {
            assert_eq!(h1.on_read(&settings), None);
        }
    }

    #[test]
    fn the_write_boundary_follows_the_servers_frames_and_its_calm_down_goaway_is_seen() {
        let mut p = policy();
        let data = frame(DATA, 0, 1, b"0123456789");
        assert!(!p.on_write(&data[..12]));
        assert!(!p.at_write_boundary());
        assert!(!p.on_write(&data[12..]));
        assert!(p.at_write_boundary());
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        let goaway = frame(GOAWAY, 0, 0, &payload);
        assert!(!p.on_write(&goaway[..13]));
        assert!(p.on_write(&goaway[13..]));
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        assert!(!p.on_write(&frame(GOAWAY, 0, 0, &payload)), "a graceful GOAWAY is not an offence");
    }
}

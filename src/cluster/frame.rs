//! Frames between nodes. A message (a bincode-encoded request or response) travels as one or more chunks:
//!
//! ```text
//!  chunk = [head: u32 BE][data: n ≤ 64 KiB][mac: first 16 bytes of HMAC-SHA256(key, prev ‖ head ‖ data)]
//!  head  = FINAL (bit 31) | TAG 0x53 (bits 24-30) | n (bits 0-23)
//!  prev  = the previous chunk's mac in the same message; 16 zero bytes for a message's first chunk
//! ```
//!
//! Why chunks: a reader must never hold more than a small bound of bytes whose MAC it has not checked. With one
//! length-prefixed frame and the MAC at its end, a stranger announcing 256 MiB made the node buffer it before
//! finding out the sender had no key. Here at most [`CHUNK_MAX`] unauthenticated bytes are buffered per
//! connection; a message grows only by chunks that passed their MAC, up to [`MAX_MESSAGE`] (a snapshot of a very
//! large table fits: 100,000 dialogs are a few tens of MB). The chained MAC keeps chunks from being reordered,
//! dropped or spliced between messages. The tag makes a peer still speaking the old single-frame format fail at
//! its first header (counted as `header`), not after buffering what it announced.
//!
//! A bad header, an over-long chunk or a bad MAC closes the connection (after them the stream cannot be trusted
//! to be in step, and a stranger gets nothing but a closed socket); a message that passes its MAC but does not
//! decode (a peer of another version) is dropped and the connection goes on. Each is counted in
//! `sipfront_cluster_bad_frames_total{reason}` and warned about at most once per [`WARN_EVERY`].
//!
//! Replaying a captured message gains an attacker nothing Raft does not already tolerate (duplicated or stale
//! messages carry old terms and are refused); the MAC keeps anyone without the secret from speaking at all.

use std::io;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::limits::WarnEvery;
use crate::metrics as m;

/// Bytes of MAC per chunk.
pub const MAC_LEN: usize = 16;
/// The most data bytes in one chunk: the most a connection makes us buffer before a MAC is checked.
pub const CHUNK_MAX: usize = 64 * 1024;
/// The largest message, counted in authenticated bytes only.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// At most one WARN line about dropped frames per this long; the rest are counted in the next one.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Chunks per write: a large message goes out in writes of 1 MiB.
const WRITE_BATCH: usize = 16;

const FINAL: u32 = 1 << 31;
const TAG: u32 = 0x53 << 24;
const TAG_MASK: u32 = 0x7f << 24;
const LEN_MASK: u32 = 0x00ff_ffff;

static BAD_FRAME_WARN: WarnEvery = WarnEvery::new(WARN_EVERY);

/// The frame key, derived from the cluster secret.
#[derive(Clone)]
pub struct FrameKey([u8; 32]);

impl FrameKey {
    pub fn from_secret(secret: &[u8]) -> FrameKey {
        let mut h = Sha256::new();
        h.update(b"sipfront cluster frames\0");
        h.update(secret);
        FrameKey(h.finalize().into())
    }

    fn mac(&self, prev: &[u8; MAC_LEN], head: &[u8; 4], data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(prev);
        mac.update(head);
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Encode one message: every chunk's wire bytes, concatenated.
    pub fn seal<T: Serialize>(&self, msg: &T) -> io::Result<Vec<u8>> {
        let body = bincode::serialize(msg).map_err(io::Error::other)?;
        let mut sealer = Sealer::new(self, &body)?;
        let mut all = Vec::with_capacity(body.len() + (body.len() / CHUNK_MAX + 1) * (4 + MAC_LEN));
        while sealer.next_into(&mut all) {}
        Ok(all)
    }
}

/// Cuts one encoded message into sealed chunks, one at a time (a large message is never copied whole).
struct Sealer<'a> {
    key: &'a FrameKey,
    rest: &'a [u8],
    prev: [u8; MAC_LEN],
    done: bool,
}

impl<'a> Sealer<'a> {
    fn new(key: &'a FrameKey, body: &'a [u8]) -> io::Result<Sealer<'a>> {
        if body.len() > MAX_MESSAGE {
            return Err(io::Error::other(format!("message of {} bytes is over the limit", body.len())));
        }
        Ok(Sealer { key, rest: body, prev: [0u8; MAC_LEN], done: false })
    }

    /// Append the next chunk's wire bytes to `out`; false once the final chunk was given.
    fn next_into(&mut self, out: &mut Vec<u8>) -> bool {
        if self.done {
            return false;
        }
        let (data, rest) = self.rest.split_at(self.rest.len().min(CHUNK_MAX));
        self.rest = rest;
        self.done = rest.is_empty();
        let head = (TAG | if self.done { FINAL } else { 0 } | data.len() as u32).to_be_bytes();
        self.prev = self.key.mac(&self.prev, &head, data);
        out.extend_from_slice(&head);
        out.extend_from_slice(data);
        out.extend_from_slice(&self.prev);
        true
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// Not a chunk header of this format (garbage, or a peer speaking the old format).
    Header,
    /// A chunk over [`CHUNK_MAX`], or a message over [`MAX_MESSAGE`].
    Length,
    Mac,
    Decode,
}

impl BadFrame {
    pub fn as_str(self) -> &'static str {
        match self {
            BadFrame::Header => "header",
            BadFrame::Length => "length",
            BadFrame::Mac => "mac",
            BadFrame::Decode => "decode",
        }
    }
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad peer frame ({})", .0.as_str())]
    Bad(BadFrame),
    #[error("nothing valid arrived in time")]
    Timeout,
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Io(e) => e,
            FrameError::Bad(_) => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            FrameError::Timeout => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
        }
    }
}

/// How long a reader waits for chunks. A server gives a new connection until `first` to deliver one
/// authenticated chunk (what a stranger may hold a connection open for), then `idle` per chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Patience {
    /// The first authenticated chunk must be complete by then.
    pub first: Option<Instant>,
    /// After it, each chunk (the wait for the next message included) must complete within this.
    pub idle: Option<Duration>,
    /// A chunk passed its MAC on this stream.
    authenticated: bool,
}

impl Patience {
    /// No deadlines (the caller bounds the whole exchange).
    pub fn unbounded() -> Patience {
        Patience::default()
    }

    pub fn server(handshake: Duration, idle: Duration) -> Patience {
        Patience { first: Some(Instant::now() + handshake), idle: Some(idle), authenticated: false }
    }

    /// Whether a chunk passed its MAC on this stream.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    fn deadline(&self) -> Option<Instant> {
        if self.authenticated {
            self.idle.map(|d| Instant::now() + d)
        } else {
            self.first
        }
    }
}

fn bad(why: BadFrame, bytes: usize) -> FrameError {
    metrics::counter!(m::CLUSTER_BAD_FRAMES, "reason" => why.as_str()).increment(1);
    if let Some(suppressed) = BAD_FRAME_WARN.check() {
        tracing::warn!(reason = why.as_str(), bytes, suppressed, "peer frame dropped (at most one line per 10 s)");
    }
    FrameError::Bad(why)
}

/// Read one chunk into `buf` (replacing its content) and check it. `Ok(None)`: end of stream before a header.
async fn read_chunk<R>(
    r: &mut R,
    key: &FrameKey,
    prev: &[u8; MAC_LEN],
    buf: &mut Vec<u8>,
) -> Result<Option<([u8; MAC_LEN], bool)>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let h = u32::from_be_bytes(head);
    if h & TAG_MASK != TAG {
        return Err(bad(BadFrame::Header, 4));
    }
    let n = (h & LEN_MASK) as usize;
    if n > CHUNK_MAX {
        return Err(bad(BadFrame::Length, n));
    }
    buf.clear();
    buf.resize(n + MAC_LEN, 0);
    r.read_exact(buf).await?;
    let want = key.mac(prev, &head, &buf[..n]);
    // Constant time: the MAC check must not leak how many bytes matched.
    if want.iter().zip(&buf[n..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(bad(BadFrame::Mac, n));
    }
    buf.truncate(n);
    Ok(Some((want, h & FINAL != 0)))
}

/// Read messages until one passes its MACs and decodes; messages that do not decode are counted and skipped.
/// `Ok(None)` at a clean end of stream (between messages). Every chunk is read within `patience`.
pub async fn read_frame<T, R>(r: &mut R, key: &FrameKey, patience: &mut Patience) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    let mut chunk = Vec::new();
    loop {
        let mut body: Vec<u8> = Vec::new();
        let mut prev = [0u8; MAC_LEN];
        let mut first = true;
        loop {
            let read = read_chunk(r, key, &prev, &mut chunk);
            let got = match patience.deadline() {
                Some(at) => tokio::time::timeout_at(at, read).await.map_err(|_| FrameError::Timeout)?,
                None => read.await,
            }?;
            let Some((mac, last)) = got else {
                if first {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            };
            patience.authenticated = true;
            (prev, first) = (mac, false);
            if body.len() + chunk.len() > MAX_MESSAGE {
                return Err(bad(BadFrame::Length, body.len() + chunk.len()));
            }
            if last && body.is_empty() {
                // One chunk, the common case: decode it where it is.
                std::mem::swap(&mut body, &mut chunk);
                break;
            }
            body.extend_from_slice(&chunk);
            if last {
                break;
            }
        }
        match bincode::deserialize(&body) {
            Ok(msg) => return Ok(Some(msg)),
            Err(_) => {
                let _ = bad(BadFrame::Decode, body.len());
            }
        }
    }
}

/// Write one message, chunk by chunk, in writes of at most [`WRITE_BATCH`] chunks.
pub async fn write_frame<T, W>(w: &mut W, key: &FrameKey, msg: &T) -> io::Result<()>
where
    T: Serialize,
    W: tokio::io::AsyncWrite + Unpin,
{
    let body = bincode::serialize(msg).map_err(io::Error::other)?;
    let mut sealer = Sealer::new(key, &body)?;
    let mut wire = Vec::with_capacity(body.len().min(WRITE_BATCH * CHUNK_MAX) + WRITE_BATCH * (4 + MAC_LEN));
    while !sealer.done {
        wire.clear();
        for _ in 0..WRITE_BATCH {
            if !sealer.next_into(&mut wire) {
                break;
            }
        }
        w.write_all(&wire).await?;
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    type Msg = (String, u32);

    fn key() -> FrameKey {
        FrameKey::from_secret(b"0123456789abcdef")
    }

    async fn read_one(wire: &[u8]) -> Result<Option<Msg>, FrameError> {
        let mut r = wire;
        read_frame(&mut r, &key(), &mut Patience::unbounded()).await
    }

    #[tokio::test]
    async fn a_message_round_trips_and_a_forged_one_closes_the_stream() {
        let mut wire = key().seal(&("good".to_string(), 3u32)).unwrap();
        wire.extend(key().seal(&("next".to_string(), 4u32)).unwrap());
        let mut r = &wire[..];
        let mut p = Patience::unbounded();
        assert_eq!(read_frame::<Msg, _>(&mut r, &key(), &mut p).await.unwrap(), Some(("good".into(), 3)));
        assert_eq!(read_frame::<Msg, _>(&mut r, &key(), &mut p).await.unwrap(), Some(("next".into(), 4)));
        assert_eq!(read_frame::<Msg, _>(&mut r, &key(), &mut p).await.unwrap(), None, "clean end");

        let other = FrameKey::from_secret(b"not the same secret");
        let forged = other.seal(&("forged".to_string(), 1u32)).unwrap();
        assert!(matches!(read_one(&forged).await, Err(FrameError::Bad(BadFrame::Mac))));
        let mut tampered = key().seal(&("tampered".to_string(), 2u32)).unwrap();
        tampered[6] ^= 1;
        assert!(matches!(read_one(&tampered).await, Err(FrameError::Bad(BadFrame::Mac))));
        assert!(matches!(read_one(&tampered[..9]).await, Err(FrameError::Io(_))), "cut mid-chunk");
    }

    #[tokio::test]
    async fn huge_announced_lengths_are_refused_at_the_header() {
        // The old format's header for a 256 MiB frame, and this format's largest length field.
        for head in [0x1000_0000u32, TAG | FINAL | LEN_MASK, u32::MAX, 0] {
            let r = read_one(&head.to_be_bytes()).await;
            assert!(matches!(r, Err(FrameError::Bad(BadFrame::Header | BadFrame::Length))), "{head:#x}: {r:?}");
        }
    }

    /// A reader that counts what it hands out and never ends: what a stranger streaming garbage costs us.
    struct Endless {
        given: usize,
    }

    impl tokio::io::AsyncRead for Endless {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = buf.remaining().min(4096);
            let first = self.given == 0;
            let fill: Vec<u8> = (0..n).map(|i| if first && i < 4 { [0xd3, 0x01, 0x00, 0x00][i] } else { 7 }).collect();
            buf.put_slice(&fill);
            self.given += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn at_most_one_chunk_is_read_before_its_mac_is_checked() {
        // A valid header announcing the largest chunk, then endless bytes with no valid MAC.
        let mut r = Endless { given: 0 };
        let e = read_frame::<Msg, _>(&mut r, &key(), &mut Patience::unbounded()).await.unwrap_err();
        assert!(matches!(e, FrameError::Bad(BadFrame::Mac)), "{e:?}");
        assert!(r.given <= 4 + CHUNK_MAX + MAC_LEN + 4096, "read {} bytes before refusing", r.given);
    }

    #[tokio::test]
    async fn a_large_message_goes_in_chained_chunks() {
        let big = ("x".repeat(3 * CHUNK_MAX + 5), 9u32);
        let wire = key().seal(&big).unwrap();
        assert_eq!(wire.len(), 4 * (4 + MAC_LEN) + 8 + big.0.len() + 4, "four chunks");
        assert_eq!(read_one(&wire).await.unwrap(), Some(big.clone()));
        // Through a socket-like pipe smaller than the message, written as the reader reads.
        let (mut a, mut b) = tokio::io::duplex(8192);
        let k = key();
        let sent = big.clone();
        let writer = tokio::spawn(async move { write_frame(&mut a, &k, &sent).await });
        let got: Option<Msg> = read_frame(&mut b, &key(), &mut Patience::unbounded()).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got, Some(big));
        // Chunks swapped: the chain breaks at the first one out of place.
        let one = 4 + CHUNK_MAX + MAC_LEN;
        let mut swapped = wire.clone();
        swapped[one..2 * one].copy_from_slice(&wire[2 * one..3 * one]);
        swapped[2 * one..3 * one].copy_from_slice(&wire[one..2 * one]);
        assert!(matches!(read_one(&swapped).await, Err(FrameError::Bad(BadFrame::Mac))));
    }

    #[tokio::test]
    async fn an_authenticated_message_that_does_not_decode_is_skipped() {
        let mut wire = key().seal(&7u8).unwrap();
        wire.extend(key().seal(&("after".to_string(), 1u32)).unwrap());
        assert_eq!(read_one(&wire).await.unwrap(), Some(("after".into(), 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stranger_times_out_and_an_authenticated_peer_gets_the_idle_time() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let t0 = Instant::now();
        let mut p = Patience::server(Duration::from_secs(3), Duration::from_secs(60));
        let r = read_frame::<Msg, _>(&mut b, &key(), &mut p).await;
        assert!(matches!(r, Err(FrameError::Timeout)) && !p.authenticated(), "{r:?}");
        assert_eq!(t0.elapsed(), Duration::from_secs(3));

        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut p = Patience::server(Duration::from_secs(3), Duration::from_secs(60));
        write_frame(&mut a, &key(), &("hi".to_string(), 1u32)).await.unwrap();
        assert!(read_frame::<Msg, _>(&mut b, &key(), &mut p).await.unwrap().is_some());
        let t1 = Instant::now();
        let r = read_frame::<Msg, _>(&mut b, &key(), &mut p).await;
        assert!(matches!(r, Err(FrameError::Timeout)) && p.authenticated(), "{r:?}");
        assert_eq!(t1.elapsed(), Duration::from_secs(60), "past the handshake, the idle bound applies");
    }
}

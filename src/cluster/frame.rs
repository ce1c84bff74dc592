//! Frames between nodes: `[length: u32 BE][body][HMAC-SHA256(key, length ‖ body), first 16 bytes]`, the body a
//! bincode-encoded request or response. One persistent TCP connection carries one request at a time, answered
//! in order. A frame whose MAC fails is dropped and counted, and the connection goes on; a length over
//! [`MAX_FRAME`] closes it (the stream cannot be trusted to be in step).
//!
//! Replaying a captured frame gains an attacker nothing Raft does not already tolerate (duplicated or stale
//! messages carry old terms and are refused); the MAC keeps anyone without the secret from speaking at all.

use std::io;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics as m;

/// Bytes of MAC per frame.
pub const MAC_LEN: usize = 16;
/// The largest frame body (a snapshot of a very large table fits).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

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

    fn mac(&self, len: &[u8; 4], body: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(len);
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Encode one frame.
    pub fn seal<T: Serialize>(&self, msg: &T) -> io::Result<Vec<u8>> {
        let body = bincode::serialize(msg).map_err(io::Error::other)?;
        if body.len() > MAX_FRAME {
            return Err(io::Error::other(format!("frame of {} bytes is over the limit", body.len())));
        }
        let len = (body.len() as u32).to_be_bytes();
        let mac = self.mac(&len, &body);
        let mut out = Vec::with_capacity(4 + body.len() + MAC_LEN);
        out.extend_from_slice(&len);
        out.extend_from_slice(&body);
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Check and decode one frame's body and MAC.
    pub fn open<T: DeserializeOwned>(&self, len: [u8; 4], body: &[u8], mac: &[u8]) -> Result<T, BadFrame> {
        let want = self.mac(&len, body);
        // Constant time: the MAC check must not leak how many bytes matched.
        if want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 || mac.len() != MAC_LEN {
            return Err(BadFrame::Mac);
        }
        bincode::deserialize(body).map_err(|_| BadFrame::Decode)
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    Mac,
    Decode,
}

impl BadFrame {
    pub fn as_str(self) -> &'static str {
        match self {
            BadFrame::Mac => "mac",
            BadFrame::Decode => "decode",
        }
    }
}

/// Read frames until one passes its MAC and decodes; frames that fail are counted and skipped. `Ok(None)` at a
/// clean end of stream.
pub async fn read_frame<T, R>(r: &mut R, key: &FrameKey) -> io::Result<Option<T>>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            metrics::counter!(m::CLUSTER_BAD_FRAMES, "reason" => "length").increment(1);
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("peer frame of {n} bytes")));
        }
        let mut buf = vec![0u8; n + MAC_LEN];
        r.read_exact(&mut buf).await?;
        match key.open(len, &buf[..n], &buf[n..]) {
            Ok(msg) => return Ok(Some(msg)),
            Err(why) => {
                metrics::counter!(m::CLUSTER_BAD_FRAMES, "reason" => why.as_str()).increment(1);
                tracing::warn!(reason = why.as_str(), bytes = n, "peer frame dropped");
            }
        }
    }
}

/// Write one frame.
pub async fn write_frame<T, W>(w: &mut W, key: &FrameKey, msg: &T) -> io::Result<()>
where
    T: Serialize,
    W: tokio::io::AsyncWrite + Unpin,
{
    let buf = key.seal(msg)?;
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips_and_a_forged_one_is_skipped() {
        let key = FrameKey::from_secret(b"0123456789abcdef");
        let other = FrameKey::from_secret(b"not the same secret");
        let mut wire = Vec::new();
        wire.extend(other.seal(&("forged".to_string(), 1u32)).unwrap());
        let mut tampered = key.seal(&("tampered".to_string(), 2u32)).unwrap();
        let last = tampered.len() - MAC_LEN - 1;
        tampered[last] ^= 1;
        wire.extend(tampered);
        wire.extend(key.seal(&("good".to_string(), 3u32)).unwrap());
        let mut r = &wire[..];
        let got: Option<(String, u32)> = read_frame(&mut r, &key).await.unwrap();
        assert_eq!(got, Some(("good".to_string(), 3)), "both bad frames are skipped, the good one read");
        let end: Option<(String, u32)> = read_frame(&mut r, &key).await.unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn an_oversized_length_closes_the_stream() {
        let key = FrameKey::from_secret(b"0123456789abcdef");
        let wire = (u32::MAX).to_be_bytes();
        let mut r = &wire[..];
        assert!(read_frame::<u32, _>(&mut r, &key).await.is_err());
    }
}

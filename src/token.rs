//! Tamper-evident tokens sipfront hands out and gets back: the dialog token in our Record-Route (`;d=`), which
//! names the dialog and its home backend so an in-dialog request can be routed even when the dialog table misses,
//! and the flow token in our Path (RFC 3327) user part, which names a registered phone's flow (RFC 5626 style).
//!
//! Each is a small binary payload plus the first 8 bytes of its HMAC-SHA256 under the node's key, in hex. A token
//! that fails the MAC is forged or from another key; callers refuse it and count it.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::dialog::Leg;
use crate::transport::{ConnId, Target, Transport};

const MAC_LEN: usize = 8;
const KIND_DIALOG: u8 = b'd';
const KIND_FLOW: u8 = b'f';
const DIALOG_TOKEN_LEN: usize = 19;
const LEG_FROM_PHONE: u8 = 1;
const LEG_FROM_PBX: u8 = 2;

/// What a dialog token in our Record-Route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialogToken {
    /// The backend the dialog went to (or came from), `u8::MAX` for none.
    pub backend: u8,
    /// The client's connection, when the entry faces a connection-oriented client.
    pub conn: Option<ConnId>,
    /// Which pass through this proxy the entry was added on (`None`: a token from before legs).
    pub leg: Option<Leg>,
}

/// The key that authenticates tokens.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key derived from secret material (a file's bytes).
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey(Sha256::digest(secret).into())
    }

    /// A fresh random key (tokens then do not survive a restart).
    pub fn random() -> TokenKey {
        use std::io::Read;
        let mut k = [0u8; 32];
        let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k));
        if from_os.is_err() {
            // No /dev/urandom: fall back to the std hasher's OS-seeded keys.
            use std::hash::{BuildHasher, Hasher};
            for chunk in k.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u8(0);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        TokenKey(k)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(payload);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A 64-bit value only holders of this key can compute from `parts`: every node of a cluster derives the
    /// same branch for the same client transaction with it.
    pub fn digest64(&self, parts: &[&[u8]]) -> u64 {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(b"branch");
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        u64::from_be_bytes(full[..8].try_into().expect("8 bytes"))
    }

    fn seal(&self, payload: &[u8]) -> String {
        let mut s = String::with_capacity((payload.len() + MAC_LEN) * 2);
        for b in payload.iter().chain(self.mac(payload).iter()) {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Decode and check a token; the payload when the MAC holds.
    fn open(&self, token: &[u8]) -> Option<Vec<u8>> {
        if token.len() % 2 != 0 || token.len() < 2 * (MAC_LEN + 1) || token.len() > 128 {
            return None;
        }
        let bytes: Vec<u8> = token.chunks(2).map(|p| Some(unhex(p[0])? << 4 | unhex(p[1])?)).collect::<Option<_>>()?;
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        // Constant-time compare: the MAC is a secret-derived value.
        let good = self.mac(payload).iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        good.then(|| payload.to_vec())
    }

    /// The token for our Record-Route: the dialog (by Call-ID and the caller's tag), its backend, the leg this
    /// pass through the proxy is, and the client's connection when the entry names one (`;ft=`), so that too
    /// cannot be rewritten.
    pub fn dialog_token(
        &self,
        call_id: &[u8],
        caller_tag: &[u8],
        backend: u8,
        leg: Leg,
        conn: Option<ConnId>,
    ) -> String {
        let mut p = [0u8; DIALOG_TOKEN_LEN];
        p[0] = KIND_DIALOG;
        p[1] = backend;
        p[2..10].copy_from_slice(&dialog_hash(call_id, caller_tag).to_be_bytes());
        p[10..18].copy_from_slice(&conn.unwrap_or(0).to_be_bytes());
        p[18] = match leg {
            Leg::FromPhone => LEG_FROM_PHONE,
            Leg::FromPbx => LEG_FROM_PBX,
        };
        self.seal(&p)
    }

    /// Check a dialog token against a request: what it names when it is ours and names this request's dialog
    /// (either tag may be the caller's: requests come from both ends). A token from before legs existed (18
    /// bytes) names no leg.
    pub fn check_dialog_token(&self, token: &[u8], call_id: &[u8], tags: [Option<&[u8]>; 2]) -> Option<DialogToken> {
        let p = self.open(token)?;
        if !(p.len() == DIALOG_TOKEN_LEN || p.len() == DIALOG_TOKEN_LEN - 1) || p[0] != KIND_DIALOG {
            return None;
        }
        let h = u64::from_be_bytes(p[2..10].try_into().ok()?);
        let conn = u64::from_be_bytes(p[10..18].try_into().ok()?);
        let leg = match p.get(18) {
            None => None,
            Some(&LEG_FROM_PHONE) => Some(Leg::FromPhone),
            Some(&LEG_FROM_PBX) => Some(Leg::FromPbx),
            Some(_) => return None,
        };
        tags.iter().flatten().any(|t| dialog_hash(call_id, t) == h).then_some(DialogToken {
            backend: p[1],
            conn: (conn != 0).then_some(conn),
            leg,
        })
    }

    /// The token for our Path: a phone's flow.
    pub fn flow_token(&self, flow: &Target) -> String {
        let mut p = Vec::with_capacity(32);
        p.push(KIND_FLOW);
        p.push(match flow.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
            Transport::Ws => 3,
            Transport::Wss => 4,
        });
        match flow.addr.ip() {
            IpAddr::V4(ip) => p.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => p.extend_from_slice(&ip.octets()),
        }
        p.extend_from_slice(&flow.addr.port().to_be_bytes());
        p.extend_from_slice(&flow.conn.unwrap_or(0).to_be_bytes());
        self.seal(&p)
    }

    /// Decode a flow token into the flow it names.
    pub fn check_flow_token(&self, token: &[u8]) -> Option<Target> {
        let p = self.open(token)?;
        if p.first() != Some(&KIND_FLOW) || p.len() < 2 {
            return None;
        }
        let transport = match p[1] {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            2 => Transport::Tls,
            3 => Transport::Ws,
            4 => Transport::Wss,
            _ => return None,
        };
        let rest = &p[2..];
        let (ip, rest): (IpAddr, &[u8]) = match rest.len() {
            14 => (IpAddr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?), &rest[4..]),
            26 => (IpAddr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?), &rest[16..]),
            _ => return None,
        };
        let port = u16::from_be_bytes([rest[0], rest[1]]);
        let conn: ConnId = u64::from_be_bytes(rest[2..10].try_into().ok()?);
        Some(Target { transport, addr: SocketAddr::new(ip, port), conn: (conn != 0).then_some(conn) })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A stable 64-bit hash of a dialog's Call-ID and caller tag (FNV-1a: stable across processes and versions).
fn dialog_hash(call_id: &[u8], tag: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.iter().chain([0u8].iter()).chain(tag) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_tokens_check_both_directions_and_refuse_tampering() {
        let k = TokenKey::from_secret(b"test secret");
        let t = k.dialog_token(b"call-1", b"caller", 3, Leg::FromPbx, Some(9));
        let want = Some(DialogToken { backend: 3, conn: Some(9), leg: Some(Leg::FromPbx) });
        assert_eq!(k.check_dialog_token(t.as_bytes(), b"call-1", [Some(b"caller"), Some(b"callee")]), want);
        assert_eq!(k.check_dialog_token(t.as_bytes(), b"call-1", [Some(b"callee"), Some(b"caller")]), want);
        assert_eq!(k.check_dialog_token(t.as_bytes(), b"call-2", [Some(b"caller"), None]), None, "other call");
        let mut forged = t.clone().into_bytes();
        forged[3] = if forged[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(k.check_dialog_token(&forged, b"call-1", [Some(b"caller"), None]), None);
        let other = TokenKey::from_secret(b"another");
        assert_eq!(other.check_dialog_token(t.as_bytes(), b"call-1", [Some(b"caller"), None]), None);
        assert_eq!(k.check_dialog_token(b"zz", b"call-1", [Some(b"caller"), None]), None);
    }

    #[test]
    fn a_token_from_before_legs_still_checks_and_names_no_leg() {
        let k = TokenKey::from_secret(b"test secret");
        let mut p = [0u8; DIALOG_TOKEN_LEN - 1];
        p[0] = KIND_DIALOG;
        p[1] = 2;
        p[2..10].copy_from_slice(&dialog_hash(b"call-1", b"caller").to_be_bytes());
        let old = k.seal(&p);
        let got = k.check_dialog_token(old.as_bytes(), b"call-1", [Some(b"callee"), Some(b"caller")]);
        assert_eq!(got, Some(DialogToken { backend: 2, conn: None, leg: None }));
    }

    #[test]
    fn flow_tokens_round_trip() {
        let k = TokenKey::random();
        for flow in [
            Target { transport: Transport::Udp, addr: "192.0.2.7:5062".parse().unwrap(), conn: None },
            Target { transport: Transport::Tcp, addr: "[2001:db8::9]:40000".parse().unwrap(), conn: Some(77) },
        ] {
            let t = k.flow_token(&flow);
            assert_eq!(k.check_flow_token(t.as_bytes()), Some(flow));
            assert_eq!(k.check_flow_token(&t.as_bytes()[2..]), None);
        }
    }
}

//! The PBX behind sipfront in the attack tests: a UDP socket and a thread, written in the test so that what it
//! answers is decided by the test and what it received is counted exactly.
//!
//! It behaves like a PBX that leaks what scanners look for, so that an attack which got through would show:
//!
//! ```text
//!   OPTIONS                  200 (sipfront's probes, svmap's OPTIONS)
//!   REGISTER for an extension 401 with a fresh nonce; 200 when svcrack's From tag names the right password
//!   REGISTER for anyone else  404 (svwar tells extensions apart by 401 vs 404)
//!   INVITE to `legit`         180, 200 (the legitimate calls)
//!   any other INVITE          nothing at all: the silent PBX of the flood tests (timer B runs out at sipfront)
//!   ACK                       nothing; BYE, CANCEL: 200; anything else: 404
//! ```
//!
//! INVITEs are counted from their start line alone (distinct Request-URI users), so a flood of tens of thousands
//! of them costs this thread little; every other request is parsed and recorded.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::{response_to, SipMsg};

/// One request other than an INVITE, as the PBX saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The host of the bottom Via: who sent it first (the scanner, the caller, or sipfront for its probes).
    pub origin: String,
    /// The user part of the To URI (the extension a REGISTER is for).
    pub to_user: String,
    pub call_id: String,
    /// It carried an Authorization header (a password guess).
    pub authorized: bool,
}

/// What the PBX received so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Distinct Request-URI users of INVITEs (a retransmission adds nothing).
    pub invite_users: HashSet<String>,
    /// INVITE datagrams, retransmissions included.
    pub invite_packets: u64,
    /// Every other request, in order.
    pub others: Vec<Seen>,
    /// REGISTERs answered 200: passwords guessed right.
    pub cracked: u64,
}

impl Received {
    /// Requests with this method first sent from `origin`.
    pub fn count(&self, method: &str, origin: &str) -> usize {
        self.others.iter().filter(|s| s.method == method && s.origin == origin).count()
    }

    /// Requests of any kind first sent from `origin`.
    pub fn sent_by_origin(&self, origin: &str) -> usize {
        self.others.iter().filter(|s| s.origin == origin).count()
    }

    /// INVITEs whose Request-URI user starts with `prefix`.
    pub fn invites_to(&self, prefix: &str) -> usize {
        self.invite_users.iter().filter(|u| u.starts_with(prefix)).count()
    }

    pub fn has_call(&self, call_id: &str) -> bool {
        self.others.iter().any(|s| s.call_id == call_id)
    }

    /// Requests by method and origin, for a report.
    pub fn summary(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for s in &self.others {
            *out.entry((s.method.clone(), s.origin.clone())).or_insert(0) += 1;
        }
        out
    }
}

/// Extensions that exist and the one password that opens the first of them.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub extensions: Vec<String>,
    /// (user, password): a REGISTER with a guess for it is answered 200.
    pub password: Option<(String, String)>,
}

/// The PBX; stopped (its thread joined) on drop.
pub struct AttackPbx {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AttackPbx {
    pub fn start(addr: SocketAddr, dir: Directory) -> AttackPbx {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        // A flood arrives faster than one thread answers in bursts: a large buffer keeps the counts exact.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
        let seen: Arc<Mutex<Received>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            let mut nonce = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                let data = &buf[..n];
                if let Some(user) = invite_user(data) {
                    let mut s = seen2.lock().expect("lock");
                    s.invite_packets += 1;
                    if !s.invite_users.contains(user) {
                        s.invite_users.insert(user.to_string());
                    }
                    if user != "legit" {
                        continue; // the silent PBX
                    }
                }
                let Some(msg) = SipMsg::parse(data) else { continue };
                let Some(method) = msg.method().map(str::to_string) else { continue };
                nonce += 1;
                let answer = |code: u16, reason: &str, extra: &str| {
                    let _ = sock.send_to(response_to(&msg, code, reason, "pbx-tag", extra).as_bytes(), from);
                };
                if method == "INVITE" {
                    let rr: String =
                        msg.header_values("Record-Route").iter().map(|r| format!("Record-Route: {r}\r\n")).collect();
                    let contact = format!("{rr}Contact: <sip:pbx@{addr}>\r\n");
                    answer(180, "Ringing", &contact);
                    answer(200, "OK", &contact);
                    continue;
                }
                let authorized = msg.header("Authorization").is_some();
                let to_user = uri_user(msg.header("To").unwrap_or("")).to_string();
                let origin = msg.header_values("Via").last().map(|v| via_host(v)).unwrap_or_default();
                let mut cracked = false;
                match method.as_str() {
                    "OPTIONS" | "BYE" | "CANCEL" => answer(200, "OK", ""),
                    "ACK" => {}
                    "REGISTER" if dir.extensions.contains(&to_user) => {
                        let guess = msg.header("From").and_then(svcrack_guess);
                        if authorized
                            && guess.is_some()
                            && guess == dir.password.as_ref().map(|(u, p)| format!("{u}:{p}"))
                        {
                            cracked = true;
                            answer(200, "OK", "");
                        } else {
                            let auth = format!(
                                "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n{nonce}\", algorithm=MD5\r\n"
                            );
                            answer(401, "Unauthorized", &auth);
                        }
                    }
                    _ => answer(404, "Not Found", ""),
                }
                let call_id = msg.header("Call-ID").unwrap_or("").to_string();
                let mut s = seen2.lock().expect("lock");
                s.cracked += u64::from(cracked);
                s.others.push(Seen { method, origin, to_user, call_id, authorized });
            }
        });
        AttackPbx { addr, seen, stop, thread: Some(thread) }
    }

    /// What it received so far.
    pub fn received(&self) -> Received {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for AttackPbx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Request-URI user of an INVITE, from its start line alone (`INVITE sip:USER@host SIP/2.0`).
fn invite_user(data: &[u8]) -> Option<&str> {
    let rest = data.strip_prefix(b"INVITE sip:")?;
    let end = rest.iter().take(128).position(|c| matches!(c, b'@' | b' ' | b';' | b'>'))?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The user part of the first `sip:` URI in a header value.
fn uri_user(v: &str) -> &str {
    let Some(at) = v.find("sip:") else { return "" };
    let rest = &v[at + 4..];
    match rest.find('@') {
        Some(end) if !rest[..end].contains(['>', ';']) => &rest[..end],
        _ => "",
    }
}

/// The host of a Via value: `SIP/2.0/UDP host:port;...`.
fn via_host(v: &str) -> String {
    let sent_by = v.split_whitespace().nth(1).unwrap_or("");
    let sent_by = sent_by.split(';').next().unwrap_or("");
    sent_by.rsplit_once(':').map(|(h, _)| h).unwrap_or(sent_by).to_string()
}

/// svcrack writes the guess into its From tag: hex of `user:password`, 0x01, a random number. A real PBX checks
/// the digest; reading the guess from the tag makes the same decision without an MD5 in the test.
fn svcrack_guess(from: &str) -> Option<String> {
    let tag = from.split(';').find_map(|p| p.trim().strip_prefix("tag="))?;
    let bytes: Option<Vec<u8>> =
        (0..tag.len() / 2).map(|i| u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    let bytes = bytes?;
    let cut = bytes.iter().position(|b| *b == 1)?;
    String::from_utf8(bytes[..cut].to_vec()).ok()
}

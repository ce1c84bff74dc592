//! The demo's test PBX (`sipfront demo-pbx --listen ADDR`, a hidden command the demo starts twice): a small UDP
//! user agent server that answers every call, so the demo needs no other software.
//!
//! It owns its socket and its table of calls, nothing else. [`Uas`] is the pure part (datagram in, datagrams
//! out, a clock passed in), so the answers are unit-tested without sockets; [`run`] puts it on a socket.
//!
//! - OPTIONS → 200 (the nodes' health probes).
//! - INVITE → 100, 180, then after [`RING`] 200 with a To tag, `Contact: <sip:pbx@LISTEN>`, the Record-Route
//!   copied and a small SDP answer; the 200 is sent again on T1 doubling (up to T2) until the ACK comes, at most
//!   [`MAX_OK_RETRANSMITS`] times. An INVITE for a call already known (the retransmission a new leader forwards
//!   with its own Via branch) is answered again from the new request, with the same tag.
//! - ACK → nothing. BYE → 200, also for a call it never saw: a PBX that replaces a dead one gets BYEs of calls
//!   it never answered, and the point of the demo is that those calls end cleanly.
//! - CANCEL → 200, and 487 for the INVITE while it still rings. Anything else → 501.
//!
//! Where answers go: to the top Via's sent-by, or to the packet's source when that Via asks for `rport` (the
//! nodes' probes do). Not to `received` as RFC 3261 §18.2.2 would: a node's Via names the advertised address,
//! the demo's pseudo-VIP, and going there lets a 200 reach whichever node leads *now*, as it would with a real
//! VIP. A lost 487 is not sent again (loopback does not lose datagrams).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::sip::{HeaderName, Message, Method, ResponseBuilder};

/// How long an INVITE rings before the 200 (long enough for a CANCEL to find it ringing).
pub const RING: Duration = Duration::from_millis(100);
/// RFC 3261 T1 and T2.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Retransmissions of a 200 without its ACK before the PBX gives up on it.
pub const MAX_OK_RETRANSMITS: u32 = 7;
/// Calls older than this are forgotten (their BYE never came).
const MAX_CALL_AGE: Duration = Duration::from_secs(3600);
/// Calls at once; past it INVITEs are answered 503.
const MAX_CALLS: usize = 10_000;

/// Datagrams to send: bytes and destination.
pub type Out = Vec<(Bytes, SocketAddr)>;

/// The UAS state: every call it answered and has not seen end.
pub struct Uas {
    contact: String,
    sdp: String,
    calls: HashMap<Bytes, Call>,
    next_tag: u64,
}

struct Call {
    /// Our To tag.
    tag: String,
    /// The latest INVITE for this call (a retransmission through another node replaces it).
    invite: Message,
    /// Where that INVITE's answers go.
    dest: SocketAddr,
    since: Instant,
    state: State,
}

enum State {
    Ringing {
        answer_at: Instant,
    },
    /// 200 sent, ACK awaited.
    Answered {
        ok: Bytes,
        next: Instant,
        interval: Duration,
        retransmits: u32,
    },
    Confirmed,
}

impl Uas {
    pub fn new(listen: SocketAddr) -> Uas {
        let ip = listen.ip();
        let sdp = format!(
            "v=0\r\no=pbx 1 1 IN IP4 {ip}\r\ns=sipfront demo\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        // A tag prefix of this process, so two runs never hand out the same tags.
        let seed = u64::from(std::process::id()) << 32 | u64::from(listen.port());
        Uas { contact: format!("<sip:pbx@{listen}>"), sdp, calls: HashMap::new(), next_tag: seed }
    }

    /// Calls known (ringing, answered or confirmed).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// One datagram from `src`.
    pub fn on_datagram(&mut self, data: Bytes, src: SocketAddr, now: Instant) -> Out {
        let Ok(req) = Message::parse(data) else { return Vec::new() };
        if !req.is_request() {
            return Vec::new(); // we send no requests, so no response is ours
        }
        let dest = reply_to(&req, src);
        match req.method().unwrap_or(Method::Other) {
            Method::Options => {
                vec![(ResponseBuilder::new(&req, 200, "OK").header("Accept", b"application/sdp").build(), dest)]
            }
            Method::Invite => self.on_invite(req, dest, now),
            Method::Ack => {
                if let Some(c) = self.calls.get_mut(req.call_id()) {
                    if matches!(c.state, State::Answered { .. }) {
                        c.state = State::Confirmed;
                    }
                }
                Vec::new()
            }
            Method::Bye => {
                self.calls.remove(req.call_id());
                vec![(ResponseBuilder::new(&req, 200, "OK").build(), dest)]
            }
            Method::Cancel => self.on_cancel(&req, dest),
            _ => {
                let tag = self.fresh_tag();
                vec![(ResponseBuilder::new(&req, 501, "Not Implemented").to_tag(tag.as_bytes()).build(), dest)]
            }
        }
    }

    fn on_invite(&mut self, req: Message, dest: SocketAddr, now: Instant) -> Out {
        if req.to_tag().is_some() {
            // A re-INVITE: the same answer, once (a lost one is the caller's to repeat).
            let tag = req.to_tag().map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
            return vec![(self.ok(&req, &tag), dest)];
        }
        let trying = ResponseBuilder::new(&req, 100, "Trying").build();
        if let Some(call) = self.calls.get_mut(req.call_id()) {
            // Again (a retransmission, maybe through a new leader with a new branch): answer this one.
            call.invite = req;
            call.dest = dest;
            let mut out = vec![(trying, dest)];
            if let State::Answered { ok, .. } = &mut call.state {
                *ok = answer(&call.invite, &call.tag, &self.contact, &self.sdp);
                out.push((ok.clone(), dest));
            }
            return out;
        }
        if self.calls.len() >= MAX_CALLS {
            let tag = self.fresh_tag();
            return vec![(ResponseBuilder::new(&req, 503, "Service Unavailable").to_tag(tag.as_bytes()).build(), dest)];
        }
        let tag = self.fresh_tag();
        let ringing =
            with_dialog_headers(ResponseBuilder::new(&req, 180, "Ringing"), &req, &tag, &self.contact).build();
        let call = Call { tag, invite: req, dest, since: now, state: State::Ringing { answer_at: now + RING } };
        self.calls.insert(Bytes::copy_from_slice(call.invite.call_id()), call);
        vec![(trying, dest), (ringing, dest)]
    }

    fn on_cancel(&mut self, req: &Message, dest: SocketAddr) -> Out {
        let mut out = Vec::new();
        let fresh = self.fresh_tag();
        let ringing = self.calls.get(req.call_id()).filter(|c| matches!(c.state, State::Ringing { .. }));
        let tag = ringing.map_or(fresh, |c| c.tag.clone());
        out.push((ResponseBuilder::new(req, 200, "OK").to_tag(tag.as_bytes()).build(), dest));
        if let Some(c) = ringing {
            let terminated = ResponseBuilder::new(&c.invite, 487, "Request Terminated").to_tag(tag.as_bytes()).build();
            out.push((terminated, c.dest));
            self.calls.remove(req.call_id());
        }
        out
    }

    /// Ringing calls answered, unacknowledged 200s sent again, old calls forgotten.
    pub fn on_timer(&mut self, now: Instant) -> Out {
        let mut out = Vec::new();
        self.calls.retain(|_, c| now.duration_since(c.since) < MAX_CALL_AGE);
        for c in self.calls.values_mut() {
            match &mut c.state {
                State::Ringing { answer_at } if *answer_at <= now => {
                    let ok = answer(&c.invite, &c.tag, &self.contact, &self.sdp);
                    out.push((ok.clone(), c.dest));
                    c.state = State::Answered { ok, next: now + T1, interval: T1, retransmits: 0 };
                }
                State::Answered { ok, next, interval, retransmits } if *next <= now => {
                    if *retransmits >= MAX_OK_RETRANSMITS {
                        c.state = State::Confirmed; // no ACK ever came; RFC 3261 would send a BYE
                        continue;
                    }
                    out.push((ok.clone(), c.dest));
                    *retransmits += 1;
                    *interval = (*interval * 2).min(T2);
                    *next = now + *interval;
                }
                _ => {}
            }
        }
        out
    }

    /// When [`Uas::on_timer`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|c| match &c.state {
                State::Ringing { answer_at } => Some(*answer_at),
                State::Answered { next, .. } => Some(*next),
                State::Confirmed => None,
            })
            .min()
    }

    fn fresh_tag(&mut self) -> String {
        self.next_tag = self.next_tag.wrapping_add(1);
        format!("pbx{:x}", self.next_tag)
    }

    fn ok(&self, req: &Message, tag: &str) -> Bytes {
        answer(req, tag, &self.contact, &self.sdp)
    }
}

/// The 200 to an INVITE: tag, Contact, Record-Route, SDP.
fn answer(req: &Message, tag: &str, contact: &str, sdp: &str) -> Bytes {
    with_dialog_headers(ResponseBuilder::new(req, 200, "OK"), req, tag, contact)
        .body("application/sdp", sdp.as_bytes())
        .build()
}

/// What a dialog-creating response carries: our tag, our Contact and the request's Record-Route, in order.
fn with_dialog_headers<'a>(
    mut b: ResponseBuilder<'a>,
    req: &'a Message,
    tag: &'a str,
    contact: &'a str,
) -> ResponseBuilder<'a> {
    b = b.to_tag(tag.as_bytes()).header("Contact", contact.as_bytes());
    for rr in req.header_values(HeaderName::RecordRoute) {
        b = b.header("Record-Route", rr);
    }
    b
}

/// The top Via's sent-by, or the source when it asks for `rport` (see the module comment).
fn reply_to(req: &Message, src: SocketAddr) -> SocketAddr {
    let Some(via) = req.top_via() else { return src };
    if via.rport().is_some() {
        return src;
    }
    match via.sent_by.ip() {
        Some(ip) => SocketAddr::new(ip, via.sent_by.port.unwrap_or(5060)),
        None => src,
    }
}

/// Serve on `listen` until the process is stopped (SIGTERM's default action, or the demo's SIGKILL).
pub async fn run(listen: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(listen).await?;
    let mut uas = Uas::new(listen);
    let mut buf = vec![0u8; 65_536];
    eprintln!("demo PBX on udp:{listen}");
    loop {
        let deadline = uas.next_deadline();
        let out = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => uas.on_datagram(Bytes::copy_from_slice(&buf[..n]), src, Instant::now()),
                Err(_) => continue, // an ICMP error for an earlier send: nothing to do
            },
            _ = crate::transaction::sleep_until_opt(deadline) => uas.on_timer(Instant::now()),
        };
        for (data, to) in out {
            let _ = sock.send_to(&data, to).await;
        }
    }
}

#[cfg(test)]
#[path = "pbx_tests.rs"]
mod tests;

//! The demo's gentle call generator: a UDP user agent client that places calls to `sip:demo@<pseudo-VIP>`,
//! holds each for a while, hangs up with a BYE, and counts what happened.
//!
//! It owns its socket, its calls and the counters ([`CallStats`], shared with the terminal and the dashboard).
//! [`Caller`] is the pure part (datagrams in, datagrams out, a clock passed in); [`run`] puts it on a socket.
//! Everything goes to the pseudo-VIP: the INVITE, and the ACK and BYE too, since their Route (the Record-Route
//! set reversed) names it. Request-URI of ACK and BYE: the 200's Contact. Every transaction has its own branch;
//! INVITE and BYE are sent again on T1 doubling, at most [`MAX_TRIES`] times (BYE's interval capped at T2), and
//! a transaction without a final answer after 64·T1 fails the call.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::requests::{ack, bye, non_2xx_ack, Dialog};
use crate::sip::{Message, Method, ResponseBuilder};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Sends of one INVITE or BYE, the first included.
pub const MAX_TRIES: u32 = 7;
/// Calls at once; none is placed past it.
pub const MAX_ACTIVE: usize = 200;
/// Failure reasons kept for the terminal.
const KEEP_FAILURES: usize = 20;

/// What the generator did, for the terminal and `GET /api/v1/demo`.
#[derive(Default)]
pub struct CallStats {
    pub placed: AtomicU64,
    pub answered: AtomicU64,
    /// Answered and ended by a BYE answered 200.
    pub ended: AtomicU64,
    pub failed: AtomicU64,
    pub active: AtomicU64,
    /// The latest failures, `(number, reason)`, oldest first. A std mutex: pushed and read in short sections.
    failures: Mutex<VecDeque<(u64, String)>>,
}

impl CallStats {
    fn fail(&self, call: &str, reason: String) {
        let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() == KEEP_FAILURES {
            f.pop_front();
        }
        f.push_back((n, format!("{call}: {reason}")));
    }

    /// Failures numbered after `after` (the terminal prints each once).
    pub fn failures_after(&self, after: u64) -> Vec<(u64, String)> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().filter(|(n, _)| *n > after).cloned().collect()
    }

    pub fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "placed": get(&self.placed), "answered": get(&self.answered), "ended": get(&self.ended),
            "failed": get(&self.failed), "active": get(&self.active),
        })
    }
}

/// Datagrams to send: bytes and destination.
pub type Out = Vec<(Bytes, SocketAddr)>;

/// The generator's calls.
pub struct Caller {
    /// Our socket's address (Via, Contact, From).
    local: SocketAddr,
    /// The pseudo-VIP: where every request goes.
    vip: SocketAddr,
    hold: Duration,
    calls: HashMap<String, Call>,
    stats: Arc<CallStats>,
    /// Numbers calls, tags and branches.
    seq: u64,
    rng: u64,
    /// Stopping: answered calls hang up at once, none is placed.
    draining: bool,
}

struct Call {
    from_tag: String,
    invite: Bytes,
    invite_branch: String,
    state: State,
}

/// A request being sent until its final answer.
struct Retx {
    msg: Bytes,
    first: Instant,
    /// `None`: no more sends (a provisional answer came, or the tries are used up).
    next: Option<Instant>,
    interval: Duration,
    tries: u32,
    cap: Duration,
}

enum State {
    Inviting(Retx),
    Answered { dialog: Dialog, bye_at: Instant },
    Byeing { dialog: Dialog, tx: Retx },
}

impl Caller {
    pub fn new(local: SocketAddr, vip: SocketAddr, hold: Duration, stats: Arc<CallStats>, seed: u64) -> Caller {
        Caller { local, vip, hold, calls: HashMap::new(), stats, seq: 0, rng: seed | 1, draining: false }
    }

    pub fn active(&self) -> usize {
        self.calls.len()
    }

    /// Place one call (none while draining or at [`MAX_ACTIVE`]).
    pub fn place(&mut self, now: Instant) -> Out {
        if self.draining || self.calls.len() >= MAX_ACTIVE {
            return Vec::new();
        }
        self.seq += 1;
        let n = self.seq;
        let call_id = format!("demo-{n}-{:x}@{}", self.random(), self.local.ip());
        let from_tag = format!("c{:x}", self.random());
        let branch = self.branch();
        let sdp = format!(
            "v=0\r\no=caller 1 1 IN IP4 {ip}\r\ns=sipfront demo\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            ip = self.local.ip()
        );
        let invite = format!(
            "INVITE sip:demo@{vip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:caller@{lip}>;tag={from_tag}\r\nTo: <sip:demo@{vip}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            vip = self.vip,
            local = self.local,
            lip = self.local.ip(),
            len = sdp.len()
        );
        let invite = Bytes::from(invite);
        let tx = Retx::start(invite.clone(), now, T1 * 64);
        self.calls.insert(
            call_id,
            Call { from_tag, invite: invite.clone(), invite_branch: branch, state: State::Inviting(tx) },
        );
        self.stats.placed.fetch_add(1, Ordering::Relaxed);
        self.publish();
        vec![(invite, self.vip)]
    }

    /// Stop placing calls; hang up the answered ones now (and the ringing ones once answered).
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        for c in self.calls.values_mut() {
            if let State::Answered { bye_at, .. } = &mut c.state {
                *bye_at = now;
            }
        }
    }

    pub fn on_datagram(&mut self, data: Bytes, now: Instant) -> Out {
        let Ok(msg) = Message::parse(data) else { return Vec::new() };
        if msg.is_request() {
            return self.on_request(&msg);
        }
        let id = String::from_utf8_lossy(msg.call_id()).into_owned();
        let Some(code) = msg.status() else { return Vec::new() };
        let mut out = Vec::new();
        let Some(call) = self.calls.get_mut(&id) else { return out };
        let mut ended: Option<Result<(), String>> = None;
        match (msg.cseq_method(), &mut call.state) {
            (Method::Invite, State::Inviting(tx)) if code < 200 => tx.next = None,
            (Method::Invite, State::Inviting(_)) if code < 300 => {
                let dialog = Dialog::from_ok(&msg);
                out.push((ack(self.local, &id, &call.from_tag, &dialog, &fresh_branch(&mut self.seq)), self.vip));
                let hold = if self.draining { Duration::ZERO } else { vary(self.hold, &mut self.rng) };
                call.state = State::Answered { dialog, bye_at: now + hold };
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            (Method::Invite, State::Inviting(_)) => {
                out.push((non_2xx_ack(&call.invite, &msg, &call.invite_branch), self.vip));
                ended = Some(Err(format!("INVITE answered {code} {}", String::from_utf8_lossy(msg.reason()))));
            }
            // The 200 again (our ACK was lost, or a second node relayed it): ACK again.
            (Method::Invite, State::Answered { dialog, .. } | State::Byeing { dialog, .. })
                if (200..300).contains(&code) =>
            {
                out.push((ack(self.local, &id, &call.from_tag, dialog, &fresh_branch(&mut self.seq)), self.vip));
            }
            (Method::Bye, State::Byeing { .. }) if code >= 200 => {
                ended = Some(if code < 300 {
                    Ok(())
                } else {
                    Err(format!("BYE answered {code} {}", String::from_utf8_lossy(msg.reason())))
                });
            }
            _ => {}
        }
        if let Some(result) = ended {
            self.finish(&id, result);
        }
        out
    }

    /// A request to us (a BYE from the far end, say): 200, and the call is over.
    fn on_request(&mut self, req: &Message) -> Out {
        let Some(via) = req.top_via() else { return Vec::new() };
        let to = via.sent_by.ip().map(|ip| SocketAddr::new(ip, via.sent_by.port.unwrap_or(5060))).unwrap_or(self.vip);
        let id = String::from_utf8_lossy(req.call_id()).into_owned();
        match req.method() {
            Some(Method::Ack) => Vec::new(),
            Some(Method::Bye) => {
                if self.calls.get(&id).is_some_and(|c| !matches!(c.state, State::Inviting(_))) {
                    self.finish(&id, Ok(()));
                }
                vec![(ResponseBuilder::new(req, 200, "OK").build(), to)]
            }
            _ => vec![(ResponseBuilder::new(req, 200, "OK").build(), to)],
        }
    }

    fn finish(&mut self, id: &str, result: Result<(), String>) {
        if self.calls.remove(id).is_none() {
            return;
        }
        match result {
            Ok(()) => {
                self.stats.ended.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => self.stats.fail(id, why),
        }
        self.publish();
    }

    /// Retransmissions, hang-ups and timeouts due by `now`.
    pub fn on_timer(&mut self, now: Instant) -> Out {
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for (id, c) in self.calls.iter_mut() {
            match &mut c.state {
                State::Inviting(tx) | State::Byeing { tx, .. } if tx.expired(now) => {
                    let what = if matches!(c.state, State::Inviting(_)) { "INVITE" } else { "BYE" };
                    failed.push((id.clone(), format!("{what}: no final answer within {:?}", T1 * 64)));
                }
                State::Inviting(tx) | State::Byeing { tx, .. } => {
                    if let Some(m) = tx.due(now) {
                        out.push((m, self.vip));
                    }
                }
                State::Answered { dialog, bye_at } if *bye_at <= now => {
                    let dialog = std::mem::take(dialog);
                    let bye = bye(self.local, id, &c.from_tag, &dialog, &fresh_branch(&mut self.seq));
                    out.push((bye.clone(), self.vip));
                    c.state = State::Byeing { dialog, tx: Retx::start(bye, now, T2) };
                }
                State::Answered { .. } => {}
            }
        }
        for (id, why) in failed {
            self.finish(&id, Err(why));
        }
        out
    }

    /// When [`Caller::on_timer`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .map(|c| match &c.state {
                State::Inviting(tx) | State::Byeing { tx, .. } => tx.deadline(),
                State::Answered { bye_at, .. } => *bye_at,
            })
            .min()
    }

    fn publish(&self) {
        self.stats.active.store(self.calls.len() as u64, Ordering::Relaxed);
    }

    fn branch(&mut self) -> String {
        fresh_branch(&mut self.seq)
    }

    /// xorshift64: tags, Call-IDs and hold times need variety, not secrecy.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

fn fresh_branch(seq: &mut u64) -> String {
    *seq += 1;
    format!("z9hG4bK-demo-{:x}", *seq)
}

/// `hold` ± 50 %.
fn vary(hold: Duration, rng: &mut u64) -> Duration {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    hold.mul_f64(0.5 + (*rng % 1000) as f64 / 1000.0)
}

impl Retx {
    /// Sent once at `now`; the interval starts at T1 and doubles up to `cap`.
    fn start(msg: Bytes, now: Instant, cap: Duration) -> Retx {
        Retx { msg, first: now, next: Some(now + T1), interval: T1, tries: 1, cap }
    }

    fn expired(&self, now: Instant) -> bool {
        now >= self.first + T1 * 64
    }

    fn deadline(&self) -> Instant {
        self.next.unwrap_or(self.first + T1 * 64).min(self.first + T1 * 64)
    }

    /// The message to send again, if due.
    fn due(&mut self, now: Instant) -> Option<Bytes> {
        let next = self.next.filter(|n| *n <= now)?;
        self.tries += 1;
        self.interval = (self.interval * 2).min(self.cap);
        self.next = (self.tries < MAX_TRIES).then(|| next + self.interval);
        Some(self.msg.clone())
    }
}

/// How the generator runs: from where, to where, how often, how long.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Our address (port 0: any).
    pub bind: SocketAddr,
    pub vip: SocketAddr,
    /// Calls per second.
    pub rate: f64,
    pub hold: Duration,
}

/// Place calls until `stop`, then hang up what is up and return once no call is left (the caller of this
/// bounds that wait).
pub async fn run(cfg: CallerConfig, stats: Arc<CallStats>, stop: CancellationToken) -> std::io::Result<()> {
    let sock = UdpSocket::bind(cfg.bind).await?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut caller = Caller::new(sock.local_addr()?, cfg.vip, cfg.hold, stats, seed);
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate.max(0.01)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = caller.next_deadline();
        let out = tokio::select! {
            _ = stop.cancelled(), if !caller.draining => {
                caller.drain(Instant::now());
                caller.on_timer(Instant::now())
            }
            _ = every.tick(), if !caller.draining => caller.place(Instant::now()),
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => caller.on_datagram(Bytes::copy_from_slice(&buf[..n]), Instant::now()),
                Err(_) => continue, // an ICMP error for an earlier send
            },
            _ = crate::transaction::sleep_until_opt(deadline) => caller.on_timer(Instant::now()),
        };
        for (data, to) in out {
            let _ = sock.send_to(&data, to).await;
        }
        if caller.draining && caller.active() == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[path = "caller_tests.rs"]
mod tests;

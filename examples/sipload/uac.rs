//! The calling side: starts calls at a fixed rate, runs each call as its own task (INVITE, ACK, hold, BYE) with
//! UDP retransmissions (RFC 3261 Timers A and E), and returns what each call came to. Owns no sockets (`link`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sipfront::sip::{Message, Method};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::link::{Inbound, Link, CALL_QUEUE};
use crate::msg::{self, CallIds, Dialog, Leg};
use crate::report::{CallResult, Outcome};

/// RFC 3261 T1 and T2.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

pub struct UacOptions {
    pub rate: f64,
    pub calls: u64,
    pub hold: Duration,
    /// How long one transaction (INVITE to final, BYE to final) may take before the call counts as timed out.
    pub timeout: Duration,
}

struct Ctx {
    link: Link,
    inbound: Arc<Inbound>,
    opts: UacOptions,
    proxy: std::net::SocketAddr,
    /// Distinguishes this run's Call-IDs from a previous run's late retransmissions.
    run: u32,
}

/// Everything one run produced: per-call results (including the ones cut off by the deadline) and the send window.
pub struct RunOutput {
    pub results: Vec<CallResult>,
    pub start: Instant,
    pub cut_off: u64,
}

pub async fn run(link: Link, inbound: Arc<Inbound>, proxy: std::net::SocketAddr, opts: UacOptions) -> RunOutput {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let run = std::process::id() ^ nanos;
    let ctx = Arc::new(Ctx { link, inbound, opts, proxy, run });
    let (rate, calls) = (ctx.opts.rate, ctx.opts.calls);
    let send_window = Duration::from_secs_f64(calls as f64 / rate);
    // The hard stop: every call is bounded by two transactions and the hold, this only catches what is not.
    let deadline = Instant::now() + send_window + ctx.opts.hold + 2 * ctx.opts.timeout + Duration::from_secs(5);
    let start = Instant::now();
    let mut set = JoinSet::new();
    let mut results = Vec::with_capacity(calls as usize);
    let mut launched = 0u64;
    // Pace by the clock, not by sleeps: a tick that comes late starts the calls that are due in one go.
    while launched < calls && Instant::now() < deadline {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(calls);
        while launched < due {
            set.spawn(call(ctx.clone(), launched, start));
            launched += 1;
        }
        while let Some(r) = set.try_join_next() {
            results.extend(r.ok());
        }
        sleep(Duration::from_millis(1)).await;
    }
    let mut cut_off = calls - launched;
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(r) => results.extend(r.ok()),
                None => break,
            },
            _ = sleep_until(deadline) => {
                cut_off += set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    RunOutput { results, start, cut_off }
}

/// Removes the call from the table however the call task ends (including abort).
struct Registered<'a>(&'a Inbound, Vec<u8>);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.calls.remove(&self.1);
    }
}

async fn call(ctx: Arc<Ctx>, i: u64, start: Instant) -> CallResult {
    let conn = i as usize;
    let reliable = ctx.link.reliable();
    let leg = Leg {
        via_transport: if reliable { "TLS" } else { "UDP" },
        uri_param: if reliable { ";transport=tls" } else { "" },
        local: ctx.link.local(conn),
        proxy: ctx.proxy,
    };
    let ids = CallIds { call_id: format!("{i}-{:x}@sipload", ctx.run), from_tag: format!("f{i}") };
    let (tx, mut rx) = mpsc::channel(CALL_QUEUE);
    ctx.inbound.calls.insert(ids.call_id.as_bytes().to_vec(), tx);
    let _registered = Registered(&ctx.inbound, ids.call_id.as_bytes().to_vec());
    let mut res = CallResult { outcome: Outcome::TimedOut, setup: None, ok_at: None, retransmissions: 0 };

    // INVITE until a final response; Timer A until the first provisional.
    let branch = format!("z9hG4bK-{i}-{:x}-1", ctx.run);
    let invite = msg::invite(&leg, &ids, &branch);
    let sent = Instant::now();
    if ctx.link.send(conn, invite.clone()).await.is_err() {
        res.outcome = Outcome::Failed;
        return res;
    }
    let give_up = sent + ctx.opts.timeout;
    let mut retx = (!reliable).then_some((sent + T1, T1));
    let dialog = loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return res };
                if !answers(&m, 1, Method::Invite) { continue }
                match m.status().unwrap_or(0) {
                    100..=199 => retx = None,
                    200..=299 => {
                        let now = Instant::now();
                        res.setup = Some(now - sent);
                        res.ok_at = Some(now - start);
                        match Dialog::from_2xx(&m) {
                            Some(d) => break d,
                            None => { res.outcome = Outcome::Failed; return res }
                        }
                    }
                    _ => {
                        let _ = ctx.link.send(conn, msg::ack_non2xx(&leg, &ids, &m, &branch)).await;
                        res.outcome = Outcome::Failed;
                        return res;
                    }
                }
            }
            _ = sleep_until(retx.map_or(give_up, |r| r.0)), if retx.is_some() => {
                let (_, every) = retx.expect("guarded");
                let _ = ctx.link.send(conn, invite.clone()).await;
                res.retransmissions += 1;
                retx = Some((Instant::now() + every * 2, every * 2));
            }
            _ = sleep_until(give_up) => return res,
        }
    };
    let ack = msg::in_dialog(&leg, &ids, &dialog, "ACK", 1, &format!("z9hG4bK-{i}-{:x}-a", ctx.run));
    if ctx.link.send(conn, ack.clone()).await.is_err() {
        res.outcome = Outcome::Failed;
        return res;
    }

    // Hold; a retransmitted 2xx means our ACK was lost: send it again.
    let hold_end = Instant::now() + ctx.opts.hold;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => resend_ack(&ctx, conn, &m, &ack).await,
                None => return res,
            },
            _ = sleep_until(hold_end) => break,
        }
    }

    // BYE until a final response; Timer E on UDP.
    let bye = msg::in_dialog(&leg, &ids, &dialog, "BYE", 2, &format!("z9hG4bK-{i}-{:x}-2", ctx.run));
    let sent = Instant::now();
    if ctx.link.send(conn, bye.clone()).await.is_err() {
        res.outcome = Outcome::Failed;
        return res;
    }
    let give_up = sent + ctx.opts.timeout;
    let mut retx = (!reliable).then_some((sent + T1, T1));
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return res };
                resend_ack(&ctx, conn, &m, &ack).await;
                if !answers(&m, 2, Method::Bye) { continue }
                match m.status().unwrap_or(0) {
                    100..=199 => {}
                    200..=299 => { res.outcome = Outcome::Ok; return res }
                    _ => { res.outcome = Outcome::Failed; return res }
                }
            }
            _ = sleep_until(retx.map_or(give_up, |r| r.0)), if retx.is_some() => {
                let (_, every) = retx.expect("guarded");
                let _ = ctx.link.send(conn, bye.clone()).await;
                res.retransmissions += 1;
                let next = (every * 2).min(T2);
                retx = Some((Instant::now() + next, next));
            }
            _ = sleep_until(give_up) => return res,
        }
    }
}

/// A response to our request with this CSeq (number and method).
fn answers(m: &Message, cseq: u32, method: Method) -> bool {
    m.status().is_some() && m.cseq() == cseq && m.cseq_method() == method
}

async fn resend_ack(ctx: &Ctx, conn: usize, m: &Message, ack: &Bytes) {
    if answers(m, 1, Method::Invite) && m.status().is_some_and(|s| (200..300).contains(&s)) {
        let _ = ctx.link.send(conn, ack.clone()).await;
    }
}

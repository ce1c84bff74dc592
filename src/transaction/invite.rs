//! The INVITE proxy transaction: 100 Trying upstream, then per attempt a client INVITE transaction (timers A, B,
//! C; CANCEL; hop-by-hop ACK of non-2xx), serial failover across backends, and finally the server side's
//! lingering state: Completed (timer G retransmits the final answer until the ACK, H gives up, I absorbs) or
//! Accepted after a 2xx (RFC 6026 timers L/M: absorb INVITE retransmissions, relay 2xx retransmissions).

use bytes::Bytes;
use tokio::time::Instant;

use super::timers::{due, earliest, sleep_opt};
use super::{response_branch, retryable, Ctx, Linger, TxEvent};
use crate::dialog::{DialogId, Leg, NewDialog};
use crate::proxy::Proxy;
use crate::proxy::{Hop, HopAddr};
use crate::sip::{HeaderName, Message, Method, ResponseBuilder};
use crate::transport::{Source, Target};

/// One try toward one hop.
struct Attempt {
    branch: Bytes,
    target: Target,
    /// The INVITE as we sent it (retransmissions, and the source of CANCEL and ACK).
    fwd: Bytes,
    backend: Option<usize>,
    /// Our ACK for this branch's non-2xx final, re-sent when the final is retransmitted.
    ack: Option<Bytes>,
}

impl Attempt {
    /// The hop-by-hop ACK for a non-2xx final response on this branch (RFC 3261 §17.1.1.3).
    fn ack_for(&self, resp: &Message) -> Option<Bytes> {
        let sent = Message::parse(self.fwd.clone()).ok()?;
        Some(sent.twin_request("ACK", resp.header(HeaderName::To)))
    }

    fn cancel(&self) -> Option<Bytes> {
        let sent = Message::parse(self.fwd.clone()).ok()?;
        Some(sent.twin_request("CANCEL", None))
    }

    /// What the lingering phase still needs of this attempt.
    fn into_lean(self) -> LeanAttempt {
        // The INVITE is kept only for a branch that never answered finally (to ACK a late final).
        let fwd = if self.ack.is_none() { Some(self.fwd) } else { None };
        LeanAttempt { branch: self.branch, target: self.target, fwd, ack: self.ack }
    }
}

struct LeanAttempt {
    branch: Bytes,
    target: Target,
    fwd: Option<Bytes>,
    ack: Option<Bytes>,
}

/// A CANCEL we sent downstream: a small non-INVITE client transaction of its own (timer E, F).
struct CancelState {
    bytes: Bytes,
    next: Option<Instant>,
    interval: std::time::Duration,
    /// 64*T1 after the CANCEL without a final answer to the INVITE: give the branch up (RFC 3261 §9.1).
    give_up: Instant,
}

enum Outcome {
    /// A 2xx went upstream.
    Accepted,
    /// This final non-2xx went upstream.
    Rejected(Bytes),
}

pub(crate) async fn resolve_hop(hop: &Hop) -> Option<Target> {
    match &hop.addr {
        HopAddr::Resolved(t) => Some(*t),
        HopAddr::Name { host, port, transport } => {
            let addr = crate::proxy::resolve(host, *port).await?;
            Some(Target { transport: *transport, addr, conn: None })
        }
    }
}

pub(crate) async fn run(mut ctx: Ctx) {
    let t = ctx.proxy.settings.timers;
    let trying = ResponseBuilder::new(&ctx.req, 100, "Trying").source(ctx.src.remote).build();
    ctx.upstream(trying.clone());
    // What a retransmitted INVITE gets back: our 100, then the latest provisional relayed.
    let mut last_up = trying;
    let mut cancelled = false;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut best_failure: Option<Message> = None;
    // The answer if every hop fails without a response: 503 for transport errors, 408 for silence.
    let mut fallback = (503, "Service Unavailable");
    let mut outcome = None;
    let hops = ctx.plan.hops.clone();

    'hops: for (i, hop) in hops.iter().enumerate() {
        if cancelled {
            break;
        }
        let last_hop = i + 1 == hops.len();
        let Some((target, branch, fwd)) = ctx.send_attempt(hop, last_hop).await else {
            fallback = (503, "Service Unavailable");
            continue;
        };
        attempts.push(Attempt { branch, target, fwd, backend: hop.backend, ack: None });
        let cur = attempts.len() - 1;
        let start = Instant::now();
        let mut a_interval = t.t1;
        let mut timer_a = (!target.transport.is_reliable()).then(|| start + t.t1);
        let mut timer_b = Some(start + t.t1x64());
        let mut timer_c = Some(start + t.timer_c);
        let mut provisional = false;
        let mut cancel: Option<CancelState> = None;
        // A backend marked down while we wait for it: move on at once instead of waiting for timer B or C.
        let mut health = hop.backend.and_then(|b| ctx.proxy.health.watch(b));

        loop {
            let deadline = earliest(&[
                timer_a,
                timer_b,
                timer_c,
                cancel.as_ref().and_then(|c| c.next),
                cancel.as_ref().map(|c| c.give_up),
            ]);
            tokio::select! {
                ev = ctx.rx.recv() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        TxEvent::Retransmit => ctx.upstream(last_up.clone()),
                        TxEvent::Ack(..) => {}
                        TxEvent::Cancel => {
                            if !cancelled {
                                cancelled = true;
                                if provisional {
                                    cancel = start_cancel(&ctx, &attempts[cur]);
                                }
                            }
                        }
                        TxEvent::Response(resp) => {
                            if resp.cseq_method() == Method::Cancel {
                                if let Some(c) = cancel.as_mut() {
                                    c.next = None; // the CANCEL is answered; the INVITE's 487 follows
                                }
                                continue;
                            }
                            if response_branch(&resp) != Some(&attempts[cur].branch[..]) {
                                late_response(&ctx.proxy, ctx.src, &mut attempts, &resp);
                                continue;
                            }
                            let code = resp.status().unwrap_or(0);
                            match code {
                                100..=199 => {
                                    timer_a = None;
                                    timer_b = None;
                                    provisional = true;
                                    if code > 100 {
                                        timer_c = Some(Instant::now() + t.timer_c);
                                        if let Some(id) = dialog_id(&ctx, &resp) {
                                            ctx.proxy.dialogs.early(id, &new_dialog(&ctx, &attempts[cur]));
                                        }
                                        last_up = resp.strip_top_via();
                                        ctx.upstream(last_up.clone());
                                    }
                                    if cancelled && cancel.is_none() {
                                        cancel = start_cancel(&ctx, &attempts[cur]);
                                    }
                                }
                                200..=299 => {
                                    if let Some(id) = dialog_id(&ctx, &resp) {
                                        let route_set = route_set(&resp);
                                        ctx.proxy.dialogs.confirm(id, &new_dialog(&ctx, &attempts[cur]), route_set);
                                    }
                                    crate::metrics::final_response(code, "relayed");
                                    ctx.upstream(resp.strip_top_via());
                                    // The end-to-end ACK does not come through this transaction.
                                    attempts[cur].ack = Some(Bytes::new());
                                    outcome = Some(Outcome::Accepted);
                                    break 'hops;
                                }
                                _ => {
                                    if code == 503 {
                                        ctx.backend_failed(attempts[cur].backend, "503 on a call");
                                    }
                                    if let Some(ack) = attempts[cur].ack_for(&resp) {
                                        ctx.proxy.transports.send(target, ack.clone());
                                        attempts[cur].ack = Some(ack);
                                    }
                                    if !cancelled && !last_hop && retryable(code) && ctx.plan.hops.len() > 1 {
                                        tracing::debug!(to = %target.addr, code, "backend refused, trying the next one");
                                        ctx.note_failover("response", last_hop);
                                        best_failure = Some(*resp);
                                        continue 'hops;
                                    }
                                    let out = resp.strip_top_via();
                                    ctx.relay_final(&resp);
                                    ctx.upstream(out.clone());
                                    outcome = Some(Outcome::Rejected(out));
                                    break 'hops;
                                }
                            }
                        }
                    }
                }
                _ = super::went_down(&mut health) => {
                    // The backend was declared dead while this INVITE waits on it: no answer (not even the 487
                    // to our CANCEL) is coming. Move on now rather than after timer B or C.
                    if cancelled {
                        outcome = Some(Outcome::Rejected(ctx.reply_local(487, "Request Terminated")));
                        break 'hops;
                    }
                    if !last_hop || !provisional {
                        tracing::info!(to = %target.addr, "backend went down with the INVITE pending");
                        ctx.note_failover("backend down", last_hop);
                        fallback = (503, "Service Unavailable");
                        continue 'hops;
                    }
                    // It was ringing: a PBX that answered once may still answer; timer C bounds the wait.
                    health = None;
                }
                _ = sleep_opt(deadline) => {
                    let now = Instant::now();
                    if due(timer_a, now) {
                        ctx.proxy.transports.send(target, attempts[cur].fwd.clone());
                        a_interval *= 2;
                        timer_a = Some(now + a_interval);
                    }
                    if let Some(c) = cancel.as_mut() {
                        if due(c.next, now) {
                            ctx.proxy.transports.send(target, c.bytes.clone());
                            c.interval = (c.interval * 2).min(t.t2);
                            c.next = Some(now + c.interval);
                        }
                    }
                    if due(timer_c, now) && provisional {
                        // Timer C (RFC 3261 §16.8): a call ringing too long is cancelled; its 487 goes upstream.
                        timer_c = None;
                        cancelled = true;
                        if cancel.is_none() {
                            cancel = start_cancel(&ctx, &attempts[cur]);
                        }
                    }
                    let silent = due(timer_b, now) || (due(timer_c, now) && !provisional);
                    let cancel_expired = cancel.as_ref().is_some_and(|c| c.give_up <= now);
                    if silent || cancel_expired {
                        if cancelled {
                            outcome = Some(Outcome::Rejected(ctx.reply_local(487, "Request Terminated")));
                            break 'hops;
                        }
                        tracing::debug!(to = %target.addr, "no answer to INVITE (timer B)");
                        ctx.backend_timed_out(hop.backend, "INVITE timeout");
                        fallback = (408, "Request Timeout");
                        ctx.note_failover("timeout", last_hop);
                        continue 'hops;
                    }
                }
            }
        }
    }

    let outcome = match outcome {
        Some(o) => o,
        None => {
            let out = match best_failure {
                Some(r) => {
                    crate::metrics::final_response(r.status().unwrap_or(0), "relayed");
                    let out = r.strip_top_via();
                    ctx.upstream(out.clone());
                    out
                }
                None if cancelled => ctx.reply_local(487, "Request Terminated"),
                None => ctx.reply_local(fallback.0, fallback.1),
            };
            Outcome::Rejected(out)
        }
    };
    if matches!(outcome, Outcome::Rejected(_)) {
        ctx.proxy.dialogs.remove_early(ctx.req.call_id());
    }
    match outcome {
        // RFC 6026 Accepted (timers L and M, 64*T1): INVITE retransmissions are absorbed by the tombstone, 2xx
        // retransmissions and a same-branch ACK are relayed without state.
        Outcome::Accepted => ctx.retire(None, t.t1x64()),
        Outcome::Rejected(fin) => {
            let lean: Vec<LeanAttempt> = attempts.into_iter().map(Attempt::into_lean).collect();
            // Timer G has to run: a small task, without the request and plan this one holds.
            tokio::spawn(completed(ctx.into_linger(), fin, lean));
        }
    }
}

fn start_cancel(ctx: &Ctx, a: &Attempt) -> Option<CancelState> {
    let bytes = a.cancel()?;
    let t = ctx.proxy.settings.timers;
    ctx.proxy.transports.send(a.target, bytes.clone());
    let now = Instant::now();
    Some(CancelState {
        bytes,
        next: (!a.target.transport.is_reliable()).then(|| now + t.t1),
        interval: t.t1,
        give_up: now + t.t1x64(),
    })
}

/// What the dialog table records when this attempt's answer forms a dialog: the backend side is the attempt's
/// backend (or, for a call from a PBX, that PBX); the phone side is the caller's flow (or the phone we called).
fn new_dialog(ctx: &Ctx, a: &Attempt) -> NewDialog {
    let (home, client) = match a.backend {
        Some(b) => (Some(b), Some(ctx.src.into())),
        None => (ctx.plan.from_backend, Some(a.target)),
    };
    NewDialog { home, client, caller_cseq: ctx.req.cseq() }
}

/// The Record-Route values of a dialog-forming answer, as one buffer.
fn route_set(resp: &Message) -> Option<Bytes> {
    let mut it = resp.header_values(HeaderName::RecordRoute).peekable();
    it.peek()?;
    let mut b = bytes::BytesMut::new();
    for (i, v) in it.enumerate() {
        if i > 0 {
            b.extend_from_slice(b", ");
        }
        b.extend_from_slice(v);
    }
    Some(b.freeze())
}

/// The entry this transaction's dialog gets: a re-INVITE's is the one routing found; a new dialog's leg is set by
/// where the INVITE came from.
fn dialog_id(ctx: &Ctx, resp: &Message) -> Option<DialogId> {
    if let Some(id) = &ctx.plan.dialog {
        return Some(id.clone());
    }
    let leg = Leg::of(ctx.plan.from_backend.is_some());
    Some(DialogId::for_leg(resp.call_id(), resp.from_tag()?, resp.to_tag()?, leg))
}

/// A response for an earlier branch (after failover) or a retransmission: ACK a non-2xx final, relay a 2xx.
fn late_response<A: AttemptLike>(proxy: &Proxy, src: Source, attempts: &mut [A], resp: &Message) {
    let code = resp.status().unwrap_or(0);
    let Some(a) = attempts.iter_mut().find(|a| response_branch(resp) == Some(a.branch())) else { return };
    if (200..300).contains(&code) {
        proxy.transports.send(src.into(), resp.strip_top_via());
    } else if code >= 300 {
        if let Some(ack) = a.ack(resp) {
            proxy.transports.send(a.target(), ack);
        }
    }
}

/// What `late_response` needs of an attempt, live or lean.
trait AttemptLike {
    fn branch(&self) -> &[u8];
    fn target(&self) -> Target;
    /// The ACK for a non-2xx final on this branch: the stored one, or built from the INVITE we sent.
    fn ack(&mut self, resp: &Message) -> Option<Bytes>;
}

impl AttemptLike for Attempt {
    fn branch(&self) -> &[u8] {
        &self.branch
    }
    fn target(&self) -> Target {
        self.target
    }
    fn ack(&mut self, resp: &Message) -> Option<Bytes> {
        if self.ack.as_ref().is_none_or(|a| a.is_empty()) {
            self.ack = self.ack_for(resp);
        }
        self.ack.clone()
    }
}

impl AttemptLike for LeanAttempt {
    fn branch(&self) -> &[u8] {
        &self.branch
    }
    fn target(&self) -> Target {
        self.target
    }
    fn ack(&mut self, resp: &Message) -> Option<Bytes> {
        if let (None, Some(fwd)) = (&self.ack, &self.fwd) {
            let sent = Message::parse(fwd.clone()).ok()?;
            self.ack = Some(sent.twin_request("ACK", resp.header(HeaderName::To)));
        }
        self.ack.clone().filter(|a| !a.is_empty())
    }
}

/// Completed (RFC 3261 §17.2.1): retransmit the final answer on timer G until the ACK, give up on timer H, then
/// absorb ACK retransmissions (timer I) and the backend's final retransmissions (timer D).
async fn completed(mut ctx: Linger, fin: Bytes, mut attempts: Vec<LeanAttempt>) {
    let t = ctx.proxy.settings.timers;
    let now = Instant::now();
    let up_reliable = ctx.src.transport.is_reliable();
    let down_unreliable = attempts.iter().any(|a| !a.target.transport.is_reliable());
    let client_done = now + t.d(!down_unreliable);
    let mut g_interval = t.t1;
    let mut timer_g = (!up_reliable).then(|| now + t.t1);
    let timer_h = now + t.t1x64();
    let mut end: Option<Instant> = None;
    loop {
        let deadline = earliest(&[timer_g, Some(timer_h), end]);
        tokio::select! {
            ev = ctx.rx.recv() => match ev {
                Some(TxEvent::Retransmit) => ctx.upstream(fin.clone()),
                Some(TxEvent::Ack(..)) => {
                    if end.is_none() {
                        timer_g = None;
                        end = Some((Instant::now() + t.i_k(up_reliable)).max(client_done));
                    }
                }
                Some(TxEvent::Response(r)) => late_response(&ctx.proxy, ctx.src, &mut attempts, &r),
                Some(TxEvent::Cancel) => {}
                None => return,
            },
            _ = sleep_opt(deadline) => {
                let now = Instant::now();
                if due(end, now) || timer_h <= now {
                    return;
                }
                if due(timer_g, now) {
                    ctx.upstream(fin.clone());
                    g_interval = (g_interval * 2).min(t.t2);
                    timer_g = Some(now + g_interval);
                }
            }
        }
    }
}

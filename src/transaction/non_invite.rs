//! The non-INVITE proxy transaction (BYE, OPTIONS, REGISTER, INFO, ...): a client transaction per attempt
//! (timer E retransmits on UDP, F times out), serial failover for initial requests, then the server side's
//! Completed state (timer J answers retransmissions with the final response; K absorbs late responses).

use bytes::Bytes;
use tokio::time::Instant;

use super::timers::{due, earliest, sleep_opt};
use super::{response_branch, retryable, Ctx, TxEvent};
use crate::sip::Method;

pub(crate) async fn run(mut ctx: Ctx) {
    let t = ctx.proxy.settings.timers;
    let hops = ctx.plan.hops.clone();
    let mut last_provisional: Option<Bytes> = None;
    let mut final_up: Option<Bytes> = None;
    let mut best_failure: Option<(u16, Bytes)> = None;
    let mut fallback = (503, "Service Unavailable");

    'hops: for (i, hop) in hops.iter().enumerate() {
        let last_hop = i + 1 == hops.len();
        let Some((target, branch, fwd)) = ctx.send_attempt(hop, last_hop).await else {
            fallback = (503, "Service Unavailable");
            continue;
        };
        let start = Instant::now();
        let mut e_interval = t.t1;
        let mut timer_e = (!target.transport.is_reliable()).then(|| start + t.t1);
        let timer_f = start + t.t1x64();
        let mut health = hop.backend.and_then(|b| ctx.proxy.health.watch(b));
        loop {
            tokio::select! {
                _ = super::went_down(&mut health) => {
                    // Declared dead while the request waits on it: the next backend, or 503 now (not 408 in 32 s).
                    ctx.note_failover("backend down", last_hop);
                    fallback = (503, "Service Unavailable");
                    continue 'hops;
                }
                ev = ctx.rx.recv() => match ev {
                    None => return,
                    Some(TxEvent::Retransmit) => {
                        if let Some(p) = &last_provisional {
                            ctx.upstream(p.clone());
                        }
                    }
                    Some(TxEvent::Ack(..) | TxEvent::Cancel) => {}
                    Some(TxEvent::Response(resp)) => {
                        if response_branch(&resp) != Some(&branch[..]) {
                            continue; // an earlier attempt's late answer
                        }
                        let code = resp.status().unwrap_or(0);
                        if code < 200 {
                            // Proceeding: retransmit at T2 from now on (RFC 3261 §17.1.2.2).
                            if timer_e.is_some() {
                                e_interval = t.t2;
                                timer_e = Some(Instant::now() + t.t2);
                            }
                            if code > 100 {
                                let out = resp.strip_top_via();
                                ctx.upstream(out.clone());
                                last_provisional = Some(out);
                            }
                            continue;
                        }
                        if code == 503 {
                            ctx.backend_failed(hop.backend, "503 on a request");
                        }
                        if ctx.req.method() == Some(Method::Register) && (200..300).contains(&code) {
                            bind_registration(&ctx, &resp);
                        }
                        if !last_hop && retryable(code) {
                            ctx.note_failover("response", last_hop);
                            best_failure = Some((code, resp.strip_top_via()));
                            continue 'hops;
                        }
                        if ctx.req.method() == Some(Method::Bye) && ((200..300).contains(&code) || code == 481) {
                            if let (Some(a), Some(b)) = (resp.from_tag(), resp.to_tag()) {
                                ctx.proxy.dialogs.end(resp.call_id(), a, b);
                            }
                        }
                        let out = resp.strip_top_via();
                        ctx.relay_final(&resp);
                        ctx.upstream(out.clone());
                        final_up = Some(out);
                        break 'hops;
                    }
                },
                _ = sleep_opt(earliest(&[timer_e, Some(timer_f)])) => {
                    let now = Instant::now();
                    if timer_f <= now {
                        tracing::debug!(to = %target.addr, method = %String::from_utf8_lossy(ctx.req.method_bytes()), "no answer (timer F)");
                        ctx.backend_timed_out(hop.backend, "request timeout");
                        ctx.note_failover("timeout", last_hop);
                        fallback = (408, "Request Timeout");
                        continue 'hops;
                    }
                    if due(timer_e, now) {
                        ctx.proxy.transports.send(target, fwd.clone());
                        e_interval = (e_interval * 2).min(t.t2);
                        timer_e = Some(now + e_interval);
                    }
                }
            }
        }
    }

    let fin = match final_up {
        Some(f) => f,
        None => match best_failure {
            Some((code, b)) => {
                crate::metrics::final_response(code, "relayed");
                ctx.upstream(b.clone());
                b
            }
            None => ctx.reply_local(fallback.0, fallback.1),
        },
    };
    // Completed: a tombstone answers retransmissions with the final response for timer J (64*T1 on UDP, zero on
    // TCP). Late responses from downstream (timer K) go the stateless way and are harmless duplicates.
    let linger = t.j(ctx.src.transport.is_reliable());
    ctx.retire(Some(fin), linger);
}

/// The registrar accepted a REGISTER we added our Path to: remember the phone's flow until it expires.
fn bind_registration(ctx: &Ctx, ok: &crate::sip::Message) {
    let Some(token) = &ctx.plan.path_token else { return };
    let ttl = crate::registration::granted_expiry(&ctx.req, ok);
    let uri_of = |h| {
        let na = ctx.req.header(h).and_then(crate::sip::parse_name_addr);
        na.map(|na| Bytes::copy_from_slice(na.uri)).unwrap_or_default()
    };
    let (aor, contact) = (uri_of(crate::sip::HeaderName::To), uri_of(crate::sip::HeaderName::Contact));
    ctx.proxy.flows.bind(token.clone(), ctx.src.into(), aor, contact, ttl);
}

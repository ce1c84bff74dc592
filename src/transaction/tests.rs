//! Transaction state machines on paused tokio time: the proxy runs with capture transports, so every message it
//! sends is observed with the exact virtual time it left at, and timers are checked to the millisecond.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::config::{BackendConfig, Policy};
use crate::proxy::{Proxy, ProxyInbound, Settings};
use crate::routing::Routing;
use crate::sip::{HeaderName, Message, ResponseBuilder};
use crate::transport::{Inbound, Source, Target, Transport, Transports, Verdict};

const CLIENT: &str = "127.0.0.1:5090";
const PROXY: &str = "127.0.0.1:5060";
const PBX1: &str = "127.0.0.1:5080";
const PBX2: &str = "127.0.0.1:5082";

struct Rig {
    proxy: Arc<Proxy>,
    inbound: ProxyInbound,
    out: UnboundedReceiver<(Target, Bytes)>,
    t0: Instant,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rig(backends: &[&str]) -> Rig {
    let (transports, out) = Transports::capture(addr(PROXY));
    let cfgs: Vec<BackendConfig> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendConfig {
            name: format!("pbx{i}"),
            uri: format!("sip:{b}"),
            priority: i as u32 + 1,
            weight: 1,
            node: None,
        })
        .collect();
    let settings = Settings::for_tests("127.0.0.1");
    let proxy = Proxy::new(settings, transports, Routing::new(&cfgs, Policy::ActiveStandby));
    Rig { inbound: ProxyInbound(proxy.clone()), proxy, out, t0: Instant::now() }
}

impl Rig {
    fn send_from_client(&self, msg: &str) {
        let src = Source { transport: Transport::Udp, remote: addr(CLIENT), conn: None };
        assert_eq!(self.inbound.on_message(Bytes::from(msg.replace('\n', "\r\n")), src), Verdict::Accepted);
    }

    fn send_from_backend(&self, backend: &str, msg: Bytes) {
        let src = Source { transport: Transport::Udp, remote: addr(backend), conn: None };
        assert_eq!(self.inbound.on_message(msg, src), Verdict::Accepted);
    }

    /// The next message sent, with the virtual milliseconds since the rig started.
    async fn next(&mut self) -> (u128, Target, Message) {
        let (t, b) = self.out.recv().await.expect("proxy alive");
        (self.t0.elapsed().as_millis(), t, Message::parse(b).expect("proxy sends parseable messages"))
    }

    /// Nothing is sent for `d` of virtual time.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some((t, b))) = tokio::time::timeout(d, self.out.recv()).await {
            panic!("unexpected message to {}: {}", t.addr, String::from_utf8_lossy(&b));
        }
    }
}

fn invite(branch: &str) -> String {
    format!(
        "INVITE sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch};rport
From: <sip:alice@127.0.0.1:5090>;tag=a1
To: <sip:bob@127.0.0.1:5060>
Call-ID: call-{branch}
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5090>
Max-Forwards: 70
Content-Length: 0

"
    )
}

fn non_invite(method: &str, branch: &str) -> String {
    format!(
        "{method} sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch}
From: <sip:alice@127.0.0.1:5090>;tag=a1
To: <sip:bob@127.0.0.1:5060>
Call-ID: call-{branch}
CSeq: 7 {method}
Max-Forwards: 70
Content-Length: 0

"
    )
}

fn answer(req: &Message, code: u16) -> Bytes {
    ResponseBuilder::new(req, code, "X").to_tag(b"b1").build()
}

#[tokio::test(start_paused = true)]
async fn invite_gets_trying_and_is_forwarded_with_our_via_and_record_route() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-1"));
    let (ms, to, trying) = r.next().await;
    assert_eq!((ms, to.addr, trying.status()), (0, addr(CLIENT), Some(100)));
    let via = trying.top_via().unwrap();
    assert_eq!(via.received(), Some(&b"127.0.0.1"[..]));
    assert_eq!(via.rport(), Some(Some(5090)), "rport filled in (RFC 3581)");
    let (_, to, fwd) = r.next().await;
    assert_eq!(to.addr, addr(PBX1));
    let top = fwd.top_via().unwrap();
    assert!(r.proxy.is_own_via(&top) && top.is_rfc3261());
    let rr = String::from_utf8(fwd.header(HeaderName::RecordRoute).unwrap().to_vec()).unwrap();
    let token = rr.strip_prefix("<sip:127.0.0.1:5060;d=").and_then(|t| t.strip_suffix(";lr>")).expect(&rr);
    let key = &r.proxy.settings.token_key;
    let named = key.check_dialog_token(token.as_bytes(), b"call-z9hG4bK-1", [Some(b"a1"), None]).expect("our token");
    assert_eq!((named.backend, named.conn, named.leg), (0, None, Some(crate::dialog::Leg::FromPhone)));
    assert_eq!(fwd.max_forwards(), Some(69));
}

#[tokio::test(start_paused = true)]
async fn timer_a_doubles_and_timer_b_fails_over_then_408() {
    let mut r = rig(&[PBX1, PBX2]);
    r.send_from_client(&invite("z9hG4bK-2"));
    assert_eq!(r.next().await.2.status(), Some(100));
    let mut sends = Vec::new();
    // Timer A: 0, 500, 1500, 3500, 7500, 15500, 31500 ms; timer B at 32 s moves to the second backend.
    loop {
        let (ms, to, m) = r.next().await;
        assert!(m.is_request());
        if to.addr == addr(PBX2) {
            assert_eq!(ms, 32_000, "timer B = 64*T1");
            break;
        }
        sends.push(ms);
    }
    assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    // The second backend is silent too: 408 upstream at 64 s.
    let last = loop {
        let (ms, to, m) = r.next().await;
        if to.addr == addr(CLIENT) {
            break (ms, m.status());
        }
    };
    assert_eq!(last, (64_000, Some(408)));
    assert_eq!(r.proxy.stats.snapshot().backend_failovers, 1);
}

#[tokio::test(start_paused = true)]
async fn retransmitted_invite_is_absorbed_and_gets_the_last_provisional() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-3"));
    r.next().await; // 100
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 180));
    let (_, to, ringing) = r.next().await;
    assert_eq!((to.addr, ringing.status()), (addr(CLIENT), Some(180)));
    assert!(ringing.top_via().unwrap().branch() == Some(&b"z9hG4bK-3"[..]), "our Via stripped");
    r.send_from_client(&invite("z9hG4bK-3"));
    let (_, to, again) = r.next().await;
    assert_eq!((to.addr, again.status()), (addr(CLIENT), Some(180)));
    assert_eq!(r.proxy.stats.snapshot().retransmissions_absorbed, 1);
    r.quiet_for(Duration::from_secs(10)).await; // not forwarded again, no timer A after a provisional
}

#[tokio::test(start_paused = true)]
async fn non_2xx_is_acked_downstream_and_retransmitted_upstream_until_ack() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-4"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 486));
    let mut got = Vec::new();
    for _ in 0..5 {
        let (ms, to, m) = r.next().await;
        got.push((ms, to.addr, m.method().map(|m| m.as_str()).unwrap_or("resp"), m.status()));
    }
    let ack = got.iter().find(|g| g.2 == "ACK").expect("hop-by-hop ACK");
    assert_eq!(ack.1, addr(PBX1));
    let finals: Vec<u128> = got.iter().filter(|g| g.3 == Some(486)).map(|g| g.0).collect();
    // Timer G: 0, then 500, 1500, 3500 ms ... (capped at T2).
    assert_eq!(&finals[..4], &[0, 500, 1500, 3500]);
    let ack_from_client = non_invite("ACK", "z9hG4bK-4").replace("CSeq: 7 ACK", "CSeq: 1 ACK");
    r.send_from_client(&ack_from_client.replace("To: <sip:bob@127.0.0.1:5060>", "To: <sip:bob@127.0.0.1:5060>;tag=b1"));
    r.quiet_for(Duration::from_secs(40)).await;
    assert_eq!(r.proxy.txs.active(), 0, "transaction gone after timer D/I");
}

#[tokio::test(start_paused = true)]
async fn timer_e_caps_at_t2_and_timer_f_answers_408() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&non_invite("OPTIONS", "z9hG4bK-5"));
    let mut sends = Vec::new();
    let fin = loop {
        let (ms, to, m) = r.next().await;
        if to.addr == addr(CLIENT) {
            break (ms, m.status());
        }
        sends.push(ms);
    };
    assert_eq!(sends, [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
    assert_eq!(fin, (32_000, Some(408)));
    // Timer J: a retransmission within 64*T1 gets the 408 again; afterwards the transaction is gone.
    r.send_from_client(&non_invite("OPTIONS", "z9hG4bK-5"));
    assert_eq!(r.next().await.2.status(), Some(408));
    tokio::time::sleep(Duration::from_secs(33)).await;
    assert_eq!(r.proxy.txs.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_after_ringing_cancels_downstream_and_relays_487() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-6"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 180));
    r.next().await;
    r.send_from_client(&non_invite("CANCEL", "z9hG4bK-6").replace("CSeq: 7 CANCEL", "CSeq: 1 CANCEL"));
    let (_, to, ok) = r.next().await;
    assert_eq!((to.addr, ok.status()), (addr(CLIENT), Some(200)), "200 to the CANCEL");
    let (_, to, cancel) = r.next().await;
    assert_eq!((to.addr, cancel.method_bytes()), (addr(PBX1), &b"CANCEL"[..]));
    assert_eq!(cancel.top_via().unwrap().branch(), fwd.top_via().unwrap().branch(), "same branch as the INVITE");
    r.send_from_backend(PBX1, answer(&cancel, 200));
    r.send_from_backend(PBX1, answer(&fwd, 487));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (_, to, m) = r.next().await;
        seen.push((to.addr, m.status(), m.method_bytes().to_vec()));
    }
    assert!(seen.contains(&(addr(CLIENT), Some(487), b"INVITE".to_vec())));
    assert!(seen.iter().any(|s| s.0 == addr(PBX1) && s.2 == b"ACK"));
}

#[tokio::test(start_paused = true)]
async fn timer_c_cancels_a_call_ringing_too_long() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-7"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 180));
    r.next().await;
    let (ms, to, cancel) = r.next().await;
    assert_eq!((ms, to.addr, cancel.method_bytes()), (180_000, addr(PBX1), &b"CANCEL"[..]));
}

#[tokio::test(start_paused = true)]
async fn answers_of_our_own() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&non_invite("OPTIONS", "z9hG4bK-8").replace("sip:bob@127.0.0.1:5060", "sip:127.0.0.1:5060"));
    let (_, _, ok) = r.next().await;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.as_bytes().windows(15).any(|w| w == b"\r\nAllow: INVITE"), "Allow lists our methods");
    r.send_from_client(&invite("z9hG4bK-9").replace("Max-Forwards: 70", "Max-Forwards: 0"));
    assert_eq!(r.next().await.2.status(), Some(483));
    r.send_from_client(&non_invite("CANCEL", "z9hG4bK-none"));
    assert_eq!(r.next().await.2.status(), Some(481));
}

#[tokio::test(start_paused = true)]
async fn answered_call_is_a_confirmed_dialog_until_bye() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-10"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 200));
    assert_eq!(r.next().await.2.status(), Some(200));
    assert_eq!(r.proxy.dialogs.len(), 1);
    let bye = non_invite("BYE", "z9hG4bK-11")
        .replace("call-z9hG4bK-11", "call-z9hG4bK-10")
        .replace("To: <sip:bob@127.0.0.1:5060>", "To: <sip:bob@127.0.0.1:5060>;tag=b1")
        .replace("BYE sip:bob@127.0.0.1:5060", "BYE sip:bob@127.0.0.1:5080")
        .replace("Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>\nMax-Forwards");
    r.send_from_client(&bye);
    let (_, to, fwd_bye) = r.next().await;
    assert_eq!(to.addr, addr(PBX1));
    assert!(fwd_bye.header(HeaderName::Route).is_none(), "our Route popped");
    r.send_from_backend(PBX1, answer(&fwd_bye, 200));
    assert_eq!(r.next().await.2.status(), Some(200));
    assert!(r.proxy.dialogs.is_empty());
}

#[tokio::test(start_paused = true)]
async fn ack_reusing_the_invite_branch_after_2xx_is_relayed_end_to_end() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-12"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 200));
    assert_eq!(r.next().await.2.status(), Some(200));
    let ack = non_invite("ACK", "z9hG4bK-12")
        .replace("CSeq: 7 ACK", "CSeq: 1 ACK")
        .replace("To: <sip:bob@127.0.0.1:5060>", "To: <sip:bob@127.0.0.1:5060>;tag=b1")
        .replace("ACK sip:bob@127.0.0.1:5060", "ACK sip:bob@127.0.0.1:5080")
        .replace("Max-Forwards", "Route: <sip:127.0.0.1:5060;lr>\nMax-Forwards");
    r.send_from_client(&ack);
    let (_, to, relayed) = r.next().await;
    assert_eq!((to.addr, relayed.method_bytes()), (addr(PBX1), &b"ACK"[..]));
}

#[tokio::test(start_paused = true)]
async fn without_ack_timer_g_retransmits_until_timer_h() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-13"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    r.send_from_backend(PBX1, answer(&fwd, 603));
    let mut finals = Vec::new();
    while let Ok(Some((t, b))) = tokio::time::timeout(Duration::from_secs(40), r.out.recv()).await {
        let m = Message::parse(b).unwrap();
        if t.addr == addr(CLIENT) {
            finals.push(r.t0.elapsed().as_millis());
            assert_eq!(m.status(), Some(603));
        }
    }
    // G doubles from T1 and is capped at T2 (4 s); H ends it at 64*T1 = 32 s.
    assert_eq!(finals, [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
    assert_eq!(r.proxy.txs.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn retransmitted_2xx_is_relayed_while_accepted() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-14"));
    r.next().await;
    let (_, _, fwd) = r.next().await;
    let ok = answer(&fwd, 200);
    r.send_from_backend(PBX1, ok.clone());
    assert_eq!(r.next().await.2.status(), Some(200));
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.send_from_backend(PBX1, ok.clone());
    let (_, to, again) = r.next().await;
    assert_eq!((to.addr, again.status()), (addr(CLIENT), Some(200)));
    // INVITE retransmissions are absorbed without an answer in Accepted (RFC 6026), by a tombstone.
    assert_eq!((r.proxy.txs.active(), r.proxy.txs.lingering()), (0, 1));
    r.send_from_client(&invite("z9hG4bK-14"));
    r.quiet_for(Duration::from_secs(29)).await;
    assert_eq!(r.proxy.txs.sweep(Instant::now()), 0, "still within 64*T1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.proxy.txs.sweep(Instant::now()), 1, "timers L/M ended it");
    assert_eq!(r.proxy.txs.lingering(), 0);
    // After that, a stray 2xx is still relayed statelessly by its Via.
    r.send_from_backend(PBX1, ok);
    let (_, to, stray) = r.next().await;
    assert_eq!((to.addr, stray.status()), (addr(CLIENT), Some(200)));
}

#[tokio::test(start_paused = true)]
async fn ack_for_our_own_483_ends_here_and_ack_with_max_forwards_0_is_dropped() {
    let mut r = rig(&[PBX1]);
    r.send_from_client(&invite("z9hG4bK-15").replace("Max-Forwards: 70", "Max-Forwards: 0"));
    let (_, _, too_many) = r.next().await;
    assert_eq!(too_many.status(), Some(483));
    let tag = String::from_utf8(too_many.to_tag().unwrap().to_vec()).unwrap();
    assert!(r.proxy.is_local_tag(tag.as_bytes()));
    let ack = non_invite("ACK", "z9hG4bK-15")
        .replace("CSeq: 7 ACK", "CSeq: 1 ACK")
        .replace("To: <sip:bob@127.0.0.1:5060>", &format!("To: <sip:bob@127.0.0.1:5060>;tag={tag}"));
    r.send_from_client(&ack);
    let stray = non_invite("ACK", "z9hG4bK-16")
        .replace("CSeq: 7 ACK", "CSeq: 1 ACK")
        .replace("To: <sip:bob@127.0.0.1:5060>", "To: <sip:bob@127.0.0.1:5060>;tag=remote")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    r.send_from_client(&stray);
    r.quiet_for(Duration::from_secs(1)).await;
    let s = r.proxy.stats.snapshot();
    assert_eq!((s.acks_absorbed, s.unroutable_acks), (1, 1));
}

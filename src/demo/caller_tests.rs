//! The call generator against the test PBX, both pure: datagrams handed across by hand, the clock passed in.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{CallStats, Caller, MAX_TRIES};
use crate::demo::pbx::{Uas, RING};
use crate::sip::{HeaderName, Message, Method};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const ME: &str = "127.0.9.50:5555";
const VIP: &str = "127.0.9.100:5060";
const PBX: &str = "127.0.9.21:5060";

fn caller(hold: Duration) -> (Caller, Arc<CallStats>) {
    let stats = Arc::new(CallStats::default());
    (Caller::new(addr(ME), addr(VIP), hold, stats.clone(), 42), stats)
}

fn one(out: Vec<(Bytes, SocketAddr)>) -> Bytes {
    assert_eq!(out.len(), 1, "one datagram");
    assert_eq!(out[0].1, addr(VIP), "everything goes to the pseudo-VIP");
    out.into_iter().next().unwrap().0
}

/// Like a proxy that adds a Record-Route: the PBX sees it, the caller gets it back in the 200.
fn via_proxy(b: &Bytes) -> Bytes {
    let s = String::from_utf8_lossy(b).replacen("\r\n", "\r\nRecord-Route: <sip:127.0.9.100:5060;lr;sft=t>\r\n", 1);
    Bytes::from(s)
}

#[test]
fn a_call_is_placed_answered_acked_held_and_hung_up() {
    let (mut c, stats) = caller(Duration::from_secs(2));
    let mut pbx = Uas::new(addr(PBX));
    let t0 = Instant::now();
    let inv = one(c.place(t0));
    let m = Message::parse(inv.clone()).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert!(m.top_via().unwrap().rport().is_some(), "rport: answers come back through the relay's leg");
    // The caller's Via asks for rport, so the PBX answers the packet's source, which is the caller here.
    let out = pbx.on_datagram(via_proxy(&inv), addr(ME), t0);
    for (b, _) in out {
        assert!(c.on_datagram(b, t0).is_empty(), "provisional answers need nothing");
    }
    let ok = pbx.on_timer(t0 + RING);
    let ack = one(c.on_datagram(ok[0].0.clone(), t0 + RING));
    assert_eq!(stats.answered.load(Ordering::Relaxed), 1);
    let ack_m = Message::parse(ack.clone()).unwrap();
    assert_eq!(ack_m.method(), Some(Method::Ack));
    assert_eq!(ack_m.request_uri(), format!("sip:pbx@{PBX}").as_bytes(), "to the Contact");
    assert_eq!(ack_m.header(HeaderName::Route), Some(&b"<sip:127.0.9.100:5060;lr;sft=t>"[..]));
    assert!(pbx.on_datagram(ack, addr(ME), t0 + RING).is_empty());

    // The hold is 2 s ± 50 %: the BYE is due within [1 s, 3 s].
    let bye_at = c.next_deadline().unwrap();
    assert!(bye_at >= t0 + RING + Duration::from_secs(1) && bye_at <= t0 + RING + Duration::from_secs(3));
    let bye = one(c.on_timer(bye_at));
    let bye_m = Message::parse(bye.clone()).unwrap();
    assert_eq!((bye_m.method(), bye_m.cseq()), (Some(Method::Bye), 2));
    assert_ne!(bye_m.top_via().unwrap().branch(), ack_m.top_via().unwrap().branch(), "a branch per transaction");
    let answer = pbx.on_datagram(bye, addr(ME), bye_at);
    assert!(c.on_datagram(answer[0].0.clone(), bye_at).is_empty());
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!((g(&stats.placed), g(&stats.ended), g(&stats.failed), g(&stats.active)), (1, 1, 0, 0));
}

#[test]
fn an_unanswered_invite_is_sent_seven_times_then_fails() {
    let (mut c, stats) = caller(Duration::from_secs(2));
    let t0 = Instant::now();
    c.place(t0);
    let mut sends = 1;
    let mut now = t0;
    while let Some(next) = c.next_deadline() {
        now = next;
        sends += c.on_timer(now).len();
    }
    assert_eq!(sends as u32, MAX_TRIES);
    assert_eq!(now - t0, Duration::from_millis(500) * 64, "timer B");
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert!(stats.failures_after(0)[0].1.contains("INVITE: no final answer"));
}

#[test]
fn a_busy_answer_is_acked_and_counted_failed_with_its_reason() {
    let (mut c, stats) = caller(Duration::from_secs(2));
    let t0 = Instant::now();
    let inv = Message::parse(one(c.place(t0))).unwrap();
    let busy = crate::sip::ResponseBuilder::new(&inv, 486, "Busy Here").to_tag(b"b1").build();
    let ack = Message::parse(one(c.on_datagram(busy, t0))).unwrap();
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(ack.top_via().unwrap().branch(), inv.top_via().unwrap().branch(), "the INVITE's branch");
    assert_eq!(stats.failures_after(0)[0].1.split(": ").nth(1), Some("INVITE answered 486 Busy Here"));
    assert_eq!(c.active(), 0);
}

#[test]
fn draining_hangs_up_at_once_and_places_no_more() {
    let (mut c, stats) = caller(Duration::from_secs(60));
    let mut pbx = Uas::new(addr(PBX));
    let t0 = Instant::now();
    let inv = one(c.place(t0));
    pbx.on_datagram(inv, addr(ME), t0);
    let ok = pbx.on_timer(t0 + RING);
    c.on_datagram(ok[0].0.clone(), t0 + RING);
    c.drain(t0 + RING);
    assert!(c.place(t0 + RING).is_empty());
    let bye = one(c.on_timer(t0 + RING));
    let answer = pbx.on_datagram(bye, addr(ME), t0 + RING);
    c.on_datagram(answer[0].0.clone(), t0 + RING);
    assert_eq!((stats.ended.load(Ordering::Relaxed), c.active()), (1, 0));
}

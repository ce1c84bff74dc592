//! The test PBX's answers, parsed back: no sockets, the clock passed in.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Uas, MAX_OK_RETRANSMITS, RING};
use crate::sip::{HeaderName, Message};

const LISTEN: &str = "127.0.9.21:5060";
/// A node's listener: where its requests come from.
const NODE: &str = "127.0.9.11:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn req(method: &str, call: &str, via: &str, extra: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:demo@{LISTEN} SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\nMax-Forwards: 69\r\n\
         From: <sip:caller@127.0.9.50>;tag=abc\r\nTo: <sip:demo@127.0.9.100>{to}\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        to = if method == "BYE" || method == "ACK" { ";tag=x" } else { "" },
        cseq = if method == "BYE" { 2 } else { 1 },
    ))
}

fn invite(call: &str, branch: &str) -> Bytes {
    let rr = "Record-Route: <sip:127.0.9.100:5060;lr;sft=tok>\r\nContact: <sip:caller@127.0.9.50:5555>\r\n";
    req("INVITE", call, &format!("127.0.9.100:5060;branch={branch}"), rr)
}

fn parse(out: &[(Bytes, SocketAddr)]) -> Vec<(Message, SocketAddr)> {
    out.iter().map(|(b, to)| (Message::parse(b.clone()).expect("parses"), *to)).collect()
}

fn text(m: &Message, h: HeaderName) -> String {
    String::from_utf8_lossy(m.header(h).unwrap_or_default()).into_owned()
}

#[test]
fn options_is_answered_200_to_the_source_when_rport_is_asked() {
    let mut uas = Uas::new(addr(LISTEN));
    let probe = req("OPTIONS", "p1", "127.0.9.11:40000;branch=z9hG4bKp;rport", "");
    let out = parse(&uas.on_datagram(probe, addr("127.0.9.11:40000"), Instant::now()));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.status(), out[0].1), (Some(200), addr("127.0.9.11:40000")));
}

#[test]
fn invite_rings_then_answers_with_sdp_until_acked() {
    let mut uas = Uas::new(addr(LISTEN));
    let t0 = Instant::now();
    let out = parse(&uas.on_datagram(invite("c1", "z9hG4bK1"), addr(NODE), t0));
    let codes: Vec<_> = out.iter().map(|(m, _)| m.status().unwrap()).collect();
    assert_eq!(codes, [100, 180]);
    // Answers go to the top Via's sent-by: the pseudo-VIP, which relays to the leader of the moment.
    assert!(out.iter().all(|(_, to)| *to == addr("127.0.9.100:5060")));
    let tag = out[1].0.to_tag().expect("180 has a tag").to_vec();
    assert_eq!(uas.next_deadline(), Some(t0 + RING));

    let ok = parse(&uas.on_timer(t0 + RING));
    assert_eq!(ok.len(), 1);
    let m = &ok[0].0;
    assert_eq!(m.status(), Some(200));
    assert_eq!(m.to_tag(), Some(&tag[..]), "same tag as the 180");
    assert_eq!(text(m, HeaderName::Contact), format!("<sip:pbx@{LISTEN}>"));
    assert_eq!(text(m, HeaderName::RecordRoute), "<sip:127.0.9.100:5060;lr;sft=tok>");
    assert_eq!(text(m, HeaderName::ContentType), "application/sdp");
    assert!(m.body().starts_with(b"v=0\r\n"), "an SDP body");

    // No ACK: sent again on T1 doubling (capped at T2), at most MAX_OK_RETRANSMITS times.
    let mut now = t0 + RING;
    let mut sent = Vec::new();
    while let Some(next) = uas.next_deadline() {
        let gap = next - now;
        now = next;
        if !uas.on_timer(now).is_empty() {
            sent.push(gap);
        }
    }
    assert_eq!(sent.len() as u32, MAX_OK_RETRANSMITS);
    assert_eq!(&sent[..4], [500, 1000, 2000, 4000].map(Duration::from_millis));
    assert_eq!(sent[6], Duration::from_secs(4), "capped at T2");
}

#[test]
fn ack_stops_the_200_and_bye_ends_the_call() {
    let mut uas = Uas::new(addr(LISTEN));
    let t0 = Instant::now();
    uas.on_datagram(invite("c2", "z9hG4bK2"), addr(NODE), t0);
    uas.on_timer(t0 + RING);
    assert!(uas.on_datagram(req("ACK", "c2", "127.0.9.100:5060;branch=z9hG4bKa", ""), addr(NODE), t0).is_empty());
    assert_eq!(uas.next_deadline(), None, "no more retransmissions");
    let bye = parse(&uas.on_datagram(req("BYE", "c2", "127.0.9.100:5060;branch=z9hG4bKb", ""), addr(NODE), t0));
    assert_eq!(bye[0].0.status(), Some(200));
    assert_eq!(uas.calls(), 0);
}

#[test]
fn bye_for_an_unknown_call_is_answered_200() {
    let mut uas = Uas::new(addr(LISTEN));
    let out = parse(&uas.on_datagram(
        req("BYE", "never", "127.0.9.100:5060;branch=z9hG4bKz", ""),
        addr(NODE),
        Instant::now(),
    ));
    assert_eq!(out[0].0.status(), Some(200));
}

#[test]
fn cancel_while_ringing_gives_487_and_after_the_answer_only_200() {
    let mut uas = Uas::new(addr(LISTEN));
    let t0 = Instant::now();
    uas.on_datagram(invite("c3", "z9hG4bK3"), addr(NODE), t0);
    let cancel = req("CANCEL", "c3", "127.0.9.100:5060;branch=z9hG4bK3", "");
    let out = parse(&uas.on_datagram(cancel.clone(), addr(NODE), t0));
    let got: Vec<_> = out.iter().map(|(m, _)| (m.status().unwrap(), m.cseq_method())).collect();
    assert_eq!(got, [(200, crate::sip::Method::Cancel), (487, crate::sip::Method::Invite)]);
    assert_eq!(uas.calls(), 0);

    uas.on_datagram(invite("c4", "z9hG4bK4"), addr(NODE), t0);
    uas.on_timer(t0 + RING);
    let late = req("CANCEL", "c4", "127.0.9.100:5060;branch=z9hG4bK4", "");
    let out = parse(&uas.on_datagram(late, addr(NODE), t0 + RING));
    assert_eq!(out.len(), 1, "answered already: nothing to cancel");
    assert_eq!(out[0].0.status(), Some(200));
}

#[test]
fn an_invite_again_through_another_node_is_answered_again_with_the_same_tag() {
    let mut uas = Uas::new(addr(LISTEN));
    let t0 = Instant::now();
    uas.on_datagram(invite("c5", "z9hG4bKold"), addr(NODE), t0);
    let first = parse(&uas.on_timer(t0 + RING));
    let again = parse(&uas.on_datagram(invite("c5", "z9hG4bKnew"), addr("127.0.9.12:5060"), t0 + RING));
    let ok = again.iter().find(|(m, _)| m.status() == Some(200)).expect("the 200 again");
    assert_eq!(ok.0.to_tag(), first[0].0.to_tag());
    assert_eq!(ok.0.top_via().unwrap().branch(), Some(&b"z9hG4bKnew"[..]), "the new request's Via");
}

#[test]
fn other_methods_get_501() {
    let mut uas = Uas::new(addr(LISTEN));
    let out =
        parse(&uas.on_datagram(req("INFO", "c6", "127.0.9.100:5060;branch=z9hG4bK6", ""), addr(NODE), Instant::now()));
    assert_eq!(out[0].0.status(), Some(501));
    assert!(out[0].0.to_tag().is_some());
}

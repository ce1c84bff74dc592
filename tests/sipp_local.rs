//! What the real `sipfront` binary answers itself: OPTIONS addressed to it, Max-Forwards exhausted (483) and the
//! ACK of such an answer, a request that comes back to it through a backend pointing at itself (482), a CANCEL
//! that matches nothing (481); and the transaction layer's handling of INVITE and 2xx retransmissions. Raw
//! sockets are the client (and, where it matters, the PBX): the tests read every byte sipfront sends. Test numbers (see tests/common/mod.rs): 50-59.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(3);

/// A datagram client's next message, or panic.
fn expect_udp(peer: &UdpPeer, what: &str) -> SipMsg {
    peer.recv_msg(WAIT).unwrap_or_else(|| panic!("no {what} within {WAIT:?}"))
}

fn assert_options_ok(resp: &SipMsg, local: std::net::SocketAddr, cid: &str) {
    assert_eq!(resp.status(), Some(200), "OPTIONS answer: {resp:#?}");
    assert_eq!(resp.header("Call-ID"), Some(cid));
    assert_eq!(resp.header("CSeq"), Some("1 OPTIONS"));
    let allow = resp.header_values("Allow");
    for m in ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"] {
        assert!(allow.iter().any(|a| a == m), "Allow should list {m}: {allow:?}");
    }
    assert!(resp.header("To").is_some_and(|t| t.contains(";tag=")), "a To tag: {resp:#?}");
    let via = resp.header_values("Via");
    assert_eq!(via.len(), 1, "{via:?}");
    assert!(via[0].contains(&format!("rport={}", local.port())), "rport filled in: {via:?}");
    assert!(via[0].contains(&format!("branch=z9hG4bK-{cid}")), "the client's own Via comes back: {via:?}");
}

#[test]
fn options_to_sipfront_udp() {
    let mut h = Harness::new("options_to_sipfront_udp", 50);
    // A backend nobody answers on: OPTIONS to sipfront must not go there.
    let backend = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    for (i, ruri) in [format!("sip:{}", h.sipfront()), format!("sip:{};transport=udp", h.sipfront())].iter().enumerate()
    {
        let cid = format!("opt-udp-{i}");
        c.send(
            request("OPTIONS", ruri, c.local, Tp::Udp, &cid, "Accept: application/sdp\r\n").as_bytes(),
            h.sipfront(),
        );
        let resp = expect_udp(&c, "200 to OPTIONS");
        assert_options_ok(&resp, c.local, &cid);
    }
    assert!(c.recv(Duration::from_millis(300)).is_none(), "one answer per OPTIONS");
    assert!(backend.recv(Duration::from_millis(100)).is_none(), "OPTIONS to sipfront must not be forwarded");
}

#[test]
fn options_to_sipfront_tcp() {
    let mut h = Harness::new("options_to_sipfront_tcp", 51);
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Tcp));
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    // Two on the same connection: it stays open after an answer.
    for i in 0..2 {
        let cid = format!("opt-tcp-{i}");
        let ruri = format!("sip:{};transport=tcp", h.sipfront());
        c.send(request("OPTIONS", &ruri, c.local, Tp::Tcp, &cid, "").as_bytes()).expect("send");
        let resp = c.expect_msg(WAIT, "200 to OPTIONS");
        assert_options_ok(&resp, c.local, &cid);
    }
    // A CRLF CRLF keep-alive ping gets a CRLF pong (RFC 5626) and the connection stays usable.
    c.send(b"\r\n\r\n").expect("send ping");
    let cid = "opt-tcp-after-ping";
    c.send(request("OPTIONS", &format!("sip:{}", h.sipfront()), c.local, Tp::Tcp, cid, "").as_bytes()).expect("send");
    let resp = c.expect_msg(WAIT, "200 after a ping");
    assert_options_ok(&resp, c.local, cid);
}

#[test]
fn max_forwards_zero_gets_483() {
    let mut h = Harness::new("max_forwards_zero_gets_483", 52);
    let backend = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let ruri = format!("sip:service@{}", h.sipfront());

    // UDP: requests with Max-Forwards 0 are answered 483 and go nowhere.
    let c = UdpPeer::bind(h.front_ip());
    for method in ["INVITE", "BYE", "MESSAGE"] {
        let cid = format!("mf0-udp-{method}");
        c.send(request(method, &ruri, c.local, Tp::Udp, &cid, "Max-Forwards: 0\r\n").as_bytes(), h.sipfront());
        let resp = expect_udp(&c, "483");
        assert_eq!((resp.status(), resp.reason()), (Some(483), "Too Many Hops"), "{method}: {resp:#?}");
        assert_eq!(resp.header("Call-ID"), Some(cid.as_str()));
        assert_eq!(resp.cseq_method(), Some(method));
        assert!(resp.header("To").is_some_and(|t| t.contains(";tag=")), "{resp:#?}");
    }
    // OPTIONS with Max-Forwards 0 is answered by sipfront itself (RFC 3261 16.3 step 3), even when not for it.
    let cid = "mf0-options";
    c.send(request("OPTIONS", &ruri, c.local, Tp::Udp, cid, "Max-Forwards: 0\r\n").as_bytes(), h.sipfront());
    let resp = expect_udp(&c, "200 to OPTIONS with Max-Forwards 0");
    assert_eq!(resp.status(), Some(200), "{resp:#?}");
    assert!(c.recv(Duration::from_millis(300)).is_none(), "nothing more for the UDP client");

    // TCP too.
    let mut t = TcpPeer::connect(h.front_ip(), h.sipfront());
    let cid = "mf0-tcp";
    t.send(request("INVITE", &ruri, t.local, Tp::Tcp, cid, "Max-Forwards: 0\r\n").as_bytes()).expect("send");
    let resp = t.expect_msg(WAIT, "483 over TCP");
    assert_eq!(resp.status(), Some(483), "{resp:#?}");
    assert_eq!(resp.header("Call-ID"), Some(cid));

    // Max-Forwards 1 is still forwarded, with 0; and it is the first thing the backend sees.
    let cid = "mf1";
    c.send(request("MESSAGE", &ruri, c.local, Tp::Udp, cid, "Max-Forwards: 1\r\n").as_bytes(), h.sipfront());
    let fwd = backend.recv_msg(WAIT).expect("MESSAGE with Max-Forwards 1 should reach the backend");
    assert_eq!(fwd.header("Call-ID"), Some(cid), "only this request reaches the backend: {fwd:#?}");
    assert_eq!(fwd.header("Max-Forwards"), Some("0"));
}

/// The ACK for a client's INVITE answered with `resp` (same branch, the response's To).
fn ack_for(invite: &str, resp: &SipMsg, max_forwards: u32) -> String {
    let inv = SipMsg::parse(invite.as_bytes()).unwrap();
    let ruri = inv.request_uri().unwrap();
    format!(
        "ACK {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: {max_forwards}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        inv.header("Via").unwrap(),
        inv.header("From").unwrap(),
        resp.header("To").unwrap(),
        inv.header("Call-ID").unwrap()
    )
}

/// Send a MESSAGE through sipfront and return the first datagram the backend got after that: it must be the
/// MESSAGE, or something sent earlier leaked through.
fn first_at_backend_after_marker(h: &Harness, c: &UdpPeer, backend: &UdpPeer) -> SipMsg {
    let ruri = format!("sip:service@{}", h.sipfront());
    c.send(request("MESSAGE", &ruri, c.local, Tp::Udp, "marker", "").as_bytes(), h.sipfront());
    backend.recv_msg(WAIT).expect("the marker MESSAGE should reach the backend")
}

#[test]
fn ack_for_local_483_is_absorbed() {
    let mut h = Harness::new("ack_for_local_483_is_absorbed", 55);
    let backend = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:service@{}", h.sipfront());
    let invite = request("INVITE", &ruri, c.local, Tp::Udp, "ack483", "Max-Forwards: 0\r\n");
    c.send(invite.as_bytes(), h.sipfront());
    let resp = expect_udp(&c, "483");
    assert_eq!(resp.status(), Some(483), "{resp:#?}");
    // The ACK for sipfront's own non-2xx is hop-by-hop: it ends at sipfront.
    c.send(ack_for(&invite, &resp, 70).as_bytes(), h.sipfront());
    let first = first_at_backend_after_marker(&h, &c, &backend);
    assert_eq!(
        first.header("Call-ID"),
        Some("marker"),
        "the ACK for sipfront's own 483 must not be forwarded, but the backend got:\n{first:#?}"
    );
    assert!(c.recv(Duration::from_millis(200)).is_none(), "no answer to an ACK");
}

#[test]
fn ack_with_max_forwards_zero_not_forwarded() {
    let mut h = Harness::new("ack_with_max_forwards_zero_not_forwarded", 56);
    let backend = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:{}", h.pbx(PBX1_PORT));
    // An ACK in a dialog sipfront has no transaction for (it would be relayed statelessly) but no hop left.
    let ack = request("ACK", &ruri, c.local, Tp::Udp, "ack-mf0", "Max-Forwards: 0\r\n")
        .replace(&format!("To: <{ruri}>"), &format!("To: <{ruri}>;tag=far-end"));
    c.send(ack.as_bytes(), h.sipfront());
    let first = first_at_backend_after_marker(&h, &c, &backend);
    assert_eq!(
        first.header("Call-ID"),
        Some("marker"),
        "an ACK with Max-Forwards 0 must not be forwarded, but the backend got:\n{first:#?}"
    );
    assert!(c.recv(Duration::from_millis(200)).is_none(), "no answer to an ACK");
}

/// A backend that is sipfront itself: the request comes back with sipfront's own Via and the same loop hash.
fn loop_detected(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    h.start_sipfront(&FrontConfig::new().backend("myself", h.sipfront(), tp));
    let ruri = format!("sip:service@{}", h.sipfront());
    let cid = format!("loop-{}", tp.lower());
    let invite = request("INVITE", &ruri, h.sipfront(), tp, &cid, "Contact: <sip:tester@127.0.0.1>\r\n");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    match tp {
        Tp::Udp => {
            let c = UdpPeer::bind(h.front_ip());
            c.send(invite.replace(&h.sipfront().to_string(), &c.local.to_string()).as_bytes(), h.sipfront());
            while let Some(m) = c.recv_msg_until(deadline) {
                let done = m.status().is_some_and(|s| s >= 200);
                got.push(m);
                if done {
                    break;
                }
            }
        }
        Tp::Tcp => {
            let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
            let local = c.local.to_string();
            c.send(invite.replace(&format!("TCP {}", h.sipfront()), &format!("TCP {local}")).as_bytes()).expect("send");
            while let TcpRead::Msg(m) = c.recv(deadline.saturating_duration_since(Instant::now())) {
                let done = m.status().is_some_and(|s| s >= 200);
                got.push(m);
                if done {
                    break;
                }
            }
        }
    }
    let codes: Vec<Option<u16>> = got.iter().map(|m| m.status()).collect();
    assert_eq!(codes, [Some(100), Some(482)], "answers to an INVITE that loops back: {got:#?}");
    let fin = &got[1];
    assert_eq!(fin.reason(), "Loop Detected");
    assert_eq!(fin.header_values("Via").len(), 1, "only the client's Via is left: {fin:#?}");
    assert_eq!(fin.header("Call-ID"), Some(cid.as_str()));
    assert!(h.sipfront_alive(), "sipfront died:\n{}", h.front_log_text());
}

#[test]
fn loop_detected_udp() {
    loop_detected("loop_detected_udp", 53, Tp::Udp);
}

#[test]
fn loop_detected_tcp() {
    loop_detected("loop_detected_tcp", 54, Tp::Tcp);
}

/// A PBX answer to a forwarded request: its Vias, From, To (with `to_tag`), Call-ID and CSeq copied.
fn answer(req: &SipMsg, code: u16, reason: &str, to_tag: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.header_values("Via") {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        s.push_str(&format!("{name}: {}\r\n", req.header(name).unwrap()));
    }
    s.push_str(&format!("To: {};tag={to_tag}\r\nContent-Length: 0\r\n\r\n", req.header("To").unwrap()));
    s
}

#[test]
fn invite_retransmissions_absorbed_and_2xx_retransmissions_relayed_udp() {
    let mut h = Harness::new("invite_retransmissions_absorbed_udp", 57);
    let pbx = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:service@{}", h.sipfront());
    let invite = request("INVITE", &ruri, c.local, Tp::Udp, "retrans", "Contact: <sip:tester@127.0.0.57>\r\n");
    c.send(invite.as_bytes(), h.sipfront());
    assert_eq!(expect_udp(&c, "100").status(), Some(100));
    let fwd = pbx.recv_msg(WAIT).expect("INVITE at the PBX");
    pbx.send(answer(&fwd, 180, "Ringing", "pbx").as_bytes(), h.sipfront());
    assert_eq!(expect_udp(&c, "180").status(), Some(180));

    // The caller retransmits while it rings: it gets the 180 again, the PBX gets nothing.
    c.send(invite.as_bytes(), h.sipfront());
    let again = expect_udp(&c, "the 180 again");
    assert_eq!(again.status(), Some(180), "a retransmitted INVITE gets the latest provisional: {again:#?}");
    assert!(pbx.recv(Duration::from_millis(300)).is_none(), "the retransmission must not be forwarded");

    // 200, then the PBX retransmits it (it has no ACK yet): both reach the caller.
    let ok = answer(&fwd, 200, "OK", "pbx");
    pbx.send(ok.as_bytes(), h.sipfront());
    assert_eq!(expect_udp(&c, "200").status(), Some(200));
    pbx.send(ok.as_bytes(), h.sipfront());
    assert_eq!(expect_udp(&c, "the retransmitted 200").status(), Some(200), "2xx retransmissions are relayed");
    // A late INVITE retransmission after the 200 is absorbed (RFC 6026 Accepted state).
    c.send(invite.as_bytes(), h.sipfront());
    assert!(pbx.recv(Duration::from_millis(300)).is_none(), "an INVITE retransmission after the 200 must stay");
}

#[test]
fn cancel_without_transaction_gets_481() {
    let mut h = Harness::new("cancel_without_transaction_gets_481", 58);
    let pbx = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:service@{}", h.sipfront());
    c.send(request("CANCEL", &ruri, c.local, Tp::Udp, "cancel-nothing", "").as_bytes(), h.sipfront());
    let resp = expect_udp(&c, "481");
    assert_eq!(resp.status(), Some(481), "{resp:#?}");
    assert!(pbx.recv(Duration::from_millis(300)).is_none(), "a CANCEL that matches nothing is not forwarded");
}

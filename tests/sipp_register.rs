//! Registrations and route tokens through the real `sipfront` binary. A phone registers through sipfront (which
//! adds `Path: <sip:TOKEN@sipfront;lr;ob>`), the PBX answers and later calls the phone through that Path, and the
//! INVITE reaches the phone on its own address (UDP) or its own connection (TCP); once the flow is gone (the
//! connection closed, or the phone de-registered) the PBX gets 430 Flow Failed. Tokens that do not verify are
//! refused with 403: a tampered Path user part, a tampered Record-Route `d=` token, and a genuine `d=` token
//! moved to another dialog.
//!
//! The phone and the registrar are raw sockets ([`RustPbx`] answers sipfront's probes on its own): they read every
//! byte sipfront sends. The Record-Route tests call a SIPp PBX (tests/sipp/uas_health.xml). Test numbers (see
//! tests/common/mod.rs): 90-93, 95-96 and 99.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(3);

/// A phone: one UDP socket on 127.0.0.N:5090, or one TCP connection to sipfront.
enum Phone {
    Udp { peer: UdpPeer, front: SocketAddr },
    Tcp(TcpPeer),
}

impl Phone {
    fn open(h: &Harness, tp: Tp) -> Phone {
        Phone::open_at(h, tp, UAC_PORT)
    }

    /// A phone on its own UDP port (TCP: an ephemeral port anyway).
    fn open_at(h: &Harness, tp: Tp, port: u16) -> Phone {
        match tp {
            Tp::Udp => Phone::Udp { peer: UdpPeer::bind_addr(h.front(port)), front: h.sipfront() },
            Tp::Tcp => Phone::Tcp(TcpPeer::connect(h.front_ip(), h.sipfront())),
        }
    }

    fn tp(&self) -> Tp {
        match self {
            Phone::Udp { .. } => Tp::Udp,
            Phone::Tcp(_) => Tp::Tcp,
        }
    }

    fn local(&self) -> SocketAddr {
        match self {
            Phone::Udp { peer, .. } => peer.local,
            Phone::Tcp(c) => c.local,
        }
    }

    /// The Contact it registers and answers with.
    fn contact(&self) -> String {
        format!("sip:1001@{};transport={}", self.local(), self.tp().lower())
    }

    fn send(&mut self, text: &str) {
        match self {
            Phone::Udp { peer, front } => peer.send(text.as_bytes(), *front),
            Phone::Tcp(c) => c.send(text.as_bytes()).expect("phone: TCP send"),
        }
    }

    fn recv(&mut self, wait: Duration) -> Option<SipMsg> {
        match self {
            Phone::Udp { peer, .. } => peer.recv_msg(wait),
            Phone::Tcp(c) => match c.recv(wait) {
                TcpRead::Msg(m) => Some(m),
                _ => None,
            },
        }
    }

    fn expect(&mut self, what: &str) -> SipMsg {
        self.recv(WAIT).unwrap_or_else(|| panic!("the phone got no {what} within {WAIT:?}"))
    }

    /// The next final response (provisionals skipped).
    fn expect_final(&mut self, what: &str) -> SipMsg {
        loop {
            let m = self.expect(what);
            if m.status().is_some_and(|c| c >= 200) {
                return m;
            }
        }
    }
}

/// The PBX's next final response (provisionals and stray requests skipped).
fn pbx_final(pbx: &RustPbx, what: &str) -> SipMsg {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (m, _) = pbx.expect(left, what);
        if m.status().is_some_and(|c| c >= 200) {
            return m;
        }
    }
}

fn sipfront_with(h: &mut Harness, pbx: &RustPbx) {
    h.start_sipfront(&FrontConfig::new().backend("pbx1", pbx.addr, pbx.tp));
}

/// What the PBX sees of a registration and keeps.
struct Registered {
    /// Our Path, as the PBX got it (a name-addr: `<sip:TOKEN@...;lr;ob>`).
    path: String,
    contact: String,
}

/// The phone registers for `expires` seconds; the PBX checks sipfront's Path and answers 200 with the Contact.
fn register(h: &Harness, phone: &mut Phone, pbx: &RustPbx, expires: u32, cseq: u32) -> Registered {
    let contact = phone.contact();
    phone.send(&register_text(h, phone, expires, cseq));
    let (reg, reply) = pbx.expect(WAIT, "REGISTER");
    let me = h.sipfront();
    assert_eq!(reg.method(), Some("REGISTER"), "{reg:#?}");
    assert_eq!(reg.request_uri(), Some(format!("sip:{me}").as_str()), "REGISTER Request-URI kept");
    let vias = reg.header_values("Via");
    let our_via = format!("SIP/2.0/{} {me};branch=z9hG4bK", pbx.tp.upper());
    assert!(vias.len() == 2 && vias[0].starts_with(&our_via), "REGISTER at the PBX: Vias {vias:?}");
    // Our Path on top: the token as user part, sipfront's address, lr and ob.
    let paths = reg.header_values("Path");
    let path = paths.first().cloned().unwrap_or_else(|| panic!("REGISTER at the PBX has no Path: {reg:#?}"));
    let prefix = "<sip:";
    let at = format!("@{me}");
    assert!(
        path.starts_with(prefix) && path.contains(&at) && path.contains(";lr") && path.ends_with(";ob>"),
        "Path should be <sip:TOKEN@{me}...;lr;ob>: {path}"
    );
    let token = &path[prefix.len()..path.find('@').unwrap()];
    assert!(token.len() >= 16 && token.bytes().all(|c| c.is_ascii_hexdigit()), "Path token {token}");
    if pbx.tp == Tp::Tcp {
        assert!(path.contains(";transport=tcp"), "a TCP PBX gets a TCP Path: {path}");
    }
    let ok = response_to(
        &reg,
        200,
        "OK",
        "registrar",
        &format!("Contact: <{contact}>;expires={expires}\r\nPath: {path}\r\n"),
    );
    reply.send(ok.as_bytes());
    let ok = phone.expect_final("200 to the REGISTER");
    assert_eq!(ok.status(), Some(200), "{ok:#?}");
    assert_eq!(ok.header_values("Via").len(), 1, "sipfront's Via must be gone: {ok:#?}");
    Registered { path, contact }
}

/// A REGISTER of the phone's Contact for `expires` seconds (its Call-ID names the phone's port).
fn register_text(h: &Harness, phone: &Phone, expires: u32, cseq: u32) -> String {
    let me = h.sipfront();
    format!(
        "REGISTER sip:{me} SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK-reg{cseq}-{};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@{}>;tag=reg-1001\r\n\
         To: <sip:1001@{}>\r\n\
         Call-ID: reg-{}@{}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <{}>\r\n\
         Expires: {expires}\r\n\
         Supported: path, outbound\r\n\
         Content-Length: 0\r\n\r\n",
        phone.tp().upper(),
        phone.local(),
        phone.local().port(),
        me.ip(),
        me.ip(),
        phone.local().port(),
        phone.local().ip(),
        phone.contact()
    )
}

/// An INVITE from the PBX to the registered phone: Request-URI the Contact, Route our Path.
fn pbx_invite(h: &Harness, pbx: &RustPbx, reg: &Registered, call: &str) -> String {
    format!(
        "INVITE {} SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK-{call};rport\r\n\
         Route: {}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:pbx@{}>;tag=pbx-{call}\r\n\
         To: <sip:1001@{}>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:pbx@{};transport={}>\r\n\
         Content-Length: 0\r\n\r\n",
        reg.contact,
        pbx.tp.upper(),
        pbx.addr,
        reg.path,
        pbx.addr.ip(),
        h.sipfront().ip(),
        pbx.addr,
        pbx.tp.lower()
    )
}

fn header_lines(name: &str, values: &[String]) -> String {
    values.iter().map(|v| format!("{name}: {v}\r\n")).collect()
}

/// One call from the PBX to the registered phone: INVITE through the Path, 200, ACK, BYE (from the phone or
/// from the PBX), 200.
fn call_the_phone(h: &Harness, phone: &mut Phone, pbx: &RustPbx, reg: &Registered, call: &str, bye_from_phone: bool) {
    pbx.send(pbx_invite(h, pbx, reg, call).as_bytes());
    let inv = phone.expect("the PBX's INVITE");
    assert_eq!(inv.method(), Some("INVITE"), "{inv:#?}");
    assert_eq!(inv.header("Call-ID"), Some(call));
    assert_eq!(inv.request_uri(), Some(reg.contact.as_str()), "the Request-URI stays the registered Contact");
    assert!(inv.header("Route").is_none(), "our Path entry must be popped: {inv:#?}");
    assert_eq!(inv.header("Max-Forwards"), Some("69"));
    let vias = inv.header_values("Via");
    let our_via = format!("SIP/2.0/{} {};branch=z9hG4bK", phone.tp().upper(), h.sipfront());
    assert!(vias.len() == 2 && vias[0].starts_with(&our_via), "INVITE at the phone: Vias {vias:?}");
    assert!(vias[1].contains(&pbx.addr.to_string()), "the PBX's Via below ours: {vias:?}");
    let rr = inv.header_values("Record-Route");
    assert!(
        !rr.is_empty() && rr.iter().all(|r| SipMsg::uri_param(r, "d").is_some_and(|d| !d.is_empty())),
        "every Record-Route entry carries a dialog token: {rr:?}"
    );

    // The phone answers; the PBX gets the 200 with the route set and ACKs it through sipfront.
    let answer = format!("Contact: <{}>\r\n{}", reg.contact, header_lines("Record-Route", &rr));
    phone.send(&response_to(&inv, 200, "OK", &format!("ph-{call}"), &answer));
    let ok = pbx_final(pbx, "200 from the phone");
    assert_eq!(ok.status(), Some(200), "{ok:#?}");
    assert_eq!(ok.header_values("Via").len(), 1, "sipfront's Via must be gone: {ok:#?}");
    let pbx_routes: Vec<String> = ok.header_values("Record-Route").into_iter().rev().collect();
    let to = ok.header("To").unwrap_or("").to_string();
    let from = format!("<sip:pbx@{}>;tag=pbx-{call}", pbx.addr.ip());
    let in_dialog = |method: &str, cseq: u32, branch: &str| {
        format!(
            "{method} {} SIP/2.0\r\n\
             Via: SIP/2.0/{} {};branch=z9hG4bK-{branch};rport\r\n\
             {}\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            reg.contact,
            pbx.tp.upper(),
            pbx.addr,
            header_lines("Route", &pbx_routes)
        )
    };
    pbx.send(in_dialog("ACK", 1, &format!("{call}-ack")).as_bytes());
    let ack = phone.expect("ACK");
    assert_eq!((ack.method(), ack.header("Call-ID")), (Some("ACK"), Some(call)), "{ack:#?}");
    assert_eq!(ack.request_uri(), Some(reg.contact.as_str()));

    if bye_from_phone {
        // The phone (the callee) routes by the Record-Route as it got it, to the PBX's Contact.
        let bye = format!(
            "BYE {} SIP/2.0\r\n\
             Via: SIP/2.0/{} {};branch=z9hG4bK-{call}-bye;rport\r\n\
             {}\
             Max-Forwards: 70\r\n\
             From: {}\r\n\
             To: {}\r\n\
             Call-ID: {call}\r\n\
             CSeq: 1 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            inv.header("Contact").map(|c| c.trim_start_matches('<').trim_end_matches('>')).unwrap_or(""),
            phone.tp().upper(),
            phone.local(),
            header_lines("Route", &rr),
            to,
            inv.header("From").unwrap_or("")
        );
        phone.send(&bye);
        let (got, reply) = pbx.expect(WAIT, "the phone's BYE");
        assert_eq!((got.method(), got.header("Call-ID")), (Some("BYE"), Some(call)), "{got:#?}");
        assert!(got.header("Route").is_none(), "sipfront's Route entries popped: {got:#?}");
        reply.send(response_to(&got, 200, "OK", "", "").as_bytes());
        let done = phone.expect_final("200 to the BYE");
        assert_eq!((done.status(), done.cseq_method()), (Some(200), Some("BYE")), "{done:#?}");
    } else {
        pbx.send(in_dialog("BYE", 2, &format!("{call}-bye")).as_bytes());
        let bye = phone.expect("the PBX's BYE");
        assert_eq!((bye.method(), bye.header("Call-ID")), (Some("BYE"), Some(call)), "{bye:#?}");
        phone.send(&response_to(&bye, 200, "OK", "", ""));
        let done = pbx_final(pbx, "200 to the BYE");
        assert_eq!((done.status(), done.cseq_method()), (Some(200), Some("BYE")), "{done:#?}");
    }
}

/// Injected: nothing (the round trip). Checked: the REGISTER reaches the PBX (on `tp`) with sipfront's Path, the
/// 200 reaches the phone; two calls from the PBX through the Path reach the phone on its own socket / connection
/// and complete, one hung up by the phone, one by the PBX. Two phones: one on the PBX's transport, one on the
/// other (the Path faces the PBX, the delivery the phone's flow).
fn register_and_call(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let pbx = RustPbx::healthy(h.pbx(PBX1_PORT), tp, h.sipfront());
    sipfront_with(&mut h, &pbx);
    let other = if tp == Tp::Udp { Tp::Tcp } else { Tp::Udp };
    for phone_tp in [tp, other] {
        let mut phone = Phone::open(&h, phone_tp);
        let reg = register(&h, &mut phone, &pbx, 300, 1);
        let call = |i: u32| format!("call-{i}-{}", phone_tp.lower());
        call_the_phone(&h, &mut phone, &pbx, &reg, &call(1), true);
        call_the_phone(&h, &mut phone, &pbx, &reg, &call(2), false);
        assert!(phone.recv(Duration::from_millis(200)).is_none(), "nothing else reaches the {phone_tp:?} phone");
    }
    assert!(h.sipfront_alive());
}

#[test]
fn register_and_call_the_phone_udp() {
    register_and_call("register_and_call_the_phone_udp", 90, Tp::Udp);
}

#[test]
fn register_and_call_the_phone_tcp() {
    register_and_call("register_and_call_the_phone_tcp", 91, Tp::Tcp);
}

/// The PBX sends an INVITE through `reg`'s Path and gets `code` from sipfront (after an optional 100), which
/// the PBX ACKs; the phone gets nothing.
fn invite_refused(h: &Harness, pbx: &RustPbx, reg: &Registered, call: &str, code: u16) -> SipMsg {
    pbx.send(pbx_invite(h, pbx, reg, call).as_bytes());
    let resp = pbx_final(pbx, &format!("{code} for the INVITE"));
    assert_eq!(resp.status(), Some(code), "{resp:#?}");
    assert_eq!(resp.header("Call-ID"), Some(call));
    let ack = format!(
        "ACK {} SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK-{call};rport\r\n\
         Route: {}\r\n\
         Max-Forwards: 70\r\n\
         From: {}\r\n\
         To: {}\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        reg.contact,
        pbx.tp.upper(),
        pbx.addr,
        reg.path,
        resp.header("From").unwrap_or(""),
        resp.header("To").unwrap_or("")
    );
    pbx.send(ack.as_bytes());
    resp
}

/// Injected: the phone's TCP connection closed after it registered. Checked: once sipfront has closed its side,
/// the PBX's INVITE through the Path gets 430 Flow Failed (not a timeout); a phone that registers again on a new
/// connection is reachable again (with the new Path).
#[test]
fn flow_gone_tcp_connection_closed_gets_430() {
    let mut h = Harness::new("flow_gone_tcp_connection_closed_gets_430", 92);
    let pbx = RustPbx::healthy(h.pbx(PBX1_PORT), Tp::Tcp, h.sipfront());
    sipfront_with(&mut h, &pbx);
    let mut phone = Phone::open(&h, Tp::Tcp);
    let reg = register(&h, &mut phone, &pbx, 300, 1);
    let gone = phone.local();
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_conn_open(h.sipfront(), gone) {
        assert!(Instant::now() < deadline, "sipfront kept the phone's closed connection open");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    invite_refused(&h, &pbx, &reg, "to-a-closed-flow", 430);
    assert!(sent.elapsed() < Duration::from_secs(1), "430 at once, not after a timer");

    let mut phone = Phone::open(&h, Tp::Tcp);
    let reg = register(&h, &mut phone, &pbx, 300, 2);
    call_the_phone(&h, &mut phone, &pbx, &reg, "after-reconnect", false);
}

/// Injected: first a PBX INVITE whose Route is our Path with one hex digit of the flow token changed, then the
/// UDP phone de-registers (Expires: 0, the registrar's 200 lists no Contact). Checked: the forged Path gets 403
/// and the phone nothing, while the genuine Path reaches it; after de-registering, the PBX's INVITE through the
/// old Path gets 430; after registering again the phone is reachable again.
#[test]
fn forged_path_gets_403_and_deregistered_udp_gets_430() {
    let mut h = Harness::new("forged_path_gets_403_and_deregistered_udp_gets_430", 93);
    let pbx = RustPbx::healthy(h.pbx(PBX1_PORT), Tp::Udp, h.sipfront());
    sipfront_with(&mut h, &pbx);
    let mut phone = Phone::open(&h, Tp::Udp);
    let reg = register(&h, &mut phone, &pbx, 300, 1);
    let at = reg.path.find('@').expect("token@host");
    let forged =
        Registered { path: format!("{}{}", flip_hex(&reg.path[..at]), &reg.path[at..]), contact: reg.contact.clone() };
    invite_refused(&h, &pbx, &forged, "forged-path", 403);
    assert!(phone.recv(Duration::from_millis(200)).is_none(), "a forged Path must not reach the phone");
    call_the_phone(&h, &mut phone, &pbx, &reg, "while-registered", true);

    // De-register: the registrar's 200 has no Contact left.
    let unreg = register_text(&h, &phone, 0, 2);
    phone.send(&unreg);
    let (got, reply) = pbx.expect(WAIT, "the de-REGISTER");
    assert_eq!(got.method(), Some("REGISTER"));
    reply.send(response_to(&got, 200, "OK", "registrar", "").as_bytes());
    assert_eq!(phone.expect_final("200 to the de-REGISTER").status(), Some(200));

    invite_refused(&h, &pbx, &reg, "to-a-deregistered-phone", 430);
    assert!(phone.recv(Duration::from_millis(200)).is_none(), "the phone must not be called after de-registering");

    let reg = register(&h, &mut phone, &pbx, 300, 3);
    call_the_phone(&h, &mut phone, &pbx, &reg, "registered-again", false);
}

/// `s` with its last hex digit changed.
fn flip_hex(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let i = b.iter().rposition(|c| c.is_ascii_hexdigit()).expect("a hex digit");
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).expect("ascii")
}

// ------------------------------------------------------------------------------------------------ Record-Route token

/// A call from a raw-socket caller to a SIPp PBX, established: the route set and what the BYE needs.
struct CallerDialog {
    call: String,
    routes: Vec<String>,
    target: String,
    to: String,
    from: String,
}

fn establish(h: &Harness, phone: &mut Phone, call: &str) -> CallerDialog {
    let tp = phone.tp();
    let from = format!("<sip:caller@{}>;tag=c-{call}", phone.local().ip());
    let inv = format!(
        "INVITE sip:service@{me} SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: {from}\r\n\
         To: <sip:service@{me}>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <{}>\r\n\
         Content-Length: 0\r\n\r\n",
        tp.upper(),
        phone.local(),
        phone.contact(),
        me = h.sipfront()
    );
    phone.send(&inv);
    let ok = phone.expect_final("200 to the INVITE");
    assert_eq!(ok.status(), Some(200), "{ok:#?}");
    // The caller's route set is the Record-Route reversed.
    let routes: Vec<String> = ok.header_values("Record-Route").into_iter().rev().collect();
    assert!(routes.iter().all(|r| SipMsg::uri_param(r, "d").is_some()), "dialog tokens in {routes:?}");
    let target = ok.header("Contact").unwrap_or("").trim_start_matches('<').trim_end_matches('>').to_string();
    let d = CallerDialog { call: call.into(), routes, target, to: ok.header("To").unwrap_or("").into(), from };
    phone.send(&caller_request(phone, &d, "ACK", 1, &d.routes, "ack"));
    d
}

fn caller_request(phone: &Phone, d: &CallerDialog, method: &str, cseq: u32, routes: &[String], branch: &str) -> String {
    format!(
        "{method} {} SIP/2.0\r\n\
         Via: SIP/2.0/{} {};branch=z9hG4bK-{}-{branch};rport\r\n\
         {}\
         Max-Forwards: 70\r\n\
         From: {}\r\n\
         To: {}\r\n\
         Call-ID: {}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        d.target,
        phone.tp().upper(),
        phone.local(),
        d.call,
        header_lines("Route", routes),
        d.from,
        d.to,
        d.call
    )
}

/// The route set with the `d=` value of its first entry replaced.
fn with_token(routes: &[String], token: &str) -> Vec<String> {
    let mut out = routes.to_vec();
    let old = SipMsg::uri_param(&out[0], "d").expect("a d= parameter");
    out[0] = out[0].replacen(&format!(";d={old}"), &format!(";d={token}"), 1);
    out
}

/// Injected: in-dialog BYEs whose Route carries a tampered `d=` token (one hex digit changed) and the genuine
/// token of another call. Checked: both get 403 from sipfront and never reach the PBX; the real BYEs of both
/// calls then complete (the PBX got exactly those two BYEs and failed nothing).
fn forged_record_route_token(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let pbx = h.start_sipp(
        SippSpec::uas(&h, "pbx", "uas_health.xml", tp, PBX1_PORT).calls(1_000_000).timeout(Duration::from_secs(60)),
    );
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let mut phone = Phone::open(&h, tp);
    let a = establish(&h, &mut phone, "call-a");
    let b = establish(&h, &mut phone, "call-b");

    let token_a = SipMsg::uri_param(&a.routes[0], "d").unwrap();
    let attempts = [
        ("tampered", with_token(&a.routes, &flip_hex(&token_a)), &a),
        ("another call's", with_token(&b.routes, &token_a), &b),
    ];
    for (i, (what, routes, d)) in attempts.iter().enumerate() {
        phone.send(&caller_request(&phone, d, "BYE", 2, routes, &format!("forged{i}")));
        let resp = phone.expect_final(&format!("answer to the BYE with the {what} token"));
        assert_eq!(
            (resp.status(), resp.cseq_method()),
            (Some(403), Some("BYE")),
            "a BYE with the {what} token must get 403: {resp:#?}"
        );
    }
    for d in [&a, &b] {
        phone.send(&caller_request(&phone, d, "BYE", 3, &d.routes, "bye"));
        let resp = phone.expect_final("200 to the genuine BYE");
        assert_eq!((resp.status(), resp.cseq_method()), (Some(200), Some("BYE")), "{resp:#?}");
    }
    let pbx = h.stop_sipp(pbx, Duration::from_secs(5));
    let byes: Vec<&SipMsg> = pbx.received().filter(|m| m.method() == Some("BYE")).collect();
    assert_eq!(byes.len(), 2, "the PBX gets only the genuine BYEs:\n{}", pbx.summary_of_trace());
    assert!(byes.iter().all(|m| m.header("CSeq") == Some("3 BYE")), "only the genuine BYEs (CSeq 3)");
    assert_eq!(pbx.failed, Some(0), "PBX failed calls:\n{}", pbx.errors);
}

#[test]
fn forged_record_route_token_gets_403_udp() {
    forged_record_route_token("forged_record_route_token_gets_403_udp", 95, Tp::Udp);
}

#[test]
fn forged_record_route_token_gets_403_tcp() {
    forged_record_route_token("forged_record_route_token_gets_403_tcp", 96, Tp::Tcp);
}

// ------------------------------------------------------------------------------------------------ flow cap

/// Injected: more phones than `[registrations] max_flows = 2`. Checked: the third phone's REGISTER gets
/// sipfront's own 503 with Retry-After and never reaches the PBX; a registered phone can still refresh; once one
/// phone de-registers, the third registers and can be called.
#[test]
fn flow_cap_gets_503_with_retry_after() {
    let mut h = Harness::new("flow_cap_gets_503_with_retry_after", 99);
    let pbx = RustPbx::healthy(h.pbx(PBX1_PORT), Tp::Udp, h.sipfront());
    h.start_sipfront(&FrontConfig::new().backend("pbx1", pbx.addr, Tp::Udp).section("[registrations]\nmax_flows = 2"));
    let mut a = Phone::open_at(&h, Tp::Udp, 5090);
    let mut b = Phone::open_at(&h, Tp::Udp, 5092);
    let mut c = Phone::open_at(&h, Tp::Udp, 5094);
    register(&h, &mut a, &pbx, 300, 1);
    register(&h, &mut b, &pbx, 300, 1);

    c.send(&register_text(&h, &c, 300, 1));
    let resp = c.expect_final("answer to the REGISTER over the cap");
    assert_eq!(resp.status(), Some(503), "{resp:#?}");
    assert!(resp.header("Retry-After").is_some_and(|v| !v.is_empty()), "503 needs a Retry-After: {resp:#?}");
    assert!(pbx.recv(Duration::from_millis(200)).is_none(), "the REGISTER over the cap must not reach the PBX");

    // A refresh of a known flow is taken at the cap.
    register(&h, &mut a, &pbx, 300, 2);
    // b leaves; c gets its place.
    b.send(&register_text(&h, &b, 0, 2));
    let (got, reply) = pbx.expect(WAIT, "b's de-REGISTER");
    reply.send(response_to(&got, 200, "OK", "registrar", "").as_bytes());
    assert_eq!(b.expect_final("200 to the de-REGISTER").status(), Some(200));
    let reg_c = register(&h, &mut c, &pbx, 300, 2);
    call_the_phone(&h, &mut c, &pbx, &reg_c, "to-c", true);
}

//! Spirals (RFC 3261 §16.3 step 4, §16.6 step 8): a PBX that proxies rather than bridges (a registrar that
//! Record-Routes itself and follows our Path, as Kamailio or OpenSIPS do) sends every request of a call between two
//! registered phones through sipfront twice: phone -> sipfront -> PBX -> sipfront -> phone. Both passes carry the
//! same Call-ID, tags and CSeq; only the Route set tells them apart. Here the PBX is a small record-routing proxy
//! over a real UDP socket, the phones are raw UDP sockets, and what each party receives is checked.
//!
//! The loop test is the other side of the same rule: a request that comes back to sipfront unchanged (a PBX that
//! routes back to us with nothing changed) still ends in 482.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;

use sipfront::sip::{parse_name_addr, HeaderName, Message, ResponseBuilder};
use support::*;

/// A proxy-shaped PBX: remembers one registration's Path and Contact, Record-Routes itself, loose-routes.
struct ProxyPbx {
    sock: UdpSocket,
    /// The registered phone's Path (our Route back to it) and Contact.
    path: Option<String>,
    contact: Option<String>,
    seq: u32,
    /// Whether it Record-Routes itself (Kamailio's `record_route()`); without, in-dialog requests skip it.
    record_route: bool,
}

impl ProxyPbx {
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    fn my_route(&self) -> String {
        format!("<sip:{};lr>", self.addr())
    }

    /// Forward a request as a stateless record-routing proxy: our Via on top, Max-Forwards down; an initial
    /// INVITE gets our Record-Route and goes to the registered Contact along the Path; an in-dialog request loses
    /// our Route entry. Everything goes to `front` (every Route left points at sipfront).
    async fn relay_request(&mut self, req: &Message, front: SocketAddr) {
        self.seq += 1;
        let text = String::from_utf8_lossy(req.as_bytes()).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
        let in_dialog = req.to_tag().is_some();
        if !in_dialog && req.method_bytes() == b"INVITE" {
            let contact = self.contact.clone().expect("a registered phone");
            let method = String::from_utf8_lossy(req.method_bytes()).into_owned();
            lines[0] = format!("{method} {contact} SIP/2.0");
            lines.insert(1, format!("Route: {}", self.path.clone().expect("a Path")));
            if self.record_route {
                lines.insert(1, format!("Record-Route: {}", self.my_route()));
            }
        }
        if in_dialog && self.record_route {
            // Loose routing: the top Route is ours; drop it (one value, on its own line or first in a list).
            let mine = self.my_route();
            let at = lines.iter().position(|l| l.starts_with("Route:")).expect("our Route");
            let rest = lines[at]["Route:".len()..].trim().strip_prefix(&mine).expect("ours on top").to_owned();
            match rest.trim_start_matches(',').trim() {
                "" => drop(lines.remove(at)),
                more => lines[at] = format!("Route: {more}"),
            }
        }
        lines.insert(1, format!("Via: SIP/2.0/UDP {};branch=z9hG4bKpbx{}", self.addr(), self.seq));
        for l in lines.iter_mut() {
            if let Some(n) = l.strip_prefix("Max-Forwards: ") {
                *l = format!("Max-Forwards: {}", n.trim().parse::<u32>().unwrap() - 1);
            }
        }
        let out = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
        self.sock.send_to(out.as_bytes(), front).await.unwrap();
    }

    /// Forward a response: our Via off, to sipfront (the next Via is always sipfront's here).
    async fn relay_response(&self, resp: &Message, front: SocketAddr) {
        self.sock.send_to(&resp.strip_top_via(), front).await.unwrap();
    }
}

/// Wait on `sock` for a message that `want` accepts, skipping others (retransmissions, 100 Trying).
async fn expect(sock: &UdpSocket, what: &str, want: impl Fn(&Message) -> bool) -> (Message, SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, from) = tokio::time::timeout(left, recv_udp(sock)).await.unwrap_or_else(|_| panic!("{what}: none"));
        if want(&m) {
            return (m, from);
        }
    }
}

/// Nothing but the listed kinds of message reach `sock` for a short while (a 482 or a misrouted request would).
async fn quiet(sock: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 65536];
    if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        panic!("{what}: unexpected message\n{}", String::from_utf8_lossy(&buf[..n]));
    }
}

fn is(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.method_bytes() == method.as_bytes()
}

fn status(code: u16) -> impl Fn(&Message) -> bool {
    move |m| m.status() == Some(code)
}

/// A UA's in-dialog request: Request-URI the remote Contact, Route the given set, tags as the dialog has them.
fn in_dialog(method: &str, target: &str, routes: &[String], from: &str, to: &str, call_id: &str, cseq: u32) -> Bytes {
    let me = from.split('@').nth(1).and_then(|h| h.split('>').next()).unwrap();
    let route = if routes.is_empty() { String::new() } else { format!("Route: {}\r\n", routes.join(", ")) };
    Bytes::from(format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq}{call_id};rport\r\n{route}\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn values_of(m: &Message, h: HeaderName) -> Vec<String> {
    m.header_values(h).map(text).collect()
}

struct Call {
    call_id: String,
    /// alice's view: From (her) and To (bob, with his tag), bob's Contact, her route set.
    alice_from: String,
    alice_to: String,
    bob_contact: String,
    alice_routes: Vec<String>,
    /// bob's view: his route set (the INVITE's Record-Route in order) and alice's Contact.
    bob_routes: Vec<String>,
    alice_contact: String,
}

/// bob registers through sipfront at the PBX; alice calls him; the INVITE spirals (alice -> sipfront -> PBX ->
/// sipfront -> bob), bob answers, alice's ACK spirals the same way and must reach bob.
async fn spiral_call(n: &Node, pbx: &mut ProxyPbx, alice: &UdpSocket, bob: &UdpSocket, id: &str) -> Call {
    let (a, b) = (alice.local_addr().unwrap(), bob.local_addr().unwrap());
    if pbx.path.is_none() {
        let reg = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKreg{id};rport\r\n\
             From: <sip:bob@127.0.0.1>;tag=rb{id}\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: reg{id}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:bob@{b}>\r\nExpires: 600\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        bob.send_to(reg.as_bytes(), n.udp).await.unwrap();
        let (r, from) = expect(&pbx.sock, "REGISTER at the PBX", is("REGISTER")).await;
        pbx.path = Some(values_of(&r, HeaderName::Path).join(", "));
        pbx.contact = Some(format!("sip:bob@{b}"));
        let ok = ResponseBuilder::new(&r, 200, "OK").to_tag(b"regtag").header("Contact", b"<sip:bob@x>").build();
        pbx.sock.send_to(&ok, from).await.unwrap();
        expect(bob, "200 to REGISTER", status(200)).await;
    }
    let invite = format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKinv{id};rport\r\n\
         From: <sip:alice@{a}>;tag=al{id}\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{a}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    alice.send_to(invite.as_bytes(), n.udp).await.unwrap();
    let (inv1, _) = expect(&pbx.sock, "INVITE at the PBX", is("INVITE")).await;
    pbx.relay_request(&inv1, n.udp).await;
    let (inv2, from) = expect(bob, "the spiraled INVITE at bob", is("INVITE")).await;
    assert_eq!(from, n.udp, "bob is reached through sipfront");
    let bob_routes = values_of(&inv2, HeaderName::RecordRoute);
    let want = if pbx.record_route { 3 } else { 2 };
    assert_eq!(bob_routes.len(), want, "sipfront, the PBX (if it Record-Routes), sipfront again: {bob_routes:?}");
    let (tag, contact) = (format!("bo{id}"), format!("<sip:bob@{b}>"));
    let mut ok = ResponseBuilder::new(&inv2, 200, "OK").to_tag(tag.as_bytes());
    for r in &bob_routes {
        ok = ok.header("Record-Route", r.as_bytes());
    }
    let ok = ok.header("Contact", contact.as_bytes()).build();
    bob.send_to(&ok, n.udp).await.unwrap();
    let (ok_at_pbx, _) = expect(&pbx.sock, "200 at the PBX", status(200)).await;
    pbx.relay_response(&ok_at_pbx, n.udp).await;
    let (ok, _) = expect(alice, "200 at alice", status(200)).await;
    let alice_routes: Vec<String> = values_of(&ok, HeaderName::RecordRoute).into_iter().rev().collect();
    let call = Call {
        call_id: id.to_owned(),
        alice_from: text(ok.header(HeaderName::From).unwrap()),
        alice_to: text(ok.header(HeaderName::To).unwrap()),
        bob_contact: text(parse_name_addr(ok.header(HeaderName::Contact).unwrap()).unwrap().uri),
        alice_routes,
        bob_routes,
        alice_contact: format!("sip:alice@{a}"),
    };
    // The end-to-end ACK spirals too (or, past a PBX that does not Record-Route, crosses both our passes at
    // once), and must reach bob.
    let ack = in_dialog("ACK", &call.bob_contact, &call.alice_routes, &call.alice_from, &call.alice_to, id, 1);
    alice.send_to(&ack, n.udp).await.unwrap();
    if pbx.record_route {
        let (ack1, _) = expect(&pbx.sock, "ACK at the PBX", is("ACK")).await;
        pbx.relay_request(&ack1, n.udp).await;
    }
    expect(bob, "the spiraled ACK at bob", is("ACK")).await;
    call
}

/// alice's BYE passes sipfront twice and reaches bob; bob's 200 comes back to her; the dialog table empties.
#[tokio::test]
async fn a_spiraled_call_is_acked_and_ended_by_the_caller() {
    let mut pbx = ProxyPbx { sock: udp_socket().await, path: None, contact: None, seq: 0, record_route: true };
    let n = node(&backend("pbx", "udp", pbx.addr(), 1), "").await;
    let (alice, bob) = (udp_socket().await, udp_socket().await);
    let c = spiral_call(&n, &mut pbx, &alice, &bob, "spiral-1").await;
    assert_eq!(n.server.proxy.dialogs.len(), 2, "one entry per leg: alice-sipfront-PBX and PBX-sipfront-bob");

    let bye = in_dialog("BYE", &c.bob_contact, &c.alice_routes, &c.alice_from, &c.alice_to, &c.call_id, 2);
    alice.send_to(&bye, n.udp).await.unwrap();
    let (bye1, _) = expect(&pbx.sock, "BYE at the PBX", is("BYE")).await;
    pbx.relay_request(&bye1, n.udp).await;
    let (bye2, _) = expect(&bob, "alice's BYE at bob", is("BYE")).await;
    bob.send_to(&ResponseBuilder::new(&bye2, 200, "OK").build(), n.udp).await.unwrap();
    let (ok1, _) = expect(&pbx.sock, "200 to BYE at the PBX", status(200)).await;
    pbx.relay_response(&ok1, n.udp).await;
    expect(&alice, "200 to BYE at alice", status(200)).await;
    assert!(n.server.proxy.dialogs.is_empty(), "both legs gone");
    let stats = n.server.proxy.stats.snapshot();
    assert_eq!((stats.loops, stats.unroutable_acks), (0, 0), "no 482, no dropped ACK");
    quiet(&bob, "bob after the call").await;
    n.server.shutdown().await;
}

/// bob's BYE passes sipfront twice and reaches alice, not bob himself.
#[tokio::test]
async fn a_spiraled_call_is_ended_by_the_callee() {
    let mut pbx = ProxyPbx { sock: udp_socket().await, path: None, contact: None, seq: 0, record_route: true };
    let n = node(&backend("pbx", "udp", pbx.addr(), 1), "").await;
    let (alice, bob) = (udp_socket().await, udp_socket().await);
    let c = spiral_call(&n, &mut pbx, &alice, &bob, "spiral-2").await;

    // bob's view of the dialog: From is him (with his tag), To is alice.
    let bob_from = c.alice_to.clone();
    let bob_to = c.alice_from.clone();
    let bye = in_dialog("BYE", &c.alice_contact, &c.bob_routes, &bob_from, &bob_to, &c.call_id, 1);
    bob.send_to(&bye, n.udp).await.unwrap();
    let (bye1, _) = expect(&pbx.sock, "bob's BYE at the PBX", is("BYE")).await;
    pbx.relay_request(&bye1, n.udp).await;
    let (bye2, from) = expect(&alice, "bob's BYE at alice", is("BYE")).await;
    assert_eq!(from, n.udp);
    alice.send_to(&ResponseBuilder::new(&bye2, 200, "OK").build(), n.udp).await.unwrap();
    let (ok1, _) = expect(&pbx.sock, "200 to BYE at the PBX", status(200)).await;
    pbx.relay_response(&ok1, n.udp).await;
    expect(&bob, "200 to his BYE at bob", status(200)).await;
    assert!(n.server.proxy.dialogs.is_empty(), "both legs gone");
    assert_eq!(n.server.proxy.stats.snapshot().loops, 0);
    n.server.shutdown().await;
}

/// A PBX that sends a request straight back to sipfront, unchanged but for its Via: the second pass finds our
/// own Via with the same loop hash, and alice gets 482 through the PBX.
#[tokio::test]
async fn a_real_loop_still_gets_482() {
    let pbx = udp_socket().await;
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let alice = udp_socket().await;
    let a = alice.local_addr().unwrap();
    let ruri = format!("sip:loop@{}", n.udp);
    let invite = format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKloop1;rport\r\n\
         From: <sip:alice@{a}>;tag=loopa\r\nTo: <{ruri}>\r\nCall-ID: loop-1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{a}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    alice.send_to(invite.as_bytes(), n.udp).await.unwrap();
    let (inv, _) = expect(&pbx, "INVITE at the PBX", is("INVITE")).await;
    // Back to sipfront as it came, with the PBX's Via on top (a misconfigured route: "everything to the proxy").
    let text = String::from_utf8_lossy(inv.as_bytes()).replacen(
        "\r\nVia: ",
        &format!("\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKpbxloop\r\nVia: ", pbx.local_addr().unwrap()),
        1,
    );
    pbx.send_to(text.as_bytes(), n.udp).await.unwrap();
    let (resp, _) =
        expect(&pbx, "sipfront's answer to the looped INVITE", |m| m.status().is_some_and(|s| s > 100)).await;
    assert_eq!(resp.status(), Some(482), "the loop is caught");
    pbx.send_to(&resp.strip_top_via(), n.udp).await.unwrap();
    expect(&alice, "482 at alice", status(482)).await;
    assert_eq!(n.server.proxy.stats.snapshot().loops, 1);
    n.server.shutdown().await;
}

/// With probes on and the only backend down, a new call and a BYE of an established call get 503 with
/// Retry-After at once, not 408 after 32 s.
#[tokio::test]
async fn no_backend_up_means_503_with_retry_after_at_once() {
    let pbx = udp_socket().await; // answers nothing: the probes mark it down
                                  // OPTIONS probes every 50 ms, one failure to go down.
    let probes = "enabled = true\ninterval = \"50ms\"\ntimeout = \"50ms\"\ndown_after = 1\nup_after = 1";
    let n = node_with_health(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "", probes).await;
    let proxy = n.server.proxy.clone();
    let t0 = tokio::time::Instant::now();
    while proxy.health.is_up(0) {
        assert!(t0.elapsed() < WAIT, "the silent backend is marked down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An established call homed on it (as a replicated or earlier dialog would be).
    let id = sipfront::dialog::DialogId::new(b"down-1", b"fa", b"pbx");
    proxy.dialogs.confirm(id, &sipfront::dialog::NewDialog { home: Some(0), client: None, caller_cseq: 1 }, None);
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    for (what, req) in [
        ("a new call", request("INVITE", "sip:bob@127.0.0.1", me, "UDP", "down-0")),
        (
            "a BYE of an established call",
            Bytes::from(format!(
                "BYE sip:pbx@127.0.0.99 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdownbye;rport\r\n\
                 From: <sip:a@{me}>;tag=fa\r\nTo: <sip:pbx@127.0.0.99>;tag=pbx\r\nCall-ID: down-1\r\n\
                 CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )),
        ),
    ] {
        let sent = tokio::time::Instant::now();
        phone.send_to(&req, n.udp).await.unwrap();
        let (resp, _) = expect(&phone, what, |m| m.status().is_some_and(|s| s >= 200)).await;
        assert_eq!(resp.status(), Some(503), "{what}");
        let retry_after = resp.as_bytes().windows(13).any(|w| w.eq_ignore_ascii_case(b"Retry-After: "));
        assert!(retry_after, "{what}: Retry-After\n{}", text(resp.as_bytes()));
        assert!(sent.elapsed() < Duration::from_secs(2), "{what}: answered at once, not after timer B/F");
    }
    assert_eq!(proxy.stats.snapshot().no_backend, 2);
    n.server.shutdown().await;
}

/// A PBX that routes calls along our Path but does not Record-Route: in-dialog requests carry both our entries
/// back to back and skip the PBX; they must still reach the other phone, from either side.
#[tokio::test]
async fn past_a_pbx_that_does_not_record_route_both_phones_are_reached() {
    let mut pbx = ProxyPbx { sock: udp_socket().await, path: None, contact: None, seq: 0, record_route: false };
    let n = node(&backend("pbx", "udp", pbx.addr(), 1), "").await;
    let (alice, bob) = (udp_socket().await, udp_socket().await);
    let c = spiral_call(&n, &mut pbx, &alice, &bob, "norr-1").await;
    let bye = in_dialog("BYE", &c.alice_contact, &c.bob_routes, &c.alice_to, &c.alice_from, &c.call_id, 1);
    bob.send_to(&bye, n.udp).await.unwrap();
    let (bye2, _) = expect(&alice, "bob's BYE at alice", is("BYE")).await;
    alice.send_to(&ResponseBuilder::new(&bye2, 200, "OK").build(), n.udp).await.unwrap();
    expect(&bob, "200 to his BYE at bob", status(200)).await;
    assert!(n.server.proxy.dialogs.is_empty());
    quiet(&pbx.sock, "the PBX is skipped in the dialog").await;
    n.server.shutdown().await;
}

/// A bridging PBX (a backend) whose outgoing leg goes to a registrar elsewhere (not a backend), which reaches bob
/// along our Path: that registrar's ACK and BYE of the call reach bob, and bob's BYE goes to the PBX.
#[tokio::test]
async fn a_registrar_that_is_no_backend_reaches_the_phone_along_our_path() {
    let pbx = udp_socket().await;
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let (registrar, bob) = (udp_socket().await, udp_socket().await);
    let (r, b, p) = (registrar.local_addr().unwrap(), bob.local_addr().unwrap(), pbx.local_addr().unwrap());
    let reg = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKregx;rport\r\n\
         From: <sip:bob@127.0.0.1>;tag=rbx\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: regx\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:bob@{b}>\r\nExpires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    bob.send_to(reg.as_bytes(), n.udp).await.unwrap();
    let (register, from) = expect(&pbx, "REGISTER at the PBX", is("REGISTER")).await;
    let path = values_of(&register, HeaderName::Path).join(", ");
    pbx.send_to(&ResponseBuilder::new(&register, 200, "OK").to_tag(b"r").build(), from).await.unwrap();
    expect(&bob, "200 to REGISTER", status(200)).await;
    // The registrar (elsewhere) sends the PBX's B leg to bob along the Path.
    let invite = format!(
        "INVITE sip:bob@{b} SIP/2.0\r\nVia: SIP/2.0/UDP {r};branch=z9hG4bKbleg1\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bKpbxleg1\r\nRoute: {path}\r\nFrom: <sip:pbx@{p}>;tag=pb\r\n\
         To: <sip:bob@127.0.0.1>\r\nCall-ID: bleg\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@{p}>\r\n\
         Max-Forwards: 69\r\nContent-Length: 0\r\n\r\n"
    );
    registrar.send_to(invite.as_bytes(), n.udp).await.unwrap();
    let (inv, _) = expect(&bob, "the B leg at bob", is("INVITE")).await;
    let rr = values_of(&inv, HeaderName::RecordRoute);
    let mut ok = ResponseBuilder::new(&inv, 200, "OK").to_tag(b"bb");
    for v in &rr {
        ok = ok.header("Record-Route", v.as_bytes());
    }
    let contact = format!("<sip:bob@{b}>");
    bob.send_to(&ok.header("Contact", contact.as_bytes()).build(), n.udp).await.unwrap();
    let (ok, _) = expect(&registrar, "200 at the registrar", status(200)).await;
    let routes: Vec<String> = values_of(&ok, HeaderName::RecordRoute).into_iter().rev().collect();
    let (from, to) = ("<sip:pbx@".to_owned() + &p.to_string() + ">;tag=pb", "<sip:bob@127.0.0.1>;tag=bb".to_owned());
    for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
        let mut req =
            String::from_utf8_lossy(&in_dialog(method, &format!("sip:bob@{b}"), &routes, &from, &to, "bleg", cseq))
                .into_owned();
        req = req.replacen(&format!("Via: SIP/2.0/UDP {p};"), &format!("Via: SIP/2.0/UDP {r};"), 1);
        registrar.send_to(req.as_bytes(), n.udp).await.unwrap();
        expect(&bob, &format!("the registrar's {method} at bob"), is(method)).await;
    }
    assert_eq!(n.server.proxy.stats.snapshot().relay_refused, 0);
    n.server.shutdown().await;
}

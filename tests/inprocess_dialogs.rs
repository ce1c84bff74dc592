//! In-process tests of dialog routing, tokens, caps and registration flows: a node on 127.0.0.1 port 0, phones
//! and PBXs as Rust UAs on real UDP sockets. Backend failure is injected through the health state machine (the
//! same entry point probes and passive failures use), so no test waits for probe timers.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;

use sipfront::sip::{HeaderName, Message, ResponseBuilder};
use support::*;

/// A PBX answer that echoes the Record-Route set and gives the PBX's Contact (like the SIPp UAS scenarios).
fn pbx_answer(req: &Message, code: u16, contact: &str) -> Bytes {
    let rr: Vec<&[u8]> = req.header_values(HeaderName::RecordRoute).collect();
    let mut b = ResponseBuilder::new(req, code, "OK").to_tag(b"pbxtag");
    for r in &rr {
        b = b.header("Record-Route", r);
    }
    let contact = format!("<{contact}>");
    b.header("Contact", contact.as_bytes()).build()
}

/// An in-dialog request from the phone: Route from the 2xx's Record-Route (reversed), Request-URI the Contact.
fn in_dialog(method: &str, ok: &Message, phone: SocketAddr, cseq: u32, branch: &str) -> Bytes {
    let routes: Vec<String> =
        ok.header_values(HeaderName::RecordRoute).map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    let routes: Vec<String> = routes.into_iter().rev().collect();
    let contact = sipfront::sip::parse_name_addr(ok.header(HeaderName::Contact).unwrap()).unwrap().uri;
    let to = String::from_utf8_lossy(ok.header(HeaderName::To).unwrap()).into_owned();
    let from = String::from_utf8_lossy(ok.header(HeaderName::From).unwrap()).into_owned();
    let call_id = String::from_utf8_lossy(ok.call_id()).into_owned();
    Bytes::from(format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK{branch};rport\r\nRoute: {}\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        String::from_utf8_lossy(contact),
        routes.join(", "),
    ))
}

/// Place a call from `phone` through the node to whichever PBX gets it; returns the 200 OK the phone saw.
async fn call(n: &Node, phone: &UdpSocket, pbx: &UdpSocket, contact: &str, id: &str) -> Message {
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("INVITE", "sip:bob@127.0.0.1", me, "UDP", id), n.udp).await.unwrap();
    assert_eq!(recv_udp(phone).await.0.status(), Some(100));
    let (inv, from) = recv_udp(pbx).await;
    assert_eq!(inv.method_bytes(), b"INVITE");
    pbx.send_to(&pbx_answer(&inv, 200, contact), from).await.unwrap();
    let (ok, _) = recv_udp(phone).await;
    assert_eq!(ok.status(), Some(200));
    phone.send_to(&in_dialog("ACK", &ok, me, 1, &format!("{id}a")), n.udp).await.unwrap();
    assert_eq!(recv_udp(pbx).await.0.method_bytes(), b"ACK");
    ok
}

/// A node with two UDP backends, "pbx1" (preferred) and "pbx2", on these sockets.
async fn two_pbx_node(preferred: &UdpSocket, standby: &UdpSocket) -> Node {
    let backends = format!(
        "{}{}",
        backend("pbx1", "udp", preferred.local_addr().unwrap(), 1),
        backend("pbx2", "udp", standby.local_addr().unwrap(), 2)
    );
    node(&backends, "").await
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The PBX's Contact is an address nobody listens on (loopback, never a backend): a request that reaches a PBX
/// socket can only have been routed by the dialog's home or token, not by its Request-URI.
const PBX_CONTACT: &str = "sip:pbx@127.0.0.99:5099";

#[tokio::test]
async fn in_dialog_requests_follow_the_home_backend_and_move_when_it_fails() {
    let (pbx1, pbx2, phone) = (udp_socket().await, udp_socket().await, udp_socket().await);
    let n = two_pbx_node(&pbx1, &pbx2).await;
    let proxy = n.server.proxy.clone();
    let ok = call(&n, &phone, &pbx1, PBX_CONTACT, "d1").await;
    assert_eq!((proxy.dialogs.len(), proxy.dialogs.count_on(0)), (1, 1));
    let me = phone.local_addr().unwrap();

    // A re-INVITE goes to the home backend although its Request-URI names another address.
    phone.send_to(&in_dialog("INFO", &ok, me, 2, "d1i"), n.udp).await.unwrap();
    let (info, from) = recv_udp(&pbx1).await;
    assert_eq!(info.request_uri(), PBX_CONTACT.as_bytes(), "the Request-URI is kept");
    pbx1.send_to(&ResponseBuilder::new(&info, 200, "OK").build(), from).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));

    // Injected fault: pbx1 fails three health checks in a row (down_after = 3) and goes down.
    for _ in 0..3 {
        proxy.health.failure(0, "injected by the test");
    }
    wait_until("the dialog to move to pbx2", || proxy.dialogs.count_on(1) == 1).await;

    // The established call is ended through the survivor; nothing was lost.
    phone.send_to(&in_dialog("BYE", &ok, me, 3, "d1b"), n.udp).await.unwrap();
    let (bye, from) = recv_udp(&pbx2).await;
    assert_eq!(bye.method_bytes(), b"BYE");
    pbx2.send_to(&ResponseBuilder::new(&bye, 200, "OK").build(), from).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));
    assert!(proxy.dialogs.is_empty());

    // New calls go to the survivor too.
    call(&n, &phone, &pbx2, PBX_CONTACT, "d2").await;
    assert_eq!(proxy.dialogs.count_on(1), 1);
}

#[tokio::test]
async fn a_dialog_missing_from_the_table_is_routed_by_its_token() {
    let (pbx1, pbx2, phone) = (udp_socket().await, udp_socket().await, udp_socket().await);
    let n = two_pbx_node(&pbx2, &pbx1).await;
    let proxy = n.server.proxy.clone();
    // Preferred is the socket named pbx2 here; the call lands there.
    let ok = call(&n, &phone, &pbx2, PBX_CONTACT, "t1").await;
    let id = sipfront::dialog::DialogId::new(ok.call_id(), ok.from_tag().unwrap(), ok.to_tag().unwrap());
    assert!(proxy.dialogs.remove(&id).is_some(), "injected fault: the table lost the dialog");
    let me = phone.local_addr().unwrap();
    phone.send_to(&in_dialog("BYE", &ok, me, 2, "t1b"), n.udp).await.unwrap();
    let (bye, _) = recv_udp(&pbx2).await;
    assert_eq!(bye.method_bytes(), b"BYE", "routed by the Record-Route token to the call's backend");
}

#[tokio::test]
async fn a_forged_route_token_is_refused_with_403() {
    let (pbx, phone) = (udp_socket().await, udp_socket().await);
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let ok = call(&n, &phone, &pbx, PBX_CONTACT, "f1").await;
    let bye = in_dialog("BYE", &ok, phone.local_addr().unwrap(), 2, "f1b");
    let text = String::from_utf8(bye.to_vec()).unwrap();
    let at = text.find(";d=").unwrap() + 3;
    let flipped = if &text[at..at + 1] == "0" { "1" } else { "0" };
    let forged = format!("{}{}{}", &text[..at], flipped, &text[at + 1..]);
    phone.send_to(forged.as_bytes(), n.udp).await.unwrap();
    let (resp, _) = recv_udp(&phone).await;
    assert_eq!(resp.status(), Some(403));
    assert_eq!(n.server.proxy.stats.snapshot().forged_tokens, 1);
    // The real one still works.
    phone.send_to(&bye, n.udp).await.unwrap();
    assert_eq!(recv_udp(&pbx).await.0.method_bytes(), b"BYE");
}

#[tokio::test]
async fn past_the_dialog_cap_new_calls_get_503_with_retry_after() {
    let (pbx, phone) = (udp_socket().await, udp_socket().await);
    let text = format!("{}\n[dialogs]\nmax = 1\n", backend("pbx", "udp", pbx.local_addr().unwrap(), 1));
    let n = node(&text, "").await;
    call(&n, &phone, &pbx, PBX_CONTACT, "c1").await;
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("INVITE", "sip:bob@127.0.0.1", me, "UDP", "c2"), n.udp).await.unwrap();
    let (busy, _) = recv_udp(&phone).await;
    assert_eq!(busy.status(), Some(503));
    assert!(busy.as_bytes().windows(17).any(|w| w == b"\r\nRetry-After: 5\r"), "Retry-After present");
    assert_eq!(n.server.proxy.stats.snapshot().over_capacity, 1);
}

/// A REGISTER from the phone, with a Contact that is NOT where the phone really is (as behind a NAT).
fn register(phone: SocketAddr, expires: u32, cseq: u32) -> Bytes {
    Bytes::from(format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bKreg{cseq};rport\r\n\
         From: <sip:100@pbx>;tag=r1\r\nTo: <sip:100@pbx>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:100@127.0.0.98:5098>;expires={expires}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

#[tokio::test]
async fn the_pbx_reaches_a_registered_phone_through_the_path_flow() {
    let (pbx, phone) = (udp_socket().await, udp_socket().await);
    let pbx_addr = pbx.local_addr().unwrap();
    let n = node(&backend("pbx", "udp", pbx_addr, 1), "").await;
    let me = phone.local_addr().unwrap();

    phone.send_to(&register(me, 300, 1), n.udp).await.unwrap();
    let (reg, from) = recv_udp(&pbx).await;
    let path = String::from_utf8(reg.header(HeaderName::Path).expect("our Path").to_vec()).unwrap();
    assert!(path.ends_with(";lr;ob>") && path.contains(&format!("@127.0.0.1:{}", n.udp.port())), "{path}");
    let ok = ResponseBuilder::new(&reg, 200, "OK")
        .to_tag(b"reg")
        .header("Contact", b"<sip:100@127.0.0.98:5098>;expires=120")
        .build();
    pbx.send_to(&ok, from).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));
    assert_eq!(n.server.proxy.flows.len(), 1);

    // The PBX calls the phone: Request-URI is the registered Contact, Route is the Path.
    let invite = |branch: &str| {
        let mut r =
            String::from_utf8(request("INVITE", "sip:100@127.0.0.98:5098", pbx_addr, "UDP", branch).to_vec()).unwrap();
        r = r.replace("Max-Forwards: 70", &format!("Route: {path}\r\nMax-Forwards: 70"));
        Bytes::from(r)
    };
    pbx.send_to(&invite("in1"), n.udp).await.unwrap();
    assert_eq!(recv_udp(&pbx).await.0.status(), Some(100));
    let (inv, _) = recv_udp(&phone).await;
    assert_eq!(inv.method_bytes(), b"INVITE", "delivered to the phone's real address, not its Contact");
    assert!(inv.header(HeaderName::Route).is_none(), "our Path entry popped");

    // De-registration ends the flow: the next INVITE through the Path gets 430.
    phone.send_to(&register(me, 0, 2), n.udp).await.unwrap();
    let (unreg, from) = recv_udp(&pbx).await;
    let ok = ResponseBuilder::new(&unreg, 200, "OK").to_tag(b"reg").header("Expires", b"0").build();
    pbx.send_to(&ok, from).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));
    assert!(n.server.proxy.flows.is_empty());
    pbx.send_to(&invite("in2"), n.udp).await.unwrap();
    let (gone, _) = recv_udp(&pbx).await;
    assert_eq!(gone.status(), Some(430));
}

#[tokio::test]
async fn a_route_to_the_failed_backend_is_overridden_by_the_dialogs_new_home() {
    let (pbx1, pbx2, phone) = (udp_socket().await, udp_socket().await, udp_socket().await);
    let n = two_pbx_node(&pbx1, &pbx2).await;
    let proxy = n.server.proxy.clone();
    let ok = call(&n, &phone, &pbx1, PBX_CONTACT, "r1").await;
    for _ in 0..3 {
        proxy.health.failure(0, "injected by the test");
    }
    wait_until("the dialog to move to pbx2", || proxy.dialogs.count_on(1) == 1).await;
    // The phone's route set names pbx1 after us (as if pbx1 had Record-Routed itself).
    let bye = String::from_utf8(in_dialog("BYE", &ok, phone.local_addr().unwrap(), 2, "r1b").to_vec()).unwrap();
    let bye = bye.replace(";lr>\r\n", &format!(";lr>, <sip:{};lr>\r\n", pbx1.local_addr().unwrap()));
    phone.send_to(bye.as_bytes(), n.udp).await.unwrap();
    let (got, _) = recv_udp(&pbx2).await;
    assert_eq!(got.method_bytes(), b"BYE");
}

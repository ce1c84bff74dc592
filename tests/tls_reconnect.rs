//! TLS phones whose connection is gone while they have calls: a NAT rebinding, or a failover (the new leader never
//! had the connection). A phone that reconnects keeps its calls, whether it registers again or sends an in-dialog
//! request first; a phone that has not come back is tried at its Contact over TLS, the transport it named, as RFC
//! 3261 says for a remote target. In process, with the helpers of `support/tls.rs`; every wait has a deadline.

use std::time::{Duration, Instant};

use sipfront::dialog::{DialogId, NewDialog};
use sipfront::sip::ResponseBuilder;
use sipfront::transport::{Target, Transport};

mod support;

use support::tls::*;
use support::*;

/// The connection id our phone-facing Record-Route entry names (`;ft=`).
fn flow_conn(rr: &[String]) -> u64 {
    let entry = rr.iter().find(|r| r.contains(";ft=")).expect("a phone-facing entry");
    entry.split(";ft=").nth(1).unwrap().split([';', '>']).next().unwrap().parse().unwrap()
}

/// Until sipfront has seen a dropped connection close.
async fn until_closed(n: &TlsNode, conn: u64) {
    let deadline = Instant::now() + WAIT;
    while n.server.proxy.transports.conn_alive(conn) {
        assert!(Instant::now() < deadline, "connection {conn} still open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Injected: the phone's TLS connection of an established call drops (a NAT rebinding, or a failover, where the
/// new leader never had it). Call c3's phone reconnects and registers again: the PBX's BYE reaches it on the new
/// connection. Call c4's phone reconnects without registering and sends an in-dialog request first: the PBX's BYE
/// follows it. Nothing is lost: both calls end with BYE/200 end to end.
#[tokio::test]
async fn calls_follow_a_phone_that_reconnects() {
    let pki = Pki::new("reconnect");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = tls_node(&pki, &backend("p", "udp", pbx_addr, 1)).await;

    let (old, rr) = call_from_tls_client(&pki, &n, &pbx, "c3").await;
    let contact = format!("sip:a@{};transport=tls", old.local);
    drop(old);
    until_closed(&n, flow_conn(&rr)).await;
    let mut phone = connect_tls(&pki, n.tls).await;
    let me = phone.local;
    let register = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKrereg;rport\r\n\
         From: <sip:a@127.0.0.1>;tag=r1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: rereg@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:a@{me};transport=tls>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send(register.as_bytes()).await;
    let (reg, from) = recv_udp(&pbx).await;
    pbx.send_to(&ResponseBuilder::new(&reg, 200, "OK").to_tag(b"reg").build(), from).await.unwrap();
    assert_eq!(phone.recv_final().await.status(), Some(200));
    pbx_hangs_up(&pbx, &n, &mut phone, &bye_from_pbx(&contact, &rr, pbx_addr, "c3", 7)).await;

    let (old, rr) = call_from_tls_client(&pki, &n, &pbx, "c4").await;
    let contact = format!("sip:a@{};transport=tls", old.local);
    drop(old);
    until_closed(&n, flow_conn(&rr)).await;
    let mut phone = connect_tls(&pki, n.tls).await;
    let routes: Vec<String> = rr.iter().rev().cloned().collect();
    let pbx_uri = format!("sip:bob@{pbx_addr}");
    phone.send(&in_dialog("INFO", &pbx_uri, &routes, phone.local, "TLS", "c4", 2)).await;
    let (info, from) = recv_udp(&pbx).await;
    assert_eq!(info.method_bytes(), b"INFO");
    pbx.send_to(&ResponseBuilder::new(&info, 200, "OK").build(), from).await.unwrap();
    assert_eq!(phone.recv_final().await.status(), Some(200));
    pbx_hangs_up(&pbx, &n, &mut phone, &bye_from_pbx(&contact, &rr, pbx_addr, "c4", 8)).await;
    n.server.shutdown().await;
}

/// Injected: a dialog as a new leader holds it after a failover (replicated: the phone's address, TLS flows travel
/// as TCP, no connection) and a phone that has not reconnected yet but listens for TLS at its Contact, as desk
/// phones do. The PBX's BYE must reach it there, over TLS; before, sipfront opened plain TCP to the phone's old
/// source port.
#[tokio::test]
async fn a_phone_not_back_yet_is_tried_at_its_contact_over_tls() {
    let pki = Pki::new("not-back");
    pki.leaf("front");
    pki.leaf("phone");
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = tls_node(&pki, &backend("p", "udp", pbx_addr, 1)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let contact_addr = listener.local_addr().unwrap();
    let id = DialogId::new(b"notback@test", b"fa", b"pbx");
    let replicated = Target { transport: Transport::Tcp, addr: "127.0.0.1:9".parse().unwrap(), conn: None };
    n.server.proxy.dialogs.confirm(id, &NewDialog { home: Some(0), client: Some(replicated), caller_cseq: 1 }, None);

    let contact = format!("sip:a@{contact_addr};transport=tls");
    let bye = bye_from_pbx(&contact, &[], pbx_addr, "notback", 9);
    pbx.send_to(bye.as_bytes(), n.udp).await.unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept()).await.expect("sipfront connects").unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(pki.server_config("phone"));
    let stream = tokio::time::timeout(WAIT, tls.accept(tcp)).await.expect("handshake in time").expect("TLS");
    let mut phone = TlsPeer { stream, buf: Vec::new(), local: contact_addr };
    let got = phone.recv().await;
    assert_eq!((got.method_bytes(), got.call_id()), (&b"BYE"[..], &b"notback@test"[..]));
    phone.send(&ResponseBuilder::new(&got, 200, "OK").build()).await;
    loop {
        let (m, _) = recv_udp(&pbx).await;
        if m.status() == Some(200) {
            break;
        }
    }
    n.server.shutdown().await;
}

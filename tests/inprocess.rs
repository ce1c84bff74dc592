//! In-process tier: a whole node (`Server::start`) on 127.0.0.1 port 0, driven by small Rust UAs over real UDP
//! and TCP sockets. Covers what SIPp cannot show: TCP keep-alive, idle close, connection reuse, transport-error
//! failover, a PBX calling a phone, and the drop counters. Every wait is bounded by a deadline.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use sipfront::config::Config;
use sipfront::server::Server;
use sipfront::sip::{HeaderName, ResponseBuilder};

mod support;

use support::*;

#[tokio::test]
async fn tcp_double_crlf_ping_gets_a_crlf_pong() {
    let pbx = udp_socket().await;
    let n = node(&backend("p", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let mut s = TcpStream::connect(n.tcp).await.unwrap();
    s.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut pong)).await.expect("pong in time").unwrap();
    assert_eq!(&pong, b"\r\n");
    n.server.shutdown().await;
}

#[tokio::test]
async fn idle_tcp_connection_is_closed() {
    let pbx = udp_socket().await;
    let n = node(&backend("p", "udp", pbx.local_addr().unwrap(), 1), "tcp_idle_timeout = \"1s\"").await;
    let mut s = TcpStream::connect(n.tcp).await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("closed within the deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "sipfront closed the idle connection");
}

#[tokio::test]
async fn unparseable_message_on_tcp_closes_only_that_connection() {
    let pbx = udp_socket().await;
    let n = node(&backend("p", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let mut bad = TcpStream::connect(n.tcp).await.unwrap();
    let mut good = TcpStream::connect(n.tcp).await.unwrap();
    bad.write_all(b"GARBAGE\r\nl: 0\r\n\r\n").await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(WAIT, bad.read(&mut b)).await.expect("closed within the deadline");
    assert!(matches!(r, Ok(0) | Err(_)));
    let me = good.local_addr().unwrap();
    good.write_all(&request("OPTIONS", &format!("sip:{}", n.tcp), me, "TCP", "g1")).await.unwrap();
    let ok = recv_tcp(&mut good, &mut Vec::new()).await;
    assert_eq!(ok.status(), Some(200), "the other connection still works");
    assert_eq!(n.server.proxy.stats.snapshot().malformed_dropped, 1);
}

#[tokio::test]
async fn requests_to_a_tcp_backend_share_one_connection() {
    let pbx = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = node(&backend("p", "tcp", pbx.local_addr().unwrap(), 1), "").await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    let (mut conn, _) = {
        phone.send_to(&request("MESSAGE", "sip:bob@127.0.0.1", me, "UDP", "r1"), n.udp).await.unwrap();
        tokio::time::timeout(WAIT, pbx.accept()).await.expect("sipfront connects").unwrap()
    };
    let mut buf = Vec::new();
    for i in 1..=3 {
        if i > 1 {
            phone.send_to(&request("MESSAGE", "sip:bob@127.0.0.1", me, "UDP", &format!("r{i}")), n.udp).await.unwrap();
        }
        let req = recv_tcp(&mut conn, &mut buf).await;
        assert_eq!(req.method_bytes(), b"MESSAGE");
        conn.write_all(&ResponseBuilder::new(&req, 200, "OK").to_tag(b"x").build()).await.unwrap();
        let (resp, _) = recv_udp(&phone).await;
        assert_eq!(resp.status(), Some(200));
    }
    // No second connection was opened for requests 2 and 3.
    assert!(tokio::time::timeout(Duration::from_millis(200), pbx.accept()).await.is_err());
}

#[tokio::test]
async fn transport_error_on_the_first_backend_fails_over_to_the_next() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap(); // dropped: refused
    let pbx2 = udp_socket().await;
    let backends =
        format!("{}{}", backend("dead", "tcp", closed, 1), backend("live", "udp", pbx2.local_addr().unwrap(), 2));
    let n = node(&backends, "").await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("OPTIONS", "sip:bob@127.0.0.1", me, "UDP", "f1"), n.udp).await.unwrap();
    let (req, from) = recv_udp(&pbx2).await;
    assert_eq!(req.method_bytes(), b"OPTIONS");
    pbx2.send_to(&ResponseBuilder::new(&req, 200, "OK").to_tag(b"y").build(), from).await.unwrap();
    let (resp, _) = recv_udp(&phone).await;
    assert_eq!(resp.status(), Some(200));
    assert_eq!(n.server.proxy.stats.snapshot().backend_failovers, 1);
}

#[tokio::test]
async fn a_pbx_can_call_a_phone_by_its_address() {
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = node(&backend("p", "udp", pbx_addr, 1), "").await;
    let phone = udp_socket().await;
    let ruri = format!("sip:alice@{}", phone.local_addr().unwrap());
    pbx.send_to(&request("INVITE", &ruri, pbx_addr, "UDP", "p1"), n.udp).await.unwrap();
    let (trying, _) = recv_udp(&pbx).await;
    assert_eq!(trying.status(), Some(100));
    let (inv, from) = recv_udp(&phone).await;
    assert_eq!(from, n.udp, "requests to phones leave from the listener");
    assert_eq!(inv.request_uri(), ruri.as_bytes());
    assert!(inv.header(HeaderName::RecordRoute).is_some());
    assert_eq!(inv.header_values(HeaderName::Via).count(), 2);
    phone.send_to(&ResponseBuilder::new(&inv, 200, "OK").to_tag(b"ph").build(), from).await.unwrap();
    let (ok, _) = recv_udp(&pbx).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header_values(HeaderName::Via).count(), 1, "our Via stripped");
    assert_eq!(n.server.proxy.dialogs.len(), 1);
}

#[tokio::test]
async fn garbage_is_dropped_and_malformed_requests_are_answered_and_counted() {
    let pbx = udp_socket().await;
    let n = node(&backend("p", "udp", pbx.local_addr().unwrap(), 1), "").await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    phone.send_to(b"\x00\x01garbage\xff", n.udp).await.unwrap();
    let no_call_id = String::from_utf8(request("OPTIONS", "sip:bob@127.0.0.1", me, "UDP", "m1").to_vec())
        .unwrap()
        .replace("Call-ID: m1@test\r\n", "");
    phone.send_to(no_call_id.as_bytes(), n.udp).await.unwrap();
    // The answer has no Call-ID either (there was none to copy), so read it raw.
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(WAIT, phone.recv_from(&mut buf)).await.expect("400 in time").unwrap();
    let text = String::from_utf8_lossy(&buf[..len]);
    assert!(text.starts_with("SIP/2.0 400 Bad Request (missing Call-ID)\r\n"), "{text}");
    assert!(text.contains("\r\nWarning: 399 127.0.0.1 \"missing Call-ID\"\r\n"), "{text}");
    let s = n.server.proxy.stats.snapshot();
    assert_eq!((s.malformed_dropped, s.malformed_rejected), (1, 1), "the garbage came first and was counted");
}

#[tokio::test]
async fn ipv6_listener_writes_bracketed_via_and_record_route() {
    let pbx = UdpSocket::bind("[::1]:0").await.unwrap();
    let text = format!(
        "[node]\nid = 1\nname = \"v6\"\n[sip]\nlisten = [\"udp:[::1]:0\"]\nadvertise = \"::1\"\n[health]\nenabled = false\n{}",
        backend("p", "udp", pbx.local_addr().unwrap(), 1)
    );
    let server = Server::start(&Config::from_toml(&text).unwrap(), CancellationToken::new()).await.unwrap();
    let front = server.local_addrs()[0].1;
    let phone = UdpSocket::bind("[::1]:0").await.unwrap();
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("INVITE", "sip:bob@[::1]", me, "UDP", "v6"), front).await.unwrap();
    let (inv, _) = recv_udp(&pbx).await;
    let via = inv.top_via().unwrap();
    assert_eq!((via.sent_by.host, via.sent_by.port), (&b"::1"[..], Some(front.port())));
    let rr = String::from_utf8(inv.header(HeaderName::RecordRoute).unwrap().to_vec()).unwrap();
    assert!(rr.starts_with(&format!("<sip:[::1]:{};d=", front.port())) && rr.ends_with(";lr>"), "{rr}");
    let client_via = inv.header_values(HeaderName::Via).nth(1).unwrap();
    assert!(String::from_utf8_lossy(client_via).contains(&format!(";received=::1;rport={}", me.port())));
}

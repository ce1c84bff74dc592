//! sipfront is no open relay: a stranger's request reaches the configured backends or nothing, whatever its
//! Route, Request-URI, To tag or Via say, and a stranger's response is not relayed anywhere. Each test puts a
//! "target" socket on loopback that is neither a backend nor a registered phone and checks that not one byte
//! reached it; the refusals are counted. `routing.relay_allow` opens exactly what it lists.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;

use support::*;

/// Whether anything reaches `sock` within a short while (the bytes, for the failure message).
async fn received(sock: &UdpSocket) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

async fn final_status(phone: &UdpSocket) -> u16 {
    loop {
        let (m, _) = recv_udp(phone).await;
        if let Some(s) = m.status().filter(|s| *s >= 200) {
            return s;
        }
    }
}

fn invite(me: SocketAddr, ruri: &str, extra: &str, id: &str) -> Bytes {
    Bytes::from(format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id};rport\r\n{extra}\
         From: <sip:mallory@{me}>;tag=m{id}\r\nTo: <{ruri}>\r\nCall-ID: {id}@relay\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:mallory@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

struct World {
    n: Node,
    pbx: UdpSocket,
    target: UdpSocket,
    mallory: UdpSocket,
}

async fn world(extra_sip: &str) -> World {
    let pbx = udp_socket().await;
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), extra_sip).await;
    let target = UdpSocket::bind("127.0.0.77:0").await.unwrap();
    let mallory = UdpSocket::bind("127.0.0.66:0").await.unwrap();
    World { n, pbx, target, mallory }
}

/// A preloaded Route to a foreign host: 403, nothing at the target, counted.
#[tokio::test]
async fn a_preloaded_route_to_a_stranger_is_refused() {
    let w = world("").await;
    let (me, t) = (w.mallory.local_addr().unwrap(), w.target.local_addr().unwrap());
    let req = invite(me, "sip:victim@127.0.0.1", &format!("Route: <sip:{t};lr>\r\n"), "r1");
    w.mallory.send_to(&req, w.n.udp).await.unwrap();
    assert_eq!(final_status(&w.mallory).await, 403);
    assert_eq!(received(&w.target).await, None, "the target must see nothing");
    assert_eq!(received(&w.pbx).await, None);
    // Our own Route first, then the stranger: the same.
    let ours = format!("Route: <sip:{};lr>, <sip:{t};lr>\r\n", w.n.udp);
    w.mallory.send_to(&invite(me, "sip:victim@127.0.0.1", &ours, "r2"), w.n.udp).await.unwrap();
    assert_eq!(final_status(&w.mallory).await, 403);
    assert_eq!(received(&w.target).await, None);
    assert_eq!(w.n.server.proxy.stats.snapshot().relay_refused, 2);
    w.n.server.shutdown().await;
}

/// Our Route without a token and a foreign Request-URI: a new request goes to the PBX (its dial plan decides),
/// never to the Request-URI.
#[tokio::test]
async fn a_new_request_for_elsewhere_goes_to_the_pbx() {
    let w = world("").await;
    let (me, t) = (w.mallory.local_addr().unwrap(), w.target.local_addr().unwrap());
    let ours = format!("Route: <sip:{};lr>\r\n", w.n.udp);
    for (i, method) in ["INVITE", "OPTIONS", "MESSAGE", "REGISTER"].iter().enumerate() {
        let req = request(method, &format!("sip:victim@{t}"), me, "UDP", &format!("f{i}"));
        let req = String::from_utf8_lossy(&req).replacen("\r\nFrom:", &format!("\r\n{ours}From:"), 1);
        w.mallory.send_to(req.as_bytes(), w.n.udp).await.unwrap();
        let (got, _) = recv_udp(&w.pbx).await;
        assert_eq!(got.method_bytes(), method.as_bytes(), "{method} reached the PBX");
    }
    assert_eq!(received(&w.target).await, None, "the target must see nothing");
    w.n.server.shutdown().await;
}

/// A made-up To tag and a foreign Request-URI: no dialog of ours, no token: 481, nothing forwarded.
#[tokio::test]
async fn an_in_dialog_request_of_no_dialog_is_refused() {
    let w = world("").await;
    let (me, t) = (w.mallory.local_addr().unwrap(), w.target.local_addr().unwrap());
    let req = String::from_utf8_lossy(&invite(me, &format!("sip:victim@{t}"), "", "d1")).replacen(
        &format!("To: <sip:victim@{t}>"),
        &format!("To: <sip:victim@{t}>;tag=madeup"),
        1,
    );
    w.mallory.send_to(req.as_bytes(), w.n.udp).await.unwrap();
    assert_eq!(final_status(&w.mallory).await, 481);
    assert_eq!(received(&w.target).await, None);
    assert_eq!(received(&w.pbx).await, None);
    w.n.server.shutdown().await;
}

/// A stranger writing the PBX's address into its Via is still a stranger: its request for elsewhere goes to the
/// PBX, not to its Request-URI.
#[tokio::test]
async fn a_forged_backend_via_does_not_make_a_backend() {
    let w = world("").await;
    let (pbx, t) = (w.pbx.local_addr().unwrap(), w.target.local_addr().unwrap());
    let req = invite(pbx, &format!("sip:victim@{t}"), "", "v1");
    w.mallory.send_to(&req, w.n.udp).await.unwrap();
    assert_eq!(received(&w.target).await, None, "the target must see nothing");
    w.n.server.shutdown().await;
}

/// A host name is never resolved for a stranger: 403 (or the PBX takes a new request), nothing leaves.
#[tokio::test]
async fn host_names_are_not_resolved_on_the_call_path() {
    let w = world("").await;
    let me = w.mallory.local_addr().unwrap();
    let req = invite(me, "sip:victim@127.0.0.1", "Route: <sip:localhost:5999;lr>\r\n", "n1");
    w.mallory.send_to(&req, w.n.udp).await.unwrap();
    assert_eq!(final_status(&w.mallory).await, 403);
    w.n.server.shutdown().await;
}

/// A response whose top Via names sipfront but whose branch sipfront did not make is not relayed to its second
/// Via (a reflection through us).
#[tokio::test]
async fn a_strangers_response_is_not_relayed() {
    let w = world("").await;
    let t = w.target.local_addr().unwrap();
    let resp = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK0badf00d.0123456789abcdef\r\n\
         Via: SIP/2.0/UDP {t};branch=z9hG4bKvictim\r\nFrom: <sip:a@x>;tag=a\r\nTo: <sip:b@x>;tag=b\r\n\
         Call-ID: reflect\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        w.n.udp
    );
    w.mallory.send_to(resp.as_bytes(), w.n.udp).await.unwrap();
    assert_eq!(received(&w.target).await, None, "the target must see nothing");
    w.n.server.shutdown().await;
}

/// `routing.relay_allow` lists where else requests may go: a Route to a listed address passes.
#[tokio::test]
async fn the_allow_list_opens_what_it_lists() {
    let w = world("[routing]\nrelay_allow = [\"127.0.0.77/32\"]").await;
    let (me, t) = (w.mallory.local_addr().unwrap(), w.target.local_addr().unwrap());
    let req = invite(me, "sip:carrier@127.0.0.1", &format!("Route: <sip:{t};lr>\r\n"), "a1");
    w.mallory.send_to(&req, w.n.udp).await.unwrap();
    let got = received(&w.target).await.expect("an allowed hop gets the request");
    assert!(got.starts_with("INVITE sip:carrier@127.0.0.1 SIP/2.0"), "{got}");
    w.n.server.shutdown().await;
}

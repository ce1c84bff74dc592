//! SIP over WebSocket (RFC 7118), in process, with the client of `support/ws.rs` and a raw-socket UDP PBX: a
//! WS client registers, calls and hangs up, and is called by the PBX through its registration over its own
//! connection; the same over `wss:`; a call to a client whose connection is gone fails with 430; upgrades with a
//! foreign Origin or without the `sip` subprotocol are refused, and the real binary counts the refusals by reason
//! and oversized frames in its metrics; pings are answered. Every wait has a deadline.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

use sipfront::sip::{HeaderName, ResponseBuilder};

mod support;

use support::tls::Pki;
use support::ws::*;
use support::*;

/// An in-dialog request from the WS client along a route set (already in the order to send).
fn in_dialog(method: &str, ruri: &str, routes: &[String], host: &str, tp: &str, call: &str, cseq: u32) -> Vec<u8> {
    let mut s = format!("{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{tp} {host};branch=z9hG4bK{call}{method}{cseq}\r\n");
    for r in routes {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "From: <sip:a@example.com>;tag=fa\r\nTo: <sip:bob@127.0.0.1>;tag=pbx\r\nCall-ID: {call}@test\r\n\
         CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    s.into_bytes()
}

/// REGISTER through sipfront to the PBX, which answers 200; returns the Path the PBX saw.
async fn register<S: AsyncRead + AsyncWrite + Unpin>(peer: &mut WsPeer<S>, pbx: &UdpSocket, n: &WsNode) -> String {
    let (host, tp) = (peer.host.clone(), peer.transport);
    let lower = tp.to_ascii_lowercase();
    let register = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{tp} {host};branch=z9hG4bKreg{lower}\r\n\
         From: <sip:100@pbx>;tag=r1\r\nTo: <sip:100@pbx>\r\nCall-ID: reg{lower}@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:100@{host};transport={lower}>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    peer.send(register.as_bytes()).await;
    let (reg, from) = recv_udp(pbx).await;
    assert_eq!(reg.method_bytes(), b"REGISTER");
    let vias = values(&reg, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/UDP 127.0.0.1:{};", n.udp.port())), "{vias:?}");
    assert!(vias[1].starts_with(&format!("SIP/2.0/{tp} {host};")), "the client's Via is kept: {vias:?}");
    let path = text(reg.header(HeaderName::Path).expect("our Path"));
    assert!(path.contains(&format!("@127.0.0.1:{};lr;ob>", n.udp.port())), "the Path faces the PBX: {path}");
    let contact = format!("<sip:100@{host};transport={lower}>;expires=120");
    let ok = ResponseBuilder::new(&reg, 200, "OK").to_tag(b"reg").header("Contact", contact.as_bytes()).build();
    pbx.send_to(&ok, from).await.unwrap();
    let ok = peer.recv_final().await;
    assert_eq!(ok.status(), Some(200), "the 200 came back over the WebSocket although the Via host is .invalid");
    path
}

/// INVITE/200/ACK then BYE/200 from the WS client to the PBX; `port` is the client's listener.
async fn call_and_hang_up<S: AsyncRead + AsyncWrite + Unpin>(
    peer: &mut WsPeer<S>,
    pbx: &UdpSocket,
    n: &WsNode,
    port: u16,
    call: &str,
) {
    let (host, tp) = (peer.host.clone(), peer.transport);
    let lower = tp.to_ascii_lowercase();
    let invite = format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{tp} {host};branch=z9hG4bK{call}inv\r\n\
         From: <sip:a@example.com>;tag=fa\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: {call}@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:a@{host};transport={lower};ob>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    peer.send(invite.as_bytes()).await;
    let (inv, from) = recv_udp(pbx).await;
    assert_eq!(inv.method_bytes(), b"INVITE");
    let rr = values(&inv, HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "transport changes: double Record-Route {rr:?}");
    assert!(rr[0].starts_with(&format!("<sip:127.0.0.1:{};d=", n.udp.port())), "{rr:?}");
    // RFC 7118 §5.2: the URI parameter is `ws` for WSS too.
    assert!(rr[1].starts_with(&format!("<sip:127.0.0.1:{port};transport=ws;ft=")), "{rr:?}");
    let contact = format!("<sip:bob@{}>", pbx.local_addr().unwrap());
    let mut ok = ResponseBuilder::new(&inv, 200, "OK").to_tag(b"pbx").header("Contact", contact.as_bytes());
    for r in &rr {
        ok = ok.header("Record-Route", r.as_bytes());
    }
    pbx.send_to(&ok.build(), from).await.unwrap();
    let ok = peer.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(values(&ok, HeaderName::Via).len(), 1, "our Via is gone");
    let routes: Vec<String> = rr.iter().rev().cloned().collect();
    let pbx_uri = format!("sip:bob@{}", pbx.local_addr().unwrap());
    peer.send(&in_dialog("ACK", &pbx_uri, &routes, &host, tp, call, 1)).await;
    let (ack, _) = recv_udp(pbx).await;
    assert_eq!(ack.method_bytes(), b"ACK");

    peer.send(&in_dialog("BYE", &pbx_uri, &routes, &host, tp, call, 2)).await;
    let (bye, from) = recv_udp(pbx).await;
    assert_eq!(bye.method_bytes(), b"BYE");
    pbx.send_to(&ResponseBuilder::new(&bye, 200, "OK").build(), from).await.unwrap();
    let ok = peer.recv_final().await;
    assert_eq!((ok.status(), ok.cseq_method()), (Some(200), sipfront::sip::Method::Bye));
}

#[tokio::test]
async fn ws_client_registers_calls_and_hangs_up() {
    let pki = Pki::new("ws-call");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let mut phone = connect_ws(n.ws).await;
    register(&mut phone, &pbx, &n).await;
    call_and_hang_up(&mut phone, &pbx, &n, n.ws.port(), "w1").await;
    n.server.shutdown().await;
}

#[tokio::test]
async fn wss_client_registers_calls_and_hangs_up() {
    let pki = Pki::new("wss-call");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let mut phone = connect_wss(&pki, n.wss).await;
    register(&mut phone, &pbx, &n).await;
    call_and_hang_up(&mut phone, &pbx, &n, n.wss.port(), "s1").await;
    n.server.shutdown().await;
}

/// The PBX sends an INVITE along the Path of the client's registration; it must arrive over the client's
/// WebSocket (the Contact's host is `.invalid`), and the client's 486 must reach the PBX.
async fn pbx_calls_the_client<S: AsyncRead + AsyncWrite + Unpin>(
    peer: &mut WsPeer<S>,
    pbx: &UdpSocket,
    n: &WsNode,
    path: &str,
    port: u16,
    call: &str,
) {
    let (tp, lower) = (peer.transport, peer.transport.to_ascii_lowercase());
    let pbx_addr = pbx.local_addr().unwrap();
    let ruri = format!("sip:100@{};transport={lower}", peer.host);
    let invite = String::from_utf8(request("INVITE", &ruri, pbx_addr, "UDP", call).to_vec())
        .unwrap()
        .replace("Max-Forwards: 70", &format!("Route: {path}\r\nMax-Forwards: 70"));
    pbx.send_to(invite.as_bytes(), n.udp).await.unwrap();
    let inv = peer.recv().await;
    assert_eq!(inv.method_bytes(), b"INVITE", "the INVITE arrived over the WebSocket");
    let vias = values(&inv, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/{tp} 127.0.0.1:{port};")), "{vias:?}");
    let rr = values(&inv, HeaderName::RecordRoute);
    assert!(rr.iter().any(|r| r.contains(";transport=ws;")), "the client-facing entry (`ws` for WSS too): {rr:?}");
    peer.send(&ResponseBuilder::new(&inv, 486, "Busy Here").to_tag(b"busy").build()).await;
    pbx_acks_final(pbx, n.udp, &invite, 486).await;
}

#[tokio::test]
async fn the_pbx_calls_a_ws_client_through_its_registration() {
    let pki = Pki::new("ws-callee");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let mut phone = connect_ws(n.ws).await;
    let path = register(&mut phone, &pbx, &n).await;
    pbx_calls_the_client(&mut phone, &pbx, &n, &path, n.ws.port(), "win").await;
    // No graceful shutdown: it would wait out timer I (T4 on the UDP leg) of the ACKed INVITE.
}

#[tokio::test]
async fn the_pbx_calls_a_wss_client_through_its_registration() {
    let pki = Pki::new("wss-callee");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let mut phone = connect_wss(&pki, n.wss).await;
    let path = register(&mut phone, &pbx, &n).await;
    pbx_calls_the_client(&mut phone, &pbx, &n, &path, n.wss.port(), "sin").await;
}

#[tokio::test]
async fn a_call_to_a_ws_client_whose_connection_is_gone_fails_for_the_pbx() {
    let pki = Pki::new("ws-gone");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = ws_node(&pki, &backend("p", "udp", pbx_addr, 1)).await;
    let mut phone = connect_ws(n.ws).await;
    let path = register(&mut phone, &pbx, &n).await;
    let ruri = format!("sip:100@{};transport=ws", phone.host);
    phone.ws.close(None).await.unwrap();
    drop(phone);
    // sipfront never dials a WebSocket client: the PBX hears 430 Flow Failed instead of silence.
    let invite = String::from_utf8(request("INVITE", &ruri, pbx_addr, "UDP", "gone").to_vec())
        .unwrap()
        .replace("Max-Forwards: 70", &format!("Route: {path}\r\nMax-Forwards: 70"));
    let status = loop {
        pbx.send_to(invite.as_bytes(), n.udp).await.unwrap();
        let (m, _) = recv_udp(&pbx).await;
        if m.status().is_some_and(|s| s >= 200) {
            break m.status().unwrap();
        }
    };
    assert_eq!(status, 430, "Flow Failed (RFC 5626 §5.3): the PBX may try the client's other registrations");
}

fn refusal_status(r: Result<WsPeer<tokio::net::TcpStream>, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn a_foreign_origin_or_a_missing_sip_subprotocol_is_refused() {
    let pki = Pki::new("ws-refuse");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let foreign = try_connect_ws(n.ws, Some("https://evil.example.net"), Some("sip")).await;
    assert_eq!(refusal_status(foreign), 403);
    assert_eq!(refusal_status(try_connect_ws(n.ws, Some(ORIGIN), None).await), 400);
    assert_eq!(refusal_status(try_connect_ws(n.ws, Some(ORIGIN), Some("chat, xmpp")).await), 400);
    // Among several offered subprotocols `sip` is picked; a client without an Origin (not a browser) is let in.
    try_connect_ws(n.ws, None, Some("chat, sip")).await.expect("sip among others, no Origin");

    // A ping is answered with its pong, and the listener still serves SIP.
    let mut phone = connect_ws(n.ws).await;
    phone.ws.send(Frame::Ping(bytes::Bytes::from_static(b"hi"))).await.unwrap();
    let pong = tokio::time::timeout(WAIT, phone.ws.next()).await.expect("pong in time").unwrap().unwrap();
    assert_eq!(pong, Frame::Pong(bytes::Bytes::from_static(b"hi")));
    let host = phone.host.clone();
    let options = String::from_utf8(
        request("OPTIONS", &format!("sip:{};transport=ws", n.ws), pbx.local_addr().unwrap(), "WS", "o1").to_vec(),
    )
    .unwrap()
    .replace(&format!("SIP/2.0/WS {}", pbx.local_addr().unwrap()), &format!("SIP/2.0/WS {host}"));
    phone.send(options.as_bytes()).await;
    let ok = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200), "sipfront answers OPTIONS on the WebSocket");
    n.server.shutdown().await;
}

#[tokio::test]
async fn a_frame_above_max_frame_size_closes_that_connection_only() {
    let pki = Pki::new("ws-big");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = ws_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let mut big = connect_ws(n.ws).await;
    let mut other = connect_ws(n.ws).await;
    // 70 000 bytes: above the default max_frame_size (65 535).
    let _ = big.ws.send(Frame::text("x".repeat(70_000))).await;
    let closed = loop {
        match tokio::time::timeout(WAIT, big.ws.next()).await.expect("closed in time") {
            None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => break true,
            Some(Ok(_)) => continue,
        }
    };
    assert!(closed);
    register(&mut other, &pbx, &n).await;
    n.server.shutdown().await;
}

/// The real binary, killed on drop.
struct Binary(std::process::Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /metrics from the admin listener (no token: the exposition is open).
async fn metrics(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.expect("metrics in time").unwrap();
    out
}

#[tokio::test]
async fn the_binary_counts_refused_upgrades_and_oversized_frames() {
    let dir = std::env::temp_dir().join(format!("sipfront-ws-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ws: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"udp:127.0.0.1:0\", \"ws:{ws}\"]\nadvertise = \"127.0.0.1\"\n\
         [log]\nlevel = \"warn\"\n[health]\nenabled = false\n[admin]\nlisten = \"{admin}\"\n\
         [websocket]\nallowed_origins = [\"{ORIGIN}\"]\n\
         [[backend]]\nname = \"p\"\nuri = \"sip:127.0.0.1:5080\"\n"
    );
    let cfg = dir.join("sipfront.toml");
    std::fs::write(&cfg, config).unwrap();
    let _bin = Binary(
        std::process::Command::new(env!("CARGO_BIN_EXE_sipfront"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(admin).await.is_err() || tokio::net::TcpStream::connect(ws).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "sipfront listens in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refusal_status(try_connect_ws(ws, Some("https://evil.example.net"), Some("sip")).await), 403);
    assert_eq!(refusal_status(try_connect_ws(ws, Some("https://evil.example.net"), Some("sip")).await), 403);
    assert_eq!(refusal_status(try_connect_ws(ws, Some(ORIGIN), None).await), 400);
    let mut big = connect_ws(ws).await;
    let _ = big.ws.send(Frame::text("x".repeat(70_000))).await;
    while let Ok(Some(Ok(f))) = tokio::time::timeout(WAIT, big.ws.next()).await {
        if matches!(f, Frame::Close(_)) {
            break;
        }
    }
    let text = metrics(admin).await;
    assert!(text.contains("sipfront_malformed_dropped_total{reason=\"ws_too_large\"} 1"), "{text}");
    let closed_too_large = |l: &&str| {
        l.starts_with("sipfront_connections_closed_total{")
            && l.contains("transport=\"ws\"")
            && l.contains("reason=\"too_large\"")
            && l.ends_with(" 1")
    };
    assert!(text.lines().any(|l| closed_too_large(&l)), "one close counted as too_large: {text}");
    assert!(text.contains("sipfront_ws_refused_total{reason=\"origin\"} 2"), "{text}");
    assert!(text.contains("sipfront_ws_refused_total{reason=\"subprotocol\"} 1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

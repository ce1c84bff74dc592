//! A banned source loses its stream connections, not only its messages.
//!
//! With the real binary: a scanner's OPTIONS (`User-Agent: friendly-scanner`) over TCP bans its address
//! (127.0.2.N) and closes that connection; the idle TCP, TLS and WebSocket connections it had opened before are
//! closed within about a second (the guard's sweeper); a new TCP connection from it is closed at once and a new
//! TLS one never completes its handshake; meanwhile a client on 127.0.3.N, with a connection opened before the
//! ban and new ones after, gets its OPTIONS answered; and every close shows in
//! `sipfront_connections_closed_total{reason="banned"}`. In process: the verdicts the transports act on, for a ban
//! by rate and by User-Agent, and the check at accept (a backend is never refused).
//!
//! Test numbers (tests/common/mod.rs): 194. sipfront listens on 127.0.0.N (UDP and TCP :5060, TLS :5061,
//! WebSocket :5062, admin :9090). Every wait waits for the event, with a deadline.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite;

use common::*;

/// Deadline for anything that must happen.
const WAIT: Duration = Duration::from_secs(10);
/// A banned source's connection must be closed this soon: at once, or by the guard's sweeper (every second).
const CLOSE_WITHIN: Duration = Duration::from_secs(4);

/// Read and discard until the peer closes (EOF, reset, a WebSocket Close) or `wait` passes: whether it closed.
/// `read` reads once, its socket bounded by a short read timeout; `Ok(true)`: something arrived, read again.
fn closes_within(wait: Duration, mut read: impl FnMut() -> std::io::Result<bool>) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match read() {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

fn tcp_closes_within(p: &mut TcpPeer, wait: Duration) -> bool {
    p.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    closes_within(wait, || p.stream.read(&mut buf).map(|n| n > 0))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection from `from`, verified by the test CA (its leaf names 127.0.0.1); the error when the
/// handshake does not complete.
fn tls_connect(pki: &support::tls::Pki, from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TlsStream> {
    let mut sock = TcpPeer::connect(from, to).stream;
    sock.set_read_timeout(Some(WAIT))?;
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let mut conn = rustls::ClientConnection::new(pki.client_config(), name).expect("client connection");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Send OPTIONS `label` over a TLS connection and read its answer's status line.
fn tls_options(s: &mut TlsStream, label: &str) -> String {
    let local = s.sock.local_addr().unwrap();
    let to = s.sock.peer_addr().unwrap();
    s.write_all(options_to(local, to, Tp::Tcp, label).replace("SIP/2.0/TCP", "SIP/2.0/TLS").as_bytes()).unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no answer to OPTIONS {label} over TLS");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("OPTIONS {label} over TLS: {e}"));
        assert!(n > 0, "OPTIONS {label} over TLS: the connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned()
}

fn tls_closes_within(s: &mut TlsStream, wait: Duration) -> bool {
    s.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    closes_within(wait, || s.read(&mut buf).map(|n| n > 0))
}

type WsStream = tungstenite::WebSocket<TcpStream>;

/// A WebSocket connection from `from` offering the `sip` subprotocol (no Origin: not a browser).
fn ws_connect(from: Ipv4Addr, to: SocketAddr) -> WsStream {
    use tungstenite::client::IntoClientRequest;
    let sock = TcpPeer::connect(from, to).stream;
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("ws://{to}/").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", tungstenite::http::HeaderValue::from_static("sip"));
    tungstenite::client(req, sock).expect("websocket upgrade").0
}

/// Send OPTIONS `label` in one text frame and return the status line of the answer.
fn ws_options(ws: &mut WsStream, label: &str) -> String {
    let (local, to) = (ws.get_ref().local_addr().unwrap(), ws.get_ref().peer_addr().unwrap());
    ws.send(tungstenite::Message::text(options_to(local, to, Tp::Tcp, label).replace("SIP/2.0/TCP", "SIP/2.0/WS")))
        .unwrap();
    loop {
        match ws.read().unwrap_or_else(|e| panic!("OPTIONS {label} over WS: {e}")) {
            tungstenite::Message::Text(t) => return t.lines().next().unwrap_or_default().to_owned(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("OPTIONS {label} over WS: {other:?}"),
        }
    }
}

fn ws_closes_within(ws: &mut WsStream, wait: Duration) -> bool {
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    closes_within(wait, || match ws.read() {
        Ok(tungstenite::Message::Close(_)) => Ok(false),
        Ok(_) => Ok(true),
        Err(tungstenite::Error::Io(e)) => Err(e),
        Err(e) => Err(std::io::Error::other(e)),
    })
}

/// A TCP connection from `from` on which sipfront answers an OPTIONS.
fn answered(h: &Harness, from: Ipv4Addr, label: &str) -> TcpPeer {
    let mut p = TcpPeer::connect(from, h.sipfront());
    p.send(options_to(p.local, h.sipfront(), Tp::Tcp, label).as_bytes()).unwrap();
    assert_eq!(p.expect_msg(WAIT, &format!("200 to OPTIONS {label}")).status(), Some(200), "{label}");
    p
}

#[test]
fn a_banned_sources_connections_are_closed_and_new_ones_refused_while_others_are_served() {
    let pki = support::tls::Pki::new("guard-streams");
    pki.leaf("front");
    let mut h = Harness::new("guard_streams", 194);
    let (tls_addr, ws_addr, admin) = (h.front(5061), h.front(5062), format!("{}:9090", h.front_ip()));
    let cfg = FrontConfig::new()
        .backend("pbx", h.pbx(PBX1_PORT), Tp::Udp)
        .listen(&format!("tls:{tls_addr}"))
        .listen(&format!("ws:{ws_addr}"))
        .section(&format!("[admin]\nlisten = \"{admin}\""))
        .section(&support::tls::tls_section(&pki, "front"))
        // Loopback is allowed by default: these tests play strangers on loopback addresses.
        .section("[security]\nallow = []");
    h.start_sipfront(&cfg);
    let n = h.n;
    let (attacker, client) = (Ipv4Addr::new(127, 0, 2, n), Ipv4Addr::new(127, 0, 3, n));

    // Before the ban: the attacker's connections of every kind work, and the client holds one too.
    let mut idle_tcp = answered(&h, attacker, "idle-tcp");
    let mut idle_tls = tls_connect(&pki, attacker, tls_addr).expect("a TLS handshake before the ban");
    assert!(tls_options(&mut idle_tls, "idle-tls").starts_with("SIP/2.0 200"));
    let mut idle_ws = ws_connect(attacker, ws_addr);
    assert!(ws_options(&mut idle_ws, "idle-ws").starts_with("SIP/2.0 200"));
    let mut kept = answered(&h, client, "kept");

    // (a) The scanner's request bans its address and closes the connection it came on.
    let mut scanner = TcpPeer::connect(attacker, h.sipfront());
    let scan = options_to(scanner.local, h.sipfront(), Tp::Tcp, "scan").replacen(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nUser-Agent: friendly-scanner\r\n",
        1,
    );
    scanner.send(scan.as_bytes()).unwrap();
    let banned_at = Instant::now();
    match scanner.recv(CLOSE_WITHIN) {
        TcpRead::Closed => {}
        other => panic!("the scanner's connection must be closed after its request banned it, got {other:?}"),
    }

    // (b) Its idle connections, opened before the ban, are closed too, well before any idle timeout.
    assert!(tcp_closes_within(&mut idle_tcp, CLOSE_WITHIN), "the banned source's idle TCP connection is still open");
    assert!(tls_closes_within(&mut idle_tls, CLOSE_WITHIN), "the banned source's idle TLS connection is still open");
    assert!(ws_closes_within(&mut idle_ws, CLOSE_WITHIN), "the banned source's idle WS connection is still open");
    eprintln!("the banned source's connections were closed {:?} after the ban", banned_at.elapsed());

    // (c) A new connection from it is closed at once, and a TLS one never completes its handshake.
    let mut fresh = TcpPeer::connect(attacker, h.sipfront());
    let opened = Instant::now();
    assert!(tcp_closes_within(&mut fresh, Duration::from_secs(2)), "a new TCP connection from a banned source");
    assert!(opened.elapsed() < Duration::from_secs(1), "closed at accept, not later: {:?}", opened.elapsed());
    match tls_connect(&pki, attacker, tls_addr) {
        Err(_) => {}
        Ok(_) => panic!("a banned source completed a TLS handshake"),
    }

    // (d) The client on another address is still served: on its old connection and on new ones.
    kept.send(options_to(kept.local, h.sipfront(), Tp::Tcp, "kept-again").as_bytes()).unwrap();
    assert_eq!(kept.expect_msg(WAIT, "200 on the client's old connection").status(), Some(200));
    answered(&h, client, "new-tcp");
    let mut tls = tls_connect(&pki, client, tls_addr).expect("the client's TLS handshake");
    assert!(tls_options(&mut tls, "new-tls").starts_with("SIP/2.0 200"));
    assert!(!tcp_closes_within(&mut kept, Duration::from_millis(300)), "the client's connection stays open");

    // (e) Every close is counted: the scanner's, the idle ones and the refused new ones.
    let banned = |transport| {
        labelled_counter(&admin, "sipfront_connections_closed_total", &[("transport", transport), ("reason", "banned")])
    };
    assert_eq!(
        (banned("tcp"), banned("tls"), banned("ws")),
        (3.0, 2.0, 1.0),
        "closes counted as banned (tcp, tls, ws)"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// The verdicts behind the closes, in process: a stream message from a banned source (banned before, or by this
/// very message, by rate or by User-Agent) is `Refused`; another source's is `Accepted`; a banned source gets no
/// connection, unless it is a backend (a backend is never limited). Paused time: the buckets refill on tokio's
/// clock, so a slow machine cannot refill one between two messages.
#[tokio::test(start_paused = true)]
async fn messages_and_connections_of_banned_sources_are_refused() {
    use bytes::Bytes;
    use sipfront::transport::{Inbound, Source, Transport, Verdict};

    let text = "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"udp:127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
                [log]\nlevel = \"warn\"\n[health]\nenabled = false\n[security]\nallow = []\nrate = 3\nburst = 3\n\
                register_rate = 3\nregister_burst = 3\ninitial_rate = 3\ninitial_burst = 3\nban_after = 1\n\
                [[backend]]\nname = \"pbx\"\nuri = \"sip:192.0.2.99:5060\"\n";
    let cfg = sipfront::config::Config::from_toml(text).expect("test config");
    let server =
        sipfront::server::Server::start(&cfg, tokio_util::sync::CancellationToken::new()).await.expect("start");
    let inbound = sipfront::proxy::ProxyInbound(server.proxy.clone());
    let tcp =
        |ip: &str, conn| Source { transport: Transport::Tcp, remote: format!("{ip}:5070").parse().unwrap(), conn };
    // A response whose Via is not ours: dropped unanswered, so nothing is sent toward these made-up addresses.
    let stray = Bytes::from_static(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.50:5070;branch=z9hG4bKstray\r\nFrom: <sip:a@x>;tag=1\r\n\
          To: <sip:b@x>;tag=2\r\nCall-ID: stray@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );

    // By rate: three pass, the fourth is over with `ban_after = 1` and bans, the fifth comes from a banned source.
    let flooder = tcp("192.0.2.1", Some(1));
    for i in 0..3 {
        assert_eq!(inbound.on_message(stray.clone(), flooder), Verdict::Accepted, "message {i} within the rate");
    }
    assert_eq!(inbound.on_message(stray.clone(), flooder), Verdict::Refused, "the message that banned it");
    assert_eq!(inbound.on_message(stray.clone(), flooder), Verdict::Refused, "a banned source's message");
    assert!(!inbound.admits_connection(flooder.remote.ip()), "no connection for a banned source");

    // By User-Agent: the scanner's request itself.
    let scan = Bytes::from_static(
        b"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.2:5070;branch=z9hG4bKscan\r\n\
          From: <sip:a@x>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: scan@test\r\nCSeq: 1 OPTIONS\r\n\
          User-Agent: friendly-scanner\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(inbound.on_message(scan, tcp("192.0.2.2", Some(2))), Verdict::Refused, "the scanner's request");

    // Another source is untouched; so is a backend, even when someone bans its address.
    let other = tcp("192.0.2.3", Some(3));
    assert_eq!(inbound.on_message(stray.clone(), other), Verdict::Accepted);
    assert!(inbound.admits_connection(other.remote.ip()));
    let pbx: IpAddr = "192.0.2.99".parse().unwrap();
    server.proxy.guard.ban(pbx, sipfront::guard::BanReason::Rate);
    assert!(inbound.admits_connection(pbx), "a backend is never refused");
    server.shutdown().await;
}

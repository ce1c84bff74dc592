//! Connection limits of the real binary, over real loopback sockets: the per-source and the total cap close the
//! connection one over at once (the client reads EOF) and count it, and a place comes back when a connection
//! ends; a client that starts a message and stalls, or trickles it byte by byte, is closed after
//! `sip.message_timeout` while another client is answered; a WebSocket peer that answers none of our pings is
//! closed (`ping_timeout`) while one that reads them stays; on a `tls:` listener the cap applies before the
//! handshake, and a client that never starts its handshake is closed and counted (`handshake_timeout`). Every
//! wait waits for the event, with a deadline. Test numbers (tests/common/mod.rs): 130-133. The admin server
//! listens on 127.0.0.N:9090, WebSocket on :5062, TLS on :5061.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Deadline for anything that must happen.
const WAIT: Duration = Duration::from_secs(10);

/// A node with an admin listener and these `[sip]` lines (and optional extra listener and table).
fn start(h: &mut Harness, sip: &[&str], listen: Option<&str>, table: &str) -> String {
    let admin = format!("{}:9090", h.front_ip());
    let mut cfg = FrontConfig::new()
        .backend("pbx", h.pbx(PBX1_PORT), Tp::Udp)
        .section(&format!("[admin]\nlisten = \"{admin}\"\n{table}"));
    for line in sip {
        cfg = cfg.sip(line);
    }
    if let Some(l) = listen {
        cfg = cfg.listen(l);
    }
    h.start_sipfront(&cfg);
    admin
}

/// A TCP connection from `from` that sipfront accepted: it answers an OPTIONS on it.
fn accepted(h: &Harness, from: Ipv4Addr, label: &str) -> TcpPeer {
    let mut p = TcpPeer::connect(from, h.sipfront());
    p.send(options_to(p.local, h.sipfront(), Tp::Tcp, label).as_bytes()).unwrap();
    let ok = p.expect_msg(WAIT, &format!("200 to OPTIONS {label}"));
    assert_eq!(ok.status(), Some(200), "{label}");
    p
}

/// A TCP connection from `from` that sipfront closes at once: the first read is EOF, with nothing sent.
fn refused(h: &Harness, from: Ipv4Addr, label: &str) {
    let mut p = TcpPeer::connect(from, h.sipfront());
    match p.recv(WAIT) {
        TcpRead::Closed => {}
        other => panic!("{label}: expected the connection closed at once, got {other:?}"),
    }
}

#[test]
fn connections_over_the_per_source_or_total_cap_are_closed_at_once_and_counted() {
    let mut h = Harness::new("connection_caps", 130);
    let admin = start(&mut h, &["max_connections = 4", "max_connections_per_source = 3"], None, "");
    let (a, b) = (h.front_ip(), h.pbx_ip());
    let mut from_a: Vec<TcpPeer> = (0..3).map(|i| accepted(&h, a, &format!("a{i}"))).collect();
    refused(&h, a, "a fourth from one address");
    let tcp = |reason| {
        labelled_counter(&admin, "sipfront_connections_refused_total", &[("transport", "tcp"), ("reason", reason)])
    };
    assert_eq!(tcp("per_source"), 1.0);
    let _b0 = accepted(&h, b, "b0");
    refused(&h, b, "a fifth in total");
    assert_eq!((tcp("per_source"), tcp("total")), (1.0, 1.0));

    // A connection that ends gives its place back as soon as sipfront has read its end.
    drop(from_a.remove(0));
    let deadline = Instant::now() + WAIT;
    let mut retries = 0;
    let _b1 = loop {
        let mut p = TcpPeer::connect(b, h.sipfront());
        p.send(options_to(p.local, h.sipfront(), Tp::Tcp, &format!("b1-{retries}")).as_bytes()).unwrap();
        match p.recv(WAIT) {
            TcpRead::Msg(m) if m.status() == Some(200) => break p,
            TcpRead::Closed => {}
            other => panic!("b1: {other:?}"),
        }
        retries += 1;
        assert!(Instant::now() < deadline, "the place of a closed connection never came back");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Every refusal is one close with reason `limit` too; the held connections still work.
    let limit =
        labelled_counter(&admin, "sipfront_connections_closed_total", &[("transport", "tcp"), ("reason", "limit")]);
    assert_eq!(limit, 2.0 + retries as f64);
    for (i, p) in from_a.iter_mut().enumerate() {
        p.send(options_to(p.local, h.sipfront(), Tp::Tcp, &format!("again{i}")).as_bytes()).unwrap();
        assert_eq!(p.expect_msg(WAIT, "200").status(), Some(200));
    }
    assert!(h.front_log_text().contains("connection refused over a cap"), "logged");
}

#[test]
fn a_message_that_stalls_or_trickles_is_closed_after_message_timeout() {
    let mut h = Harness::new("slow_message", 131);
    let admin = start(&mut h, &["message_timeout = \"300ms\""], None, "");
    let options = |p: &TcpPeer, id: &str| options_to(p.local, h.sipfront(), Tp::Tcp, id).into_bytes();

    // Half a message, then nothing.
    let mut stalled = TcpPeer::connect(h.front_ip(), h.sipfront());
    let half = options(&stalled, "stalled");
    // Taken before the bytes leave, so the server's deadline can only be later: the bound below is strict.
    let sent = Instant::now();
    stalled.send(&half[..half.len() / 2]).unwrap();
    // Meanwhile another client is served.
    let mut normal = accepted(&h, h.front_ip(), "normal");
    match stalled.recv(WAIT) {
        TcpRead::Closed => {}
        other => panic!("the stalled client must be closed, got {other:?}"),
    }
    assert!(sent.elapsed() >= Duration::from_millis(300), "not before message_timeout: {:?}", sent.elapsed());

    // One byte every 50 ms: each byte is traffic, but the message's deadline does not move.
    let mut trickle = TcpPeer::connect(h.front_ip(), h.sipfront());
    let msg = options(&trickle, "trickle");
    let started = Instant::now();
    let mut closed = false;
    for byte in msg.iter().take(msg.len() - 1) {
        if trickle.send(&[*byte]).is_err() {
            closed = true;
            break;
        }
        match trickle.recv(Duration::from_millis(50)) {
            TcpRead::Timeout => {}
            TcpRead::Closed => {
                closed = true;
                break;
            }
            TcpRead::Msg(m) => panic!("nothing to answer yet: {m:?}"),
        }
        assert!(started.elapsed() < WAIT, "the trickling client was never closed");
    }
    assert!(closed, "the whole message but its last byte took {:?} and the connection is open", started.elapsed());

    let slow = labelled_counter(
        &admin,
        "sipfront_connections_closed_total",
        &[("transport", "tcp"), ("reason", "slow_message")],
    );
    assert_eq!(slow, 2.0);
    normal.send(&options(&normal, "normal-again")).unwrap();
    assert_eq!(normal.expect_msg(WAIT, "200 after the slow clients").status(), Some(200));
}

/// Lone CR or LF bytes are not keep-alives (RFC 5626 pings are a double CRLF): trickled once every 200 ms they
/// do not hold a connection past `tcp_idle_timeout`, while a client that pings with double CRLFs stays.
#[test]
fn lone_crlf_bytes_do_not_keep_a_connection_open_but_pings_do() {
    let mut h = Harness::new("lone_crlf", 19);
    let admin = start(&mut h, &["tcp_idle_timeout = \"1s\""], None, "");
    let mut noise = TcpPeer::connect(h.front_ip(), h.sipfront());
    let mut pinger = TcpPeer::connect(h.front_ip(), h.sipfront());
    let started = Instant::now();
    let mut noise_closed = None;
    // Bounded: 40 rounds of 200 ms; the idle timeout is 1 s.
    for round in 0..40 {
        if noise_closed.is_none() {
            let byte: &[u8] = if round % 2 == 0 { b"\r" } else { b"\n" };
            if noise.send(byte).is_err() {
                noise_closed = Some(started.elapsed());
            }
        }
        pinger.send(b"\r\n\r\n").unwrap();
        if noise_closed.is_none() {
            if let TcpRead::Closed = noise.recv(Duration::from_millis(100)) {
                noise_closed = Some(started.elapsed());
            }
        }
        match pinger.recv(Duration::from_millis(100)) {
            TcpRead::Closed => panic!("a client that pings was closed after {:?}", started.elapsed()),
            TcpRead::Timeout | TcpRead::Msg(_) => {}
        }
        if noise_closed.is_some() && started.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    let closed = noise_closed.expect("the client trickling lone CR/LF bytes was never closed");
    assert!(closed >= Duration::from_secs(1) && closed < Duration::from_secs(3), "closed after {closed:?}");
    let idle =
        labelled_counter(&admin, "sipfront_connections_closed_total", &[("transport", "tcp"), ("reason", "idle")]);
    assert_eq!(idle, 1.0, "closed as idle, once");
    pinger.send(options_to(pinger.local, h.sipfront(), Tp::Tcp, "still-here").as_bytes()).unwrap();
    assert_eq!(pinger.expect_msg(WAIT, "200 on the pinging connection").status(), Some(200));
}

/// The HTTP upgrade to `ws://to/` (subprotocol `sip`) by hand; the raw stream after it and any bytes read past
/// the 101. Nothing answers pings on it.
fn raw_ws_upgrade(from: Ipv4Addr, to: SocketAddr) -> (TcpStream, Vec<u8>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into()).unwrap();
    sock.connect_timeout(&to.into(), WAIT).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).expect("the upgrade answer");
        assert!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    (s, buf.split_off(end))
}

#[test]
fn a_websocket_peer_that_answers_no_ping_is_closed_and_one_that_reads_stays() {
    use tokio_tungstenite::tungstenite::{self, Message as Frame};
    let mut h = Harness::new("ws_ping", 132);
    let ws_addr = h.front(5062);
    let admin = start(&mut h, &[], Some(&format!("ws:{ws_addr}")), "[websocket]\nping_interval = \"200ms\"");

    // The live client reads all along on a thread of its own (tungstenite answers each Ping as it reads); after
    // three pings (more than two intervals) it is still served, and it reads on until the test is done.
    let tcp = TcpStream::connect(ws_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{ws_addr}/")).unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "sip".parse().unwrap());
    let (mut live, _) = tungstenite::client(req, tcp).expect("upgrade");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (answered, answer) = std::sync::mpsc::channel();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut pings = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < WAIT {
                let frame = match live.read() {
                    Ok(f) => f,
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                    {
                        continue
                    }
                    Err(e) => panic!("the live peer must stay connected: {e}"),
                };
                match frame {
                    Frame::Ping(_) => pings += 1,
                    Frame::Text(t) => answered.send(t.as_str().to_owned()).unwrap(),
                    other => panic!("unexpected {other:?}"),
                }
                if pings == 3 {
                    let options = format!(
                        "OPTIONS sip:{ws_addr};transport=ws SIP/2.0\r\nVia: SIP/2.0/WS live.invalid;branch=z9hG4bKlive1\r\n\
                         From: <sip:live@example.com>;tag=l1\r\nTo: <sip:{ws_addr}>\r\nCall-ID: live1@test\r\n\
                         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                    );
                    live.send(Frame::text(options)).unwrap();
                }
            }
            pings
        })
    };

    // The dead one reads raw bytes and never answers: it sees a Ping frame, then its connection ends.
    // The clock starts before the upgrade, so sipfront's ping timer can only start later: the bound is strict.
    let upgraded = Instant::now();
    let (mut dead, mut seen) = raw_ws_upgrade(h.front_ip(), ws_addr);
    loop {
        let mut chunk = [0u8; 256];
        match dead.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
        assert!(upgraded.elapsed() < WAIT, "the silent peer was never closed");
    }
    assert!(upgraded.elapsed() < WAIT, "closed by the ping timeout, not the read timeout");
    assert_eq!(seen.first(), Some(&0x89), "the first frame is a Ping: {seen:02x?}");
    assert!(upgraded.elapsed() >= Duration::from_millis(400), "not before a ping went unanswered for an interval");

    let answer = answer.recv_timeout(WAIT).expect("the live peer's OPTIONS answered after three pings");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let labels = [("transport", "ws"), ("reason", "ping_timeout")];
    assert_eq!(labelled_counter(&admin, "sipfront_connections_closed_total", &labels), 1.0, "only the silent peer");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("the live reader") >= 3);
}

#[test]
fn on_tls_the_cap_comes_before_the_handshake_and_a_silent_handshake_is_closed_and_counted() {
    let pki = support::tls::Pki::new("limits-tls");
    pki.leaf("front");
    let mut h = Harness::new("tls_handshake_limits", 133);
    let tls_addr = h.front(5061);
    let tls = format!("{}handshake_timeout = \"200ms\"", support::tls::tls_section(&pki, "front"));
    let admin = start(&mut h, &["max_connections_per_source = 1"], Some(&format!("tls:{tls_addr}")), &tls);

    // The first connection holds the one place of its address while it has not even started its handshake.
    let opened = Instant::now();
    let mut silent = TcpPeer::connect(h.front_ip(), tls_addr);
    let mut second = TcpPeer::connect(h.front_ip(), tls_addr);
    match second.recv(WAIT) {
        TcpRead::Closed => {}
        other => panic!("the second connection must be closed at once, got {other:?}"),
    }
    match silent.recv(WAIT) {
        TcpRead::Closed => {}
        other => panic!("the silent client must be closed by the handshake timeout, got {other:?}"),
    }
    assert!(opened.elapsed() >= Duration::from_millis(200), "not before the handshake timeout");

    let closed = |reason| {
        labelled_counter(&admin, "sipfront_connections_closed_total", &[("transport", "tls"), ("reason", reason)])
    };
    assert_eq!((closed("limit"), closed("handshake_timeout")), (1.0, 1.0));
    let refused = [("transport", "tls"), ("reason", "per_source")];
    assert_eq!(labelled_counter(&admin, "sipfront_connections_refused_total", &refused), 1.0);
    assert_eq!(
        labelled_counter(&admin, "sipfront_tls_handshake_failures_total", &[("side", "client")]),
        1.0,
        "still counted"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

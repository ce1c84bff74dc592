//! The admin port against strangers, with the real binary: a flood of 2,000 connections is capped (the node's
//! descriptors stay bounded even under a low open-file limit) while a call over SIP TCP still goes through;
//! one source (127.0.0.2) holds at most `admin.max_connections_per_source` of them while another (127.0.0.3) is
//! still answered; slow headers and idle kept-alive connections are cut; the dialog list needs the token unless
//! `admin.public_reads`; and `check-config` refuses an admin port reachable from other hosts without a token.
//!
//! Test numbers (tests/common/mod.rs): 190-193, 195. The admin server listens on 127.0.0.N:9090.

mod common;
mod hardening;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hardening::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

/// Start sipfront on harness `h` with `[admin]` on 127.0.0.N:9090, the token file, and `extra` lines.
fn start(h: &mut Harness, extra: &str) -> String {
    let token = h.dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let addr = format!("{}:9090", h.front_ip());
    let cfg = FrontConfig::new()
        .backend("pbx", h.pbx(PBX1_PORT), Tp::Udp)
        .section(&format!("[admin]\nlisten = \"{addr}\"\ntoken_file = \"{}\"\n{extra}", token.display()));
    h.start_sipfront(&cfg);
    addr
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_exchange(addr, "GET", path, token, "").unwrap_or_else(|| panic!("admin {addr}: cannot connect"))
}

#[test]
fn an_admin_connection_flood_is_capped_and_sip_tcp_still_takes_calls() {
    let mut h = Harness::new("hardening_admin_flood", 190);
    let pbx = h.start_sipp(SippSpec::uas(&h, "pbx", "uas.xml", Tp::Udp, PBX1_PORT));
    let admin = start(&mut h, "");
    let pid = pid_with_config(&h.dir.join("sipfront.toml"));
    let base = fd_count(pid);
    // What the reported attack exhausted, scaled down: 512 descriptors, a quarter of the flood.
    limit_open_files(pid, 512);

    let mut flood = Vec::new();
    let t0 = Instant::now();
    for _ in 0..2_000 {
        // A node that takes no more connections makes each attempt wait: bounded either way.
        if t0.elapsed() > Duration::from_secs(20) {
            break;
        }
        if let Ok(s) = TcpStream::connect_timeout(&admin.parse().unwrap(), Duration::from_millis(200)) {
            flood.push(s);
        }
    }
    eprintln!("{} of 2000 admin connections made in {:?}", flood.len(), t0.elapsed());
    // A call over SIP TCP, while the flood's connections are still open.
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Tcp).timeout(Duration::from_secs(10)));
    uac.assert_ok(1);
    assert!(h.sipfront_alive());
    // Bounded: the default admin.max_connections (64) and a few for SIP, probes and logs.
    let bound = base + 64 + 16;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds = fd_count(pid);
    while fds > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = fd_count(pid);
    }
    eprintln!("the node holds {fds} descriptors during the flood (had {base})");
    assert!(fds <= bound, "the node holds {fds} descriptors during the flood (had {base}, limit 512)");

    drop(flood);

    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        // The flood's admitted connections are closed by the header timeout at the latest.
        if let Some((200, text)) = http_exchange(&admin, "GET", "/metrics", None, "") {
            break text;
        }
        assert!(Instant::now() < deadline, "the admin API does not answer after the flood");
        std::thread::sleep(Duration::from_millis(100));
    };
    let refused = metric_sample(&text, "sipfront_admin_connections_refused_total").unwrap_or(0.0);
    assert!(refused >= 1_000.0, "refused connections counted: {refused}");
    h.wait_sipp(pbx).assert_ok(1);
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from((from, 0)).into()).expect("bind");
    sock.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    sock.into()
}

/// `GET path` from `from`: the status, or `None` when the connection was closed without an answer.
fn get_from(from: Ipv4Addr, admin: &str, path: &str) -> Option<u16> {
    let mut s = connect_from(from, admin.parse().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// How many of `conns` sipfront has not closed (a read would block rather than see EOF or a reset).
fn still_open(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    let mut open = 0;
    for mut s in conns {
        s.set_nonblocking(true).unwrap();
        if matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    open
}

#[test]
fn one_source_cannot_hold_every_admin_connection() {
    let mut h = Harness::new("hardening_admin_share", 195);
    let admin = start(&mut h, ""); // the defaults: 64 in all, 8 per source
    let (hog, operator) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    // More than the whole cap from one address: only its share stays, the rest is closed at once.
    let conns: Vec<TcpStream> = (0..70).map(|_| connect_from(hog, admin.parse().unwrap())).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = still_open(&conns);
    while open > 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        open = still_open(&conns);
    }
    assert_eq!(open, 8, "127.0.0.2 holds {open} admin connections; its share is admin.max_connections_per_source (8)");
    // Another address, loopback too, still gets in while the hog holds its share.
    assert_eq!(get_from(operator, &admin, "/healthz"), Some(200), "the operator is answered");
    assert_eq!(get_from(hog, &admin, "/healthz"), None, "the hog's next connection is closed unanswered");
    let (_, text) = get(&admin, "/metrics", None);
    let refused = metric_sample(&text, "sipfront_admin_connections_refused_total").unwrap_or(0.0);
    assert_eq!(refused, 63.0, "62 of the 70, and the one after: counted");
    assert!(h.front_log_text().contains("admin.max_connections_per_source"), "logged, naming the key");
    drop(conns);
}

#[test]
fn slow_headers_and_idle_keepalives_are_cut() {
    let mut h = Harness::new("hardening_admin_slow", 191);
    let admin = start(&mut h, ""); // the default header_timeout, 10 s
    let mut slow = TcpStream::connect(&admin).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut kept = TcpStream::connect(&admin).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t0 = Instant::now();
    // One header byte every 200 ms: each arrives, the header never ends.
    let mut cut = None;
    while t0.elapsed() < Duration::from_secs(15) {
        if slow.write_all(b"X").is_err() || closed_within(&mut slow, Duration::from_millis(200)) {
            cut = Some(t0.elapsed());
            break;
        }
    }
    eprintln!("slow header cut after {cut:?}");
    assert!(cut.is_some_and(|t| t >= Duration::from_secs(9)), "a trickled header is cut at 10 s, not later: {cut:?}");
    let left = Duration::from_secs(15).saturating_sub(t0.elapsed());
    assert!(closed_within(&mut kept, left), "an idle kept-alive connection is closed too");
    let (_, text) = get(&admin, "/metrics", None);
    let n = metric_sample(&text, "sipfront_admin_connections_closed_total{reason=\"header_timeout\"}");
    assert!(n.unwrap_or(0.0) >= 1.0, "counted: {n:?}");
}

#[test]
fn reads_of_calls_need_the_token_unless_public_reads() {
    let mut h = Harness::new("hardening_admin_reads", 192);
    let admin = start(&mut h, "");
    assert_eq!(get(&admin, "/api/v1/dialogs", None).0, 401, "no token, no dialog list");
    assert_eq!(get(&admin, "/api/v1/dialogs", Some("wrong-token-0123456789")).0, 401);
    let (code, body) = get(&admin, "/api/v1/dialogs", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    for open in ["/metrics", "/healthz", "/api/v1/cluster", "/api/v1/backends", "/api/v1/stats", "/", "/assets/app.js"]
    {
        assert_eq!(get(&admin, open, None).0, 200, "{open} stays open");
    }
    drop(h);

    let mut h = Harness::new("hardening_admin_public", 193);
    let admin = start(&mut h, "public_reads = true");
    assert_eq!(get(&admin, "/api/v1/dialogs", None).0, 200, "admin.public_reads opens the reads");
    assert_eq!(http_exchange(&admin, "POST", "/api/v1/backends/pbx/drain", None, "").unwrap().0, 401, "not actions");
}

fn check_config(dir: &std::path::Path, admin: &str) -> (bool, String) {
    let path = dir.join("check.toml");
    let toml = format!(
        "[node]\nid = 1\nname = \"c\"\n[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\nadvertise = \"127.0.0.1\"\n\
         [[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5080\"\n[admin]\n{admin}\n"
    );
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(sipfront_bin()).arg("check-config").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_config_refuses_a_reachable_admin_port_without_a_token() {
    let dir = TestDir::new("check");
    for listen in ["0.0.0.0:9090", "192.0.2.10:9090"] {
        let (ok, text) = check_config(&dir.0, &format!("listen = \"{listen}\""));
        assert!(!ok, "{listen} without a token accepted: {text}");
        assert!(text.contains("admin.listen") && text.contains("admin.token_file"), "names the key and why: {text}");
    }
    let token = dir.0.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let (ok, text) = check_config(&dir.0, &format!("listen = \"0.0.0.0:9090\"\ntoken_file = \"{}\"", token.display()));
    assert!(ok, "with a token: {text}");
    let (ok, text) = check_config(&dir.0, "listen = \"127.0.0.1:9090\"");
    assert!(ok, "loopback without a token: {text}");
}

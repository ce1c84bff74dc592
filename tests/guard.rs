//! The guard in process (`[security]`, src/guard/): a node on 127.0.0.1 port 0 with a Rust PBX behind it, and
//! phones, floods and scanners as Rust UAs on their own loopback addresses (127.0.0.165..=169, port 0), since
//! 127.0.0.1 is the PBX's address and a backend is never limited.
//!
//! A flood is cut while another source's calls complete; a `friendly-scanner` OPTIONS or REGISTER never reaches
//! the PBX and bans its source; a banned source is dropped until its ban expires; the admin API lists and lifts
//! bans. Nothing waits a fixed time: every wait polls a condition under a deadline.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use sipfront::config::Config;
use sipfront::guard::DropReason;
use sipfront::server::Server;
use sipfront::sip::{HeaderName, Message, ResponseBuilder};
use sipfront::transport::Transport;
use support::{recv_udp, request, WAIT};

const TOKEN: &str = "guard-test-token-0123456789";

/// A node whose only backend is `pbx`, with `[security]` lines, and its admin API on 127.0.0.1 port 0.
async fn node(pbx: SocketAddr, security: &str) -> (Server, SocketAddr, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("sipfront-guard-{}-{}", std::process::id(), pbx.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let text = format!(
        "[node]\nid = 1\nname = \"guard\"\n[sip]\nlisten = [\"udp:127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [log]\nlevel = \"warn\"\n[health]\nenabled = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         token_file = \"{}\"\n[security]\n{security}\n[[backend]]\nname = \"pbx\"\nuri = \"sip:{pbx}\"\n",
        token_file.display()
    );
    let cfg = Config::from_toml(&text).expect("test config");
    let server = Server::start(&cfg, CancellationToken::new()).await.expect("start");
    let udp = server.local_addrs().into_iter().find(|(t, _)| *t == Transport::Udp).unwrap().1;
    let state = sipfront::admin::AdminState::new(&cfg, server.proxy.clone(), None, None).unwrap();
    let admin = sipfront::admin::start(state, CancellationToken::new()).await.unwrap();
    (server, udp, admin)
}

/// A PBX that answers every request but ACK with 200 and remembers every Call-ID it saw, in order.
async fn pbx() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(m) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else { continue };
            if !m.is_request() {
                continue;
            }
            log.lock().unwrap().push(String::from_utf8_lossy(m.call_id()).into_owned());
            if m.method_bytes() != b"ACK" {
                let rr: Vec<&[u8]> = m.header_values(HeaderName::RecordRoute).collect();
                let mut b = ResponseBuilder::new(&m, 200, "OK").to_tag(b"pbx");
                for r in &rr {
                    b = b.header("Record-Route", r);
                }
                let _ = sock.send_to(&b.header("Contact", b"<sip:pbx@127.0.0.1:9>").build(), from).await;
            }
        }
    });
    (addr, seen)
}

async fn bind(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).await.unwrap()
}

fn with_user_agent(req: Bytes, ua: &str) -> Bytes {
    let text = String::from_utf8_lossy(&req).replacen("\r\n\r\n", &format!("\r\nUser-Agent: {ua}\r\n\r\n"), 1);
    Bytes::from(text)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn saw(seen: &Mutex<Vec<String>>, call_id: &str) -> bool {
    seen.lock().unwrap().iter().any(|c| c == call_id)
}

/// One call from `phone`: INVITE, 200, ACK, BYE, 200.
async fn call(front: SocketAddr, phone: &UdpSocket, id: &str) {
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("INVITE", "sip:100@127.0.0.1", me, "UDP", id), front).await.unwrap();
    let ok = loop {
        let (m, _) = recv_udp(phone).await;
        if m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(ok.status(), Some(200), "call {id}");
    let to = String::from_utf8_lossy(ok.header(HeaderName::To).unwrap()).into_owned();
    let mut routes: Vec<String> =
        ok.header_values(HeaderName::RecordRoute).map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    routes.reverse();
    let in_dialog = |method: &str, cseq: u32| {
        Bytes::from(format!(
            "{method} sip:pbx@127.0.0.1:9 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}{method};rport\r\n\
             Route: {}\r\nFrom: <sip:a@{me}>;tag=f{id}\r\nTo: {to}\r\nCall-ID: {id}@test\r\nCSeq: {cseq} {method}\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            routes.join(", ")
        ))
    };
    phone.send_to(&in_dialog("ACK", 1), front).await.unwrap();
    phone.send_to(&in_dialog("BYE", 2), front).await.unwrap();
    let (bye_ok, _) = recv_udp(phone).await;
    assert_eq!((bye_ok.status(), bye_ok.cseq_method().as_str()), (Some(200), "BYE"), "call {id} hung up");
}

/// An HTTP request to the admin API: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.expect("an answer").unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_and_banned_while_another_sources_calls_complete() {
    let (pbx, seen) = pbx().await;
    let (server, front, _) = node(pbx, "allow = []\ninitial_rate = 10\ninitial_burst = 50\nban_after = 20").await;
    let guard = &server.proxy.guard;
    let (attacker, phone) = (bind("127.0.0.165").await, bind("127.0.0.166").await);
    let from = attacker.local_addr().unwrap();
    for i in 0..2000 {
        let invite = request("INVITE", "sip:100@127.0.0.1", from, "UDP", &format!("flood{i}"));
        attacker.send_to(&invite, front).await.unwrap();
    }
    for n in 0..5 {
        call(front, &phone, &format!("call{n}")).await;
    }
    wait_until("the flooder banned", || guard.is_banned(from.ip())).await;
    assert!(!guard.is_banned(phone.local_addr().unwrap().ip()));
    let flood_at_pbx = seen.lock().unwrap().iter().filter(|c| c.starts_with("flood")).count();
    assert!((1..=60).contains(&flood_at_pbx), "{flood_at_pbx} flood INVITEs reached the PBX (burst 50)");
    assert!(guard.dropped(DropReason::InitialRate) >= 20, "ban_after drops before the ban");
    let before = guard.dropped(DropReason::Banned);
    let late = request("INVITE", "sip:100@127.0.0.1", from, "UDP", "late");
    attacker.send_to(&late, front).await.unwrap();
    wait_until("the banned source's INVITE dropped", || guard.dropped(DropReason::Banned) > before).await;
    assert!(!saw(&seen, "late@test"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_never_reach_the_pbx_are_banned_until_the_ban_expires_and_the_api_lifts_bans() {
    let (pbx, seen) = pbx().await;
    let (server, front, admin) = node(pbx, "allow = []\nban_time = \"3s\"").await;
    let guard = &server.proxy.guard;
    let (svmap, svwar, phone) = (bind("127.0.0.167").await, bind("127.0.0.168").await, bind("127.0.0.169").await);
    let (map_from, war_from, me) =
        (svmap.local_addr().unwrap(), svwar.local_addr().unwrap(), phone.local_addr().unwrap());
    let requests_before = server.proxy.stats.requests.load(std::sync::atomic::Ordering::Relaxed);

    // svmap's OPTIONS and svwar's REGISTER, as SIPVicious sends them.
    let options = request("OPTIONS", "sip:100@127.0.0.1", map_from, "UDP", "svmap");
    svmap.send_to(&with_user_agent(options, "friendly-scanner"), front).await.unwrap();
    let register = request("REGISTER", "sip:127.0.0.1", war_from, "UDP", "svwar");
    svwar.send_to(&with_user_agent(register, "friendly-scanner"), front).await.unwrap();
    wait_until("both scanners banned", || guard.is_banned(map_from.ip()) && guard.is_banned(war_from.ip())).await;
    assert_eq!(guard.dropped(DropReason::UserAgent), 2);
    // A phone's request gets through; the scanners' never did, nor counted as requests.
    phone.send_to(&request("OPTIONS", "sip:100@127.0.0.1", me, "UDP", "phone1"), front).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));
    assert!(saw(&seen, "phone1@test") && !saw(&seen, "svmap@test") && !saw(&seen, "svwar@test"));
    assert_eq!(server.proxy.stats.requests.load(std::sync::atomic::Ordering::Relaxed), requests_before + 1);

    // The admin API lists both bans (token required) and lifts one.
    assert_eq!(http(admin, "GET", "/api/v1/bans", None).await.0, 401);
    let (code, body) = http(admin, "GET", "/api/v1/bans", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 2, "{v}");
    assert_eq!(v["bans"][0]["reason"], "user_agent", "{v}");
    assert_eq!(v["dropped"]["user_agent"], 2, "{v}");
    assert_eq!(http(admin, "DELETE", "/api/v1/bans/127.0.0.168", None).await.0, 401);
    assert_eq!(http(admin, "DELETE", "/api/v1/bans/127.0.0.168", Some(TOKEN)).await.0, 200);
    assert!(!guard.is_banned(war_from.ip()));
    assert_eq!(http(admin, "DELETE", "/api/v1/bans/127.0.0.168", Some(TOKEN)).await.0, 404);
    assert_eq!(http(admin, "DELETE", "/api/v1/bans/not-an-ip", Some(TOKEN)).await.0, 400);

    // While banned, even a clean request from svmap's address is dropped unread; once the ban expires it passes.
    let before = guard.dropped(DropReason::Banned);
    let clean = request("OPTIONS", "sip:100@127.0.0.1", map_from, "UDP", "while-banned");
    svmap.send_to(&clean, front).await.unwrap();
    wait_until("dropped as banned", || guard.dropped(DropReason::Banned) > before).await;
    wait_until("the ban expired", || !guard.is_banned(map_from.ip())).await;
    let after = request("OPTIONS", "sip:100@127.0.0.1", map_from, "UDP", "after-ban");
    svmap.send_to(&after, front).await.unwrap();
    assert_eq!(recv_udp(&svmap).await.0.status(), Some(200), "served again");
    assert!(saw(&seen, "after-ban@test") && !saw(&seen, "while-banned@test"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_allow_list_exempts_loopback() {
    let (pbx, seen) = pbx().await;
    let (server, front, _) = node(pbx, "").await;
    let phone = bind("127.0.0.165").await;
    let me = phone.local_addr().unwrap();
    let options = request("OPTIONS", "sip:100@127.0.0.1", me, "UDP", "local-tool");
    phone.send_to(&with_user_agent(options, "sipvicious"), front).await.unwrap();
    assert_eq!(recv_udp(&phone).await.0.status(), Some(200));
    assert!(saw(&seen, "local-tool@test"));
    assert!(server.proxy.guard.bans().is_empty() && server.proxy.guard.tracked_sources() == 0);
    server.shutdown().await;
}

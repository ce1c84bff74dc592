//! Bans are replicated: a scanner banned by the active node is banned on every member, also on one that was down
//! and catches up from a snapshot, and after a switchover the new active node still drops it. Three members in
//! one process with `vip.mode = "none"` (no root), as in `tests/cluster_inprocess.rs`.
//!
//! Addresses (this file only): members on 127.0.0.160..=162 (SIP 5060, peers 7000), the PBX on 127.0.0.163:5060,
//! the scanner and a phone on 127.0.0.164 and .165, port 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sipfront::cluster::ctl;
use sipfront::config::Config;
use sipfront::dialog::{DialogId, NewDialog};
use sipfront::guard::DropReason;
use sipfront::server::Server;
use sipfront::transport::{Target, Transport};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipfront-guard-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("key"), "00112233445566778899aabbccddeeff").unwrap();
    d
}

fn config(d: &Path, i: u32) -> Config {
    Config::from_toml(&format!(
        r#"
[node]
id = {i}
name = "g{i}"
[sip]
listen = ["udp:127.0.0.16{n}:5060"]
advertise = "127.0.0.16{n}"
[cluster]
listen = "127.0.0.16{n}:7000"
peers = [ {{ id = 1, addr = "127.0.0.160:7000" }}, {{ id = 2, addr = "127.0.0.161:7000" }}, {{ id = 3, addr = "127.0.0.162:7000" }} ]
secret_file = "{dir}/key"
data_dir = "{dir}/n{i}"
snapshot_every = 10
[health]
enabled = false
[log]
level = "warn"
[security]
allow = []
[[backend]]
name = "pbx"
uri = "sip:127.0.0.163:5060"
"#,
        n = i - 1,
        dir = d.display()
    ))
    .unwrap()
}

async fn start(cfg: &Config) -> Server {
    Server::start(cfg, CancellationToken::new()).await.expect("member starts")
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The one member that serves (bounded wait).
async fn leader(nodes: &[Option<Server>], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let active: Vec<usize> =
            (0..nodes.len()).filter(|&i| nodes[i].as_ref().is_some_and(|s| s.proxy.is_active())).collect();
        if active.len() == 1 {
            return active[0];
        }
        assert!(Instant::now() < deadline, "no single serving member within {within:?}: {active:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sip_addr(i: usize) -> std::net::SocketAddr {
    format!("127.0.0.16{i}:5060").parse().unwrap()
}

fn options(from: std::net::SocketAddr, call_id: &str, user_agent: &str) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:100@127.0.0.163 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id};rport\r\n\
         From: <sip:scan@{from}>;tag={call_id}\r\nTo: <sip:100@127.0.0.163>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\nUser-Agent: {user_agent}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_reaches_every_member_survives_a_snapshot_and_a_switchover() {
    let d = dir();
    let cfgs: Vec<Config> = (1..=3).map(|i| config(&d, i)).collect();
    let mut nodes = Vec::new();
    for c in &cfgs {
        nodes.push(Some(start(c).await));
    }
    let l = leader(&nodes, Duration::from_secs(10)).await;
    let pbx = UdpSocket::bind("127.0.0.163:5060").await.unwrap();
    let scanner = UdpSocket::bind("127.0.0.164:0").await.unwrap();
    let from = scanner.local_addr().unwrap();

    // Take one follower down first: it must learn the ban from a snapshot.
    let f = (l + 1) % 3;
    nodes[f].take().unwrap().shutdown().await;
    scanner.send_to(&options(from, "scan1", "friendly-scanner"), sip_addr(l)).await.unwrap();
    let ls = nodes[l].as_ref().unwrap();
    wait_until("the leader bans the scanner", Duration::from_secs(5), || ls.proxy.guard.is_banned(from.ip())).await;
    let other = 3 - l - f;
    let os = nodes[other].as_ref().unwrap();
    wait_until("the ban replicated", Duration::from_secs(5), || os.proxy.guard.is_banned(from.ip())).await;

    // Enough log entries for snapshots and purges (each group longer than the batcher's linger is one entry).
    for n in 0..200u32 {
        let id = DialogId::new(format!("call-{n}").as_bytes(), b"caller", format!("callee{n}").as_bytes());
        let client = Target { transport: Transport::Udp, addr: "192.0.2.7:5062".parse().unwrap(), conn: None };
        ls.proxy.dialogs.confirm(id, &NewDialog { home: Some(0), client: Some(client), caller_cseq: 1 }, None);
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    nodes[f] = Some(start(&cfgs[f]).await);
    let fs = nodes[f].as_ref().unwrap();
    wait_until("the restarted member caught up", Duration::from_secs(10), || fs.proxy.dialogs.len() == 200).await;
    assert!(d.join(format!("n{}/raft/snapshot", f + 1)).exists(), "it caught up by a snapshot");
    assert!(fs.proxy.guard.is_banned(from.ip()), "the snapshot carried the ban");

    // Hand the role to that member: it drops the scanner's next message unread, even a clean one.
    let msg = ctl::switchover(&cfgs[0], f as u64 + 1).await.expect("switchover");
    assert!(msg.contains("leads now"), "{msg}");
    assert_eq!(leader(&nodes, Duration::from_secs(5)).await, f);
    let fs = nodes[f].as_ref().unwrap();
    let before = fs.proxy.guard.dropped(DropReason::Banned);
    scanner.send_to(&options(from, "scan2", "Yealink"), sip_addr(f)).await.unwrap();
    wait_until("the new leader drops it", Duration::from_secs(5), || {
        fs.proxy.guard.dropped(DropReason::Banned) > before
    })
    .await;
    // A phone still gets through the new leader to the PBX, which never heard from the scanner.
    let phone = UdpSocket::bind("127.0.0.165:0").await.unwrap();
    phone.send_to(&options(phone.local_addr().unwrap(), "phone", "Yealink"), sip_addr(f)).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) =
        tokio::time::timeout(Duration::from_secs(5), pbx.recv_from(&mut buf)).await.expect("at the PBX").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("Call-ID: phone"), "the first request at the PBX is the phone's: {text}");

    for s in nodes.into_iter().flatten() {
        s.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

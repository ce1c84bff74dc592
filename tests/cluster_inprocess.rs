//! Three cluster members in one process, on loopback, with `vip.mode = "none"` (no root needed): leadership,
//! replication of the dialog and flow tables, graceful switchover, catch-up of a restarted member from a
//! snapshot, and refusal of frames sealed with another secret. The fault tests with the real binary, the VIP
//! and network namespaces are in `tests/cluster_faults.rs`.
//!
//! Also: the admin API of a standby answers for the whole cluster, and acts (drain, switchover) through the
//! leader.
//!
//! Addresses: 127.0.N.{11,12,13} with N = 3..=7, one per test, SIP on 5060, peers on 7000, admin on 9090 (this
//! file only).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sipfront::cluster::ctl;
use sipfront::cluster::{FrameKey, PeerClient, Request, Response};
use sipfront::config::Config;
use sipfront::dialog::{DialogId, NewDialog};
use sipfront::server::Server;
use sipfront::transport::{Target, Transport};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Node {
    cfg: Config,
    server: Option<Server>,
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipfront-cluster-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("key"), "00112233445566778899aabbccddeeff").unwrap();
    d
}

fn config(d: &Path, net: u8, i: u32, snapshot_every: u64) -> Config {
    Config::from_toml(&config_text(d, net, i, snapshot_every)).unwrap()
}

fn config_text(d: &Path, net: u8, i: u32, snapshot_every: u64) -> String {
    format!(
        r#"
[node]
id = {i}
name = "n{i}"
[sip]
listen = ["udp:127.0.{net}.1{i}:5060"]
advertise = "127.0.{net}.1{i}"
[cluster]
listen = "127.0.{net}.1{i}:7000"
peers = [ {{ id = 1, addr = "127.0.{net}.11:7000" }}, {{ id = 2, addr = "127.0.{net}.12:7000" }}, {{ id = 3, addr = "127.0.{net}.13:7000" }} ]
secret_file = "{dir}/key"
data_dir = "{dir}/n{i}"
snapshot_every = {snapshot_every}
[health]
enabled = false
[[backend]]
name = "pbx"
uri = "sip:127.0.{net}.21:5060"
"#,
        dir = d.display()
    )
}

async fn start(cfg: &Config) -> Server {
    Server::start(cfg, CancellationToken::new()).await.expect("node starts")
}

async fn three(d: &Path, net: u8, snapshot_every: u64) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let cfg = config(d, net, i, snapshot_every);
        let server = Some(start(&cfg).await);
        nodes.push(Node { cfg, server });
    }
    nodes
}

/// Wait (bounded) until exactly one running node serves; its index.
async fn leader(nodes: &[Node], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let active: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.server.as_ref().is_some_and(|s| s.proxy.is_active()))
            .map(|(i, _)| i)
            .collect();
        if active.len() == 1 {
            return active[0];
        }
        assert!(active.len() <= 1, "two nodes serve at once: {active:?}");
        assert!(Instant::now() < deadline, "no single serving node within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn confirm(s: &Server, n: u32) -> DialogId {
    let id = DialogId::new(format!("call-{n}").as_bytes(), b"caller", format!("callee{n}").as_bytes());
    let client = Target { transport: Transport::Udp, addr: "192.0.2.7:5062".parse().unwrap(), conn: None };
    s.proxy.dialogs.confirm(id.clone(), &NewDialog { home: Some(0), client: Some(client), caller_cseq: 1 }, None);
    id
}

async fn stop_all(nodes: Vec<Node>, d: &Path) {
    for n in nodes {
        if let Some(s) = n.server {
            s.shutdown().await;
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_serves_and_every_member_holds_the_same_tables() {
    let d = dir("tables");
    let nodes = three(&d, 3, 5000).await;
    let l = leader(&nodes, Duration::from_secs(5)).await;
    let ls = nodes[l].server.as_ref().unwrap();
    let ids: Vec<DialogId> = (0..50).map(|n| confirm(ls, n)).collect();
    let client = Target { transport: Transport::Udp, addr: "192.0.2.8:5062".parse().unwrap(), conn: None };
    ls.proxy.flows.bind(
        Bytes::from_static(b"flow1"),
        client,
        Bytes::from_static(b"sip:100@pbx"),
        Bytes::from_static(b"sip:100@192.0.2.8:5062"),
        Duration::from_secs(600),
    );
    for n in &nodes {
        let s = n.server.as_ref().unwrap();
        wait_until("dialogs and flow replicated", Duration::from_secs(2), || {
            s.proxy.dialogs.len() == 50 && s.proxy.flows.get(b"flow1").is_some()
        })
        .await;
        let d = s.proxy.dialogs.get(&ids[7]).expect("dialog 7 everywhere");
        assert_eq!(d.home(), Some(0));
        assert_eq!(d.client.map(|c| c.addr), Some("192.0.2.7:5062".parse().unwrap()));
    }
    for id in &ids[..20] {
        ls.proxy.dialogs.remove(id);
    }
    for n in &nodes {
        let s = n.server.as_ref().unwrap();
        wait_until("removals replicated", Duration::from_secs(2), || s.proxy.dialogs.len() == 30).await;
    }
    let all = ctl::statuses(&nodes[0].cfg).await.unwrap();
    let leaders: Vec<u64> =
        all.iter().filter_map(|(_, s)| s.as_ref().ok()).filter(|s| s.role == "leader").map(|s| s.id).collect();
    assert_eq!(leaders, vec![l as u64 + 1], "status agrees on the leader: {all:?}");
    assert!(all.iter().all(|(_, s)| s.as_ref().is_ok_and(|s| s.leader == Some(l as u64 + 1))));
    stop_all(nodes, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_moves_the_serving_role_and_the_tables_follow() {
    let d = dir("switch");
    let nodes = three(&d, 4, 5000).await;
    let l = leader(&nodes, Duration::from_secs(5)).await;
    let ls = nodes[l].server.as_ref().unwrap();
    for n in 0..10 {
        confirm(ls, n);
    }
    let to = (l + 1) % 3;
    let msg = ctl::switchover(&nodes[0].cfg, to as u64 + 1).await.expect("switchover");
    assert!(msg.contains("leads now"), "{msg}");
    assert_eq!(leader(&nodes, Duration::from_secs(2)).await, to);
    let new = nodes[to].server.as_ref().unwrap();
    assert_eq!(new.proxy.dialogs.len(), 10, "the new leader has every dialog");
    // The new leader's own changes replicate back to the old one.
    confirm(new, 100);
    let old = nodes[l].server.as_ref().unwrap();
    wait_until("new leader's dialog on the old leader", Duration::from_secs(2), || old.proxy.dialogs.len() == 11).await;
    let bad = ctl::switchover(&nodes[0].cfg, 9).await;
    assert!(bad.is_err_and(|e| e.to_string().contains("not a cluster member")));
    stop_all(nodes, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_catches_up_from_a_snapshot() {
    let d = dir("snapshot");
    let mut nodes = three(&d, 5, 10).await;
    let l = leader(&nodes, Duration::from_secs(5)).await;
    let f = (l + 1) % 3;
    nodes[f].server.take().unwrap().shutdown().await;
    let ls = nodes[l].server.as_ref().unwrap();
    for n in 0..300 {
        confirm(ls, n);
        if n % 10 == 0 {
            // Longer than the batcher's 20 ms linger: each group is a log entry of its own, so there are enough
            // entries for snapshots and purges.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let status = ctl::statuses(&nodes[l].cfg).await.unwrap();
    let me = status.iter().find(|(id, _)| *id == l as u64 + 1).unwrap().1.as_ref().unwrap().clone();
    assert!(me.last_log.unwrap_or(0) > 20, "enough entries to need a snapshot: {me:?}");
    let cfg = nodes[f].cfg.clone();
    nodes[f].server = Some(start(&cfg).await);
    let s = nodes[f].server.as_ref().unwrap();
    wait_until("restarted member has every dialog", Duration::from_secs(5), || s.proxy.dialogs.len() == 300).await;
    assert!(!s.proxy.is_active(), "it rejoined as a follower");
    assert!(d.join(format!("n{}/raft/snapshot", f + 1)).exists(), "it caught up by a snapshot");
    assert_eq!(leader(&nodes, Duration::from_secs(1)).await, l, "no leadership change on rejoin (pre-vote)");
    stop_all(nodes, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sealed_with_another_secret_get_no_answer() {
    let d = dir("auth");
    let nodes = three(&d, 6, 5000).await;
    leader(&nodes, Duration::from_secs(5)).await;
    let addr: SocketAddr = "127.0.6.11:7000".parse().unwrap();
    let mut good = PeerClient::new(1, addr, FrameKey::from_secret(b"00112233445566778899aabbccddeeff"));
    assert!(matches!(good.call(&Request::Status, Duration::from_secs(2)).await, Ok(Response::Status(_))));
    let mut forged = PeerClient::new(1, addr, FrameKey::from_secret(b"another secret of enough bytes"));
    let r = forged.call(&Request::Switchover { to: 2 }, Duration::from_millis(500)).await;
    assert!(r.is_err(), "a forged frame is dropped, not answered");
    let mut good = PeerClient::new(1, addr, FrameKey::from_secret(b"00112233445566778899aabbccddeeff"));
    assert!(matches!(good.call(&Request::Status, Duration::from_secs(2)).await, Ok(Response::Status(_))));
    stop_all(nodes, &d).await;
}

/// `POST` to an admin API: (status, body).
async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standbys_admin_api_shows_the_cluster_and_acts_through_the_leader() {
    let d = dir("admin");
    let token = "admin-token-0123456789abcdef";
    std::fs::write(d.join("admin.token"), token).unwrap();
    let mut nodes = Vec::new();
    let mut admins = Vec::new();
    for i in 1..=3u32 {
        let text = format!(
            "{}\n[admin]\nlisten = \"127.0.7.1{i}:9090\"\ntoken_file = \"{}/admin.token\"\n",
            config_text(&d, 7, i, 1000),
            d.display()
        );
        let cfg = Config::from_toml(&text).unwrap();
        let server = start(&cfg).await;
        let cluster = server.cluster.as_ref().map(|c| c.shared.clone());
        let state = sipfront::admin::AdminState::new(&cfg, server.proxy.clone(), cluster, None).unwrap();
        admins.push(sipfront::admin::start(state, CancellationToken::new()).await.unwrap());
        nodes.push(Node { cfg, server: Some(server) });
    }
    let l = leader(&nodes, Duration::from_secs(10)).await;
    let standby = (l + 1) % 3;
    let base = format!("http://{}", admins[standby]);

    // The whole cluster, from a standby.
    let v = sipfront::admin::client::get_json(&base, "/api/v1/cluster").await.unwrap();
    assert_eq!(v["leader"].as_u64(), Some(l as u64 + 1), "{v}");
    assert_eq!(v["self"].as_u64(), Some(standby as u64 + 1));
    let nodes_json = v["nodes"].as_array().unwrap();
    assert_eq!(nodes_json.len(), 3);
    assert!(nodes_json.iter().all(|n| n["reachable"] == true), "{v}");
    let all = sipfront::admin::client::statuses_from(&v);
    assert!(ctl::render(&all).contains("leader"), "sipfront status renders the API's answer");
    let (code, _) = post(admins[standby], "/api/v1/backends/pbx/drain", None, "").await;
    assert_eq!(code, 401, "no token, no drain");

    // Drain through a standby: applied by the leader, replicated to every member.
    let (code, body) = post(admins[standby], "/api/v1/backends/pbx/drain", Some(token), "").await;
    assert_eq!(code, 200, "{body}");
    wait_until("the drain replicated", Duration::from_secs(5), || {
        nodes.iter().all(|n| n.server.as_ref().unwrap().proxy.health.is_drained(0))
    })
    .await;

    // Switchover through a standby's API, to that standby.
    let (code, body) =
        post(admins[standby], "/api/v1/switchover", Some(token), &format!("{{\"to\": {}}}", standby + 1)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(leader(&nodes, Duration::from_secs(10)).await, standby, "the standby leads now");
    let ev = sipfront::admin::client::get_json(&base, "/api/v1/events?limit=100").await.unwrap();
    let kinds: Vec<&str> = ev["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["switchover", "vip-released", "vip-acquired", "leader-changed", "backend-drain"] {
        assert!(kinds.contains(&k), "{k} in the merged timeline: {kinds:?}");
    }
    stop_all(nodes, &d).await;
}

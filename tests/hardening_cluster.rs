//! The cluster port against strangers, with the real binary: frames announcing huge lengths and garbage do not
//! grow the node (VmRSS from /proc) and are counted, a flood of bad frames writes one WARN line, not one per
//! frame; silent or half-sent connections are closed; one address cannot hold more than its share of
//! connections while peers still get in; and a second node on the same `cluster.data_dir` refuses to start,
//! naming the holder's pid. In process: a snapshot of 100,000 dialogs still reaches a restarted member.
//!
//! Addresses: 127.0.{0,1,2,3}.N with N = 180..=187 (this file only): SIP on 5060, cluster on 7000, admin on 9090.

mod common;
mod hardening;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{http_exchange, metric_sample, socket_bound, Tp};
use hardening::*;

const SECRET: &str = "00112233445566778899aabbccddeeff";

/// Node `id` of a three-member cluster whose members are 127.0.{0,1,2}.N:7000 (only this one runs).
fn node_toml(dir: &Path, n: u8, id: u32, data_dir: &str, admin: bool) -> String {
    let me = format!("127.0.{}.{n}", id - 1);
    let admin = if admin { format!("[admin]\nlisten = \"{me}:9090\"\n") } else { String::new() };
    format!(
        "[node]\nid = {id}\nname = \"n{id}\"\n\
         [sip]\nlisten = [\"udp:{me}:5060\", \"tcp:{me}:5060\"]\nadvertise = \"{me}\"\n\
         [cluster]\nlisten = \"{me}:7000\"\npeers = [ {{ id = 1, addr = \"127.0.0.{n}:7000\" }}, \
         {{ id = 2, addr = \"127.0.1.{n}:7000\" }}, {{ id = 3, addr = \"127.0.2.{n}:7000\" }} ]\n\
         secret_file = \"{d}/key\"\ndata_dir = \"{d}/{data_dir}\"\n\
         [health]\nenabled = false\n{admin}\
         [[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.3.{n}:5080\"\n",
        d = dir.display()
    )
}

/// Node 1 on 127.0.0.N with its admin API; ready when both ports listen.
fn start_node(dir: &TestDir, n: u8, label: &str) -> (Node, String, SocketAddr) {
    std::fs::write(dir.0.join("key"), SECRET).unwrap();
    let mut node = Node::start(&dir.0, label, &node_toml(&dir.0, n, 1, "data1", true));
    let admin = format!("127.0.0.{n}:9090");
    let cluster: SocketAddr = format!("127.0.0.{n}:7000").parse().unwrap();
    node.wait_ready("listening", || {
        socket_bound(cluster, Tp::Tcp) && http_exchange(&admin, "GET", "/healthz", None, "").is_some_and(|r| r.0 == 200)
    });
    (node, admin, cluster)
}

fn metrics(admin: &str) -> String {
    http_exchange(admin, "GET", "/metrics", None, "").expect("metrics").1
}

fn bad_frames(text: &str, reason: &str) -> f64 {
    metric_sample(text, &format!("sipfront_cluster_bad_frames_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
}

fn connect(to: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect to the cluster port")
}

/// Write up to `total` bytes of `fill` in 1 MiB writes until the peer stops taking them; bytes written.
fn stream_junk(s: &mut TcpStream, total: usize, fill: u8) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let block = vec![fill; 1 << 20];
    let mut sent = 0;
    while sent < total {
        match s.write(&block[..block.len().min(total - sent)]) {
            Ok(n) if n > 0 => sent += n,
            _ => break,
        }
    }
    sent
}

#[test]
fn huge_announced_lengths_and_garbage_neither_grow_the_node_nor_flood_its_log() {
    let dir = TestDir::new("frames");
    let (node, admin, cluster) = start_node(&dir, 180, "node");
    let pid = node.pid();
    let _ = metrics(&admin); // the exposition's own buffers, before the baseline
    let before = rss_kib(pid);

    let mut held = Vec::new();
    // The attack as reported: a header announcing 256 MiB (the old format's limit), then the bytes, 32 MiB each.
    for _ in 0..8 {
        let mut s = connect(cluster);
        let _ = s.write_all(&0x1000_0000u32.to_be_bytes());
        stream_junk(&mut s, 32 << 20, 0);
        held.push(s);
    }
    // The same at this format's largest length field, and plain garbage.
    for i in 0..8u32 {
        let mut s = connect(cluster);
        let _ = s.write_all(&0xd3ff_ffffu32.to_be_bytes());
        stream_junk(&mut s, 4 << 20, 1);
        held.push(s);
        let mut g = connect(cluster);
        let garbage: Vec<u8> =
            (0..(1u32 << 20)).map(|k| (k.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8).collect();
        let _ = g.write_all(&garbage);
        held.push(g);
    }
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "VmRSS {} MiB before, {} MiB after 24 attacking connections (+{grown_mib} MiB)",
        before / 1024,
        after / 1024
    );
    assert!(grown_mib <= 24, "the node grew by {grown_mib} MiB under the attack (was {before} KiB, now {after} KiB)");

    // 100 small frames in the old format with a wrong MAC, one connection each: counted, warned about once.
    let mut closed = 0;
    for i in 0..100u32 {
        let mut s = connect(cluster);
        let mut frame = 8u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&u64::from(i).to_be_bytes());
        frame.extend_from_slice(&[0xab; 16]);
        let _ = s.write_all(&frame);
        // A node that does not close at once gets 50 ms per connection after the first second.
        if closed_within(&mut s, if closed == i { Duration::from_secs(1) } else { Duration::from_millis(50) }) {
            closed += 1;
        }
    }
    drop(held);
    assert_eq!(closed, 100, "every connection that sent a bad frame was closed");
    let text = metrics(&admin);
    let counted: f64 = ["header", "length", "mac"].iter().map(|r| bad_frames(&text, r)).sum();
    assert!(counted >= 124.0, "24 attacking connections and 100 bad frames counted, got {counted}:\n{text}");
    assert!(bad_frames(&text, "length") >= 8.0, "the over-long chunks are counted as length:\n{text}");
    let log = node.log_text();
    let warns = log.lines().filter(|l| l.contains(" WARN ") && l.contains("peer frame dropped")).count();
    assert!(warns <= 2, "{warns} WARN lines for 124 bad frames:\n{log}");
}

#[test]
fn connections_that_send_nothing_valid_are_closed() {
    let dir = TestDir::new("idle");
    let (_node, admin, cluster) = start_node(&dir, 181, "node");
    let silent = connect(cluster);
    let mut half_header = connect(cluster);
    half_header.write_all(&[0xd3, 0x00]).unwrap();
    let mut half_chunk = connect(cluster);
    half_chunk.write_all(&[0xd3, 0x00, 0x01, 0x00]).unwrap(); // a 256-byte chunk announced
    half_chunk.write_all(&[7; 100]).unwrap(); // ... and 100 of them sent
    let t0 = Instant::now();
    for (what, mut s) in [("silent", silent), ("half a header", half_header), ("half a chunk", half_chunk)] {
        let left = Duration::from_secs(10).saturating_sub(t0.elapsed());
        assert!(closed_within(&mut s, left), "a connection that sent {what} is still open after 10 s");
    }
    eprintln!("all three closed {:?} after connecting", t0.elapsed());
    let text = metrics(&admin);
    assert!(bad_frames(&text, "timeout") >= 3.0, "each counted:\n{text}");
}

/// A status request from `from` sealed with the cluster key: whether an answer comes back.
fn status_answered(from: &str, to: SocketAddr) -> bool {
    use sipfront::cluster::{FrameKey, Request};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    if sock.connect_timeout(&to.into(), Duration::from_secs(2)).is_err() {
        return false;
    }
    let mut s: TcpStream = sock.into();
    let wire = FrameKey::from_secret(SECRET.as_bytes()).seal(&Request::Status).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut head = [0u8; 4];
    s.write_all(&wire).is_ok() && s.read_exact(&mut head).is_ok() && head[0] == 0xd3
}

#[test]
fn one_address_cannot_hold_the_port_and_peers_still_get_in() {
    let dir = TestDir::new("cap");
    let (node, admin, cluster) = start_node(&dir, 182, "node");
    let pid = node.pid();
    let base_fds = fd_count(pid);
    // 200 silent connections from one address (127.0.0.1).
    let mut flood: Vec<TcpStream> = (0..200).map(|_| connect(cluster)).collect();
    let t0 = Instant::now();
    let mut closed = vec![false; flood.len()];
    while closed.iter().filter(|c| **c).count() < 200 - 32 && t0.elapsed() < Duration::from_millis(2500) {
        for (i, s) in flood.iter_mut().enumerate() {
            if !closed[i] {
                closed[i] = closed_within(s, Duration::from_millis(1));
            }
        }
    }
    let n_closed = closed.iter().filter(|c| **c).count();
    let fds = fd_count(pid);
    eprintln!("{n_closed} of 200 closed at once; the node holds {fds} descriptors (had {base_fds})");
    assert!(n_closed >= 168, "only {n_closed} of 200 connections from one address were refused");
    assert!(fds <= base_fds + 32 + 8, "the node holds {fds} descriptors, had {base_fds}");
    assert!(status_answered("127.0.1.182", cluster), "a peer's address still gets in");
    assert!(status_answered("127.0.3.182", cluster), "another address still gets in");
    drop(flood);
    let text = metrics(&admin);
    let refused =
        metric_sample(&text, "sipfront_cluster_connections_refused_total{reason=\"per_source\"}").unwrap_or(0.0);
    assert!(refused >= 168.0, "refusals counted: {refused}\n{text}");
}

#[test]
fn a_second_node_on_the_same_data_dir_refuses_to_start_naming_the_holder() {
    let dir = TestDir::new("datadir");
    std::fs::write(dir.0.join("key"), SECRET).unwrap();
    let n = 183;
    let mut first = Node::start(&dir.0, "first", &node_toml(&dir.0, n, 1, "shared", false));
    let c1: SocketAddr = format!("127.0.0.{n}:7000").parse().unwrap();
    first.wait_ready("listening", || socket_bound(c1, Tp::Tcp));
    let holder = first.pid();

    // Node 2's config, pasted with node 1's data_dir.
    let toml = node_toml(&dir.0, n, 2, "shared", false);
    let mut second = Node::start(&dir.0, "second", &toml);
    let st = second.exits_within(Duration::from_secs(15));
    let log = second.log_text();
    assert!(st.is_some_and(|s| !s.success()), "a second node on the same data_dir is running ({st:?}):\n{log}");
    assert!(log.contains("cluster.data_dir") && log.contains(&format!("pid {holder}")), "names the holder:\n{log}");

    // kill -9 frees the directory: the lock goes with the process.
    first.kill();
    let mut again = Node::start(&dir.0, "again", &toml);
    let c2: SocketAddr = format!("127.0.1.{n}:7000").parse().unwrap();
    again.wait_ready("listening", || socket_bound(c2, Tp::Tcp));
    assert!(again.alive());
}

/// In process: member `i` of a cluster on 127.0.0.{185,186,187}.
fn inprocess_toml(dir: &Path, i: u32) -> String {
    let ip = |k: u32| format!("127.0.0.{}", 184 + k);
    format!(
        "[node]\nid = {i}\nname = \"s{i}\"\n[sip]\nlisten = [\"udp:{me}:5060\"]\nadvertise = \"{me}\"\n\
         [cluster]\nlisten = \"{me}:7000\"\npeers = [ {{ id = 1, addr = \"{a}:7000\" }}, {{ id = 2, addr = \"{b}:7000\" }}, \
         {{ id = 3, addr = \"{c}:7000\" }} ]\nsecret_file = \"{d}/key\"\ndata_dir = \"{d}/s{i}\"\nsnapshot_every = 10\n\
         election_timeout = \"3s\"\nheartbeat = \"1s\"\n\
         [dialogs]\nmax = 200000\nack_timeout = \"1h\"\n[log]\nlevel = \"warn\"\n[health]\nenabled = false\n\
         [[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.1.185:5060\"\n",
        me = ip(i),
        a = ip(1),
        b = ip(2),
        c = ip(3),
        d = dir.display()
    )
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_100k_dialogs_still_reaches_a_restarted_member() {
    use sipfront::config::Config;
    use sipfront::dialog::{DialogId, NewDialog};
    use sipfront::server::Server;
    use sipfront::transport::{Target, Transport};
    use tokio_util::sync::CancellationToken;

    const DIALOGS: u32 = 100_000;
    let dir = TestDir::new("snapshot");
    std::fs::write(dir.0.join("key"), SECRET).unwrap();
    let cfgs: Vec<Config> = (1..=3).map(|i| Config::from_toml(&inprocess_toml(&dir.0, i)).unwrap()).collect();
    let mut servers = Vec::new();
    for c in &cfgs {
        servers.push(Some(Server::start(c, CancellationToken::new()).await.expect("node starts")));
    }
    let serving = |s: &[Option<Server>]| -> Vec<usize> {
        (0..3).filter(|i| s[*i].as_ref().is_some_and(|s| s.proxy.is_active())).collect()
    };
    wait_for("a leader", Duration::from_secs(10), || serving(&servers).len() == 1).await;
    let l = serving(&servers)[0];
    let (f, o) = ((l + 1) % 3, (l + 2) % 3);
    servers[f].take().unwrap().shutdown().await;

    let client = Target { transport: Transport::Udp, addr: "192.0.2.7:5062".parse().unwrap(), conn: None };
    let new = NewDialog { home: Some(0), client: Some(client), caller_cseq: 1 };
    let t0 = Instant::now();
    for start in (0..DIALOGS).step_by(10_000) {
        let leader = servers[l].as_ref().unwrap();
        for k in start..start + 10_000 {
            let id =
                DialogId::new(format!("call-{k}@192.0.2.7").as_bytes(), b"from-tag-1234", format!("to-{k}").as_bytes());
            leader.proxy.dialogs.confirm(id, &new, None);
        }
        // The journal holds 65,536 events: let each 10,000 reach the other follower first.
        let other = servers[o].as_ref().unwrap();
        let want = (start + 10_000) as usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while other.proxy.dialogs.len() != want {
            let (on_leader, there) = (leader.proxy.dialogs.len(), other.proxy.dialogs.len());
            assert!(
                tokio::time::Instant::now() < deadline,
                "{want} dialogs: {on_leader} on the leader, {there} replicated"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("{DIALOGS} dialogs confirmed and replicated in {:?}", t0.elapsed());
    // Then small entries, one dialog each, well past `snapshot_every` (10): whatever lies after the last
    // snapshot (it is built off the cluster thread, so it may trail) is then these small entries, not the bulk.
    const TAIL: u32 = 30;
    let leader = servers[l].as_ref().unwrap();
    let last_log = || leader.cluster.as_ref().unwrap().status().last_log.unwrap_or(0);
    for k in 0..TAIL {
        let before = last_log();
        let id = DialogId::new(format!("tail-{k}@192.0.2.7").as_bytes(), b"from-tag-1234", b"to-tail");
        leader.proxy.dialogs.confirm(id, &new, None);
        wait_for("a tail entry on the leader", Duration::from_secs(10), || last_log() > before).await;
    }
    let other = servers[o].as_ref().unwrap();
    let want = (DIALOGS + TAIL) as usize;
    wait_for("the tail replicated", Duration::from_secs(10), || other.proxy.dialogs.len() == want).await;
    eprintln!("{TAIL} small entries after them in {:?}", t0.elapsed());

    let t1 = Instant::now();
    servers[f] = Some(Server::start(&cfgs[f], CancellationToken::new()).await.expect("restart"));
    let back = servers[f].as_ref().unwrap();
    wait_for("the restarted member has every dialog", Duration::from_secs(120), || {
        back.proxy.dialogs.len() == (DIALOGS + TAIL) as usize
    })
    .await;
    let raft = dir.0.join(format!("s{}/raft", f + 1));
    let size = |name: &str| std::fs::metadata(raft.join(name)).map(|m| m.len()).unwrap_or(0);
    // The tables are installed before the snapshot file is written.
    wait_for("the snapshot file", Duration::from_secs(10), || size("snapshot") > 0).await;
    eprintln!(
        "caught up in {:?}: snapshot {} KiB, log {} KiB",
        t1.elapsed(),
        size("snapshot") / 1024,
        size("log") / 1024
    );
    assert!(size("snapshot") > 1 << 20, "a snapshot of many chunks ({} bytes)", size("snapshot"));
    // Had it come as log entries, the log would hold every dialog record: more than the snapshot.
    assert!(size("log") < size("snapshot") / 2, "most of it came as a snapshot, not as log entries");
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}

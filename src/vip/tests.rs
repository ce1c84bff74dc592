//! The VIP against a real kernel, in network namespaces of its own (needs root; skipped with a message
//! otherwise), plus the pure frame and message encodings. Each namespace test uses its own subnet 10.231.X.0/24.

mod harness;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{echo, eventually, have_root, link, spec, ArpSniffer, Netns, Worker};

use super::netlink::{self, Address};
use super::{garp, LinuxVip, VipError};

const PORT: u16 = 7000;
const PACKET_BROADCAST: u8 = 1;

fn vip_addr(x: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 231, x, 100), PORT))
}

#[test]
fn acquire_serves_the_vip_and_release_removes_it() {
    if !have_root("acquire_serves_the_vip_and_release_removes_it") {
        return;
    }
    let (a, b) = (Netns::new("acq", "a"), Netns::new("acq", "b"));
    link(&a, 1, &b, 2, 11);
    // Strict reverse-path filtering on the holder changes nothing: the route back to the peer is via lan0.
    a.sysctl("net.ipv4.conf.all.rp_filter", "1");
    a.sysctl("net.ipv4.conf.lan0.rp_filter", "1");
    let client = b.enter(|| std::net::UdpSocket::bind("10.231.11.2:0").expect("bind the client"));

    let node = Worker::new(&a);
    node.create(spec(11, 1)).expect("new");
    assert!(!node.holds());
    assert!(!node.present().expect("present"));

    node.acquire().expect("acquire");
    assert!(node.holds());
    assert!(node.present().expect("present"));
    let line = a.addresses().lines().find(|l| l.contains("10.231.11.100")).map(str::to_owned);
    let line = line.expect("the VIP in `ip addr`");
    assert!(line.contains("sfvip0") && line.contains("10.231.11.100/32") && line.contains("scope global"), "{line}");
    assert!(a.ip(&["link", "show", "dev", "sfvip0"]).contains(",UP"), "the device is up");
    node.acquire().expect("acquire again");
    assert_eq!(a.addresses().matches("10.231.11.100").count(), 1, "idempotent acquire adds nothing");

    node.echo(vip_addr(11), "a");
    let answer = echo(&client, vip_addr(11), Duration::from_secs(5));
    assert!(answer.is_some_and(|s| s.starts_with("a:")), "the peer reaches the VIP over lan0");

    node.release().expect("release");
    assert!(!node.holds());
    assert!(!node.present().expect("present"));
    assert!(!a.addresses().contains("10.231.11.100"), "address gone");
    assert!(!a.has_link("sfvip0"), "device gone");
    assert_eq!(echo(&client, vip_addr(11), Duration::from_millis(500)), None, "no answer after release");
    node.release().expect("release again");

    node.acquire().expect("acquire after release");
    assert!(echo(&client, vip_addr(11), Duration::from_secs(5)).is_some(), "reachable again");
    node.drop_vip();
    assert!(!a.has_link("sfvip0") && !a.addresses().contains("10.231.11.100"), "drop releases");
}

#[test]
fn garp_frames_announce_the_vip() {
    if !have_root("garp_frames_announce_the_vip") {
        return;
    }
    let (a, b) = (Netns::new("garp", "a"), Netns::new("garp", "b"));
    link(&a, 1, &b, 2, 12);
    let sniffer = ArpSniffer::open(&b, "lan0");
    let vip = Ipv4Addr::new(10, 231, 12, 100);
    let is_garp = |p: &[u8]| p.len() >= 28 && p[14..18] == vip.octets() && p[24..28] == vip.octets();

    let node = Worker::new(&a);
    node.create(spec(12, 3)).expect("new");
    node.acquire().expect("acquire");
    node.garp_finished();
    let count = |seen: &[harness::ArpSeen]| seen.iter().filter(|s| is_garp(&s.payload)).count();
    let mut seen = sniffer.collect(Duration::from_secs(5), |seen| count(seen) >= 3);
    // The sender is done; anything more would have to arrive now.
    seen.extend(sniffer.collect(Duration::from_millis(300), |_| false));
    let garps: Vec<_> = seen.iter().filter(|s| is_garp(&s.payload)).collect();
    assert_eq!(garps.len(), 3, "exactly garp_count gratuitous ARPs");

    let mac = a.mac("lan0");
    for g in garps {
        assert_eq!(g.from, mac, "sent from the holder's LAN MAC");
        assert_eq!(g.pkttype, PACKET_BROADCAST, "broadcast");
        assert_eq!(g.payload[..28], garp::frame(mac, vip), "frame content");
        assert_eq!(g.payload[6..8], [0, 1], "an ARP request");
        assert_eq!(g.payload[8..14], mac, "sender MAC");
        assert_eq!(g.payload[18..24], [0; 6], "target MAC zero");
    }
}

#[test]
fn garp_moves_the_peers_neighbour_entry() {
    if !have_root("garp_moves_the_peers_neighbour_entry") {
        return;
    }
    // a and c may hold the VIP; b is a peer with a bridge joining them.
    let (a, b, c) = (Netns::new("move", "a"), Netns::new("move", "b"), Netns::new("move", "c"));
    b.ip(&["link", "add", "lan0", "type", "bridge"]);
    for (holder, port, i) in [(&a, "pa", "1"), (&c, "pc", "3")] {
        harness::ip(&[
            "link",
            "add",
            "lan0",
            "netns",
            &holder.name,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &b.name,
        ]);
        holder.ip(&["addr", "add", &format!("10.231.13.{i}/24"), "dev", "lan0"]);
        holder.ip(&["link", "set", "lan0", "up"]);
        b.ip(&["link", "set", port, "master", "lan0", "up"]);
    }
    b.ip(&["addr", "add", "10.231.13.2/24", "dev", "lan0"]);
    b.ip(&["link", "set", "lan0", "up"]);
    let client = b.enter(|| std::net::UdpSocket::bind("10.231.13.2:0").expect("bind the client"));
    let neighbour = || b.ip(&["neigh", "show", "10.231.13.100", "dev", "lan0"]);
    let mac_text = |m: [u8; 6]| m.map(|x| format!("{x:02x}")).join(":");

    let (first, second) = (Worker::new(&a), Worker::new(&c));
    for node in [&first, &second] {
        node.create(spec(13, 3)).expect("new");
    }
    first.acquire().expect("a acquires");
    first.echo(vip_addr(13), "a");
    let answer = echo(&client, vip_addr(13), Duration::from_secs(5));
    assert!(answer.is_some_and(|s| s.starts_with("a:")), "a answers");
    assert!(neighbour().contains(&mac_text(a.mac("lan0"))), "b learnt a's MAC: {}", neighbour());

    first.release().expect("a releases");
    second.acquire().expect("c acquires");
    second.echo(vip_addr(13), "c");
    // b's entry is fresh (REACHABLE for ~30 s): only the gratuitous ARP can move it now.
    let c_mac = mac_text(c.mac("lan0"));
    assert!(eventually(Duration::from_secs(2), || neighbour().contains(&c_mac)), "b now has c's MAC: {}", neighbour());
    let answer = echo(&client, vip_addr(13), Duration::from_secs(5));
    assert!(answer.is_some_and(|s| s.starts_with("c:")), "c answers");
}

const CHILD_ENV: &str = "SIPFRONT_VIP_TEST_CHILD";
const CHILD_READY: &str = "SIPFRONT-VIP-CHILD-ACQUIRED";

/// Not a test by itself: `killed_holder_leaves_nothing` runs the test binary again with only this, in a child
/// process, and kills it.
#[test]
#[ignore = "helper: run as a child process by killed_holder_leaves_nothing"]
fn killed_holder_child() {
    let Ok(ns) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} not set: nothing to do outside killed_holder_leaves_nothing");
        return;
    };
    harness::enter_netns(&ns);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut vip = LinuxVip::new(spec(14, 1)).expect("new");
        vip.acquire().await.expect("acquire");
        println!("{CHILD_READY}");
        std::future::pending::<()>().await;
    });
}

#[test]
fn killed_holder_leaves_nothing() {
    if !have_root("killed_holder_leaves_nothing") {
        return;
    }
    let (a, b) = (Netns::new("kill", "a"), Netns::new("kill", "b"));
    link(&a, 1, &b, 2, 14);
    let name = format!("{}::killed_holder_child", module_path!().split_once("::").expect("crate::path").1);
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", &name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &a.name)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(CHILD_READY) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("the child acquires the VIP");
    assert!(a.addresses().contains("10.231.14.100/32") && a.has_link("sfvip0"), "held by the child");

    child.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL: no destructor runs
    child.0.wait().expect("reap");
    let gone = || !a.addresses().contains("10.231.14.100") && !a.has_link("sfvip0");
    assert!(eventually(Duration::from_secs(1), gone), "address and device gone within 1 s: {}", a.addresses());
}

#[test]
fn remove_stale_clears_hand_added_vips() {
    if !have_root("remove_stale_clears_hand_added_vips") {
        return;
    }
    let (a, b) = (Netns::new("stale", "a"), Netns::new("stale", "b"));
    link(&a, 1, &b, 2, 15);
    a.ip(&["addr", "add", "10.231.15.100/24", "dev", "lan0"]);
    a.ip(&["addr", "add", "10.231.15.100/32", "dev", "lo"]);

    let node = Worker::new(&a);
    node.create(spec(15, 1)).expect("new");
    assert!(node.present().expect("present"), "a hand-added VIP counts as present");
    assert!(!node.holds(), "but it is not ours");
    assert_eq!(node.remove_stale().expect("remove_stale"), 2);
    assert!(!node.present().expect("present"));
    let addresses = a.addresses();
    assert!(!addresses.contains("10.231.15.100") && addresses.contains("10.231.15.1/24"), "{addresses}");
    assert_eq!(node.remove_stale().expect("remove_stale"), 0);

    // While we hold it, our own device is left alone.
    node.acquire().expect("acquire");
    a.ip(&["addr", "add", "10.231.15.100/24", "dev", "lan0"]);
    assert_eq!(node.remove_stale().expect("remove_stale"), 1);
    assert!(node.holds() && node.present().expect("present"));
    assert_eq!(a.addresses().matches("10.231.15.100").count(), 1);
}

#[test]
fn acquire_repairs_a_held_vip() {
    if !have_root("acquire_repairs_a_held_vip") {
        return;
    }
    let (a, b) = (Netns::new("fix", "a"), Netns::new("fix", "b"));
    link(&a, 1, &b, 2, 19);
    let node = Worker::new(&a);
    node.create(spec(19, 1)).expect("new");
    node.acquire().expect("acquire");

    a.ip(&["addr", "del", "10.231.19.100/32", "dev", "sfvip0"]);
    assert!(!node.present().expect("present"));
    node.acquire().expect("acquire restores the address");
    assert!(node.present().expect("present") && a.addresses().contains("sfvip0"));

    a.ip(&["link", "del", "sfvip0"]);
    assert!(!node.present().expect("present"));
    node.acquire().expect("acquire makes the device again");
    assert!(node.holds() && node.present().expect("present") && a.has_link("sfvip0"));
    node.release().expect("release");
    assert!(!a.has_link("sfvip0"));
}

/// The documented requirement: with arp_ignore=1 the LAN interface no longer answers ARP for an address that
/// is on another interface (the TUN device); with 3 it does again.
#[test]
fn arp_ignore_must_be_0_or_3() {
    if !have_root("arp_ignore_must_be_0_or_3") {
        return;
    }
    let (a, b) = (Netns::new("arpi", "a"), Netns::new("arpi", "b"));
    link(&a, 1, &b, 2, 16);
    let client = b.enter(|| std::net::UdpSocket::bind("10.231.16.2:0").expect("bind the client"));
    let node = Worker::new(&a);
    node.create(spec(16, 1)).expect("new");
    node.acquire().expect("acquire");
    node.echo(vip_addr(16), "a");

    a.sysctl("net.ipv4.conf.lan0.arp_ignore", "1");
    assert_eq!(echo(&client, vip_addr(16), Duration::from_millis(1500)), None, "arp_ignore=1: unreachable");
    a.sysctl("net.ipv4.conf.lan0.arp_ignore", "3");
    assert!(echo(&client, vip_addr(16), Duration::from_secs(5)).is_some(), "arp_ignore=3: reachable");
}

#[test]
fn an_existing_device_is_not_taken_over() {
    if !have_root("an_existing_device_is_not_taken_over") {
        return;
    }
    let (a, b) = (Netns::new("excl", "a"), Netns::new("excl", "b"));
    link(&a, 1, &b, 2, 17);
    a.ip(&["tuntap", "add", "dev", "sfvip0", "mode", "tun"]); // persistent: would outlive us
    let node = Worker::new(&a);
    node.create(spec(17, 1)).expect("new");
    let err = node.acquire().expect_err("the name is taken");
    assert!(matches!(err, VipError::DeviceExists { .. }), "{err:?}");
    assert!(err.to_string().contains("sfvip0"), "{err}");
    assert!(!node.holds() && !node.present().expect("present"), "nothing left half-done");
}

#[test]
fn errors_name_what_is_wrong() {
    let missing = LinuxVip::new(super::LinuxVipSpec { interface: "sfvt-nosuch0".into(), ..spec(18, 1) });
    let err = missing.expect_err("no such interface");
    assert!(matches!(err, VipError::NoInterface { .. }) && err.to_string().contains("sfvt-nosuch0"), "{err}");

    let long = LinuxVip::new(super::LinuxVipSpec { device: "sfvip-much-too-long".into(), ..spec(18, 1) });
    let err = long.expect_err("over-long device name");
    assert!(matches!(err, VipError::InvalidName { .. }), "{err:?}");
    assert!(err.to_string().contains("sfvip-much-too-long") && err.to_string().contains("15 bytes"), "{err}");

    let same = LinuxVip::new(super::LinuxVipSpec { device: "lan0".into(), ..spec(18, 1) });
    assert!(matches!(same, Err(VipError::InvalidName { .. })), "{same:?}");
    let prefix = LinuxVip::new(super::LinuxVipSpec { prefix_len: 33, ..spec(18, 1) });
    assert!(matches!(prefix, Err(VipError::InvalidAddress { .. })), "{prefix:?}");
    let any = LinuxVip::new(super::LinuxVipSpec { address: Ipv4Addr::UNSPECIFIED, ..spec(18, 1) });
    assert!(matches!(any, Err(VipError::InvalidAddress { .. })), "{any:?}");
    let lo = LinuxVip::new(super::LinuxVipSpec { interface: "lo".into(), ..spec(18, 1) });
    assert!(matches!(lo, Err(VipError::NotEthernet { .. })), "{lo:?}");
}

#[test]
fn garp_frame_layout() {
    let frame = garp::frame([2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 0, 0, 100));
    #[rustfmt::skip]
    let expected = [
        0, 1, 8, 0, 6, 4, 0, 1,     // Ethernet, IPv4, hlen 6, plen 4, request
        2, 0, 0, 0, 0, 7,           // sender MAC
        10, 0, 0, 100,              // sender IP: the VIP
        0, 0, 0, 0, 0, 0,           // target MAC: unknown
        10, 0, 0, 100,              // target IP: the VIP again
    ];
    assert_eq!(frame, expected);
}

#[test]
fn netlink_address_message_round_trip() {
    let (local, peer) = ([10, 0, 0, 100], [10, 0, 0, 1]);
    let msg = netlink::address_message(20, 0x405, 9, (7, 24), &[(2, &local), (1, &peer), (3, b"eth0:1\0")]);
    assert_eq!(msg.len() % 4, 0);
    assert_eq!(u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize, msg.len());
    assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 20);
    assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 9);
    let parsed = netlink::parse_address(&msg[16..]).expect("parses");
    let expected = Address {
        ifindex: 7,
        prefix_len: 24,
        local: Ipv4Addr::from(local),
        address: Ipv4Addr::from(peer),
        label: "eth0:1".into(),
    };
    assert_eq!(parsed, expected);
    assert_eq!(netlink::parse_address(&msg[16..30]), None, "a truncated attribute is refused");
}

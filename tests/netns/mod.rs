//! Harness for the cluster and fault tests (`tests/cluster_*.rs`, `tests/netns_*.rs`; testing tier 4 in
//! DESIGN.md): three `sipfront` nodes, a phone and two PBXs, each in its own Linux network namespace, joined by a
//! bridge. Use it as `mod netns; use netns::*;`.
//!
//! ```text
//!                              sf{T}-sw: bridge br0 (ports n1 n2 n3 ph p1 p2)
//!        ┌──────────────┬──────────────┬──────┴───────┬──────────────┬──────────────┐
//!    sf{T}-n1       sf{T}-n2       sf{T}-n3       sf{T}-ph       sf{T}-p1       sf{T}-p2
//!    node 1         node 2         node 3         phones         PBX 1          PBX 2
//!    10.201.T.11    10.201.T.12    10.201.T.13    10.201.T.50    10.201.T.21    10.201.T.22
//!           └─ the VIP 10.201.T.100/24 on the eth0 of whichever node holds it ─┘
//! ```
//!
//! T is the lab's tag ([`Lab::new`]), 1..=250, unique per test so that tests run in parallel (within a test
//! binary and across binaries). Every non-switch namespace has `lo` up and one veth, `eth0` inside, whose peer
//! (named for the namespace: `n1`, `ph`, `p2` ...) is a port of `br0` in the switch namespace; all of it is made
//! with `ip -n`, so nothing is ever created in, or sent through, the host's own namespace. Tags taken:
//! `netns_smoke.rs` 1-9, `cluster_faults.rs` 10-14, `cluster_aws.rs` 15-17, `cluster_tls.rs` 18,
//! `cluster_interop.rs` 19-20, `ha_lab.rs` 21-24 (add a line here when a test file takes a range).
//!
//! What a test gets:
//! - [`Lab`] ([`topology`]): the namespaces and links, `ip` inside them, a cut/restored link;
//! - processes ([`procs`]): [`Lab::spawn`] anything in a namespace, [`Lab::start_node`] (sipfront);
//!   [`Lab::kill9`], [`Lab::sigterm`], [`Lab::restart`];
//! - SIP peers ([`peers`]): [`Lab::start_pbx`] (SIPp UAS), [`Lab::run_uac`] / [`Lab::start_uac`] (SIPp UAC on
//!   the phone address), each giving back a [`SippRun`];
//! - [`NodeConfig`] ([`config`]): each node's TOML for the 3-node cluster, or today's standalone subset;
//! - [`VipSampler`] ([`sampler`]): who holds the VIP, every 20 ms, and the most holders ever seen at once;
//! - [`Pinger`] ([`pinger`]): an OPTIONS to a target every 20 ms from the phone namespace; the failover gap;
//! - [`Lab::status`] ([`status`]): `sipfront status` in a node's namespace, and its columns.
//!
//! Cleanup guarantees. Every process runs as `ip netns exec NS timeout -s KILL <bound> CMD` in its own process
//! group, so it dies by itself at the bound (300 s unless asked otherwise) even when the test process is killed
//! with SIGKILL. On drop, panicking or not, the lab stops its sampler and pinger threads, SIGKILLs every process
//! group it started and waits (2 s at most) until none of their processes is left, then SIGKILLs anything else
//! still running in its namespaces (`ip netns pids`), and deletes all seven namespaces (the veths and the bridge
//! go with them). A failed test first prints the tail of every
//! process log; `SIPFRONT_TEST_KEEP=1` keeps the lab's temp dir (configs, logs, SIPp traces). A new lab first
//! removes the namespaces (and their processes) a crashed run with the same tag left behind.
//!
//! Threads that must act inside a namespace (the sampler, the pinger, [`Lab::udp_socket`]) enter it with
//! `setns(2)`, which moves only the calling thread; a socket stays in the namespace it was created in, so a
//! socket made by a short-lived thread is usable from the test's own thread. The test's main thread never
//! changes namespace.
//!
//! Not root: [`Lab::new`] prints why and returns `None`, and the test returns early. Any other missing piece
//! (`ip`, `sipp`, a namespace that cannot be created) fails the test.
#![allow(dead_code)]

#[path = "../shared/mod.rs"]
mod shared;

pub mod config;
pub mod nsenter;
pub mod peers;
pub mod pinger;
pub mod procs;
pub mod sampler;
pub mod status;
pub mod topology;

// What tests name; a test binary uses some of it, so unused re-exports are fine here.
#[allow(unused_imports)]
pub use config::NodeConfig;
#[allow(unused_imports)]
pub use peers::{Uac, UacSpec};
#[allow(unused_imports)]
pub use pinger::{Ping, Pinger};
#[allow(unused_imports)]
pub use sampler::{HolderChange, VipSampler};
// The real phones and PBXs of `tests/shared` (`cluster_interop.rs`): start them from a thread inside a namespace
// (`nsenter::in_ns`) and they run there, control sockets included.
#[allow(unused_imports)]
pub use shared::{baresip, http_exchange, kamailio, sippy};
#[allow(unused_imports)]
pub use shared::{options_to, parse_sipp_trace, sipfront_bin, SipMsg, SippRun, Tp, Traced, SCENARIOS};
#[allow(unused_imports)]
pub use status::{status_field, status_row, APPLIED, DIALOGS, LEADER, ROLE};
#[allow(unused_imports)]
pub use topology::{listed_namespaces, live_processes_in_groups, Lab, Ns};

use std::time::{Duration, Instant};

/// The SIP port of every node, the VIP and the PBXs.
pub const SIP_PORT: u16 = 5060;
/// The cluster (Raft) port of every node.
pub const CLUSTER_PORT: u16 = 7000;
/// The last octet of the VIP, 10.201.T.100.
pub const VIP_OCTET: u8 = 100;
/// The last octet of the phones' address, 10.201.T.50.
pub const PHONE_OCTET: u8 = 50;

/// Poll `cond` every 5 ms until it holds; the instant it did, or a panic naming `what` at the deadline.
pub fn poll_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

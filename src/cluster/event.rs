//! What the cluster replicates: small commands describing changes to the dialog table, the flow table, the
//! backends' health and the guard's ban list, grouped in [`Batch`]es (one Raft log entry each), and the
//! [`Journal`] through which the data plane hands them over without ever waiting.
//!
//! Every command is idempotent (an upsert or a removal), so applying one to a table that already reflects it, or
//! installing a snapshot a little newer than its log position, converges to the same state.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::transport::{Target, Transport};

/// A client's flow as it travels between nodes: connection ids are local to a process, so only the transport
/// and the address go; a connection-oriented client reconnects to the new leader. A TLS, WS or WSS flow travels
/// as `tcp` (the wire format predates them): either way the new leader cannot reach the old connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTarget {
    pub tcp: bool,
    pub addr: SocketAddr,
}

impl From<Target> for WireTarget {
    fn from(t: Target) -> WireTarget {
        WireTarget { tcp: t.transport != Transport::Udp, addr: t.addr }
    }
}

impl From<WireTarget> for Target {
    fn from(w: WireTarget) -> Target {
        Target { transport: if w.tcp { Transport::Tcp } else { Transport::Udp }, addr: w.addr, conn: None }
    }
}

/// One confirmed dialog, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogRecord {
    /// The table key ([`crate::dialog::DialogId`] bytes).
    pub id: Bytes,
    pub terminated: bool,
    pub home: u16,
    pub client: Option<WireTarget>,
    pub route_set: Option<Bytes>,
    pub caller_cseq: u32,
    pub callee_cseq: u32,
    /// Seconds since the dialog was created, on the sender's clock.
    pub age: u32,
    /// Seconds since its last request.
    pub quiet: u32,
}

/// One registration flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub token: Bytes,
    pub flow: WireTarget,
    pub aor: Bytes,
    /// Milliseconds until it expires, on the sender's clock.
    pub ttl_ms: u64,
}

/// One banned source (a flood or a scanner, [`crate::guard`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The source address (an IPv6 source's /64 prefix).
    pub ip: IpAddr,
    /// Milliseconds the ban has left, on the sender's clock.
    pub ttl_ms: u64,
    pub reason: crate::guard::BanReason,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A dialog was confirmed (or its record changed): insert or replace.
    DialogUp(DialogRecord),
    /// One dialog moved to another backend.
    DialogHome { id: Bytes, home: u16 },
    /// Every dialog on backend `from` moved to `to`.
    Rehome { from: u16, to: u16 },
    /// The dialog ended (BYE answered, failed, reaped).
    DialogGone { id: Bytes },
    /// A registration was accepted or refreshed.
    FlowUp(FlowRecord),
    /// A registration ended or expired.
    FlowGone { token: Bytes },
    /// A backend was declared up or down.
    Backend { index: u16, up: bool },
    /// A backend was drained (no new calls) or undrained by an operator.
    Drain { index: u16, drained: bool },
    /// A source was banned (or its ban extended).
    Ban(BanRecord),
    /// An operator lifted a ban.
    Unban { ip: IpAddr },
}

/// One Raft log entry: the events one node produced over a few milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The process that produced it ([`Journal::origin`]); it skips its own batches, its tables already hold them.
    pub origin: u64,
    /// Unix time in ms when the batch was proposed, for the replication lag metric.
    pub stamp_ms: u64,
    pub events: Vec<Event>,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch(origin {:x}, {} events)", self.origin, self.events.len())
    }
}

/// The whole replicated state, for snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    pub dialogs: Vec<DialogRecord>,
    pub flows: Vec<FlowRecord>,
    /// Index and up/down of every backend.
    pub backends: Vec<(u16, bool)>,
    /// Live bans. Last, so [`Tables::decode`] still reads a snapshot written before bans were replicated.
    pub bans: Vec<BanRecord>,
}

impl Tables {
    /// Decode a snapshot, also one written before `bans` existed (bincode has no optional fields: that one
    /// simply ends after `backends`).
    pub fn decode(bytes: &[u8]) -> bincode::Result<Tables> {
        #[derive(Deserialize)]
        struct WithoutBans {
            dialogs: Vec<DialogRecord>,
            flows: Vec<FlowRecord>,
            backends: Vec<(u16, bool)>,
        }
        bincode::deserialize(bytes).or_else(|e| {
            let Ok(t) = bincode::deserialize::<WithoutBans>(bytes) else { return Err(e) };
            Ok(Tables { dialogs: t.dialogs, flows: t.flows, backends: t.backends, bans: Vec::new() })
        })
    }
}

/// How many events may wait for the batcher before new ones are dropped (and counted).
pub const JOURNAL_CAPACITY: usize = 65_536;

/// The data plane's side of replication: `record` never blocks and never fails the caller. A standalone node's
/// journal is disabled and costs one branch.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    tx: Option<mpsc::Sender<Event>>,
    dropped: Arc<AtomicU64>,
}

impl Journal {
    /// An enabled journal and the receiving end for the batcher.
    pub fn new() -> (Journal, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(JOURNAL_CAPACITY);
        (Journal { tx: Some(tx), dropped: Arc::default() }, rx)
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Hand one event to replication; when the queue is full it is dropped and counted (the table entry still
    /// routes on this node, and the Record-Route token routes the call anywhere).
    pub fn record(&self, ev: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::CLUSTER_EVENTS_DROPPED).increment(1);
        }
    }

    /// Events waiting for the batcher.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A random number that identifies this process's batches.
pub fn process_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot written before bans were replicated still installs (a node upgraded in place restarts from it).
    #[test]
    fn a_snapshot_without_bans_still_decodes() {
        #[derive(Serialize)]
        struct Before {
            dialogs: Vec<DialogRecord>,
            flows: Vec<FlowRecord>,
            backends: Vec<(u16, bool)>,
        }
        let flow = FlowRecord {
            token: Bytes::from_static(b"t"),
            flow: WireTarget { tcp: false, addr: "192.0.2.1:5060".parse().unwrap() },
            aor: Bytes::from_static(b"sip:100@x"),
            ttl_ms: 5,
        };
        let old = bincode::serialize(&Before { dialogs: vec![], flows: vec![flow.clone()], backends: vec![(0, true)] });
        let t = Tables::decode(&old.unwrap()).unwrap();
        assert_eq!((t.flows, t.backends, t.bans.len()), (vec![flow], vec![(0, true)], 0));
        let ban = BanRecord { ip: "203.0.113.5".parse().unwrap(), ttl_ms: 1000, reason: crate::guard::BanReason::Rate };
        let now = Tables { bans: vec![ban.clone()], ..Tables::default() };
        assert_eq!(Tables::decode(&bincode::serialize(&now).unwrap()).unwrap().bans, vec![ban]);
    }
}

//! The three-node cluster: Raft (the `openraft` crate) decides which node is active; the active node is the
//! Raft leader, and only it holds the VIP and serves SIP. Every node applies the same replicated table changes,
//! so the next leader already routes every established call.
//!
//! ```text
//!  data plane (SIP runtime)              cluster thread (its own runtime under SCHED_RR, `sched.rs`: SIP load
//!                                        and a busy host never delay a heartbeat)
//!  dialog/flow/health tables ──Journal──► batcher ──client_write──► Raft ──► peers (net.rs, frame.rs)
//!          ▲                                                          │
//!          └──────────── state_machine.rs applies committed batches ◄─┘   log_store.rs: vote + log on disk
//!  Proxy::active ◄── role.rs: leader ∧ quorum heard from recently ∧ caught up ⇒ hold the VIP and serve
//! ```
//!
//! Timing (`election_timeout` E, `heartbeat` H): a follower that hears nothing for E (the leader's lease) plus a
//! random E/2..E starts a pre-vote, then an election; a voter refuses to elect anyone else until E after the
//! leader's last heartbeat reached it. The leader gives the VIP up when a quorum has not acknowledged a
//! heartbeat sent in the last 3E/4 (checked every 5 ms: E/4 is the margin for that and for scheduling, which
//! the cluster thread's `SCHED_RR` keeps short), so the old holder is gone before a new leader can exist. Leadership moves
//! on purpose through [`switchover`](role::switchover) (and on SIGTERM), which releases the VIP first.

pub mod ctl;
mod dir_lock;
pub mod event;
mod frame;
pub(crate) mod limits;
mod log_store;
mod net;
mod placement;
pub mod role;
mod sched;
mod state_machine;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Config};
use crate::failover::{Resources, VolumeHandle};
use crate::metrics as m;
use crate::proxy::Proxy;
use event::{process_origin, unix_ms, Batch, Event, Journal};
pub use frame::FrameKey;
pub use net::{CallError, PeerClient, Request, Response};
use state_machine::StateMachine;

openraft::declare_raft_types!(
    /// sipfront's Raft types: node ids are `node.id`, a log entry is a [`Batch`] of table changes.
    pub TypeConfig:
        D = Batch,
        R = (),
        Node = BasicNode,
);

pub type Node = BasicNode;
type RaftNode = Raft<TypeConfig, StateMachine>;

/// How long the batcher waits after the first event for more to join it. Measured with
/// scripts/bench-cluster.sh: at 2 ms the leader spent 24.8 % of a core at 2,000 calls/s (single node: 13.7 %)
/// and failed steps from 6,000 calls/s; at 20 ms, 16.7 % and clean to 8,000 (the single node's ceiling). A
/// change is still on the followers about 25 ms after it happened, well inside a failover's half second.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// Most events in one log entry.
const BATCH_MAX: usize = 4096;

/// One node's view, for `sipfront status` (and the admin surface).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct NodeStatus {
    pub id: u64,
    pub name: String,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub vip: Option<String>,
    pub vip_held: bool,
    pub serving: bool,
    /// Why this node is not serving, when it is not.
    pub why_not: Option<String>,
    pub last_log: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// On the leader: how many entries each follower is behind (None: nothing acknowledged yet).
    pub lag: Vec<(u64, Option<u64>)>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub quorum_ack_ms: Option<u64>,
    /// On a follower: milliseconds from the leader's proposal of the last batch applied here to its apply
    /// (wall clocks of two hosts: as good as their NTP).
    pub apply_lag_ms: Option<u64>,
    pub dialogs: usize,
    pub flows: usize,
    pub events_dropped: u64,
    /// The data volume here: `vol-0123 held (term 7)`, `... acquiring; attempt 2 failed: ...`.
    pub volume: Option<String>,
    /// This node's most recent failover events (the admin API merges every node's into one timeline).
    pub events: Vec<crate::events::FailoverEvent>,
}

/// How many of its events a node sends in its status.
const EVENTS_IN_STATUS: usize = 50;

/// What the cluster thread shares with its tasks and the request handler.
pub struct Shared {
    pub id: u64,
    pub name: String,
    raft: RaftNode,
    pub proxy: Arc<Proxy>,
    pub peers: Vec<(u64, SocketAddr)>,
    pub key: FrameKey,
    pub election_timeout: Duration,
    /// The leader holds the VIP while a quorum acknowledged a heartbeat sent less than this ago.
    pub hold_lease: Duration,
    vip_address: Option<String>,
    vip_held: AtomicBool,
    /// Set by a switchover: do not (re)take the VIP before this instant.
    yield_until: Mutex<Option<tokio::time::Instant>>,
    why_not: Mutex<Option<String>>,
    journal: Journal,
    /// This process's batches carry it.
    origin: u64,
    /// The peer listener, bound in `boot`, served in `run`.
    listener: Mutex<Option<tokio::net::TcpListener>>,
    /// The batcher holds events it has not yet handed to Raft.
    batching: AtomicBool,
    apply_lag_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The data volume's task, once started (in `run`, on this thread's runtime).
    pub volume: std::sync::OnceLock<Arc<VolumeHandle>>,
    /// Bound on waiting for the volume's release (hook, unmount, detach) at a switchover or shutdown.
    pub volume_release_within: Duration,
}

impl Shared {
    /// Wait (bounded) until every table change made so far has been handed to Raft: the journal is empty and
    /// the batcher holds nothing.
    pub async fn flush_journal(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.journal.queued() > 0 || self.batching.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Drain or undrain a backend here and, on the leader, replicate it. Refused on a follower: the leader
    /// routes the calls.
    pub fn drain(&self, backend: &str, drained: bool) -> Result<String, String> {
        if self.raft.metrics().borrow_watched().current_leader != Some(self.id) {
            return Err(format!("node {} is not the leader", self.id));
        }
        let index = self
            .proxy
            .routing
            .backends()
            .iter()
            .position(|b| b.name == backend)
            .ok_or_else(|| format!("no backend named `{backend}`"))?;
        let changed = self.proxy.health.set_drained(index, drained);
        if let (true, Ok(i)) = (changed, u16::try_from(index)) {
            self.journal.record(Event::Drain { index: i, drained });
        }
        let what = if drained { "drained" } else { "undrained" };
        self.proxy.events.record("backend-drain", format!("{backend} {what}"), None);
        Ok(format!("{backend} {what}"))
    }

    pub fn status(&self) -> NodeStatus {
        let mm = self.raft.metrics();
        let m = mm.borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let last = m.last_log_index;
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| (*id, matched.as_ref().map(|l| last.unwrap_or(0).saturating_sub(l.index))))
                    .collect()
            })
            .unwrap_or_default();
        NodeStatus {
            id: self.id,
            name: self.name.clone(),
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            vip: self.vip_address.clone(),
            vip_held: self.vip_held.load(Ordering::Relaxed),
            serving: self.proxy.is_active(),
            why_not: self.why_not.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            last_log: last,
            committed: m.cluster_committed.map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            lag,
            quorum_ack_ms: m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&(*t).into_inner()).as_millis() as u64),
            apply_lag_ms: Some(self.apply_lag_ms.load(Ordering::Relaxed)).filter(|l| *l != u64::MAX),
            dialogs: self.proxy.dialogs.len(),
            flows: self.proxy.flows.len(),
            events_dropped: self.journal.dropped(),
            volume: self.volume.get().map(|v| v.render()),
            events: self.proxy.events.recent(EVENTS_IN_STATUS),
        }
    }
}

impl net::Handler for Shared {
    async fn handle(&self, req: Request) -> Response {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        match req {
            Request::Append(r) => Response::Append(self.raft.append_entries(r).await.map_err(|e| text(&e))),
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await.map_err(|e| text(&e))),
            Request::PreVote(r) => Response::Vote(self.raft.pre_vote(r).await.map_err(|e| text(&e))),
            Request::Snapshot { vote, snapshot } => Response::Snapshot(
                self.raft.install_full_snapshot(vote, net::into_snapshot(snapshot)).await.map_err(|e| text(&e)),
            ),
            Request::TransferLeader(r) => {
                Response::TransferLeader(self.raft.handle_transfer_leader(r).await.map_err(|e| text(&e)))
            }
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Switchover { to } => Response::Switchover(role::switchover(self, to).await),
            Request::Drain { backend, drained } => Response::Drain(self.drain(&backend, drained)),
        }
    }
}

/// A running cluster member: its thread and how to stop it.
pub struct Cluster {
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    /// The journal the proxy's tables write to, and the receiving end [`Cluster::start`] takes.
    pub fn journal() -> (Journal, mpsc::Receiver<Event>) {
        Journal::new()
    }

    /// Start Raft, the peer listener, the batcher and the role loop on a thread of their own, with its own
    /// runtime. The proxy stays inactive until this node leads.
    pub async fn start(
        cfg: &Config,
        proxy: Arc<Proxy>,
        journal: Journal,
        events: mpsc::Receiver<Event>,
    ) -> anyhow::Result<Cluster> {
        let c = cfg.cluster.clone().ok_or_else(|| anyhow::anyhow!("no [cluster] section"))?;
        // Held by the cluster thread until it ends: no second process writes this vote and log meanwhile.
        let lock = dir_lock::DirLock::acquire(&c.data_dir).map_err(|e| anyhow::anyhow!("cluster.data_dir: {e}"))?;
        let secret = crate::config::read_secret_for("cluster.secret_file", &c.secret_file)?;
        let resources = crate::failover::Resources::from_config(cfg)?;
        let volume_release_within = crate::failover::Resources::release_within(cfg);
        let vip_address = cfg.vip.address.clone().filter(|_| cfg.vip.mode != crate::config::VipMode::None);
        let (id, name) = (u64::from(cfg.node.id), cfg.node.name.clone());
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop2 = stop.clone();
        let priority = c.realtime_priority;
        let thread = std::thread::Builder::new().name("cluster".into()).spawn(move || {
            let _lock = lock;
            match sched::realtime(priority) {
                Ok(()) if priority > 0 => tracing::info!(priority, "cluster thread under SCHED_RR"),
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    priority, error = %e,
                    "cluster thread: cannot use SCHED_RR (needs CAP_SYS_NICE); heartbeats may wait behind a busy host"
                ),
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot start the cluster runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let key = FrameKey::from_secret(&secret);
                let parts = Parts { c, id, name, key, proxy, journal, vip_address, volume_release_within };
                let shared = match boot(parts).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(shared.clone()));
                run(shared, resources, events, stop2).await;
            });
        })?;
        let shared = rx.await.map_err(|_| anyhow::anyhow!("the cluster thread died at start"))??;
        Ok(Cluster { shared, stop, thread: Some(thread) })
    }

    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// Leave gracefully: a leader releases the VIP and hands leadership to the most caught-up peer first, so a
    /// planned restart costs no call. Then Raft stops.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Parts {
    c: ClusterConfig,
    id: u64,
    name: String,
    key: FrameKey,
    proxy: Arc<Proxy>,
    journal: Journal,
    vip_address: Option<String>,
    volume_release_within: Duration,
}

/// Open the stores, bind the peer port, build Raft, and initialize the cluster the first time (the lowest id
/// does it, with every peer as a voter).
async fn boot(p: Parts) -> anyhow::Result<Arc<Shared>> {
    let dir = p.c.data_dir.join("raft");
    let log = log_store::LogStore::open(&dir).map_err(|e| anyhow::anyhow!("cluster.data_dir: {e}"))?;
    let origin = process_origin();
    let sm = StateMachine::new(p.proxy.clone(), origin, dir.clone())
        .map_err(|e| anyhow::anyhow!("cluster.data_dir: {e}"))?;
    let apply_lag_ms = sm.apply_lag_ms.clone();
    let listener = tokio::net::TcpListener::bind(p.c.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cluster.listen {}: {e}", p.c.listen))?;
    let config = Arc::new(raft_config(&p.c)?);
    let raft = Raft::new(p.id, config, net::Network { key: p.key.clone() }, log, sm).await?;
    let e = p.c.election_timeout.get();
    let shared = Arc::new(Shared {
        id: p.id,
        name: p.name,
        raft,
        proxy: p.proxy,
        peers: p.c.peers.iter().map(|x| (u64::from(x.id), x.addr)).collect(),
        key: p.key,
        election_timeout: e,
        hold_lease: e * 3 / 4,
        vip_address: p.vip_address,
        vip_held: AtomicBool::new(false),
        yield_until: Mutex::new(None),
        why_not: Mutex::new(Some("starting".into())),
        journal: p.journal,
        origin,
        listener: Mutex::new(Some(listener)),
        batching: AtomicBool::new(false),
        apply_lag_ms,
        volume: std::sync::OnceLock::new(),
        volume_release_within: p.volume_release_within,
    });
    let lowest = shared.peers.iter().map(|(id, _)| *id).min() == Some(shared.id);
    if lowest && !shared.raft.is_initialized().await? {
        let members: std::collections::BTreeMap<u64, BasicNode> =
            shared.peers.iter().map(|(id, addr)| (*id, net::node(*addr))).collect();
        match shared.raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = shared.peers.len(), "cluster initialized"),
            Err(e) => tracing::info!(error = %e, "cluster already initialized"),
        }
    }
    Ok(shared)
}

/// Everything the cluster thread runs, until `stop`.
async fn run(shared: Arc<Shared>, res: Resources, events: mpsc::Receiver<Event>, stop: CancellationToken) {
    let tasks = CancellationToken::new();
    // The volume task outlives the role loop: the loop's last act is asking it to release, and waiting.
    let volume_stop = CancellationToken::new();
    if let Some(v) = res.volume {
        let handle = VolumeHandle::start(v, shared.id as u32, shared.proxy.events.clone(), volume_stop.clone());
        let _ = shared.volume.set(Arc::new(handle));
    }
    let listener = shared.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(l) = listener {
        let peers = shared.peers.iter().map(|(_, a)| a.ip()).collect();
        tokio::spawn(net::serve(l, shared.key.clone(), shared.clone(), peers, tasks.clone()));
    }
    tokio::spawn(batcher(shared.clone(), events, shared.origin));
    let role = tokio::spawn(role::run(shared.clone(), res.vip, tasks.clone()));
    stop.cancelled().await;
    role::step_down(&shared).await;
    tasks.cancel();
    let _ = role.await;
    volume_stop.cancel();
    if let Err(e) = shared.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
}

/// The openraft configuration for our timing.
fn raft_config(c: &ClusterConfig) -> anyhow::Result<openraft::Config> {
    let e = c.election_timeout.get().as_millis() as u64;
    let cfg = openraft::Config {
        cluster_name: "sipfront".into(),
        election_timeout_min: e / 2,
        election_timeout_max: e,
        heartbeat_interval: c.heartbeat.get().as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        max_in_snapshot_log_to_keep: c.snapshot_every / 5,
        enable_pre_vote: Some(true),
        // A node restarted with an empty data_dir is taken back rather than refused.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// Table changes from the data plane become log entries: whatever arrived within [`BATCH_LINGER`] of the first
/// goes in one. The leader proposes them, also when it stopped serving meanwhile (a switchover waits for that,
/// so the BYEs answered in its last milliseconds are not lost); a node that is not leader drops and counts them.
async fn batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<Event>, origin: u64) {
    while let Some(first) = rx.recv().await {
        shared.batching.store(true, Ordering::SeqCst);
        tokio::time::sleep(BATCH_LINGER).await;
        let mut events = vec![first];
        while events.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let n = events.len() as u64;
        if !shared.raft.is_leader() {
            metrics::counter!(m::CLUSTER_EVENTS_DROPPED).increment(n);
            shared.batching.store(false, Ordering::SeqCst);
            continue;
        }
        let batch = Batch { origin, stamp_ms: unix_ms(), events };
        let r = shared.raft.client_write_ff(batch, None).await;
        shared.batching.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            tracing::error!(error = %e, "raft stopped; table changes are no longer replicated");
            return;
        }
        metrics::counter!(m::CLUSTER_BATCHES, "side" => "proposed").increment(1);
        metrics::counter!(m::CLUSTER_EVENTS, "side" => "proposed").increment(n);
    }
}

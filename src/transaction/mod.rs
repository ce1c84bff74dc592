//! Proxy transactions (RFC 3261 §17, with RFC 6026's Accepted state): one task per request we forward, owning
//! the server transaction toward the client and the client transaction(s) toward the next hop, their timers and
//! retransmissions, and serial failover to the next backend.
//!
//! Why a task per transaction: its whole life (send, wait for answers or a timer, retransmit) reads as one
//! linear function, and the timers are plain `sleep_until`s that `tokio::time::pause()` drives in tests. The
//! reading tasks find a transaction through [`TransactionTable`] and post it a [`TxEvent`]; a transaction never
//! touches another one's state. Once answered, a transaction that only absorbs retransmissions (2xx'd INVITE,
//! completed non-INVITE) ends its task and leaves a tombstone ([`ServerEntry::Done`]) for 64*T1.

mod invite;
mod non_invite;
mod timers;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) use timers::sleep_opt as sleep_until_opt;
pub use timers::Timers;

use crate::metrics as m;
use crate::proxy::{Plan, Proxy};
use crate::sip::{Message, Method};
use crate::transport::{Source, Target};

/// What the reading tasks tell a transaction.
#[derive(Debug)]
pub enum TxEvent {
    /// The client retransmitted the request.
    Retransmit,
    /// An ACK with the INVITE's branch: for our non-2xx final it is absorbed (hop by hop); after a 2xx it belongs
    /// to the far end (a UA reusing the INVITE branch) and is relayed.
    Ack(Box<(Message, Source)>),
    /// The client cancelled the INVITE (we already answered the CANCEL with 200).
    Cancel,
    /// A response from downstream for one of our branches. Boxed: a channel allocates its first block of 32
    /// slots up front, and an inline `Message` (~1 KiB of header index) would make every transaction pay 32 KiB.
    Response(Box<Message>),
}

pub type TxHandle = mpsc::UnboundedSender<TxEvent>;

// Every transaction's channel allocates a block of 32 events up front: keep an event to two words.
const _: () = assert!(std::mem::size_of::<TxEvent>() <= 16);

/// Server transaction key (RFC 3261 §17.2.3): branch, sent-by and method of the top Via; ACK and CANCEL look up
/// their INVITE. Requests without the magic cookie fall back to the RFC 2543 fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(Bytes);

impl ServerKey {
    pub fn for_request(req: &Message, method: Method) -> ServerKey {
        let via = req.top_via();
        // Sized generously once; `copy_from_slice` below keeps exactly the bytes written.
        let mut k = BytesMut::with_capacity(160);
        match via.as_ref().filter(|v| v.is_rfc3261()) {
            Some(v) => {
                k.put_slice(v.branch().unwrap_or_default());
                k.put_u8(0);
                k.put_slice(v.sent_by_raw);
            }
            None => {
                k.put_slice(b"2543\0");
                k.put_slice(req.call_id());
                k.put_u8(0);
                k.put_slice(req.from_tag().unwrap_or_default());
                k.put_u8(0);
                k.put_slice(&req.cseq().to_be_bytes());
                k.put_slice(via.map(|v| v.raw).unwrap_or_default());
            }
        }
        k.put_u8(0);
        match method {
            Method::Other => k.put_slice(req.method_bytes()),
            m => k.put_slice(m.as_str().as_bytes()),
        }
        // An exact-size copy: a frozen buffer with spare capacity costs a second allocation and pins the spare.
        ServerKey(Bytes::copy_from_slice(&k))
    }
}

/// What the server side of a transaction is now.
#[derive(Debug, Clone)]
pub enum ServerEntry {
    /// A task runs it: events go there.
    Live(TxHandle),
    /// Answered and lingering (RFC 6026 Accepted for a 2xx'd INVITE, Completed for a non-INVITE): no task, no
    /// timer, just this. A retransmitted request gets `answer` again (`None`: absorbed silently).
    Done(Option<Bytes>),
}

/// Transactions by server key and by each client branch. DashMap: the UDP and TCP reading tasks look up
/// concurrently with transaction tasks inserting and removing their own keys.
///
/// Why tombstones: at thousands of calls per second, 64*T1 (32 s) of lingering per transaction is the bulk of
/// the proxy's memory. A task with its channel and timer costs ~2 KiB; a [`ServerEntry::Done`] plus its place in
/// the expiry queue ~150 bytes.
#[derive(Debug, Default)]
pub struct TransactionTable {
    server: DashMap<ServerKey, ServerEntry>,
    client: DashMap<Bytes, TxHandle>,
    active: AtomicUsize,
    /// Live transactions per source IP (requests from backends are not counted), for the per-source cap. An
    /// entry goes when its count drops to zero, so the map is bounded by the live transactions themselves.
    per_source: DashMap<std::net::IpAddr, u32>,
    /// Done entries in the order they expire (every linger is 64*T1, so insertion order is expiry order).
    /// A std Mutex: pushed once per transaction and drained by one sweeper, never held across an await.
    retired: Mutex<VecDeque<(Instant, ServerKey)>>,
}

impl TransactionTable {
    pub fn new() -> TransactionTable {
        TransactionTable::default()
    }

    pub fn server(&self, key: &ServerKey) -> Option<ServerEntry> {
        self.server.get(key).map(|h| h.clone())
    }

    pub fn client(&self, branch: &[u8]) -> Option<TxHandle> {
        self.client.get(branch).map(|h| h.clone())
    }

    /// Transactions with a task alive now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Live transactions started by requests from this address.
    pub fn active_from(&self, ip: std::net::IpAddr) -> usize {
        self.per_source.get(&ip).map_or(0, |n| *n as usize)
    }

    /// Whether one more transaction from `ip` (`None`: from a backend) stays within the caps.
    pub fn admits(&self, ip: Option<std::net::IpAddr>, max: usize, max_per_source: usize) -> bool {
        self.active() < max && ip.is_none_or(|ip| self.active_from(ip) < max_per_source)
    }

    fn count_source(&self, ip: std::net::IpAddr) {
        *self.per_source.entry(ip).or_insert(0) += 1;
    }

    fn uncount_source(&self, ip: std::net::IpAddr) {
        self.per_source.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// Answered transactions still absorbing retransmissions.
    pub fn lingering(&self) -> usize {
        self.retired.lock().expect("retired lock").len()
    }

    pub(crate) fn add_branch(&self, branch: Bytes, h: TxHandle) {
        self.client.insert(branch, h);
    }

    /// Turn a live server transaction into a tombstone until `until`.
    fn retire(&self, key: &ServerKey, answer: Option<Bytes>, until: Instant) {
        if let Some(mut e) = self.server.get_mut(key) {
            *e = ServerEntry::Done(answer);
        }
        self.retired.lock().expect("retired lock").push_back((until, key.clone()));
    }

    /// Drop tombstones whose linger is over; returns how many went.
    /// Give back the capacity a past load left in the table (see [`crate::memory`]).
    pub fn shrink(&self) {
        crate::memory::shrink_sparse(&self.server);
        crate::memory::shrink_sparse(&self.client);
        crate::memory::shrink_sparse(&self.per_source);
        crate::memory::shrink_sparse_queue(&mut self.retired.lock().expect("retired lock"));
    }

    pub fn sweep(&self, now: Instant) -> usize {
        let mut gone = 0;
        loop {
            let key = {
                let mut q = self.retired.lock().expect("retired lock");
                match q.front() {
                    Some((t, _)) if *t <= now => q.pop_front().map(|(_, k)| k),
                    _ => None,
                }
            };
            let Some(key) = key else { return gone };
            // A new transaction may have reused the key (a client that reuses branches): leave a live one alone.
            self.server.remove_if(&key, |_, e| matches!(e, ServerEntry::Done(_)));
            gone += 1;
        }
    }
}

/// Removes a transaction's keys when its task ends, however it ends.
struct Registration {
    proxy: Arc<Proxy>,
    server: ServerKey,
    branches: Vec<Bytes>,
    /// The source IP counted against the per-source cap (`None` for a backend's request).
    source: Option<std::net::IpAddr>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let txs = &self.proxy.txs;
        // A retired transaction's tombstone stays until the sweeper takes it.
        txs.server.remove_if(&self.server, |_, e| matches!(e, ServerEntry::Live(_)));
        for b in &self.branches {
            txs.client.remove(b);
        }
        txs.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.source {
            txs.uncount_source(ip);
        }
        metrics::gauge!(m::TRANSACTIONS_ACTIVE).decrement(1.0);
    }
}

/// Start the proxy transaction for a new request.
pub fn start(proxy: Arc<Proxy>, req: Message, src: Source, plan: Plan, key: ServerKey) {
    let (tx, rx) = mpsc::unbounded_channel();
    proxy.txs.server.insert(key.clone(), ServerEntry::Live(tx.clone()));
    proxy.txs.active.fetch_add(1, Ordering::Relaxed);
    proxy.stats.transactions.fetch_add(1, Ordering::Relaxed);
    let invite = req.method() == Some(Method::Invite);
    metrics::counter!(m::TRANSACTIONS, "kind" => if invite { "invite" } else { "non-invite" }).increment(1);
    metrics::gauge!(m::TRANSACTIONS_ACTIVE).increment(1.0);
    let source = plan.from_backend.is_none().then_some(src.remote.ip());
    if let Some(ip) = source {
        proxy.txs.count_source(ip);
    }
    let reg = Registration { proxy: proxy.clone(), server: key, branches: Vec::new(), source };
    let ctx = Ctx { proxy, req, src, plan, rx, me: tx, reg };
    if invite {
        tokio::spawn(invite::run(ctx));
    } else {
        tokio::spawn(non_invite::run(ctx));
    }
}

/// What a transaction task owns.
pub(crate) struct Ctx {
    proxy: Arc<Proxy>,
    req: Message,
    src: Source,
    plan: Plan,
    rx: mpsc::UnboundedReceiver<TxEvent>,
    /// Our own handle, registered under each new branch.
    me: TxHandle,
    reg: Registration,
}

impl Ctx {
    /// Register a new client branch for this transaction.
    fn new_branch(&mut self) -> Bytes {
        let b = self.proxy.tx_branch(self.plan.loop_hash, &self.req, &self.src, self.reg.branches.len());
        self.proxy.txs.add_branch(b.clone(), self.me.clone());
        self.reg.branches.push(b.clone());
        b
    }

    /// Send bytes to the client (upstream), on the flow the request came in on.
    fn upstream(&self, data: Bytes) {
        self.proxy.transports.send(self.src.into(), data);
    }

    /// The answer went upstream: end this task and leave a tombstone that answers retransmissions with `answer`
    /// (or absorbs them) for `linger`.
    fn retire(self, answer: Option<Bytes>, linger: std::time::Duration) {
        if linger.is_zero() {
            return; // reliable transport, timer J = 0: nothing to absorb
        }
        self.proxy.txs.retire(&self.reg.server, answer, Instant::now() + linger);
    }

    /// Count a move to the next hop (not when this was the last one).
    fn note_failover(&self, reason: &'static str, last_hop: bool) {
        if !last_hop {
            self.proxy.stats.backend_failovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::BACKEND_FAILOVERS, "reason" => reason).increment(1);
        }
    }

    /// One attempt toward a hop: resolve it, give it a branch, rewrite the request and send it. `None` (after
    /// counting the failure against the backend) when it could not be sent; the caller moves on.
    async fn send_attempt(&mut self, hop: &crate::proxy::Hop, last_hop: bool) -> Option<(Target, Bytes, Bytes)> {
        let Some(target) = invite::resolve_hop(hop).await else {
            tracing::debug!(hop = ?hop.addr, "cannot resolve next hop");
            return None;
        };
        let branch = self.new_branch();
        let fwd = self.proxy.build_forward(&self.req, self.src, &self.plan, target.transport, hop.backend, &branch);
        if let Err(e) = self.proxy.transports.send_wait(target, fwd.clone()).await {
            tracing::debug!(to = %target.addr, error = %e, method = %String::from_utf8_lossy(self.req.method_bytes()), "not sent, trying the next hop");
            self.backend_failed(hop.backend, "transport error");
            self.note_failover("transport", last_hop);
            return None;
        }
        Some((target, branch, fwd))
    }

    /// A failure on real traffic toward a backend counts against its health.
    /// A request the backend never answered. With probes on this does not count: anyone can send requests a PBX
    /// ignores (an INVITE flood to unknown numbers), and three such timeouts would take a PBX that answers every
    /// probe out of service. The probes decide then; with probes off, silence is all there is to go by.
    fn backend_timed_out(&self, backend: Option<usize>, why: &str) {
        if !self.proxy.settings.health.enabled {
            self.backend_failed(backend, why);
        }
    }

    fn backend_failed(&self, backend: Option<usize>, why: &str) {
        if let Some(b) = backend {
            self.proxy.health.failure(b, why);
        }
    }

    /// A backend's final response is going to the client: counted, and a refused credential (password guessing,
    /// enumeration: `guard::auth`) told to the guard, which bans a source that collects too many.
    fn relay_final(&self, resp: &Message) {
        m::final_response(resp.status().unwrap_or(0), "relayed");
        if crate::guard::auth::is_failure(&self.req, resp) {
            self.proxy.guard.auth_failure(self.src.remote.ip());
        }
    }

    /// Our own response to the client's request.
    fn reply_local(&self, code: u16, reason: &str) -> Bytes {
        let tag = self.proxy.local_tag();
        let b = crate::sip::ResponseBuilder::new(&self.req, code, reason).source(self.src.remote);
        let b = if code > 100 { b.to_tag(tag.as_bytes()) } else { b };
        // Every backend failed or none is up: tell the client when to come back (RFC 3261 §21.5.4).
        let b = if code == 503 { b.header("Retry-After", crate::proxy::RETRY_AFTER) } else { b };
        let out = b.build();
        m::final_response(code, "local");
        self.upstream(out.clone());
        out
    }
}

/// What a transaction keeps once its answer has gone upstream and it only absorbs retransmissions (timers D, G,
/// H, I, J, K, L, M): no request, no plan. Lingering is up to 64*T1 at thousands of calls per second, so the big
/// task ends and this small one carries on.
pub(crate) struct Linger {
    proxy: Arc<Proxy>,
    rx: mpsc::UnboundedReceiver<TxEvent>,
    src: Source,
    /// Keeps the table keys until the linger ends.
    _reg: Registration,
}

impl Ctx {
    pub(crate) fn into_linger(self) -> Linger {
        Linger { proxy: self.proxy, rx: self.rx, src: self.src, _reg: self.reg }
    }
}

impl Linger {
    fn upstream(&self, data: Bytes) {
        self.proxy.transports.send(self.src.into(), data);
    }
}

/// Resolves when the watched backend *goes* down (a flip after the watch was taken; a backend already down,
/// tried as a last resort, does not count); never without a watch.
pub(crate) async fn went_down(w: &mut Option<tokio::sync::watch::Receiver<crate::health::BackendState>>) {
    let Some(rx) = w.as_mut() else { return std::future::pending().await };
    rx.borrow_and_update();
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if *rx.borrow_and_update() == crate::health::BackendState::Down {
            return;
        }
    }
}

/// Whether a failure on one backend should move an initial request to the next one.
pub(crate) fn retryable(code: u16) -> bool {
    matches!(code, 408 | 503)
}

/// The branch a response is for.
pub(crate) fn response_branch(resp: &Message) -> Option<&[u8]> {
    resp.top_via().and_then(|v| v.branch())
}

#[cfg(test)]
mod tests;

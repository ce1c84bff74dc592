//! Proxy transactions (RFC 3261 §17, with RFC 6026's Accepted state): one task per request we forward, owning
//! the server transaction toward the client and the client transaction(s) toward the next hop, their timers and
//! retransmissions, and serial failover to the next backend.
//!
//! Why a task per transaction: its whole life (send, wait for answers or a timer, retransmit, linger) reads as
//! one linear function, and the timers are plain `sleep_until`s that `tokio::time::pause()` drives in tests.
//! The reading tasks find a transaction through [`TransactionTable`] and post it a [`TxEvent`]; a transaction
//! never touches another one's state.

mod invite;
mod non_invite;
mod timers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::mpsc;

pub use timers::Timers;

use crate::metrics as m;
use crate::proxy::{Plan, Proxy};
use crate::sip::{Message, Method};
use crate::transport::Source;

/// What the reading tasks tell a transaction.
#[derive(Debug)]
pub enum TxEvent {
    /// The client retransmitted the request.
    Retransmit,
    /// An ACK with the INVITE's branch: for our non-2xx final it is absorbed (hop by hop); after a 2xx it belongs
    /// to the far end (a UA reusing the INVITE branch) and is relayed.
    Ack(Box<Message>, Source),
    /// The client cancelled the INVITE (we already answered the CANCEL with 200).
    Cancel,
    /// A response from downstream for one of our branches. Boxed: a channel allocates its first block of 32
    /// slots up front, and an inline `Message` (~1 KiB of header index) would make every transaction pay 32 KiB.
    Response(Box<Message>),
}

pub type TxHandle = mpsc::UnboundedSender<TxEvent>;

/// Server transaction key (RFC 3261 §17.2.3): branch, sent-by and method of the top Via; ACK and CANCEL look up
/// their INVITE. Requests without the magic cookie fall back to the RFC 2543 fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(Bytes);

impl ServerKey {
    pub fn for_request(req: &Message, method: Method) -> ServerKey {
        let via = req.top_via();
        let mut k = BytesMut::with_capacity(96);
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
        ServerKey(k.freeze())
    }
}

/// Live transactions, by server key and by each client branch. DashMap: the UDP and TCP reading tasks look up
/// concurrently with transaction tasks inserting and removing their own keys.
#[derive(Debug, Default)]
pub struct TransactionTable {
    server: DashMap<ServerKey, TxHandle>,
    client: DashMap<Bytes, TxHandle>,
    active: AtomicUsize,
}

impl TransactionTable {
    pub fn new() -> TransactionTable {
        TransactionTable::default()
    }

    pub fn server(&self, key: &ServerKey) -> Option<TxHandle> {
        self.server.get(key).map(|h| h.clone())
    }

    pub fn client(&self, branch: &[u8]) -> Option<TxHandle> {
        self.client.get(branch).map(|h| h.clone())
    }

    /// Transactions alive now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn add_branch(&self, branch: Bytes, h: TxHandle) {
        self.client.insert(branch, h);
    }
}

/// Removes a transaction's keys when its task ends, however it ends.
struct Registration {
    proxy: Arc<Proxy>,
    server: ServerKey,
    branches: Vec<Bytes>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let txs = &self.proxy.txs;
        txs.server.remove(&self.server);
        for b in &self.branches {
            txs.client.remove(b);
        }
        txs.active.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::TRANSACTIONS_ACTIVE).decrement(1.0);
    }
}

/// Start the proxy transaction for a new request.
pub fn start(proxy: Arc<Proxy>, req: Message, src: Source, plan: Plan, key: ServerKey) {
    let (tx, rx) = mpsc::unbounded_channel();
    proxy.txs.server.insert(key.clone(), tx.clone());
    proxy.txs.active.fetch_add(1, Ordering::Relaxed);
    proxy.stats.transactions.fetch_add(1, Ordering::Relaxed);
    let invite = req.method() == Some(Method::Invite);
    metrics::counter!(m::TRANSACTIONS, "kind" => if invite { "invite" } else { "non-invite" }).increment(1);
    metrics::gauge!(m::TRANSACTIONS_ACTIVE).increment(1.0);
    let reg = Registration { proxy: proxy.clone(), server: key, branches: Vec::new() };
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
        let b = self.proxy.new_branch(self.plan.loop_hash);
        self.proxy.txs.add_branch(b.clone(), self.me.clone());
        self.reg.branches.push(b.clone());
        b
    }

    /// Send bytes to the client (upstream), on the flow the request came in on.
    fn upstream(&self, data: Bytes) {
        self.proxy.transports.send(self.src.into(), data);
    }

    /// A failure on real traffic toward a backend counts against its health.
    fn backend_failed(&self, backend: Option<usize>, why: &str) {
        if let Some(b) = backend {
            self.proxy.health.failure(b, why);
        }
    }

    /// Our own response to the client's request.
    fn reply_local(&self, code: u16, reason: &str) -> Bytes {
        let tag = self.proxy.local_tag();
        let b = crate::sip::ResponseBuilder::new(&self.req, code, reason).source(self.src.remote);
        let b = if code > 100 { b.to_tag(tag.as_bytes()) } else { b };
        let out = b.build();
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

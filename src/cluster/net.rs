//! The peer transport: Raft RPCs (and the operator's status and switchover requests) over persistent TCP
//! connections in [`frame`](super::frame)s. A client keeps one connection per peer and RPC stream, opens it
//! when first needed, and drops it after any error or timeout (an answer may still be in flight on it), or
//! before reusing it after [`CLIENT_REUSE_WITHIN`] of silence (the server may be closing it); the server
//! answers each connection's requests in order.
//!
//! The port is open to anyone who can reach it, so the server bounds what a stranger can hold: at most
//! [`MAX_INBOUND`] connections ([`MAX_PER_SOURCE`] per address; peers do not count against the total), each
//! closed unless an authenticated chunk arrives within [`HANDSHAKE_WITHIN`] of its accept, and after that
//! within [`IDLE_CLOSE`] of the last. Refusals and timeouts are counted and warned about at most once per
//! [`WARN_EVERY`](super::frame::WARN_EVERY).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::frame::{read_frame, write_frame, FrameError, FrameKey, Patience, WARN_EVERY};
use super::limits::{Inbound, WarnEvery};
use super::state_machine::StoredSnapshot;
use super::{Node, NodeStatus, TypeConfig};
use crate::metrics as m;

type C = TypeConfig;

/// What one node asks another.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    PreVote(VoteRequest<C>),
    Snapshot {
        vote: VoteOf<C>,
        snapshot: StoredSnapshot,
    },
    TransferLeader(TransferLeaderRequest<C>),
    /// Operator: this node's view.
    Status,
    /// Operator: hand leadership (and the VIP) to node `to`.
    Switchover {
        to: u64,
    },
    /// Operator: drain (or undrain) the backend named `backend`; the leader applies and replicates it.
    Drain {
        backend: String,
        drained: bool,
    },
}

/// The answer; errors travel as text (the caller only needs to know the peer could not do it).
#[derive(Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
    TransferLeader(Result<TransferLeaderResponse<C>, String>),
    Status(Box<NodeStatus>),
    Switchover(Result<String, String>),
    Drain(Result<String, String>),
}

/// How long a connection attempt may take at most.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Inbound connections open at once from addresses that are not peers.
pub const MAX_INBOUND: usize = 128;
/// Inbound connections open at once from one address (a peer's replication, vote and status connections, and
/// the admin servers' status requests, are a handful).
pub const MAX_PER_SOURCE: usize = 32;
/// A new connection's first authenticated chunk must arrive within this (a client sends as soon as it connects).
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(3);
/// An authenticated connection silent for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// A client does not reuse a connection silent for this long (well inside [`IDLE_CLOSE`]): it opens a new one
/// rather than race the server's close.
pub const CLIENT_REUSE_WITHIN: Duration = Duration::from_secs(30);

static CONN_WARN: WarnEvery = WarnEvery::new(WARN_EVERY);

/// One connection to one peer, used by one caller at a time.
pub struct PeerClient {
    pub target: u64,
    addr: SocketAddr,
    key: FrameKey,
    conn: Option<BufReader<TcpStream>>,
    /// When `conn` last carried an exchange.
    last_used: tokio::time::Instant,
}

impl PeerClient {
    pub fn new(target: u64, addr: SocketAddr, key: FrameKey) -> PeerClient {
        PeerClient { target, addr, key, conn: None, last_used: tokio::time::Instant::now() }
    }

    /// Send one request and read its answer within `ttl`.
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, CallError> {
        let r = tokio::time::timeout(ttl, self.call_inner(req)).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(CallError::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, CallError> {
        if self.last_used.elapsed() >= CLIENT_REUSE_WITHIN {
            self.conn = None;
        }
        if self.conn.is_none() {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
                .await
                .map_err(|_| CallError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
                .map_err(CallError::Connect)?;
            let _ = s.set_nodelay(true);
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        write_frame(conn.get_mut(), &self.key, req).await.map_err(CallError::Io)?;
        let answer = read_frame::<Response, _>(conn, &self.key, &mut Patience::unbounded()).await;
        self.last_used = tokio::time::Instant::now();
        match answer.map_err(|e| CallError::Io(e.into()))? {
            Some(r) => Ok(r),
            None => Err(CallError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection"))),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("peer: {0}")]
    Remote(String),
    #[error("peer answered another request type")]
    Mismatch,
}

impl CallError {
    fn rpc(self) -> RPCError<C> {
        match self {
            CallError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Io(e) => RPCError::Network(NetworkError::new(&e)),
            other => RPCError::Unreachable(Unreachable::new(&io::Error::other(other.to_string()))),
        }
    }
}

fn remote<T>(r: Result<T, String>) -> Result<T, CallError> {
    r.map_err(CallError::Remote)
}

/// Makes a [`PeerClient`] per replication stream; openraft asks for one when it needs it.
#[derive(Clone)]
pub struct Network {
    pub key: FrameKey,
}

impl RaftNetworkFactory<C> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Node) -> PeerClient {
        let addr = node.addr.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        PeerClient::new(target, addr, self.key.clone())
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.rpc(&Request::Append(rpc), option.soft_ttl(), |r| match r {
            Response::Append(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(&Request::Vote(rpc), option.soft_ttl(), vote_answer).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(&Request::PreVote(rpc), option.soft_ttl(), vote_answer).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = Request::Snapshot { vote, snapshot: StoredSnapshot { meta: snapshot.meta, data: snapshot.snapshot } };
        // A snapshot may be large: give it the hard limit, not the heartbeat-sized soft one.
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let r = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = self.call(&req, ttl) => r,
        };
        let err = |e: CallError| match e.rpc() {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&io::Error::other(other.to_string()))),
        };
        match r {
            Ok(Response::Snapshot(r)) => remote(r).map_err(err),
            Ok(_) => Err(err(CallError::Mismatch)),
            Err(e) => Err(err(e)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.rpc(&Request::TransferLeader(req), option.soft_ttl(), |r| match r {
            Response::TransferLeader(r) => Some(r),
            _ => None,
        })
        .await
    }
}

fn vote_answer(r: Response) -> Option<Result<VoteResponse<C>, String>> {
    match r {
        Response::Vote(r) => Some(r),
        _ => None,
    }
}

impl PeerClient {
    /// One Raft RPC: send, take the answer of the expected kind (`pick`), map every failure for openraft.
    async fn rpc<T>(
        &mut self,
        req: &Request,
        ttl: Duration,
        pick: impl FnOnce(Response) -> Option<Result<T, String>>,
    ) -> Result<T, RPCError<C>> {
        let resp = self.call(req, ttl).await.map_err(CallError::rpc)?;
        let answer = pick(resp).ok_or(CallError::Mismatch).map_err(CallError::rpc)?;
        remote(answer).map_err(CallError::rpc)
    }
}

/// What the server needs from the rest of the node.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Accept peers (and operators) until `shutdown`. `peers`: the members' addresses, exempt from
/// [`MAX_INBOUND`].
pub async fn serve<H: Handler>(
    listener: TcpListener,
    key: FrameKey,
    handler: Arc<H>,
    peers: Vec<IpAddr>,
    shutdown: CancellationToken,
) {
    let inbound = Inbound::new(MAX_INBOUND, MAX_PER_SOURCE, peers);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, typically: back off rather than spin.
                    if let Some(suppressed) = CONN_WARN.check() {
                        tracing::warn!(error = %e, suppressed, "cluster accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match inbound.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::counter!(m::CLUSTER_CONNS_REFUSED, "reason" => why.as_str()).increment(1);
                if let Some(suppressed) = CONN_WARN.check() {
                    tracing::warn!(%peer, reason = why.as_str(), open = inbound.open(), suppressed,
                        "cluster port: connection refused, too many open (at most one line per 10 s)");
                }
                continue; // dropping `stream` closes it
            }
        };
        let _ = stream.set_nodelay(true);
        let (key, handler, shutdown) = (key.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut patience = Patience::server(HANDSHAKE_WITHIN, IDLE_CLOSE);
            loop {
                let req = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    req = read_frame::<Request, _>(&mut r, &key, &mut patience) => req,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(FrameError::Timeout) if !patience.authenticated() => {
                        metrics::counter!(m::CLUSTER_BAD_FRAMES, "reason" => "timeout").increment(1);
                        if let Some(suppressed) = CONN_WARN.check() {
                            tracing::warn!(%peer, suppressed, within = ?HANDSHAKE_WITHIN,
                                "cluster port: closed a connection that sent nothing valid (at most one line per 10 s)");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "peer connection closed");
                        return;
                    }
                };
                let resp = handler.handle(req).await;
                if let Err(e) = write_frame(&mut w, &key, &resp).await {
                    tracing::debug!(%peer, error = %e, "peer connection closed");
                    return;
                }
            }
        });
    }
}

/// Build the snapshot type openraft takes from what came over the wire.
pub fn into_snapshot(s: StoredSnapshot) -> SnapshotOf<C, Vec<u8>> {
    Snapshot { meta: s.meta, snapshot: s.data }
}

/// Node description in the membership: its peer address.
pub fn node(addr: SocketAddr) -> BasicNode {
    BasicNode { addr: addr.to_string() }
}

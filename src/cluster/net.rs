//! The peer transport: Raft RPCs (and the operator's status and switchover requests) over persistent TCP
//! connections in [`frame`](super::frame)s. A client keeps one connection per peer and RPC stream, opens it
//! when first needed, and drops it after any error or timeout (an answer may still be in flight on it); the
//! server answers each connection's requests in order.

use std::io;
use std::net::SocketAddr;
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

use super::frame::{read_frame, write_frame, FrameKey};
use super::state_machine::StoredSnapshot;
use super::{Node, NodeStatus, TypeConfig};

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

/// One connection to one peer, used by one caller at a time.
pub struct PeerClient {
    pub target: u64,
    addr: SocketAddr,
    key: FrameKey,
    conn: Option<BufReader<TcpStream>>,
}

impl PeerClient {
    pub fn new(target: u64, addr: SocketAddr, key: FrameKey) -> PeerClient {
        PeerClient { target, addr, key, conn: None }
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
        match read_frame::<Response, _>(conn, &self.key).await.map_err(CallError::Io)? {
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

/// Accept peers (and operators) until `shutdown`.
pub async fn serve<H: Handler>(listener: TcpListener, key: FrameKey, handler: Arc<H>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (key, handler, shutdown) = (key.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            loop {
                let req = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    req = read_frame::<Request, _>(&mut r, &key) => req,
                };
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
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

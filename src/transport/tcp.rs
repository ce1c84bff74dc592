//! Stream connections, TCP and TLS alike: listeners (the accepting side is `tcp/accept.rs`), accepted and outgoing
//! connections, one reader and one writer task per connection, reading by Content-Length framing (`framing.rs`, RFC
//! 3261 §18.3). Connections are reused per transport and remote address; a connection that sends a malformed or
//! oversized frame is closed alone. Double-CRLF pings get a CRLF pong (RFC 5626 §3.5.1). TLS only wraps the stream
//! (handshake bounded by `[tls] handshake_timeout`) before it is adopted: framing, idle timeout and connection ids are
//! the same code for both. WebSocket connections (`ws:`, and `wss:` over TLS) share the ids, reuse and idle timeout,
//! but frame by WebSocket (`ws.rs`); they are only accepted, never opened. Every accepted socket first takes a place
//! under the connection caps (`limits.rs`) and is closed at once, before any handshake, when there is none; a TCP or
//! TLS message whose first byte has arrived must be complete within `sip.message_timeout` (slowloris). A source the
//! guard has banned ([`Inbound::admits_connection`]) is closed at accept, before the caps and any handshake, and again
//! after a handshake that was under way when the ban came; a connection whose message the proxy refuses
//! ([`Verdict::Refused`]) closes, and [`TcpPool::close_where`] closes the idle ones of a source banned meanwhile. Each
//! close sipfront decides is counted by reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::framing::{frame_stream_message, is_oversize, Framed};
use super::limits::{count_close, Admission, CloseReason, ConnCounts, StreamLimits};
use super::tls::TlsContext;
use super::ws::WsSettings;
use super::{ConnId, Inbound, Source, Target, Transport, TransportError, Verdict};
use crate::metrics as m;

mod accept;

/// How long an outgoing connect may take before the backend counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages queued per connection before senders see it as congested.
const WRITE_QUEUE: usize = 1024;

struct ConnHandle {
    tx: mpsc::Sender<Bytes>,
    remote: SocketAddr,
    transport: Transport,
    /// Cancelled to close the connection because its source was banned ([`TcpPool::close_where`]); its own
    /// token, apart from the shutdown tree, so the reader knows why it stops and counts the close once.
    evict: CancellationToken,
}

/// What a pooled connection runs over (TCP, or TLS over TCP).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// Every TCP and TLS listener and connection of this node.
#[derive(Clone)]
pub struct TcpPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    /// Taken by `start`; a std Mutex because it is touched once.
    listeners: Mutex<Vec<(Transport, TcpListener)>>,
    local_addrs: Vec<(Transport, SocketAddr)>,
    conns: DashMap<ConnId, ConnHandle>,
    /// Newest connection per transport and remote address, for reuse (RFC 3261 §18.1.1).
    by_addr: DashMap<(Transport, SocketAddr), ConnId>,
    next_id: AtomicU64,
    max_message: usize,
    /// The caps, timeouts and the accepted connections held under them.
    counts: Arc<ConnCounts>,
    /// Certificates and client config; `None` when the node has neither TLS listeners nor TLS backends.
    tls: Option<Arc<TlsContext>>,
    /// `[websocket]`: Origins and frame size for `ws:`/`wss:` listeners.
    ws: WsSettings,
    inbound: OnceLock<Arc<dyn Inbound>>,
    shutdown: OnceLock<CancellationToken>,
}

/// The first connection id of this process: a random upper half, so that an id another node (or an earlier run of
/// this one) handed out, seen again in a replicated dialog or in a Record-Route's `ft=`, never names a live
/// connection of ours.
fn first_conn_id() -> ConnId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() << 32) | 1
}

/// A listening socket that may bind an address this host does not have yet (the VIP on a standby).
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    super::set_freebind(&s, addr)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

impl TcpPool {
    /// Bind the listeners, of any stream transport (`Tls` and `Wss` need `tls` with a server certificate).
    pub async fn bind(
        addrs: &[(Transport, SocketAddr)],
        max_message: usize,
        limits: StreamLimits,
        tls: Option<Arc<TlsContext>>,
        ws: WsSettings,
    ) -> Result<TcpPool, TransportError> {
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for &(t, addr) in addrs {
            if matches!(t, Transport::Tls | Transport::Wss) && tls.as_ref().is_none_or(|c| c.server.is_none()) {
                return Err(TransportError::NoCertificate(addr));
            }
            let l = bind_listener(addr).map_err(|reason| TransportError::Bind { addr, reason })?;
            local_addrs.push((t, l.local_addr().map_err(|reason| TransportError::Bind { addr, reason })?));
            listeners.push((t, l));
        }
        Ok(TcpPool {
            inner: Arc::new(PoolInner {
                listeners: Mutex::new(listeners),
                local_addrs,
                conns: DashMap::new(),
                by_addr: DashMap::new(),
                next_id: AtomicU64::new(first_conn_id()),
                max_message,
                counts: ConnCounts::new(limits),
                tls,
                ws,
                inbound: OnceLock::new(),
                shutdown: OnceLock::new(),
            }),
        })
    }

    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.inner.local_addrs
    }

    /// The transport of a live connection.
    pub fn transport_of(&self, conn: ConnId) -> Option<Transport> {
        self.inner.conns.get(&conn).map(|h| h.transport)
    }

    /// The TLS certificates, for a reload.
    pub fn tls(&self) -> Option<&Arc<TlsContext>> {
        self.inner.tls.as_ref()
    }

    /// Give a new connection an id, a write queue and an eviction token, and make it findable by id and by
    /// address.
    fn register(&self, remote: SocketAddr, transport: Transport) -> (ConnId, mpsc::Receiver<Bytes>, CancellationToken) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let evict = CancellationToken::new();
        self.inner.conns.insert(id, ConnHandle { tx, remote, transport, evict: evict.clone() });
        self.inner.by_addr.insert((transport, remote), id);
        metrics::gauge!(m::TCP_CONNECTIONS, "transport" => transport.as_lower()).increment(1.0);
        (id, rx, evict)
    }

    /// Close every connection whose remote address `banned` names (its reader counts the close, `banned`); how
    /// many were asked to close. One pass over the pool, so the guard calls it only when its bans changed.
    pub fn close_where(&self, banned: impl Fn(IpAddr) -> bool) -> usize {
        let mut n = 0;
        for h in self.inner.conns.iter() {
            if !h.evict.is_cancelled() && banned(h.remote.ip()) {
                h.evict.cancel();
                n += 1;
            }
        }
        n
    }

    /// Register a connected stream and start its reader and writer. `place` is its place under the caps (an
    /// accepted connection; none for one we opened), given back when the connection ends.
    fn adopt<S: Stream>(
        &self,
        stream: S,
        remote: SocketAddr,
        transport: Transport,
        place: Option<Admission>,
    ) -> ConnId {
        let (id, rx, evict) = self.register(remote, transport);
        let (rd, wr) = tokio::io::split(stream);
        let pool = self.clone();
        let shutdown = self.inner.shutdown.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            let _place = place;
            let cancel = shutdown.child_token();
            let writer = tokio::spawn(write_loop(wr, rx, cancel.clone()));
            if let Some(reason) = pool.read_loop(rd, id, remote, transport, cancel.clone(), evict).await {
                count_close(transport, reason);
            }
            cancel.cancel();
            let _ = writer.await;
            pool.forget(id, remote, transport);
        });
        id
    }

    fn forget(&self, id: ConnId, remote: SocketAddr, transport: Transport) {
        self.inner.conns.remove(&id);
        self.inner.by_addr.remove_if(&(transport, remote), |_, v| *v == id);
        metrics::gauge!(m::TCP_CONNECTIONS, "transport" => transport.as_lower()).decrement(1.0);
        tracing::debug!(conn = id, %remote, %transport, "connection closed");
    }

    /// Read and frame messages into `inbound` until the stream ends; why sipfront closed it, when it did.
    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        id: ConnId,
        remote: SocketAddr,
        transport: Transport,
        cancel: CancellationToken,
        evict: CancellationToken,
    ) -> Option<CloseReason> {
        let inbound = self.inner.inbound.get().cloned()?;
        let StreamLimits { idle, message_timeout, .. } = *self.inner.counts.limits();
        let mut buf = BytesMut::with_capacity(8192);
        // When the message now partly in `buf` must be complete (slowloris guard); trickled bytes do not move it.
        let mut message_deadline: Option<tokio::time::Instant> = None;
        // When the connection counts as idle: moved on by whole messages and double-CRLF pings only, so a peer
        // trickling lone CR or LF bytes cannot hold a connection open forever.
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        loop {
            // Drain every whole message already buffered.
            loop {
                match frame_stream_message(&buf, self.inner.max_message) {
                    Framed::NeedMore => break,
                    Framed::KeepAlive { n, ping } => {
                        buf.advance(n);
                        if ping {
                            idle_deadline = tokio::time::Instant::now() + idle;
                            self.queue(id, Bytes::from_static(b"\r\n"));
                        }
                    }
                    Framed::Message(n) => {
                        message_deadline = None;
                        idle_deadline = tokio::time::Instant::now() + idle;
                        let msg = buf.split_to(n).freeze();
                        let src = Source { transport, remote, conn: Some(id) };
                        match inbound.on_message(msg, src) {
                            Verdict::Accepted => {}
                            Verdict::Garbage => {
                                tracing::info!(conn = id, %remote, %transport, "closing connection after an unparseable message");
                                return Some(CloseReason::Malformed);
                            }
                            Verdict::Refused => {
                                tracing::debug!(conn = id, %remote, %transport, "closing connection: its source is banned");
                                return Some(CloseReason::Banned);
                            }
                        }
                    }
                    Framed::Invalid(reason) => {
                        metrics::counter!(m::MALFORMED_DROPPED, "reason" => reason).increment(1);
                        tracing::info!(conn = id, %remote, %transport, reason, "closing connection");
                        return Some(if is_oversize(reason) { CloseReason::TooLarge } else { CloseReason::Malformed });
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if buf.is_empty() {
                message_deadline = None;
            } else if message_deadline.is_none() {
                message_deadline = Some(now + message_timeout);
            }
            let deadline = message_deadline.map_or(idle_deadline, |d| d.min(idle_deadline));
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            let r = tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = evict.cancelled() => {
                    tracing::debug!(conn = id, %remote, %transport, "closing connection: its source was banned");
                    return Some(CloseReason::Banned);
                }
                r = tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)) => r,
            };
            match r {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => {
                    metrics::counter!(m::TRANSPORT_RX_BYTES, "transport" => transport.as_lower()).increment(n as u64);
                }
                Err(_) if message_deadline == Some(deadline) => {
                    tracing::info!(conn = id, %remote, %transport, ?message_timeout, buffered = buf.len(),
                        "closing connection: a message did not complete in time");
                    return Some(CloseReason::SlowMessage);
                }
                Err(_) => {
                    tracing::debug!(conn = id, %remote, %transport, "closing idle connection");
                    return Some(CloseReason::Idle);
                }
            }
        }
    }

    /// Queue bytes on a known connection; false when it is gone or congested.
    fn queue(&self, id: ConnId, data: Bytes) -> bool {
        match self.inner.conns.get(&id) {
            Some(h) => h.tx.try_send(data).is_ok(),
            None => false,
        }
    }

    fn existing(&self, target: &Target) -> Option<ConnId> {
        if let Some(id) = target.conn.filter(|id| self.inner.conns.contains_key(id)) {
            return Some(id);
        }
        self.inner.by_addr.get(&(target.transport, target.addr)).map(|e| *e)
    }

    /// Send on an existing connection, or connect first.
    pub async fn send(&self, target: Target, data: Bytes) -> Result<(), TransportError> {
        metrics::counter!(m::TRANSPORT_TX_BYTES, "transport" => target.transport.as_lower())
            .increment(data.len() as u64);
        if let Some(id) = self.existing(&target) {
            let tx = self.inner.conns.get(&id).map(|h| h.tx.clone());
            if let Some(tx) = tx {
                return tx.send(data).await.map_err(|_| TransportError::Closed(target.addr));
            }
        }
        if target.transport.is_websocket() {
            // A WebSocket client is reachable only over the connection it opened.
            return Err(TransportError::Closed(target.addr));
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TransportError::Connect { addr: target.addr, source }),
            Err(_) => return Err(TransportError::ConnectTimeout(target.addr)),
        };
        let _ = stream.set_nodelay(true);
        let id = match target.transport {
            Transport::Tls => {
                self.adopt(self.connect_tls(stream, target.addr).await?, target.addr, Transport::Tls, None)
            }
            _ => self.adopt(stream, target.addr, Transport::Tcp, None),
        };
        let tx = self.inner.conns.get(&id).map(|h| h.tx.clone()).ok_or(TransportError::Closed(target.addr))?;
        tx.send(data).await.map_err(|_| TransportError::Closed(target.addr))
    }

    /// TLS over a fresh TCP connection to a backend, verified per `[tls]` against its IP address.
    async fn connect_tls(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
        let ctx = self.inner.tls.as_ref().ok_or(TransportError::NoListener(Transport::Tls))?;
        let connector = tokio_rustls::TlsConnector::from(ctx.client.clone());
        let name = TlsContext::server_name(addr.ip());
        match tokio::time::timeout(ctx.handshake_timeout, connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => {
                metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "side" => "backend").increment(1);
                Err(TransportError::Handshake { addr, source })
            }
            Err(_) => {
                metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "side" => "backend").increment(1);
                Err(TransportError::ConnectTimeout(addr))
            }
        }
    }

    /// Send without waiting: queue on a live connection, else connect in a task.
    pub fn send_nowait(&self, target: Target, data: Bytes) {
        if let Some(id) = self.existing(&target) {
            if self.queue(id, data.clone()) {
                return;
            }
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if let Err(e) = pool.send(target, data).await {
                tracing::debug!(to = %target.addr, transport = %target.transport, error = %e, "stream send");
            }
        });
    }

    /// The remote address of a connection.
    pub fn remote_of(&self, id: ConnId) -> Option<SocketAddr> {
        self.inner.conns.get(&id).map(|h| h.remote)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>, cancel: CancellationToken) {
    loop {
        let data = tokio::select! {
            _ = cancel.cancelled() => break,
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        // A generic stream may buffer (TLS records): flush each message, a no-op on plain TCP.
        if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
            cancel.cancel();
            break;
        }
    }
    let _ = wr.shutdown().await;
}

//! TCP: listeners, accepted and outgoing connections, one reader and one writer task per connection, and
//! Content-Length framing (RFC 3261 §18.3). Connections are reused per remote address; a connection that sends a
//! malformed or oversized frame is closed alone. Double-CRLF pings get a CRLF pong (RFC 5626 §3.5.1).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ConnId, Inbound, Source, Target, Transport, TransportError, Verdict};
use crate::metrics as m;

/// How long an outgoing connect may take before the backend counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages queued per connection before senders see it as congested.
const WRITE_QUEUE: usize = 1024;

/// What the front of a stream buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// Not a whole message yet.
    NeedMore,
    /// `n` bytes of CRLF keep-alive; `ping` when it was a double CRLF that wants a pong.
    KeepAlive { n: usize, ping: bool },
    /// A whole message of this many bytes.
    Message(usize),
    /// The stream cannot be framed; the connection must be closed.
    Invalid(&'static str),
}

/// Find the first message in a stream buffer.
pub fn frame_stream_message(buf: &[u8], max: usize) -> Framed {
    let lead = buf.iter().take_while(|c| matches!(c, b'\r' | b'\n')).count();
    if lead > 0 {
        let ping = buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
        return Framed::KeepAlive { n: lead, ping };
    }
    let Some(hend) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > max { Framed::Invalid("header section too large") } else { Framed::NeedMore };
    };
    let head = &buf[..hend];
    let mut length = None;
    for line in head.split(|c| *c == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = line[colon + 1..].trim_ascii();
            match std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(n) => length = Some(n),
                None => return Framed::Invalid("bad Content-Length"),
            }
        }
    }
    let Some(len) = length else {
        return Framed::Invalid("missing Content-Length on a stream transport");
    };
    let total = hend + 4 + len;
    if total > max {
        return Framed::Invalid("message too large");
    }
    if buf.len() < total {
        Framed::NeedMore
    } else {
        Framed::Message(total)
    }
}

struct ConnHandle {
    tx: mpsc::Sender<Bytes>,
    remote: SocketAddr,
}

/// Every TCP listener and connection of this node.
#[derive(Clone)]
pub struct TcpPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    /// Taken by `start`; a std Mutex because it is touched once.
    listeners: Mutex<Vec<TcpListener>>,
    local_addrs: Vec<SocketAddr>,
    conns: DashMap<ConnId, ConnHandle>,
    /// Newest connection per remote address, for reuse (RFC 3261 §18.1.1).
    by_addr: DashMap<SocketAddr, ConnId>,
    next_id: AtomicU64,
    max_message: usize,
    idle: Duration,
    inbound: OnceLock<Arc<dyn Inbound>>,
    shutdown: OnceLock<CancellationToken>,
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
    pub async fn bind(addrs: &[SocketAddr], max_message: usize, idle: Duration) -> Result<TcpPool, TransportError> {
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for &addr in addrs {
            let l = bind_listener(addr).map_err(|source| TransportError::Bind { addr, source })?;
            local_addrs.push(l.local_addr().map_err(|source| TransportError::Bind { addr, source })?);
            listeners.push(l);
        }
        Ok(TcpPool {
            inner: Arc::new(PoolInner {
                listeners: Mutex::new(listeners),
                local_addrs,
                conns: DashMap::new(),
                by_addr: DashMap::new(),
                next_id: AtomicU64::new(1),
                max_message,
                idle,
                inbound: OnceLock::new(),
                shutdown: OnceLock::new(),
            }),
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.local_addrs
    }

    pub fn is_alive(&self, conn: ConnId) -> bool {
        self.inner.conns.contains_key(&conn)
    }

    pub fn start(&self, inbound: Arc<dyn Inbound>, shutdown: CancellationToken) {
        let _ = self.inner.inbound.set(inbound);
        let _ = self.inner.shutdown.set(shutdown.clone());
        let listeners = std::mem::take(&mut *self.inner.listeners.lock().expect("listener lock"));
        for l in listeners {
            let pool = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let r = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = l.accept() => r,
                    };
                    match r {
                        Ok((stream, remote)) => {
                            let _ = stream.set_nodelay(true);
                            pool.adopt(stream, remote);
                        }
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "tcp accept");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
    }

    /// Register a connected stream and start its reader and writer.
    fn adopt(&self, stream: TcpStream, remote: SocketAddr) -> ConnId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.inner.conns.insert(id, ConnHandle { tx, remote });
        self.inner.by_addr.insert(remote, id);
        metrics::gauge!(m::TCP_CONNECTIONS).increment(1.0);
        let (rd, wr) = stream.into_split();
        let pool = self.clone();
        let shutdown = self.inner.shutdown.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            let cancel = shutdown.child_token();
            let writer = tokio::spawn(write_loop(wr, rx, cancel.clone()));
            pool.read_loop(rd, id, remote, cancel.clone()).await;
            cancel.cancel();
            let _ = writer.await;
            pool.forget(id, remote);
        });
        id
    }

    fn forget(&self, id: ConnId, remote: SocketAddr) {
        self.inner.conns.remove(&id);
        self.inner.by_addr.remove_if(&remote, |_, v| *v == id);
        metrics::gauge!(m::TCP_CONNECTIONS).decrement(1.0);
        tracing::debug!(conn = id, %remote, "tcp connection closed");
    }

    async fn read_loop(
        &self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        id: ConnId,
        remote: SocketAddr,
        cancel: CancellationToken,
    ) {
        let Some(inbound) = self.inner.inbound.get().cloned() else {
            return;
        };
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            // Drain every whole message already buffered.
            loop {
                match frame_stream_message(&buf, self.inner.max_message) {
                    Framed::NeedMore => break,
                    Framed::KeepAlive { n, ping } => {
                        buf.advance(n);
                        if ping {
                            self.queue(id, Bytes::from_static(b"\r\n"));
                        }
                    }
                    Framed::Message(n) => {
                        let msg = buf.split_to(n).freeze();
                        let src = Source { transport: Transport::Tcp, remote, conn: Some(id) };
                        if inbound.on_message(msg, src) == Verdict::Garbage {
                            tracing::info!(conn = id, %remote, "closing tcp connection after an unparseable message");
                            return;
                        }
                    }
                    Framed::Invalid(reason) => {
                        metrics::counter!(m::MALFORMED_DROPPED, "reason" => reason).increment(1);
                        tracing::info!(conn = id, %remote, reason, "closing tcp connection");
                        return;
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            let r = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(self.inner.idle, rd.read_buf(&mut buf)) => r,
            };
            match r {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => {
                    metrics::counter!(m::TRANSPORT_RX_BYTES, "transport" => "tcp").increment(n as u64);
                }
                Err(_) => {
                    tracing::debug!(conn = id, %remote, "closing idle tcp connection");
                    return;
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
        self.inner.by_addr.get(&target.addr).map(|e| *e)
    }

    /// Send on an existing connection, or connect first.
    pub async fn send(&self, target: Target, data: Bytes) -> Result<(), TransportError> {
        metrics::counter!(m::TRANSPORT_TX_BYTES, "transport" => "tcp").increment(data.len() as u64);
        if let Some(id) = self.existing(&target) {
            let tx = self.inner.conns.get(&id).map(|h| h.tx.clone());
            if let Some(tx) = tx {
                return tx.send(data).await.map_err(|_| TransportError::Closed(target.addr));
            }
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(TransportError::Connect { addr: target.addr, source }),
            Err(_) => return Err(TransportError::ConnectTimeout(target.addr)),
        };
        let _ = stream.set_nodelay(true);
        let id = self.adopt(stream, target.addr);
        let tx = self.inner.conns.get(&id).map(|h| h.tx.clone()).ok_or(TransportError::Closed(target.addr))?;
        tx.send(data).await.map_err(|_| TransportError::Closed(target.addr))
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
                tracing::debug!(to = %target.addr, error = %e, "tcp send");
            }
        });
    }

    /// The remote address of a connection.
    pub fn remote_of(&self, id: ConnId) -> Option<SocketAddr> {
        self.inner.conns.get(&id).map(|h| h.remote)
    }
}

async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>, cancel: CancellationToken) {
    loop {
        let data = tokio::select! {
            _ = cancel.cancelled() => break,
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        if wr.write_all(&data).await.is_err() {
            cancel.cancel();
            break;
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let max = 65_535;
        assert_eq!(frame_stream_message(b"\r\n\r\n", max), Framed::KeepAlive { n: 4, ping: true });
        assert_eq!(frame_stream_message(b"\r\n", max), Framed::KeepAlive { n: 2, ping: false });
        assert_eq!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n", max), Framed::NeedMore);
        let m = b"OPTIONS sip:x SIP/2.0\r\nContent-Length : 3\r\n\r\nabcNEXT";
        assert_eq!(frame_stream_message(m, max), Framed::Message(m.len() - 4));
        assert_eq!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nl: 5\r\n\r\nab", max), Framed::NeedMore);
        assert!(matches!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n", max), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(b"A\r\nl: x\r\n\r\n", max), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(b"A\r\nl: 100\r\n\r\n", 50), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(&[b'a'; 100], 50), Framed::Invalid(_)));
    }
}

//! Sockets: UDP listeners and TCP/TLS/WS/WSS connections (accepted and opened by us; WebSocket ones only
//! accepted), framing of stream messages, the caps and timeouts that close slow or abusive connections
//! (`limits.rs`), and the one `send` every other layer uses. Replies and forwarded requests leave from our
//! listeners, so the address in our Via and Record-Route is where answers come back to.
//!
//! This module moves bytes; it does not parse SIP beyond stream framing and never decides where a message goes.

mod framing;
mod limits;
mod tcp;
pub mod tls;
mod udp;
pub mod ws;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use framing::{frame_stream_message, Framed};
pub use limits::{CloseReason, StreamLimits};
pub use tcp::TcpPool;
pub use tls::{TlsContext, TlsError, TlsSettings};
pub use udp::UdpListener;
pub use ws::WsSettings;

use crate::config::ListenAddr;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118); only accepted from clients, never opened by us.
    Ws,
    /// SIP over secure WebSocket.
    Wss,
}

impl Transport {
    /// As written in a Via (`SIP/2.0/UDP`).
    pub fn as_upper(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// As written in a URI parameter and in the config (`transport=tcp`).
    pub fn as_lower(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Whether the transport is reliable (timers A, E, G do not run; D, I, J, K are zero).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// Whether a connection of this transport can only be reached while the client keeps it open (WebSocket).
    pub fn is_websocket(&self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_upper())
    }
}

/// Identifies one TCP, TLS or WebSocket connection for as long as it lives.
pub type ConnId = u64;

/// Where a message came from: enough to answer on the same path (RFC 3261 §18.2.2, RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub transport: Transport,
    pub remote: SocketAddr,
    /// The connection it arrived on (stream transports).
    pub conn: Option<ConnId>,
}

/// Where to send a message: an address on a transport, preferably over a known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<ConnId>,
}

impl From<Source> for Target {
    fn from(s: Source) -> Target {
        Target { transport: s.transport, addr: s.remote, conn: s.conn }
    }
}

/// A failure to hand a message to the network.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no {0} listener to send from")]
    NoListener(Transport),
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("tls handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: std::io::Error },
    #[error("tls/wss listener {0} needs [tls] cert_file and key_file")]
    NoCertificate(SocketAddr),
    #[error("send to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("connection to {0} is closed")]
    Closed(SocketAddr),
    // Not `source`: the io error is part of the message, and a chain printer would repeat it.
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: std::io::Error },
}

/// What the receiver made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handled (forwarded, answered, or a malformed request answered with 400).
    Accepted,
    /// Unparseable and unanswerable: on a stream the framing can no longer be trusted, so the connection closes.
    Garbage,
    /// Dropped because the source is banned (this very message may have banned it): a stream connection closes
    /// (`reason="banned"`); UDP ignores it.
    Refused,
}

/// Receives every message the transports read. Implemented by the proxy; called on the reading task, so it must
/// not block (it hands slow work to transaction tasks).
pub trait Inbound: Send + Sync + 'static {
    fn on_message(&self, data: Bytes, source: Source) -> Verdict;

    /// Whether a stream connection from `remote` may be accepted (and, after a TLS handshake or WebSocket
    /// upgrade, adopted); `false` closes it at once. Called on the accept loop, so it must be cheap.
    fn admits_connection(&self, remote: IpAddr) -> bool {
        let _ = remote;
        true
    }
}

/// The send side of every listener, shared by all tasks.
///
/// `capture` replaces the network in deterministic in-process tests (paused tokio time cannot drive real
/// sockets): every message is handed to the channel instead of a socket.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<TransportsInner>,
}

struct TransportsInner {
    udp: Vec<UdpListener>,
    /// TCP, TLS and WebSocket connections (one pool: the same ids, reuse and idle timeout).
    tcp: Option<TcpPool>,
    capture: Option<mpsc::UnboundedSender<(Target, Bytes)>>,
}

impl Transports {
    /// Bind every listener. Nothing is read until [`Transports::start`].
    /// `tls` is needed for `tls:` and `wss:` listeners and for TLS backends; `ws` applies to `ws:`/`wss:`;
    /// `limits` to every accepted stream connection.
    pub async fn bind(
        listen: &[ListenAddr],
        max_message_size: usize,
        limits: StreamLimits,
        tls: Option<Arc<TlsContext>>,
        ws: WsSettings,
    ) -> Result<Transports, TransportError> {
        let mut udp = Vec::new();
        let mut stream_addrs = Vec::new();
        for l in listen {
            match l.transport {
                Transport::Udp => udp.push(UdpListener::bind(l.addr)?),
                _ => stream_addrs.push((l.transport, l.addr)),
            }
        }
        let tcp = if stream_addrs.is_empty() && tls.is_none() {
            None
        } else {
            Some(TcpPool::bind(&stream_addrs, max_message_size, limits, tls, ws).await?)
        };
        Ok(Transports { inner: Arc::new(TransportsInner { udp, tcp, capture: None }) })
    }

    /// Transports that hand every outgoing message to a channel (tests on paused time).
    pub fn capture(udp_local: SocketAddr) -> (Transports, mpsc::UnboundedReceiver<(Target, Bytes)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let udp = vec![UdpListener::unbound(udp_local)];
        (Transports { inner: Arc::new(TransportsInner { udp, tcp: None, capture: Some(tx) }) }, rx)
    }

    /// Start reading every listener into `inbound` until `shutdown`.
    pub fn start(&self, inbound: Arc<dyn Inbound>, shutdown: &CancellationToken) {
        for u in &self.inner.udp {
            u.start(inbound.clone(), shutdown.child_token());
        }
        if let Some(t) = &self.inner.tcp {
            t.start(inbound, shutdown.child_token());
        }
    }

    /// The local address of the first listener of a transport (the port goes into our Via and Record-Route).
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        match transport {
            Transport::Udp => self.inner.udp.first().map(|u| u.local_addr()),
            _ => self
                .inner
                .tcp
                .as_ref()
                .and_then(|t| t.local_addrs().iter().find(|(lt, _)| *lt == transport).map(|(_, a)| *a)),
        }
    }

    /// Every local listener address with its transport.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let mut v: Vec<_> = self.inner.udp.iter().map(|u| (Transport::Udp, u.local_addr())).collect();
        if let Some(t) = &self.inner.tcp {
            v.extend_from_slice(t.local_addrs());
        }
        v
    }

    /// Whether a stream connection (TCP, TLS, WS, WSS) is still open.
    pub fn conn_alive(&self, conn: ConnId) -> bool {
        self.conn_transport(conn).is_some()
    }

    /// The transport of an open connection.
    pub fn conn_transport(&self, conn: ConnId) -> Option<Transport> {
        self.inner.tcp.as_ref().and_then(|t| t.transport_of(conn))
    }

    /// Close every stream connection (accepted or opened by us) whose remote address `banned` names, each
    /// counted `sipfront_connections_closed_total{reason="banned"}`; how many were asked to close. The guard's
    /// sweeper calls it when the set of bans changed, so an idle connection of a source banned meanwhile does not
    /// wait for its idle timeout.
    pub fn close_connections_from(&self, banned: impl Fn(IpAddr) -> bool) -> usize {
        self.inner.tcp.as_ref().map_or(0, |t| t.close_where(banned))
    }

    /// Read the TLS certificate and key again (SIGHUP). `None` when there is no TLS listener; on an error the
    /// old certificate stays in use. Open connections are not touched.
    pub fn reload_tls(&self) -> Option<Result<(), TlsError>> {
        let server = self.inner.tcp.as_ref()?.tls()?.server.as_ref()?;
        let r = server.reload();
        let result = if r.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => result).increment(1);
        Some(r)
    }

    /// Send without waiting. UDP goes out at once; a TCP message is queued on its connection, or a task opens
    /// the connection. Failures are logged and counted; use [`Transports::send_wait`] to learn about them.
    pub fn send(&self, target: Target, data: Bytes) {
        if let Some(c) = &self.inner.capture {
            let _ = c.send((target, data));
            return;
        }
        match target.transport {
            Transport::Udp => match self.udp_for(target.addr) {
                Some(u) => u.send(target.addr, data),
                None => {
                    tracing::warn!(to = %target.addr, "no UDP listener for this address family")
                }
            },
            _ => match &self.inner.tcp {
                Some(t) => t.send_nowait(target, data),
                None => tracing::warn!(to = %target.addr, transport = %target.transport, "no stream transport"),
            },
        }
    }

    /// Send and report whether the message reached the socket (TCP: the connection exists or could be opened).
    pub async fn send_wait(&self, target: Target, data: Bytes) -> Result<(), TransportError> {
        if let Some(c) = &self.inner.capture {
            let _ = c.send((target, data));
            return Ok(());
        }
        match target.transport {
            Transport::Udp => {
                let u = self.udp_for(target.addr).ok_or(TransportError::NoListener(Transport::Udp))?;
                u.send_wait(target.addr, data).await
            }
            _ => {
                let t = self.inner.tcp.as_ref().ok_or(TransportError::NoListener(target.transport))?;
                t.send(target, data).await
            }
        }
    }

    fn udp_for(&self, to: SocketAddr) -> Option<&UdpListener> {
        let udp = &self.inner.udp;
        udp.iter().find(|u| u.local_addr().is_ipv4() == to.is_ipv4()).or_else(|| udp.first())
    }
}

/// IP_FREEBIND (IPV6_FREEBIND): listeners bind the VIP before this node holds it, so a standby is ready the
/// moment it takes over, and every reply leaves from the VIP. Harmless for an address the host has.
pub(crate) fn set_freebind(s: &socket2::Socket, addr: SocketAddr) -> std::io::Result<()> {
    if addr.ip().is_unspecified() {
        return Ok(());
    }
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true),
        SocketAddr::V6(_) => s.set_freebind_v6(true),
    }
}

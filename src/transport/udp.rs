//! A UDP listener: one socket, one reading task. Sends go out on the same socket so that our replies and
//! forwarded requests carry the listener's address and port.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{Inbound, Source, Transport, TransportError};
use crate::metrics as m;

/// Socket buffers big enough to ride out a burst of a few thousand datagrams while a worker is busy.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct UdpListener {
    /// `None` only for capture-mode transports in tests.
    socket: Option<Arc<UdpSocket>>,
    local: SocketAddr,
}

impl UdpListener {
    pub fn bind(addr: SocketAddr) -> Result<UdpListener, TransportError> {
        let bind_err = |reason| TransportError::Bind { addr, reason };
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).map_err(bind_err)?;
        // Larger buffers only help; the kernel caps them at rmem_max/wmem_max, which is fine.
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        s.set_nonblocking(true).map_err(bind_err)?;
        super::set_freebind(&s, addr).map_err(bind_err)?;
        s.bind(&addr.into()).map_err(bind_err)?;
        let socket = UdpSocket::from_std(s.into()).map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        Ok(UdpListener { socket: Some(Arc::new(socket)), local })
    }

    pub(crate) fn unbound(local: SocketAddr) -> UdpListener {
        UdpListener { socket: None, local }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn start(&self, inbound: Arc<dyn Inbound>, shutdown: CancellationToken) {
        let Some(socket) = self.socket.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = socket.recv_from(&mut buf) => r,
                };
                match r {
                    Ok((n, from)) => {
                        metrics::counter!(m::TRANSPORT_RX_BYTES, "transport" => "udp").increment(n as u64);
                        // Keep-alives (RFC 5626 §4.4.1 CRLF, or a lone NUL/space) carry no message.
                        if buf[..n].iter().all(|c| matches!(c, b'\r' | b'\n' | 0 | b' ')) {
                            continue;
                        }
                        // One exact-size copy per datagram: the 64 KiB read buffer is reused at once, and no
                        // long-lived transaction pins a big shared allocation.
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        let _ =
                            inbound.on_message(data, Source { transport: Transport::Udp, remote: from, conn: None });
                    }
                    // ICMP port unreachable from an earlier send shows up here on Linux; not fatal.
                    Err(e) => tracing::debug!(error = %e, "udp recv"),
                }
            }
        });
    }

    /// Send without waiting: a non-blocking write, or a task when the socket buffer is full.
    pub fn send(&self, to: SocketAddr, data: Bytes) {
        let Some(socket) = &self.socket else { return };
        metrics::counter!(m::TRANSPORT_TX_BYTES, "transport" => "udp").increment(data.len() as u64);
        match socket.try_send_to(&data, to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Err(e) = socket.send_to(&data, to).await {
                        tracing::debug!(%to, error = %e, "udp send");
                    }
                });
            }
            Err(e) => tracing::debug!(%to, error = %e, "udp send"),
        }
    }

    pub async fn send_wait(&self, to: SocketAddr, data: Bytes) -> Result<(), TransportError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        metrics::counter!(m::TRANSPORT_TX_BYTES, "transport" => "udp").increment(data.len() as u64);
        socket.send_to(&data, to).await.map(|_| ()).map_err(|source| TransportError::Io { addr: to, source })
    }
}

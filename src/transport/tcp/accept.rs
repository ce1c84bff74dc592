//! The accepting side of the stream pool: the accept loop of every TCP, TLS, WS and WSS listener, the guard's
//! check before anything else (a banned source is closed at once), the connection caps, and the TLS handshake and
//! WebSocket upgrade, each in a task of its own and bounded by `[tls] handshake_timeout`, before the connection
//! is adopted by the pool (`tcp.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::super::limits::{count_close, Admission, CloseReason};
use super::super::{ws, Inbound, Source, Transport};
use super::{Stream, TcpPool};
use crate::metrics as m;

impl TcpPool {
    pub fn start(&self, inbound: Arc<dyn Inbound>, shutdown: CancellationToken) {
        let _ = self.inner.inbound.set(inbound);
        let _ = self.inner.shutdown.set(shutdown.clone());
        let listeners = std::mem::take(&mut *self.inner.listeners.lock().expect("listener lock"));
        for (transport, l) in listeners {
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
                            // Banned: dropped (closed) before it takes a place or costs a handshake.
                            if !pool.admits(remote, transport) {
                                continue;
                            }
                            // Over a cap: dropped (closed) before any handshake; counted and logged by `admit`.
                            let Ok(place) = pool.inner.counts.admit(remote, transport) else { continue };
                            let _ = stream.set_nodelay(true);
                            match transport {
                                Transport::Tls | Transport::Wss => pool.accept_tls(stream, remote, transport, place),
                                Transport::Ws => pool.accept_ws(stream, remote, Transport::Ws, place),
                                _ => {
                                    pool.adopt(stream, remote, Transport::Tcp, Some(place));
                                }
                            }
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

    /// Whether the guard lets a connection from `remote` in; a refusal is counted (`banned`) and logged at debug
    /// only (a banned flood must not flood the log). The caller drops the socket.
    fn admits(&self, remote: SocketAddr, transport: Transport) -> bool {
        let ok = self.inner.inbound.get().is_none_or(|i| i.admits_connection(remote.ip()));
        if !ok {
            count_close(transport, CloseReason::Banned);
            tracing::debug!(%remote, %transport, "connection from a banned source closed");
        }
        ok
    }

    /// Shake hands with a client of a `tls:` or `wss:` listener in a task of its own (a slow client delays no
    /// one), then adopt the connection (`wss:`: after the WebSocket upgrade). The certificate is the one current
    /// at this accept.
    fn accept_tls(&self, stream: TcpStream, remote: SocketAddr, transport: Transport, place: Admission) {
        let Some(ctx) = self.inner.tls.clone() else { return };
        let Some(server) = ctx.server.as_ref().map(|s| s.current()) else { return };
        let shutdown = self.inner.shutdown.get().cloned().unwrap_or_default();
        let pool = self.clone();
        tokio::spawn(async move {
            // Fallible and pinned here: on a failure or timeout the socket is still ours, so the close is counted
            // before the client can see it.
            let accept = tokio_rustls::TlsAcceptor::from(server).accept(stream).into_fallible();
            tokio::pin!(accept);
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(ctx.handshake_timeout, &mut accept) => r,
            };
            match r {
                // Banned while it shook hands: closed before it is adopted.
                Ok(Ok(_)) if !pool.admits(remote, transport) => {}
                Ok(Ok(tls)) if transport == Transport::Wss => pool.accept_ws(tls, remote, Transport::Wss, place),
                Ok(Ok(tls)) => {
                    pool.adopt(tls, remote, Transport::Tls, Some(place));
                }
                Ok(Err((e, _socket))) => {
                    metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "side" => "client").increment(1);
                    count_close(transport, CloseReason::HandshakeFailed);
                    tracing::info!(%remote, error = %e, "tls handshake failed");
                }
                Err(_) => {
                    metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "side" => "client").increment(1);
                    count_close(transport, CloseReason::HandshakeTimeout);
                    tracing::info!(%remote, "tls handshake timed out");
                }
            }
        });
    }

    /// Upgrade a `ws:` stream (or a `wss:` one after TLS) to WebSocket in a task of its own, bounded by the
    /// handshake timeout, then register it and run its frame loop.
    fn accept_ws<S: Stream>(&self, stream: S, remote: SocketAddr, transport: Transport, place: Admission) {
        let pool = self.clone();
        let shutdown = self.inner.shutdown.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            let _place = place;
            let upgrade = ws::accept(stream, &pool.inner.ws, pool.inner.max_message, remote, transport);
            let socket = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = upgrade => match s { Some(s) => s, None => return },
            };
            let Some(inbound) = pool.inner.inbound.get().cloned() else { return };
            if !pool.admits(remote, transport) {
                return; // banned during the upgrade
            }
            let (id, rx, evict) = pool.register(remote, transport);
            let idle = pool.inner.counts.limits().idle;
            let source = Source { transport, remote, conn: Some(id) };
            let ping_interval = pool.inner.ws.ping_interval;
            let conn = ws::Conn { id, source, idle, ping_interval, inbound, evict };
            ws::serve(socket, rx, conn, shutdown.child_token()).await;
            pool.forget(id, remote, transport);
        });
    }
}

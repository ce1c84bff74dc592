//! Limits on accepted stream connections (TCP, TLS, WS, WSS): a cap in total and per source IP address, checked
//! before any TLS handshake, and the one count of connections sipfront closes itself
//! (`sipfront_connections_closed_total{transport, reason}`). The pool (`tcp.rs`) asks for an [`Admission`] per
//! accepted socket and holds it for the connection's life; connections we open to backends take none.
//!
//! This module counts and decides; it never reads or writes a socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::Transport;
use crate::metrics as m;

/// How often a refusal over a cap is logged at warn; the others in between go to debug.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The `[sip]` limits on stream connections.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Accepted connections held at most, all stream transports together (handshakes in progress included).
    pub max_connections: usize,
    /// Accepted connections held at most from one source IP address.
    pub max_per_source: usize,
    /// A connection with no traffic for this long is closed.
    pub idle: Duration,
    /// Once the first byte of a SIP message has arrived (TCP, TLS), the whole message must be there this soon.
    pub message_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 10_000,
            max_per_source: 256,
            idle: Duration::from_secs(300),
            message_timeout: Duration::from_secs(10),
        }
    }
}

/// Why sipfront closed a connection; the `reason` label of `sipfront_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Accepted over a connection cap and closed at once.
    Limit,
    /// The TLS handshake or the WebSocket upgrade did not finish within `[tls] handshake_timeout`.
    HandshakeTimeout,
    /// The TLS handshake or the WebSocket upgrade failed or was refused.
    HandshakeFailed,
    /// A SIP message started but did not complete within `sip.message_timeout` (slowloris).
    SlowMessage,
    /// A message or frame above `sip.max_message_size` / `websocket.max_frame_size`.
    TooLarge,
    /// A stream that cannot be framed, or a message that cannot be parsed.
    Malformed,
    /// No traffic for `sip.tcp_idle_timeout`.
    Idle,
    /// A WebSocket peer that answered no ping within `websocket.ping_interval`.
    PingTimeout,
    /// The guard banned the source: closed at accept (before any handshake), on its next message, or by the
    /// guard's sweeper while it sat idle.
    Banned,
}

impl CloseReason {
    pub fn as_label(self) -> &'static str {
        match self {
            CloseReason::Limit => "limit",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::SlowMessage => "slow_message",
            CloseReason::TooLarge => "too_large",
            CloseReason::Malformed => "malformed",
            CloseReason::Idle => "idle",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Banned => "banned",
        }
    }
}

/// Count a connection sipfront closed.
pub fn count_close(transport: Transport, reason: CloseReason) {
    metrics::counter!(m::CONNECTIONS_CLOSED, "transport" => transport.as_lower(), "reason" => reason.as_label())
        .increment(1);
}

/// Which cap refused a connection; the `reason` label of `sipfront_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerSource,
}

impl Refusal {
    pub fn as_label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerSource => "per_source",
        }
    }
}

/// The accepted connections held now, in total and per source address.
pub struct ConnCounts {
    limits: StreamLimits,
    total: AtomicUsize,
    /// Entries leave at zero, so the map holds only sources with an open connection. A DashMap: every accept
    /// and every close touches it, from many tasks, and a shard lock is held only for one increment.
    per_source: DashMap<IpAddr, usize>,
    started: Instant,
    /// Seconds since `started` (plus one; 0 = never) of the last refusal logged at warn.
    last_warn: AtomicU64,
}

impl ConnCounts {
    pub fn new(limits: StreamLimits) -> Arc<ConnCounts> {
        Arc::new(ConnCounts {
            limits,
            total: AtomicUsize::new(0),
            per_source: DashMap::new(),
            started: Instant::now(),
            last_warn: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// Take a place for a connection accepted from `remote`, or say which cap is full (then counted and logged).
    pub fn admit(self: &Arc<Self>, remote: SocketAddr, transport: Transport) -> Result<Admission, Refusal> {
        // An IPv4 client seen on a dual-stack listener (::ffff:a.b.c.d) is the same source as on an IPv4 one.
        let r = self.try_admit(remote.ip().to_canonical());
        if let Err(refusal) = r {
            let reason = refusal.as_label();
            metrics::counter!(m::CONNECTIONS_REFUSED, "transport" => transport.as_lower(), "reason" => reason)
                .increment(1);
            count_close(transport, CloseReason::Limit);
            if self.warn_due() {
                tracing::warn!(%remote, %transport, reason, max_connections = self.limits.max_connections,
                    max_connections_per_source = self.limits.max_per_source,
                    "connection refused over a cap (further refusals for 10s are logged at debug)");
            } else {
                tracing::debug!(%remote, %transport, reason, "connection refused over a cap");
            }
        }
        r
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut n = self.per_source.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_source {
            drop(n);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerSource);
        }
        *n += 1;
        Ok(Admission { counts: self.clone(), ip })
    }

    fn release(&self, ip: IpAddr) {
        if let Entry::Occupied(mut e) = self.per_source.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether this refusal is the first in `WARN_EVERY` (a flood must not flood the log too).
    fn warn_due(&self) -> bool {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_warn.load(Ordering::Relaxed);
        (last == 0 || now >= last + WARN_EVERY.as_secs())
            && self.last_warn.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Accepted connections held now.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One accepted connection's place under the caps; given back when dropped (the connection's task ends).
pub struct Admission {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_in_total_and_per_source_and_places_come_back() {
        let counts = ConnCounts::new(StreamLimits { max_connections: 3, max_per_source: 2, ..Default::default() });
        let a1 = counts.admit(addr("192.0.2.1:1000"), Transport::Tcp).unwrap();
        let _a2 = counts.admit(addr("192.0.2.1:1001"), Transport::Tcp).unwrap();
        assert_eq!(counts.admit(addr("192.0.2.1:1002"), Transport::Tls).err(), Some(Refusal::PerSource));
        let _b1 = counts.admit(addr("192.0.2.2:1000"), Transport::Ws).unwrap();
        assert_eq!(counts.admit(addr("192.0.2.3:1000"), Transport::Tcp).err(), Some(Refusal::Total));
        assert_eq!(counts.total(), 3, "a refusal takes no place");
        drop(a1);
        assert_eq!(counts.total(), 2);
        let _a3 = counts.admit(addr("192.0.2.1:1003"), Transport::Tcp).expect("the place came back");
        assert_eq!(counts.per_source.get(&addr("192.0.2.1:0").ip()).map(|n| *n), Some(2));
        drop(_b1);
        assert!(counts.per_source.get(&addr("192.0.2.2:0").ip()).is_none(), "an empty source leaves the map");
    }
}

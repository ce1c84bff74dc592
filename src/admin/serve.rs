//! The admin server's connections, served here with hyper's HTTP/1 builder rather than `axum::serve`, which has
//! no bound on connections and no timeouts: idle connections by the ten thousand used up the process's file
//! descriptors, and then the SIP listeners could accept nothing.
//!
//! - at most `admin.max_connections` open at once: one more is closed at accept and counted, so a flood costs
//!   one descriptor for an instant per attempt;
//! - at most `admin.max_connections_per_source` of them from one source address (loopback included), closed and
//!   counted the same way, so one client cannot hold every place and lock the operator out;
//! - `admin.header_timeout`: hyper's header read timeout, which also runs while a kept-alive connection waits
//!   for its next request, so it closes idle keep-alives too;
//! - `admin.idle_timeout`: a connection on which no byte moves while no request is being answered (a stalled
//!   body, a reader that stopped reading) is dropped.
//!
//! It must not touch the routes (mod.rs) or the SIP path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::limits::WarnEvery;
use crate::metrics as m;

/// At most one WARN line about refused connections per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);
static REFUSED_WARN: WarnEvery = WarnEvery::new(WARN_EVERY);

/// The bounds, from `[admin]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(c: &crate::config::AdminConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            max_per_source: c.max_connections_per_source,
            header_timeout: c.header_timeout.get(),
            idle_timeout: c.idle_timeout.get(),
        }
    }
}

/// Accept and serve until `shutdown`; then each open connection finishes its request and closes.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let shares = Arc::new(Shares::new(limits.max_per_source));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, typically: back off rather than spin.
                    if let Some(suppressed) = REFUSED_WARN.check() {
                        tracing::warn!(error = %e, suppressed, "admin: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The source's share first: a source at its share is refused even while places are free.
        let Some(share) = shares.take(peer.ip()) else {
            metrics::counter!(m::ADMIN_CONNS_REFUSED).increment(1);
            if let Some(suppressed) = REFUSED_WARN.check() {
                tracing::warn!(%peer, max = limits.max_per_source, suppressed,
                    "admin: connection refused, admin.max_connections_per_source are open from this address \
                     (at most one line per 10 s)");
            }
            continue; // dropping `stream` closes it
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(m::ADMIN_CONNS_REFUSED).increment(1);
            if let Some(suppressed) = REFUSED_WARN.check() {
                tracing::warn!(%peer, max = limits.max_connections, suppressed,
                    "admin: connection refused, admin.max_connections are open (at most one line per 10 s)");
            }
            continue; // dropping `stream` (and `share`) closes it
        };
        tokio::spawn(connection(stream, peer, app.clone(), limits, (permit, share), shutdown.clone()));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    places: (OwnedSemaphorePermit, Share),
    shutdown: CancellationToken,
) {
    let _places = places;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let tower = TowerToHyperService::new(app);
    let busy = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let answering = Busy::new(busy.clone());
        let fut = tower.call(req);
        async move {
            let r = fut.await;
            drop(answering);
            r
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics::counter!(m::ADMIN_CONNS_CLOSED, "reason" => "header_timeout").increment(1);
                    }
                    tracing::debug!(%peer, error = %e, "admin connection closed");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = activity.idle_for(limits.idle_timeout) => {
                metrics::counter!(m::ADMIN_CONNS_CLOSED, "reason" => "idle").increment(1);
                tracing::debug!(%peer, "admin connection closed: idle");
                return;
            }
        }
    }
}

/// Admin connections open per source address. A std Mutex: taken once at accept and once at close, never across
/// an await, on a port that sees a handful of connections; a source leaves the map with its last connection, so
/// it holds at most `admin.max_connections` entries.
struct Shares {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl Shares {
    fn new(max: usize) -> Shares {
        Shares { max, held: Mutex::new(HashMap::new()) }
    }

    /// A place in `ip`'s share, or `None` when it holds `max` already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Share> {
        // An IPv4 client on a dual-stack listener (::ffff:a.b.c.d) is the same source as on an IPv4 one.
        let ip = ip.to_canonical();
        let mut held = self.held.lock().expect("admin shares lock");
        let n = held.get(&ip).copied().unwrap_or(0);
        if n >= self.max {
            return None;
        }
        held.insert(ip, n + 1);
        Some(Share { shares: self.clone(), ip })
    }
}

/// One connection's place in its source's share; given back when dropped.
struct Share {
    shares: Arc<Shares>,
    ip: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().expect("admin shares lock");
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// When a connection last moved a byte, and how many requests it is answering. Atomics: touched on every read
/// and write by the connection's own task, read by its idle watch.
#[derive(Debug)]
struct Activity {
    base: Instant,
    /// Milliseconds after `base` of the last byte read or written.
    last_ms: AtomicU64,
    answering: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity { base: Instant::now(), last_ms: AtomicU64::new(0), answering: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle` while no request was being answered.
    async fn idle_for(&self, idle: Duration) {
        loop {
            if self.answering.load(Ordering::Relaxed) > 0 {
                self.touch();
            }
            let at = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

/// A request being answered: the idle watch does not count the time.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.answering.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, reporting progress to [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_places_back() {
        let shares = Arc::new(Shares::new(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let (a1, _a2) = (shares.take(a).unwrap(), shares.take(a).unwrap());
        assert!(shares.take(a).is_none(), "a third from one address");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(shares.take(mapped).is_none(), "the same source on a dual-stack listener");
        let _b = shares.take("127.0.0.3".parse().unwrap()).expect("another source has its own share");
        drop(a1);
        let _a3 = shares.take(a).expect("the place came back");
        drop((_a3, _a2));
        assert!(!shares.held.lock().unwrap().contains_key(&a), "an empty source leaves the map");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_only_time_without_bytes_or_a_request_in_hand() {
        let a = Arc::new(Activity::new());
        let t0 = Instant::now();
        a.idle_for(Duration::from_secs(60)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(60), "nothing moved: idle after the timeout");

        tokio::time::advance(Duration::from_secs(5)).await;
        a.touch();
        let t1 = Instant::now();
        a.idle_for(Duration::from_secs(60)).await;
        assert_eq!(t1.elapsed(), Duration::from_secs(60), "a byte restarts the count");

        let busy = Busy::new(a.clone());
        let watch = tokio::spawn({
            let a = a.clone();
            async move { a.idle_for(Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watch.is_finished(), "a slow answer (a switchover) is not idleness");
        drop(busy);
        let t2 = Instant::now();
        watch.await.unwrap();
        assert_eq!(t2.elapsed(), Duration::from_secs(60), "counted from the answer's end");
    }
}

//! [`Pinger`]: a phone that keeps asking "are you there?". A background thread in the phone namespace sends an
//! OPTIONS (its own Call-ID and branch each: `lab{T}-ping-{seq}`) from a UDP socket on 10.201.T.50 to a target
//! (the VIP, or a node) every 20 ms, and records when each was sent and when its final answer came. Nothing is
//! retransmitted: a lost ping is covered by the next one 20 ms later. After a kill at instant `t`,
//! [`Pinger::gap_after`]`(t)` is the failover time as a phone sees it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::nsenter::NsHandle;
use super::shared::{options_to, SipMsg, Tp};
use super::topology::{Background, Lab, Ns};

/// Time between two pings.
pub const PING_EVERY: Duration = Duration::from_millis(20);
/// Most pings sent by one pinger (33 min at 50/s): it stays bounded in count whatever the test does.
const MAX_PINGS: usize = 100_000;

/// One OPTIONS sent, and its final answer if one came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub seq: u64,
    pub sent: Instant,
    /// When the first final (non-1xx) answer came, and its status.
    pub answered: Option<(Instant, u16)>,
}

impl Ping {
    /// Answered 200.
    pub fn ok(&self) -> bool {
        matches!(self.answered, Some((_, 200)))
    }
}

#[derive(Default)]
struct PingLog {
    /// Indexed by `seq`.
    pings: Vec<Ping>,
}

/// A running pinger; see the module docs. It stops when the lab drops (or at [`Pinger::stop`]).
pub struct Pinger {
    pub target: SocketAddr,
    t0: Instant,
    /// Shared with the pinging thread: one short lock per send or answer, one per query.
    log: Arc<Mutex<PingLog>>,
    bg: Arc<Background>,
}

impl Lab {
    /// Ping `target` with OPTIONS from the phone namespace every 20 ms; returns once the socket is bound.
    pub fn pinger(&mut self, target: SocketAddr) -> Pinger {
        let ns = self.ns(Ns::Phones);
        let bind = SocketAddr::new(IpAddr::V4(self.phone_ip()), 0);
        let prefix = format!("lab{}-ping-", self.tag);
        let log: Arc<Mutex<PingLog>> = Arc::default();
        let bg = Arc::new(Background { stop: Default::default(), thread: Mutex::new(None) });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (log2, bg2) = (log.clone(), bg.clone());
        let thread = std::thread::spawn(move || {
            let sock = NsHandle::open(&ns).and_then(|h| h.enter()).and_then(|()| UdpSocket::bind(bind));
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            ping_loop(&sock, target, &prefix, &log2, &bg2);
        });
        *bg.thread.lock().expect("background lock") = Some(thread);
        self.add_background(bg.clone());
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("pinger in the phone namespace: {e}"),
            Err(_) => panic!("pinger did not start within 5 s"),
        }
        Pinger { target, t0: self.t0, log, bg }
    }
}

fn ping_loop(sock: &UdpSocket, target: SocketAddr, prefix: &str, log: &Mutex<PingLog>, bg: &Background) {
    let local = sock.local_addr().expect("local addr");
    let mut buf = vec![0u8; 65_536];
    let mut next = Instant::now();
    while !bg.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            let seq = log.lock().expect("ping log lock").pings.len() as u64;
            if (seq as usize) < MAX_PINGS {
                let msg = options_to(local, target, Tp::Udp, &format!("{prefix}{seq}"));
                // A failed send (no ARP answer yet for the VIP, say) is a ping that goes unanswered.
                let _ = sock.send_to(msg.as_bytes(), target);
                log.lock().expect("ping log lock").pings.push(Ping { seq, sent: now, answered: None });
            }
            next += PING_EVERY;
            if next <= now {
                next = now + PING_EVERY; // fell behind: keep the pace, do not burst
            }
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait)).expect("set timeout");
        let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
        let at = Instant::now();
        let Some(m) = SipMsg::parse(&buf[..n]) else { continue };
        let Some(status) = m.status().filter(|s| *s >= 200) else { continue };
        let seq = m.header("Call-ID").and_then(|c| c.strip_prefix(prefix)).and_then(|s| s.parse::<usize>().ok());
        if let Some(seq) = seq {
            let mut l = log.lock().expect("ping log lock");
            if let Some(p) = l.pings.get_mut(seq).filter(|p| p.answered.is_none()) {
                p.answered = Some((at, status));
            }
        }
    }
}

impl Pinger {
    /// Every ping so far, in order.
    pub fn pings(&self) -> Vec<Ping> {
        self.lock().pings.clone()
    }

    /// Pings sent so far.
    pub fn sent(&self) -> usize {
        self.lock().pings.len()
    }

    /// Pings answered 200 so far.
    pub fn ok_count(&self) -> usize {
        self.lock().pings.iter().filter(|p| p.ok()).count()
    }

    /// From `t` to the first 200 answering an OPTIONS sent at or after `t` (a ping sent before `t` and
    /// answered after it does not count: it may have been answered by the old holder). `None` yet.
    pub fn gap_after(&self, t: Instant) -> Option<Duration> {
        self.lock().pings.iter().filter(|p| p.sent >= t && p.ok()).map(|p| p.answered.expect("ok").0 - t).min()
    }

    /// [`Pinger::gap_after`], waiting for it (polling every 5 ms); panics, with a summary, after `within`.
    pub fn wait_gap_after(&self, t: Instant, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            if let Some(gap) = self.gap_after(t) {
                return gap;
            }
            assert!(
                Instant::now() < deadline,
                "no 200 from {} to an OPTIONS sent after +{:.3} s within {within:?}:\n{}",
                self.target,
                t.saturating_duration_since(self.t0).as_secs_f64(),
                self.summary()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pings sent in `[from, to)` and answered 200.
    pub fn ok_between(&self, from: Instant, to: Instant) -> usize {
        self.lock().pings.iter().filter(|p| p.sent >= from && p.sent < to && p.ok()).count()
    }

    /// The longest run of time, among pings sent in `[from, to)`, between two pings answered 200 (from `from`
    /// to the first, and from the last to `to`, count too): the longest stretch a phone had no service.
    pub fn longest_outage(&self, from: Instant, to: Instant) -> Duration {
        let l = self.lock();
        let mut last = from;
        let mut worst = Duration::ZERO;
        for p in l.pings.iter().filter(|p| p.sent >= from && p.sent < to && p.ok()) {
            worst = worst.max(p.sent - last);
            last = p.sent;
        }
        worst.max(to.saturating_duration_since(last))
    }

    /// Counts and the unanswered stretches (the first 20), times relative to the lab's start.
    pub fn summary(&self) -> String {
        let l = self.lock();
        let ok = l.pings.iter().filter(|p| p.ok()).count();
        let mut s = format!("{} pings to {}, {} answered 200\n", l.pings.len(), self.target, ok);
        // (first sent, last sent, count) of each run of pings without a 200.
        let mut runs: Vec<(Instant, Instant, usize)> = Vec::new();
        let mut open: Option<(Instant, Instant, usize)> = None;
        for p in &l.pings {
            if p.ok() {
                runs.extend(open.take());
            } else {
                let r = open.get_or_insert((p.sent, p.sent, 0));
                (r.1, r.2) = (p.sent, r.2 + 1);
            }
        }
        runs.extend(open);
        let rel = |t: Instant| t.saturating_duration_since(self.t0).as_secs_f64();
        for (a, b, n) in runs.iter().take(20) {
            let _ = writeln!(s, "  no 200: +{:.3} s .. +{:.3} s ({n} pings)", rel(*a), rel(*b));
        }
        if runs.len() > 20 {
            let _ = writeln!(s, "  ... and {} more such runs", runs.len() - 20);
        }
        s
    }

    /// Stop pinging now (the log stays readable). The lab does it anyway when it drops.
    pub fn stop(&self) {
        self.bg.stop_and_join();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PingLog> {
        self.log.lock().expect("ping log lock")
    }
}

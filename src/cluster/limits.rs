//! Bounds on what a stranger can make a node hold or write: the cluster port's concurrent inbound connections
//! (in all and per source address), and [`WarnEvery`], which turns a flood of identical warnings into one line
//! per period with the count of the ones it held back. The admin server uses [`WarnEvery`] too.
//!
//! Peers are exempt from the total (never from the per-source bound): a flood from many addresses can fill the
//! port, but not lock the cluster's own members out of it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one occurrence through per period; [`WarnEvery::check`] says how many were held back since the last.
/// A `std` mutex: a few instructions under it, never held across an await.
#[derive(Debug)]
pub struct WarnEvery {
    every: Duration,
    state: Mutex<WarnState>,
}

#[derive(Debug)]
struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnEvery {
    pub const fn new(every: Duration) -> WarnEvery {
        WarnEvery { every, state: Mutex::new(WarnState { last: None, suppressed: 0 }) }
    }

    /// `Some(held back since the last one)` when this occurrence should be logged, `None` when it is held back.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// As many connections as allowed are open.
    Total,
    /// As many connections from this address as allowed are open.
    PerSource,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerSource => "per_source",
        }
    }
}

/// Counts open inbound connections. A `std` mutex: one map update per accept and per close.
#[derive(Debug)]
pub struct Inbound {
    total: usize,
    per_source: usize,
    /// The peers' addresses: not counted against `total`.
    trusted: HashSet<IpAddr>,
    state: Mutex<InboundState>,
}

#[derive(Debug, Default)]
struct InboundState {
    /// Open connections from untrusted addresses.
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    inbound: Arc<Inbound>,
    ip: IpAddr,
    counted: bool,
}

impl Inbound {
    pub fn new(total: usize, per_source: usize, trusted: impl IntoIterator<Item = IpAddr>) -> Arc<Inbound> {
        let trusted = trusted.into_iter().collect();
        Arc::new(Inbound { total, per_source, trusted, state: Mutex::new(InboundState::default()) })
    }

    /// Take a place for a connection from `ip`, or say why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let counted = !self.trusted.contains(&ip);
        if counted && s.open >= self.total {
            return Err(Refused::Total);
        }
        let n = s.by_source.entry(ip).or_insert(0);
        if *n >= self.per_source {
            return Err(Refused::PerSource);
        }
        *n += 1;
        if counted {
            s.open += 1;
        }
        Ok(Slot { inbound: self.clone(), ip, counted })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).by_source.values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.inbound.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.counted {
            s.open -= 1;
        }
        if let Some(n) = s.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_period_with_the_count_held_back() {
        let w = WarnEvery::new(Duration::from_secs(10));
        assert_eq!(w.check(), Some(0), "the first one goes through");
        for _ in 0..500 {
            assert_eq!(w.check(), None);
        }
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(w.check(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(w.check(), Some(501), "the next line says how many were held back");
        assert_eq!(w.check(), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(w.check(), Some(1));
    }

    #[test]
    fn connections_are_bounded_in_all_and_per_source_and_peers_skip_the_total() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let peer: IpAddr = "10.0.0.12".parse().unwrap();
        let inb = Inbound::new(3, 2, [peer]);
        let s1 = inb.admit(a).unwrap();
        let _s2 = inb.admit(a).unwrap();
        assert_eq!(inb.admit(a).unwrap_err(), Refused::PerSource);
        let _s3 = inb.admit(b).unwrap();
        assert_eq!(inb.admit(b).unwrap_err(), Refused::Total);
        let _p1 = inb.admit(peer).expect("a peer gets in while strangers fill the port");
        let _p2 = inb.admit(peer).unwrap();
        assert_eq!(inb.admit(peer).unwrap_err(), Refused::PerSource, "but it has a per-source bound too");
        assert_eq!(inb.open(), 5);
        drop(s1);
        assert!(inb.admit(b).is_ok(), "a closed connection frees its place");
    }
}

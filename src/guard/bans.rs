//! The ban list: source addresses (IPv6 per /64) whose every message is dropped unread until a deadline.
//!
//! Bans are replicated: each one made here goes to the cluster through the [`Journal`] as an
//! [`Event::Ban`] carrying the time it has left (clocks differ between nodes), followers apply it, and snapshots
//! carry the whole list, so a failover does not forgive an attacker. Bounded by `max`: at the cap the bans
//! closest to expiring are lifted first. Expired bans stop matching at once and leave the map at the next sweep.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::cluster::event::{BanRecord, Event, Journal};
use crate::metrics as m;

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanReason {
    /// It kept exceeding a rate limit (`security.ban_after` drops within `ban_window`).
    Rate,
    /// Its User-Agent matched `security.drop_user_agents`.
    UserAgent,
    /// The PBX refused its credentials `security.auth_ban_after` times within `auth_ban_window`.
    Auth,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Rate => "rate",
            BanReason::UserAgent => "user_agent",
            BanReason::Auth => "auth",
        }
    }
}

/// One ban as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanInfo {
    /// The address (an IPv6 source's /64 prefix).
    pub ip: IpAddr,
    pub reason: BanReason,
    /// Time left.
    pub remaining: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until_us: u64,
    reason: BanReason,
}

/// Bans by source key. DashMap: the reading tasks look up concurrently; `count` lets them skip the lookup
/// altogether while nobody is banned (the usual case).
#[derive(Debug)]
pub struct BanList {
    map: DashMap<IpAddr, Ban>,
    count: AtomicUsize,
    max: usize,
    /// Bans and lifts go to the cluster through it (disabled on a standalone node).
    journal: Journal,
    trimming: AtomicBool,
    /// Bumped by every ban made or applied (not by lifts or expiry): who holds connections to close looks again
    /// only when it moved.
    generation: AtomicU64,
}

impl BanList {
    pub fn new(max: usize, journal: Journal) -> BanList {
        BanList {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            max: max.max(1),
            journal,
            trimming: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Bans held (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is banned at `now_us`: one atomic load while the list is empty.
    #[inline]
    pub fn is_banned(&self, key: IpAddr, now_us: u64) -> bool {
        !self.is_empty() && self.map.get(&key).is_some_and(|b| b.until_us > now_us)
    }

    /// Ban `key` for `ttl` and replicate it; whether it was not banned already (an existing ban is extended).
    pub fn ban(&self, key: IpAddr, ttl: Duration, reason: BanReason, now_us: u64) -> bool {
        let new = self.insert(key, Ban { until_us: now_us + ttl.as_micros() as u64, reason }, now_us);
        self.journal.record(Event::Ban(BanRecord { ip: key, ttl_ms: ttl.as_millis() as u64, reason }));
        if new {
            match reason {
                BanReason::Rate => metrics::counter!(m::GUARD_BANS, "reason" => "rate").increment(1),
                BanReason::UserAgent => metrics::counter!(m::GUARD_BANS, "reason" => "user_agent").increment(1),
                BanReason::Auth => metrics::counter!(m::GUARD_BANS, "reason" => "auth").increment(1),
            }
        }
        new
    }

    /// Lift the ban on `key` and replicate it; whether there was one.
    pub fn unban(&self, key: IpAddr) -> bool {
        let gone = self.remove(key);
        if gone {
            self.journal.record(Event::Unban { ip: key });
        }
        gone
    }

    /// Apply a replicated change from another node (nothing is journaled back).
    pub fn apply(&self, ev: &Event, now_us: u64) {
        match ev {
            Event::Ban(r) => {
                self.insert(r.ip, Ban { until_us: now_us + r.ttl_ms * 1000, reason: r.reason }, now_us);
            }
            Event::Unban { ip } => {
                self.remove(*ip);
            }
            _ => {}
        }
    }

    /// Every live ban, for a snapshot.
    pub fn export(&self, now_us: u64) -> Vec<BanRecord> {
        self.map
            .iter()
            .filter(|b| b.until_us > now_us)
            .map(|b| BanRecord { ip: *b.key(), ttl_ms: (b.until_us - now_us).div_ceil(1000), reason: b.reason })
            .collect()
    }

    /// Replace every ban with a snapshot's.
    pub fn replace_all(&self, records: &[BanRecord], now_us: u64) {
        self.map.clear();
        self.count.store(0, Ordering::Relaxed);
        for r in records {
            self.apply(&Event::Ban(r.clone()), now_us);
        }
        self.publish();
    }

    /// The live bans, longest-lasting first.
    pub fn list(&self, now_us: u64) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .map
            .iter()
            .filter(|b| b.until_us > now_us)
            .map(|b| BanInfo { ip: *b.key(), reason: b.reason, remaining: Duration::from_micros(b.until_us - now_us) })
            .collect();
        out.sort_by(|a, b| b.remaining.cmp(&a.remaining).then(a.ip.cmp(&b.ip)));
        out
    }

    /// Drop expired bans; how many.
    pub fn sweep(&self, now_us: u64) -> usize {
        let gone = self.retain(|b| b.until_us > now_us);
        if gone > 0 {
            self.publish();
        }
        gone
    }

    fn insert(&self, key: IpAddr, ban: Ban, now_us: u64) -> bool {
        if self.len() >= self.max && !self.map.contains_key(&key) {
            self.trim(now_us);
        }
        let new = match self.map.insert(key, ban) {
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(old) if old.until_us <= now_us => true, // an expired one not yet swept: a new ban all the same
            Some(_) => false,
        };
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.publish();
        new
    }

    /// Moves whenever a ban is made or applied, a lifted-and-renewed one included.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn remove(&self, key: IpAddr) -> bool {
        let gone = self.map.remove(&key).is_some();
        if gone {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.publish();
        }
        gone
    }

    /// At the cap: drop expired bans, and if that freed less than an eighth, the eighth closest to expiring.
    fn trim(&self, now_us: u64) {
        if self.trimming.swap(true, Ordering::Acquire) {
            return;
        }
        let mut gone = self.retain(|b| b.until_us > now_us);
        if self.len() > self.max - self.max / 8 {
            let mut ends: Vec<u64> = self.map.iter().map(|b| b.until_us).collect();
            if !ends.is_empty() {
                let k = (ends.len() / 8).min(ends.len() - 1);
                let cut = *ends.select_nth_unstable(k).1;
                gone += self.retain(|b| b.until_us > cut);
            }
        }
        if gone > 0 {
            metrics::counter!(m::GUARD_EVICTED, "table" => "bans").increment(gone as u64);
        }
        self.trimming.store(false, Ordering::Release);
    }

    fn retain(&self, keep: impl Fn(&Ban) -> bool) -> usize {
        let mut gone = 0;
        self.map.retain(|_, b| {
            let k = keep(b);
            gone += usize::from(!k);
            k
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        gone
    }

    fn publish(&self) {
        metrics::gauge!(m::GUARD_BANS_ACTIVE).set(self.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + n))
    }

    #[test]
    fn a_ban_lasts_its_time_and_is_journaled() {
        let (journal, mut rx) = Journal::new();
        let bans = BanList::new(10, journal);
        assert!(!bans.is_banned(ip(1), 0));
        assert!(bans.ban(ip(1), Duration::from_secs(60), BanReason::UserAgent, 0));
        assert!(!bans.ban(ip(1), Duration::from_secs(60), BanReason::UserAgent, S), "extended, not new");
        assert!(bans.is_banned(ip(1), 60 * S) && !bans.is_banned(ip(2), 0));
        assert!(!bans.is_banned(ip(1), 61 * S), "over");
        let want = Event::Ban(BanRecord { ip: ip(1), ttl_ms: 60_000, reason: BanReason::UserAgent });
        assert_eq!(rx.try_recv().unwrap(), want);
        assert_eq!(bans.sweep(61 * S), 1);
        assert!(bans.is_empty());
        bans.ban(ip(3), Duration::from_secs(1), BanReason::Rate, 0);
        assert!(bans.unban(ip(3)) && !bans.unban(ip(3)));
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::Ban(BanRecord { ip: ip(1), ttl_ms: 60_000, reason: BanReason::UserAgent })
        );
        rx.try_recv().unwrap();
        assert_eq!(rx.try_recv().unwrap(), Event::Unban { ip: ip(3) });
    }

    #[test]
    fn replicated_bans_count_from_the_receivers_clock() {
        let follower = BanList::new(10, Journal::default());
        let rec = BanRecord { ip: ip(1), ttl_ms: 5_000, reason: BanReason::Rate };
        follower.apply(&Event::Ban(rec.clone()), 100 * S);
        assert!(follower.is_banned(ip(1), 104 * S) && !follower.is_banned(ip(1), 105 * S));
        assert_eq!(follower.export(101 * S), vec![BanRecord { ttl_ms: 4_000, ..rec.clone() }]);
        let info = follower.list(101 * S);
        assert_eq!((info.len(), info[0].remaining), (1, Duration::from_secs(4)));
        let restored = BanList::new(10, Journal::default());
        restored.ban(ip(9), Duration::from_secs(9), BanReason::Rate, 0);
        restored.replace_all(&follower.export(101 * S), 0);
        assert!(restored.is_banned(ip(1), 3 * S) && !restored.is_banned(ip(9), 0), "replaced whole");
        follower.apply(&Event::Unban { ip: ip(1) }, 102 * S);
        assert!(follower.is_empty());
    }

    #[test]
    fn a_full_list_lifts_the_bans_closest_to_expiring() {
        let bans = BanList::new(16, Journal::default());
        for n in 0..16 {
            bans.ban(ip(n), Duration::from_secs(100 + u64::from(n)), BanReason::Rate, 0);
        }
        bans.ban(ip(100), Duration::from_secs(500), BanReason::Rate, 0);
        assert!(bans.len() <= 16 - 2 + 1, "{}", bans.len());
        assert!(!bans.is_banned(ip(0), 0) && bans.is_banned(ip(15), 0) && bans.is_banned(ip(100), 0));
        for n in 0..1000 {
            bans.ban(ip(1000 + n), Duration::from_secs(600), BanReason::Rate, 0);
            assert!(bans.len() <= 16);
        }
    }
}

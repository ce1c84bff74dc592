//! The per-source table: for every source address heard from lately, its three token buckets (every message;
//! REGISTER; out-of-dialog INVITE, OPTIONS and MESSAGE), its strikes (messages dropped over a limit within
//! the ban window) and its authentication failures (credentials the PBX refused, within the auth window), which
//! decide a ban.
//!
//! Bounded: at `max` entries, entries idle long enough to have refilled are forgotten (they hold nothing a fresh
//! entry would not), then the stalest eighth; a sweep forgets idle ones every few seconds. An attacker cycling
//! through many addresses therefore costs at most `max` entries, and evicting costs amortised O(1) per new source.
//! This module decides nothing about bans or exemptions: it counts.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::bucket::{Limit, TokenBucket};

/// Which bucket a message draws from (every message draws from `All` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    All = 0,
    Register = 1,
    Initial = 2,
}

/// The table's rules, from `[security]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub buckets: [Limit; 3],
    pub ban_after: u32,
    pub ban_window_us: u64,
    /// Authentication failures within `auth_window_us` that ban; 0: never.
    pub auth_ban_after: u32,
    pub auth_window_us: u64,
}

impl Limits {
    /// How long an entry must stay untouched before it is equivalent to no entry: every bucket full again and
    /// its strike window over.
    fn idle_us(&self) -> u64 {
        self.buckets.iter().map(Limit::refill_us).max().unwrap_or(0).max(self.ban_window_us)
    }
}

/// What one message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Ok,
    /// Over the limit: drop it. `ban`: this drop was the source's `ban_after`-th within the window.
    Over {
        ban: bool,
    },
}

/// One source, ~88 bytes.
#[derive(Debug, Clone)]
struct Source {
    buckets: [TokenBucket; 3],
    strikes: u32,
    window_start_us: u64,
    last_us: u64,
    auth_failures: u32,
    auth_start_us: u64,
}

impl Source {
    fn new(l: &Limits, now_us: u64) -> Source {
        Source {
            buckets: l.buckets.map(|b| TokenBucket::full(&b, now_us)),
            strikes: 0,
            window_start_us: now_us,
            last_us: now_us,
            auth_failures: 0,
            auth_start_us: now_us,
        }
    }

    fn auth_failure(&mut self, l: &Limits, now_us: u64) -> bool {
        self.last_us = self.last_us.max(now_us);
        if now_us.saturating_sub(self.auth_start_us) > l.auth_window_us {
            self.auth_start_us = now_us;
            self.auth_failures = 0;
        }
        self.auth_failures += 1;
        let ban = l.auth_ban_after > 0 && self.auth_failures >= l.auth_ban_after;
        if ban {
            self.auth_failures = 0;
        }
        ban
    }

    /// Whether forgetting this source would forgive something: authentication failures still in their window.
    fn holds_auth_failures(&self, l: &Limits, now_us: u64) -> bool {
        self.auth_failures > 0 && now_us.saturating_sub(self.auth_start_us) <= l.auth_window_us
    }

    fn take(&mut self, kind: Kind, l: &Limits, now_us: u64) -> Take {
        self.last_us = self.last_us.max(now_us);
        let i = kind as usize;
        if self.buckets[i].take(&l.buckets[i], now_us) {
            return Take::Ok;
        }
        if now_us.saturating_sub(self.window_start_us) > l.ban_window_us {
            self.window_start_us = now_us;
            self.strikes = 0;
        }
        self.strikes += 1;
        let ban = self.strikes >= l.ban_after;
        if ban {
            self.strikes = 0;
        }
        Take::Over { ban }
    }
}

/// Sources by address. DashMap: every reading task (one per UDP socket, one per connection) takes from it
/// concurrently; a shard's write lock is held for a few arithmetic operations, never across anything else. The
/// keys are chosen by strangers, so the hasher stays std's keyed SipHash: a faster, more weakly keyed one (foldhash)
/// would save ~15 ns a message (measured, `benches/guard.rs`) and open the table to collision floods.
#[derive(Debug)]
pub struct SourceTable {
    map: DashMap<IpAddr, Source>,
    /// Entries now (DashMap's own `len` locks every shard).
    count: AtomicUsize,
    max: usize,
    limits: Limits,
    /// Set while one thread trims the table at its cap; the others insert meanwhile (the cap is then overshot by
    /// at most the number of reading tasks, until the next trim).
    trimming: AtomicBool,
}

impl SourceTable {
    pub fn new(limits: Limits, max: usize) -> SourceTable {
        SourceTable {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            max: max.max(1),
            limits,
            trimming: AtomicBool::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take one token of `kind` for `key`. No allocation when the source is known.
    pub fn take(&self, key: IpAddr, kind: Kind, now_us: u64) -> Take {
        if let Some(mut s) = self.map.get_mut(&key) {
            return s.take(kind, &self.limits, now_us);
        }
        if self.len() >= self.max {
            self.trim(now_us);
        }
        match self.map.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().take(kind, &self.limits, now_us),
            Entry::Vacant(v) => {
                let mut s = Source::new(&self.limits, now_us);
                let took = s.take(kind, &self.limits, now_us);
                v.insert(s);
                self.count.fetch_add(1, Ordering::Relaxed);
                took
            }
        }
    }

    /// Count an authentication failure of `key` (the PBX refused its credentials). `true`: it was the
    /// `auth_ban_after`-th within the auth window, ban it.
    pub fn auth_failure(&self, key: IpAddr, now_us: u64) -> bool {
        if let Some(mut s) = self.map.get_mut(&key) {
            return s.auth_failure(&self.limits, now_us);
        }
        if self.len() >= self.max {
            self.trim(now_us);
        }
        match self.map.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().auth_failure(&self.limits, now_us),
            Entry::Vacant(v) => {
                let mut s = Source::new(&self.limits, now_us);
                let ban = s.auth_failure(&self.limits, now_us);
                v.insert(s);
                self.count.fetch_add(1, Ordering::Relaxed);
                ban
            }
        }
    }

    /// Forget every source idle long enough to be as good as new (and with no authentication failure still in
    /// its window); how many.
    pub fn sweep(&self, now_us: u64) -> usize {
        let idle = self.limits.idle_us();
        let l = &self.limits;
        self.retain(|s| now_us.saturating_sub(s.last_us) < idle || s.holds_auth_failures(l, now_us))
    }

    /// At the cap: sweep, and if that freed less than an eighth, forget the stalest eighth.
    fn trim(&self, now_us: u64) {
        if self.trimming.swap(true, Ordering::Acquire) {
            return;
        }
        let mut gone = self.sweep(now_us);
        let target = self.max - self.max / 8;
        if self.len() > target {
            // A rare path (a table full of active sources): one allocation to find the cut-off.
            let mut ages: Vec<u64> = self.map.iter().map(|s| s.last_us).collect();
            if !ages.is_empty() {
                let k = (ages.len() / 8).min(ages.len() - 1);
                let cut = *ages.select_nth_unstable(k).1;
                gone += self.retain(|s| s.last_us > cut);
            }
        }
        if gone > 0 {
            metrics::counter!(crate::metrics::GUARD_EVICTED, "table" => "sources").increment(gone as u64);
        }
        self.trimming.store(false, Ordering::Release);
    }

    fn retain(&self, keep: impl Fn(&Source) -> bool) -> usize {
        let mut gone = 0;
        self.map.retain(|_, s| {
            let k = keep(s);
            gone += usize::from(!k);
            k
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn limits() -> Limits {
        Limits {
            buckets: [Limit::new(10, 20), Limit::new(2, 4), Limit::new(5, 5)],
            ban_after: 3,
            ban_window_us: 10 * S,
            auth_ban_after: 3,
            auth_window_us: 60 * S,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn each_kind_has_its_own_bucket_and_strikes_lead_to_a_ban() {
        let t = SourceTable::new(limits(), 100);
        let a = ip(1);
        for _ in 0..4 {
            assert_eq!(t.take(a, Kind::Register, 0), Take::Ok);
        }
        assert_eq!(t.take(a, Kind::Register, 0), Take::Over { ban: false });
        assert_eq!(t.take(a, Kind::Initial, 0), Take::Ok, "another bucket");
        assert_eq!(t.take(ip(2), Kind::Register, 0), Take::Ok, "another source");
        assert_eq!(t.take(a, Kind::Register, 0), Take::Over { ban: false });
        assert_eq!(t.take(a, Kind::Register, 0), Take::Over { ban: true }, "the third drop within the window");
        assert_eq!(t.take(a, Kind::Register, 0), Take::Over { ban: false }, "strikes start over");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn strikes_spread_wider_than_the_window_never_ban() {
        let t = SourceTable::new(limits(), 100);
        let a = ip(1);
        for _ in 0..5 {
            t.take(a, Kind::Initial, 0);
        }
        for i in 0..10u64 {
            // Every 11 s: the window is over each time, and the bucket refilled by then.
            let now = i * 11 * S;
            while t.take(a, Kind::Initial, now) == Take::Ok {}
            assert_eq!(t.take(a, Kind::Initial, now), Take::Over { ban: false });
        }
    }

    #[test]
    fn authentication_failures_ban_within_their_window_and_outlive_a_sweep() {
        let t = SourceTable::new(limits(), 100);
        let a = ip(1);
        assert!(!t.auth_failure(a, 0));
        assert!(!t.auth_failure(a, 30 * S));
        // Idle for the buckets (10 s), but its failures are still in their 60 s window: kept.
        assert_eq!(t.sweep(45 * S), 0);
        assert!(t.auth_failure(a, 50 * S), "the third within 60 s");
        assert!(!t.auth_failure(a, 51 * S), "failures start over after a ban");
        // Spread wider than the window: never.
        let b = ip(2);
        for i in 0..10u64 {
            assert!(!t.auth_failure(b, i * 31 * S), "every other failure starts a new window");
        }
        // Off.
        let off = SourceTable::new(Limits { auth_ban_after: 0, ..limits() }, 100);
        assert!((0..100).all(|_| !off.auth_failure(a, 0)));
    }

    #[test]
    fn sweep_forgets_only_sources_that_have_refilled() {
        let t = SourceTable::new(limits(), 100);
        t.take(ip(1), Kind::All, 0);
        t.take(ip(2), Kind::All, 9 * S);
        // The slowest refill is the REGISTER bucket's 2 s; the 10 s ban window is longer: idle means 10 s.
        assert_eq!(t.sweep(10 * S), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.sweep(20 * S), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_forgets_its_stalest_eighth() {
        let t = SourceTable::new(limits(), 64);
        for n in 0..64 {
            t.take(ip(n), Kind::All, u64::from(n));
        }
        assert_eq!(t.len(), 64);
        t.take(ip(1000), Kind::All, 100);
        assert!(t.len() <= 64 - 8 + 1, "{} left", t.len());
        assert!(t.map.contains_key(&ip(63)) && t.map.contains_key(&ip(1000)), "the newest stay");
        assert!(!t.map.contains_key(&ip(0)), "the stalest go");
        for n in 0..10_000 {
            t.take(ip(2000 + n), Kind::All, 200 + u64::from(n));
            assert!(t.len() <= 64, "bounded");
        }
    }
}

//! Flood and scanner protection, in the spirit of Kamailio's pike + ipban and OpenSIPS' ratelimit: every message
//! from a stranger passes [`Guard::admit`] before it is parsed, and every request [`Guard::admit_request`] after.
//!
//! ```text
//!  mod.rs         Guard: the two checks the proxy calls, exemptions (backends, security.allow), the sweeper
//!  bucket.rs      TokenBucket: a rate and a burst, refilled from elapsed time
//!  sources.rs     SourceTable: three buckets and the strikes of every source address; capped, stalest evicted
//!  bans.rs        BanList: banned sources until a deadline; capped; replicated through the cluster journal
//!  user_agent.rs  UserAgentRules: User-Agent substrings that mark a scanner
//!  auth.rs        which final answers of the PBX are a refused credential (password guessing, enumeration)
//! ```
//!
//! What is dropped is dropped *silently*: no 503, no 429. A flood costs us a bucket check and a counter, not a
//! response to build and send (toward an address that may be forged), and a scanner learns nothing, not even
//! that a SIP server is there. A legitimate phone over UDP that overshoots a limit retransmits on its own timers
//! (T1, 2*T1 ...) and gets through once its bucket refills. Every drop is counted by reason
//! (`sipfront_guard_dropped_total{reason}`).
//!
//! The backends and `security.allow` are never limited, banned or matched. IPv6 sources are counted and banned
//! per /64 (one subscriber's allocation: rotating addresses within it gains nothing). This module sends nothing
//! and never blocks; the per-message cost for a known source is one DashMap lookup and no allocation.

pub mod auth;
mod bans;
mod bucket;
mod sources;
mod user_agent;

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use bans::{BanInfo, BanList, BanReason};
pub use bucket::{Limit, TokenBucket};
pub use sources::{Kind, Limits, SourceTable, Take};
pub use user_agent::{user_agent, UserAgentRules};

use crate::cluster::event::{BanRecord, Event, Journal};
use crate::config::{Cidr, SecurityConfig};
use crate::metrics as m;
use crate::proxy::Proxy;
use crate::sip::{Message, Method};

/// Why a message was dropped: the `reason` label of `sipfront_guard_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The source is banned.
    Banned,
    /// Over `security.rate` (every message).
    Rate,
    /// Over `security.register_rate`.
    RegisterRate,
    /// Over `security.initial_rate` (out-of-dialog INVITE, OPTIONS, MESSAGE).
    InitialRate,
    /// A User-Agent in `security.drop_user_agents`.
    UserAgent,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Banned,
        DropReason::Rate,
        DropReason::RegisterRate,
        DropReason::InitialRate,
        DropReason::UserAgent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Banned => "banned",
            DropReason::Rate => "rate",
            DropReason::RegisterRate => "register_rate",
            DropReason::InitialRate => "initial_rate",
            DropReason::UserAgent => "user_agent",
        }
    }
}

/// The verdict of [`Guard::admit`], handed on to [`Guard::admit_request`] once the message is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A backend or an allowed address: nothing applies.
    Exempt,
    /// Over its rate: drop it unread.
    Drop,
    /// Banned (already, or by this very message): drop it unread; a stream connection from it closes.
    Banned,
    /// Counted and within its rate; a request still meets the method limits and the User-Agent rules.
    Counted { key: IpAddr, now_us: u64 },
}

impl Admission {
    pub fn is_drop(self) -> bool {
        matches!(self, Admission::Drop | Admission::Banned)
    }
}

/// The source address a limit or ban applies to: IPv4 as is (IPv4-mapped IPv6 too), IPv6 cut to its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Rate limits, bans and scanner rules for one proxy.
#[derive(Debug)]
pub struct Guard {
    /// Time zero of the microsecond clock the buckets and bans run on (tokio's, so tests can pause it).
    epoch: Instant,
    /// The backends' addresses: the PBX answers and calls as fast as it likes.
    backends: Vec<IpAddr>,
    /// `security.allow`.
    allow: Vec<Cidr>,
    sources: SourceTable,
    bans: BanList,
    agents: UserAgentRules,
    ban_time: Duration,
    /// Drops by [`DropReason`], beside the metric, for tests and the admin API (relaxed: independent tallies).
    dropped: [AtomicU64; 5],
}

impl Guard {
    /// The guard for `[security]`, exempting `backends`; bans go to the cluster through `journal`.
    pub fn new(cfg: &SecurityConfig, backends: impl IntoIterator<Item = IpAddr>, journal: Journal) -> Guard {
        let limits = Limits {
            buckets: [
                Limit::new(cfg.rate, cfg.burst),
                Limit::new(cfg.register_rate, cfg.register_burst),
                Limit::new(cfg.initial_rate, cfg.initial_burst),
            ],
            ban_after: cfg.ban_after.max(1),
            ban_window_us: cfg.ban_window.get().as_micros() as u64,
            auth_ban_after: cfg.auth_ban_after,
            auth_window_us: cfg.auth_ban_window.get().as_micros() as u64,
        };
        let mut backends: Vec<IpAddr> = backends.into_iter().collect();
        backends.sort();
        backends.dedup();
        Guard {
            epoch: Instant::now(),
            backends,
            allow: cfg.allow_nets(),
            sources: SourceTable::new(limits, cfg.max_sources),
            bans: BanList::new(cfg.max_bans, journal),
            agents: UserAgentRules::new(&cfg.drop_user_agents),
            ban_time: cfg.ban_time.get(),
            dropped: Default::default(),
        }
    }

    fn now_us(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Whether `ip` is a backend or in `security.allow`.
    #[inline]
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.backends.contains(&ip) || self.allow.iter().any(|n| n.contains(ip))
    }

    /// Before parsing: drop a banned source, and count the message against its source's rate.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        if self.is_exempt(ip) {
            return Admission::Exempt;
        }
        let key = source_key(ip);
        let now_us = self.now_us();
        if self.bans.is_banned(key, now_us) {
            self.count(DropReason::Banned);
            return Admission::Banned;
        }
        match self.sources.take(key, Kind::All, now_us) {
            Take::Ok => Admission::Counted { key, now_us },
            Take::Over { ban: false } => self.over(key, DropReason::Rate, false, now_us),
            Take::Over { ban: true } => {
                self.over(key, DropReason::Rate, true, now_us);
                Admission::Banned
            }
        }
    }

    /// After parsing a request: the User-Agent rules, then the REGISTER and out-of-dialog INVITE/OPTIONS/MESSAGE
    /// limits. `false`: drop it.
    pub fn admit_request(&self, admission: Admission, req: &Message) -> bool {
        let Admission::Counted { key, now_us } = admission else { return !admission.is_drop() };
        if self.agents.matches_request(req) {
            self.count(DropReason::UserAgent);
            self.ban_key(key, BanReason::UserAgent, now_us);
            return false;
        }
        let (kind, reason) = match req.method() {
            Some(Method::Register) => (Kind::Register, DropReason::RegisterRate),
            Some(Method::Invite | Method::Options | Method::Message) if req.to_tag().is_none() => {
                (Kind::Initial, DropReason::InitialRate)
            }
            _ => return true,
        };
        match self.sources.take(key, kind, now_us) {
            Take::Ok => true,
            Take::Over { ban } => {
                self.over(key, reason, ban, now_us);
                false
            }
        }
    }

    fn count(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        // One arm per reason: literal labels make a static key, so counting a flood allocates nothing.
        let counter = match reason {
            DropReason::Banned => metrics::counter!(m::GUARD_DROPPED, "reason" => "banned"),
            DropReason::Rate => metrics::counter!(m::GUARD_DROPPED, "reason" => "rate"),
            DropReason::RegisterRate => metrics::counter!(m::GUARD_DROPPED, "reason" => "register_rate"),
            DropReason::InitialRate => metrics::counter!(m::GUARD_DROPPED, "reason" => "initial_rate"),
            DropReason::UserAgent => metrics::counter!(m::GUARD_DROPPED, "reason" => "user_agent"),
        };
        counter.increment(1);
    }

    /// Messages dropped so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn over(&self, key: IpAddr, reason: DropReason, ban: bool, now_us: u64) -> Admission {
        self.count(reason);
        if ban {
            self.ban_key(key, BanReason::Rate, now_us);
        }
        Admission::Drop
    }

    fn ban_key(&self, key: IpAddr, reason: BanReason, now_us: u64) {
        if self.bans.ban(key, self.ban_time, reason, now_us) {
            tracing::warn!(source = %key, reason = reason.as_str(), ban_time = ?self.ban_time, "guard: source banned");
        }
    }

    /// Ban `ip` (its /64 for IPv6) for `security.ban_time`, as if it had flooded; replicated.
    pub fn ban(&self, ip: IpAddr, reason: BanReason) {
        self.ban_key(source_key(ip), reason, self.now_us());
    }

    /// The PBX refused credentials from `ip` (see [`auth::is_failure`]): count it, and ban the source at
    /// `security.auth_ban_after` within `auth_ban_window`. Backends and `security.allow` are never counted.
    pub fn auth_failure(&self, ip: IpAddr) {
        if self.is_exempt(ip) {
            return;
        }
        metrics::counter!(m::GUARD_AUTH_FAILURES).increment(1);
        let key = source_key(ip);
        let now_us = self.now_us();
        if self.sources.auth_failure(key, now_us) {
            self.ban_key(key, BanReason::Auth, now_us);
        }
    }

    /// Lift the ban on `ip` (or its /64); replicated. Whether there was one.
    pub fn unban(&self, ip: IpAddr) -> bool {
        let lifted = self.bans.unban(source_key(ip));
        if lifted {
            tracing::info!(source = %source_key(ip), "guard: ban lifted");
        }
        lifted
    }

    /// Moves whenever a ban is made here or applied from another node.
    pub fn ban_generation(&self) -> u64 {
        self.bans.generation()
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans.is_banned(source_key(ip), self.now_us())
    }

    /// The live bans, longest-lasting first.
    pub fn bans(&self) -> Vec<BanInfo> {
        self.bans.list(self.now_us())
    }

    /// Source addresses tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Apply a replicated [`Event::Ban`] or [`Event::Unban`] from another node.
    pub fn apply(&self, ev: &Event) {
        self.bans.apply(ev, self.now_us());
    }

    /// Every live ban, for a snapshot.
    pub fn export_bans(&self) -> Vec<BanRecord> {
        self.bans.export(self.now_us())
    }

    /// Replace the ban list with a snapshot's.
    pub fn replace_bans(&self, records: &[BanRecord]) {
        self.bans.replace_all(records, self.now_us());
    }

    /// Forget expired bans, and (`sources`) the sources idle long enough to be as good as new.
    pub fn sweep(&self, sources: bool) {
        let now_us = self.now_us();
        self.bans.sweep(now_us);
        if sources {
            self.sources.sweep(now_us);
        }
        metrics::gauge!(m::GUARD_SOURCES).set(self.sources.len() as f64);
    }
}

/// How often expired bans are swept (the sources: every tenth time).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The background sweep of the guard's tables, until `shutdown`. When a source was banned since the last round
/// (here, by the admin API, or replicated from another node), the stream connections it holds are closed too:
/// an idle one would otherwise stay open until its idle timeout.
pub async fn sweeper(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    let mut round = 0u64;
    // A ban made or applied since the last round triggers a pass over the connections.
    let mut seen = proxy.guard.ban_generation();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        round += 1;
        let guard = &proxy.guard;
        guard.sweep(round % 10 == 0);
        let now = guard.ban_generation();
        if std::mem::replace(&mut seen, now) != now {
            let n = proxy.transports.close_connections_from(|ip| guard.is_banned(ip) && !guard.is_exempt(ip));
            if n > 0 {
                tracing::info!(connections = n, "guard: closed the connections of banned sources");
            }
        }
    }
}

#[cfg(test)]
mod tests;

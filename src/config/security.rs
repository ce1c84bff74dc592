//! `[security]`: what protects the SIP listeners from strangers: per-source request rate limits, a temporary ban
//! list, user-agent drop rules. The rules themselves run in [`crate::guard`]; this file only reads and checks.
//!
//! The defaults are sized for the largest site we expect behind one NAT address: an office of 200 phones. Such a
//! site, seen from sipfront, is one source IP that sends (steady) ~7 REGISTERs/s (every phone refreshing every
//! 60 s, each refresh challenged once), ~13 OPTIONS keep-alives/s (every 15 s), a few calls/s and their in-dialog
//! traffic — ~30 messages/s — and (at boot, after a power cut) ~400-800 REGISTERs plus their SUBSCRIBEs within a
//! few seconds. The defaults leave that a factor of 3-7 of headroom and still cut a 10,000/s flood within its
//! first burst.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Cidr, ConfigDuration, ConfigError};

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Messages per second one source address may send, every kind counted (requests, responses, unparseable
    /// datagrams alike: each costs a parse). Default 200: ~7x the steady traffic of a 200-phone office.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// How many messages a source may send at once above `rate` (the bucket's size). Default 2000: a 200-phone
    /// office's whole boot storm (REGISTER, challenge, REGISTER, SUBSCRIBEs) fits in it.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// REGISTERs per second from one source (they also count against `rate`). Default 50: 7x a 200-phone office
    /// re-registering every 60 s with a challenge each time. Password guessing (svcrack) is REGISTER traffic.
    #[serde(default = "default_register_rate")]
    pub register_rate: u32,
    /// REGISTERs at once from one source. Default 1000: 200 phones with two lines each, challenged once, with 25%
    /// to spare.
    #[serde(default = "default_register_burst")]
    pub register_burst: u32,
    /// Out-of-dialog INVITE, OPTIONS and MESSAGE (no To tag) per second from one source: new calls, keep-alive
    /// OPTIONS, and what svmap, svwar and INVITE floods send. Default 100: 200 phones' OPTIONS every 15 s are 13/s.
    #[serde(default = "default_initial_rate")]
    pub initial_rate: u32,
    /// Such requests at once from one source. Default 1000: every phone's keep-alive and a call each at once.
    #[serde(default = "default_initial_burst")]
    pub initial_burst: u32,
    /// A source whose messages are dropped over a limit this many times within `ban_window` is banned. Default
    /// 100: a flood reaches it within milliseconds; a site that overshoots its burst for a moment (its phones
    /// retransmit what was dropped) does not.
    #[serde(default = "default_ban_after")]
    pub ban_after: u32,
    /// The window in which `ban_after` drops must fall to ban. Default `"10s"`.
    #[serde(default = "default_ban_window")]
    pub ban_window: ConfigDuration,
    /// How long a ban lasts: every message from the address is dropped unread until then. Replicated to the whole
    /// cluster. Default `"5m"` (Kamailio's sample `ipban` table expires after 300 s too).
    #[serde(default = "default_ban_time")]
    pub ban_time: ConfigDuration,
    /// A source whose credentials the PBX refuses this many times within `auth_ban_window` is banned for
    /// `ban_time` (fail2ban's rule for a PBX): a 401/407 to a request that carried credentials (not a `stale`
    /// nonce), a 403, a 404 to a REGISTER. A first challenge never counts. Default 20: svcrack's guessing gets
    /// 20 tries; a phone with a wrong password that retries every 30 s never gets there. `0` turns it off.
    #[serde(default = "default_auth_ban_after")]
    pub auth_ban_after: u32,
    /// The window for `auth_ban_after`. Default `"1m"`.
    #[serde(default = "default_auth_ban_window")]
    pub auth_ban_window: ConfigDuration,
    /// Source addresses tracked at most (each ~100 bytes); past it the stalest are forgotten first. IPv6 sources
    /// are tracked (and banned) per /64, a subscriber's usual allocation. Default 100000.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// Bans held at most; past it the ones closest to expiring are lifted first. Default 10000.
    #[serde(default = "default_max_bans")]
    pub max_bans: usize,
    /// Address blocks never limited, banned or matched against `drop_user_agents` (monitoring, an office's NAT
    /// address, a SIP trunk provider): `["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]`. The backends are always
    /// exempt. Default: loopback only (`["127.0.0.0/8", "::1"]`); a list written here replaces it.
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    /// Substrings of the User-Agent header that mark a scanner, matched case-insensitively; a request carrying
    /// one is dropped unanswered and its source banned. `[]` turns the rule off. Default: the scanners Kamailio's
    /// sample configuration and fail2ban-style filters list (SIPVicious' `friendly-scanner` and its kin).
    #[serde(default = "default_drop_user_agents")]
    pub drop_user_agents: Vec<String>,
}

fn default_rate() -> u32 {
    200
}
fn default_burst() -> u32 {
    2_000
}
fn default_register_rate() -> u32 {
    50
}
fn default_register_burst() -> u32 {
    1_000
}
fn default_initial_rate() -> u32 {
    100
}
fn default_initial_burst() -> u32 {
    1_000
}
fn default_ban_after() -> u32 {
    100
}
fn default_ban_window() -> ConfigDuration {
    ConfigDuration::secs(10)
}
fn default_ban_time() -> ConfigDuration {
    ConfigDuration::secs(300)
}
fn default_auth_ban_after() -> u32 {
    20
}
fn default_auth_ban_window() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn default_max_sources() -> usize {
    100_000
}
fn default_max_bans() -> usize {
    10_000
}
fn default_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

fn default_drop_user_agents() -> Vec<String> {
    SecurityConfig::SCANNER_USER_AGENTS.iter().map(|s| s.to_string()).collect()
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            rate: default_rate(),
            burst: default_burst(),
            register_rate: default_register_rate(),
            register_burst: default_register_burst(),
            initial_rate: default_initial_rate(),
            initial_burst: default_initial_burst(),
            ban_after: default_ban_after(),
            ban_window: default_ban_window(),
            ban_time: default_ban_time(),
            auth_ban_after: default_auth_ban_after(),
            auth_ban_window: default_auth_ban_window(),
            max_sources: default_max_sources(),
            max_bans: default_max_bans(),
            allow: default_allow(),
            drop_user_agents: default_drop_user_agents(),
        }
    }
}

impl SecurityConfig {
    /// The scanners' User-Agents everyone lists (Kamailio's sample configuration, fail2ban-style filters):
    /// SIPVicious (`friendly-scanner` is svmap/svwar/svcrack's default, newer releases say `sipvicious`), sipcli,
    /// VaxSIPUserAgent, pplsip, sundayddr, iWar.
    pub const SCANNER_USER_AGENTS: &[&str] =
        &["friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip", "sundayddr", "iWar"];

    /// The address blocks of `allow` (validated: every entry parses).
    pub fn allow_nets(&self) -> Vec<Cidr> {
        self.allow.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// Rules of this section alone.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let pairs = [
            ("rate", self.rate, "burst", self.burst),
            ("register_rate", self.register_rate, "register_burst", self.register_burst),
            ("initial_rate", self.initial_rate, "initial_burst", self.initial_burst),
        ];
        for (rate_key, rate, burst_key, burst) in pairs {
            if rate == 0 {
                return Err(invalid(format!("security.{rate_key}"), "must be at least 1 (per second)"));
            }
            if burst < rate {
                return Err(invalid(
                    format!("security.{burst_key}"),
                    format!(
                        "{burst} is below security.{rate_key} ({rate}): a source could not send one second's worth"
                    ),
                ));
            }
        }
        for (key, rate) in [("register_rate", self.register_rate), ("initial_rate", self.initial_rate)] {
            if rate > self.rate {
                return Err(invalid(
                    format!("security.{key}"),
                    format!("{rate} is above security.rate ({}), which every message counts against too", self.rate),
                ));
            }
        }
        if self.ban_after == 0 {
            return Err(invalid("security.ban_after", "must be at least 1"));
        }
        if self.ban_window.get() < Duration::from_millis(100) {
            return Err(invalid("security.ban_window", "must be at least 100ms"));
        }
        if self.ban_time.get().is_zero() {
            return Err(invalid("security.ban_time", "must be above zero (a ban that lasts no time bans nothing)"));
        }
        if self.auth_ban_after > 0 && self.auth_ban_window.get() < Duration::from_secs(1) {
            return Err(invalid(
                "security.auth_ban_window",
                "must be at least 1s (failures come one answer at a time)",
            ));
        }
        if self.max_sources == 0 {
            return Err(invalid("security.max_sources", "must be at least 1"));
        }
        if self.max_bans == 0 {
            return Err(invalid("security.max_bans", "must be at least 1"));
        }
        for (i, e) in self.allow.iter().enumerate() {
            e.parse::<Cidr>().map_err(|r| invalid(format!("security.allow[{i}]"), r))?;
        }
        for (i, ua) in self.drop_user_agents.iter().enumerate() {
            let key = format!("security.drop_user_agents[{i}]");
            if ua.trim().is_empty() {
                return Err(invalid(key, "must not be empty (it would match every request)"));
            }
            if !ua.is_ascii() {
                return Err(invalid(key, format!("`{ua}`: only ASCII is matched (case-insensitively)")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[node]\nid = 1\nname = \"a\"\n[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\nadvertise = \
                        \"127.0.0.1\"\n[[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5080\"\n";

    fn load(security: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}[security]\n{security}\n")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fit_an_office_behind_one_address() {
        let c = Config::from_toml(BASE).unwrap().security;
        assert_eq!((c.rate, c.burst, c.register_rate, c.register_burst), (200, 2000, 50, 1000));
        assert_eq!((c.initial_rate, c.initial_burst, c.ban_after), (100, 1000, 100));
        assert_eq!(c.ban_time.get(), std::time::Duration::from_secs(300));
        let allows =
            |c: &super::SecurityConfig, ip: &str| c.allow_nets().iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(allows(&c, "127.0.0.9") && allows(&c, "::1") && !allows(&c, "192.0.2.1"));
        assert!(c.drop_user_agents.iter().any(|u| u == "friendly-scanner"));
        let c = load("allow = [\"192.0.2.0/24\"]\ndrop_user_agents = []").unwrap().security;
        assert!(allows(&c, "192.0.2.200") && !allows(&c, "127.0.0.1"));
    }

    #[test]
    fn every_rule_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("rate = 0", "security.rate: must be at least 1"),
            ("rate = 300\nburst = 100", "security.burst: 100 is below security.rate (300)"),
            ("register_burst = 10", "security.register_burst: 10 is below security.register_rate"),
            ("initial_rate = 150\ninitial_burst = 100", "security.initial_burst"),
            ("register_rate = 300\nregister_burst = 3000", "security.register_rate: 300 is above security.rate"),
            ("ban_after = 0", "security.ban_after: must be at least 1"),
            ("ban_time = \"0s\"", "security.ban_time: must be above zero"),
            ("ban_window = \"10ms\"", "security.ban_window: must be at least 100ms"),
            ("max_sources = 0", "security.max_sources"),
            ("max_bans = 0", "security.max_bans"),
            ("allow = [\"10.0.0.0/8\", \"office\"]", "security.allow[1]: `office` is not an address"),
            ("drop_user_agents = [\" \"]", "security.drop_user_agents[0]: must not be empty"),
            ("ban_time = 300", "expected a duration string"),
            ("bans = true", "unknown field `bans`"),
        ];
        for (toml, want) in cases {
            let e = load(toml).expect_err(toml);
            assert!(e.contains(want), "{toml:?}: got {e:?}, want {want:?}");
        }
    }
}

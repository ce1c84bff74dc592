//! The node's TOML configuration: serde structs with `deny_unknown_fields`, typed durations and addresses, named
//! defaults, and one `validate` pass for the rules that span fields. `sipfront check-config` runs the same code.
//!
//! This module only reads and checks; it never opens a socket.

mod admin;
mod cidr;
mod cluster;
mod duration;
mod failover;
mod ha;
mod security;
mod transport;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use admin::AdminConfig;
pub use cidr::Cidr;
pub use cluster::{ClusterConfig, PeerConfig, VipConfig, VipMode};
pub use duration::{parse_duration, ConfigDuration};
pub use failover::{AwsConfig, AwsVipConfig, AwsVipMethod, VolumeConfig, VolumeMode};
pub use ha::{DialogConfig, HealthConfig, RegistrationConfig};
pub use security::SecurityConfig;
pub use transport::{ListenAddr, SipConfig, TlsConfig, WebSocketConfig};

use crate::sip::SipUri;
use crate::transport::Transport;

/// A config file that cannot be used, with the key at fault and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// TOML syntax, a wrong type, a missing or unknown key; toml's message names the key and line.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub sip: SipConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub timers: TimerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub dialogs: DialogConfig,
    #[serde(default)]
    pub registrations: RegistrationConfig,
    /// `[cluster]`: absent, the node runs alone and always serves.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub vip: VipConfig,
    /// `[aws]`: the EC2 API for `vip.mode = "aws"` and `volume.mode = "aws-ebs"`.
    #[serde(default)]
    pub aws: AwsConfig,
    /// `[volume]`: the PBX data volume that follows the active role.
    #[serde(default)]
    pub volume: VolumeConfig,
    /// `[tls]`: the certificate of `tls:` listeners and how TLS backends are verified.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[websocket]`: allowed Origins and frame size of `ws:`/`wss:` listeners.
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// `[admin]`: metrics, HTTP API and dashboard.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[security]`: per-source rate limits, the ban list, user-agent rules.
    #[serde(default)]
    pub security: SecurityConfig,
    /// `[[backend]]` tables: the PBXs, in any order (priority decides).
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// 1..=255, unique in the cluster; also part of every branch and tag we generate.
    pub id: u32,
    pub name: String,
}

/// How initial requests pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Everything to the preferred (lowest priority number) backend; the next one only when it fails.
    #[default]
    ActiveStandby,
    /// Weighted round robin across the backends of the best priority; failures fall back serially.
    Balanced,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::ActiveStandby => "active-standby",
            Policy::Balanced => "balanced",
        })
    }
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub policy: Policy,
    /// Where else than the backends and registered phones sipfront may send a request (default: nowhere). Each
    /// entry is an address block (`"203.0.113.0/24"`, one address) or a host name; a host name listed here is the
    /// only kind sipfront ever resolves by DNS on the call path. A request whose next hop is outside this list,
    /// the backends and the phones' flows is refused 403 (`sipfront_relay_refused_total`).
    #[serde(default)]
    pub relay_allow: Vec<String>,
}

impl RoutingConfig {
    /// The address blocks of `relay_allow`.
    pub fn relay_nets(&self) -> Vec<Cidr> {
        self.relay_allow.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// The host names of `relay_allow` (entries that are not address blocks), lower-cased.
    pub fn relay_hosts(&self) -> Vec<String> {
        self.relay_allow.iter().filter(|e| e.parse::<Cidr>().is_err()).map(|e| e.trim().to_ascii_lowercase()).collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, e) in self.relay_allow.iter().enumerate() {
            let key = format!("routing.relay_allow[{i}]");
            let looks_like_address = e.contains('/') || e.trim().parse::<std::net::IpAddr>().is_ok();
            if looks_like_address {
                e.parse::<Cidr>().map_err(|r| invalid(&key, r))?;
            } else if e.trim().is_empty()
                || !e.trim().chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err(invalid(key, format!("`{e}` is neither an address block nor a host name")));
            }
        }
        Ok(())
    }
}

/// `[timers]`: RFC 3261 §17 timers. B, F, H, J, L and M are 64*T1, as in the RFC.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerConfig {
    /// RTT estimate; first retransmission interval on UDP.
    #[serde(default = "default_t1")]
    pub t1: ConfigDuration,
    /// Cap on the retransmission interval of non-INVITE requests and INVITE responses.
    #[serde(default = "default_t2")]
    pub t2: ConfigDuration,
    /// How long the network may hold a message (timers I and K on UDP).
    #[serde(default = "default_t4")]
    pub t4: ConfigDuration,
    /// Proxy INVITE timer: a call that stays unanswered this long is cancelled (RFC 3261 §16.8, > 3 min).
    #[serde(default = "default_timer_c")]
    pub timer_c: ConfigDuration,
    /// Client INVITE wait for response retransmissions after a non-2xx final on UDP (RFC: > 32 s).
    #[serde(default = "default_timer_d")]
    pub timer_d: ConfigDuration,
}

fn default_t1() -> ConfigDuration {
    ConfigDuration::millis(500)
}
fn default_t2() -> ConfigDuration {
    ConfigDuration::secs(4)
}
fn default_t4() -> ConfigDuration {
    ConfigDuration::secs(5)
}
fn default_timer_c() -> ConfigDuration {
    ConfigDuration::secs(180)
}
fn default_timer_d() -> ConfigDuration {
    ConfigDuration::secs(32)
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: default_t1(),
            t2: default_t2(),
            t4: default_t4(),
            timer_c: default_timer_c(),
            timer_d: default_timer_d(),
        }
    }
}

impl TimerConfig {
    /// 64*T1: timers B, F, H, J, L, M.
    pub fn t1x64(&self) -> Duration {
        self.t1.0 * 64
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `sipfront::proxy=debug,info` ... (RUST_LOG overrides it).
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `"text"` (one readable line per event) or `"json"` (one JSON object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: default_log_level(), format: LogFormat::Text }
    }
}

/// `[[backend]]`: one PBX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    /// `sip:IP:PORT;transport=udp|tcp|tls`. The host must be an IP address (no DNS on the hot path); a TLS
    /// backend's certificate must name that address.
    pub uri: String,
    /// Lower is preferred.
    #[serde(default = "one")]
    pub priority: u32,
    /// Share of new calls among backends of the same priority (policy `balanced`).
    #[serde(default = "one")]
    pub weight: u32,
    /// The cluster node this PBX runs on. When backends name their nodes, the active role (VIP and data volume)
    /// follows the active backend: the leader hands over to the node of the preferred healthy PBX.
    #[serde(default)]
    pub node: Option<u32>,
}

fn one() -> u32 {
    1
}

/// A backend's parsed URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTarget {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl BackendConfig {
    /// Parse the URI into an address and transport.
    pub fn target(&self) -> Result<BackendTarget, String> {
        let uri = SipUri::parse(self.uri.as_bytes())
            .ok_or_else(|| format!("`{}` is not a sip: URI like \"sip:10.0.0.5:5060;transport=udp\"", self.uri))?;
        let ip: IpAddr = uri.host_port.ip().ok_or_else(|| {
            format!("`{}`: the host must be an IP address (no DNS lookups on the call path)", self.uri)
        })?;
        let transport = match uri.transport() {
            None => Transport::Udp,
            Some(t) if t.eq_ignore_ascii_case(b"udp") => Transport::Udp,
            Some(t) if t.eq_ignore_ascii_case(b"tcp") => Transport::Tcp,
            Some(t) if t.eq_ignore_ascii_case(b"tls") => Transport::Tls,
            Some(t) => {
                return Err(format!(
                    "`{}`: transport `{}` is not supported (udp, tcp, tls)",
                    self.uri,
                    String::from_utf8_lossy(t)
                ))
            }
        };
        if uri.sips {
            return Err(format!("`{}`: sips: URIs are not supported; write sip:...;transport=tls", self.uri));
        }
        Ok(BackendTarget { addr: SocketAddr::new(ip, uri.host_port.port.unwrap_or(5060)), transport })
    }
}

/// Read a secret file: at least 16 bytes once surrounding whitespace is trimmed.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    read_secret_for("sip.secret_file", path)
}

/// Read a secret file named by config key `key` (errors name that key).
pub fn read_secret_for(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < 16 {
        return Err(invalid(key, format!("{} holds fewer than 16 bytes", path.display())));
    }
    Ok(trimmed.to_vec())
}

impl Config {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: "<config>".into(), message: e.to_string().trim_end().into() })?;
        cfg.validate()
    }

    /// Cross-field rules.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if !(1..=255).contains(&self.node.id) {
            return Err(invalid("node.id", format!("{} is out of range 1..=255", self.node.id)));
        }
        if self.node.name.trim().is_empty() {
            return Err(invalid("node.name", "must not be empty"));
        }
        if self.sip.listen.is_empty() {
            return Err(invalid("sip.listen", "needs at least one listener, like \"udp:0.0.0.0:5060\""));
        }
        for (i, l) in self.sip.listen.iter().enumerate() {
            if self.sip.listen[..i].contains(l) {
                return Err(invalid(format!("sip.listen[{i}]"), format!("`{l}` is listed twice")));
            }
        }
        let adv = self.sip.advertise.trim();
        if adv.is_empty() || adv.contains(|c: char| c.is_whitespace() || matches!(c, ';' | '<' | '>' | '@' | ',' | '"'))
        {
            return Err(invalid("sip.advertise", format!("`{adv}` is not a host name or IP address")));
        }
        if adv.contains(':') && adv.parse::<IpAddr>().is_err() {
            return Err(invalid("sip.advertise", "write the host only; the port comes from each listener"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.sip.max_message_size) {
            return Err(invalid("sip.max_message_size", "must be between 1024 and 16777216 bytes"));
        }
        if !(1..=255).contains(&self.sip.max_forwards) {
            return Err(invalid("sip.max_forwards", "must be between 1 and 255"));
        }
        if self.sip.tcp_idle_timeout.get() < Duration::from_secs(1) {
            return Err(invalid("sip.tcp_idle_timeout", "must be at least 1s"));
        }
        if self.sip.max_connections == 0 {
            return Err(invalid("sip.max_connections", "must be at least 1"));
        }
        if self.sip.max_connections_per_source == 0 {
            return Err(invalid("sip.max_connections_per_source", "must be at least 1"));
        }
        if self.sip.max_connections_per_source > self.sip.max_connections {
            return Err(invalid(
                "sip.max_connections_per_source",
                format!(
                    "{} is above sip.max_connections ({})",
                    self.sip.max_connections_per_source, self.sip.max_connections
                ),
            ));
        }
        if self.sip.message_timeout.get() < Duration::from_millis(100) {
            return Err(invalid("sip.message_timeout", "must be at least 100ms"));
        }
        let t = &self.timers;
        if t.t1.get() < Duration::from_millis(10) {
            return Err(invalid("timers.t1", "must be at least 10ms"));
        }
        if t.t2 < t.t1 {
            return Err(invalid("timers.t2", format!("{} is shorter than t1 ({})", t.t2, t.t1)));
        }
        if t.timer_c.get() < Duration::from_secs(1) {
            return Err(invalid("timers.timer_c", "must be at least 1s (RFC 3261: more than 3 minutes)"));
        }
        if let Some(path) = &self.sip.secret_file {
            read_secret(path)?;
        }
        self.tls.validate(self.sip.listen.iter().any(|l| matches!(l.transport, Transport::Tls | Transport::Wss)))?;
        self.websocket.validate()?;
        let h = &self.health;
        if h.interval.get() < Duration::from_millis(20) {
            return Err(invalid("health.interval", "must be at least 20ms"));
        }
        if h.timeout.get() < Duration::from_millis(10) {
            return Err(invalid("health.timeout", "must be at least 10ms"));
        }
        if h.down_after == 0 {
            return Err(invalid("health.down_after", "must be at least 1"));
        }
        if h.up_after == 0 {
            return Err(invalid("health.up_after", "must be at least 1"));
        }
        if h.ok_codes.is_empty() {
            return Err(invalid("health.ok_codes", "list at least one status code, like [200]"));
        }
        if let Some(c) = h.ok_codes.iter().find(|c| !(100..=699).contains(*c)) {
            return Err(invalid("health.ok_codes", format!("{c} is not a SIP status code")));
        }
        if self.sip.max_transactions == 0 {
            return Err(invalid("sip.max_transactions", "must be at least 1"));
        }
        // A per-source cap above the total one just means the total one applies first.
        if self.sip.max_transactions_per_source == 0 {
            return Err(invalid("sip.max_transactions_per_source", "must be at least 1"));
        }
        if self.dialogs.max_per_source == 0 {
            return Err(invalid("dialogs.max_per_source", "must be at least 1"));
        }
        if self.dialogs.ack_timeout.get().is_zero() {
            return Err(invalid("dialogs.ack_timeout", "must be above zero"));
        }
        if self.dialogs.max == 0 {
            return Err(invalid("dialogs.max", "must be at least 1"));
        }
        if self.dialogs.max_call_duration.get() < Duration::from_secs(60) {
            return Err(invalid("dialogs.max_call_duration", "must be at least 60s"));
        }
        if self.dialogs.idle_timeout.get() < Duration::from_secs(60) {
            return Err(invalid("dialogs.idle_timeout", "must be at least 60s"));
        }
        if self.registrations.max_flows == 0 {
            return Err(invalid("registrations.max_flows", "must be at least 1"));
        }
        if let Some(c) = &self.cluster {
            c.validate(self.node.id)?;
        }
        self.vip.validate()?;
        if self.vip.mode != VipMode::None && self.cluster.is_none() {
            return Err(invalid("vip.mode", "a VIP moves between cluster nodes: add a [cluster] section"));
        }
        self.aws.validate()?;
        self.volume.validate()?;
        self.routing.validate()?;
        self.admin.validate()?;
        self.security.validate()?;
        if self.volume.mode != VolumeMode::None && self.cluster.is_none() {
            return Err(invalid("volume.mode", "a volume moves between cluster nodes: add a [cluster] section"));
        }
        if self.backends.is_empty() {
            return Err(invalid("backend", "at least one [[backend]] is needed"));
        }
        for (i, b) in self.backends.iter().enumerate() {
            let key = |k: &str| format!("backend[{i}].{k}");
            if b.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if self.backends[..i].iter().any(|o| o.name == b.name) {
                return Err(invalid(key("name"), format!("`{}` is used by two backends", b.name)));
            }
            let target = b.target().map_err(|r| invalid(key("uri"), r))?;
            if self.backends[..i].iter().any(|o| o.target().ok() == Some(target)) {
                return Err(invalid(key("uri"), format!("`{}` is the same address as another backend", b.uri)));
            }
            if b.weight == 0 {
                return Err(invalid(key("weight"), "must be at least 1"));
            }
            if let Some(n) = b.node {
                let known = self.cluster.as_ref().is_some_and(|c| c.peers.iter().any(|p| p.id == n));
                if !known {
                    return Err(invalid(key("node"), format!("{n} is not in cluster.peers")));
                }
            }
            if !self.sip.listen.iter().any(|l| l.transport == target.transport) {
                return Err(invalid(
                    key("uri"),
                    format!("uses {} but sip.listen has no {} listener", target.transport, target.transport),
                ));
            }
        }
        Ok(self)
    }

    /// What is valid but probably not meant, judged against this host: a single node (no cluster, no VIP) told to
    /// listen on an address this host does not have. Binding still works (listeners use `IP_FREEBIND`, so a VIP
    /// managed by something else can come later), but until then no phone reaches it.
    pub fn warnings(&self) -> Vec<String> {
        if self.cluster.is_some() || self.vip.mode != VipMode::None {
            return Vec::new();
        }
        let mut out = Vec::new();
        for l in &self.sip.listen {
            let ip = l.addr.ip();
            let local = ip.is_unspecified() || std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok();
            if !local {
                out.push(format!(
                    "sip.listen {l}: {ip} is not an address of this host; nothing reaches it until it is added (a \
                     VIP is expected only with [cluster] or [vip])"
                ));
            }
        }
        out
    }

    /// The one-line summary printed by `check-config`.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.sip.listen.iter().map(|l| l.to_string()).collect();
        let mut s = format!(
            "ok: node {} ({}), listen {}, advertise {}, {} backend(s), policy {}",
            self.node.id,
            self.node.name,
            listen.join(" "),
            self.sip.advertise,
            self.backends.len(),
            self.routing.policy
        );
        if let Some(c) = &self.cluster {
            s.push_str(&format!(", cluster of {} (peers on {})", c.peers.len(), c.listen));
        }
        match (self.vip.mode, &self.vip.address) {
            (VipMode::Linux, Some(a)) => {
                s.push_str(&format!(", vip {a} on {}", self.vip.interface.as_deref().unwrap_or("?")))
            }
            (VipMode::Aws, Some(a)) => s.push_str(&format!(", vip {a} by aws {}", self.vip.aws.method)),
            _ => {}
        }
        match self.volume.mode {
            VolumeMode::None => {}
            VolumeMode::Local => s.push_str(&format!(
                ", volume {} at {}",
                self.volume.device.as_deref().unwrap_or(Path::new("?")).display(),
                self.volume.mount_point.as_deref().unwrap_or(Path::new("?")).display()
            )),
            VolumeMode::AwsEbs => s.push_str(&format!(
                ", volume {} at {}",
                self.volume.volume_id.as_deref().unwrap_or("?"),
                self.volume.mount_point.as_deref().unwrap_or(Path::new("?")).display()
            )),
        }
        s
    }
}

#[cfg(test)]
mod tests;

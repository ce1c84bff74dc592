//! `[cluster]` (the three nodes, their shared secret and Raft timing) and `[vip]` (the address phones use and how
//! it moves). Both are optional: without `[cluster]` the node runs alone and always serves. Checked by
//! `Config::validate`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, AwsVipConfig, AwsVipMethod, ConfigDuration, ConfigError};

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where this node accepts its peers' connections (its own entry in `peers`).
    pub listen: SocketAddr,
    /// Every voter, this node included (its id is `node.id`).
    pub peers: Vec<PeerConfig>,
    /// Shared by all nodes: every frame between them carries an HMAC keyed with it.
    pub secret_file: PathBuf,
    /// A follower that hears nothing from the leader for this long (the leader's lease) plus a random
    /// `election_timeout/2 .. election_timeout` starts an election; a leader that has not heard from a quorum
    /// for most of it gives the VIP up first.
    #[serde(default = "default_election_timeout")]
    pub election_timeout: ConfigDuration,
    /// The leader's heartbeat interval.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: ConfigDuration,
    /// The Raft vote, log and snapshot live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The cluster thread (Raft, heartbeats, the role loop) runs under `SCHED_RR` at this priority, as Corosync's
    /// does, so a loaded host delays no heartbeat (1..=99; `0`: the normal scheduler). Needs CAP_SYS_NICE (root,
    /// or the systemd unit's); without it sipfront warns and runs under the normal scheduler. Default 10.
    #[serde(default = "default_realtime_priority")]
    pub realtime_priority: u8,
    /// A snapshot is taken after this many log entries; older entries are dropped.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

/// One `peers` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u32,
    pub addr: SocketAddr,
}

fn default_election_timeout() -> ConfigDuration {
    ConfigDuration::millis(300)
}
fn default_heartbeat() -> ConfigDuration {
    ConfigDuration::millis(60)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/sipfront")
}
fn default_realtime_priority() -> u8 {
    10
}
fn default_snapshot_every() -> u64 {
    500
}

/// `[vip] mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VipMode {
    /// Nothing moves an address: something else routes phones to the leader (tests, a load balancer).
    #[default]
    None,
    /// The leader adds the address on this host and announces it with gratuitous ARP.
    Linux,
    /// The leader moves the address to itself through the EC2 API (`[vip.aws]`, `[aws]`), and for a
    /// secondary IP or a routed address also adds it on this host as `linux` does.
    Aws,
}

/// `[vip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    #[serde(default)]
    pub mode: VipMode,
    /// `"10.0.0.100/24"`: the address and the LAN's prefix length.
    #[serde(default)]
    pub address: Option<String>,
    /// The LAN interface phones reach the VIP through; gratuitous ARP leaves here.
    #[serde(default)]
    pub interface: Option<String>,
    /// Gratuitous ARP frames sent on taking the VIP.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Time between two of them (default 500ms: three frames span the neighbour `locktime` of 1 s).
    #[serde(default = "default_garp_interval")]
    pub garp_interval: ConfigDuration,
    /// The process-owned interface the address is put on (gone with the process, address included).
    #[serde(default = "default_vip_device")]
    pub device: String,
    /// `[vip.aws]`: how the address moves on AWS (mode `"aws"`).
    #[serde(default)]
    pub aws: AwsVipConfig,
}

impl Default for VipConfig {
    fn default() -> Self {
        VipConfig {
            mode: VipMode::None,
            address: None,
            interface: None,
            garp_count: default_garp_count(),
            garp_interval: default_garp_interval(),
            device: default_vip_device(),
            aws: AwsVipConfig::default(),
        }
    }
}

fn default_garp_count() -> u32 {
    3
}
/// Linux ignores an ARP that would change a neighbour entry updated less than `locktime` (1 s) ago: spread over
/// 1 s, at least one of three frames lands after it.
fn default_garp_interval() -> ConfigDuration {
    ConfigDuration::millis(500)
}
fn default_vip_device() -> String {
    "sfvip0".into()
}

impl VipConfig {
    /// The address and prefix length of `address`.
    pub fn parsed(&self) -> Result<(Ipv4Addr, u8), ConfigError> {
        let Some(a) = &self.address else {
            return Err(invalid("vip.address", "is required when vip.mode is not \"none\", like \"10.0.0.100/24\""));
        };
        let (ip, len) = a.split_once('/').unwrap_or((a.as_str(), "32"));
        let ip: Ipv4Addr =
            ip.trim().parse().map_err(|_| invalid("vip.address", format!("`{a}` is not an IPv4 address/prefix")))?;
        let len: u8 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| invalid("vip.address", format!("`{a}`: the prefix length must be 1..=32")))?;
        Ok((ip, len))
    }

    /// Whether the holder puts the address on this host: always for `linux`; on AWS for a secondary IP and a
    /// routed address, not for an Elastic IP (AWS translates it to a private address the host already has).
    pub fn needs_local_address(&self) -> bool {
        match self.mode {
            VipMode::None => false,
            VipMode::Linux => true,
            VipMode::Aws => self.aws.method != AwsVipMethod::ElasticIp,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == VipMode::None {
            return Ok(());
        }
        self.parsed()?;
        if self.mode == VipMode::Aws {
            if !cfg!(feature = "aws") {
                return Err(invalid("vip.mode", "\"aws\" needs sipfront built with the `aws` cargo feature"));
            }
            self.aws.validate()?;
        }
        if self.needs_local_address() && self.interface.as_deref().is_none_or(|i| i.trim().is_empty()) {
            return Err(invalid("vip.interface", "is required when the VIP is added on this host, like \"eth0\""));
        }
        if self.device.is_empty() || self.device.len() > 15 || self.device.contains(['/', ' ']) {
            return Err(invalid("vip.device", format!("`{}` is not an interface name (1-15 bytes)", self.device)));
        }
        if self.garp_count > 100 {
            return Err(invalid("vip.garp_count", "must be at most 100"));
        }
        Ok(())
    }
}

impl ClusterConfig {
    pub(super) fn validate(&self, node_id: u32) -> Result<(), ConfigError> {
        if self.peers.len() < 3 {
            return Err(invalid("cluster.peers", "list at least three nodes (this one included)"));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if self.peers[..i].iter().any(|o| o.id == p.id) {
                return Err(invalid(format!("cluster.peers[{i}].id"), format!("{} is used twice", p.id)));
            }
            if self.peers[..i].iter().any(|o| o.addr == p.addr) {
                return Err(invalid(format!("cluster.peers[{i}].addr"), format!("{} is used twice", p.addr)));
            }
        }
        let Some(me) = self.peers.iter().find(|p| p.id == node_id) else {
            return Err(invalid("cluster.peers", format!("no entry has this node's id ({node_id}, from node.id)")));
        };
        if me.addr.port() != self.listen.port() {
            return Err(invalid(
                "cluster.listen",
                format!("{} does not match this node's peers entry {}", self.listen, me.addr),
            ));
        }
        let (e, h) = (self.election_timeout.get(), self.heartbeat.get());
        if e < Duration::from_millis(50) {
            return Err(invalid("cluster.election_timeout", "must be at least 50ms"));
        }
        if h.is_zero() || h * 3 > e {
            return Err(invalid("cluster.heartbeat", format!("must be at most a third of election_timeout ({e:?})")));
        }
        if self.realtime_priority > 99 {
            return Err(invalid("cluster.realtime_priority", "must be 0 (off) to 99"));
        }
        if self.snapshot_every < 10 {
            return Err(invalid("cluster.snapshot_every", "must be at least 10"));
        }
        super::read_secret_for("cluster.secret_file", &self.secret_file)?;
        Ok(())
    }
}

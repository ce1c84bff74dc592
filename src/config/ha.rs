//! The tables that keep calls alive when a PBX fails: `[health]` (OPTIONS probes), `[dialogs]` (the dialog
//! table's limits) and `[registrations]` (the flow table's limit). Checked by `Config::validate`.

use serde::Deserialize;

use super::ConfigDuration;

/// `[health]`: SIP OPTIONS probes to every backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Probe backends at all. Off, every backend counts as up and only passive failover applies.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time between two probes of one backend.
    #[serde(default = "default_probe_interval")]
    pub interval: ConfigDuration,
    /// How long a probe waits for its answer.
    #[serde(default = "default_probe_timeout")]
    pub timeout: ConfigDuration,
    /// Consecutive failures (probes or real traffic) that mark a backend down.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Consecutive successful probes that mark it up again.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// Answers to OPTIONS that count as alive.
    #[serde(default = "default_ok_codes")]
    pub ok_codes: Vec<u16>,
}

fn yes() -> bool {
    true
}
fn default_probe_interval() -> ConfigDuration {
    ConfigDuration::millis(500)
}
fn default_probe_timeout() -> ConfigDuration {
    ConfigDuration::millis(500)
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_ok_codes() -> Vec<u16> {
    vec![200]
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            ok_codes: default_ok_codes(),
        }
    }
}

/// `[dialogs]`: the dialog table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogConfig {
    /// Most dialogs held at once; past it new INVITEs are answered 503 with Retry-After.
    #[serde(default = "default_max_dialogs")]
    pub max: usize,
    /// A call older than this is dropped from the table (its BYE never came).
    #[serde(default = "default_max_call_duration")]
    pub max_call_duration: ConfigDuration,
    /// A dialog without any request for this long is dropped (in-dialog requests still route by token).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Dialogs held at once for calls from one source IP address (backends are exempt); past it that source's new
    /// INVITEs get 503 with Retry-After while everyone else's go on. An office behind one NAT address needs its
    /// number of phones times the calls each holds.
    #[serde(default = "default_max_dialogs_per_source")]
    pub max_per_source: usize,
    /// A confirmed dialog whose 2xx no ACK followed within this is dropped (RFC 3261 timer H is 64*T1): a caller
    /// that never ACKs never holds a place in the table for long.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: ConfigDuration,
}

fn default_max_dialogs() -> usize {
    100_000
}
fn default_max_call_duration() -> ConfigDuration {
    ConfigDuration::secs(4 * 3600)
}
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::secs(2 * 3600)
}
fn default_max_dialogs_per_source() -> usize {
    2_000
}
fn default_ack_timeout() -> ConfigDuration {
    ConfigDuration::secs(32)
}

impl Default for DialogConfig {
    fn default() -> Self {
        DialogConfig {
            max: default_max_dialogs(),
            max_call_duration: default_max_call_duration(),
            idle_timeout: default_idle_timeout(),
            max_per_source: default_max_dialogs_per_source(),
            ack_timeout: default_ack_timeout(),
        }
    }
}

/// `[registrations]`: the flows of registered phones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Most registration flows held at once; past it new REGISTERs are answered 503 with Retry-After.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
}

fn default_max_flows() -> usize {
    100_000
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig { max_flows: default_max_flows() }
    }
}

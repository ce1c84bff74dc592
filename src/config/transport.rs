//! The transport sections of the config: `[sip]` (listeners, message and connection limits), `[tls]` (the
//! certificate of `tls:`/`wss:` listeners, how TLS backends are verified) and `[websocket]` (RFC 7118 listeners),
//! with their defaults and the rules `Config::validate` applies to them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigDuration, ConfigError};
use crate::transport::Transport;

/// A listener: `udp:IP:PORT`, `tcp:IP:PORT`, `tls:IP:PORT`, `ws:IP:PORT` or `wss:IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, addr) =
            s.split_once(':').ok_or_else(|| format!("`{s}`: expected TRANSPORT:IP:PORT, like \"udp:0.0.0.0:5060\""))?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return Err(format!("`{s}`: unknown transport `{proto}` (udp, tcp, tls, ws, wss)")),
        };
        let addr: SocketAddr =
            addr.parse().map_err(|_| format!("`{s}`: `{addr}` is not IP:PORT (IPv6 as [::1]:5060)"))?;
        Ok(ListenAddr { transport, addr })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_lower(), self.addr)
    }
}

/// `[sip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Listeners. Every request we forward leaves from the listener of its transport.
    pub listen: Vec<ListenAddr>,
    /// Host written into our Via and Record-Route (the VIP on a cluster). An IP address or a DNS name.
    pub advertise: String,
    /// Largest message accepted on any transport, in bytes; larger TCP messages close that connection.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// TCP connections with no traffic for this long are closed.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout: ConfigDuration,
    /// Accepted stream connections (TCP, TLS, WS, WSS together) held at most; one more is closed at once. Each
    /// is a file descriptor: keep it under the process's `LimitNOFILE`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Accepted stream connections held at most from one source IP address. An office behind NAT puts all its
    /// phones on one address, so this is high by default.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Once the first byte of a message has arrived on a TCP or TLS connection, the whole message must arrive
    /// within this, else the connection is closed (slowloris).
    #[serde(default = "default_message_timeout")]
    pub message_timeout: ConfigDuration,
    /// Proxy transactions alive at once (each ~10 KB while it waits on a backend); one more request is answered
    /// 503 with Retry-After. A silent PBX under a flood holds every INVITE for timer B (32 s): this is the bound.
    #[serde(default = "default_max_transactions")]
    pub max_transactions: usize,
    /// Proxy transactions alive at once from one source IP address (backends are exempt). An office of 200
    /// phones behind one NAT address uses a few each at most.
    #[serde(default = "default_max_transactions_per_source")]
    pub max_transactions_per_source: usize,
    /// Max-Forwards written into requests that arrive without one.
    #[serde(default = "default_max_forwards")]
    pub max_forwards: u32,
    /// A file holding the key that authenticates our Record-Route and Path tokens. Without it a random key is
    /// made at start, and calls set up before a restart can no longer be routed by token.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
}

fn default_max_message_size() -> usize {
    65_535
}
fn default_tcp_idle_timeout() -> ConfigDuration {
    ConfigDuration::secs(300)
}
fn default_max_forwards() -> u32 {
    70
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_source() -> usize {
    256
}
fn default_max_transactions() -> usize {
    20_000
}
fn default_max_transactions_per_source() -> usize {
    1_000
}
fn default_message_timeout() -> ConfigDuration {
    ConfigDuration::secs(10)
}

impl SipConfig {
    /// The transport layer's view of the connection caps and timeouts.
    pub fn stream_limits(&self) -> crate::transport::StreamLimits {
        crate::transport::StreamLimits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            idle: self.tcp_idle_timeout.get(),
            message_timeout: self.message_timeout.get(),
        }
    }
}

/// `[tls]`: certificate and key (PEM) for `tls:` listeners, re-read on SIGHUP; how TLS backends are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first. Needed by a `tls:` listener.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// CAs that sign the TLS backends' certificates; without it, the platform's CA store.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Check TLS backends' certificates (against their IP address). `false` is for lab PBXs with self-signed
    /// certificates only, and is logged as a warning at start.
    #[serde(default = "yes")]
    pub verify_backends: bool,
    /// A client that has not finished its TLS handshake this long after connecting is dropped.
    #[serde(default = "default_tls_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            ca_file: None,
            verify_backends: true,
            handshake_timeout: default_tls_handshake_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_tls_handshake_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}

impl TlsConfig {
    /// The transport layer's view of this section.
    pub fn settings(&self) -> crate::transport::TlsSettings {
        crate::transport::TlsSettings {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ca_file: self.ca_file.clone(),
            verify_backends: self.verify_backends,
            handshake_timeout: self.handshake_timeout.get(),
        }
    }

    pub(super) fn validate(&self, listens_tls: bool) -> Result<(), ConfigError> {
        if self.handshake_timeout.get() < Duration::from_millis(100) {
            return Err(invalid("tls.handshake_timeout", "must be at least 100ms"));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                crate::transport::tls::load_server_config(c, k).map_err(|e| tls_invalid(&e))?;
            }
            (None, None) if listens_tls => {
                return Err(invalid("tls.cert_file", "a tls: or wss: listener needs tls.cert_file and tls.key_file"))
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("tls.key_file", "is missing (tls.cert_file is set)")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "is missing (tls.key_file is set)")),
        }
        if self.ca_file.is_some() {
            crate::transport::tls::load_client_config(&self.settings()).map_err(|e| tls_invalid(&e))?;
        }
        Ok(())
    }
}

/// `[websocket]`: SIP over WebSocket (RFC 7118) listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Origins a browser may connect from, as sent (`https://app.example.com`); empty: any. A disallowed Origin
    /// gets HTTP 403; a client that sends no Origin (not a browser) is let in.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket frame accepted, in bytes (a SIP message is one frame; also capped by
    /// `sip.max_message_size`).
    #[serde(default = "default_ws_max_frame_size")]
    pub max_frame_size: usize,
    /// We send a WebSocket Ping this often and close a connection from which no frame came until the next one
    /// (dead browsers, lost NAT bindings); `"0s"`: no pings.
    #[serde(default = "default_ws_ping_interval")]
    pub ping_interval: ConfigDuration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            allowed_origins: Vec::new(),
            max_frame_size: default_ws_max_frame_size(),
            ping_interval: default_ws_ping_interval(),
        }
    }
}

fn default_ws_max_frame_size() -> usize {
    65_535
}
fn default_ws_ping_interval() -> ConfigDuration {
    ConfigDuration::secs(30)
}

impl WebSocketConfig {
    /// The transport layer's view of this section; the upgrade shares `[tls] handshake_timeout`.
    pub fn settings(&self, handshake_timeout: Duration) -> crate::transport::WsSettings {
        crate::transport::WsSettings {
            allowed_origins: self.allowed_origins.clone(),
            max_frame_size: self.max_frame_size,
            handshake_timeout,
            ping_interval: Some(self.ping_interval.get()).filter(|d| !d.is_zero()),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size < 512 {
            return Err(invalid("websocket.max_frame_size", "must be at least 512 bytes"));
        }
        let ping = self.ping_interval.get();
        if !ping.is_zero() && ping < Duration::from_millis(100) {
            return Err(invalid("websocket.ping_interval", "must be \"0s\" (off) or at least 100ms"));
        }
        if let Some(o) = self.allowed_origins.iter().find(|o| !o.contains("://")) {
            return Err(invalid("websocket.allowed_origins", format!("`{o}` is not an origin like \"https://host\"")));
        }
        Ok(())
    }
}

/// A TLS file problem as a config error: the key it names, and the rest of the message as the reason.
fn tls_invalid(e: &crate::transport::TlsError) -> ConfigError {
    let key = e.key();
    let msg = e.to_string();
    let reason = msg.strip_prefix(key).and_then(|r| r.strip_prefix(": ")).unwrap_or(&msg).to_string();
    invalid(key, reason)
}

//! `[admin]`: where the admin HTTP surface (metrics, JSON API, dashboard) listens, the token it requires, which
//! reads need that token, and the bounds on its connections, in total and per source (so a flood of them cannot
//! take the file descriptors the SIP listeners need, nor one client every place the operator needs).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, read_secret_for, ConfigDuration, ConfigError};

/// `[admin]`: the HTTP admin surface (metrics, API, dashboard). Absent: no admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `"127.0.0.1:9090"`: where the admin HTTP server listens. Every node of a cluster serves the whole
    /// cluster's view. An address other than loopback needs `token_file`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A file whose content (≥ 16 bytes) is the bearer token the mutating endpoints and the reads that list
    /// calls require. Without it they answer 401 to everyone.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// `true`: the reads that list calls or addresses (`/api/v1/dialogs`, `/api/v1/bans`) are served without
    /// the token, like the overview reads the dashboard polls. Actions always need it.
    #[serde(default)]
    pub public_reads: bool,
    /// Connections open at once; one more is closed at accept (and counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one source address (at most `max_connections`); one more is closed at
    /// accept (and counted), so one client cannot hold them all and lock the operator out. Loopback is not exempt:
    /// a local process (a stuck script, a compromised service) is a source like any other, and the share is what
    /// keeps a place free for the operator's own connection.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// A request's header must arrive whole within this; a kept-alive connection is closed after this long
    /// without a new request.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    /// A connection on which no byte moves and no request is being answered for this long is closed (a stalled
    /// body, a client that stopped reading its answer).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
}

fn default_max_connections() -> usize {
    64
}
fn default_max_connections_per_source() -> usize {
    8
}
fn default_header_timeout() -> ConfigDuration {
    ConfigDuration::secs(10)
}
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::secs(60)
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: None,
            token_file: None,
            public_reads: false,
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl AdminConfig {
    /// Rules of this section alone (the token file is read here, so a missing one is reported by key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.token_file {
            read_secret_for("admin.token_file", path)?;
            if self.listen.is_none() {
                return Err(invalid("admin.token_file", "is set but admin.listen is not"));
            }
        }
        if let (Some(addr), None) = (self.listen, &self.token_file) {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "admin.listen",
                    format!(
                        "{addr} is reachable from other hosts but admin.token_file is not set: anyone who reaches it \
                         could read the calls and the cluster's state; set admin.token_file, or listen on \
                         127.0.0.1"
                    ),
                ));
            }
        }
        if !(8..=100_000).contains(&self.max_connections) {
            return Err(invalid("admin.max_connections", "must be between 8 and 100000"));
        }
        if self.max_connections_per_source == 0 || self.max_connections_per_source > self.max_connections {
            return Err(invalid(
                "admin.max_connections_per_source",
                format!(
                    "must be between 1 and admin.max_connections ({}): it is one source's share of them",
                    self.max_connections
                ),
            ));
        }
        let h = self.header_timeout.get();
        if h < Duration::from_millis(100) || h > Duration::from_secs(300) {
            return Err(invalid("admin.header_timeout", "must be between 100ms and 5m"));
        }
        if self.idle_timeout.get() < h {
            return Err(invalid("admin.idle_timeout", format!("must be at least admin.header_timeout ({h:?})")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with_admin(admin: &str) -> Result<Config, String> {
        let text = format!(
            "[node]\nid = 1\nname = \"a\"\n[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\nadvertise = \"127.0.0.1\"\n\
             [[backend]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:5080\"\n[admin]\n{admin}\n"
        );
        Config::from_toml(&text).map_err(|e| e.to_string())
    }

    fn token_file() -> String {
        let p = std::env::temp_dir().join(format!("sipfront-admin-config-test-{}.token", std::process::id()));
        std::fs::write(&p, "admin-token-0123456789abcdef").unwrap();
        p.display().to_string()
    }

    #[test]
    fn a_reachable_admin_port_needs_a_token() {
        for addr in ["0.0.0.0:9090", "10.0.0.11:9090", "[::]:9090"] {
            let e = with_admin(&format!("listen = \"{addr}\"")).unwrap_err();
            assert!(e.starts_with("admin.listen: ") && e.contains("admin.token_file is not set"), "{addr}: {e}");
        }
        for addr in ["127.0.0.1:9090", "127.0.9.1:9090", "[::1]:9090"] {
            with_admin(&format!("listen = \"{addr}\"")).unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
        let t = token_file();
        let c = with_admin(&format!("listen = \"0.0.0.0:9090\"\ntoken_file = \"{t}\"\npublic_reads = true")).unwrap();
        assert!(c.admin.public_reads);
    }

    #[test]
    fn connection_bounds_have_defaults_and_limits() {
        let c = with_admin("listen = \"127.0.0.1:9090\"").unwrap();
        assert_eq!((c.admin.max_connections, c.admin.public_reads), (64, false));
        assert_eq!(c.admin.max_connections_per_source, 8);
        assert_eq!(c.admin.header_timeout.get(), std::time::Duration::from_secs(10));
        let cases = [
            ("max_connections = 0", "admin.max_connections"),
            ("max_connections_per_source = 0", "admin.max_connections_per_source: must be between 1"),
            (
                "max_connections_per_source = 65",
                "admin.max_connections_per_source: must be between 1 and admin.max_connections (64)",
            ),
            ("max_connections = 8\nmax_connections_per_source = 9", "admin.max_connections_per_source"),
            ("header_timeout = \"10ms\"", "admin.header_timeout"),
            ("header_timeout = \"20s\"\nidle_timeout = \"5s\"", "admin.idle_timeout"),
            ("public_read = true", "unknown field `public_read`"),
        ];
        for (extra, want) in cases {
            let e = with_admin(&format!("listen = \"127.0.0.1:9090\"\n{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}

//! `[admin]`: where the admin HTTP surface (metrics, JSON API, dashboard) listens and the token it requires.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, read_secret_for, ConfigError};

/// `[admin]`: the HTTP admin surface (metrics, API, dashboard). Absent: no admin listener.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `"127.0.0.1:9090"`: where the admin HTTP server listens. Every node of a cluster serves the whole
    /// cluster's view.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A file whose content (≥ 16 bytes) is the bearer token the mutating endpoints require. Without it they
    /// answer 401 to everyone.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
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
        Ok(())
    }
}

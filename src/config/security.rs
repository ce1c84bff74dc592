//! `[security]`: what protects the SIP listeners from strangers: per-source request rate limits, a temporary ban
//! list, user-agent drop rules.

use serde::Deserialize;

use super::ConfigError;

/// `[security]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {}

impl SecurityConfig {
    /// Rules of this section alone.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

//! The crate's top-level error: each module's error, gathered with `#[from]`, and where the failure came from
//! (client side, backend side, or our own), which becomes a metric label.

use crate::config::ConfigError;
use crate::transport::{TlsError, TransportError};

/// Which side of the proxy a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The phone or whoever sent us the request.
    Downstream,
    /// A PBX backend.
    Upstream,
    /// sipfront itself.
    Internal,
}

impl Origin {
    pub fn as_label(&self) -> &'static str {
        match self {
            Origin::Downstream => "client",
            Origin::Upstream => "backend",
            Origin::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The TLS certificate, key or CA file (named by its config key).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cluster could not start (data dir, peer port, secret, VIP interface).
    #[error("cluster: {0:#}")]
    Cluster(anyhow::Error),
}

impl Error {
    pub fn origin(&self) -> Origin {
        match self {
            Error::Config(_)
            | Error::Transport(TransportError::Bind { .. } | TransportError::NoCertificate(_))
            | Error::Tls(_)
            | Error::Cluster(_) => Origin::Internal,
            Error::Transport(_) => Origin::Upstream,
        }
    }
}

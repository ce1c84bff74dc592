//! Wires a node together from its config: bind the listeners, build the proxy, start reading, run the
//! background loops, and shut down on the token. The binary and the in-process tests both start here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::proxy::{Proxy, ProxyInbound, Settings};
use crate::routing::Routing;
use crate::transport::Transports;

/// Calls older than this are dropped from the dialog table (a BYE that never came).
const DIALOG_MAX_AGE: Duration = Duration::from_secs(4 * 3600);
/// How long a graceful shutdown waits for open transactions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running node.
pub struct Server {
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
}

impl Server {
    /// Bind every listener and start serving. Fails if a listener cannot be bound.
    pub async fn start(cfg: &Config, shutdown: CancellationToken) -> Result<Server, Error> {
        let transports =
            Transports::bind(&cfg.sip.listen, cfg.sip.max_message_size, cfg.sip.tcp_idle_timeout.get()).await?;
        let routing = Routing::new(&cfg.backends, cfg.routing.policy);
        let proxy = Proxy::new(Settings::from_config(cfg), transports.clone(), routing);
        transports.start(Arc::new(ProxyInbound(proxy.clone())), &shutdown);
        let reaper = proxy.clone();
        let token = shutdown.child_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let n = reaper.dialogs.reap(DIALOG_MAX_AGE);
                        if n > 0 {
                            tracing::info!(dialogs = n, "reaped dialogs past the maximum call duration");
                        }
                    }
                }
            }
        });
        for (t, a) in transports.local_addrs() {
            tracing::info!(transport = %t, addr = %a, "listening");
        }
        Ok(Server { proxy, shutdown })
    }

    /// The listener addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(crate::transport::Transport, std::net::SocketAddr)> {
        self.proxy.transports.local_addrs()
    }

    /// Stop reading, then wait (bounded) for open transactions to finish their answers.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.proxy.txs.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

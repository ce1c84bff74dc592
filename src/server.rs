//! Wires a node together from its config: bind the listeners, build the proxy, start reading, run the
//! background loops, and shut down on the token. The binary and the in-process tests both start here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::{Config, DialogConfig};
use crate::dialog::ReapLimits;
use crate::error::Error;
use crate::health::BackendState;
use crate::proxy::{Proxy, ProxyInbound, Settings};
use crate::routing::Routing;
use crate::transport::{TlsContext, Transport, Transports};

/// How often the reaper looks for expired dialogs, registrations and transaction tombstones.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long a graceful shutdown waits for open transactions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running node.
pub struct Server {
    pub proxy: Arc<Proxy>,
    /// This node's cluster membership, when `[cluster]` is configured.
    pub cluster: Option<Cluster>,
    shutdown: CancellationToken,
}

impl Server {
    /// Bind every listener and start serving. Fails if a listener cannot be bound.
    pub async fn start(cfg: &Config, shutdown: CancellationToken) -> Result<Server, Error> {
        let needs_tls = cfg.sip.listen.iter().any(|l| matches!(l.transport, Transport::Tls | Transport::Wss))
            || cfg.backends.iter().any(|b| b.target().is_ok_and(|t| t.transport == Transport::Tls));
        let tls = match needs_tls {
            true => Some(Arc::new(TlsContext::load(&cfg.tls.settings()).map_err(Error::Tls)?)),
            false => None,
        };
        let ws = cfg.websocket.settings(cfg.tls.handshake_timeout.get());
        let transports =
            Transports::bind(&cfg.sip.listen, cfg.sip.max_message_size, cfg.sip.stream_limits(), tls, ws).await?;
        let routing = Routing::new(&cfg.backends, cfg.routing.policy);
        let settings = Settings::from_config(cfg)?;
        let (proxy, cluster) = if cfg.cluster.is_some() {
            let (journal, events) = Cluster::journal();
            let proxy = Proxy::with_journal(settings, transports.clone(), routing, journal.clone());
            proxy.set_active(false);
            let cluster = Cluster::start(cfg, proxy.clone(), journal, events).await.map_err(Error::Cluster)?;
            (proxy, Some(cluster))
        } else {
            (Proxy::new(settings, transports.clone(), routing), None)
        };
        transports.start(Arc::new(ProxyInbound(proxy.clone())), &shutdown);
        crate::health::probe::start(proxy.clone(), shutdown.child_token());
        tokio::spawn(rehome_on_failure(proxy.clone(), shutdown.child_token()));
        tokio::spawn(reap(proxy.clone(), cfg.dialogs.clone(), shutdown.child_token()));
        tokio::spawn(crate::guard::sweeper(proxy.clone(), shutdown.child_token()));
        for (t, a) in transports.local_addrs() {
            tracing::info!(transport = %t, addr = %a, "listening");
        }
        Ok(Server { proxy, cluster, shutdown })
    }

    /// The listener addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(crate::transport::Transport, std::net::SocketAddr)> {
        self.proxy.transports.local_addrs()
    }

    /// Stop reading, then wait (bounded) for open transactions to finish their answers.
    pub async fn shutdown(self) {
        if let Some(c) = self.cluster {
            c.shutdown().await; // a leader hands the VIP and leadership over first
        }
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.proxy.txs.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// When a backend goes down, move its dialogs to the backend the policy picks among the live ones: in-dialog
/// requests of established calls then go to a surviving PBX. (Requests also re-home a dialog lazily when they
/// find its home down, so a lagging event loses nothing.)
async fn rehome_on_failure(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut events = proxy.health.subscribe();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if proxy.is_active() {
            let name = &proxy.routing.backends()[ev.backend].name;
            let kind = if ev.state == BackendState::Down { "backend-down" } else { "backend-up" };
            proxy.events.record(kind, name.clone(), None);
        }
        if ev.state != BackendState::Down || !proxy.is_active() {
            continue;
        }
        let Some(survivor) = proxy.backend_order().into_iter().find(|&b| b != ev.backend && proxy.health.is_up(b))
        else {
            tracing::warn!(backend = %proxy.routing.backends()[ev.backend].name, "backend down and no other backend up");
            continue;
        };
        let moved = proxy.dialogs.rehome(ev.backend, survivor);
        metrics::counter!(crate::metrics::DIALOGS_REHOMED).increment(moved as u64);
        tracing::info!(
            from = %proxy.routing.backends()[ev.backend].name,
            to = %proxy.routing.backends()[survivor].name,
            dialogs = moved,
            "dialogs re-homed"
        );
    }
}

/// Drop dialogs past the maximum call duration or silent too long, and expired registrations.
async fn reap(proxy: Arc<Proxy>, cfg: DialogConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    let mut round = 0u64;
    let t = proxy.settings.timers;
    let limits = ReapLimits {
        max_call: cfg.max_call_duration.get(),
        idle: cfg.idle_timeout.get(),
        terminated: t.t1x64(),
        early: t.timer_c + t.t1x64(),
        unacked: cfg.ack_timeout.get(),
    };
    // The load (live transactions and dialogs) at its highest since memory was last handed back to the OS.
    // Dialogs count too: a follower has no transactions, but its replicated dialog table shows the load; on
    // transactions alone it trimmed every minute under full load, holding malloc's arena locks against the
    // cluster thread.
    let load = |p: &Proxy| p.txs.active() + p.dialogs.len();
    let mut peak = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        proxy.txs.sweep(tokio::time::Instant::now());
        peak = peak.max(load(&proxy));
        round += 1;
        if round % 60 == 0 && load(&proxy) <= peak / 4 {
            // A load (a flood, a busy hour) is over: give the tables' spare capacity and the allocator's free
            // pages back, or RSS stays at its peak for good (1.3 GB after a flood, 47 MB once trimmed; see
            // crate::memory).
            proxy.txs.shrink();
            proxy.dialogs.shrink();
            proxy.flows.shrink();
            crate::memory::release_free_memory();
            peak = load(&proxy);
        }
        if round % 10 != 0 {
            continue; // the tables below are walked whole: every 10 s is plenty for limits in minutes
        }
        // Flows expire by the clock on every node; dialogs are reaped by the serving node, which replicates it.
        let dialogs = if proxy.is_active() { proxy.dialogs.reap(&limits) } else { 0 };
        let flows = proxy.flows.reap();
        if dialogs + flows > 0 {
            tracing::info!(dialogs, flows, "reaped expired dialogs and registrations");
        }
    }
}

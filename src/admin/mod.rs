//! The admin surface: one HTTP server (axum) on `[admin] listen` with the Prometheus exposition (`/metrics`),
//! liveness and readiness probes, a JSON API over the cluster, the backends, the dialogs and the failover
//! timeline, the operator actions (switchover, drain/undrain, behind a bearer token), and the built-in
//! dashboard at `/`, whose assets are compiled into the binary (no CDN).
//!
//! Every node serves the whole cluster's view: `/api/v1/cluster` and `/api/v1/events` ask every peer over the
//! cluster protocol, so the dashboard works from a standby too. Actions go to the leader the same way.
//! Nothing here is on the SIP path: a slow admin client costs the proxy nothing, and a flood of them is bounded
//! (serve.rs) so it cannot take the descriptors the SIP listeners need.
//!
//! Who may do what: `/metrics`, `/healthz`, `/readyz`, the dashboard and the overview reads it polls (cluster,
//! backends, stats, events: counts and health, no call) are open; reads that list calls or addresses
//! (`/api/v1/dialogs`, `/api/v1/bans`, and any future one listing registrations) go through
//! [`AdminState::authorize_read`]: the bearer token unless `admin.public_reads = true`; actions always need it.
//!
//! ```text
//!  mod.rs    AdminState, the router, the bearer-token checks, the embedded assets, start()
//!  serve.rs  the connections: a cap, header and idle timeouts
//!  api.rs    the JSON handlers
//!  bans.rs   the guard's ban list: list, lift one
//!  stats.rs  calls per second, sampled every second for the last ten minutes
//!  assets/   index.html, app.js, style.css
//! ```

mod api;
mod bans;
pub mod client;
mod serve;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::Shared;
use crate::config::Config;
use crate::proxy::Proxy;
use stats::Stats;

/// `sipfront demo` plugs in here: the state of its processes and the kill/start buttons.
pub trait DemoControl: Send + Sync {
    /// `{"nodes": [{"id", "running"}], "pbxs": [{"id", "name", "running"}]}`
    fn state(&self) -> serde_json::Value;
    /// `what` is `node` or `pbx`, `action` is `kill` or `start`.
    fn act(&self, what: &str, id: u32, action: &str) -> Result<String, String>;
}

/// What the handlers share.
pub struct AdminState {
    pub cfg: Config,
    pub proxy: Arc<Proxy>,
    pub cluster: Option<Arc<Shared>>,
    /// The process's Prometheus recorder, when one is installed (the binary installs it at start).
    pub prometheus: Option<PrometheusHandle>,
    /// The bearer token for actions and the reads that list calls; `None`: those are refused to everyone.
    token: Option<Vec<u8>>,
    /// `admin.public_reads`: the reads that list calls need no token.
    public_reads: bool,
    pub stats: Arc<Stats>,
    pub demo: Option<Arc<dyn DemoControl>>,
}

impl AdminState {
    pub fn new(
        cfg: &Config,
        proxy: Arc<Proxy>,
        cluster: Option<Arc<Shared>>,
        prometheus: Option<PrometheusHandle>,
    ) -> anyhow::Result<AdminState> {
        let token = match &cfg.admin.token_file {
            Some(p) => Some(crate::config::read_secret_for("admin.token_file", p)?),
            None => None,
        };
        let stats = Arc::new(Stats::new());
        let public_reads = cfg.admin.public_reads;
        Ok(AdminState { cfg: cfg.clone(), proxy, cluster, prometheus, token, public_reads, stats, demo: None })
    }

    /// With the demo's process controls.
    pub fn with_demo(mut self, demo: Arc<dyn DemoControl>) -> AdminState {
        self.demo = Some(demo);
        self
    }

    /// For a read that lists calls: `Ok` with `admin.public_reads`, else as [`AdminState::authorize`].
    fn authorize_read(&self, headers: &HeaderMap, peer: SocketAddr, what: &str) -> Result<(), Box<Response>> {
        if self.public_reads {
            return Ok(());
        }
        self.authorize(headers, peer, what)
    }

    /// `Ok` when the request carries the configured bearer token (compared in constant time).
    fn authorize(&self, headers: &HeaderMap, peer: SocketAddr, what: &str) -> Result<(), Box<Response>> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = match (&self.token, given) {
            (Some(t), Some(g)) => constant_time_eq(t, g.as_bytes()),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        metrics::counter!(crate::metrics::ADMIN_UNAUTHORIZED).increment(1);
        let why = match (&self.token, given) {
            (None, _) => "no admin.token_file is configured: actions and reads of calls are disabled",
            (_, None) => "missing bearer token",
            _ => "wrong bearer token",
        };
        tracing::warn!(%peer, action = what, reason = why, "admin: refused an unauthorized request");
        let body = Json(serde_json::json!({ "error": "missing or wrong bearer token" }));
        Err(Box::new((StatusCode::UNAUTHORIZED, body).into_response()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The dashboard's page and assets alone: a node serves them, and so does `sipfront demo` in front of its nodes.
pub fn assets_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
}

/// The router, for [`start`] and for tests.
pub fn router(state: Arc<AdminState>) -> Router {
    assets_router()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(api::readyz))
        .route("/api/v1/cluster", get(api::cluster))
        .route("/api/v1/backends", get(api::backends))
        .route("/api/v1/stats", get(api::stats))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/dialogs", get(api::dialogs))
        .route("/api/v1/bans", get(bans::list))
        .route("/api/v1/bans/{ip}", axum::routing::delete(bans::remove))
        .route("/api/v1/switchover", post(api::switchover))
        .route("/api/v1/backends/{name}/{action}", post(api::drain))
        .route("/api/v1/demo", get(api::demo_state))
        .route("/api/v1/demo/{what}/{id}/{action}", post(api::demo_act))
        .with_state(state)
}

async fn metrics_text(State(s): State<Arc<AdminState>>) -> Response {
    match &s.prometheus {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder in this process\n").into_response(),
    }
}

/// Bind `[admin] listen` and serve until `shutdown`; also starts the calls-per-second sampler. The bound
/// address (port 0 resolved).
pub async fn start(state: AdminState, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listen = state.cfg.admin.listen.ok_or_else(|| anyhow::anyhow!("admin.listen is not set"))?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("admin.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    if state.token.is_none() {
        tracing::warn!("admin: no admin.token_file, so switchover, drain and the dialog list are refused over HTTP");
    }
    let state = Arc::new(state);
    tokio::spawn(stats::sample(state.proxy.clone(), state.stats.clone(), shutdown.clone()));
    if let Some(h) = state.prometheus.clone() {
        tokio::spawn(upkeep(h, shutdown.clone()));
    }
    let limits = serve::Limits::from_config(&state.cfg.admin);
    tokio::spawn(serve::serve(listener, router(state), limits, shutdown));
    tracing::info!(%addr, "admin: dashboard, API and /metrics listening");
    Ok(addr)
}

/// Histograms are summarised on read; the recorder also needs draining now and then, or they grow.
async fn upkeep(h: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => h.run_upkeep(),
        }
    }
}

/// The peer of a request, for the log of refused ones.
pub(crate) type Peer = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

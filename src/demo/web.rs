//! The demo's dashboard server (`--listen`, default `127.0.9.1:8080`): the same page and assets a node serves,
//! the demo's own `GET /api/v1/demo` and `POST /api/v1/demo/{node|pbx}/{id}/{kill|start}`, and every other
//! `/api/v1/...`, `/metrics`, `/healthz` and `/readyz` request relayed (method, Authorization, Content-Type and
//! body) to the first node whose admin API answers, the leader first.
//!
//! The demo adds the cluster's admin token to relayed requests that carry none: whoever looks at a local demo can
//! press switchover or drain, and read the dialog list, without typing a token. That is fine on loopback, in a throw-away cluster, and is
//! why this server must not listen anywhere else (the demo refuses a non-loopback `--listen`).
//!
//! It owns the HTTP listener only; the processes are behind [`DemoControl`], the nodes behind their admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::client::{self, HttpAnswer};
use crate::admin::DemoControl;

/// What the handlers share.
pub struct Web {
    pub control: Arc<dyn DemoControl>,
    /// The serving leader's id, as the demo's leader watch last saw it.
    pub leader: watch::Receiver<Option<u64>>,
    /// Every node's id and admin API base (`http://IP:PORT`).
    pub nodes: Vec<(u64, String)>,
    /// The admin token, added to relayed requests that carry no Authorization.
    pub token: String,
}

pub fn router(web: Arc<Web>) -> Router {
    crate::admin::assets_router()
        .route("/api/v1/demo", get(demo_state))
        .route("/api/v1/demo/{what}/{id}/{action}", post(demo_act))
        .fallback(relay)
        .with_state(web)
}

/// Serve on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, web: Arc<Web>, shutdown: CancellationToken) {
    let r = axum::serve(listener, router(web)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = r {
        eprintln!("dashboard server stopped: {e}");
    }
}

async fn demo_state(State(w): State<Arc<Web>>) -> Json<serde_json::Value> {
    Json(w.control.state())
}

async fn demo_act(State(w): State<Arc<Web>>, Path((what, id, action)): Path<(String, u32, String)>) -> Response {
    match w.control.act(&what, id, &action) {
        Ok(msg) => Json(json!({ "message": msg })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// Paths a node's admin server answers.
fn relayed(path: &str) -> bool {
    path.starts_with("/api/") || ["/metrics", "/healthz", "/readyz"].contains(&path)
}

async fn relay(State(w): State<Arc<Web>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if !relayed(uri.path()) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let mut pass: Vec<(String, String)> = [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT]
        .iter()
        .filter_map(|h| Some((h.as_str().to_owned(), headers.get(h)?.to_str().ok()?.to_owned())))
        .collect();
    if !headers.contains_key(header::AUTHORIZATION) {
        pass.push(("Authorization".into(), format!("Bearer {}", w.token)));
    }
    let leader = *w.leader.borrow();
    let mut order: Vec<&(u64, String)> = w.nodes.iter().filter(|(id, _)| Some(*id) == leader).collect();
    order.extend(w.nodes.iter().filter(|(id, _)| Some(*id) != leader));
    let mut why = Vec::new();
    for (_, base) in order {
        match client::request(base, method.as_str(), path, &pass, &body).await {
            Ok(answer) => return respond(answer),
            Err(e) => why.push(e.to_string()),
        }
    }
    let msg = format!("no node's admin API answers: {}", why.join("; "));
    (StatusCode::BAD_GATEWAY, Json(json!({ "error": msg }))).into_response()
}

/// A node's answer, passed on (framing headers are the server's own).
fn respond(a: HttpAnswer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = (status, a.body).into_response();
    for (name, value) in a.headers {
        let skip = ["connection", "content-length", "transfer-encoding", "date"];
        if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(&value)) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

/// Bind the dashboard's address: loopback only (see the module comment on the injected token).
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, super::DemoError> {
    if !listen.ip().is_loopback() {
        return Err(super::DemoError::NotLoopback { listen });
    }
    tokio::net::TcpListener::bind(listen).await.map_err(|source| super::DemoError::Bind {
        what: "dashboard",
        addr: listen,
        source,
    })
}

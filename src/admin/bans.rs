//! `/api/v1/bans`: the guard's ban list ([`crate::guard`]) and lifting one ban. Both need the bearer token (the
//! list names addresses). Bans are replicated, so every node lists the same ones; a ban is lifted on the serving
//! node, which replicates the lift (a standby says so and changes nothing).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{AdminState, Peer};

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": msg.to_string() }))).into_response()
}

/// `GET /api/v1/bans`: `{"count": N, "bans": [{"ip", "reason", "remaining_s"}], "dropped": {REASON: N}}`, bans
/// longest-lasting first, and this node's drops since it started by reason.
pub async fn list(State(s): State<Arc<AdminState>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize_read(&headers, peer.0, "bans") {
        return *r;
    }
    let bans: Vec<_> = s
        .proxy
        .guard
        .bans()
        .into_iter()
        .map(|b| json!({ "ip": b.ip, "reason": b.reason.as_str(), "remaining_s": b.remaining.as_secs() }))
        .collect();
    let dropped: serde_json::Map<String, serde_json::Value> = crate::guard::DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), s.proxy.guard.dropped(*r).into()))
        .collect();
    Json(json!({ "count": bans.len(), "bans": bans, "dropped": dropped })).into_response()
}

/// `DELETE /api/v1/bans/{ip}`: lift the ban on that address (an IPv6 address lifts its /64's).
pub async fn remove(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> Response {
    if let Err(r) = s.authorize(&headers, peer.0, "unban") {
        return *r;
    }
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return error(StatusCode::BAD_REQUEST, format!("`{ip}` is not an IP address"));
    };
    if s.cfg.cluster.is_some() && !s.proxy.is_active() {
        return error(
            StatusCode::CONFLICT,
            "this node is a standby: lift the ban on the active node, which replicates it",
        );
    }
    if !s.proxy.guard.unban(ip) {
        return error(StatusCode::NOT_FOUND, format!("{ip} is not banned"));
    }
    tracing::info!(peer = %peer.0, %ip, "admin: ban lifted");
    Json(json!({ "ip": ip, "banned": false })).into_response()
}

//! The JSON handlers of `/api/v1/...` and `/readyz`. Shapes are documented in the README ("Admin API") and
//! relied on by the dashboard (`assets/app.js`) and `sipfront status`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, Peer};
use crate::cluster::{ctl, NodeStatus};
use crate::events::FailoverEvent;

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": msg.to_string() }))).into_response()
}

pub async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if s.proxy.is_active() {
        (StatusCode::OK, "serving\n").into_response()
    } else {
        let why = s.cluster.as_ref().and_then(|c| c.status().why_not).unwrap_or_else(|| "standby".into());
        (StatusCode::SERVICE_UNAVAILABLE, format!("not serving: {why}\n")).into_response()
    }
}

/// Every node's status as the cluster protocol gives it (a standalone node: itself only).
async fn all_statuses(s: &AdminState) -> Vec<(u64, Result<NodeStatus, String>)> {
    match (&s.cluster, s.cfg.cluster.is_some()) {
        (Some(_), true) => match ctl::statuses(&s.cfg).await {
            Ok(all) => all,
            Err(e) => vec![(u64::from(s.cfg.node.id), Err(e.to_string()))],
        },
        _ => Vec::new(),
    }
}

/// One node as JSON: the whole status, plus `reachable` and `error`.
fn node_json(id: u64, r: &Result<NodeStatus, String>) -> Value {
    match r {
        Ok(st) => {
            let mut v = serde_json::to_value(st).unwrap_or_else(|_| json!({}));
            if let Some(o) = v.as_object_mut() {
                o.remove("events");
                o.insert("reachable".into(), json!(true));
                o.insert("error".into(), Value::Null);
            }
            v
        }
        Err(e) => json!({ "id": id, "name": format!("node {id}"), "reachable": false, "error": e }),
    }
}

pub async fn cluster(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let me = u64::from(s.cfg.node.id);
    let all = all_statuses(&s).await;
    if all.is_empty() {
        // Standalone: this node is the whole "cluster", always serving.
        let node = json!({
            "id": me, "name": s.cfg.node.name, "reachable": true, "error": null, "role": "standalone",
            "term": 0, "leader": me, "vip_held": false, "serving": s.proxy.is_active(), "why_not": null,
            "dialogs": s.proxy.dialogs.len(), "flows": s.proxy.flows.len(), "volume": null,
            "applied": null, "last_log": null, "apply_lag_ms": null,
        });
        return Json(json!({
            "self": me, "self_name": s.cfg.node.name, "vip": null, "leader": me, "vip_holder": null, "nodes": [node],
            "actions_enabled": s.token.is_some(),
        }));
    }
    let leader = ctl::leader_of(&all);
    let holder = all.iter().filter_map(|(_, r)| r.as_ref().ok()).find(|st| st.vip_held).map(|st| st.id);
    let vip = s.cfg.vip.address.clone().filter(|_| s.cfg.vip.mode != crate::config::VipMode::None);
    let nodes: Vec<Value> = all.iter().map(|(id, r)| node_json(*id, r)).collect();
    Json(json!({
        "self": me, "self_name": s.cfg.node.name, "vip": vip, "leader": leader, "vip_holder": holder, "nodes": nodes,
        "actions_enabled": s.token.is_some(),
    }))
}

pub async fn backends(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let p = &s.proxy;
    let snap = p.health.snapshot();
    let per_home = p.dialogs.count_by_home(p.routing.backends().len());
    let cfg_uri = |name: &str| s.cfg.backends.iter().find(|b| b.name == name).map(|b| b.uri.clone());
    let list: Vec<Value> = p
        .routing
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let h = snap.iter().find(|h| h.name == b.name);
            json!({
                "name": b.name,
                "uri": cfg_uri(&b.name),
                "priority": b.priority,
                "node": b.node,
                "state": if p.health.is_up(i) { "up" } else { "down" },
                "drained": p.health.is_drained(i),
                "rtt_ms": h.and_then(|h| h.last_rtt).map(|d| d.as_secs_f64() * 1000.0),
                "last_change_s_ago": h.and_then(|h| h.last_change).map(|t| t.elapsed().as_secs_f64()),
                "last_failure": h.and_then(|h| h.last_failure.clone()),
                "dialogs": per_home.get(i).copied().unwrap_or(0),
            })
        })
        .collect();
    Json(json!({ "backends": list }))
}

pub async fn stats(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let cps: Vec<Value> = s.stats.samples().into_iter().map(|(t, v)| json!([t, v])).collect();
    Json(json!({
        "node": s.cfg.node.id,
        "active_calls": s.proxy.dialogs.len(),
        "calls_total": s.proxy.dialogs.calls_total(),
        "cps": cps,
    }))
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

pub async fn events(State(s): State<Arc<AdminState>>, Query(q): Query<Limit>) -> Json<Value> {
    let n = q.limit.unwrap_or(50).min(crate::events::KEEP * 3);
    let all = all_statuses(&s).await;
    let mut evs: Vec<FailoverEvent> = s.proxy.events.recent(n);
    for st in all.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        evs.extend(st.events.iter().cloned());
    }
    Json(json!({ "events": crate::events::merge(evs, n) }))
}

/// The dialog table lists calls (Call-IDs, often with phone numbers or addresses in them): token, unless
/// `admin.public_reads`.
pub async fn dialogs(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = s.authorize_read(&headers, peer.0, "dialogs") {
        return *r;
    }
    let n = q.limit.unwrap_or(100).min(10_000);
    let names: Vec<&str> = s.proxy.routing.backends().iter().map(|b| b.name.as_str()).collect();
    let all = s.proxy.dialogs.export();
    let list: Vec<Value> = all
        .iter()
        .take(n)
        .map(|d| {
            json!({
                "id": String::from_utf8_lossy(&d.id),
                "backend": names.get(usize::from(d.home)).copied(),
                "state": if d.terminated { "terminated" } else { "confirmed" },
                "age_s": d.age,
                "quiet_s": d.quiet,
            })
        })
        .collect();
    Json(json!({ "count": s.proxy.dialogs.len(), "dialogs": list })).into_response()
}

#[derive(Deserialize)]
pub struct SwitchoverBody {
    to: u64,
}

pub async fn switchover(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = s.authorize(&headers, peer.0, "switchover") {
        return *r;
    }
    let Ok(body) = serde_json::from_slice::<SwitchoverBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body must be {\"to\": NODE_ID}");
    };
    if s.cfg.cluster.is_none() {
        return error(StatusCode::CONFLICT, "this node runs alone: there is nothing to switch over to");
    }
    tracing::info!(peer = %peer.0, to = body.to, "admin: switchover requested");
    match ctl::switchover(&s.cfg, body.to).await {
        Ok(msg) => Json(json!({ "message": msg })).into_response(),
        Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

pub async fn drain(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let drained = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        _ => return error(StatusCode::NOT_FOUND, format!("no action `{action}`: drain or undrain")),
    };
    if let Err(r) = s.authorize(&headers, peer.0, &action) {
        return *r;
    }
    let Some(index) = s.proxy.routing.backends().iter().position(|b| b.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no backend named `{name}`"));
    };
    tracing::info!(peer = %peer.0, backend = %name, drained, "admin: {action} requested");
    let r = if s.cfg.cluster.is_some() {
        ctl::drain(&s.cfg, &name, drained).await.map_err(|e| format!("{e:#}"))
    } else {
        s.proxy.health.set_drained(index, drained);
        Ok(String::new())
    };
    match r {
        Ok(_) => Json(json!({ "name": name, "drained": drained })).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

pub async fn demo_state(State(s): State<Arc<AdminState>>) -> Response {
    match &s.demo {
        Some(d) => Json(d.state()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not a demo"),
    }
}

pub async fn demo_act(
    State(s): State<Arc<AdminState>>,
    Path((what, id, action)): Path<(String, u32, String)>,
) -> Response {
    let Some(d) = &s.demo else { return error(StatusCode::NOT_FOUND, "not a demo") };
    match d.act(&what, id, &action) {
        Ok(msg) => Json(json!({ "message": msg })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

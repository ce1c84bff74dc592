//! The operator's side: `sipfront status` asks every node for its view, `sipfront switchover --to ID` finds the
//! leader and asks it to hand over. Both speak the peer protocol with the cluster secret from the node's config
//! file, so only someone who can read that secret can move the VIP.

use std::time::Duration;

use super::{FrameKey, NodeStatus, PeerClient, Request, Response};
use crate::config::Config;

const ASK_TIMEOUT: Duration = Duration::from_secs(2);

fn key(cfg: &Config) -> anyhow::Result<(FrameKey, Vec<(u64, std::net::SocketAddr)>)> {
    let c = cfg.cluster.as_ref().ok_or_else(|| anyhow::anyhow!("the config has no [cluster] section"))?;
    let secret = crate::config::read_secret_for("cluster.secret_file", &c.secret_file)?;
    Ok((FrameKey::from_secret(&secret), c.peers.iter().map(|p| (u64::from(p.id), p.addr)).collect()))
}

/// Every node's status, or why it could not be read.
pub async fn statuses(cfg: &Config) -> anyhow::Result<Vec<(u64, Result<NodeStatus, String>)>> {
    let (key, peers) = key(cfg)?;
    let mut asks = Vec::new();
    for (id, addr) in peers {
        let key = key.clone();
        asks.push(async move {
            let mut c = PeerClient::new(id, addr, key);
            let r = match c.call(&Request::Status, ASK_TIMEOUT).await {
                Ok(Response::Status(s)) => Ok(*s),
                Ok(_) => Err("unexpected answer".to_string()),
                Err(e) => Err(e.to_string()),
            };
            (id, r)
        });
    }
    Ok(futures_util::future::join_all(asks).await)
}

/// Ask the leader to hand leadership (and the VIP) to node `to`.
pub async fn switchover(cfg: &Config, to: u64) -> anyhow::Result<String> {
    let (key, peers) = key(cfg)?;
    let all = statuses(cfg).await?;
    let leader = leader_of(&all).ok_or_else(|| anyhow::anyhow!("no node reports itself leader (is a quorum up?)"))?;
    let addr = peers.iter().find(|(id, _)| *id == leader).map(|(_, a)| *a).expect("leader is a peer");
    let mut c = PeerClient::new(leader, addr, key);
    match c.call(&Request::Switchover { to }, Duration::from_secs(10)).await {
        Ok(Response::Switchover(Ok(msg))) => Ok(msg),
        Ok(Response::Switchover(Err(e))) => Err(anyhow::anyhow!("{e}")),
        Ok(_) => Err(anyhow::anyhow!("unexpected answer from node {leader}")),
        Err(e) => Err(anyhow::anyhow!("node {leader}: {e}")),
    }
}

/// Ask the leader to drain (or undrain) a backend.
pub async fn drain(cfg: &Config, backend: &str, drained: bool) -> anyhow::Result<String> {
    let (key, peers) = key(cfg)?;
    let all = statuses(cfg).await?;
    let leader = leader_of(&all).ok_or_else(|| anyhow::anyhow!("no node reports itself leader (is a quorum up?)"))?;
    let addr = peers.iter().find(|(id, _)| *id == leader).map(|(_, a)| *a).expect("leader is a peer");
    let mut c = PeerClient::new(leader, addr, key);
    match c.call(&Request::Drain { backend: backend.to_owned(), drained }, ASK_TIMEOUT).await {
        Ok(Response::Drain(Ok(msg))) => Ok(msg),
        Ok(Response::Drain(Err(e))) => Err(anyhow::anyhow!("{e}")),
        Ok(_) => Err(anyhow::anyhow!("unexpected answer from node {leader}")),
        Err(e) => Err(anyhow::anyhow!("node {leader}: {e}")),
    }
}

/// The node that reports itself leader, if one does.
pub fn leader_of(all: &[(u64, Result<NodeStatus, String>)]) -> Option<u64> {
    all.iter().filter_map(|(_, s)| s.as_ref().ok()).find(|s| s.role == "leader" && s.leader == Some(s.id)).map(|s| s.id)
}

/// The status table `sipfront status` prints.
pub fn render(all: &[(u64, Result<NodeStatus, String>)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<4} {:<12} {:<10} {:>6} {:>7} {:<5} {:>8} {:>8} {:>8} {:>8}  note",
        "id", "name", "role", "term", "leader", "vip", "log", "applied", "dialogs", "flows"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (id, s) in all {
        match s {
            Ok(s) => {
                let mut note = s.why_not.clone().unwrap_or_else(|| "serving".into());
                if let (Some(ms), true) = (s.apply_lag_ms, s.role != "leader") {
                    let _ = write!(note, "; applies {ms} ms after the leader");
                }
                if !s.lag.is_empty() {
                    let lag: Vec<String> = s.lag.iter().map(|(p, l)| format!("{p}:{}", opt(*l))).collect();
                    let _ = write!(note, "; lag {}", lag.join(" "));
                }
                // A standby's volume is news only when it is not simply released.
                if let Some(v) = s.volume.as_ref().filter(|v| s.vip_held || !v.ends_with(" released")) {
                    let _ = write!(note, "; volume {v}");
                }
                let _ = writeln!(
                    out,
                    "{:<4} {:<12} {:<10} {:>6} {:>7} {:<5} {:>8} {:>8} {:>8} {:>8}  {note}",
                    s.id,
                    s.name,
                    s.role,
                    s.term,
                    opt(s.leader),
                    if s.vip_held { "held" } else { "-" },
                    opt(s.last_log),
                    opt(s.applied),
                    s.dialogs,
                    s.flows
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{id:<4} unreachable: {e}");
            }
        }
    }
    out
}

//! Leadership is the active role is the VIP. Every 5 ms (and on every Raft metrics change) the role loop asks:
//! is this node the leader, has a quorum acknowledged a heartbeat it sent less than `hold_lease` (3/4 of the
//! election timeout) ago, has it applied everything up to its own term's first entry, and is no switchover
//! under way? Then it holds the VIP and serves; otherwise it stops serving first and releases the VIP.
//!
//! A follower needs the leader silent for a whole election timeout before it may vote for anyone else, so the
//! old leader has let go before a new one can exist. A switchover releases first and transfers after.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::failover::{Claim, Vip};
use crate::metrics as m;

/// How often the role is re-evaluated without a metrics change: a leader cut off lets go at most this long
/// after its hold lease ends.
pub(super) const TICK: Duration = Duration::from_millis(5);
/// A VIP that could not be taken is tried again this soon, then twice as late each time, up to the last.
const VIP_FIRST_RETRY: Duration = Duration::from_millis(200);
const VIP_LAST_RETRY: Duration = Duration::from_secs(10);
/// How often "no leader" is logged while it lasts.
const NO_LEADER_LOG_EVERY: Duration = Duration::from_secs(5);

/// Why this node should not serve now, or `None` when it should.
fn hold_verdict(shared: &Shared, m: &openraft::RaftMetrics<super::TypeConfig>, now: Instant) -> Option<String> {
    if m.state != ServerState::Leader || m.current_leader != Some(shared.id) {
        return Some(match m.current_leader {
            Some(l) => format!("follower of node {l}"),
            None => "no leader: a quorum of nodes is not reachable".into(),
        });
    }
    if let Some(until) = *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) {
        if now < until {
            return Some("handing leadership over (switchover)".into());
        }
    }
    // The age is computed here, from the instant: the metrics are not re-sent while nothing changes, and a
    // partitioned leader sees no change at all.
    match m.last_quorum_acked.as_ref().map(|t| openraft::Instant::elapsed(&(*t).into_inner())) {
        Some(age) if age < shared.hold_lease => {}
        // A fixed text (not the age): it is logged again only when it changes, or every 5 s.
        Some(_) => {
            let ms = shared.hold_lease.as_millis();
            return Some(format!("leader without a quorum: no acknowledgement for {ms} ms or more"));
        }
        None => return Some("leader waiting for a quorum's first acknowledgement".into()),
    }
    let caught_up = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
    if !caught_up {
        return Some("leader applying the log before serving".into());
    }
    None
}

/// The role loop: take or release the VIP and the serving role as [`hold_verdict`] says, until `stop`.
pub async fn run(shared: std::sync::Arc<Shared>, mut vip: Vip, stop: CancellationToken) {
    let volume = shared.volume.get().cloned();
    let events = shared.proxy.events.clone();
    // The leader this node last saw, and when it last saw another node serve (for the gap a takeover closes).
    let mut seen_leader: Option<u64> = None;
    let mut other_leader_seen: Option<Instant> = None;
    let mut placement = super::placement::Placement::new();
    vip.remove_stale();
    let mut watch = shared.raft.metrics();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = false;
    let mut last_log: Option<(String, Instant)> = None;
    // After a failed acquire (an EC2 API refusing or down): when to try again, the wait after that, and why.
    let mut vip_retry: Option<(Instant, Duration, String)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            r = watch.changed() => if r.is_err() { break },
        }
        let mm = watch.borrow_watched().clone();
        let now = Instant::now();
        if mm.current_leader != seen_leader {
            if let Some(l) = mm.current_leader {
                events.record("leader-changed", format!("node {l} leads, term {}", mm.current_term), None);
            }
            seen_leader = mm.current_leader;
        }
        if mm.current_leader.is_some_and(|l| l != shared.id) {
            other_leader_seen = Some(now);
        }
        let why_not = hold_verdict(&shared, &mm, now);
        metrics::gauge!(m::CLUSTER_TERM).set(mm.current_term as f64);
        metrics::gauge!(m::CLUSTER_LEADER).set(mm.current_leader.unwrap_or(0) as f64);
        metrics::gauge!(m::CLUSTER_ROLE).set(if mm.state == ServerState::Leader { 1.0 } else { 0.0 });
        if let Some(r) = &mm.replication {
            let last = mm.last_log_index.unwrap_or(0);
            for (id, matched) in r.iter().filter(|(id, _)| **id != shared.id) {
                let behind = matched.as_ref().map_or(last, |l| last.saturating_sub(l.index));
                metrics::gauge!(m::CLUSTER_LAG_ENTRIES, "peer" => id.to_string()).set(behind as f64);
            }
        }
        match (&why_not, held) {
            (None, false) if vip_retry.as_ref().is_some_and(|(at, _, _)| now < *at) => {}
            (None, false) => {
                let t0 = Instant::now();
                let claim = claim(&shared, mm.current_term);
                match vip.acquire(&claim).await {
                    Ok(()) => {
                        vip_retry = None;
                        let gap = other_leader_seen.map(|t| now.duration_since(t));
                        events.record("vip-acquired", format!("term {}", mm.current_term), gap);
                        if let Some(v) = &volume {
                            v.own(claim);
                        }
                        held = true;
                        shared.vip_held.store(true, Ordering::Relaxed);
                        shared.proxy.dialogs.refresh_activity();
                        shared.proxy.set_active(true);
                        metrics::gauge!(m::VIP_HELD).set(1.0);
                        metrics::counter!(m::VIP_CHANGES, "action" => "acquire").increment(1);
                        tracing::info!(
                            term = mm.current_term,
                            dialogs = shared.proxy.dialogs.len(),
                            took_ms = t0.elapsed().as_millis() as u64,
                            "leader: took the VIP, serving"
                        );
                    }
                    Err(e) => {
                        let wait = vip_retry.as_ref().map_or(VIP_FIRST_RETRY, |(_, w, _)| (*w * 2).min(VIP_LAST_RETRY));
                        tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "leader cannot take the VIP");
                        vip_retry =
                            Some((Instant::now() + wait, wait, format!("leader, but cannot take the VIP: {e}")));
                    }
                }
            }
            (Some(why), true) => {
                shared.proxy.set_active(false);
                if let Some(v) = &volume {
                    v.release();
                }
                let r = vip.release().await;
                held = false;
                shared.vip_held.store(false, Ordering::Relaxed);
                metrics::gauge!(m::VIP_HELD).set(0.0);
                metrics::counter!(m::VIP_CHANGES, "action" => "release").increment(1);
                events.record("vip-released", why.clone(), None);
                match r {
                    Ok(()) => tracing::warn!(reason = %why, term = mm.current_term, "released the VIP, not serving"),
                    Err(e) => tracing::error!(reason = %why, error = %e, "cannot release the VIP"),
                }
            }
            _ => {}
        }
        if held && why_not.is_none() {
            let want = super::placement::preferred_node(&shared);
            if let Some(to) = placement.check(want, shared.id, now) {
                let backend_node = to;
                tracing::info!(
                    to = backend_node,
                    "the preferred backend runs on node {backend_node}: handing the role over"
                );
                let s = shared.clone();
                tokio::spawn(async move {
                    match switchover(&s, backend_node).await {
                        Ok(msg) => tracing::info!("placement: {msg}"),
                        Err(e) => tracing::warn!("placement: handover to node {backend_node} failed: {e}"),
                    }
                });
            }
        }
        if why_not.is_some() {
            vip_retry = None;
        }
        let shown = why_not.clone().or_else(|| vip_retry.as_ref().map(|(_, _, why)| why.clone()));
        *shared.why_not.lock().unwrap_or_else(|p| p.into_inner()) = shown;
        // Anything but the normal standby state is logged, and repeated every 5 s while it lasts (no quorum).
        if let Some(why) = why_not.filter(|w| !w.starts_with("follower of")) {
            let due = last_log.as_ref().is_none_or(|(w, at)| *w != why || at.elapsed() >= NO_LEADER_LOG_EVERY);
            if due {
                tracing::warn!(term = mm.current_term, state = ?mm.state, "{why}");
                last_log = Some((why, now));
            }
        } else {
            last_log = None;
        }
    }
    if held {
        shared.proxy.set_active(false);
        if let Err(e) = vip.release().await {
            tracing::error!(error = %e, "cannot release the VIP at shutdown");
        }
        shared.vip_held.store(false, Ordering::Relaxed);
        metrics::gauge!(m::VIP_HELD).set(0.0);
        tracing::info!("released the VIP at shutdown");
    }
    if let Some(v) = &volume {
        v.release();
        if !v.wait_released(shared.volume_release_within).await {
            tracing::error!(volume = %v.render(), "shutdown: the volume is not released");
        }
    }
}

/// The claim of this node as leader of `term`: valid while Raft still says so. A peer that has not
/// acknowledged this leader yet counts as silent since the claim was made.
fn claim(shared: &std::sync::Arc<Shared>, term: u64) -> Claim {
    let node = shared.id as u32;
    let (check, silence) = (shared.raft.metrics(), shared.raft.metrics());
    let made = Instant::now();
    Claim::new(
        node,
        term,
        move || {
            let m = check.borrow_watched();
            if m.current_term == term && m.state == ServerState::Leader {
                Ok(())
            } else {
                Err(format!("term {term} is over (now term {}, {:?})", m.current_term, m.state))
            }
        },
        move |peer| {
            let m = silence.borrow_watched();
            let acked = m.heartbeat.as_ref().and_then(|h| h.get(&u64::from(peer)).cloned());
            match acked {
                Some(Some(t)) => Some(openraft::Instant::elapsed(&t.into_inner())),
                _ => Some(made.elapsed()),
            }
        },
    )
}

/// Wait until the role loop has let go of the VIP (bounded).
async fn wait_released(shared: &Shared, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while shared.vip_held.load(Ordering::Relaxed) || shared.proxy.is_active() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Hand leadership to node `to`: stop serving and release the VIP here first, then transfer, then wait until
/// `to` leads. On failure this node takes the role back.
pub async fn switchover(shared: &Shared, to: u64) -> Result<String, String> {
    let mm = shared.raft.metrics().borrow_watched().clone();
    if mm.current_leader != Some(shared.id) {
        return Err(match mm.current_leader {
            Some(l) => format!("node {} is not the leader; node {l} is", shared.id),
            None => format!("node {} is not the leader and no leader is known", shared.id),
        });
    }
    if to == shared.id {
        return Ok(format!("node {to} already leads"));
    }
    if !shared.peers.iter().any(|(id, _)| *id == to) {
        return Err(format!("node {to} is not a cluster member"));
    }
    let t0 = Instant::now();
    let window = shared.election_timeout * 10;
    *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + window);
    let release_by = Duration::from_millis(500);
    if !wait_released(shared, release_by).await {
        *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        return Err("could not release the VIP in time".into());
    }
    // The data volume goes before the role does: the next leader must find it free (a local device has no
    // other guard).
    if let Some(v) = shared.volume.get() {
        if !v.wait_released(shared.volume_release_within).await {
            *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Err(format!("could not release the volume in time: {}", v.render()));
        }
    }
    // Changes made while serving (the last BYEs) go into the log before the transfer, so the new leader has them.
    if !shared.flush_journal(Duration::from_millis(500)).await {
        tracing::warn!("switchover: table changes still queued after 500 ms; some may not reach the new leader");
    }
    tracing::info!(to, "switchover: VIP released, transferring leadership");
    if let Err(e) = shared.raft.trigger().transfer_leader(to).await {
        *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        return Err(format!("transfer failed: {e}"));
    }
    let mut watch = shared.raft.metrics();
    // A target that stops answering (it was stopped a moment ago) fails the switchover once it has been silent
    // for twice the election timeout, not at the end of the window.
    let silent_for = shared.election_timeout * 2;
    let deadline = Instant::now() + window;
    let outcome = loop {
        let m = watch.borrow_watched().clone();
        if m.current_leader == Some(to) {
            break Ok(());
        }
        let heard = m.heartbeat.as_ref().and_then(|h| h.get(&to).cloned().flatten());
        if heard.is_some_and(|t| openraft::Instant::elapsed(&t.into_inner()) > silent_for) {
            break Err(format!("node {to} stopped answering; this node keeps the role"));
        }
        if Instant::now() >= deadline {
            break Err(format!("node {to} did not take over within {window:?}; this node keeps the role"));
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(10), watch.changed()).await {
            break Err("raft stopped during the switchover".into());
        }
    };
    *shared.yield_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    outcome?;
    let ms = t0.elapsed().as_millis();
    tracing::info!(to, ms = ms as u64, "switchover done");
    shared.proxy.events.record("switchover", format!("node {} to node {to}", shared.id), Some(t0.elapsed()));
    Ok(format!("node {to} leads now ({ms} ms)"))
}

/// At shutdown: a leader hands over to the peer that is furthest along, so a planned restart costs nothing.
pub async fn step_down(shared: &Shared) {
    let mm = shared.raft.metrics().borrow_watched().clone();
    if mm.current_leader != Some(shared.id) {
        return;
    }
    let best = mm.replication.as_ref().and_then(|r| {
        r.iter().filter(|(id, _)| **id != shared.id).max_by_key(|(_, l)| l.as_ref().map(|l| l.index)).map(|(id, _)| *id)
    });
    let Some(to) = best else { return };
    match switchover(shared, to).await {
        Ok(msg) => tracing::info!("shutdown: {msg}"),
        Err(e) => tracing::warn!("shutdown: could not hand over: {e}"),
    }
}

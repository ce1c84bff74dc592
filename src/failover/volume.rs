//! The data volume that follows the active role, and the operator hooks around it. The role loop says what it
//! wants ([`VolumeHandle::own`] with a [`Claim`] when this node takes the VIP, [`VolumeHandle::release`] when
//! it gives it up); a task of its own brings the volume there and keeps trying, with backoff, until it is, so a
//! slow EC2 API or a slow PBX never holds up SIP. What it is doing, and the last error, is in the status.
//!
//! Own: bring the volume here and mount it ([`LocalVolume`] or, with the `aws` feature, [`EbsVolume`]), then
//! run `on_acquire` (start the PBX). Release: run `on_release` (stop the PBX) if the volume is mounted here,
//! unmount, and for EBS detach. At start-up the wanted state is "released", so a node that crashed while
//! owning cleans up after itself.
//!
//! Exclusivity: EBS enforces one attachment, and every move is fenced by the Raft term on the volume. A `local`
//! device has no such guard of its own: the old owner lets go when it loses the quorum (after 3/4 of the
//! election timeout), before a new leader can exist, and a switchover waits for the release before handing
//! over; but a hook or unmount that hangs on a node cut off from the others is not stopped by anything here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hook::{self, Hook};
use super::local::LocalVolume;
use super::Claim;
use crate::events::EventLog;
use crate::metrics as m;

/// The first retry of a failed step comes this soon (a device still held elsewhere is often free a moment
/// later); each next one twice as late, up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Which kind of volume.
pub enum VolumeKind {
    Local(LocalVolume),
    #[cfg(feature = "aws")]
    Ebs(super::aws::EbsVolume),
}

/// The volume and its hooks.
pub struct Volume {
    pub kind: VolumeKind,
    pub mount_point: PathBuf,
    pub on_acquire: Option<Hook>,
    pub on_release: Option<Hook>,
    /// What the status calls it: `vol-0123` or `/dev/sdb1`.
    pub label: String,
}

/// What the role loop wants.
#[derive(Debug, Clone)]
pub enum Want {
    Release,
    Own(Claim),
}

/// Where the volume stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Released,
    Acquiring,
    Held,
    Releasing,
}

/// For `sipfront status` and the logs.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub stage: Stage,
    pub term: u64,
    pub since: Instant,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl VolumeStatus {
    pub fn render(&self, label: &str) -> String {
        let stage = match self.stage {
            Stage::Released => "released",
            Stage::Acquiring => "acquiring",
            Stage::Held => "held",
            Stage::Releasing => "releasing",
        };
        let mut s = format!("{label} {stage}");
        if self.stage == Stage::Held {
            s.push_str(&format!(" (term {})", self.term));
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("; attempt {} failed: {e}", self.attempts));
        }
        s
    }
}

/// The role loop's end of the volume task.
pub struct VolumeHandle {
    want: watch::Sender<Want>,
    status: Arc<Mutex<VolumeStatus>>,
    label: String,
}

impl VolumeHandle {
    /// Start the task (on the current runtime) with "released" as the wanted state.
    pub fn start(volume: Volume, node: u32, events: Arc<EventLog>, stop: CancellationToken) -> VolumeHandle {
        let (want, rx) = watch::channel(Want::Release);
        let status = Arc::new(Mutex::new(VolumeStatus {
            stage: Stage::Releasing,
            term: 0,
            since: Instant::now(),
            attempts: 0,
            last_error: None,
        }));
        let label = volume.label.clone();
        tokio::spawn(run(volume, node, rx, status.clone(), events, stop));
        VolumeHandle { want, status, label }
    }

    pub fn own(&self, claim: Claim) {
        self.want.send_replace(Want::Own(claim));
    }

    pub fn release(&self) {
        self.want.send_replace(Want::Release);
    }

    pub fn status(&self) -> VolumeStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn render(&self) -> String {
        self.status().render(&self.label)
    }

    /// Wait (bounded) until the volume is released here.
    pub async fn wait_released(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.status().stage != Stage::Released {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn set(status: &Mutex<VolumeStatus>, f: impl FnOnce(&mut VolumeStatus)) {
    f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
}

/// Bring the volume to the wanted state, again and again, until `stop`.
async fn run(
    mut vol: Volume,
    node: u32,
    mut want: watch::Receiver<Want>,
    status: Arc<Mutex<VolumeStatus>>,
    events: Arc<EventLog>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_RETRY;
    // The release at start-up is housekeeping, not an event worth the timeline.
    let mut started = false;
    // Whether the wanted state is reached; a change of `want` clears it.
    let mut settled = false;
    loop {
        if settled {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = want.changed() => if r.is_err() { return },
            }
        }
        let wanted = want.borrow_and_update().clone();
        let t0 = Instant::now();
        let outcome = match &wanted {
            Want::Own(claim) => {
                set(&status, |s| {
                    if s.stage != Stage::Acquiring {
                        (s.stage, s.attempts, s.since) = (Stage::Acquiring, 0, t0);
                    }
                });
                // A change of mind (the role is lost) abandons the attempt at once; release comes next.
                tokio::select! {
                    r = acquire(&mut vol, claim) => Some(r.map(|()| claim.term)),
                    _ = want.changed() => None,
                    _ = stop.cancelled() => return,
                }
            }
            Want::Release => {
                set(&status, |s| {
                    if s.stage != Stage::Releasing {
                        (s.stage, s.attempts, s.since) = (Stage::Releasing, 0, t0);
                    }
                });
                // Not abandoned: a half-done release would leave the PBX half-stopped.
                Some(release(&mut vol, node).await.map(|()| 0))
            }
        };
        let Some(outcome) = outcome else {
            settled = false;
            continue;
        };
        match outcome {
            Ok(term) => {
                let held = matches!(wanted, Want::Own(_));
                set(&status, |s| {
                    s.stage = if held { Stage::Held } else { Stage::Released };
                    s.term = term;
                    s.last_error = None;
                });
                metrics::gauge!(m::VOLUME_HELD).set(if held { 1.0 } else { 0.0 });
                let took_ms = t0.elapsed().as_millis() as u64;
                if held {
                    tracing::info!(volume = %vol.label, term, took_ms, "volume held: mounted here, hook done");
                    events.record("volume-held", format!("{} term {term}", vol.label), Some(t0.elapsed()));
                } else {
                    tracing::info!(volume = %vol.label, took_ms, "volume released here");
                    if started {
                        events.record("volume-released", vol.label.clone(), Some(t0.elapsed()));
                    }
                }
                started = true;
                backoff = FIRST_RETRY;
                settled = true;
            }
            Err(e) => {
                let step = if matches!(wanted, Want::Own(_)) { "acquire" } else { "release" };
                metrics::counter!(m::FAILOVER_STEP_FAILURES, "resource" => "volume", "step" => step).increment(1);
                set(&status, |s| {
                    s.attempts += 1;
                    s.last_error = Some(e.clone());
                });
                tracing::error!(volume = %vol.label, step, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "volume: {step} failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                    r = want.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(LAST_RETRY);
                settled = false;
            }
        }
    }
}

fn hook_env(vol: &Volume, event: &str, node: u32, term: u64) -> Vec<(&'static str, String)> {
    vec![
        ("SIPFRONT_EVENT", event.to_owned()),
        ("SIPFRONT_NODE_ID", node.to_string()),
        ("SIPFRONT_TERM", term.to_string()),
        ("SIPFRONT_MOUNT_POINT", vol.mount_point.display().to_string()),
        ("SIPFRONT_DEVICE", vol.label.clone()),
        ("SIPFRONT_PID", std::process::id().to_string()),
    ]
}

async fn run_hook(vol: &Volume, which: &Option<Hook>, event: &str, node: u32, term: u64) -> Result<(), String> {
    let Some(h) = which else { return Ok(()) };
    let t = Instant::now();
    let env = hook_env(vol, event, node, term);
    let env: Vec<(&str, String)> = env.into_iter().collect();
    let r = hook::run(h, &env).await;
    metrics::histogram!(m::FAILOVER_STEP_SECONDS, "resource" => "volume", "step" => h.name)
        .record(t.elapsed().as_secs_f64());
    match r {
        Ok(run) => {
            tracing::info!(hook = h.name, took_ms = run.took.as_millis() as u64, "hook done");
            Ok(())
        }
        Err(e) => Err(format!("{}: {e}", h.name)),
    }
}

async fn acquire(vol: &mut Volume, claim: &Claim) -> Result<(), String> {
    match &mut vol.kind {
        VolumeKind::Local(l) => l.acquire().await.map_err(|e| e.to_string())?,
        #[cfg(feature = "aws")]
        VolumeKind::Ebs(e) => {
            e.acquire(claim).await.map_err(|e| e.to_string())?;
        }
    }
    claim.valid().map_err(|why| format!("mounted, but no longer entitled to start the PBX: {why}"))?;
    let on_acquire = vol.on_acquire.take();
    let r = run_hook(vol, &on_acquire, "acquire", claim.node, claim.term).await;
    vol.on_acquire = on_acquire;
    r
}

async fn release(vol: &mut Volume, node: u32) -> Result<(), String> {
    let mounted = match &vol.kind {
        VolumeKind::Local(l) => l.mounted(),
        #[cfg(feature = "aws")]
        VolumeKind::Ebs(e) => e.is_mounted(),
    };
    if mounted {
        let on_release = vol.on_release.take();
        let r = run_hook(vol, &on_release, "release", node, 0).await;
        vol.on_release = on_release;
        r?;
    }
    match &mut vol.kind {
        VolumeKind::Local(l) => l.release().await.map_err(|e| e.to_string()),
        #[cfg(feature = "aws")]
        VolumeKind::Ebs(e) => e.release(node).await.map_err(|e| e.to_string()),
    }
}

//! `[volume] mode = "aws-ebs"`: the PBX data volume brought to this node through the EC2 API, then mounted.
//!
//! Acquire: fence the volume (owner tag, Raft term) → if it is attached elsewhere, detach it (Force only when
//! the old holder is known dead: its node has not acknowledged the leader for `force_detach_after`, or its
//! instance is not running) → wait until it is free → attach it here → wait until the *attachment* says
//! `attached` (the SDK's waiters poll every 15 s and look at the volume state instead) → wait for the block
//! device (Nitro: the NVMe device whose serial is the volume id) → mount. Every step starts from what EC2 says
//! now, so a move interrupted anywhere (a crash, an API outage, a lost claim) is resumed by running acquire
//! again, and a state change done by a call whose answer was lost is simply found done.
//!
//! Release: unmount (the PBX hook ran before, in `failover::volume`), then detach from this instance and wait.
//! Hooks are not this module's business.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceStateName, VolumeAttachmentState};
use tokio::time::Instant;

use super::{AwsError, Ec2, Identity, OWNER_TAG};
use crate::failover::{mount, Claim, VolumeError};
use crate::metrics as m;

/// What to attach and mount.
#[derive(Debug, Clone)]
pub struct EbsSpec {
    pub volume_id: String,
    /// The device name given to AttachVolume (`/dev/sdf`).
    pub device: PathBuf,
    /// Where the volume shows up here, when known in advance (else NVMe by serial, else the Xen name).
    pub local_device: Option<PathBuf>,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub mount_options: String,
    pub attach_timeout: Duration,
    pub force_detach_after: Duration,
    pub unmount_timeout: Duration,
}

/// Why the volume did not move.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Local(#[from] VolumeError),
    #[error("{volume}: still {state} after {waited:?} waiting to {goal}")]
    Timeout { volume: String, goal: &'static str, state: String, waited: Duration },
}

/// The EBS data volume of this cluster.
pub struct EbsVolume {
    ec2: Arc<Ec2>,
    spec: EbsSpec,
    /// The block device it was mounted from, once mounted here.
    mounted_from: Option<PathBuf>,
}

/// One look at the volume's attachment.
#[derive(Debug)]
struct Seen {
    instance: Option<String>,
    state: Option<VolumeAttachmentState>,
}

impl Seen {
    fn describe(&self) -> String {
        match (&self.instance, &self.state) {
            (None, _) => "available".into(),
            (Some(i), s) => format!("{} to {i}", s.as_ref().map_or("attached", |s| s.as_str())),
        }
    }
}

/// Polls every 250 ms for the first 2.5 s of a wait, then every second (EC2 rate limits are per account).
fn poll_interval(n: u32) -> Duration {
    if n < 10 {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    }
}

impl EbsVolume {
    pub fn new(ec2: Arc<Ec2>, spec: EbsSpec) -> EbsVolume {
        EbsVolume { ec2, spec, mounted_from: None }
    }

    pub fn volume_id(&self) -> &str {
        &self.spec.volume_id
    }

    /// The block device it is mounted from, when mounted here.
    pub fn mounted_from(&self) -> Option<&Path> {
        self.mounted_from.as_deref()
    }

    /// Bring the volume here and mount it (see the module doc). Safe to call again after any failure.
    pub async fn acquire(&mut self, claim: &Claim) -> Result<PathBuf, EbsError> {
        self.attach(claim).await?;
        let t = Instant::now();
        let dev = self.wait_device().await?;
        step_done("device", t);
        let t = Instant::now();
        mount::mount(&dev, &self.spec.mount_point, &self.spec.fs_type, &self.spec.mount_options)?;
        step_done("mount", t);
        self.mounted_from = Some(dev.clone());
        Ok(dev)
    }

    /// The EC2 half of [`EbsVolume::acquire`]: fenced, detached from any other instance, attached here.
    pub async fn attach(&self, claim: &Claim) -> Result<(), EbsError> {
        let me = self.ec2.identity(claim).await?.clone();
        let t = Instant::now();
        let previous = self.ec2.fence(claim, &self.spec.volume_id, OWNER_TAG).await?;
        step_done("fence", t);
        let t = Instant::now();
        self.attach_here(claim, &me, previous.map(|(node, _)| node)).await?;
        step_done("attach", t);
        Ok(())
    }

    /// Unmount (if mounted here) and detach from this instance (if attached here), waiting for both.
    pub async fn release(&mut self, node: u32) -> Result<(), EbsError> {
        let t = Instant::now();
        mount::unmount(&self.spec.mount_point, self.spec.unmount_timeout).await?;
        self.mounted_from = None;
        step_done("unmount", t);
        self.detach_here(node).await
    }

    /// The EC2 half of [`EbsVolume::release`]: detach from this instance if attached here, and wait.
    pub async fn detach_here(&self, node: u32) -> Result<(), EbsError> {
        // Releasing is always allowed: a claim that never lapses, with no term to write.
        let claim = Claim::fixed(node, 0);
        let me = self.ec2.identity(&claim).await?.clone();
        let t = Instant::now();
        let deadline = Instant::now() + self.spec.attach_timeout;
        let mut asked = false;
        for n in 0.. {
            let seen = self.look(&claim).await?;
            if seen.instance.as_deref() != Some(me.instance_id.as_str()) {
                break;
            }
            if !asked && seen.state != Some(VolumeAttachmentState::Detaching) {
                self.detach(&claim, &me.instance_id, false).await?;
                asked = true;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("detach from this node", &seen, t));
            }
            tokio::time::sleep(poll_interval(n)).await;
        }
        step_done("detach", t);
        Ok(())
    }

    /// Whether it is mounted at the mount point now (from this process's mount table).
    pub fn is_mounted(&self) -> bool {
        matches!(mount::mounted_at(&self.spec.mount_point), Ok(Some(_)))
    }

    async fn attach_here(&self, claim: &Claim, me: &Identity, previous: Option<u32>) -> Result<(), EbsError> {
        let t = Instant::now();
        let deadline = t + self.spec.attach_timeout;
        let mut detach_asked: Option<(Instant, bool)> = None;
        let mut attach_asked = false;
        for n in 0.. {
            let seen = self.look(claim).await?;
            match (&seen.instance, &seen.state) {
                (Some(i), Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Busy))
                    if *i == me.instance_id =>
                {
                    return Ok(())
                }
                (Some(i), _) if *i == me.instance_id => {} // attaching (or detaching from a past term): wait
                (None, _) if !attach_asked || n % 4 == 3 => {
                    match self.attach_call(claim, &me.instance_id).await {
                        Ok(()) => attach_asked = true,
                        // Someone's detach or attach is still settling: look again.
                        Err(AwsError::Api { code, message, .. })
                            if matches!(code.as_str(), "VolumeInUse" | "IncorrectState") =>
                        {
                            tracing::info!(volume = %self.spec.volume_id, %code, %message, "aws: attach must wait");
                        }
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                (None, _) => {}
                (Some(other), state) => {
                    let since = detach_asked.map_or(Duration::ZERO, |(at, _)| at.elapsed());
                    let forced = detach_asked.is_some_and(|(_, f)| f);
                    let asked = detach_asked.is_some();
                    let want_force = !forced
                        && (!asked || since >= self.spec.force_detach_after)
                        && self.holder_dead(claim, other, previous).await?;
                    if want_force || (!asked && *state != Some(VolumeAttachmentState::Detaching)) {
                        tracing::warn!(volume = %self.spec.volume_id, holder = %other, force = want_force,
                            "aws: detaching the volume from its old holder");
                        self.detach(claim, other, want_force).await?;
                        detach_asked = Some((detach_asked.map_or(Instant::now(), |(at, _)| at), want_force));
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("attach here", &seen, t));
            }
            tokio::time::sleep(poll_interval(n)).await;
        }
        unreachable!("the loop returns")
    }

    /// Whether the instance holding the volume is known dead: its node (the previous owner tag) has not
    /// acknowledged us for `force_detach_after`, or EC2 says the instance is not running.
    async fn holder_dead(&self, claim: &Claim, instance: &str, previous: Option<u32>) -> Result<bool, AwsError> {
        if let Some(node) = previous.filter(|n| *n != claim.node) {
            if claim.peer_silent_for(node).is_some_and(|s| s >= self.spec.force_detach_after) {
                return Ok(true);
            }
        }
        let c = self.ec2.sdk().await?;
        let out =
            self.ec2.call("DescribeInstances", claim, || c.describe_instances().instance_ids(instance).send()).await;
        let state = match out {
            Ok(out) => out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.state().and_then(|s| s.name()).cloned()),
            Err(AwsError::Api { code, .. }) if code.starts_with("InvalidInstanceID") => None,
            Err(e) => return Err(e),
        };
        Ok(!matches!(state, Some(InstanceStateName::Running) | Some(InstanceStateName::Pending)))
    }

    async fn look(&self, claim: &Claim) -> Result<Seen, AwsError> {
        let c = self.ec2.sdk().await?;
        let out = self
            .ec2
            .call("DescribeVolumes", claim, || c.describe_volumes().volume_ids(&self.spec.volume_id).send())
            .await?;
        let Some(vol) = out.volumes().first() else {
            return Err(AwsError::Unexpected {
                op: "DescribeVolumes",
                detail: format!("volume {} not found", self.spec.volume_id),
            });
        };
        // A detached attachment is history, not a holder.
        let att = vol.attachments().iter().find(|a| a.state() != Some(&VolumeAttachmentState::Detached));
        Ok(Seen {
            instance: att.and_then(|a| a.instance_id()).map(str::to_owned),
            state: att.and_then(|a| a.state()).cloned(),
        })
    }

    async fn attach_call(&self, claim: &Claim, instance: &str) -> Result<(), AwsError> {
        let c = self.ec2.sdk().await?;
        let device = self.spec.device.to_string_lossy();
        self.ec2
            .call("AttachVolume", claim, || {
                c.attach_volume().volume_id(&self.spec.volume_id).instance_id(instance).device(device.as_ref()).send()
            })
            .await?;
        Ok(())
    }

    async fn detach(&self, claim: &Claim, instance: &str, force: bool) -> Result<(), AwsError> {
        let c = self.ec2.sdk().await?;
        let r = self
            .ec2
            .call("DetachVolume", claim, || {
                c.detach_volume().volume_id(&self.spec.volume_id).instance_id(instance).force(force).send()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // Already detached or detaching: the next look tells.
            Err(AwsError::Api { code, .. }) if code == "IncorrectState" || code == "InvalidAttachment.NotFound" => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Where the attached volume appears on this host.
    async fn wait_device(&self) -> Result<PathBuf, EbsError> {
        if let Some(dev) = &self.spec.local_device {
            return Ok(mount::wait_for_block_device(dev, self.spec.attach_timeout).await?);
        }
        let deadline = Instant::now() + self.spec.attach_timeout;
        let xen = xen_name(&self.spec.device);
        loop {
            if let Some(nvme) = mount::nvme_device_for_volume(&self.spec.volume_id) {
                return Ok(nvme);
            }
            for candidate in [&self.spec.device, &xen] {
                if candidate.exists() {
                    return Ok(mount::wait_for_block_device(candidate, Duration::from_millis(100)).await?);
                }
            }
            if Instant::now() >= deadline {
                return Err(VolumeError::DeviceMissing {
                    device: self.spec.device.clone(),
                    waited: self.spec.attach_timeout,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn timeout(&self, goal: &'static str, seen: &Seen, since: Instant) -> EbsError {
        EbsError::Timeout { volume: self.spec.volume_id.clone(), goal, state: seen.describe(), waited: since.elapsed() }
    }
}

/// `/dev/sdf` → `/dev/xvdf` (Xen instances rename attached devices).
fn xen_name(device: &Path) -> PathBuf {
    let s = device.to_string_lossy();
    match s.strip_prefix("/dev/sd") {
        Some(rest) => PathBuf::from(format!("/dev/xvd{rest}")),
        None => device.to_path_buf(),
    }
}

fn step_done(step: &'static str, t: Instant) {
    metrics::histogram!(m::FAILOVER_STEP_SECONDS, "resource" => "volume", "step" => step)
        .record(t.elapsed().as_secs_f64());
    tracing::info!(step, took_ms = t.elapsed().as_millis() as u64, "volume step done");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_names() {
        assert_eq!(xen_name(Path::new("/dev/sdf")), PathBuf::from("/dev/xvdf"));
        assert_eq!(xen_name(Path::new("/dev/xvdg")), PathBuf::from("/dev/xvdg"));
    }
}

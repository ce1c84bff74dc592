//! Failover: what follows the active role from node to node. The cluster's role loop (`cluster::role`) decides
//! *when*; this module does the moving. Two resources:
//! - the **VIP** ([`Vip`]): nothing, the host's own address (`linux`, in [`crate::vip`]), or the EC2 API plus
//!   the host's address (`aws`: secondary IP, Elastic IP or route-table entry);
//! - the **PBX data volume** ([`VolumeHandle`]): the file system with the PBX's database and recordings, a
//!   `local` block device or image file, or an `aws-ebs` volume attached through the EC2 API; mounted on the
//!   active node only (two hosts writing one ext4 destroy it), with the operator hooks that start and stop
//!   the PBX around it.
//!
//! Every move carries a [`Claim`] (this node, its Raft term, a live check that it still leads). On AWS the term
//! is also written on the moved resource (fencing tags), and a move for an older term is refused.
//!
//! ```text
//!  mod.rs     the module map and VolumeError
//!  setup.rs   Resources: the VIP and the volume built from the config (one EC2 client for both)
//!  claim.rs   Claim: node, term, still-leader check, peers' silence
//!  vip.rs     Vip: none | linux | aws
//!  volume.rs  the volume task: wanted state (own / release), retries with backoff, hooks, status
//!  local.rs   LocalVolume (`mode = "local"`): a block device or an image file on a loop device
//!  mount.rs   mount, unmount, /proc/self/mountinfo, waiting for a block device, EBS NVMe device lookup
//!  hook.rs    operator hook commands (keepalived notify style): /bin/sh -c, timeout, output to the log
//!  sys.rs     the raw system calls: every `unsafe` of the module
//!  aws/       (feature `aws`) the EC2 client with retries and fencing, the AWS VIP, the EBS volume
//! ```
//!
//! Mounting needs CAP_SYS_ADMIN; loop devices need read-write access to `/dev/loop-control` and `/dev/loop*`.
//! Everything acts in the mount namespace of the calling thread, which for sipfront is the process's.

#[cfg(feature = "aws")]
pub mod aws;
mod claim;
pub mod hook;
pub mod local;
pub mod mount;
mod setup;
mod sys;
pub mod vip;
pub mod volume;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use claim::Claim;
pub use hook::{Hook, HookFailure, HookRun};
pub use local::{LocalVolume, LocalVolumeSpec};
pub use setup::Resources;
pub use vip::Vip;
pub use volume::{Volume, VolumeHandle, VolumeKind};

/// A failure to mount, unmount or find the data volume, or of a hook run around it. Each says which device or
/// mount point it was about and carries the kernel's errno where there is one.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("device {} does not exist (waited {waited:?})", device.display())]
    DeviceMissing { device: PathBuf, waited: Duration },
    #[error("{} is not a block device{}", device.display(), if *image_allowed { " or a regular file" } else { "" })]
    NotBlockDevice { device: PathBuf, image_allowed: bool },
    #[error("cannot inspect device {}: {source}", device.display())]
    Device { device: PathBuf, source: io::Error },
    #[error("cannot create mount point {}: {source}", mount_point.display())]
    MountPoint { mount_point: PathBuf, source: io::Error },
    #[error("{} is already mounted at {} ({fs_type}); it is not our volume", mounted.display(), mount_point.display())]
    MountPointTaken { mount_point: PathBuf, mounted: PathBuf, fs_type: String },
    #[error("image {} is already on {}, mounted at {}", image.display(), loop_device.display(), mount_point.display())]
    ImageInUse { image: PathBuf, loop_device: PathBuf, mount_point: PathBuf },
    #[error("cannot read the mount table: {0}")]
    MountTable(#[source] io::Error),
    #[error("cannot mount {} at {}: {source}", device.display(), mount_point.display())]
    Mount { device: PathBuf, mount_point: PathBuf, source: io::Error },
    #[error("cannot unmount {}: {source}", mount_point.display())]
    Unmount { mount_point: PathBuf, source: io::Error },
    /// Files on the volume are still open (or a process has its working directory there) after `waited`.
    /// `holders` lists up to a few of those processes as `PID (COMMAND)`, as far as /proc shows them.
    #[error("{} is still busy after {waited:?} (held by: {})", mount_point.display(), holders_text(holders))]
    Busy { mount_point: PathBuf, waited: Duration, holders: Vec<String> },
    #[error("loop device for image {}: cannot {step}: {source}", image.display())]
    Loop { image: PathBuf, step: &'static str, source: io::Error },
    #[error("hook {name} failed: {reason}")]
    Hook {
        name: &'static str,
        #[source]
        reason: HookFailure,
    },
}

fn holders_text(holders: &[String]) -> String {
    if holders.is_empty() {
        "no process found in /proc".to_owned()
    } else {
        holders.join(", ")
    }
}

//! Building the node's movable resources from the configuration: the [`Vip`], the [`Volume`] with its hooks,
//! and (feature `aws`) the one EC2 client both share.

use std::sync::Arc;

use super::hook::Hook;
use super::local::{LocalVolume, LocalVolumeSpec};
use super::volume::{Volume, VolumeKind};
use super::Vip;
use crate::config::{Config, VipMode, VolumeMode};

/// What follows the active role on this node.
pub struct Resources {
    pub vip: Vip,
    pub volume: Option<Volume>,
}

impl Resources {
    /// Nothing is contacted here: the EC2 client and this node's identity are made at the first move.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Resources> {
        #[cfg(feature = "aws")]
        let ec2 = (cfg.vip.mode == VipMode::Aws || cfg.volume.mode == VolumeMode::AwsEbs)
            .then(|| Arc::new(super::aws::Ec2::new(cfg.aws.clone())));
        #[cfg(not(feature = "aws"))]
        let _ = (VipMode::None, Arc::new(()));
        #[cfg(feature = "aws")]
        let vip = Vip::from_config(cfg, ec2.clone())?;
        #[cfg(not(feature = "aws"))]
        let vip = Vip::from_config(cfg)?;
        let v = &cfg.volume;
        let hook = |name: &'static str, cmd: &Option<String>| {
            cmd.as_ref().map(|c| Hook { name, command: c.clone(), timeout: v.hook_timeout.get() })
        };
        let mount_point = v.mount_point.clone().unwrap_or_default();
        let device = v.device.clone().unwrap_or_default();
        let (kind, label) = match v.mode {
            VolumeMode::None => return Ok(Resources { vip, volume: None }),
            VolumeMode::Local => {
                let spec = LocalVolumeSpec {
                    device: device.clone(),
                    mount_point: mount_point.clone(),
                    fs_type: v.fs_type.clone(),
                    options: v.mount_options.clone(),
                    unmount_timeout: v.unmount_timeout.get(),
                };
                (VolumeKind::Local(LocalVolume::new(spec)), device.display().to_string())
            }
            #[cfg(feature = "aws")]
            VolumeMode::AwsEbs => {
                let ec2 = ec2.ok_or_else(|| anyhow::anyhow!("volume: no EC2 client"))?;
                let volume_id = v.volume_id.clone().unwrap_or_default();
                let spec = super::aws::EbsSpec {
                    volume_id: volume_id.clone(),
                    device,
                    local_device: v.local_device.clone(),
                    mount_point: mount_point.clone(),
                    fs_type: v.fs_type.clone(),
                    mount_options: v.mount_options.clone(),
                    attach_timeout: v.attach_timeout.get(),
                    force_detach_after: v.force_detach_after.get(),
                    unmount_timeout: v.unmount_timeout.get(),
                };
                (VolumeKind::Ebs(super::aws::EbsVolume::new(ec2, spec)), volume_id)
            }
            #[cfg(not(feature = "aws"))]
            VolumeMode::AwsEbs => anyhow::bail!("volume.mode \"aws-ebs\" needs sipfront built with the `aws` feature"),
        };
        let volume = Volume {
            kind,
            mount_point,
            on_acquire: hook("on_acquire", &v.on_acquire),
            on_release: hook("on_release", &v.on_release),
            label,
        };
        Ok(Resources { vip, volume: Some(volume) })
    }

    /// How long a release may take: the hook, the unmount, and (EBS) the detach.
    pub fn release_within(cfg: &Config) -> std::time::Duration {
        let v = &cfg.volume;
        v.hook_timeout.get() + v.unmount_timeout.get() + v.attach_timeout.get()
    }
}

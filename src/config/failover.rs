//! `[aws]` (how this node reaches the EC2 API and who it is there), `[vip.aws]` (how an AWS VIP moves) and
//! `[volume]` (the PBX data volume that follows the active role). All optional; checked by `Config::validate`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigDuration, ConfigError};

/// `[aws]`: shared by the AWS VIP and the EBS volume. Every value left out comes from the instance metadata
/// service (IMDSv2) at the first move; credentials come from the standard AWS chain (environment, profile, web
/// identity, container, instance role).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `"eu-west-1"`; default: the instance's region.
    #[serde(default)]
    pub region: Option<String>,
    /// `"i-0123..."`; default: this instance.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The ENI that receives the VIP; default: the instance's primary interface (device index 0).
    #[serde(default)]
    pub eni_id: Option<String>,
    /// `"https://ec2.eu-west-1.amazonaws.com"` style override: a VPC endpoint, or an emulator in tests.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// One attempt of one EC2 call gives up after this long.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: ConfigDuration,
    /// All attempts of one EC2 call (retries on throttling, 5xx, timeouts) stop after this long; the move is
    /// then reported failed and tried again from where it stopped.
    #[serde(default = "default_call_budget")]
    pub call_budget: ConfigDuration,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            instance_id: None,
            eni_id: None,
            endpoint_url: None,
            call_timeout: default_call_timeout(),
            call_budget: default_call_budget(),
        }
    }
}

fn default_call_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}
fn default_call_budget() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// `[vip.aws] method`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AwsVipMethod {
    /// A secondary private IP of the subnet, reassigned to this node's ENI (AssignPrivateIpAddresses).
    #[default]
    SecondaryIp,
    /// An Elastic IP re-associated with this node's ENI (AssociateAddress).
    ElasticIp,
    /// A /32 outside the VPC's range, routed to this node's ENI in the listed route tables (ReplaceRoute).
    RouteTable,
}

impl std::fmt::Display for AwsVipMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AwsVipMethod::SecondaryIp => "secondary-ip",
            AwsVipMethod::ElasticIp => "elastic-ip",
            AwsVipMethod::RouteTable => "route-table",
        })
    }
}

/// `[vip.aws]`, for `[vip] mode = "aws"`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsVipConfig {
    #[serde(default)]
    pub method: AwsVipMethod,
    /// `elastic-ip`: the allocation; default: looked up from `vip.address` (the public IP).
    #[serde(default)]
    pub allocation_id: Option<String>,
    /// `elastic-ip`: which private IP of the ENI the public one maps to; default: the ENI's primary.
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// `route-table`: every route table that must send the VIP to the active node.
    #[serde(default)]
    pub route_tables: Vec<String>,
}

/// `[volume] mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeMode {
    /// No data volume follows the active role.
    #[default]
    None,
    /// A block device or image file every node can reach (shared storage, a loop device), mounted only on the
    /// active node.
    Local,
    /// An EBS volume detached from the old node and attached here through the EC2 API, then mounted.
    AwsEbs,
}

/// `[volume]`: the PBX data, mounted on the active node only, with the hooks that start and stop the PBX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    #[serde(default)]
    pub mode: VolumeMode,
    /// `aws-ebs`: `"vol-0123..."`.
    #[serde(default)]
    pub volume_id: Option<String>,
    /// `local`: the block device or image file. `aws-ebs`: the device name given to AttachVolume (`"/dev/sdf"`).
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// `aws-ebs`: where the attached volume shows up on this host; default: the NVMe device whose serial is the
    /// volume id (Nitro), else `device` with `sd` read as `xvd` (Xen).
    #[serde(default)]
    pub local_device: Option<PathBuf>,
    /// Where the file system is mounted on the active node.
    #[serde(default)]
    pub mount_point: Option<PathBuf>,
    #[serde(default = "default_fs_type")]
    pub fs_type: String,
    /// Comma-separated mount options (`"noatime"`); empty: the file system's defaults.
    #[serde(default)]
    pub mount_options: String,
    /// Run after the volume is mounted here (start the PBX). Environment: `SIPFRONT_EVENT`, `SIPFRONT_NODE_ID`,
    /// `SIPFRONT_TERM`, `SIPFRONT_MOUNT_POINT`, `SIPFRONT_DEVICE`, `SIPFRONT_PID` (sipfront's own pid).
    #[serde(default)]
    pub on_acquire: Option<String>,
    /// Run before the volume is unmounted here (stop the PBX).
    #[serde(default)]
    pub on_release: Option<String>,
    /// A hook still running after this long is killed (its whole process group) and counted as failed.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: ConfigDuration,
    /// How long an unmount may wait for files to be closed before the release is reported failed.
    #[serde(default = "default_unmount_timeout")]
    pub unmount_timeout: ConfigDuration,
    /// `aws-ebs`: how long to wait for an attachment or detachment to finish before the step is retried.
    #[serde(default = "default_attach_timeout")]
    pub attach_timeout: ConfigDuration,
    /// `aws-ebs`: a volume still attached to another node this long after our detach request is detached with
    /// Force, but only if that node is also out of the cluster (no Raft acknowledgement for as long).
    #[serde(default = "default_force_detach_after")]
    pub force_detach_after: ConfigDuration,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            mode: VolumeMode::None,
            volume_id: None,
            device: None,
            local_device: None,
            mount_point: None,
            fs_type: default_fs_type(),
            mount_options: String::new(),
            on_acquire: None,
            on_release: None,
            hook_timeout: default_hook_timeout(),
            unmount_timeout: default_unmount_timeout(),
            attach_timeout: default_attach_timeout(),
            force_detach_after: default_force_detach_after(),
        }
    }
}

fn default_fs_type() -> String {
    "ext4".into()
}
fn default_hook_timeout() -> ConfigDuration {
    ConfigDuration::secs(120)
}
fn default_unmount_timeout() -> ConfigDuration {
    ConfigDuration::secs(30)
}
fn default_attach_timeout() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn default_force_detach_after() -> ConfigDuration {
    ConfigDuration::secs(5)
}

impl AwsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.region {
            if r.is_empty() || !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(invalid("aws.region", format!("`{r}` is not a region name like \"eu-west-1\"")));
            }
        }
        check_id("aws.instance_id", self.instance_id.as_deref(), "i-")?;
        check_id("aws.eni_id", self.eni_id.as_deref(), "eni-")?;
        if let Some(u) = &self.endpoint_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid("aws.endpoint_url", format!("`{u}` must start with https:// (or http://)")));
            }
        }
        if self.call_timeout.get() < Duration::from_millis(100) {
            return Err(invalid("aws.call_timeout", "must be at least 100ms"));
        }
        if self.call_budget < self.call_timeout {
            return Err(invalid("aws.call_budget", "must be at least aws.call_timeout"));
        }
        Ok(())
    }
}

fn check_id(key: &str, id: Option<&str>, prefix: &str) -> Result<(), ConfigError> {
    match id {
        Some(v) if !v.starts_with(prefix) || v.len() <= prefix.len() => {
            Err(invalid(key, format!("`{v}` is not an id like \"{prefix}0123abcd\"")))
        }
        _ => Ok(()),
    }
}

impl AwsVipConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.allocation_id {
            check_id("vip.aws.allocation_id", Some(a), "eipalloc-")?;
        }
        if self.method == AwsVipMethod::RouteTable {
            if self.route_tables.is_empty() {
                return Err(invalid("vip.aws.route_tables", "list the route tables, like [\"rtb-0123abcd\"]"));
            }
            for (i, r) in self.route_tables.iter().enumerate() {
                check_id(&format!("vip.aws.route_tables[{i}]"), Some(r), "rtb-")?;
            }
        }
        Ok(())
    }
}

impl VolumeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == VolumeMode::None {
            return Ok(());
        }
        let mode = if self.mode == VolumeMode::Local { "local" } else { "aws-ebs" };
        let Some(mp) = &self.mount_point else {
            return Err(invalid(
                "volume.mount_point",
                format!("is required for mode \"{mode}\", like \"/var/lib/pbx\""),
            ));
        };
        if !mp.is_absolute() || mp == std::path::Path::new("/") {
            return Err(invalid("volume.mount_point", format!("`{}` must be an absolute path, not /", mp.display())));
        }
        match &self.device {
            Some(d) if d.is_absolute() => {}
            Some(d) => return Err(invalid("volume.device", format!("`{}` must be an absolute path", d.display()))),
            None => {
                let example = if self.mode == VolumeMode::Local { "/dev/sdb1" } else { "/dev/sdf" };
                return Err(invalid("volume.device", format!("is required for mode \"{mode}\", like \"{example}\"")));
            }
        }
        if self.mode == VolumeMode::AwsEbs {
            match &self.volume_id {
                None => return Err(invalid("volume.volume_id", "is required for mode \"aws-ebs\", like \"vol-0123\"")),
                v => check_id("volume.volume_id", v.as_deref(), "vol-")?,
            }
            if !cfg!(feature = "aws") {
                return Err(invalid("volume.mode", "\"aws-ebs\" needs sipfront built with the `aws` cargo feature"));
            }
        } else if self.volume_id.is_some() || self.local_device.is_some() {
            let key = if self.volume_id.is_some() { "volume.volume_id" } else { "volume.local_device" };
            return Err(invalid(key, "applies to mode \"aws-ebs\" only"));
        }
        if self.fs_type.is_empty() || self.fs_type.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(invalid("volume.fs_type", format!("`{}` is not a file system type", self.fs_type)));
        }
        for (key, hook) in [("volume.on_acquire", &self.on_acquire), ("volume.on_release", &self.on_release)] {
            if hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err(invalid(key, "is empty: leave it out, or give a command"));
            }
        }
        if self.hook_timeout.get() < Duration::from_millis(100) {
            return Err(invalid("volume.hook_timeout", "must be at least 100ms"));
        }
        if self.attach_timeout.get() < Duration::from_secs(1) {
            return Err(invalid("volume.attach_timeout", "must be at least 1s"));
        }
        Ok(())
    }
}

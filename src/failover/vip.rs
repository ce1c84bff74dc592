//! [`Vip`]: where the VIP lives and how it moves, by `[vip] mode`. The role loop calls `acquire` with the
//! [`Claim`] of its term and `release` when it lets go; this picks the mechanism: nothing, the host's own
//! address (`linux`, see `crate::vip`), or the EC2 API plus the host's address (`aws`, see `aws::vip`).

use crate::config::{Config, VipMode};
use crate::vip::{LinuxVip, LinuxVipSpec};

use super::Claim;

/// Where the VIP lives.
pub enum Vip {
    /// Nothing to move (tests on loopback, or a load balancer in front).
    None,
    Linux(LinuxVip),
    #[cfg(feature = "aws")]
    Aws(super::aws::AwsVip),
}

impl Vip {
    /// Build from `[vip]` (and `[aws]`, sharing `ec2` with the volume).
    pub fn from_config(
        cfg: &Config,
        #[cfg(feature = "aws")] ec2: Option<std::sync::Arc<super::aws::Ec2>>,
    ) -> anyhow::Result<Vip> {
        let v = &cfg.vip;
        let local = || -> anyhow::Result<LinuxVip> {
            let (address, prefix_len) = v.parsed()?;
            let spec = LinuxVipSpec {
                address,
                prefix_len,
                interface: v.interface.clone().unwrap_or_default(),
                device: v.device.clone(),
                garp_count: v.garp_count,
                garp_interval: v.garp_interval.get(),
            };
            LinuxVip::new(spec).map_err(|e| anyhow::anyhow!("vip: {e}"))
        };
        match v.mode {
            VipMode::None => Ok(Vip::None),
            VipMode::Linux => Ok(Vip::Linux(local()?)),
            #[cfg(feature = "aws")]
            VipMode::Aws => {
                let ec2 = ec2.ok_or_else(|| anyhow::anyhow!("vip: mode \"aws\" without an EC2 client"))?;
                let (address, _) = v.parsed()?;
                let spec = super::aws::AwsVipSpec {
                    method: v.aws.method,
                    address,
                    allocation_id: v.aws.allocation_id.clone(),
                    private_ip: v.aws.private_ip,
                    route_tables: v.aws.route_tables.clone(),
                };
                let local = if v.needs_local_address() { Some(local()?) } else { None };
                Ok(Vip::Aws(super::aws::AwsVip::new(ec2, spec, local)))
            }
            #[cfg(not(feature = "aws"))]
            VipMode::Aws => anyhow::bail!("vip.mode \"aws\" needs sipfront built with the `aws` feature"),
        }
    }

    pub async fn acquire(&mut self, claim: &Claim) -> Result<(), String> {
        let _ = claim;
        match self {
            Vip::None => Ok(()),
            Vip::Linux(v) => v.acquire().await.map_err(|e| e.to_string()),
            #[cfg(feature = "aws")]
            Vip::Aws(v) => v.acquire(claim).await.map_err(|e| e.to_string()),
        }
    }

    pub async fn release(&mut self) -> Result<(), String> {
        match self {
            Vip::None => Ok(()),
            Vip::Linux(v) => v.release().await.map_err(|e| e.to_string()),
            #[cfg(feature = "aws")]
            Vip::Aws(v) => v.release().await.map_err(|e| e.to_string()),
        }
    }

    /// Remove the address from this host if a past run left it (a follower at start-up).
    pub fn remove_stale(&self) {
        let local = match self {
            Vip::None => None,
            Vip::Linux(v) => Some(v),
            #[cfg(feature = "aws")]
            Vip::Aws(v) => v.local(),
        };
        if let Some(v) = local {
            match v.remove_stale() {
                Ok(0) => {}
                Ok(n) => tracing::warn!(removed = n, "removed a stale VIP left on this host"),
                Err(e) => tracing::error!(error = %e, "cannot check for a stale VIP"),
            }
        }
    }
}

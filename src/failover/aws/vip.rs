//! `[vip] mode = "aws"`: the VIP moved to this node through the EC2 API, in one of the three ways AWS HA setups
//! use ([`AwsVipMethod`]). Each move is fenced first (the owner tag on the subnet, the Elastic IP allocation, or
//! each route table) and skips calls whose result is already in place, so a move interrupted half-way is simply
//! done again. For a secondary IP and a routed address the host also needs the address itself (AWS only
//! delivers packets): that part is the `linux` VIP ([`LinuxVip`], a process-owned TUN device).
//!
//! Release only takes the address off this host: the next holder moves the EC2 side to itself, whatever state
//! it finds (a dead node cannot release anyway).

use std::net::Ipv4Addr;
use std::sync::Arc;

use aws_sdk_ec2::types::{AttributeBooleanValue, Filter};
use tokio::time::Instant;

use super::{AwsError, Ec2, Identity, OWNER_TAG};
use crate::config::AwsVipMethod;
use crate::failover::Claim;
use crate::metrics as m;
use crate::vip::{LinuxVip, VipError};

/// What to move.
#[derive(Debug, Clone)]
pub struct AwsVipSpec {
    pub method: AwsVipMethod,
    /// The private secondary IP, the Elastic (public) IP, or the routed address.
    pub address: Ipv4Addr,
    pub allocation_id: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    pub route_tables: Vec<String>,
}

/// The VIP on AWS, with the host's own share of it.
pub struct AwsVip {
    ec2: Arc<Ec2>,
    spec: AwsVipSpec,
    local: Option<LinuxVip>,
    /// Source/destination checking is off on our ENI (route-table mode needs it once).
    src_dst_check_off: bool,
}

/// Why the VIP could not move.
#[derive(Debug, thiserror::Error)]
pub enum AwsVipError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("adding the VIP on this host: {0}")]
    Local(#[from] VipError),
}

impl AwsVip {
    pub fn new(ec2: Arc<Ec2>, spec: AwsVipSpec, local: Option<LinuxVip>) -> AwsVip {
        AwsVip { ec2, spec, local, src_dst_check_off: false }
    }

    /// Move the VIP to this node on EC2 (fenced by `claim`), then put it on this host when the method needs it.
    pub async fn acquire(&mut self, claim: &Claim) -> Result<(), AwsVipError> {
        let t0 = Instant::now();
        let me = self.ec2.identity(claim).await?.clone();
        match self.spec.method {
            AwsVipMethod::SecondaryIp => self.move_secondary_ip(claim, &me).await?,
            AwsVipMethod::ElasticIp => self.move_elastic_ip(claim, &me).await?,
            AwsVipMethod::RouteTable => self.move_routes(claim, &me).await?,
        }
        let ec2_ms = t0.elapsed().as_millis() as u64;
        metrics::histogram!(m::FAILOVER_STEP_SECONDS, "resource" => "vip", "step" => "ec2")
            .record(t0.elapsed().as_secs_f64());
        if let Some(local) = &mut self.local {
            local.acquire().await?;
        }
        tracing::info!(method = %self.spec.method, vip = %self.spec.address, eni = %me.eni_id, term = claim.term,
            ec2_ms, took_ms = t0.elapsed().as_millis() as u64, "aws: the VIP is ours");
        Ok(())
    }

    /// Take the address off this host (EC2 is left to the next holder).
    pub async fn release(&mut self) -> Result<(), AwsVipError> {
        if let Some(local) = &mut self.local {
            local.release().await?;
        }
        Ok(())
    }

    /// The host-side address, for clearing leftovers at start-up.
    pub fn local(&self) -> Option<&LinuxVip> {
        self.local.as_ref()
    }

    /// AssignPrivateIpAddresses with AllowReassignment, then an explicit unassign from every other ENI that
    /// still lists the address (AWS moves it; the emulator and half-done moves may leave it behind).
    async fn move_secondary_ip(&self, claim: &Claim, me: &Identity) -> Result<(), AwsError> {
        let ip = self.spec.address.to_string();
        self.ec2.fence(claim, &me.subnet_id, &format!("{OWNER_TAG}:{ip}")).await?;
        let c = self.ec2.sdk().await?;
        // Filters on secondary addresses are unreliable (the emulator ignores them): list the subnet and look.
        let out = self
            .ec2
            .call("DescribeNetworkInterfaces", claim, || {
                c.describe_network_interfaces()
                    .filters(Filter::builder().name("subnet-id").values(&me.subnet_id).build())
                    .send()
            })
            .await?;
        let holders: Vec<String> = out
            .network_interfaces()
            .iter()
            .filter(|n| n.private_ip_addresses().iter().any(|a| a.private_ip_address() == Some(ip.as_str())))
            .filter_map(|n| n.network_interface_id().map(str::to_owned))
            .collect();
        if !holders.contains(&me.eni_id) {
            self.ec2
                .call("AssignPrivateIpAddresses", claim, || {
                    c.assign_private_ip_addresses()
                        .network_interface_id(&me.eni_id)
                        .private_ip_addresses(&ip)
                        .allow_reassignment(true)
                        .send()
                })
                .await?;
        }
        for old in holders.iter().filter(|h| **h != me.eni_id) {
            let r = self
                .ec2
                .call("UnassignPrivateIpAddresses", claim, || {
                    c.unassign_private_ip_addresses().network_interface_id(old).private_ip_addresses(&ip).send()
                })
                .await;
            match r {
                Ok(_) => tracing::info!(eni = %old, vip = %ip, "aws: unassigned the VIP from the old holder"),
                // Already gone there (AWS moved it): fine.
                Err(AwsError::Api { code, message, .. }) => {
                    tracing::debug!(eni = %old, %code, %message, "aws: old holder had no VIP left")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// AssociateAddress with AllowReassociation, unless the Elastic IP already points at us.
    async fn move_elastic_ip(&self, claim: &Claim, me: &Identity) -> Result<(), AwsError> {
        let c = self.ec2.sdk().await?;
        let public = self.spec.address.to_string();
        let out = self
            .ec2
            .call("DescribeAddresses", claim, || match &self.spec.allocation_id {
                Some(a) => c.describe_addresses().allocation_ids(a).send(),
                None => c.describe_addresses().public_ips(&public).send(),
            })
            .await?;
        let Some(addr) = out.addresses().first() else {
            return Err(AwsError::Unexpected { op: "DescribeAddresses", detail: format!("no Elastic IP {public}") });
        };
        let Some(alloc) = addr.allocation_id().map(str::to_owned) else {
            return Err(AwsError::Unexpected {
                op: "DescribeAddresses",
                detail: format!("{public} has no allocation"),
            });
        };
        self.ec2.fence(claim, &alloc, OWNER_TAG).await?;
        let private = self.spec.private_ip.map(|p| p.to_string()).unwrap_or_else(|| me.primary_ip.clone());
        if addr.network_interface_id() == Some(me.eni_id.as_str()) && addr.private_ip_address() == Some(&*private) {
            return Ok(());
        }
        self.ec2
            .call("AssociateAddress", claim, || {
                c.associate_address()
                    .allocation_id(&alloc)
                    .network_interface_id(&me.eni_id)
                    .private_ip_address(&private)
                    .allow_reassociation(true)
                    .send()
            })
            .await?;
        Ok(())
    }

    /// ReplaceRoute (CreateRoute when missing) of VIP/32 to our ENI in every listed table; source/destination
    /// checking off on our ENI first (it would drop packets for an address the ENI does not own).
    async fn move_routes(&mut self, claim: &Claim, me: &Identity) -> Result<(), AwsError> {
        let c = self.ec2.sdk().await?;
        if !self.src_dst_check_off {
            self.ec2
                .call("ModifyNetworkInterfaceAttribute", claim, || {
                    c.modify_network_interface_attribute()
                        .network_interface_id(&me.eni_id)
                        .source_dest_check(AttributeBooleanValue::builder().value(false).build())
                        .send()
                })
                .await?;
            self.src_dst_check_off = true;
        }
        let cidr = format!("{}/32", self.spec.address);
        let key = format!("{OWNER_TAG}:{}", self.spec.address);
        for rtb in &self.spec.route_tables {
            self.ec2.fence(claim, rtb, &key).await?;
            let out = self
                .ec2
                .call("DescribeRouteTables", claim, || c.describe_route_tables().route_table_ids(rtb).send())
                .await?;
            let route = out
                .route_tables()
                .iter()
                .flat_map(|t| t.routes())
                .find(|r| r.destination_cidr_block() == Some(cidr.as_str()));
            match route {
                Some(r) if r.network_interface_id() == Some(me.eni_id.as_str()) => {}
                Some(_) => {
                    self.ec2
                        .call("ReplaceRoute", claim, || {
                            c.replace_route()
                                .route_table_id(rtb)
                                .destination_cidr_block(&cidr)
                                .network_interface_id(&me.eni_id)
                                .send()
                        })
                        .await?;
                }
                None => {
                    self.ec2
                        .call("CreateRoute", claim, || {
                            c.create_route()
                                .route_table_id(rtb)
                                .destination_cidr_block(&cidr)
                                .network_interface_id(&me.eni_id)
                                .send()
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }
}

//! The virtual IP (VIP) on Linux: the one address phones and PBXs use for "the cluster", held by the Raft leader.
//! This module owns putting that address on this host ([`LinuxVip::acquire`]), taking it off
//! ([`LinuxVip::release`]), announcing the move with gratuitous ARP, and clearing leftovers at start-up
//! ([`LinuxVip::remove_stale`]). *When* to do which is the cluster's decision, not ours. Nothing here touches
//! routes, sysctls or the LAN interface's own addresses, and nothing here reads the configuration file.
//!
//! # Why the VIP lives on a TUN device
//! The address is not added to the LAN interface (`eth0`). `acquire` creates a TUN device (`sfvip0`) through an
//! open descriptor of `/dev/net/tun` and puts `VIP/32` on it. The device is not persistent, so the kernel
//! destroys it — and the address with it — the moment that descriptor closes: on `release`, on drop, and when
//! the process dies in any way, `kill -9`, OOM kill and `panic = "abort"` included. A crashed node therefore
//! cannot go on answering ARP for the VIP beside the new holder (the split where two hosts fight over one IP and
//! calls go to the dead one), which an address on `eth0` would do until someone removed it. The descriptor is
//! close-on-exec, so a program we start cannot keep the device alive either, and the device is created with
//! `IFF_TUN_EXCL`, so we never attach to a device someone else made (possibly persistent).
//!
//! # How traffic reaches it: the weak host model
//! Linux treats an address on any interface as an address of the whole host (a `local` route in table `local`):
//! - **ARP.** `eth0` answers "who has VIP?" with its own MAC although the VIP is on `sfvip0`. That holds for
//!   `net.ipv4.conf.{all,eth0}.arp_ignore` (the kernel applies the larger of the two) **0** (the default: reply
//!   for any local address) or **3** (reply unless the address has host scope; the VIP has global scope). With
//!   **1** or **2** the kernel replies only for addresses configured on the receiving interface, so nobody
//!   answers for the VIP and it is unreachable; **8** never replies. So: `arp_ignore` must be 0 or 3 on the LAN
//!   interface (the tests show 0 and 3 working, 1 not). `arp_filter=1` is fine as long as the route back to the asker leaves
//!   through `eth0`.
//! - **Delivery.** A packet for the VIP arriving on `eth0` matches the local route and goes to the sockets bound
//!   to it (or to 0.0.0.0); the TUN device never sees it. Answers leave by the ordinary routes, through `eth0`,
//!   with the VIP as source.
//! - **rp_filter.** Strict mode (1) checks that the route back to the *sender* leaves through the receiving
//!   interface, as it does on a LAN and for routed clients behind the default route; where the VIP lives plays
//!   no part. Loose mode (2) and 0 are fine too.
//! - **Binding.** A socket bound to the VIP before it is acquired needs `IP_FREEBIND` (or
//!   `net.ipv4.ip_nonlocal_bind=1`); one bound to 0.0.0.0 needs nothing. A bound socket survives release and
//!   re-acquire: it simply receives nothing in between.
//!
//! # Moving the VIP
//! On acquire, `garp_count` gratuitous ARP requests go out on the LAN interface, the first at once, the rest
//! `garp_interval` apart (see `garp`); hosts that had the old holder's MAC for the VIP switch to ours. Release
//! sends nothing: the old holder is usually dead, so the new one's announcements must do the work anyway.
//! At start-up a follower calls [`LinuxVip::remove_stale`], which removes the VIP from every interface of this
//! network namespace (left by hand, or by a manager that used `eth0`). Deleting an address that is the primary
//! of its subnet also deletes that subnet's secondaries unless `promote_secondaries` is set; a VIP added after
//! the host's own address is a secondary, so this only bites if the VIP was there first.
//!
//! Needs CAP_NET_ADMIN (TUN, addresses) and CAP_NET_RAW (the packet socket for ARP). IPv4 only. Everything acts
//! in the network namespace of the calling thread.
//!
//! ```text
//!  mod.rs      LinuxVip: the public API, the spec, the errors
//!  tun.rs      the TUN device (its fd is the VIP's lifetime), interface names
//!  netlink.rs  RTM_NEWADDR / RTM_DELADDR / RTM_GETADDR by hand
//!  garp.rs     the LAN interface's MAC and the gratuitous ARP frames
//!  sys.rs      the raw system calls: every `unsafe` outside the tests
//! ```

mod garp;
mod netlink;
mod sys;
mod tun;

#[cfg(test)]
mod tests;

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use garp::{Announcer, GarpTask, LanInterface};
use tun::TunDevice;

/// What `LinuxVip` manages, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxVipSpec {
    /// The VIP.
    pub address: Ipv4Addr,
    /// The prefix length in the configuration (`10.0.0.100/24`). Only checked: the address goes on the TUN device
    /// as /32, since the LAN interface already has the subnet's route.
    pub prefix_len: u8,
    /// The LAN interface: gratuitous ARP goes out here, and it must exist.
    pub interface: String,
    /// The TUN device to create (at most 15 bytes).
    pub device: String,
    /// Gratuitous ARP frames to send on acquire.
    pub garp_count: u32,
    /// The spacing between them.
    pub garp_interval: Duration,
}

/// A failure to hold, release or inspect the VIP. Each says which interface or address it was about, and
/// carries the kernel's errno where there is one.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("VIP {address}/{prefix_len} is not usable: {reason}")]
    InvalidAddress { address: Ipv4Addr, prefix_len: u8, reason: &'static str },
    #[error("invalid {role} name {name:?}: {reason}")]
    InvalidName { role: &'static str, name: String, reason: &'static str },
    #[error("LAN interface {interface} does not exist in this network namespace")]
    NoInterface { interface: String },
    #[error("LAN interface {interface}: {source}")]
    Interface { interface: String, source: io::Error },
    #[error("LAN interface {interface} is not Ethernet (ARPHRD type {hw_type}); gratuitous ARP needs Ethernet")]
    NotEthernet { interface: String, hw_type: u16 },
    #[error("a network device named {device} already exists; it is not ours to take over")]
    DeviceExists { device: String },
    #[error("TUN device {device}: cannot {step}: {source}")]
    Tun { device: String, step: &'static str, source: io::Error },
    #[error("cannot {op} address {address} on {interface}: {source}")]
    Address { op: &'static str, address: Ipv4Addr, interface: String, source: io::Error },
    #[error("cannot list the IPv4 addresses of this network namespace: {0}")]
    List(io::Error),
}

/// The VIP on this host. Owns the TUN device while it holds the VIP; dropping it releases the VIP.
#[derive(Debug)]
pub struct LinuxVip {
    spec: LinuxVipSpec,
    /// The LAN interface as last looked up: `new` checks it exists, and every fresh acquire looks again, since
    /// it may have been re-created (new ifindex, new MAC) in between.
    lan: LanInterface,
    /// Some exactly while we hold the VIP.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    /// The device carrying the VIP; dropping it destroys the device and the address.
    tun: TunDevice,
    since: Instant,
    /// The gratuitous ARPs still to send; dropping it stops them.
    garp: Option<GarpTask>,
}

impl LinuxVip {
    /// Check the spec and that the LAN interface exists (its ifindex and MAC). Changes nothing.
    pub fn new(spec: LinuxVipSpec) -> Result<LinuxVip, VipError> {
        let bad = |reason| Err(VipError::InvalidAddress { address: spec.address, prefix_len: spec.prefix_len, reason });
        let a = spec.address;
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
            return bad("not a unicast address");
        }
        if !(1..=32).contains(&spec.prefix_len) {
            return bad("the prefix length must be 1 to 32");
        }
        for (role, name) in [("TUN device", &spec.device), ("LAN interface", &spec.interface)] {
            tun::check_name(name).map_err(|reason| VipError::InvalidName { role, name: name.clone(), reason })?;
        }
        if spec.device == spec.interface {
            let reason = "the TUN device must not be the LAN interface";
            return Err(VipError::InvalidName { role: "TUN device", name: spec.device.clone(), reason });
        }
        let lan = LanInterface::lookup(&spec.interface)?;
        Ok(LinuxVip { spec, lan, held: None })
    }

    /// Take the VIP: create the TUN device, bring it up, add VIP/32, then announce it with gratuitous ARP (the
    /// first frame before returning, the rest from a task on the current tokio runtime).
    ///
    /// Idempotent: while held, a call only checks that the address is still on the device, restoring (and
    /// announcing) it if someone removed it, or starting over if the device itself was deleted. On error nothing
    /// is left behind: a half-made device goes with its descriptor.
    pub async fn acquire(&mut self) -> Result<(), VipError> {
        let started = Instant::now();
        let vip = self.spec.address;
        if let Some((ifindex, device)) = self.held.as_ref().map(|h| (h.tun.ifindex, h.tun.name.clone())) {
            match netlink::add(ifindex, vip) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    tracing::warn!(%vip, %device, "VIP had been removed from its device; restored");
                    let garp = self.announce();
                    if let Some(held) = &mut self.held {
                        held.garp = garp;
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    tracing::warn!(%vip, %device, "VIP device had been deleted; creating it again");
                    self.held = None;
                }
                Err(source) => return Err(self.address_error("add", &device, source)),
            }
        }
        self.lan = LanInterface::lookup(&self.spec.interface)?;
        let tun = TunDevice::create(&self.spec.device)?;
        netlink::add(tun.ifindex, vip).map_err(|source| self.address_error("add", &tun.name, source))?;
        let garp = self.announce();
        tracing::info!(%vip, device = %tun.name, interface = %self.lan.name, took = ?started.elapsed(), "VIP acquired");
        self.held = Some(Held { tun, since: Instant::now(), garp });
        Ok(())
    }

    /// Give the VIP up: stop pending gratuitous ARPs, delete the address, close the TUN device. Idempotent.
    pub async fn release(&mut self) -> Result<(), VipError> {
        let Some(mut held) = self.held.take() else { return Ok(()) };
        let started = Instant::now();
        drop(held.garp.take()); // no announcement may follow the delete
        let (vip, device, ifindex) = (self.spec.address, held.tun.name.clone(), held.tun.ifindex);
        let deleted = netlink::delete(&self.tun_address(&held.tun));
        let held_for = held.since.elapsed();
        drop(held); // closes the fd: the kernel unregisters the device
        if let Err(source) = deleted {
            // The device is gone now, and the address with it, unless something else kept the device alive.
            let addresses = netlink::list().map_err(VipError::List)?;
            let still_there = addresses.iter().any(|a| a.local == vip && a.ifindex == ifindex);
            if still_there {
                return Err(self.address_error("delete", &device, source));
            }
            tracing::warn!(%vip, %device, error = %source, "deleting the VIP failed, but closing its device removed it");
        }
        tracing::info!(%vip, %device, took = ?started.elapsed(), ?held_for, "VIP released");
        Ok(())
    }

    /// Whether the VIP is on any interface of this network namespace, ours or not.
    pub fn present(&self) -> Result<bool, VipError> {
        Ok(netlink::list().map_err(VipError::List)?.iter().any(|a| a.local == self.spec.address))
    }

    /// Delete the VIP from every interface of this network namespace that has it (a leftover from an older
    /// manager, or added by hand); for a node that is not the leader, at start-up. Leaves our own device alone if
    /// we hold the VIP. Returns how many addresses were removed.
    pub fn remove_stale(&self) -> Result<usize, VipError> {
        let ours = self.held.as_ref().map(|h| h.tun.ifindex);
        let mut removed = 0;
        for a in netlink::list().map_err(VipError::List)? {
            if a.local != self.spec.address || Some(a.ifindex) == ours {
                continue;
            }
            if netlink::delete(&a).map_err(|source| self.address_error("delete", &a.label, source))? {
                tracing::warn!(vip = %a.local, prefix_len = a.prefix_len, interface = %a.label, "removed a stale VIP");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// We hold the VIP: acquired and not released since.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Send the gratuitous ARPs for the current LAN interface.
    fn announce(&self) -> Option<GarpTask> {
        match Announcer::open(&self.lan, self.spec.address) {
            Ok(announcer) => garp::announce(announcer, self.spec.garp_count, self.spec.garp_interval),
            Err(e) => {
                let (vip, interface) = (self.spec.address, &self.lan.name);
                tracing::warn!(%vip, %interface, error = %e, "cannot open a packet socket: no gratuitous ARP sent");
                None
            }
        }
    }

    fn tun_address(&self, tun: &TunDevice) -> netlink::Address {
        let vip = self.spec.address;
        netlink::Address { ifindex: tun.ifindex, prefix_len: 32, local: vip, address: vip, label: tun.name.clone() }
    }

    fn address_error(&self, op: &'static str, interface: &str, source: io::Error) -> VipError {
        VipError::Address { op, address: self.spec.address, interface: interface.to_owned(), source }
    }

    /// Wait until the gratuitous ARPs of the last acquire are all sent.
    #[cfg(test)]
    async fn garp_finished(&mut self) {
        if let Some(task) = self.held.as_mut().and_then(|h| h.garp.take()) {
            task.finished().await;
        }
    }
}

impl Drop for LinuxVip {
    /// Best effort: delete the address, then close the device (which would remove it anyway).
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            let _ = netlink::delete(&self.tun_address(&held.tun));
            tracing::info!(vip = %self.spec.address, device = %held.tun.name, "VIP released on drop");
        }
    }
}

//! Gratuitous ARP on the LAN interface: after the VIP moves, tell every host on the segment that it is now at
//! our MAC, so they stop sending to the old holder. Each frame is an ARP *request* broadcast to ff:ff:ff:ff:ff:ff
//! with sender IP = target IP = VIP, sender MAC = the LAN interface's MAC and target MAC zero. Linux (and most
//! stacks) update an existing neighbour entry from such a request, overriding even a just-confirmed one, but
//! create no new entry from it unless `arp_accept` is set — which is fine: a host that has no entry will ARP
//! and be answered by the holder.
//!
//! The first frame goes out at once, inline in `acquire`; the rest from a task, `interval` apart, because a single
//! frame can be lost. Failures are logged, never fatal: the VIP works without them, only slower to be found.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::sys::{self, IfReq};
use super::tun::{control_socket, ifindex};
use super::VipError;
use crate::metrics as m;

/// The LAN interface the VIP is reached through, as looked up in this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LanInterface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl LanInterface {
    /// Find the interface and its Ethernet address.
    pub(super) fn lookup(name: &str) -> Result<LanInterface, VipError> {
        let fail = |source: io::Error| match source.raw_os_error() {
            Some(libc::ENODEV) => VipError::NoInterface { interface: name.to_owned() },
            _ => VipError::Interface { interface: name.to_owned(), source },
        };
        let ctl = control_socket().map_err(fail)?;
        let ifindex = ifindex(&ctl, name).map_err(fail)?;
        let mut req = IfReq::new(name);
        sys::ioctl_ifreq(&ctl, libc::SIOCGIFHWADDR, &mut req).map_err(fail)?;
        let (hw_type, data) = req.hwaddr();
        if hw_type != libc::ARPHRD_ETHER {
            return Err(VipError::NotEthernet { interface: name.to_owned(), hw_type });
        }
        let mut mac = [0; 6];
        mac.copy_from_slice(&data[..6]);
        Ok(LanInterface { name: name.to_owned(), ifindex, mac })
    }
}

/// The 28-byte ARP payload of a gratuitous ARP request (the kernel adds the Ethernet header).
pub(super) fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 28] {
    let mut f = [0; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    f[4] = 6; // hlen
    f[5] = 4; // plen
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // op: request
    f[8..14].copy_from_slice(&mac); // sender MAC
    f[14..18].copy_from_slice(&vip.octets()); // sender IP
                                              // target MAC [18..24] stays zero
    f[24..28].copy_from_slice(&vip.octets()); // target IP
    f
}

/// A packet socket ready to broadcast one frame on one interface.
pub(super) struct Announcer {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
    frame: [u8; 28],
    interface: String,
    vip: Ipv4Addr,
}

impl Announcer {
    pub(super) fn open(lan: &LanInterface, vip: Ipv4Addr) -> io::Result<Announcer> {
        // Protocol 0: this socket only sends. With ETH_P_ARP it would also queue a copy of every ARP packet the
        // host sees, which nobody reads. The frame's EtherType comes from `sll_protocol` below.
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)?;
        let to = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ARP as u16).to_be(),
            sll_ifindex: lan.ifindex as libc::c_int,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
        };
        Ok(Announcer { fd, to, frame: frame(lan.mac, vip), interface: lan.name.clone(), vip })
    }

    /// Broadcast the frame once; a failure is logged, not returned.
    pub(super) fn send(&self) -> bool {
        match sys::send_to_link(&self.fd, &self.frame, &self.to) {
            Ok(_) => {
                metrics::counter!(m::VIP_GARP_SENT).increment(1);
                true
            }
            Err(e) => {
                tracing::warn!(vip = %self.vip, interface = %self.interface, error = %e, "gratuitous ARP not sent");
                false
            }
        }
    }
}

/// The task sending the remaining frames; aborted when dropped, so releasing the VIP stops them.
#[derive(Debug)]
pub(super) struct GarpTask(JoinHandle<()>);

impl GarpTask {
    /// Wait for the last frame (tests).
    #[cfg(test)]
    pub(super) async fn finished(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for GarpTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send `count` frames: the first now, the others `interval` apart from a task on the current tokio runtime.
/// Returns that task, or None when there is nothing left to send (or no runtime to send it from).
pub(super) fn announce(announcer: Announcer, count: u32, interval: Duration) -> Option<GarpTask> {
    if count == 0 {
        return None;
    }
    announcer.send();
    if count == 1 {
        return None;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(vip = %announcer.vip, "no tokio runtime: only one gratuitous ARP sent");
        return None;
    };
    Some(GarpTask(runtime.spawn(async move {
        for _ in 1..count {
            tokio::time::sleep(interval).await;
            announcer.send();
        }
    })))
}

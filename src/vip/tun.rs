//! The process-owned TUN device that carries the VIP, and interface-name checks. The device exists exactly as
//! long as [`TunDevice`] (its file descriptor) does: it is created non-persistent, so when the descriptor closes
//! — on drop, or when the kernel tears down a dead process — the kernel unregisters the device and every address
//! on it. No packet is ever read from or written to it: it is only a place to hang the address.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;

use super::sys::{self, IfReq};
use super::VipError;

/// The TUN device while we hold it.
#[derive(Debug)]
pub(super) struct TunDevice {
    /// The open `/dev/net/tun` descriptor attached to the device. Closing it destroys the device.
    _fd: OwnedFd,
    pub name: String,
    pub ifindex: u32,
}

impl TunDevice {
    /// Create the device (it must not exist yet) and bring it up.
    pub(super) fn create(name: &str) -> Result<TunDevice, VipError> {
        let fail = |step, source| VipError::Tun { device: name.to_owned(), step, source };
        // std opens with O_CLOEXEC: a child process must never inherit the descriptor, or the device (and the
        // VIP) would outlive us.
        let file =
            OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(|e| fail("open /dev/net/tun", e))?;
        let fd = OwnedFd::from(file);

        let mut req = IfReq::new(name);
        // IFF_TUN_EXCL: fail with EBUSY rather than attach to an existing device, which might be persistent
        // (surviving our death) or someone else's.
        req.set_flags((libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short);
        sys::ioctl_ifreq(&fd, libc::TUNSETIFF as libc::c_ulong, &mut req).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => VipError::DeviceExists { device: name.to_owned() },
            _ => fail("create it (TUNSETIFF)", e),
        })?;
        let name = req.name();

        let ctl = control_socket().map_err(|e| fail("open a control socket for", e))?;
        let mut req = IfReq::new(&name);
        sys::ioctl_ifreq(&ctl, libc::SIOCGIFFLAGS, &mut req).map_err(|e| fail("read the flags of", e))?;
        req.set_flags(req.flags() | libc::IFF_UP as libc::c_short);
        sys::ioctl_ifreq(&ctl, libc::SIOCSIFFLAGS, &mut req).map_err(|e| fail("bring up", e))?;
        let ifindex = ifindex(&ctl, &name).map_err(|e| fail("find the ifindex of", e))?;
        Ok(TunDevice { _fd: fd, name, ifindex })
    }
}

/// A socket to aim interface ioctls (SIOCGIF*, SIOCSIFFLAGS) at; any AF_INET datagram socket will do.
pub(super) fn control_socket() -> io::Result<OwnedFd> {
    sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
}

/// The ifindex of a network interface in this network namespace.
pub(super) fn ifindex(ctl: &OwnedFd, name: &str) -> io::Result<u32> {
    let mut req = IfReq::new(name);
    sys::ioctl_ifreq(ctl, libc::SIOCGIFINDEX, &mut req)?;
    Ok(req.ifindex())
}

/// Whether `name` is a name the kernel accepts for a network interface (its `dev_valid_name`), refusing also
/// `%` so that the kernel does not pick a numbered name for us.
pub(super) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() >= libc::IFNAMSIZ {
        Err("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("`.` and `..` are not interface names")
    } else if name.bytes().any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace()) {
        Err("contains `/`, `:`, `%`, NUL or whitespace")
    } else {
        Ok(())
    }
}

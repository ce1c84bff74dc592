//! The raw system calls the VIP needs (socket, ioctl, send, recv), each wrapped once, so that every `unsafe` block
//! of the module lives in this file beside its reason. Nothing here knows what a VIP is; callers own the file
//! descriptors as [`OwnedFd`]s, so they are closed exactly once, on drop.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `struct ifreq` as the kernel copies it: a NUL-padded name and a 24-byte union, of which we use the flags (a
/// `short`), the ifindex (an `int`) and the hardware address (a `struct sockaddr`). Kept as bytes so that reading
/// a union member needs no `unsafe`.
#[repr(C, align(8))]
pub(super) struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    /// `name` must already be a valid interface name (at most 15 bytes, no NUL); see [`super::tun::check_name`].
    pub(super) fn new(name: &str) -> IfReq {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    /// The name the kernel left in the request (TUNSETIFF may rename).
    pub(super) fn name(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    pub(super) fn flags(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub(super) fn set_flags(&mut self, flags: libc::c_short) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    pub(super) fn ifindex(&self) -> u32 {
        let raw = libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]);
        u32::try_from(raw).unwrap_or(0)
    }

    /// The hardware address as `(sa_family, sa_data)`: the family is the ARPHRD_* type.
    pub(super) fn hwaddr(&self) -> (u16, [u8; 14]) {
        let family = u16::from_ne_bytes([self.data[0], self.data[1]]);
        let mut data = [0; 14];
        data.copy_from_slice(&self.data[2..16]);
        (family, data)
    }
}

/// `socket(2)`, always with `SOCK_CLOEXEC` so no child process inherits the descriptor (an inherited TUN fd
/// would keep the VIP alive after we die).
pub(super) fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments; no memory is passed.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ioctl whose argument is a `struct ifreq` (SIOCGIFINDEX, SIOCGIFHWADDR, SIOCGIFFLAGS, SIOCSIFFLAGS,
/// TUNSETIFF). The kernel reads and may write the request in place.
pub(super) fn ioctl_ifreq(fd: &impl AsRawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a valid, exclusively borrowed, `struct ifreq`-sized and -laid-out buffer for the whole
    // call; every request passed here takes a `struct ifreq *`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `send(2)` on a connected (or kernel-addressed, like netlink) socket.
pub(super) fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `recv(2)` with `MSG_TRUNC`: the result is the datagram's real length, which may exceed `buf.len()`; the caller
/// compares to detect truncation.
pub(super) fn recv(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call; with MSG_TRUNC the
    // kernel still writes at most `buf.len()` bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `sendto(2)` a link-layer address (AF_PACKET sockets).
pub(super) fn send_to_link(fd: &impl AsRawFd, buf: &[u8], to: &libc::sockaddr_ll) -> io::Result<usize> {
    let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` is valid for `buf.len()` bytes and `to` is a fully initialised sockaddr_ll of `len` bytes,
    // both borrowed for the duration of the call.
    let n = unsafe {
        libc::sendto(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0, (to as *const libc::sockaddr_ll).cast(), len)
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// SO_RCVTIMEO, so a read from the kernel can never hang the caller forever.
pub(super) fn set_recv_timeout(fd: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: `tv` is a valid timeval and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

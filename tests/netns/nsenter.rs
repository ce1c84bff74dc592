//! Entering a named network namespace from a thread of the test process, with `setns(2)` on
//! `/run/netns/NAME` (what `ip netns add` mounts). Only the calling thread moves, so these helpers either run
//! on threads of their own ([`in_ns`]) or are called by the sampler's and the pinger's threads, never by the
//! test's main thread. Also: whether an IPv4 address is configured on any interface of the current namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// An open handle on a named namespace. Holding it keeps the namespace alive even after `ip netns del`, so the
/// threads that hold these drop them before the lab deletes its namespaces.
pub struct NsHandle {
    pub name: String,
    file: File,
}

impl NsHandle {
    pub fn open(name: &str) -> io::Result<NsHandle> {
        let file = File::open(format!("/run/netns/{name}"))?;
        Ok(NsHandle { name: name.into(), file })
    }

    /// Move the calling thread into this namespace.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: a valid, open namespace fd; setns only changes this thread's network namespace.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::other(format!("setns({}): {}", self.name, io::Error::last_os_error())))
        }
    }
}

/// Run `f` on a new thread inside namespace `name` and return what it returned.
pub fn in_ns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || -> io::Result<T> {
        NsHandle::open(&name)?.enter()?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
}

/// A UDP socket bound to `bind` inside namespace `ns` (it stays there whichever thread uses it).
pub fn udp_socket_in(ns: &str, bind: SocketAddr) -> io::Result<UdpSocket> {
    in_ns(ns, move || UdpSocket::bind(bind))?
}

/// Whether `addr` is configured on any interface (up or down) of the calling thread's namespace.
pub fn has_ipv4(addr: Ipv4Addr) -> io::Result<bool> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below; it opens its netlink socket in the calling
    // thread's namespace.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = u32::from(addr);
    let mut found = false;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: `p` walks the list getifaddrs returned, which stays valid until freeifaddrs.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a sockaddr whose family says how to read the rest.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                if u32::from_be(sin.sin_addr.s_addr) == want {
                    found = true;
                    break;
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from the successful getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(found)
}

//! Just enough rtnetlink (NETLINK_ROUTE) to add, delete and list IPv4 addresses: `ip addr add/del/show`, written
//! out by hand so the VIP needs no netlink crate. Each operation opens its own socket, sends one request and reads
//! until its answer (an ACK, an error, or the end of a dump); answers are matched by sequence number. Every socket
//! has a receive timeout, so a kernel that never answers (it always does) cannot hang the caller.
//!
//! Wire format (all integers in host byte order, every header and attribute padded to 4 bytes):
//! `nlmsghdr` (16 bytes: len, type, flags, seq, pid) + `ifaddrmsg` (8 bytes: family, prefixlen, flags, scope,
//! index) + `rtattr`s (len, type, data). Constants are the kernel's ABI, spelled here rather than taken from
//! `libc` because `libc` types them inconsistently (`c_int` vs `u16`) across targets.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::sys;

const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_FLAGS: u16 = 8;
/// Don't add a prefix route for the address (a /32 gets none anyway; this keeps it so if the length changes).
pub(super) const IFA_F_NOPREFIXROUTE: u32 = 0x200;
const RT_SCOPE_UNIVERSE: u8 = 0;
/// Large enough for any batch the kernel sends a dump reader (it sizes batches to the reader's buffer, ≤ 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// One IPv4 address as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Address {
    pub ifindex: u32,
    pub prefix_len: u8,
    /// IFA_LOCAL: the interface's own address.
    pub local: Ipv4Addr,
    /// IFA_ADDRESS: the same as `local`, except on point-to-point links where it is the peer.
    pub address: Ipv4Addr,
    /// IFA_LABEL: the interface name (or an alias such as `eth0:1`), for messages.
    pub label: String,
}

/// Add `address/32` to `ifindex` with global scope and IFA_F_NOPREFIXROUTE. Ok(false) if it was already there.
pub(super) fn add(ifindex: u32, address: Ipv4Addr) -> io::Result<bool> {
    let octets = address.octets();
    let msg = address_message(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        next_seq(),
        (ifindex, 32),
        &[(IFA_LOCAL, &octets), (IFA_ADDRESS, &octets), (IFA_FLAGS, &IFA_F_NOPREFIXROUTE.to_ne_bytes())],
    );
    match Socket::open()?.request(&msg) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Delete one listed address. Ok(false) if it (or its interface) was already gone.
pub(super) fn delete(a: &Address) -> io::Result<bool> {
    let (local, address) = (a.local.octets(), a.address.octets());
    let msg = address_message(
        RTM_DELADDR,
        NLM_F_REQUEST | NLM_F_ACK,
        next_seq(),
        (a.ifindex, a.prefix_len),
        &[(IFA_LOCAL, &local), (IFA_ADDRESS, &address)],
    );
    match Socket::open()?.request(&msg) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every IPv4 address in this network namespace (`ip -4 addr show`).
pub(super) fn list() -> io::Result<Vec<Address>> {
    let msg = address_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, next_seq(), (0, 0), &[]);
    let mut out = Vec::new();
    Socket::open()?.dump(&msg, |kind, payload| {
        if kind == RTM_NEWADDR {
            if let Some(a) = parse_address(payload) {
                out.push(a);
            }
        }
    })?;
    Ok(out)
}

fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// nlmsghdr + ifaddrmsg (AF_INET, global scope) + attributes. `target` is (ifindex, prefix length).
pub(super) fn address_message(kind: u16, flags: u16, seq: u32, target: (u32, u8), attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel knows who we are
    m.extend_from_slice(&[libc::AF_INET as u8, target.1, 0, RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&target.0.to_ne_bytes());
    for (kind, data) in attrs {
        let len = 4 + data.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(align4(m.len()), 0);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// An RTM_NEWADDR payload (ifaddrmsg + attributes), or None if it is not a well-formed IPv4 address.
pub(super) fn parse_address(p: &[u8]) -> Option<Address> {
    if p.len() < IFADDRMSG_LEN || i32::from(p[0]) != libc::AF_INET {
        return None;
    }
    let (prefix_len, ifindex) = (p[1], u32::from_ne_bytes(p[4..8].try_into().ok()?));
    let (mut local, mut address, mut label) = (None, None, String::new());
    let mut at = IFADDRMSG_LEN;
    while at + 4 <= p.len() {
        let len = usize::from(u16::from_ne_bytes([p[at], p[at + 1]]));
        let kind = u16::from_ne_bytes([p[at + 2], p[at + 3]]);
        if len < 4 || at + len > p.len() {
            return None;
        }
        let data = &p[at + 4..at + len];
        let ip = <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from);
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            IFA_LABEL => label = String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(b"")).into_owned(),
            _ => {}
        }
        at += align4(len);
    }
    // IPv4 always sends IFA_LOCAL; fall back to IFA_ADDRESS like iproute2 does.
    let local = local.or(address)?;
    Some(Address { ifindex, prefix_len, local, address: address.unwrap_or(local), label })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message in a received buffer.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Split a received datagram into its messages.
fn messages(buf: &[u8]) -> io::Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message"));
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[at + 4], buf[at + 5]]),
            seq: u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes")),
            payload: &buf[at + NLMSG_HDRLEN..at + len],
        });
        at += align4(len);
    }
    Ok(out)
}

/// The errno in an NLMSG_ERROR (or NLMSG_DONE) payload: 0 for an ACK, else a negative errno.
fn error_code(payload: &[u8]) -> io::Result<()> {
    let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
    if code < 0 {
        Err(io::Error::from_raw_os_error(-code))
    } else {
        Ok(())
    }
}

struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Socket {
    fn open() -> io::Result<Socket> {
        let fd = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
        sys::set_recv_timeout(&fd, RECV_TIMEOUT)?;
        Ok(Socket { fd, buf: vec![0; RECV_BUFFER] })
    }

    fn send(&self, msg: &[u8]) -> io::Result<u32> {
        let n = sys::send(&self.fd, msg)?;
        if n != msg.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink send"));
        }
        Ok(u32::from_ne_bytes(msg[8..12].try_into().expect("4 bytes")))
    }

    fn recv(&mut self) -> io::Result<usize> {
        let n = sys::recv(&self.fd, &mut self.buf)?;
        if n > self.buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "netlink answer larger than the receive buffer"));
        }
        Ok(n)
    }

    /// Send a request with NLM_F_ACK and wait for its ACK (Ok) or error (the kernel's errno).
    fn request(mut self, msg: &[u8]) -> io::Result<()> {
        let seq = self.send(msg)?;
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n])? {
                if m.seq == seq && m.kind == NLMSG_ERROR {
                    return error_code(m.payload);
                }
            }
        }
    }

    /// Send a dump request and hand every message of the answer to `each` until NLMSG_DONE.
    fn dump(mut self, msg: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let seq = self.send(msg)?;
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return error_code(m.payload),
                    NLMSG_ERROR => error_code(m.payload)?,
                    kind => each(kind, m.payload),
                }
            }
        }
    }
}

//! Network namespaces for the VIP tests. Each test makes its own namespaces, named for the test and our pid so
//! parallel tests and parallel runs never meet, and deletes them on drop (panics included). Code under test runs
//! in a [`Worker`]: a thread that entered one namespace and drives a current_thread tokio runtime, the way
//! sipfront would, so spawned tasks (gratuitous ARPs, echo servers) keep running between test steps.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::vip::{sys, LinuxVip, LinuxVipSpec, VipError};

const JOB_TIMEOUT: Duration = Duration::from_secs(20);

/// False (after saying why) when the tests cannot run: they need root for namespaces, TUN and raw sockets.
pub(crate) fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (network namespaces, TUN devices, packet sockets)");
        return false;
    }
    true
}

/// Run `ip ARGS`, panicking with its stderr if it fails.
pub(crate) fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `cond` every 10 ms until it holds or `within` passes; its last value.
pub(crate) fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Move the calling thread into the namespace `name`.
pub(crate) fn enter_netns(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open the namespace");
    // SAFETY: the fd is a valid, open namespace file for the duration of the call; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", io::Error::last_os_error());
}

/// A network namespace that is deleted on drop.
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    pub(crate) fn new(test: &str, role: &str) -> Netns {
        let name = format!("sfvt-{test}-{}-{role}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output(); // a leftover of a killed run
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`.
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        ip(&[&["-n", self.name.as_str()], args].concat())
    }

    /// Whether `ip -n NAME ARGS` succeeds.
    pub(crate) fn ip_ok(&self, args: &[&str]) -> bool {
        Command::new("ip").args(["-n", &self.name]).args(args).output().expect("run ip").status.success()
    }

    /// Set a sysctl inside the namespace.
    pub(crate) fn sysctl(&self, key: &str, value: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw", &format!("{key}={value}")])
            .output()
            .expect("run sysctl");
        assert!(out.status.success(), "sysctl {key}={value}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The IPv4 addresses, one line each (`ip -o -4 addr`).
    pub(crate) fn addresses(&self) -> String {
        self.ip(&["-o", "-4", "addr"])
    }

    pub(crate) fn has_link(&self, dev: &str) -> bool {
        self.ip_ok(&["link", "show", "dev", dev])
    }

    pub(crate) fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        let text = out.split("link/ether ").nth(1).expect("an Ethernet device");
        let mut mac = [0; 6];
        for (byte, hex) in mac.iter_mut().zip(text[..17].split(':')) {
            *byte = u8::from_str_radix(hex, 16).expect("hex");
        }
        mac
    }

    /// Run `f` on a thread inside the namespace; sockets it opens stay in the namespace.
    pub(crate) fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&self.name);
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "del", &self.name]).output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            eprintln!("could not delete network namespace {}: {out:?}", self.name);
        }
    }
}

/// A veth pair `lan0` between `a` and `b`, addresses 10.231.X.{ia,ib}/24, both up.
pub(crate) fn link(a: &Netns, ia: u8, b: &Netns, ib: u8, x: u8) {
    ip(&["link", "add", "lan0", "netns", &a.name, "type", "veth", "peer", "name", "lan0", "netns", &b.name]);
    for (ns, i) in [(a, ia), (b, ib)] {
        ns.ip(&["addr", "add", &format!("10.231.{x}.{i}/24"), "dev", "lan0"]);
        ns.ip(&["link", "set", "lan0", "up"]);
    }
}

pub(crate) fn spec(x: u8, garp_count: u32) -> LinuxVipSpec {
    LinuxVipSpec {
        address: Ipv4Addr::new(10, 231, x, 100),
        prefix_len: 24,
        interface: "lan0".into(),
        device: "sfvip0".into(),
        garp_count,
        garp_interval: Duration::from_millis(50),
    }
}

/// Send numbered datagrams to `to` until one comes back (answered by an [`Worker::echo`] server) or `within`
/// passes. Returns the answer.
pub(crate) fn echo(client: &UdpSocket, to: SocketAddr, within: Duration) -> Option<String> {
    client.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let deadline = Instant::now() + within;
    let mut buf = [0; 512];
    for attempt in 0u32.. {
        if Instant::now() >= deadline {
            return None;
        }
        let probe = format!("probe-{attempt}-{}", std::process::id());
        client.send_to(probe.as_bytes(), to).expect("send");
        while let Ok((n, _)) = client.recv_from(&mut buf) {
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            if answer.ends_with(&probe) {
                return Some(answer);
            }
        }
    }
    unreachable!()
}

type Job = Box<dyn FnOnce(Option<LinuxVip>) -> Pin<Box<dyn Future<Output = Option<LinuxVip>>>> + Send>;

/// A thread inside a namespace running a current_thread runtime that owns one [`LinuxVip`]. The VIP never leaves
/// the thread, so its drop (which talks netlink) happens in the right namespace.
pub(crate) struct Worker {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn new(ns: &Netns) -> Worker {
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let name = ns.name.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&name);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut vip = None;
                while let Some(job) = rx.recv().await {
                    vip = job(vip).await;
                }
            });
        });
        Worker { jobs: Some(jobs), thread: Some(thread) }
    }

    /// Run `f` on the worker with its VIP (None before [`Worker::create`]) and wait for the result.
    fn with<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Option<LinuxVip>) -> Fut + Send + 'static,
        Fut: Future<Output = (Option<LinuxVip>, T)> + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |vip| {
            Box::pin(async move {
                let (vip, out) = f(vip).await;
                let _ = tx.send(out);
                vip
            })
        });
        self.jobs.as_ref().expect("worker running").send(job).expect("worker thread is gone");
        rx.recv_timeout(JOB_TIMEOUT).expect("worker job panicked or timed out")
    }

    /// Run an async block on the worker (its tasks keep running afterwards).
    pub(crate) fn run<T: Send + 'static, Fut: Future<Output = T> + 'static>(
        &self,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> T {
        self.with(move |vip| async move { (vip, f().await) })
    }

    fn vip<T: Send + 'static, Fut: Future<Output = (LinuxVip, T)> + 'static>(
        &self,
        f: impl FnOnce(LinuxVip) -> Fut + Send + 'static,
    ) -> T {
        self.with(move |vip| async move {
            let (vip, out) = f(vip.expect("LinuxVip created")).await;
            (Some(vip), out)
        })
    }

    pub(crate) fn create(&self, spec: LinuxVipSpec) -> Result<(), VipError> {
        self.with(move |_| async move {
            match LinuxVip::new(spec) {
                Ok(vip) => (Some(vip), Ok(())),
                Err(e) => (None, Err(e)),
            }
        })
    }

    pub(crate) fn acquire(&self) -> Result<(), VipError> {
        self.vip(|mut v| async move {
            let r = v.acquire().await;
            (v, r)
        })
    }

    pub(crate) fn release(&self) -> Result<(), VipError> {
        self.vip(|mut v| async move {
            let r = v.release().await;
            (v, r)
        })
    }

    pub(crate) fn present(&self) -> Result<bool, VipError> {
        self.vip(|v| async move {
            let r = v.present();
            (v, r)
        })
    }

    pub(crate) fn remove_stale(&self) -> Result<usize, VipError> {
        self.vip(|v| async move {
            let r = v.remove_stale();
            (v, r)
        })
    }

    pub(crate) fn holds(&self) -> bool {
        self.vip(|v| async move {
            let r = v.holds();
            (v, r)
        })
    }

    pub(crate) fn garp_finished(&self) {
        self.vip(|mut v| async move {
            v.garp_finished().await;
            (v, ())
        })
    }

    /// Drop the VIP (not `release`) on the worker thread.
    pub(crate) fn drop_vip(&self) {
        self.with(|vip| async move {
            drop(vip);
            (None, ())
        })
    }

    /// A UDP echo server on `addr` that prefixes each answer with `who:`.
    pub(crate) fn echo(&self, addr: SocketAddr, who: &'static str) {
        self.run(move || async move {
            let socket = tokio::net::UdpSocket::bind(addr).await.expect("bind the echo server");
            tokio::spawn(async move {
                let mut buf = [0; 512];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let mut answer = format!("{who}:").into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&answer, from).await;
                }
            });
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One received ARP packet: the link-layer source, the packet type (broadcast, ...) and the ARP payload.
pub(crate) struct ArpSeen {
    pub from: [u8; 6],
    pub pkttype: u8,
    pub payload: Vec<u8>,
}

/// A packet socket receiving every ARP packet on one interface.
pub(crate) struct ArpSniffer(OwnedFd);

impl ArpSniffer {
    /// Open it inside `ns` on `dev`.
    pub(crate) fn open(ns: &Netns, dev: &str) -> ArpSniffer {
        ns.enter(|| {
            let proto = (libc::ETH_P_ARP as u16).to_be();
            let fd = sys::socket(libc::AF_PACKET, libc::SOCK_DGRAM, libc::c_int::from(proto)).expect("packet socket");
            let ctl = crate::vip::tun::control_socket().expect("control socket");
            let ifindex = crate::vip::tun::ifindex(&ctl, dev).expect("ifindex");
            let mut at = blank_sockaddr_ll();
            at.sll_protocol = proto;
            at.sll_ifindex = ifindex as libc::c_int;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `at` is a valid sockaddr_ll of `len` bytes for the duration of the call.
            let rc = unsafe { libc::bind(fd.as_raw_fd(), (&at as *const libc::sockaddr_ll).cast(), len) };
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            sys::set_recv_timeout(&fd, Duration::from_millis(50)).expect("timeout");
            ArpSniffer(fd)
        })
    }

    /// Every packet that arrives within `within`, stopping early once `enough` says so.
    pub(crate) fn collect(&self, within: Duration, mut enough: impl FnMut(&[ArpSeen]) -> bool) -> Vec<ArpSeen> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < deadline && !enough(&seen) {
            let mut buf = [0u8; 256];
            let mut from = blank_sockaddr_ll();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` is writable for its length and `from`/`len` describe a writable sockaddr_ll, all
            // borrowed for the duration of the call.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                let mut mac = [0; 6];
                mac.copy_from_slice(&from.sll_addr[..6]);
                seen.push(ArpSeen { from: mac, pkttype: from.sll_pkttype, payload: buf[..n].to_vec() });
            }
        }
        seen
    }
}

fn blank_sockaddr_ll() -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: 0,
        sll_ifindex: 0,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

//! The lab: seven namespaces, a bridge, a veth per member, the temp dir, and the cleanup on drop (see the
//! module docs of `netns` for the picture and the guarantees). Processes are in `procs`, background threads
//! in `sampler` and `pinger`; this file owns creation and teardown.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::procs::LabProc;
use super::shared::tail_lines;
use super::{nsenter, PHONE_OCTET, SIP_PORT, VIP_OCTET};

/// One namespace of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    /// The switch: holds the bridge `br0`, no address.
    Switch,
    /// sipfront node 1..=3.
    Node(u8),
    /// The phones (SIPp UACs, the pinger).
    Phones,
    /// PBX 1..=2.
    Pbx(u8),
}

impl Ns {
    /// Every namespace of a lab, the switch first.
    pub const ALL: [Ns; 7] = [Ns::Switch, Ns::Node(1), Ns::Node(2), Ns::Node(3), Ns::Phones, Ns::Pbx(1), Ns::Pbx(2)];

    /// The short name: `sw`, `n1`, `ph`, `p2` (also the name of its port on the bridge).
    pub fn short(self) -> String {
        match self {
            Ns::Switch => "sw".into(),
            Ns::Node(i) => format!("n{i}"),
            Ns::Phones => "ph".into(),
            Ns::Pbx(j) => format!("p{j}"),
        }
    }

    /// The namespace's name in a lab tagged `tag`: `sf{tag}-{short}`.
    pub fn name(self, tag: u8) -> String {
        format!("sf{tag}-{}", self.short())
    }

    /// The last octet of its address (`None` for the switch).
    pub fn octet(self) -> Option<u8> {
        match self {
            Ns::Switch => None,
            Ns::Node(i) => Some(10 + i),
            Ns::Phones => Some(PHONE_OCTET),
            Ns::Pbx(j) => Some(20 + j),
        }
    }
}

/// A background thread the lab stops and joins before it deletes the namespaces (it may sit inside one).
pub(crate) struct Background {
    pub stop: AtomicBool,
    pub thread: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    pub fn stop_and_join(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.thread.lock().expect("background lock").take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Serialises `ip netns add/del` within the test process: two labs set up in parallel threads would otherwise
/// race on the first mount of /run/netns.
static NETNS_SETUP: Mutex<()> = Mutex::new(());

/// A whole lab; see the module docs. Dropping it removes everything it made.
pub struct Lab {
    pub tag: u8,
    /// The temp dir: configs, the cluster key, node data dirs, process logs, SIPp traces.
    pub dir: PathBuf,
    /// When the lab was made; reports give times relative to it.
    pub t0: Instant,
    pub(crate) procs: Vec<LabProc>,
    pub(crate) background: Vec<Arc<Background>>,
    pub(crate) next_uac_port: u16,
    /// The bound [`Lab::spawn`] gives a process ([`super::procs::DEFAULT_BOUND`] unless
    /// [`Lab::set_process_bound`] says otherwise).
    pub(crate) process_bound: Duration,
    /// Namespaces created so far (those to delete on drop).
    created: Vec<Ns>,
}

impl Lab {
    /// Build the lab tagged `tag` (1..=250, unique per test). `None`, with a message, when not running as root.
    pub fn new(tag: u8) -> Option<Lab> {
        assert!((1..=250).contains(&tag), "lab tag {tag} out of range 1..=250");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the network-namespace tests need root (ip netns, veth, setns); not root here");
            return None;
        }
        require("ip", &["-V"], "iproute2");
        require("sipp", &["-v"], "SIPp (Debian/Ubuntu: apt-get install sip-tester)");
        require("timeout", &["--version"], "coreutils");
        require("bridge", &["-V"], "iproute2");
        let dir = std::env::temp_dir().join(format!("sipfront-netns-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut lab = Lab {
            tag,
            dir,
            t0: Instant::now(),
            procs: Vec::new(),
            background: Vec::new(),
            next_uac_port: 5090,
            process_bound: super::procs::DEFAULT_BOUND,
            created: Vec::new(),
        };
        // From here on a panic drops `lab`, which deletes whatever was made.
        lab.build();
        lab.write_cluster_key();
        Some(lab)
    }

    fn build(&mut self) {
        let _guard = NETNS_SETUP.lock().unwrap_or_else(|e| e.into_inner());
        for ns in Ns::ALL {
            remove_namespace(&ns.name(self.tag));
        }
        for ns in Ns::ALL {
            run_ip(&["netns", "add", &ns.name(self.tag)]);
            self.created.push(ns);
        }
        let sw = Ns::Switch.name(self.tag);
        run_ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run_ip(&["-n", &sw, "link", "set", "br0", "up"]);
        run_ip(&["-n", &sw, "link", "set", "lo", "up"]);
        for ns in &Ns::ALL[1..] {
            let (name, port) = (ns.name(self.tag), ns.short());
            let cidr = format!("{}/24", self.addr(*ns));
            // Made inside the member's namespace, the peer moved straight into the switch's.
            run_ip(&["-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw]);
            run_ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            run_ip(&["-n", &name, "addr", "add", &cidr, "dev", "eth0"]);
            run_ip(&["-n", &name, "link", "set", "eth0", "up"]);
            run_ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
    }

    /// 32 random bytes, hex, in `cluster.key` (every node's `cluster.secret_file`).
    fn write_cluster_key(&self) {
        use std::io::Read;
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).expect("read /dev/urandom");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(self.cluster_key_path(), hex + "\n").expect("write cluster.key");
    }

    pub fn cluster_key_path(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// The namespace's name, `sf{tag}-...`.
    pub fn ns(&self, ns: Ns) -> String {
        ns.name(self.tag)
    }

    /// Every namespace name of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        Ns::ALL.iter().map(|ns| ns.name(self.tag)).collect()
    }

    /// 10.201.{tag}.{last}
    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.tag, last)
    }

    /// A member's address (panics for the switch, which has none).
    pub fn addr(&self, ns: Ns) -> Ipv4Addr {
        self.ip(ns.octet().unwrap_or_else(|| panic!("{ns:?} has no address")))
    }

    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        self.addr(Ns::Node(i))
    }

    pub fn pbx_ip(&self, j: u8) -> Ipv4Addr {
        self.addr(Ns::Pbx(j))
    }

    pub fn phone_ip(&self) -> Ipv4Addr {
        self.addr(Ns::Phones)
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.ip(VIP_OCTET)
    }

    /// The VIP's SIP address, 10.201.T.100:5060.
    pub fn vip_sip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.vip()), SIP_PORT)
    }

    /// Node i's own SIP address, 10.201.T.1i:5060.
    pub fn node_sip(&self, i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.node_ip(i)), SIP_PORT)
    }

    /// PBX j's SIP address, 10.201.T.2j:5060.
    pub fn pbx_sip(&self, j: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pbx_ip(j)), SIP_PORT)
    }

    /// Run `ip -n NS ARGS...` and return its stdout; panics when `ip` fails.
    pub fn ip_in(&self, ns: Ns, args: &[&str]) -> String {
        let name = self.ns(ns);
        let mut all = vec!["-n", &name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Cut a member off the network: its port on `br0` is disabled, so no frame passes either way, at once. Its
    /// `eth0` keeps carrier and addresses (a failed switch port, or a partition one hop away). Not `ip link set
    /// down`: a veth brought back up passes nothing until the kernel's link-watch work runs, up to a second
    /// later (measured: 0.7 s), which would blur every time measured after a restore.
    pub fn cut_link(&self, ns: Ns) {
        self.set_port_state(ns, "0");
    }

    /// Put a member back on the network (its bridge port forwards again at once: the bridge runs no STP).
    pub fn restore_link(&self, ns: Ns) {
        self.set_port_state(ns, "3");
    }

    /// `bridge link set ... state` (0 disabled, 3 forwarding). iproute2's `bridge` tool: `ip link set type
    /// bridge_slave state 0` is accepted but leaves the port forwarding.
    fn set_port_state(&self, ns: Ns, state: &str) {
        let (sw, port) = (self.ns(Ns::Switch), ns.short());
        let out = Command::new("bridge")
            .args(["-n", &sw, "link", "set", "dev", &port, "state", state])
            .output()
            .unwrap_or_else(|e| panic!("cannot run bridge (iproute2): {e}"));
        assert!(out.status.success(), "bridge link set {port} state {state}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A UDP socket bound to `bind` inside `ns` (usable from any thread; it stays in `ns`).
    pub fn udp_socket(&self, ns: Ns, bind: SocketAddr) -> UdpSocket {
        nsenter::udp_socket_in(&self.ns(ns), bind).unwrap_or_else(|e| panic!("UDP socket on {bind} in {ns:?}: {e}"))
    }

    /// Register a background thread to stop (and join) before the namespaces go away.
    pub(crate) fn add_background(&mut self, bg: Arc<Background>) {
        self.background.push(bg);
    }

    /// The process groups this lab started (one per [`Lab::spawn`], restarts included), for cleanup checks.
    pub fn process_groups(&self) -> Vec<u32> {
        self.procs.iter().flat_map(|p| p.pgids.iter().copied()).collect()
    }

    fn failure_report(&self) -> String {
        let mut report = format!("==== lab {} failed; logs in {}\n", self.tag, self.dir.display());
        for p in &self.procs {
            for log in p.log_files() {
                if let Ok(bytes) = std::fs::read(&log) {
                    let text = String::from_utf8_lossy(&bytes);
                    let _ = writeln!(report, "---- {} (tail)\n{}", log.display(), tail_lines(&text, 60));
                }
            }
        }
        report
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for bg in &self.background {
            bg.stop_and_join();
        }
        for p in self.procs.iter_mut().rev() {
            p.proc.kill();
        }
        // SIGKILL is asynchronous for the programs under `timeout` (only `timeout` is reaped here): wait,
        // bounded, until they are gone, so that nothing of the lab runs once drop returns.
        let pgids = self.process_groups();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !live_processes_in_groups(&pgids).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.failure_report());
        }
        {
            let _guard = NETNS_SETUP.lock().unwrap_or_else(|e| e.into_inner());
            for ns in self.created.iter().rev() {
                remove_namespace(&ns.name(self.tag));
            }
        }
        if std::env::var_os("SIPFRONT_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGKILL whatever runs in namespace `name` (a crashed run's leftovers, or a process a test started by hand),
/// then delete it. Quiet when it does not exist.
fn remove_namespace(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    let own = std::process::id().to_string();
    let pids = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output();
    if let Ok(out) = pids {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter(|p| *p != own) {
            let _ = Command::new("kill").args(["-KILL", pid]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    let del = Command::new("ip").args(["netns", "del", name]).output();
    if let Ok(out) = del {
        if !out.status.success() {
            eprintln!("warning: ip netns del {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
}

/// Run `ip ARGS` and return its stdout; panic with its stderr when it fails.
fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail loudly when a tool is missing: a root machine meant for these tests must have it.
fn require(program: &str, args: &[&str], what: &str) {
    let ok = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "`{program}` is not on PATH: install {what}");
}

/// The processes (pid list) still alive, not zombies, in any of these process groups: after a lab is dropped,
/// none should be.
pub fn live_processes_in_groups(pgids: &[u32]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        // "pid (comm) state ppid pgrp ...": read after the comm's closing parenthesis (it may hold spaces).
        let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let (state, pgrp): (&str, u32) = (rest.first()?, rest.get(2)?.parse().ok()?);
        (pgids.contains(&pgrp) && state != "Z").then(|| format!("{name} {}", stat.trim()))
    })
    .collect()
}

/// The names `ip netns list` shows.
pub fn listed_namespaces() -> Vec<String> {
    let out = run_ip(&["netns", "list"]);
    // Lines look like "sf3-n1 (id: 4)" or just "sf3-n1".
    out.lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect()
}

//! Harness for the real-binary tests (`tests/sipp_*.rs`): runs the `sipfront` binary and SIPp on loopback and
//! reads back what they did.
//!
//! Every test owns a number N (hard-coded, unique across all `tests/sipp_*.rs`) and with it two loopback
//! addresses, so the tests run in parallel without sharing a port:
//!
//! ```text
//!   127.0.0.N:5060  sipfront (UDP and TCP)        127.0.0.N:5090  the caller (SIPp UAC, or a raw socket)
//!   127.0.1.N:5080  the first PBX (SIPp UAS)      127.0.1.N:5082  the second PBX
//! ```
//!
//! The PBXs sit on their own address because sipfront recognises a TCP backend by its IP alone (its source port
//! is ephemeral): a caller on the PBX's address would be taken for the PBX. 127.0.0.1 and its ports 5060-5090
//! belong to the load bench and are never used here.
//!
//! [`Harness`] owns everything a test starts: `sipfront` and each SIPp run in their own process group under
//! coreutils `timeout` (so even a harness killed with SIGKILL leaves nothing running for long), SIPp is also
//! bounded by `-m` and `-timeout`, and on drop, panicking or not, every group is killed with SIGKILL and the
//! test's temp dir removed. When the test failed, the tail of every log is printed first (set
//! `SIPFRONT_TEST_KEEP=1` to keep the dir instead). Readiness is polled: sipfront until it answers an OPTIONS,
//! a SIPp UAS until its socket shows up in /proc/net. `SIPFRONT_TEST_BIN=/path/to/sipfront` runs the tests
//! against another build (a release build, say) instead of the one cargo built with them.
//!
//! SIP text ([`SipMsg`], traces), SIPp results ([`SippRun`]) and process groups ([`Proc`]) live in
//! `tests/shared/`, which the network-namespace harness (`tests/netns/`) uses too.
#![allow(dead_code)]

#[path = "../shared/mod.rs"]
mod shared;

pub use shared::*;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
/// sipfront's SIP port on 127.0.0.N.
pub const FRONT_PORT: u16 = 5060;
/// The caller's port on 127.0.0.N.
pub const UAC_PORT: u16 = 5090;
/// The first and second PBX on 127.0.1.N.
pub const PBX1_PORT: u16 = 5080;
pub const PBX2_PORT: u16 = 5082;

/// How long sipfront may take to answer its first OPTIONS, or a SIPp UAS to bind.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------------ sipfront config

/// One `[[backend]]`.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub tp: Tp,
    pub priority: u32,
}

/// What goes into the test's sipfront config file. The node listens on UDP and TCP at 127.0.0.N:5060.
#[derive(Debug, Clone, Default)]
pub struct FrontConfig {
    pub backends: Vec<BackendSpec>,
    /// `[timers] t1`, e.g. "50ms" so that timer B (64*T1) is short.
    pub t1: Option<String>,
    /// Extra `key = value` lines for `[sip]`.
    pub sip_extra: Vec<String>,
    /// Listeners besides UDP and TCP on 127.0.0.N:5060, as `sip.listen` takes them (`"ws:127.0.0.N:5066"`).
    pub listen_extra: Vec<String>,
    pub policy: Option<String>,
    /// Whole extra tables (`[health]`, `[dialogs]`, `[registrations]` ...), written after the backends.
    pub sections: Vec<String>,
}

impl FrontConfig {
    pub fn new() -> FrontConfig {
        FrontConfig::default()
    }

    /// Add a backend; priorities follow the order of the calls (the first is preferred).
    pub fn backend(mut self, name: &str, addr: SocketAddr, tp: Tp) -> FrontConfig {
        let priority = self.backends.len() as u32 + 1;
        self.backends.push(BackendSpec { name: name.into(), addr, tp, priority });
        self
    }

    pub fn t1(mut self, t1: &str) -> FrontConfig {
        self.t1 = Some(t1.into());
        self
    }

    pub fn sip(mut self, line: &str) -> FrontConfig {
        self.sip_extra.push(line.into());
        self
    }

    /// Another listener, e.g. `"ws:127.0.0.N:5066"`.
    pub fn listen(mut self, spec: &str) -> FrontConfig {
        self.listen_extra.push(spec.into());
        self
    }

    /// Add a backend with an explicit priority (lower is preferred).
    pub fn backend_prio(mut self, name: &str, addr: SocketAddr, tp: Tp, priority: u32) -> FrontConfig {
        self.backends.push(BackendSpec { name: name.into(), addr, tp, priority });
        self
    }

    /// A whole table, e.g. `"[dialogs]\nmax = 10"`.
    pub fn section(mut self, table: &str) -> FrontConfig {
        self.sections.push(table.into());
        self
    }

    /// `[health]`: OPTIONS probes every `interval`, each waiting `timeout`; down after `down_after` failures in
    /// a row, up again after `up_after` successes (`ok_codes = [200]`).
    pub fn health(self, interval: &str, timeout: &str, down_after: u32, up_after: u32) -> FrontConfig {
        self.section(&format!(
            "[health]\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\ndown_after = {down_after}\n\
             up_after = {up_after}\nok_codes = [200]"
        ))
    }

    fn toml(&self, name: &str, ip: Ipv4Addr) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[node]\nid = 1\nname = \"{name}\"\n");
        let extra: String = self.listen_extra.iter().map(|l| format!(", \"{l}\"")).collect();
        let _ = writeln!(
            s,
            "[sip]\nlisten = [\"udp:{ip}:{FRONT_PORT}\", \"tcp:{ip}:{FRONT_PORT}\"{extra}]\nadvertise = \"{ip}\""
        );
        for l in &self.sip_extra {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "\n[routing]\npolicy = \"{}\"\n", self.policy.as_deref().unwrap_or("active-standby"));
        if let Some(t1) = &self.t1 {
            let _ = writeln!(s, "[timers]\nt1 = \"{t1}\"\n");
        }
        if !self.sections.iter().any(|t| t.trim_start().starts_with("[health]")) {
            // Probes off unless a test asks for them: a SIPp PBX that does not expect OPTIONS sees only the calls.
            let _ = writeln!(s, "[health]\nenabled = false\n");
        }
        for b in &self.backends {
            let _ = writeln!(
                s,
                "[[backend]]\nname = \"{}\"\nuri = \"sip:{};transport={}\"\npriority = {}\nweight = 1\n",
                b.name,
                b.addr,
                b.tp.lower(),
                b.priority
            );
        }
        for t in &self.sections {
            let _ = writeln!(s, "{t}\n");
        }
        s
    }
}

// ------------------------------------------------------------------------------------------------ SIPp

/// How a SIPp instance is started.
#[derive(Debug, Clone)]
pub struct SippSpec {
    pub label: String,
    pub scenario: String,
    /// SIPp `-t` mode.
    pub mode: &'static str,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The remote host:port (a UAC's target), none for a UAS.
    pub remote: Option<SocketAddr>,
    /// `-m`: SIPp exits after this many calls.
    pub calls: u64,
    /// SIPp's `-timeout` (the run counts as failed when it is reached).
    pub timeout: Duration,
    /// Message trace on (off for load runs: it would write megabytes).
    pub trace: bool,
    pub extra: Vec<String>,
}

impl SippSpec {
    /// A caller on 127.0.0.N:5090 sending to sipfront.
    pub fn uac(h: &Harness, label: &str, scenario: &str, tp: Tp) -> SippSpec {
        SippSpec {
            label: label.into(),
            scenario: scenario.into(),
            mode: tp.sipp_uac_mode(),
            ip: h.front_ip(),
            port: UAC_PORT,
            remote: Some(h.front(FRONT_PORT)),
            calls: 1,
            timeout: Duration::from_secs(20),
            trace: true,
            extra: Vec::new(),
        }
    }

    /// A PBX on 127.0.1.N:port.
    pub fn uas(h: &Harness, label: &str, scenario: &str, tp: Tp, port: u16) -> SippSpec {
        SippSpec {
            label: label.into(),
            scenario: scenario.into(),
            mode: tp.sipp_uas_mode(),
            ip: h.pbx_ip(),
            port,
            remote: None,
            calls: 1,
            timeout: Duration::from_secs(20),
            trace: true,
            extra: Vec::new(),
        }
    }

    pub fn calls(mut self, n: u64) -> SippSpec {
        self.calls = n;
        self
    }

    pub fn timeout(mut self, t: Duration) -> SippSpec {
        self.timeout = t;
        self
    }

    pub fn trace(mut self, on: bool) -> SippSpec {
        self.trace = on;
        self
    }

    pub fn arg(mut self, a: &str) -> SippSpec {
        self.extra.push(a.into());
        self
    }
}

/// A started SIPp, to wait for with [`Harness::wait_sipp`].
#[derive(Debug)]
pub struct Sipp {
    idx: usize,
    spec: SippSpec,
    started: Instant,
    out: PathBuf,
    msg: PathBuf,
    err: PathBuf,
}

// ------------------------------------------------------------------------------------------------ the harness

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Everything one test started; see the module docs.
pub struct Harness {
    pub name: String,
    pub n: u8,
    pub dir: PathBuf,
    procs: Vec<Proc>,
    /// Log files to show when the test fails.
    logs: Vec<PathBuf>,
    front_log: Option<PathBuf>,
}

impl Harness {
    /// A test numbered `n` (unique across the test files: it picks 127.0.0.N and 127.0.1.N).
    pub fn new(name: &str, n: u8) -> Harness {
        assert!((2..=254).contains(&n), "test number {n} out of range");
        require_sipp();
        let dir = std::env::temp_dir().join(format!(
            "sipfront-it-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Harness { name: name.into(), n, dir, procs: Vec::new(), logs: Vec::new(), front_log: None }
    }

    /// sipfront's and the caller's address.
    pub fn front_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, self.n)
    }

    /// The PBXs' address.
    pub fn pbx_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 1, self.n)
    }

    pub fn front(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.front_ip()), port)
    }

    /// sipfront's SIP address.
    pub fn sipfront(&self) -> SocketAddr {
        self.front(FRONT_PORT)
    }

    pub fn pbx(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pbx_ip()), port)
    }

    /// Write the config, start sipfront and wait until it answers an OPTIONS over UDP.
    pub fn start_sipfront(&mut self, cfg: &FrontConfig) {
        let toml = cfg.toml(&self.name, self.front_ip());
        let path = self.dir.join("sipfront.toml");
        std::fs::write(&path, &toml).expect("write config");
        let log = self.dir.join("sipfront.log");
        let out = std::fs::File::create(&log).expect("create sipfront.log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new("timeout");
        // A bound for when the harness itself is killed before it can clean up.
        cmd.args(["-k", "2", "300", &sipfront_bin(), "run", "--config"])
            .arg(&path)
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        self.procs.push(Proc::spawn("sipfront", cmd));
        let idx = self.procs.len() - 1;
        self.logs.push(log.clone());
        self.front_log = Some(log);

        let probe = UdpPeer::bind(self.front_ip());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut i = 0;
        loop {
            if let Some(st) = self.procs[idx].try_wait() {
                panic!("sipfront exited before it was ready ({st}):\n{toml}\n{}", self.front_log_text());
            }
            i += 1;
            let cid = format!("ready-{i}");
            probe.send(&options_to(probe.local, self.sipfront(), Tp::Udp, &cid).into_bytes(), self.sipfront());
            let until = Instant::now() + Duration::from_millis(100);
            while let Some(m) = probe.recv_msg_until(until) {
                if m.status() == Some(200) && m.header("Call-ID") == Some(&cid) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sipfront did not answer OPTIONS within {READY_TIMEOUT:?}:\n{}",
                self.front_log_text()
            );
        }
    }

    /// sipfront's log so far.
    pub fn front_log_text(&self) -> String {
        self.front_log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// sipfront's log lines at WARN or ERROR level.
    pub fn front_log_problems(&self) -> Vec<String> {
        self.front_log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(String::from)
            .collect()
    }

    /// The sipfront process itself (not the `timeout` it runs under), for what /proc says of it (resident memory).
    pub fn sipfront_pid(&self) -> u32 {
        let p = self.procs.iter().find(|p| p.label == "sipfront").expect("sipfront was not started");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = child_pids(p.child.id()).first().and_then(|c| c.parse().ok()) {
                return pid;
            }
            assert!(Instant::now() < deadline, "no sipfront process under its `timeout`");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether sipfront is still running.
    pub fn sipfront_alive(&mut self) -> bool {
        self.procs.iter_mut().find(|p| p.label == "sipfront").is_some_and(|p| p.try_wait().is_none())
    }

    /// Start SIPp (under `timeout`, in the test dir). A UAS is waited for until its socket is bound.
    pub fn start_sipp(&mut self, spec: SippSpec) -> Sipp {
        let scenario = Path::new(SCENARIOS).join(&spec.scenario);
        assert!(scenario.is_file(), "no scenario {}", scenario.display());
        let out = self.dir.join(format!("{}.out", spec.label));
        let msg = self.dir.join(format!("{}.msg", spec.label));
        let err = self.dir.join(format!("{}.err", spec.label));
        let outf = std::fs::File::create(&out).expect("create sipp log");
        let errf = outf.try_clone().expect("clone log handle");
        let secs = spec.timeout.as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", &(secs + 15).to_string(), "sipp"]);
        if let Some(r) = spec.remote {
            cmd.arg(r.to_string());
        }
        cmd.arg("-sf")
            .arg(&scenario)
            .args(["-t", spec.mode, "-i", &spec.ip.to_string(), "-p", &spec.port.to_string()])
            .args(["-m", &spec.calls.to_string(), "-nostdin", "-timeout", &format!("{secs}s"), "-timeout_error"])
            .args(["-max_socket", "4096", "-trace_err", "-error_file"])
            .arg(&err);
        if spec.trace {
            cmd.args(["-trace_msg", "-message_file"]).arg(&msg);
        }
        cmd.args(&spec.extra).current_dir(&self.dir).stdout(outf).stderr(errf);
        self.procs.push(Proc::spawn(&spec.label, cmd));
        let idx = self.procs.len() - 1;
        self.logs.push(err.clone());
        self.logs.push(msg.clone());
        self.logs.push(out.clone());
        let sipp = Sipp { idx, spec, started: Instant::now(), out, msg, err };
        if sipp.spec.remote.is_none() {
            let tp = if sipp.spec.mode.starts_with('t') { Tp::Tcp } else { Tp::Udp };
            let addr = SocketAddr::new(IpAddr::V4(sipp.spec.ip), sipp.spec.port);
            let deadline = Instant::now() + READY_TIMEOUT;
            while !socket_bound(addr, tp) {
                if let Some(st) = self.procs[idx].try_wait() {
                    panic!(
                        "SIPp {} exited before binding {addr} ({st}):\n{}",
                        sipp.spec.label,
                        std::fs::read_to_string(&sipp.out).unwrap_or_default()
                    );
                }
                assert!(Instant::now() < deadline, "SIPp {} did not bind {addr} {tp:?}", sipp.spec.label);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        sipp
    }

    /// Start a caller and wait for it to finish.
    pub fn run_sipp(&mut self, spec: SippSpec) -> SippRun {
        let s = self.start_sipp(spec);
        self.wait_sipp(s)
    }

    /// Wait for SIPp to exit (bounded by its `-timeout` plus a margin) and collect what it left.
    pub fn wait_sipp(&mut self, s: Sipp) -> SippRun {
        let deadline = s.started + s.spec.timeout + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = self.procs[s.idx].try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                self.procs[s.idx].kill();
                panic!("SIPp {} did not exit within {:?} (its -timeout plus 10 s)", s.spec.label, s.spec.timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let msg = s.spec.trace.then_some(s.msg.as_path());
        SippRun::collect(&s.spec.label, status, s.started.elapsed(), &s.out, &s.err, msg)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.kill();
        }
        let keep = std::env::var_os("SIPFRONT_TEST_KEEP").is_some();
        if std::thread::panicking() {
            let mut report = format!("==== test {} failed; logs from {}\n", self.name, self.dir.display());
            for log in &self.logs {
                if let Ok(bytes) = std::fs::read(log) {
                    let text = String::from_utf8_lossy(&bytes);
                    let _ = writeln!(report, "---- {} (tail)\n{}", log.display(), tail_lines(&text, 80));
                }
            }
            eprintln!("{report}");
        }
        if keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Fail loudly when SIPp is missing: CI installs it (scripts/test.sh), so a missing one is a broken machine.
pub fn require_sipp() {
    let ok = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "`sipp` is not on PATH: install SIPp (Debian/Ubuntu: apt-get install sip-tester)");
}

/// Whether something listens on `addr` (TCP) or has it bound (UDP), from /proc/net.
pub fn socket_bound(addr: SocketAddr, tp: Tp) -> bool {
    let SocketAddr::V4(a) = addr else { return false };
    let want = format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port());
    let (file, state) = match tp {
        Tp::Udp => ("/proc/net/udp", "07"),
        Tp::Tcp => ("/proc/net/tcp", "0A"),
    };
    std::fs::read_to_string(file).unwrap_or_default().lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let st = f.nth(1);
        local == Some(want.as_str()) && st == Some(state)
    })
}

// ------------------------------------------------------------------------------------------------ raw sockets

/// A raw UDP endpoint on an ephemeral port.
pub struct UdpPeer {
    pub sock: UdpSocket,
    pub local: SocketAddr,
}

impl UdpPeer {
    pub fn bind(ip: Ipv4Addr) -> UdpPeer {
        UdpPeer::bind_addr(SocketAddr::new(IpAddr::V4(ip), 0))
    }

    pub fn bind_addr(addr: SocketAddr) -> UdpPeer {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let local = sock.local_addr().expect("local addr");
        UdpPeer { sock, local }
    }

    pub fn send(&self, data: &[u8], to: SocketAddr) {
        self.sock.send_to(data, to).unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }

    /// The next datagram before `until`, if any.
    pub fn recv_until(&self, until: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
            self.sock.set_read_timeout(Some(left)).expect("set timeout");
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                // ICMP port unreachable of an earlier send, or the timeout.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.recv_until(Instant::now() + wait)
    }

    /// The next datagram that parses as SIP, before `until`.
    pub fn recv_msg_until(&self, until: Instant) -> Option<SipMsg> {
        loop {
            let (d, _) = self.recv_until(until)?;
            if let Some(m) = SipMsg::parse(&d) {
                return Some(m);
            }
        }
    }

    pub fn recv_msg(&self, wait: Duration) -> Option<SipMsg> {
        self.recv_msg_until(Instant::now() + wait)
    }
}

/// A raw TCP connection with Content-Length framing of what it reads.
pub struct TcpPeer {
    pub stream: TcpStream,
    pub local: SocketAddr,
    buf: Vec<u8>,
}

/// What reading a TCP peer gave.
#[derive(Debug)]
pub enum TcpRead {
    Msg(SipMsg),
    /// Nothing within the wait.
    Timeout,
    /// The other side closed (EOF or reset).
    Closed,
}

impl TcpPeer {
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> TcpPeer {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into()).expect("bind");
        sock.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true).expect("nodelay");
        let local = stream.local_addr().expect("local addr");
        TcpPeer { stream, local, buf: Vec::new() }
    }

    pub fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)
    }

    /// The next framed message (leading CRLF keep-alives skipped), EOF, or nothing within `wait`.
    pub fn recv(&mut self, wait: Duration) -> TcpRead {
        let until = Instant::now() + wait;
        loop {
            while self.buf.first().is_some_and(|c| *c == b'\r' || *c == b'\n') {
                self.buf.remove(0);
            }
            if let Some(hend) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = SipMsg::parse(&self.buf[..hend + 4]);
                let len = head
                    .as_ref()
                    .and_then(|m| m.header("Content-Length"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= hend + 4 + len {
                    let data: Vec<u8> = self.buf.drain(..hend + 4 + len).collect();
                    if let Some(m) = SipMsg::parse(&data) {
                        return TcpRead::Msg(m);
                    }
                    continue;
                }
            }
            let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return TcpRead::Timeout;
            };
            self.stream.set_read_timeout(Some(left)).expect("set timeout");
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return TcpRead::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return TcpRead::Timeout
                }
                Err(_) => return TcpRead::Closed,
            }
        }
    }

    /// The next message, or panic saying what came instead.
    pub fn expect_msg(&mut self, wait: Duration, what: &str) -> SipMsg {
        match self.recv(wait) {
            TcpRead::Msg(m) => m,
            other => panic!("expected {what} over TCP, got {other:?}"),
        }
    }
}

/// A TCP "backend" that accepts connections and reads whatever comes, and never answers.
pub struct MuteTcpBackend {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MuteTcpBackend {
    pub fn start(addr: SocketAddr) -> MuteTcpBackend {
        let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true).expect("nonblocking");
                    conns.push(s);
                }
                let mut buf = [0u8; 8192];
                for c in &mut conns {
                    if let Ok(n) = c.read(&mut buf) {
                        seen2.lock().expect("lock").extend_from_slice(&buf[..n]);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        MuteTcpBackend { addr, stop, seen, thread: Some(thread) }
    }

    /// Everything received so far, split into messages at the start lines of SIP requests.
    pub fn requests(&self) -> Vec<SipMsg> {
        let data = String::from_utf8_lossy(&self.seen.lock().expect("lock")).into_owned();
        let mut out = Vec::new();
        let mut rest = data.as_str();
        while let Some(hend) = rest.find("\r\n\r\n") {
            let Some(m) = SipMsg::parse(&rest.as_bytes()[..hend + 4]) else { break };
            let len: usize = m.header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let end = (hend + 4 + len).min(rest.len());
            out.extend(SipMsg::parse(&rest.as_bytes()[..end]));
            rest = &rest[end..];
        }
        out
    }
}

impl Drop for MuteTcpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every datagram waiting on a socket now (waits at most `wait` for each next one).
pub fn drain_udp(peer: &UdpPeer, wait: Duration) -> Vec<SipMsg> {
    let mut out = Vec::new();
    while let Some((d, _)) = peer.recv(wait) {
        out.extend(SipMsg::parse(&d));
    }
    out
}

// ------------------------------------------------------------------------------------------------ faults, health

impl SippSpec {
    /// Another local port (a second caller beside the first on 127.0.0.N).
    pub fn port(mut self, port: u16) -> SippSpec {
        self.port = port;
        self
    }
}

impl Sipp {
    pub fn label(&self) -> &str {
        &self.spec.label
    }

    /// The message trace written so far (SIPp writes each message as it goes).
    pub fn trace_now(&self) -> Vec<Traced> {
        parse_sipp_trace(&String::from_utf8_lossy(&std::fs::read(&self.msg).unwrap_or_default()))
    }

    /// How many requests with this method SIPp has received so far, from its trace (counted by start line, so
    /// cheap enough to poll).
    pub fn received_count(&self, method: &str) -> usize {
        let text = std::fs::read(&self.msg).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let start = format!("{method} ");
        let mut n = 0;
        let mut received_block = false;
        for l in text.lines() {
            if l.contains("message received") {
                received_block = true;
            } else if l.contains("message sent") {
                received_block = false;
            } else if received_block && l.starts_with(&start) && l.ends_with(" SIP/2.0") {
                n += 1;
            }
        }
        n
    }
}

/// A line of sipfront's log `... backend state changed backend=NAME state=up|down ...`.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub backend: String,
    pub state: String,
    pub line: String,
}

/// The value of ` key=` in a tracing fmt line: bare (`key=v`) or quoted (`key="v w"`).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if let Some(q) = rest.strip_prefix('"') {
        Some(q[..q.find('"')?].to_string())
    } else {
        Some(rest.split_whitespace().next().unwrap_or("").to_string())
    }
}

/// `s` without ANSI colour sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Every `backend state changed` line in a log text, in order.
pub fn state_changes(log: &str) -> Vec<StateChange> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("backend state changed"))
        .filter_map(|l| {
            Some(StateChange { backend: log_field(&l, "backend")?, state: log_field(&l, "state")?, line: l.clone() })
        })
        .collect()
}

impl Harness {
    /// sipfront's log file (it exists once sipfront was started).
    pub fn front_log_path(&self) -> Option<PathBuf> {
        self.front_log.clone()
    }

    /// Every backend state change sipfront has logged so far.
    pub fn state_changes(&self) -> Vec<StateChange> {
        state_changes(&self.front_log_text())
    }

    /// Poll sipfront's log (every 2 ms) until it has logged `backend` going to `state` `nth` times (1 = the first
    /// time); the instant that was first seen, or `None` at `deadline`. Also gives up when sipfront exits.
    pub fn wait_state_change(&mut self, backend: &str, state: &str, nth: usize, deadline: Instant) -> Option<Instant> {
        loop {
            let n = self.state_changes().iter().filter(|c| c.backend == backend && c.state == state).count();
            if n >= nth {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline || !self.sipfront_alive() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL one SIPp (its process group: `timeout` and SIPp), e.g. to fail a PBX; the instant it was dead.
    pub fn kill_sipp(&mut self, s: &Sipp) -> Instant {
        self.procs[s.idx].kill();
        Instant::now()
    }

    /// Whether this SIPp is still running.
    pub fn sipp_running(&mut self, s: &Sipp) -> bool {
        self.procs[s.idx].try_wait().is_none()
    }

    /// Stop a SIPp that has no fixed call count (a PBX answering probes): SIGUSR1 makes SIPp stop taking calls
    /// and exit once the calls in progress end; then collect it like [`Harness::wait_sipp`]. Bounded: SIGKILL
    /// after `grace` (the run's exit code is then `None`).
    pub fn stop_sipp(&mut self, s: Sipp, grace: Duration) -> SippRun {
        self.procs[s.idx].signal_program("USR1");
        let deadline = Instant::now() + grace;
        while self.procs[s.idx].try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.procs[s.idx].try_wait().is_none() {
            self.procs[s.idx].kill();
        }
        self.wait_sipp(s)
    }
}

/// Whether a TCP connection between `local` and `remote` is still open on `local`'s side (any state but
/// TIME_WAIT and CLOSE), from /proc/net/tcp.
pub fn tcp_conn_open(local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port()),
        SocketAddr::V6(_) => String::new(),
    };
    let (l, r) = (hex(local), hex(remote));
    std::fs::read_to_string("/proc/net/tcp").unwrap_or_default().lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && f[1] == l && f[2] == r && f[3] != "06" && f[3] != "07"
    })
}

/// Write all of `data` to a non-blocking stream (the PBX thread reads the same socket), retrying for up to 2 s.
fn write_nonblocking(s: &TcpStream, mut data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut s = s;
    while !data.is_empty() {
        match s.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("TCP send: {e}"),
        }
    }
}

/// Where a message to a [`RustPbx`] came from, to answer it the same way.
pub enum ReplyPath {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl ReplyPath {
    pub fn send(&self, data: &[u8]) {
        match self {
            ReplyPath::Udp(s, to) => {
                s.send_to(data, to).unwrap_or_else(|e| panic!("send to {to}: {e}"));
            }
            ReplyPath::Tcp(s) => write_nonblocking(s, data),
        }
    }
}

/// An OPTIONS probe as a [`RustPbx`] saw it, and what it answered (`None`: nothing).
#[derive(Debug, Clone)]
pub struct ProbeSeen {
    pub at: Instant,
    pub msg: SipMsg,
    pub answered: Option<u16>,
}

/// How a [`RustPbx`] answers the n-th OPTIONS probe (0-based): a status code, or `None` for silence.
pub type ProbePolicy = Box<dyn FnMut(usize, &SipMsg) -> Option<u16> + Send>;

/// A PBX written in the test: on UDP or TCP at `addr`, it answers OPTIONS by its [`ProbePolicy`] from its own
/// thread and hands every other message to the test ([`RustPbx::recv`]), with the path to answer it on. On TCP
/// it accepts sipfront's connections; [`RustPbx::send`] writes to the latest one (requests from the PBX reuse
/// sipfront's connection, as PBXs do). Stopped on drop.
pub struct RustPbx {
    pub addr: SocketAddr,
    pub tp: Tp,
    probes: std::sync::Arc<std::sync::Mutex<Vec<ProbeSeen>>>,
    rx: std::sync::mpsc::Receiver<(SipMsg, ReplyPath)>,
    udp: Option<UdpSocket>,
    front: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RustPbx {
    /// Start at `addr`; `front` is sipfront's address (where [`RustPbx::send`] goes on UDP).
    pub fn start(addr: SocketAddr, tp: Tp, front: SocketAddr, mut policy: ProbePolicy) -> RustPbx {
        use std::sync::{atomic::AtomicBool, mpsc, Arc, Mutex};
        let probes: Arc<Mutex<Vec<ProbeSeen>>> = Arc::default();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (udp, listener) = match tp {
            Tp::Udp => {
                let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
                (Some(s), None)
            }
            Tp::Tcp => {
                let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                l.set_nonblocking(true).expect("nonblocking");
                (None, Some(l))
            }
        };
        let udp_thread = udp.as_ref().map(|s| s.try_clone().expect("clone socket"));
        let (probes2, conns2, stop2) = (probes.clone(), conns.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut handle = |msg: SipMsg, reply: ReplyPath| {
                if msg.method() == Some("OPTIONS") {
                    let mut p = probes2.lock().expect("lock");
                    let answer = policy(p.len(), &msg);
                    if let Some(code) = answer {
                        let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                        reply.send(response_to(&msg, code, reason, "pbx-probe", "").as_bytes());
                    }
                    p.push(ProbeSeen { at: Instant::now(), msg, answered: answer });
                } else {
                    let _ = tx.send((msg, reply));
                }
            };
            let mut bufs: Vec<Vec<u8>> = Vec::new();
            let mut readers: Vec<TcpStream> = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while !stop2.load(Ordering::Relaxed) {
                if let Some(s) = &udp_thread {
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if let Some(m) = SipMsg::parse(&buf[..n]) {
                                handle(m, ReplyPath::Udp(s.try_clone().expect("clone"), from));
                            }
                        }
                        Err(_) => continue,
                    }
                } else if let Some(l) = &listener {
                    if let Ok((c, _)) = l.accept() {
                        c.set_nonblocking(true).expect("nonblocking");
                        c.set_nodelay(true).expect("nodelay");
                        conns2.lock().expect("lock").push(c.try_clone().expect("clone"));
                        readers.push(c);
                        bufs.push(Vec::new());
                    }
                    let mut idle = true;
                    for (i, c) in readers.iter_mut().enumerate() {
                        if let Ok(n) = c.read(&mut buf) {
                            if n > 0 {
                                idle = false;
                                bufs[i].extend_from_slice(&buf[..n]);
                            }
                        }
                        while let Some(frame) = take_frame(&mut bufs[i]) {
                            if let Some(m) = SipMsg::parse(&frame) {
                                handle(m, ReplyPath::Tcp(c.try_clone().expect("clone")));
                            }
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        });
        RustPbx { addr, tp, probes, rx, udp, front, conns, stop, thread: Some(thread) }
    }

    /// A PBX that answers every probe 200.
    pub fn healthy(addr: SocketAddr, tp: Tp, front: SocketAddr) -> RustPbx {
        RustPbx::start(addr, tp, front, Box::new(|_, _| Some(200)))
    }

    /// The probes seen so far.
    pub fn probes(&self) -> Vec<ProbeSeen> {
        self.probes.lock().expect("lock").clone()
    }

    /// The next message that is not a probe, before `wait` is over.
    pub fn recv(&self, wait: Duration) -> Option<(SipMsg, ReplyPath)> {
        self.rx.recv_timeout(wait).ok()
    }

    /// The next message that is not a probe, or panic naming what was expected.
    pub fn expect(&self, wait: Duration, what: &str) -> (SipMsg, ReplyPath) {
        self.recv(wait).unwrap_or_else(|| panic!("the PBX got no {what} within {wait:?}"))
    }

    /// Send a request toward sipfront: from the PBX's own socket (UDP) or on sipfront's latest connection (TCP).
    pub fn send(&self, data: &[u8]) {
        match (&self.udp, self.tp) {
            (Some(s), _) => {
                s.send_to(data, self.front).unwrap_or_else(|e| panic!("send to {}: {e}", self.front));
            }
            _ => {
                let conns = self.conns.lock().expect("lock");
                write_nonblocking(conns.last().expect("sipfront never connected to the PBX"), data);
            }
        }
    }
}

impl Drop for RustPbx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

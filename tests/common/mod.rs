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
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The binary under test: the one cargo built with these tests, or `SIPFRONT_TEST_BIN` (e.g. a release build).
pub fn sipfront_bin() -> String {
    std::env::var("SIPFRONT_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sipfront").to_string())
}
/// SIPp scenarios.
pub const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
/// sipfront's SIP port on 127.0.0.N.
pub const FRONT_PORT: u16 = 5060;
/// The caller's port on 127.0.0.N.
pub const UAC_PORT: u16 = 5090;
/// The first and second PBX on 127.0.1.N.
pub const PBX1_PORT: u16 = 5080;
pub const PBX2_PORT: u16 = 5082;

/// How long sipfront may take to answer its first OPTIONS, or a SIPp UAS to bind.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A SIP transport, as the tests choose it for each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tp {
    Udp,
    Tcp,
}

impl Tp {
    pub fn lower(self) -> &'static str {
        match self {
            Tp::Udp => "udp",
            Tp::Tcp => "tcp",
        }
    }

    pub fn upper(self) -> &'static str {
        match self {
            Tp::Udp => "UDP",
            Tp::Tcp => "TCP",
        }
    }

    /// SIPp `-t` for a caller: one UDP socket per call, or one TCP connection for all calls.
    pub fn sipp_uac_mode(self) -> &'static str {
        match self {
            Tp::Udp => "un",
            Tp::Tcp => "t1",
        }
    }

    /// SIPp `-t` for a PBX: one UDP socket, or one TCP listener.
    pub fn sipp_uas_mode(self) -> &'static str {
        match self {
            Tp::Udp => "u1",
            Tp::Tcp => "t1",
        }
    }
}

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
        let _ =
            writeln!(s, "[sip]\nlisten = [\"udp:{ip}:{FRONT_PORT}\", \"tcp:{ip}:{FRONT_PORT}\"]\nadvertise = \"{ip}\"");
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

// ------------------------------------------------------------------------------------------------ processes

/// A child process in its own process group; the group is SIGKILLed on drop.
struct Proc {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(label: &str, mut cmd: Command) -> Proc {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        Proc { label: label.into(), child, status: None }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // The whole group: `timeout` and the program under it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

/// What a finished SIPp run left behind.
#[derive(Debug)]
pub struct SippRun {
    pub label: String,
    /// The exit code (SIPp: 0 = every call succeeded, 1 = some failed, 97/99/255 = other ends; 124 = `timeout`).
    pub code: Option<i32>,
    /// The final "Successful call" / "Failed call" totals from SIPp's screen.
    pub successful: Option<u64>,
    pub failed: Option<u64>,
    pub stdout: String,
    /// The unexpected-message log (`-trace_err`).
    pub errors: String,
    /// The message trace (`-trace_msg`), when it was on.
    pub trace: Vec<Traced>,
    pub elapsed: Duration,
}

impl SippRun {
    fn describe(&self) -> String {
        let tail: Vec<&str> = self.stdout.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}: exit code {:?}, successful {:?}, failed {:?}, {:.1} s\n--- screen (tail):\n{}\n--- unexpected messages:\n{}",
            self.label,
            self.code,
            self.successful,
            self.failed,
            self.elapsed.as_secs_f64(),
            tail.join("\n"),
            tail_lines(&self.errors, 60)
        )
    }

    /// SIPp exited 0 having completed exactly `calls` calls, none failed.
    pub fn assert_ok(&self, calls: u64) {
        assert!(
            self.code == Some(0) && self.successful == Some(calls) && self.failed == Some(0),
            "SIPp {} should have completed {calls} call(s) with none failed:\n{}",
            self.label,
            self.describe()
        );
    }

    /// The messages this SIPp received (in order).
    pub fn received(&self) -> impl Iterator<Item = &SipMsg> {
        self.trace.iter().filter(|t| !t.sent).map(|t| &t.msg)
    }

    /// The messages this SIPp sent (in order).
    pub fn sent(&self) -> impl Iterator<Item = &SipMsg> {
        self.trace.iter().filter(|t| t.sent).map(|t| &t.msg)
    }

    /// The first received request with this method.
    pub fn received_request(&self, method: &str) -> &SipMsg {
        self.received()
            .find(|m| m.method() == Some(method))
            .unwrap_or_else(|| panic!("{} received no {method}; it received:\n{}", self.label, self.summary_of_trace()))
    }

    /// One line per traced message: direction and start line.
    pub fn summary_of_trace(&self) -> String {
        self.trace.iter().map(|t| format!("  {} {}\n", if t.sent { "->" } else { "<-" }, t.msg.start)).collect()
    }
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last number on the last line of SIPp's screen that starts with `label` (the cumulative column).
fn screen_counter(screen: &str, label: &str) -> Option<u64> {
    screen
        .lines()
        .rfind(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').next_back())
        .and_then(|v| v.trim().parse().ok())
}

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
        let elapsed = s.started.elapsed();
        let stdout = String::from_utf8_lossy(&std::fs::read(&s.out).unwrap_or_default()).into_owned();
        let errors = String::from_utf8_lossy(&std::fs::read(&s.err).unwrap_or_default()).into_owned();
        let trace = if s.spec.trace {
            parse_sipp_trace(&String::from_utf8_lossy(&std::fs::read(&s.msg).unwrap_or_default()))
        } else {
            Vec::new()
        };
        SippRun {
            label: s.spec.label.clone(),
            code: status.code(),
            successful: screen_counter(&stdout, "Successful call"),
            failed: screen_counter(&stdout, "Failed call"),
            stdout,
            errors,
            trace,
            elapsed,
        }
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

// ------------------------------------------------------------------------------------------------ SIP text

/// A SIP message as the tests read it: start line, headers in order, body.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn long_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        _ => name,
    }
}

impl SipMsg {
    /// Parse one message (CRLF or LF line ends). `None` when there is no header section.
    pub fn parse(data: &[u8]) -> Option<SipMsg> {
        let text = String::from_utf8_lossy(data);
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &data[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &data[i + 2..]),
                None => (&text[..], &[][..]),
            },
        };
        let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
        let start = lines.next()?.to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in lines {
            if l.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(l.trim());
                }
                continue;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Some(SipMsg { start, headers, body: body.to_vec() })
    }

    pub fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    pub fn reason(&self) -> &str {
        self.start.strip_prefix("SIP/2.0 ").and_then(|r| r.get(4..)).unwrap_or("")
    }

    pub fn method(&self) -> Option<&str> {
        if self.start.starts_with("SIP/2.0 ") {
            return None;
        }
        self.start.split(' ').next()
    }

    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start.split(' ').nth(1)
    }

    /// The first header line with this name (compact forms included), its whole value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = long_name(name).to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| long_name(n).eq_ignore_ascii_case(&want)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header: all lines, each split at top-level commas (outside <> and quotes).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let want = long_name(name).to_ascii_lowercase();
        let mut out = Vec::new();
        for (n, v) in &self.headers {
            if long_name(n).eq_ignore_ascii_case(&want) {
                out.extend(split_commas(v));
            }
        }
        out
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }
}

fn split_commas(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for c in v.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// One message from a SIPp `-trace_msg` file.
#[derive(Debug, Clone)]
pub struct Traced {
    pub sent: bool,
    pub msg: SipMsg,
}

/// Parse a SIPp message trace: blocks after a dashed separator line, each "UDP|TCP message sent (N bytes):" or
/// "... message received [N] bytes :", an empty line, then the message. "Unexpected ..." echoes are skipped.
pub fn parse_sipp_trace(text: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in text.split("-----------------------------------------------").skip(1) {
        let mut lines = block.lines();
        let _timestamp = lines.next();
        let Some(kind) = lines.next() else { continue };
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let rest: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let raw = rest.join("\r\n");
        if let Some(msg) = SipMsg::parse(raw.as_bytes()) {
            out.push(Traced { sent, msg });
        }
    }
    out
}

/// An OPTIONS to `to` from `local` (Request-URI without a user part: addressed to sipfront itself).
pub fn options_to(local: SocketAddr, to: SocketAddr, tp: Tp, call_id: &str) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/{} {local};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{}>;tag=p-{call_id}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        tp.upper(),
        local.ip()
    )
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

/// A request from `local` with the usual headers, `extra` header lines (each ending in CRLF) and no body:
/// Via with rport, Max-Forwards 70 (unless `extra` has one), From tag, To without tag, CSeq 1.
pub fn request(method: &str, ruri: &str, local: SocketAddr, tp: Tp, call_id: &str, extra: &str) -> String {
    let mf = if extra.to_ascii_lowercase().contains("max-forwards:") { "" } else { "Max-Forwards: 70\r\n" };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{} {local};branch=z9hG4bK-{call_id};rport\r\n\
         {mf}\
         From: <sip:tester@{}>;tag=t-{call_id}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        tp.upper(),
        local.ip()
    )
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
        let pid = self.procs[s.idx].child.id();
        // `timeout` runs SIPp as its child; signal SIPp itself (`timeout` would die of SIGUSR1).
        for c in child_pids(pid) {
            let _ = Command::new("kill").args(["-USR1", &c]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
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

/// The processes whose parent is `pid`, from /proc.
fn child_pids(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        // "pid (comm) state ppid ...": the comm may hold spaces, so read after its closing parenthesis.
        let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(name)
    })
    .collect()
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

/// One message off the front of a TCP byte stream (CRLF keep-alives before it skipped), framed by
/// Content-Length; `None` until a whole message is there.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let lead = buf.iter().take_while(|c| **c == b'\r' || **c == b'\n').count();
    buf.drain(..lead);
    let hend = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let len = SipMsg::parse(&buf[..hend + 4])
        .and_then(|m| m.header("Content-Length").and_then(|v| v.trim().parse::<usize>().ok()))
        .unwrap_or(0);
    if buf.len() < hend + 4 + len {
        return None;
    }
    Some(buf.drain(..hend + 4 + len).collect())
}

impl SipMsg {
    /// The text of this message again (headers in order, CRLF, Content-Length kept as it was).
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("\r\n");
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }

    /// A parameter of the URI inside `<...>` (or of the bare URI): `;name=value`.
    pub fn uri_param(uri: &str, name: &str) -> Option<String> {
        let inner = match (uri.find('<'), uri.find('>')) {
            (Some(a), Some(b)) if b > a => &uri[a + 1..b],
            _ => uri,
        };
        inner.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A response to `req`: its Via lines, From, To (with `to_tag` added when it has none), Call-ID and CSeq,
/// then `extra` header lines (each ending in CRLF) and no body.
pub fn response_to(req: &SipMsg, code: u16, reason: &str, to_tag: &str, extra: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.header_values("Via") {
        let _ = write!(s, "Via: {v}\r\n");
    }
    let to = req.header("To").unwrap_or("");
    let to = if to.contains(";tag=") || to_tag.is_empty() { to.to_string() } else { format!("{to};tag={to_tag}") };
    let _ = write!(
        s,
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        req.header("From").unwrap_or(""),
        req.header("Call-ID").unwrap_or(""),
        req.header("CSeq").unwrap_or("")
    );
    s
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

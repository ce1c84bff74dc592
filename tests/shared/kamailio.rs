//! A real PBX-shaped proxy for the interop tests: Kamailio (Debian's `kamailio`, 5.6) as a registrar and
//! record-routing proxy with Path, from `tests/interop/kamailio.cfg` with its `@...@` placeholders filled in.
//!
//! Kamailio runs in the foreground (`-DD -E`: no daemon, log to stderr) in its own process group under coreutils
//! `timeout`, with its working dir and pid file in the test dir; the group (Kamailio forks its workers) is
//! SIGKILLed on drop, and the log tail printed first when the test panics. It is ready once it answers an
//! OPTIONS. The config logs every request it gets and every reply it relays as a `PBX-REQ` / `PBX-RPL` line of
//! `key=value` fields; [`Kamailio::lines`] reads them back and [`Kamailio::wait_for`] polls for one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::proc::Proc;
use super::sip_text::{options_to, SipMsg, Tp};

/// The config template.
pub const KAMAILIO_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/kamailio.cfg");
const READY: Duration = Duration::from_secs(15);

/// One `PBX-REQ` or `PBX-RPL` line.
#[derive(Debug, Clone)]
pub struct PbxLine {
    /// A request Kamailio received (`PBX-REQ`), else a reply it received (`PBX-RPL`).
    pub request: bool,
    pub line: String,
}

impl PbxLine {
    /// The value of `key=`, up to the next space (`m`, `ru`, `cid`, `cs`, `mf`, `src`, `s`, `expires`, `path`,
    /// `contact`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let at = self.line.find(&pat)? + pat.len();
        self.line[at..].split(' ').next()
    }

    pub fn method(&self) -> &str {
        self.field("m").unwrap_or_default()
    }

    pub fn call_id(&self) -> &str {
        self.field("cid").unwrap_or_default()
    }

    /// A reply's status.
    pub fn status(&self) -> Option<u16> {
        self.field("s")?.parse().ok()
    }

    /// Whether this is the request `method` of the call `call_id`.
    pub fn is_request(&self, method: &str, call_id: &str) -> bool {
        self.request && self.method() == method && self.call_id() == call_id
    }

    /// Whether this is a reply `status` to `method` of the call `call_id`.
    pub fn is_reply(&self, status: u16, method: &str, call_id: &str) -> bool {
        !self.request && self.status() == Some(status) && self.method() == method && self.call_id() == call_id
    }
}

/// A running Kamailio; see the module docs.
pub struct Kamailio {
    pub addr: SocketAddr,
    pub cfg: PathBuf,
    log: PathBuf,
    proc: Proc,
}

impl Kamailio {
    /// Start Kamailio on `addr` (UDP) with its files in `dir`; `front_uri` is where the `loop` user is relayed
    /// (sipfront, `sip:127.0.0.N:5060`); `record_route`: whether it stays in the dialogs of the calls it routes
    /// (`-A WITH_RR`). Waits until it answers an OPTIONS.
    pub fn start(dir: &Path, addr: SocketAddr, front_uri: &str, record_route: bool) -> Kamailio {
        let template = std::fs::read_to_string(KAMAILIO_CFG).expect("read tests/interop/kamailio.cfg");
        let text = template
            .replace("@PBX_IP@", &addr.ip().to_string())
            .replace("@PBX_PORT@", &addr.port().to_string())
            .replace("@FRONT_URI@", front_uri);
        let work = dir.join("kamailio");
        std::fs::create_dir_all(&work).expect("create kamailio dir");
        let cfg = work.join("kamailio.cfg");
        std::fs::write(&cfg, text).expect("write kamailio.cfg");
        let log = work.join("kamailio.log");
        let out = std::fs::File::create(&log).expect("create kamailio.log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", "600", "kamailio", "-DD", "-E", "-m", "32", "-M", "8", "-f"])
            .arg(&cfg)
            .arg("-w")
            .arg(&work)
            .arg("-P")
            .arg(work.join("kamailio.pid"))
            // The runtime dir (default /run/kamailio) is where a control FIFO would go: keep it in the test dir.
            .arg("-Y")
            .arg(&work)
            .args(if record_route { &["-A", "WITH_RR"][..] } else { &[][..] })
            .stdout(out)
            .stderr(err);
        let proc = Proc::spawn("kamailio", cmd);
        let mut k = Kamailio { addr, cfg, log, proc };
        k.wait_ready();
        k
    }

    /// Send OPTIONS from a socket beside Kamailio (on its IP) until a 200 comes back.
    fn wait_ready(&mut self) {
        let IpAddr::V4(ip) = self.addr.ip() else { panic!("IPv4 only") };
        let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).expect("bind probe socket");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let local = sock.local_addr().expect("local addr");
        let deadline = Instant::now() + READY;
        let mut buf = vec![0u8; 65536];
        for i in 0.. {
            if let Some(st) = self.proc.try_wait() {
                panic!("kamailio exited before it was ready ({st}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer OPTIONS within {READY:?}:\n{}",
                self.log_text()
            );
            let cid = format!("kamailio-ready-{i}");
            let _ = sock.send_to(options_to(local, self.addr, Tp::Udp, &cid).as_bytes(), self.addr);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if SipMsg::parse(&buf[..n]).is_some_and(|m| m.status() == Some(200)) {
                    return;
                }
            }
        }
    }

    /// Kamailio's whole log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Every `PBX-REQ` / `PBX-RPL` line so far, in order (health-probe OPTIONS included).
    pub fn lines(&self) -> Vec<PbxLine> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let at = l.find("PBX-")?;
                let line = &l[at..];
                let request = line.starts_with("PBX-REQ ");
                (request || line.starts_with("PBX-RPL ")).then(|| PbxLine { request, line: line.to_string() })
            })
            .collect()
    }

    /// The lines of one call (by Call-ID).
    pub fn call_lines(&self, call_id: &str) -> Vec<PbxLine> {
        self.lines().into_iter().filter(|l| l.call_id() == call_id).collect()
    }

    /// Poll the log (every 20 ms) until a line matches; `None` at the deadline.
    pub fn wait_for(&self, within: Duration, pred: impl Fn(&PbxLine) -> bool) -> Option<PbxLine> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines().into_iter().find(&pred) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Kamailio::wait_for`], panicking with the PBX's lines of that call at the deadline.
    pub fn expect(&self, within: Duration, what: &str, call_id: &str, pred: impl Fn(&PbxLine) -> bool) -> PbxLine {
        self.wait_for(within, pred).unwrap_or_else(|| {
            let seen: Vec<String> = self.call_lines(call_id).into_iter().map(|l| l.line).collect();
            panic!("Kamailio saw no {what} within {within:?}; its lines of call {call_id}:\n{}", seen.join("\n"))
        })
    }

    /// Whether Kamailio still runs.
    pub fn alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// The loopback address of this test's PBX.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("IPv4 only"),
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(120)..].join("\n");
            eprintln!("---- kamailio ({}), tail:\n{tail}", self.log.display());
        }
    }
}

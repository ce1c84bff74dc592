//! The Sippy B2BUA (PyPI `sippy`, pinned in scripts/test.sh) as a bridging PBX for the interop tests: every call
//! it takes is two dialogs with their own Call-IDs, the shape of commercial PBXs such as PortSIP.
//!
//! It runs as `b2bua_radius` in the foreground (`-f`) with RADIUS off (`-u -A 0`), every call routed to one static
//! route (`-s HOST:PORT`, the called user kept) and REGISTERs relayed by its stateful proxy to `--sip_proxy`
//! (a B2BUA is no registrar). `-H` hides the caller's Call-ID: the outgoing leg's is its MD5 plus `-b2b_1`,
//! unrelated on the wire. Its CLI socket (`-c`) tells when it is up; its SIP log (every message received and sent,
//! on stderr) goes to `sippy.log`, what it prints on stdout to `sippy.out`. It is UDP only, and passes SDP through
//! (no RTP proxy): media flows phone to phone.
//!
//! [`Sippy`] runs it in its own process group under coreutils `timeout` and SIGKILLs the group on drop, printing
//! the log's tail first when the test failed.
//!
//! [`Registrar`] is the registrar behind it: Kamailio (Debian's, 5.6) from `tests/interop/kamailio-b2bua.cfg`, a
//! registrar with Path that Record-Routes the B2BUA's outgoing legs to the phones. It is started the same way,
//! ready once it answers an OPTIONS, and logs a `B2B-REQ` / `B2B-RPL` line of `key=value` fields per message.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::proc::Proc;
use super::sip_text::{options_to, SipMsg, Tp};

/// The version scripts/test.sh installs.
pub const SIPPY_VERSION: &str = "2.5.0";

/// One message in the B2BUA's SIP log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Sent by the B2BUA (else received).
    pub sent: bool,
    /// The other side, as the log names it (`udp:IP:PORT`).
    pub peer: String,
    pub msg: SipMsg,
}

/// How one leg (one Call-ID) ended, from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEnd {
    /// A BYE was answered 200.
    Bye,
    /// The INVITE got this final failure response (487 after a CANCEL).
    Failed(u16),
}

/// One call the B2BUA bridged: the Call-ID of the INVITE it received and of the INVITE it sent for it.
#[derive(Debug, Clone)]
pub struct Bridged {
    pub incoming: String,
    pub outgoing: Option<String>,
}

/// A running B2BUA.
pub struct Sippy {
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub out: PathBuf,
    cli: PathBuf,
    proc: Proc,
}

/// Fail loudly when `b2bua_radius` is missing: scripts/test.sh installs it.
pub fn require_sippy() {
    let ok = Command::new("sh").args(["-c", "command -v b2bua_radius"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "`b2bua_radius` is not on PATH: python3 -m pip install sippy=={SIPPY_VERSION} (scripts/test.sh does)");
}

impl Sippy {
    /// Start on `addr` (UDP), calls to `route`, REGISTERs to `registrar`; wait until its CLI answers (the CLI is
    /// served by the event loop, which runs once the SIP socket is bound).
    pub fn start(dir: &Path, addr: SocketAddr, route: SocketAddr, registrar: SocketAddr) -> Sippy {
        require_sippy();
        let log = dir.join("sippy.log");
        let out = dir.join("sippy.out");
        let cli = dir.join("sippy.sock");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", "300", "b2bua_radius", "-f", "-u", "-A", "0", "-H"])
            .args(["-l", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-s", &route.to_string()])
            .arg(format!("--sip_proxy={registrar}"))
            .arg("-c")
            .arg(format!("unix:{}", cli.display()))
            .env("SIPLOG_BEND", "stderr")
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir)
            .stdout(std::fs::File::create(&out).expect("create sippy.out"))
            .stderr(std::fs::File::create(&log).expect("create sippy.log"));
        let mut s = Sippy { addr, log, out, cli, proc: Proc::spawn("sippy", cmd) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.cli_answers() {
            if let Some(st) = s.proc.try_wait() {
                panic!("the Sippy B2BUA exited before it was ready ({st}):\n{}", s.tails());
            }
            assert!(Instant::now() < deadline, "the Sippy B2BUA's CLI did not answer within 20 s:\n{}", s.tails());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Whether the CLI answers `l` (the list of calls in memory). Only while none is: sippy 2.5.0's `l` fails on
    /// any call in memory (it unpacks four fields into three), and an ended call stays there 32 s to absorb
    /// retransmissions, so the tests judge calls by the SIP log ([`Sippy::leg_end`]) instead.
    pub fn cli_answers(&self) -> bool {
        let Ok(mut c) = UnixStream::connect(&self.cli) else { return false };
        if c.set_read_timeout(Some(Duration::from_secs(2))).is_err() || c.write_all(b"l\n").is_err() {
            return false;
        }
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !(text.contains("Total: ") && text.ends_with('\n')) {
            match c.read(&mut buf) {
                Ok(n) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
        true
    }

    /// The SIP log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Every message in the log so far, in order.
    pub fn messages(&self) -> Vec<Logged> {
        parse_sippy_log(&self.log_text())
    }

    /// The calls bridged so far: each initial INVITE received, paired in order with each initial INVITE sent.
    pub fn calls(&self) -> Vec<Bridged> {
        let msgs = self.messages();
        let initial = |sent: bool| -> Vec<String> {
            let mut ids: Vec<String> = Vec::new();
            for m in msgs.iter().filter(|m| m.sent == sent && m.msg.method() == Some("INVITE")) {
                let fresh = m.msg.header("To").is_some_and(|t| !t.contains("tag="));
                let id = m.msg.header("Call-ID").unwrap_or_default().to_string();
                if fresh && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids
        };
        let (inc, out) = (initial(false), initial(true));
        inc.iter().enumerate().map(|(i, c)| Bridged { incoming: c.clone(), outgoing: out.get(i).cloned() }).collect()
    }

    /// How the leg with this Call-ID ended, if it has: a BYE answered 200, or the INVITE's final failure.
    pub fn leg_end(&self, call_id: &str) -> Option<LegEnd> {
        let msgs: Vec<Logged> =
            self.messages().into_iter().filter(|m| m.msg.header("Call-ID") == Some(call_id)).collect();
        let bye_ok = msgs.iter().any(|m| m.msg.status() == Some(200) && m.msg.cseq_method() == Some("BYE"));
        if bye_ok {
            return Some(LegEnd::Bye);
        }
        msgs.iter()
            .filter(|m| m.msg.cseq_method() == Some("INVITE"))
            .filter_map(|m| m.msg.status())
            .find(|c| *c >= 300)
            .map(LegEnd::Failed)
    }

    /// Poll the log until both legs of `call` have ended; what each ended with, at the deadline too.
    pub fn wait_legs_end(&self, call: &Bridged, deadline: Instant) -> (Option<LegEnd>, Option<LegEnd>) {
        loop {
            let a = self.leg_end(&call.incoming);
            let b = call.outgoing.as_deref().and_then(|c| self.leg_end(c));
            if (a.is_some() && b.is_some()) || Instant::now() >= deadline {
                return (a, b);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the B2BUA is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    fn tails(&self) -> String {
        let tail = |p: &Path| {
            let t = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(120)..].join("\n")
        };
        let (out, log) = (tail(&self.out), tail(&self.log));
        format!("---- {} (tail)\n{out}\n---- {} (tail)\n{log}", self.out.display(), self.log.display())
    }
}

impl Drop for Sippy {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.tails());
        }
    }
}

/// The messages of a Sippy SIP log: each is a line `DATE TIME/GLOBAL/b2bua: RECEIVED message from udp:IP:PORT:`
/// (or `SENDING message to ...`) followed by the message, then an empty line.
pub fn parse_sippy_log(text: &str) -> Vec<Logged> {
    let mut out = Vec::new();
    let mut cur: Option<(bool, String, Vec<&str>)> = None;
    let mut flush = |cur: Option<(bool, String, Vec<&str>)>| {
        if let Some((sent, peer, lines)) = cur {
            if let Some(msg) = SipMsg::parse(lines.join("\n").trim_start().as_bytes()) {
                out.push(Logged { sent, peer, msg });
            }
        }
    };
    for line in text.lines() {
        let head = [(" RECEIVED message from ", false), (" SENDING message to ", true)]
            .into_iter()
            .find_map(|(pat, sent)| line.find(pat).map(|at| (sent, &line[at + pat.len()..])))
            .filter(|(_, peer)| peer.ends_with(':'));
        match head {
            Some((sent, peer)) => {
                flush(cur.take());
                cur = Some((sent, peer.trim_end_matches(':').to_string(), Vec::new()));
            }
            None => {
                if let Some((_, _, lines)) = &mut cur {
                    lines.push(line.trim_end_matches('\r'));
                }
            }
        }
    }
    flush(cur);
    out
}

/// The config template of [`Registrar`].
pub const REGISTRAR_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/kamailio-b2bua.cfg");

/// One `B2B-REQ` (a request the registrar got) or `B2B-RPL` (a reply it relayed) line.
#[derive(Debug, Clone)]
pub struct RegLine {
    pub request: bool,
    pub line: String,
}

impl RegLine {
    /// The value of ` key=`, up to the next space (`m`, `ru`, `cid`, `src`, `s`, `expires`, `path`, `contact`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let at = self.line.find(&pat)? + pat.len();
        self.line[at..].split(' ').next()
    }

    /// Whether this is a `method` request.
    pub fn is_method(&self, method: &str) -> bool {
        self.request && self.field("m") == Some(method)
    }

    /// Whether this is the request `method` of the call `call_id`.
    pub fn is_request(&self, method: &str, call_id: &str) -> bool {
        self.is_method(method) && self.field("cid") == Some(call_id)
    }
}

/// A running Kamailio registrar; see the module docs.
pub struct Registrar {
    pub addr: SocketAddr,
    log: PathBuf,
    proc: Proc,
}

impl Registrar {
    /// Start on `addr` (UDP) with its files in `dir/registrar`; wait until it answers an OPTIONS.
    pub fn start(dir: &Path, addr: SocketAddr) -> Registrar {
        let template = std::fs::read_to_string(REGISTRAR_CFG).expect("read tests/interop/kamailio-b2bua.cfg");
        let cfg_text = template.replace("@IP@", &addr.ip().to_string()).replace("@PORT@", &addr.port().to_string());
        let work = dir.join("registrar");
        std::fs::create_dir_all(&work).expect("create registrar dir");
        let cfg = work.join("kamailio.cfg");
        std::fs::write(&cfg, cfg_text).expect("write kamailio.cfg");
        let log = work.join("kamailio.log");
        let out = std::fs::File::create(&log).expect("create kamailio.log");
        let mut cmd = Command::new("timeout");
        // -DD -E: foreground, log to stderr; -Y: its runtime dir in the test dir, not /run/kamailio.
        cmd.args(["-k", "2", "300", "kamailio", "-DD", "-E", "-m", "32", "-M", "8", "-f"])
            .arg(&cfg)
            .arg("-w")
            .arg(&work)
            .arg("-Y")
            .arg(&work)
            .arg("-P")
            .arg(work.join("kamailio.pid"))
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out);
        let mut r = Registrar { addr, log, proc: Proc::spawn("registrar", cmd) };
        let probe = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).expect("bind probe socket");
        probe.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let local = probe.local_addr().expect("local addr");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = vec![0u8; 65536];
        for i in 0.. {
            if let Some(st) = r.proc.try_wait() {
                panic!("kamailio exited before it was ready ({st}):\n{}", r.log_text());
            }
            assert!(Instant::now() < deadline, "kamailio did not answer OPTIONS within 15 s:\n{}", r.log_text());
            let cid = format!("registrar-ready-{i}");
            let _ = probe.send_to(options_to(local, addr, Tp::Udp, &cid).as_bytes(), addr);
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if SipMsg::parse(&buf[..n]).is_some_and(|m| m.status() == Some(200)) {
                    break;
                }
            }
        }
        r
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Every `B2B-REQ` / `B2B-RPL` line so far (readiness probes left out), in order.
    pub fn lines(&self) -> Vec<RegLine> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let line = &l[l.find("B2B-")?..];
                let request = line.starts_with("B2B-REQ ");
                (request || line.starts_with("B2B-RPL ")).then(|| RegLine { request, line: line.to_string() })
            })
            .filter(|l| !l.field("cid").is_some_and(|c| c.starts_with("registrar-ready-")))
            .collect()
    }

    /// Poll the log (every 20 ms) until a line matches; panic naming `what` at the deadline.
    pub fn expect(&self, within: Duration, what: &str, pred: impl Fn(&RegLine) -> bool) -> RegLine {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines().into_iter().find(&pred) {
                return l;
            }
            assert!(Instant::now() < deadline, "the registrar saw no {what} within {within:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (tail)\n{}", self.log.display(), lines[lines.len().saturating_sub(80)..].join("\n"));
        }
    }
}

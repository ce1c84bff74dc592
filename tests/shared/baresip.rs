//! A real SIP phone for the interop tests: baresip 1.0 (Debian's `baresip-core`), headless, driven over its
//! `ctrl_tcp` module (netstring-framed JSON: commands in, responses and events out).
//!
//! ```text
//!   let mut alice = Phone::start(PhoneSpec::new("alice", "alice", "127.0.0.N", Ipv4Addr::new(127, 0, 2, N))
//!       .transport(SipTransport::Tcp)
//!       .outbound(sipfront_addr), &dir);
//!   alice.wait_registered(WAIT);
//!   alice.dial("sip:bob@127.0.0.N");
//!   bob.wait_event("CALL_INCOMING", WAIT);  bob.accept();
//!   alice.wait_event("CALL_ESTABLISHED", WAIT);
//!   let rtp = alice.wait_rtp(WAIT, Default::default());   // RTP sent and received, from `/audio_debug`
//!   alice.hangup();  bob.wait_event("CALL_CLOSED", WAIT);
//!   alice.wait_no_calls(Duration::from_secs(2));
//! ```
//!
//! Each phone gets its own config dir (`baresip -f DIR`, the files written here; the account is added with
//! `uanew` once the control socket is connected, so no event is missed) and binds one address for
//! everything: SIP (`sip_listen`), RTP (`net_interface`, so its SDP names it) and the control socket (two phones
//! need two addresses, or other `sip_port`/`ctrl_port`). Its TCP and TLS connections, though, leave from the
//! address the kernel picks (127.0.0.1 on loopback), and its Contact then names that connection's ephemeral port:
//! only the flow reaches it. Audio comes
//! from `ausine` (a 440 Hz tone) and goes to an `aubridge` device nothing reads; the codecs are G.711. The
//! account has `answermode=manual` (the test accepts or rejects) and, with [`PhoneSpec::outbound`], sends every
//! request to that proxy. baresip runs with `-s`: every SIP message it sends or receives is in its log, which
//! [`Phone::sip_trace`] reads back (e.g. to count the 200 OK retransmissions of a callee that got no ACK).
//!
//! baresip 1.0 command names (`/help` over ctrl_tcp): `dial`, `accept`, `hangup` (rejects an incoming call with
//! 486), `hold`, `resume`, `listcalls`, `audio_debug`, `callstat`, `reginfo`, `uadel` (deletes the account, which
//! unregisters it). Events: `REGISTER_OK`, `REGISTER_FAIL`, `CALL_INCOMING`, `CALL_RINGING`, `CALL_PROGRESS`,
//! `CALL_ESTABLISHED` (for a callee: only once the ACK arrived), `CALL_CLOSED` (param: the reason, e.g.
//! `486 Busy Here`), `CALL_RTPESTAB`, `CALL_LOCAL_SDP`/`CALL_REMOTE_SDP` (param `offer`/`answer`).
//!
//! The control connection (framing, responses, the event queue) is `ctrl.rs`. The process runs in its own process
//! group under coreutils `timeout`, SIGKILLed on drop; when the test panics, the tail of the phone's log is printed
//! first. Every wait has a deadline.

mod ctrl;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use ctrl::Event;

use super::proc::Proc;
use super::sip_text::SipMsg;
use ctrl::Ctrl;

/// How long baresip may take to open its control socket.
const READY: Duration = Duration::from_secs(15);

/// The transport between a phone and its outbound proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

impl SipTransport {
    pub const ALL: [SipTransport; 3] = [SipTransport::Udp, SipTransport::Tcp, SipTransport::Tls];

    pub fn lower(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }
}

/// How a phone is set up; see [`PhoneSpec::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct PhoneSpec {
    /// A label for logs and the config dir's name.
    pub name: String,
    /// The account: `sip:user@domain`.
    pub user: String,
    pub domain: String,
    /// The one address the phone binds (SIP, RTP, control).
    pub ip: Ipv4Addr,
    pub sip_port: u16,
    pub ctrl_port: u16,
    pub transport: SipTransport,
    /// The outbound proxy every request goes to (`;outbound=` of the account), on `transport`.
    pub outbound: Option<SocketAddr>,
    /// Registration interval in seconds (`regint`); 0: the phone never registers.
    pub regint: u32,
    /// CA certificate file for TLS (`sip_cafile`).
    pub ca_file: Option<PathBuf>,
    /// More `key value` lines for the config file.
    pub config: Vec<String>,
    /// More `;key=value` parameters for the account line.
    pub account_params: Vec<String>,
}

impl PhoneSpec {
    /// A phone on `ip` (SIP on port 5070, control on 4444) for `sip:user@domain`, over UDP, registering every
    /// 60 s, with no outbound proxy.
    pub fn new(name: &str, user: &str, domain: &str, ip: Ipv4Addr) -> PhoneSpec {
        PhoneSpec {
            name: name.into(),
            user: user.into(),
            domain: domain.into(),
            ip,
            sip_port: 5070,
            ctrl_port: 4444,
            transport: SipTransport::Udp,
            outbound: None,
            regint: 60,
            ca_file: None,
            config: Vec::new(),
            account_params: Vec::new(),
        }
    }

    pub fn transport(mut self, t: SipTransport) -> PhoneSpec {
        self.transport = t;
        self
    }

    pub fn outbound(mut self, proxy: SocketAddr) -> PhoneSpec {
        self.outbound = Some(proxy);
        self
    }

    pub fn regint(mut self, secs: u32) -> PhoneSpec {
        self.regint = secs;
        self
    }

    pub fn ca_file(mut self, path: &Path) -> PhoneSpec {
        self.ca_file = Some(path.to_path_buf());
        self
    }

    pub fn config(mut self, line: &str) -> PhoneSpec {
        self.config.push(line.into());
        self
    }

    pub fn account_param(mut self, param: &str) -> PhoneSpec {
        self.account_params.push(param.into());
        self
    }

    /// The address of record, `sip:user@domain` (the key of `uadel`).
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    fn config_file(&self) -> String {
        let ip = self.ip;
        let mut s = format!(
            "poll_method\tepoll\nsip_listen\t{ip}:{}\nnet_interface\t{ip}\ncall_local_timeout\t120\n\
             call_max_calls\t4\n\
             # ausine makes 48 kHz stereo only; aubridge is a player nothing reads.\n\
             audio_source\tausine,440\naudio_player\taubridge,nil\naudio_alert\taubridge,nil\n\
             ausrc_srate\t48000\nauplay_srate\t48000\nausrc_channels\t2\nauplay_channels\t2\n\
             rtp_stats\tyes\nstatmode_default\toff\nmodule_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\nmodule\tausine.so\nmodule\taubridge.so\nmodule_tmp\taccount.so\n\
             module_app\tmenu.so\nmodule_app\tctrl_tcp.so\nctrl_tcp_listen\t{ip}:{}\n",
            self.sip_port, self.ctrl_port
        );
        if let Some(ca) = &self.ca_file {
            let _ = writeln!(s, "sip_cafile\t{}", ca.display());
        }
        for l in &self.config {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    fn account_line(&self) -> String {
        let tp = self.transport.lower();
        let mut s =
            format!("<sip:{}@{};transport={tp}>;regint={};answermode=manual", self.user, self.domain, self.regint);
        if let Some(p) = self.outbound {
            let _ = write!(s, ";outbound=\"sip:{p};transport={tp}\"");
        }
        for p in &self.account_params {
            let _ = write!(s, ";{p}");
        }
        s.push('\n');
        s
    }
}

/// RTP packets of the current call, from `/audio_debug`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpCounters {
    pub sent: u64,
    pub received: u64,
}

/// A SIP message in the phone's `-s` trace.
#[derive(Debug, Clone)]
pub struct TracedSip {
    /// Sent by this phone, else received.
    pub sent: bool,
    /// `UDP`, `TCP` or `TLS`.
    pub transport: String,
    pub msg: SipMsg,
}

/// A running baresip; see the module docs.
pub struct Phone {
    pub spec: PhoneSpec,
    pub dir: PathBuf,
    log: PathBuf,
    proc: Proc,
    ctrl: Ctrl,
}

impl Phone {
    /// Write the config into `parent/<name>/`, start baresip and connect to its control socket.
    pub fn start(spec: PhoneSpec, parent: &Path) -> Phone {
        let dir = parent.join(format!("phone-{}", spec.name));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::write(dir.join("config"), spec.config_file()).expect("write baresip config");
        // No account at start: it is added over the control socket once connected (`uanew`), so that its
        // REGISTERING / REGISTER_OK events come to us rather than before we are there.
        std::fs::write(dir.join("accounts"), "").expect("write baresip accounts");
        std::fs::write(dir.join("contacts"), "").expect("write baresip contacts");
        let log = dir.join("baresip.log");
        let out = std::fs::File::create(&log).expect("create baresip.log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new("timeout");
        // stdbuf: the SIP trace goes through stdio, which a file would otherwise buffer until exit.
        cmd.args(["-k", "2", "600", "stdbuf", "-oL", "-eL", "baresip", "-s", "-f"]).arg(&dir).stdout(out).stderr(err);
        let mut proc = Proc::spawn(&format!("baresip-{}", spec.name), cmd);
        let addr = SocketAddr::new(IpAddr::V4(spec.ip), spec.ctrl_port);
        let deadline = Instant::now() + READY;
        let ctrl = loop {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                break s;
            }
            if let Some(st) = proc.try_wait() {
                panic!("baresip {} exited before it was ready ({st}):\n{}", spec.name, read_lossy(&log));
            }
            if Instant::now() > deadline {
                proc.kill();
                panic!(
                    "baresip {} opened no control socket on {addr} within {READY:?}:\n{}",
                    spec.name,
                    read_lossy(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let account = spec.account_line();
        let ctrl = Ctrl::new(&spec.name, ctrl);
        let mut phone = Phone { spec, dir, log, proc, ctrl };
        phone.command("uanew", account.trim_end());
        phone
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether baresip still runs.
    pub fn alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// Run a command: `Ok(data)` when baresip says ok, `Err(data)` when it says not, or when no answer came.
    pub fn try_command(&mut self, cmd: &str, params: &str) -> Result<String, String> {
        self.ctrl.command(cmd, params)
    }

    /// Run a command that must succeed; its output.
    pub fn command(&mut self, cmd: &str, params: &str) -> String {
        self.try_command(cmd, params).unwrap_or_else(|e| panic!("{}: `{cmd} {params}` failed: {e}", self.spec.name))
    }

    pub fn dial(&mut self, uri: &str) {
        self.command("dial", uri);
    }

    /// Answer the incoming call.
    pub fn accept(&mut self) {
        self.command("accept", "");
    }

    /// End the current call: BYE when established, CANCEL when still ringing out, 486 to an incoming one.
    pub fn hangup(&mut self) {
        self.command("hangup", "");
    }

    /// Put the current call on hold (a re-INVITE with `a=sendonly`).
    pub fn hold(&mut self) {
        self.command("hold", "");
    }

    /// Take the current call off hold (a re-INVITE with `a=sendrecv`).
    pub fn resume(&mut self) {
        self.command("resume", "");
    }

    /// Delete the account: baresip unregisters it (REGISTER with expires 0) as it goes.
    pub fn unregister(&mut self) {
        let aor = self.spec.aor();
        self.command("uadel", &aor);
    }

    /// `/reginfo`: the accounts and whether each is registered.
    pub fn reginfo(&mut self) -> String {
        self.command("reginfo", "")
    }

    /// How many calls baresip has (`/listcalls`: `--- Active calls (N) ---`).
    pub fn call_count(&mut self) -> usize {
        let out = self.command("listcalls", "");
        out.split("Active calls (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: unexpected listcalls output: {out}", self.spec.name))
    }

    /// Poll `/listcalls` (every 50 ms) until no call is left; `Err` with the last listing at the deadline.
    pub fn wait_no_calls(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if self.call_count() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let calls = self.command("listcalls", "");
                return Err(format!("{}: calls left after {within:?}:{calls}", self.spec.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The RTP packets of the current call so far (zero without one).
    pub fn rtp(&mut self) -> RtpCounters {
        parse_audio_debug(&self.try_command("audio_debug", "").unwrap_or_default())
    }

    /// The media direction of the current call's audio stream (`sendrecv`, `sendonly` ...), from `/audio_debug`.
    pub fn audio_dir(&mut self) -> Option<String> {
        let out = self.try_command("audio_debug", "").ok()?;
        let at = out.find("audio dir=")? + "audio dir=".len();
        out[at..].split_whitespace().next().map(String::from)
    }

    /// Poll the counters (every 50 ms) until packets went both ways and the received count grows past `after`.
    pub fn wait_rtp(&mut self, within: Duration, after: RtpCounters) -> RtpCounters {
        let deadline = Instant::now() + within;
        loop {
            let c = self.rtp();
            if c.sent > after.sent && c.received > after.received {
                return c;
            }
            if Instant::now() >= deadline {
                let debug = self.try_command("audio_debug", "").unwrap_or_default();
                panic!(
                    "{}: no RTP both ways within {within:?} (now {c:?}, before {after:?}):\n{debug}",
                    self.spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the next event of this kind not taken yet (other events stay pending).
    pub fn try_wait_event(&mut self, kind: &str, within: Duration) -> Option<Event> {
        self.try_wait_event_where(within, |e| e.kind == kind)
    }

    /// The first pending event that `pred` accepts, taken off the queue; `None` at the deadline.
    pub fn try_wait_event_where(&mut self, within: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        self.ctrl.take_event(Instant::now() + within, pred)
    }

    /// Like [`Phone::try_wait_event`], panicking with the events seen so far at the deadline.
    pub fn wait_event(&mut self, kind: &str, within: Duration) -> Event {
        match self.try_wait_event(kind, within) {
            Some(e) => e,
            None => {
                let seen = self.event_summary();
                panic!("{}: no {kind} within {within:?}; events so far: {seen}", self.spec.name)
            }
        }
    }

    /// Wait for `REGISTER_OK` (after a `REGISTER_FAIL` too: it panics naming the failure).
    pub fn wait_registered(&mut self, within: Duration) -> Event {
        let Some(e) = self.try_wait_event_where(within, |e| e.kind == "REGISTER_OK" || e.kind == "REGISTER_FAIL")
        else {
            let seen = self.event_summary();
            panic!("{}: not registered within {within:?}: {seen}", self.spec.name)
        };
        assert_eq!(e.kind, "REGISTER_OK", "{}: registration failed: {}", self.spec.name, e.param);
        e
    }

    /// Forget the events not taken yet (the history keeps them): a later wait sees only events that come after.
    pub fn clear_pending(&mut self) {
        self.ctrl.clear_pending();
    }

    /// Every event so far (reads what is waiting on the socket first).
    pub fn events(&mut self) -> Vec<Event> {
        self.ctrl.history().to_vec()
    }

    /// How many events of this kind came so far.
    pub fn count_events(&mut self, kind: &str) -> usize {
        self.events().iter().filter(|e| e.kind == kind).count()
    }

    /// `KIND(param)` for every event so far, in order, for failure messages.
    pub fn event_summary(&mut self) -> String {
        let evs = self.events();
        evs.iter()
            .filter(|e| e.kind != "CALL_RTCP")
            .map(|e| format!("{}({})", e.kind, e.param))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// baresip's output so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// The SIP messages the phone sent and received so far, from its `-s` trace.
    pub fn sip_trace(&self) -> Vec<TracedSip> {
        parse_trace(&self.log_text(), self.spec.ip, self.spec.outbound)
    }

    /// How many times this phone sent a response with this status to a request with this CSeq method and
    /// Call-ID (retransmissions included).
    pub fn sent_responses(&self, status: u16, cseq_method: &str, call_id: &str) -> usize {
        self.sip_trace()
            .iter()
            .filter(|t| t.sent && t.msg.status() == Some(status) && t.msg.cseq_method() == Some(cseq_method))
            .filter(|t| t.msg.header("Call-ID") == Some(call_id))
            .count()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- baresip {} ({}), tail:\n{}",
                self.spec.name,
                self.log.display(),
                tail(&self.log_text(), 120)
            );
        }
    }
}

/// The counters of `/audio_debug`: `TX: packets=N` of the RTCP session, and the `rcvd=N` of the peer's member
/// line (absent until a packet came).
pub fn parse_audio_debug(out: &str) -> RtpCounters {
    let num_after = |key: &str| -> u64 {
        out.match_indices(key)
            .filter_map(|(i, _)| out[i + key.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    RtpCounters { sent: num_after("TX: packets="), received: num_after("rcvd=") }
}

/// The messages of a baresip `-s` log: each is a `#` line, `UDP src -> dst`, then the message up to a blank
/// line (its body is skipped). Colour codes are dropped first. Which were sent: with an outbound proxy, those to
/// it; else those from `own_ip`. (Over TCP and TLS the source is not `own_ip`: baresip binds only its listening
/// sockets, so its connections leave from the address the kernel picks, 127.0.0.1 on loopback.)
pub fn parse_trace(log: &str, own_ip: Ipv4Addr, outbound: Option<SocketAddr>) -> Vec<TracedSip> {
    let text = strip_colours(log);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut head = lines[i].split_whitespace();
        let (Some(tp), Some(src), Some("->"), Some(dst)) = (head.next(), head.next(), head.next(), head.next()) else {
            i += 1;
            continue;
        };
        if !matches!(tp, "UDP" | "TCP" | "TLS") || !lines.get(i + 1).is_some_and(|l| l.contains("SIP/2.0")) {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim().is_empty() {
            end += 1;
        }
        let msg_text = lines[start..end].join("\r\n") + "\r\n\r\n";
        if let Some(msg) = SipMsg::parse(msg_text.as_bytes()) {
            let sent = match outbound {
                Some(proxy) => dst == proxy.to_string(),
                None => src.rsplit_once(':').is_some_and(|(ip, _)| ip == own_ip.to_string()),
            };
            out.push(TracedSip { sent, transport: tp.to_string(), msg });
        }
        i = end;
    }
    out
}

fn strip_colours(s: &str) -> String {
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

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

//! The SIP peers around the nodes, both SIPp: the PBXs ([`Lab::start_pbx`], UAS on 10.201.T.2j:5060) and the
//! callers ([`Lab::start_uac`], [`Lab::run_uac`]: UAC on the phone address 10.201.T.50). They run as any lab
//! process does (see `procs`); this file knows SIPp's arguments and reads back what it did ([`SippRun`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::shared::{parse_sipp_trace, SippRun, Tp, Traced, SCENARIOS};
use super::topology::{Lab, Ns};
use super::SIP_PORT;

impl Lab {
    /// Start PBX j: SIPp `scenario` (a file in tests/sipp, e.g. "uas_health.xml") on 10.201.T.2j:5060 over UDP,
    /// labelled `p{j}`, with its message trace on, no call limit, no dead calls and no `-timeout` (stop it with
    /// [`Lab::stop_pbx`] or [`Lab::kill9`]); then wait until it answers an OPTIONS sent from inside its own
    /// namespace. The scenario must answer OPTIONS with 200, as uas_health.xml does (sipfront probes every PBX
    /// anyway); those readiness requests have Call-IDs `lab-ready-p{j}-N`.
    pub fn start_pbx(&mut self, j: u8, scenario: &str) {
        assert!((1..=2).contains(&j), "PBX {j}: the lab has PBXs 1..=2");
        let label = format!("p{j}");
        let path = Path::new(SCENARIOS).join(scenario);
        assert!(path.is_file(), "no scenario {}", path.display());
        let (err, msg) = (self.dir.join(format!("{label}.err")), self.dir.join(format!("{label}.msg")));
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(&path)
            .args(["-t", "u1", "-i", &self.pbx_ip(j).to_string(), "-p", &SIP_PORT.to_string()])
            .args(["-m", "1000000", "-nostdin", "-max_socket", "4096"])
            // A real PBX answers a retransmitted BYE from its transaction layer (timer J) even after the call
            // ended; SIPp would swallow it in a "dead call" for 33 s. Without dead calls the retransmission
            // starts a new SIPp call, whose orphan-BYE branch (uas_health.xml) answers 200 like the PBX would.
            .args(["-deadcall_wait", "0", "-trace_err", "-error_file"])
            .arg(&err)
            .args(["-trace_msg", "-message_file"])
            .arg(&msg)
            .current_dir(&self.dir);
        self.spawn(Ns::Pbx(j), &label, cmd);
        let i = self.idx(&label);
        self.procs[i].extra_logs = vec![err, msg];
        self.wait_pbx_ready(j);
    }

    /// Wait until PBX j answers an OPTIONS from inside its namespace.
    pub fn wait_pbx_ready(&mut self, j: u8) -> Duration {
        self.wait_sip_ready(&format!("p{j}"), Ns::Pbx(j), self.pbx_sip(j))
    }

    /// Restart PBX j (SIGKILL if it still runs) and wait until it answers again.
    pub fn restart_pbx(&mut self, j: u8) {
        self.restart(&format!("p{j}"));
        self.wait_pbx_ready(j);
    }

    /// Stop PBX j gracefully: SIGUSR1 (SIPp stops taking calls and exits once the calls in progress end),
    /// SIGKILL after `grace`; what it did (its exit code is `None` when it had to be killed).
    pub fn stop_pbx(&mut self, j: u8, grace: Duration) -> SippRun {
        let label = format!("p{j}");
        self.signal(&label, "USR1");
        let status = match self.wait_exit(&label, grace) {
            Some(st) => st,
            None => {
                self.kill9(&label);
                self.procs[self.idx(&label)].proc.status.expect("reaped by kill")
            }
        };
        let p = &self.procs[self.idx(&label)];
        SippRun::collect(&label, status, p.started.elapsed(), &p.log, &p.extra_logs[0], Some(&p.extra_logs[1]))
    }

    /// PBX j's message trace so far (SIPp writes each message as it goes; a restart starts it afresh).
    pub fn pbx_trace(&self, j: u8) -> Vec<Traced> {
        let msg = self.dir.join(format!("p{j}.msg"));
        parse_sipp_trace(&String::from_utf8_lossy(&std::fs::read(msg).unwrap_or_default()))
    }

    // -------------------------------------------------------------------------------------------- callers

    /// Start a SIPp caller in the phone namespace on 10.201.T.50 (its own port from 5090 up).
    pub fn start_uac(&mut self, spec: UacSpec) -> Uac {
        let scenario = Path::new(SCENARIOS).join(&spec.scenario);
        assert!(scenario.is_file(), "no scenario {}", scenario.display());
        let (label, port) = (spec.label.clone(), self.next_uac_port);
        self.next_uac_port += 1;
        let (err, msg) = (self.dir.join(format!("{label}.err")), self.dir.join(format!("{label}.msg")));
        let secs = spec.timeout.as_secs().max(1);
        let mode = spec.tp.sipp_uac_mode();
        let mut cmd = Command::new("sipp");
        cmd.arg(spec.target.to_string())
            .arg("-sf")
            .arg(&scenario)
            .args(["-t", mode, "-i", &self.phone_ip().to_string(), "-p", &port.to_string()])
            .args(["-m", &spec.calls.to_string(), "-nostdin", "-timeout", &format!("{secs}s"), "-timeout_error"])
            .args(["-max_socket", "4096", "-trace_err", "-error_file"])
            .arg(&err);
        if let Some(r) = spec.rate {
            cmd.args(["-r", &r.to_string()]);
        }
        if let Some(l) = spec.limit {
            cmd.args(["-l", &l.to_string()]);
        }
        if let Some(d) = spec.hold {
            cmd.args(["-d", &d.as_millis().to_string()]);
        }
        if spec.trace {
            cmd.args(["-trace_msg", "-message_file"]).arg(&msg);
        }
        cmd.args(&spec.extra).current_dir(&self.dir);
        // The bound: SIPp's own -timeout, then `timeout` 15 s later.
        self.spawn_bounded(Ns::Phones, &label, cmd, Duration::from_secs(secs + 15));
        let i = self.idx(&label);
        self.procs[i].extra_logs = if spec.trace { vec![err.clone(), msg.clone()] } else { vec![err.clone()] };
        Uac { label, started: Instant::now(), timeout: spec.timeout, err, msg: spec.trace.then_some(msg) }
    }

    /// Wait for a caller to exit (its `-timeout` plus 10 s at most) and read what it did.
    pub fn wait_uac(&mut self, uac: Uac) -> SippRun {
        let within = (uac.started + uac.timeout + Duration::from_secs(10)).saturating_duration_since(Instant::now());
        let Some(status) = self.wait_exit(&uac.label, within) else {
            self.kill9(&uac.label);
            panic!("SIPp {} did not exit within {:?} (its -timeout plus 10 s)", uac.label, uac.timeout);
        };
        let log = self.log_path(&uac.label);
        SippRun::collect(&uac.label, status, uac.started.elapsed(), &log, &uac.err, uac.msg.as_deref())
    }

    /// [`Lab::start_uac`] and [`Lab::wait_uac`].
    pub fn run_uac(&mut self, spec: UacSpec) -> SippRun {
        let uac = self.start_uac(spec);
        self.wait_uac(uac)
    }
}

/// A SIPp caller, built like `UacSpec::new("calls", lab.vip_sip()).calls(20).rate(10)`.
#[derive(Debug, Clone)]
pub struct UacSpec {
    /// Unique in the lab: names the process and its files.
    pub label: String,
    pub target: SocketAddr,
    /// A file in tests/sipp; "uac.xml" (a basic call) unless set.
    pub scenario: String,
    pub tp: Tp,
    /// `-m`: calls to place in all.
    pub calls: u64,
    /// `-r`: new calls per second (SIPp's default otherwise: 10).
    pub rate: Option<u64>,
    /// `-l`: most calls at once.
    pub limit: Option<u64>,
    /// `-d`: how long each call is held before its BYE.
    pub hold: Option<Duration>,
    /// SIPp's `-timeout` (reaching it fails the run); 30 s unless set.
    pub timeout: Duration,
    /// The message trace (`-trace_msg`), on unless set off (a long load run would write megabytes).
    pub trace: bool,
    pub extra: Vec<String>,
}

impl UacSpec {
    pub fn new(label: &str, target: SocketAddr) -> UacSpec {
        UacSpec {
            label: label.into(),
            target,
            scenario: "uac.xml".into(),
            tp: Tp::Udp,
            calls: 1,
            rate: None,
            limit: None,
            hold: None,
            timeout: Duration::from_secs(30),
            trace: true,
            extra: Vec::new(),
        }
    }

    pub fn scenario(mut self, file: &str) -> UacSpec {
        self.scenario = file.into();
        self
    }

    pub fn tcp(mut self) -> UacSpec {
        self.tp = Tp::Tcp;
        self
    }

    pub fn calls(mut self, n: u64) -> UacSpec {
        self.calls = n;
        self
    }

    pub fn rate(mut self, per_second: u64) -> UacSpec {
        self.rate = Some(per_second);
        self
    }

    pub fn limit(mut self, at_once: u64) -> UacSpec {
        self.limit = Some(at_once);
        self
    }

    pub fn hold(mut self, d: Duration) -> UacSpec {
        self.hold = Some(d);
        self
    }

    pub fn timeout(mut self, t: Duration) -> UacSpec {
        self.timeout = t;
        self
    }

    pub fn trace(mut self, on: bool) -> UacSpec {
        self.trace = on;
        self
    }

    /// Any other SIPp argument, as is.
    pub fn arg(mut self, a: &str) -> UacSpec {
        self.extra.push(a.into());
        self
    }
}

/// A started caller, to pass to [`Lab::wait_uac`].
#[derive(Debug)]
pub struct Uac {
    pub label: String,
    pub started: Instant,
    timeout: Duration,
    err: PathBuf,
    msg: Option<PathBuf>,
}

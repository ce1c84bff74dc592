//! Processes in the lab's namespaces: anything ([`Lab::spawn`]), signals and restarts, and the sipfront nodes
//! ([`Lab::start_node`], [`Lab::wait_sip_ready`]). The SIPp PBXs and callers are in `peers`.
//!
//! Each runs as `ip netns exec NS timeout -s KILL <bound> PROGRAM ARGS...` in its own process group (`ip netns
//! exec` execs `timeout`, so the group is `timeout` and the program), stdout and stderr to `LABEL.log` in the
//! lab's dir. A process is known by its label (`n1`, `p2`, the caller's label), unique in the lab; starting a
//! label again once its process has ended (or [`Lab::restart`]) reuses the entry and appends to its log.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::shared::{options_to, sipfront_bin, tail_lines, Proc, SipMsg, Tp};
use super::topology::{Lab, Ns};

/// The bound on every process unless [`Lab::spawn_bounded`] says otherwise: `timeout` SIGKILLs it then, even
/// if the test process is gone.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(300);
/// How long a node or a PBX may take to answer its first OPTIONS.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What to run, kept so that [`Lab::restart`] can run it again (a `Command` cannot be cloned).
struct Launch {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
}

/// One labelled process of the lab.
pub(crate) struct LabProc {
    pub label: String,
    pub ns: Ns,
    launch: Launch,
    bound: Duration,
    pub proc: Proc,
    /// Every process group this label has had (one per start), for the cleanup checks.
    pub pgids: Vec<u32>,
    pub started: Instant,
    pub log: PathBuf,
    /// Other files worth showing when the test fails (SIPp's unexpected-message log and trace).
    pub extra_logs: Vec<PathBuf>,
}

impl LabProc {
    pub fn log_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.log.clone()).chain(self.extra_logs.iter().cloned()).collect()
    }
}

impl Lab {
    /// Start `cmd` inside `ns` under the lab's bound ([`DEFAULT_BOUND`] unless [`Lab::set_process_bound`]
    /// changed it). Its program, arguments, environment and working dir are used; its stdio is replaced by
    /// `LABEL.log`.
    pub fn spawn(&mut self, ns: Ns, label: &str, cmd: Command) {
        self.spawn_bounded(ns, label, cmd, self.process_bound);
    }

    /// The bound of every process [`Lab::spawn`] starts from now on (nodes and PBXs included): a lab that runs
    /// longer than [`DEFAULT_BOUND`] (the peer lab's trials) raises it, so that its long-lived processes are not
    /// killed under it; they still die by themselves at the bound if the test process is killed.
    pub fn set_process_bound(&mut self, bound: Duration) {
        self.process_bound = bound;
    }

    /// [`Lab::spawn`] with its own bound (SIGKILL after `bound`).
    pub fn spawn_bounded(&mut self, ns: Ns, label: &str, cmd: Command, bound: Duration) {
        let launch = Launch {
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(|a| a.to_owned()).collect(),
            envs: cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect(),
            cwd: cmd.get_current_dir().map(Path::to_path_buf),
        };
        let log = self.dir.join(format!("{label}.log"));
        if let Some(i) = self.procs.iter().position(|p| p.label == label) {
            assert!(self.procs[i].proc.try_wait().is_some(), "{label} is still running: kill it or use restart");
            let old = &mut self.procs[i];
            (old.ns, old.launch, old.bound) = (ns, launch, bound);
            self.relaunch(i);
            return;
        }
        let proc = launch_in(&self.ns(ns), &launch, bound, &log, false);
        let pgids = vec![proc.child.id()];
        self.procs.push(LabProc {
            label: label.into(),
            ns,
            launch,
            bound,
            proc,
            pgids,
            started: Instant::now(),
            log,
            extra_logs: Vec::new(),
        });
    }

    fn relaunch(&mut self, i: usize) {
        let ns_name = self.ns(self.procs[i].ns);
        let p = &mut self.procs[i];
        p.proc = launch_in(&ns_name, &p.launch, p.bound, &p.log, true);
        p.pgids.push(p.proc.child.id());
        p.started = Instant::now();
    }

    pub(crate) fn idx(&self, label: &str) -> usize {
        self.procs.iter().position(|p| p.label == label).unwrap_or_else(|| panic!("no process labelled {label}"))
    }

    /// SIGKILL the process group of `label` (`timeout` and the program) and reap it; the instant it was dead.
    pub fn kill9(&mut self, label: &str) -> Instant {
        let i = self.idx(label);
        self.procs[i].proc.kill();
        Instant::now()
    }

    /// Send a signal ("TERM", "USR1", "STOP", "CONT" ...) to the program itself (not to `timeout`).
    pub fn signal(&mut self, label: &str, signal: &str) {
        let i = self.idx(label);
        self.procs[i].proc.signal_program(signal);
    }

    /// SIGTERM the program: a graceful stop. See [`Lab::wait_exit`].
    pub fn sigterm(&mut self, label: &str) {
        self.signal(label, "TERM");
    }

    /// Start `label` again with the same namespace, command and bound (SIGKILLed first if still running);
    /// its log continues. Readiness is the caller's to wait for.
    pub fn restart(&mut self, label: &str) {
        let i = self.idx(label);
        self.procs[i].proc.kill();
        self.relaunch(i);
    }

    /// The pid of the program under `timeout` (its `/proc/PID/root` shows its mount namespace), while it runs.
    pub fn program_pid(&mut self, label: &str) -> Option<u32> {
        let i = self.idx(label);
        self.procs[i].proc.try_wait().is_none().then_some(())?;
        super::shared::child_pids(self.procs[i].proc.child.id()).first()?.parse().ok()
    }

    /// Whether `label` is still running.
    pub fn alive(&mut self, label: &str) -> bool {
        let i = self.idx(label);
        self.procs[i].proc.try_wait().is_none()
    }

    /// Wait (polling every 10 ms) for `label` to exit; its status, or `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, label: &str, within: Duration) -> Option<ExitStatus> {
        let i = self.idx(label);
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.procs[i].proc.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_path(&self, label: &str) -> PathBuf {
        self.procs[self.idx(label)].log.clone()
    }

    /// Everything `label` wrote so far (all its runs).
    pub fn log_text(&self, label: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path(label)).unwrap_or_default()).into_owned()
    }

    // -------------------------------------------------------------------------------------------- sipfront

    /// Write `n{i}.toml` and start `sipfront run --config` on it in node i's namespace, labelled `n{i}`
    /// (`RUST_LOG=info` unless set). Creates `n{i}-data` in the lab dir (the cluster config's `data_dir`).
    /// Does not wait: a standby cannot answer on the VIP; see [`Lab::wait_sip_ready`].
    pub fn start_node(&mut self, i: u8, toml: &str) -> PathBuf {
        assert!((1..=3).contains(&i), "node {i}: the lab has nodes 1..=3");
        let path = self.dir.join(format!("n{i}.toml"));
        std::fs::write(&path, toml).expect("write node config");
        std::fs::create_dir_all(self.dir.join(format!("n{i}-data"))).expect("create node data dir");
        let mut cmd = Command::new(sipfront_bin());
        cmd.arg("run").arg("--config").arg(&path).env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,openraft=warn");
        }
        self.spawn(Ns::Node(i), &format!("n{i}"), cmd);
        path
    }

    /// Poll `target` with OPTIONS from a socket in `from` (on its own address) until one is answered 200;
    /// how long that took. Panics, with `label`'s log, when `label` exits first or at [`READY_TIMEOUT`].
    pub fn wait_sip_ready(&mut self, label: &str, from: Ns, target: SocketAddr) -> Duration {
        let started = Instant::now();
        let sock = self.udp_socket(from, SocketAddr::new(IpAddr::V4(self.addr(from)), 0));
        let i = self.idx(label);
        let mut n = 0;
        loop {
            if let Some(st) = self.procs[i].proc.try_wait() {
                panic!("{label} exited ({st}) before answering OPTIONS on {target}:\n{}", self.log_tail(label));
            }
            n += 1;
            if options_answered(&sock, target, &format!("lab-ready-{label}-{n}"), Duration::from_millis(100)) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{label} did not answer OPTIONS on {target} within {READY_TIMEOUT:?}:\n{}",
                self.log_tail(label)
            );
        }
    }

    fn log_tail(&self, label: &str) -> String {
        tail_lines(&self.log_text(label), 40)
    }
}

/// Start `launch` in namespace `ns` as `ip netns exec NS timeout -s KILL BOUND PROGRAM ARGS`, output to `log`
/// (appended to, after a marker line, when `again`).
fn launch_in(ns: &str, launch: &Launch, bound: Duration, log: &Path, again: bool) -> Proc {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    if again {
        let _ = writeln!(file, "\n==== started again ====");
    }
    let err = file.try_clone().expect("clone log handle");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "timeout", "-s", "KILL", &bound.as_secs().max(1).to_string()])
        .arg(&launch.program)
        .args(&launch.args)
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    for (k, v) in &launch.envs {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(dir) = &launch.cwd {
        cmd.current_dir(dir);
    }
    let label = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Proc::spawn(&label, cmd)
}

/// Send one OPTIONS with Call-ID `call_id` from `sock` to `target`; whether a 200 for it came within `wait`.
pub fn options_answered(sock: &std::net::UdpSocket, target: SocketAddr, call_id: &str, wait: Duration) -> bool {
    let local = sock.local_addr().expect("local addr");
    // A failed send (no route yet, an ICMP error of an earlier one) just counts as no answer.
    let _ = sock.send_to(options_to(local, target, Tp::Udp, call_id).as_bytes(), target);
    let until = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left)).expect("set timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(m) = SipMsg::parse(&buf[..n]) {
                    if m.status() == Some(200) && m.header("Call-ID") == Some(call_id) {
                        return true;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return false,
        }
    }
    false
}

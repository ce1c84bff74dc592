//! What the hardening tests (`tests/hardening_*.rs`) share: a real `sipfront` started with a config of the test's
//! own (killed on drop, its temp dir removed), and what /proc says about it (resident memory, open descriptors).
//! Every test also runs against an older build with `SIPFRONT_TEST_BIN=/path/to/sipfront`, which is how the
//! tests were shown to fail on the behaviour they guard against.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::common::{child_pids, sipfront_bin, Proc};

/// A temp dir removed on drop (kept with `SIPFRONT_TEST_KEEP=1`).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("sipfront-hardening-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TestDir(d)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SIPFRONT_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `sipfront run` with a config written by the test, under coreutils `timeout`, its own process group.
pub struct Node {
    proc: Proc,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Node {
    pub fn start(dir: &Path, label: &str, toml: &str) -> Node {
        let config = dir.join(format!("{label}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", "300", &sipfront_bin(), "run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(err);
        Node { proc: Proc::spawn(label, cmd), config, log }
    }

    /// The sipfront process under `timeout`.
    pub fn pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = child_pids(self.proc.child.id()).first() {
                return p.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "{}: no sipfront process under timeout", self.proc.label);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until `ready`; panics with the log if the node exits first.
    pub fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Some(st) = self.proc.try_wait() {
                panic!("{} exited ({st}) before {what}:\n{}", self.proc.label, self.log_text());
            }
            assert!(Instant::now() < deadline, "{}: not {what} within 20 s:\n{}", self.proc.label, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the node ends within `within`.
    pub fn exits_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.proc.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!("---- {} (tail)\n{}", self.log.display(), tail(&self.log_text(), 60));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The running `sipfront` (not its `timeout`) whose command line names `config`.
pub fn pid_with_config(config: &Path) -> u32 {
    let want = config.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_sipfront = args.first().is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "sipfront"));
            if is_sipfront && args.contains(&want) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no sipfront process runs {want}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Whether the other side closed `s` (EOF or reset), looking for up to `wait`. Data the peer sent is discarded.
pub fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// Lower the open-file limit of a running process (as `prlimit --nofile` does): what a flood has to exhaust.
pub fn limit_open_files(pid: u32, n: u64) {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit pointer is null).
    let r = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
}

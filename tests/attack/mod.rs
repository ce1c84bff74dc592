//! What the attack tests (`tests/attack.rs`) share: the attackers' and the relay target's addresses, SIPVicious
//! runs bounded in time and killed on drop, sipfront's /metrics, and its resident memory sampled from /proc.
//!
//! ```text
//!   pbx    AttackPbx: the PBX behind sipfront, leaky on purpose, counting what reached it
//!   flood  Flood: an INVITE flood from one address, paced and bounded, counting sipfront's answers
//!   relay  the relay attempts: forged Routes, To tags, Vias and responses aimed at a target
//! ```
#![allow(dead_code)]

pub mod flood;
pub mod pbx;
pub mod relay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{metric_sample, Harness, Proc};

/// The first attacker of test N: 127.0.2.N (the legitimate caller keeps 127.0.0.N, so a ban on an attacker
/// cannot touch it).
/// One attack at a time: two floods side by side on two cores starve the legitimate callers both check.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn attacker(h: &Harness) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 2, h.n)
}

/// A second attacker: 127.0.3.N.
pub fn attacker2(h: &Harness) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 3, h.n)
}

/// Where a relay attempt wants to go: 127.0.4.N:5060, a socket the test watches.
pub fn relay_target(h: &Harness) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 4, h.n)), 5060)
}

// ------------------------------------------------------------------------------------------------ SIPVicious

/// A SIPVicious tool (or any program) running under coreutils `timeout` in its own process group; killed on drop.
pub struct Tool {
    label: String,
    proc: Proc,
    out: PathBuf,
    started: Instant,
    limit: Duration,
}

/// What a finished tool printed.
#[derive(Debug)]
pub struct ToolRun {
    pub label: String,
    /// 124: `timeout` had to stop it.
    pub code: Option<i32>,
    pub output: String,
    pub elapsed: Duration,
}

impl Tool {
    /// Start `program args` with stdout and stderr in `dir/label.out`; `timeout` ends it after `limit`.
    pub fn start(dir: &Path, label: &str, program: &str, args: &[String], limit: Duration) -> Tool {
        let out = dir.join(format!("{label}.out"));
        let f = std::fs::File::create(&out).expect("create tool log");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", &limit.as_secs().max(1).to_string(), program])
            .args(args)
            .current_dir(dir)
            // SIPVicious keeps session state under $HOME/.sipvicious: keep it in the test dir.
            .env("HOME", dir)
            .stdout(f.try_clone().expect("clone"))
            .stderr(f);
        Tool { label: label.into(), proc: Proc::spawn(label, cmd), out, started: Instant::now(), limit }
    }

    /// Wait for it to exit (at most its limit and a few seconds more, then it is killed) and read its output.
    pub fn wait(&mut self) -> ToolRun {
        let deadline = self.started + self.limit + Duration::from_secs(5);
        while self.proc.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.kill();
        ToolRun {
            label: self.label.clone(),
            code: self.proc.status.and_then(|s| s.code()),
            output: String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// The usual arguments of a SIPVicious tool sending from `ip`, port `port`: bound there (`-b`) and writing it
/// into its Vias (`-x`). SIPVicious 0.3.3's svwar and svcrack ignore `-b` (their socket is bound to the wildcard
/// address, so the kernel sends from 127.0.0.1); only the Via says who they are, which is how the PBX tells the
/// attackers apart. The port is one of the test's own (15000 + 10 x (N - 100) + k), clear of the load bench's.
pub fn sv_args(ip: Ipv4Addr, port: u16, extra: &[&str]) -> Vec<String> {
    let (ip, port) = (ip.to_string(), port.to_string());
    let mut v: Vec<String> = ["-b", &ip, "-x", &ip, "-P", &port].iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The k-th local port of test `h` for a tool.
pub fn tool_port(h: &Harness, k: u16) -> u16 {
    15_000 + 10 * (u16::from(h.n) - 100) + k
}

impl ToolRun {
    /// The data rows of the result table SIPVicious prints (`| 1003 | reqauth |`), header row left out.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let headers = ["Extension", "SIP Device"];
        self.output
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<String>>())
            .filter(|r| r.first().is_some_and(|c| !headers.contains(&c.as_str())))
            .collect()
    }

    /// The first column of every row (the extensions svwar found, the devices svmap found).
    pub fn found(&self) -> Vec<String> {
        self.rows().into_iter().filter_map(|r| r.into_iter().next()).collect()
    }

    pub fn describe(&self) -> String {
        let tail: Vec<&str> = self.output.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}: exit {:?} after {:.1} s\n{}", self.label, self.code, self.elapsed.as_secs_f64(), tail.join("\n"))
    }
}

// ------------------------------------------------------------------------------------------------ /metrics

/// One sample, 0 when the series does not exist (yet).
pub fn sample(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or(0.0)
}

/// The lines of the series an attack moves, for the report.
pub fn attack_series(text: &str) -> String {
    let names = [
        "sipfront_guard_",
        "sipfront_over_capacity_total",
        "sipfront_relay_refused_total",
        "sipfront_responses_dropped_total",
        "sipfront_forged_tokens_total",
        "sipfront_final_responses_total",
        "sipfront_transactions_active",
        "sipfront_backend_state_changes_total",
        "sipfront_no_backend_total",
        "sipfront_calls_total",
    ];
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.starts_with('#') && names.iter().any(|n| l.starts_with(n))).collect();
    lines.join("\n")
}

// ------------------------------------------------------------------------------------------------ memory

/// Resident memory of `pid` in KiB (VmRSS), 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's resident memory every `every` until dropped: the peak, and every sample for a report.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let samples: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (peak2, samples2, stop2) = (peak.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            // Bounded: a test never runs for ten minutes.
            while !stop2.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                let kib = rss_kib(pid);
                peak2.fetch_max(kib, Ordering::Relaxed);
                samples2.lock().expect("lock").push((t0.elapsed(), kib));
                std::thread::sleep(every);
            }
        });
        RssSampler { peak, samples, stop, thread: Some(thread) }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// One sample per `step` (the largest in each step), as "t=3s 45.2MB" pairs.
    pub fn profile(&self, step: Duration) -> String {
        let samples = self.samples.lock().expect("lock");
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (t, kib) in samples.iter() {
            let slot = (t.as_millis() / step.as_millis().max(1)) as u64;
            match out.last_mut() {
                Some((s, k)) if *s == slot => *k = (*k).max(*kib),
                _ => out.push((slot, *kib)),
            }
        }
        out.iter()
            .map(|(s, k)| format!("{:.0}s:{:.1}", (*s as u128 * step.as_millis()) as f64 / 1000.0, mib(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// KiB as MiB, for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

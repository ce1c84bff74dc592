//! What a finished SIPp run left behind ([`SippRun`]): its exit code, the "Successful call" / "Failed call"
//! totals of its final screen, its unexpected-message log and its message trace, read back from the files it
//! wrote.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use super::sip_text::{parse_sipp_trace, SipMsg, Traced};

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
    /// Read back what a SIPp that exited with `status` wrote: its screen (stdout) in `out`, its unexpected
    /// messages in `err`, its message trace in `msg` (`None` when tracing was off).
    pub fn collect(
        label: &str,
        status: ExitStatus,
        elapsed: Duration,
        out: &Path,
        err: &Path,
        msg: Option<&Path>,
    ) -> SippRun {
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        let stdout = read(out);
        SippRun {
            label: label.into(),
            code: status.code(),
            successful: screen_counter(&stdout, "Successful call"),
            failed: screen_counter(&stdout, "Failed call"),
            errors: read(err),
            trace: msg.map(|m| parse_sipp_trace(&read(m))).unwrap_or_default(),
            stdout,
            elapsed,
        }
    }

    /// Exit code, totals, the tail of the screen and the unexpected messages: what a failed assertion shows.
    pub fn describe(&self) -> String {
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

/// The last `n` lines of `s`.
pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last number on the last line of SIPp's screen that starts with `label` (the cumulative column).
pub fn screen_counter(screen: &str, label: &str) -> Option<u64> {
    screen
        .lines()
        .rfind(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').next_back())
        .and_then(|v| v.trim().parse().ok())
}

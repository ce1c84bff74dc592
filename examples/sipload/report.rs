//! What a run came to: per-call results folded into one JSON line (for scripts) and one line for people.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// INVITE answered 2xx, ACK sent, BYE answered 2xx.
    Ok,
    /// A non-2xx final response, a 2xx we could not use, or a send that failed (closed connection).
    Failed,
    /// A transaction got no final response within `--timeout-ms`.
    TimedOut,
}

pub struct CallResult {
    pub outcome: Outcome,
    /// INVITE sent to its 2xx received.
    pub setup: Option<Duration>,
    /// When the 2xx to the INVITE arrived, from the start of the run.
    pub ok_at: Option<Duration>,
    pub retransmissions: u32,
}

#[derive(Serialize)]
pub struct Summary {
    pub transport: &'static str,
    pub proxy: String,
    pub connections: usize,
    pub rate: f64,
    pub hold_ms: u64,
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Answered INVITEs per second, from the start of the run to the last 2xx.
    pub achieved_cps: f64,
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    pub retransmissions: u64,
    /// Inbound messages for no live call (e.g. 2xx retransmissions after the call ended).
    pub stray: u64,
    pub wall_s: f64,
}

impl Summary {
    /// `cut_off` calls were not started or were stopped by the hard deadline: they count as timed out.
    pub fn new(results: &[CallResult], cut_off: u64, base: Summary) -> Summary {
        let count = |o| results.iter().filter(|r| r.outcome == o).count() as u64;
        let mut setups: Vec<Duration> = results.iter().filter_map(|r| r.setup).collect();
        setups.sort_unstable();
        let pct = |p: f64| {
            if setups.is_empty() {
                return 0.0;
            }
            let i = ((setups.len() as f64 * p).ceil() as usize).clamp(1, setups.len()) - 1;
            (setups[i].as_secs_f64() * 1e5).round() / 100.0
        };
        let answered = results.iter().filter(|r| r.ok_at.is_some()).count() as f64;
        let last = results.iter().filter_map(|r| r.ok_at).max().unwrap_or_default().as_secs_f64();
        let achieved = if last > 0.0 { answered / last } else { 0.0 };
        Summary {
            attempted: results.len() as u64 + cut_off,
            succeeded: count(Outcome::Ok),
            failed: count(Outcome::Failed),
            timed_out: count(Outcome::TimedOut) + cut_off,
            achieved_cps: (achieved * 10.0).round() / 10.0,
            setup_p50_ms: pct(0.50),
            setup_p99_ms: pct(0.99),
            retransmissions: results.iter().map(|r| u64::from(r.retransmissions)).sum(),
            ..base
        }
    }

    pub fn human(&self) -> String {
        format!(
            "sipload {} -> {} ({} conn): {} calls at {}/s, hold {} ms: ok {} failed {} timed out {}; \
             achieved {}/s; INVITE->200 p50 {} ms p99 {} ms; {} retransmissions, {} stray, {:.1} s",
            self.transport,
            self.proxy,
            self.connections,
            self.attempted,
            self.rate,
            self.hold_ms,
            self.succeeded,
            self.failed,
            self.timed_out,
            self.achieved_cps,
            self.setup_p50_ms,
            self.setup_p99_ms,
            self.retransmissions,
            self.stray,
            self.wall_s
        )
    }
}

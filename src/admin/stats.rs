//! Calls per second on this node, for the dashboard's chart: the count of calls established here, sampled every
//! second, the difference kept for the last ten minutes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;

/// Samples kept: ten minutes at one per second.
pub const KEEP: usize = 600;

/// `(unix_ms, calls in that second)`, oldest first. A short `std` mutex section per sample or read.
#[derive(Debug, Default)]
pub struct Stats {
    samples: Mutex<VecDeque<(u64, f64)>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    pub fn push(&self, at_ms: u64, cps: f64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back((at_ms, cps));
    }

    pub fn samples(&self) -> Vec<(u64, f64)> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }
}

/// Every second, until `shutdown`.
pub async fn sample(proxy: Arc<Proxy>, stats: Arc<Stats>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = proxy.dialogs.calls_total();
    let mut last_at = tokio::time::Instant::now();
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = proxy.dialogs.calls_total();
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        stats.push(crate::cluster::event::unix_ms(), (now - last) as f64 / secs);
        (last, last_at) = (now, tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ten_minutes() {
        let s = Stats::new();
        for i in 0..(KEEP as u64 + 10) {
            s.push(i, i as f64);
        }
        let v = s.samples();
        assert_eq!(v.len(), KEEP);
        assert_eq!(v[0].0, 10);
    }
}

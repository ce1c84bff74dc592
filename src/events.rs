//! The node's recent failover events, for the admin API and the dashboard's timeline: VIP taken and given up,
//! leader changes, backends going up and down, the data volume held and released, switchovers. A bounded ring
//! (the last [`KEEP`]); each event is also counted (`sipfront_failover_events_total{kind}`) and, when it has a
//! duration, timed (`sipfront_failover_duration_seconds{kind}`). Every node records what it sees; the admin API
//! merges the nodes' rings (they travel in the cluster status) into one timeline.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// How many events a node keeps.
pub const KEEP: usize = 200;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The node that saw it.
    pub node: u32,
    /// `vip-acquired`, `vip-released`, `leader-changed`, `backend-up`, `backend-down`, `volume-held`,
    /// `volume-released`, `switchover`.
    pub kind: String,
    pub detail: String,
    /// How long the thing took, when that means something (the gap before a VIP was taken, a switchover).
    pub duration_ms: Option<u64>,
}

/// The ring. A short `std` mutex section per record or read; never held across an await.
#[derive(Debug)]
pub struct EventLog {
    node: u32,
    ring: Mutex<VecDeque<FailoverEvent>>,
}

impl EventLog {
    pub fn new(node: u32) -> EventLog {
        EventLog { node, ring: Mutex::new(VecDeque::with_capacity(KEEP)) }
    }

    pub fn record(&self, kind: &'static str, detail: impl Into<String>, duration: Option<Duration>) {
        metrics::counter!(m::FAILOVER_EVENTS, "kind" => kind).increment(1);
        if let Some(d) = duration {
            metrics::histogram!(m::FAILOVER_DURATION, "kind" => kind).record(d.as_secs_f64());
        }
        let ev = FailoverEvent {
            at_ms: crate::cluster::event::unix_ms(),
            node: self.node,
            kind: kind.into(),
            detail: detail.into(),
            duration_ms: duration.map(|d| d.as_millis() as u64),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(ev);
    }

    /// The last `n`, newest first.
    pub fn recent(&self, n: usize) -> Vec<FailoverEvent> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().take(n).cloned().collect()
    }
}

/// Several nodes' events as one timeline, newest first, without duplicates, at most `n`.
pub fn merge(mut all: Vec<FailoverEvent>, n: usize) -> Vec<FailoverEvent> {
    all.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(a.node.cmp(&b.node)).then(a.kind.cmp(&b.kind)));
    all.dedup();
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_newest_first() {
        let log = EventLog::new(2);
        for i in 0..KEEP + 5 {
            log.record("backend-down", format!("pbx{i}"), None);
        }
        let r = log.recent(3);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].detail, format!("pbx{}", KEEP + 4));
        assert_eq!(log.recent(usize::MAX).len(), KEEP);
        assert!(r.iter().all(|e| e.node == 2));
    }

    #[test]
    fn merge_orders_and_dedups() {
        let e = |at_ms, node| FailoverEvent {
            at_ms,
            node,
            kind: "vip-acquired".into(),
            detail: String::new(),
            duration_ms: None,
        };
        let merged = merge(vec![e(1, 1), e(3, 2), e(2, 1), e(3, 2)], 10);
        assert_eq!(merged.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(merge(vec![e(1, 1), e(2, 1)], 1).len(), 1);
    }
}

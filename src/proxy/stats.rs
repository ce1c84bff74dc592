//! Plain counters the proxy keeps beside the `metrics` facade, so tests and `status` can read them without an
//! exporter. Relaxed atomics: each is an independent tally.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub responses: AtomicU64,
    pub malformed_dropped: AtomicU64,
    pub malformed_rejected: AtomicU64,
    pub retransmissions_absorbed: AtomicU64,
    pub local_replies: AtomicU64,
    pub stray_responses: AtomicU64,
    pub stateless_responses: AtomicU64,
    pub unroutable_acks: AtomicU64,
    pub acks_absorbed: AtomicU64,
    pub backend_failovers: AtomicU64,
    pub transactions: AtomicU64,
    pub forged_tokens: AtomicU64,
    pub over_capacity: AtomicU64,
    /// Answered 503 at once: no backend up.
    pub no_backend: AtomicU64,
    /// Refused 482: a request that came back unchanged.
    pub loops: AtomicU64,
    /// Refused: the next hop is not one sipfront may send to.
    pub relay_refused: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub responses: u64,
    pub malformed_dropped: u64,
    pub malformed_rejected: u64,
    pub retransmissions_absorbed: u64,
    pub local_replies: u64,
    pub stray_responses: u64,
    pub stateless_responses: u64,
    pub unroutable_acks: u64,
    pub acks_absorbed: u64,
    pub backend_failovers: u64,
    pub transactions: u64,
    pub forged_tokens: u64,
    pub over_capacity: u64,
    pub no_backend: u64,
    pub loops: u64,
    pub relay_refused: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: g(&self.requests),
            responses: g(&self.responses),
            malformed_dropped: g(&self.malformed_dropped),
            malformed_rejected: g(&self.malformed_rejected),
            retransmissions_absorbed: g(&self.retransmissions_absorbed),
            local_replies: g(&self.local_replies),
            stray_responses: g(&self.stray_responses),
            stateless_responses: g(&self.stateless_responses),
            unroutable_acks: g(&self.unroutable_acks),
            acks_absorbed: g(&self.acks_absorbed),
            backend_failovers: g(&self.backend_failovers),
            transactions: g(&self.transactions),
            forged_tokens: g(&self.forged_tokens),
            over_capacity: g(&self.over_capacity),
            no_backend: g(&self.no_backend),
            loops: g(&self.loops),
            relay_refused: g(&self.relay_refused),
        }
    }
}

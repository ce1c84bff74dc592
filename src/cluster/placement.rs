//! The active role follows the active backend, when the config says where each PBX runs (`[[backend]] node`).
//! The PBX that takes new calls needs the data volume, and the volume goes with the active role; so when the
//! preferred healthy backend (the first one up, in priority order) runs on another node for [`SETTLE`], the
//! leader hands the role over to that node with a switchover (VIP, volume, then Raft leadership). Health states
//! already flip only after several probes in a row; the settle time keeps a flapping PBX from bouncing the role.

use std::time::Duration;

use tokio::time::Instant;

use super::Shared;

/// How long a preference must hold before the role moves.
pub const SETTLE: Duration = Duration::from_secs(2);
/// A handover that failed (the node did not take over) is asked for again after this long.
const RETRY: Duration = Duration::from_secs(10);

/// The node of the first backend that is up, in priority order, if that backend names one.
pub fn preferred_node(shared: &Shared) -> Option<u64> {
    let routing = &shared.proxy.routing;
    let up = (0..routing.backends().len()).find(|&i| shared.proxy.health.is_up(i))?;
    routing.backends()[up].node.map(u64::from)
}

/// What the leader's role loop remembers between ticks.
pub struct Placement {
    want: Option<u64>,
    since: Instant,
    asked_at: Option<Instant>,
}

impl Placement {
    pub fn new() -> Placement {
        Placement { want: None, since: Instant::now(), asked_at: None }
    }

    /// Called on every tick while node `me` serves, with the [`preferred_node`] of now: the node to hand
    /// over to now, if any.
    pub fn check(&mut self, want: Option<u64>, me: u64, now: Instant) -> Option<u64> {
        if want != self.want {
            (self.want, self.since, self.asked_at) = (want, now, None);
        }
        let to = want.filter(|n| *n != me)?;
        if now.duration_since(self.since) < SETTLE || self.asked_at.is_some_and(|t| now.duration_since(t) < RETRY) {
            return None;
        }
        self.asked_at = Some(now);
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_over_after_the_preference_settles_and_retries_late() {
        let mut p = Placement::new();
        let t0 = Instant::now();
        assert_eq!(p.check(Some(1), 1, t0), None, "the preferred backend runs here");
        assert_eq!(p.check(Some(2), 1, t0), None, "a new preference must settle first");
        assert_eq!(p.check(Some(2), 1, t0 + SETTLE / 2), None);
        assert_eq!(p.check(Some(2), 1, t0 + SETTLE), Some(2), "settled: hand over");
        assert_eq!(p.check(Some(2), 1, t0 + SETTLE * 2), None, "asked once; not again at once");
        assert_eq!(p.check(Some(2), 1, t0 + SETTLE + RETRY), Some(2), "asked again after RETRY");
        assert_eq!(p.check(None, 1, t0 + SETTLE * 20), None, "no backend up: stay");
        assert_eq!(p.check(Some(3), 1, t0 + SETTLE * 20), None, "flapped: settle again");
        assert_eq!(p.check(Some(2), 1, t0 + SETTLE * 21), None);
    }
}

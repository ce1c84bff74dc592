//! RFC 3261 §17 timer values, from the config, and the deadline helpers the transaction tasks share.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::TimerConfig;

/// Timer values. B, F, H, J, L and M are 64*T1; D, I, J and K are zero on reliable transports (§17.1.1.2).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub timer_c: Duration,
    pub timer_d: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers::from_config(&TimerConfig::default())
    }
}

impl Timers {
    pub fn from_config(c: &TimerConfig) -> Timers {
        Timers { t1: c.t1.get(), t2: c.t2.get(), t4: c.t4.get(), timer_c: c.timer_c.get(), timer_d: c.timer_d.get() }
    }

    /// 64*T1: timers B, F, H, J (unreliable), L, M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: how long a client INVITE transaction absorbs final-response retransmissions.
    pub fn d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.timer_d
        }
    }

    /// Timer I (server INVITE, after ACK) and K (client non-INVITE, after final): T4 on UDP.
    pub fn i_k(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: how long a server non-INVITE transaction answers retransmissions after its final response.
    pub fn j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64()
        }
    }
}

/// The earliest of several optional deadlines.
pub(crate) fn earliest(ds: &[Option<Instant>]) -> Option<Instant> {
    ds.iter().flatten().min().copied()
}

/// Sleep until a deadline, or forever when there is none.
pub(crate) async fn sleep_opt(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a deadline has passed.
pub(crate) fn due(d: Option<Instant>, now: Instant) -> bool {
    d.is_some_and(|d| d <= now)
}

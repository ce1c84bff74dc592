//! A token bucket: `rate` tokens a second, at most `burst` saved up, refilled from the time elapsed since it was
//! last touched (no timer per bucket). Pure arithmetic over a clock the caller passes in, in microseconds, so it is
//! tested without time passing and costs a few instructions per message.

/// A rate and a burst, shared by every bucket of one kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens added per microsecond.
    per_us: f64,
    burst: f64,
}

impl Limit {
    /// `rate` tokens a second, up to `burst` (both at least 1; the config checks).
    pub fn new(rate: u32, burst: u32) -> Limit {
        Limit { per_us: f64::from(rate.max(1)) / 1e6, burst: f64::from(burst.max(1)) }
    }

    /// Microseconds an empty bucket takes to fill up: after that long untouched, a bucket is as good as new.
    pub fn refill_us(&self) -> u64 {
        (self.burst / self.per_us).ceil() as u64
    }
}

/// One bucket: 16 bytes, no allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    stamp_us: u64,
}

impl TokenBucket {
    /// A bucket that starts full: a new source gets its whole burst.
    pub fn full(limit: &Limit, now_us: u64) -> TokenBucket {
        TokenBucket { tokens: limit.burst, stamp_us: now_us }
    }

    /// Refill for the time elapsed, then take one token if there is one.
    pub fn take(&mut self, limit: &Limit, now_us: u64) -> bool {
        // Another thread may have stamped a later `now` a moment ago: elapsed saturates at zero.
        let elapsed = now_us.saturating_sub(self.stamp_us);
        self.tokens = (self.tokens + elapsed as f64 * limit.per_us).min(limit.burst);
        self.stamp_us = self.stamp_us.max(now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens left (for tests and the admin view), without refilling.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limit::new(10, 30);
        let mut b = TokenBucket::full(&l, 0);
        assert_eq!((0..100).filter(|_| b.take(&l, 0)).count(), 30, "the burst, at once");
        assert!(!b.take(&l, 0));
        assert!(!b.take(&l, S / 20), "half a token after 50 ms");
        assert!(b.take(&l, S / 10), "one after 100 ms");
        // A second later: ten more, not eleven.
        let later = S / 10 + S;
        assert_eq!((0..100).filter(|_| b.take(&l, later)).count(), 10);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let l = Limit::new(100, 200);
        let mut b = TokenBucket::full(&l, 0);
        for _ in 0..200 {
            assert!(b.take(&l, 0));
        }
        assert_eq!(l.refill_us(), 2 * S);
        assert_eq!((0..1000).filter(|_| b.take(&l, 3600 * S)).count(), 200, "an hour idle saves only the burst");
    }

    #[test]
    fn a_clock_that_steps_back_never_mints_tokens() {
        let l = Limit::new(1, 1);
        let mut b = TokenBucket::full(&l, 10 * S);
        assert!(b.take(&l, 10 * S));
        assert!(!b.take(&l, 9 * S), "an earlier now (another thread's) adds nothing");
        assert!(!b.take(&l, 10 * S + S / 2));
        assert!(b.take(&l, 11 * S));
        assert!(b.tokens() < 1.0);
    }
}

//! [`VipSampler`]: who holds the VIP. A background thread enters each node's namespace in turn (`setns`), asks
//! `getifaddrs` whether the address is configured on any interface there, and every 20 ms records the set of
//! holders when it changed. The invariant the cluster must keep: never more than one holder.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::nsenter::{has_ipv4, NsHandle};
use super::topology::{Background, Lab, Ns};

/// Time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Most changes kept (a VIP flapping at every sample for 30 min); later ones are counted, not kept.
const MAX_CHANGES: usize = 100_000;

/// The holders seen from `at` on (until the next change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderChange {
    /// When the sample that first showed this set was taken.
    pub at: Instant,
    /// Node numbers (1..=3) with the address configured.
    pub holders: BTreeSet<u8>,
}

#[derive(Default)]
struct Timeline {
    changes: Vec<HolderChange>,
    dropped: u64,
    samples: u64,
    max_holders: usize,
    /// Why the thread stopped early (a namespace it could not enter or read).
    error: Option<String>,
}

/// A running sampler; see the module docs. It stops when the lab drops (or at [`VipSampler::stop`]).
pub struct VipSampler {
    pub addr: Ipv4Addr,
    t0: Instant,
    /// Shared with the sampling thread: one short lock per sample, one per query, so a std Mutex is enough.
    timeline: Arc<Mutex<Timeline>>,
    bg: Arc<Background>,
}

impl Lab {
    /// Sample who holds the VIP (10.201.T.100); returns once the first sample is in.
    pub fn vip_sampler(&mut self) -> VipSampler {
        let vip = self.vip();
        self.sampler_for(vip)
    }

    /// Sample who holds `addr` in the node namespaces; returns once the first sample is in.
    pub fn sampler_for(&mut self, addr: Ipv4Addr) -> VipSampler {
        let names: Vec<(u8, String)> = (1..=3).map(|i| (i, self.ns(Ns::Node(i)))).collect();
        let timeline: Arc<Mutex<Timeline>> = Arc::default();
        let bg = Arc::new(Background { stop: Default::default(), thread: Mutex::new(None) });
        let (tl, bg2) = (timeline.clone(), bg.clone());
        let thread = std::thread::spawn(move || {
            if let Err(e) = sample_loop(addr, &names, &tl, &bg2) {
                tl.lock().expect("timeline lock").error = Some(e.to_string());
            }
        });
        *bg.thread.lock().expect("background lock") = Some(thread);
        self.add_background(bg.clone());
        let sampler = VipSampler { addr, t0: self.t0, timeline, bg };
        super::poll_until("the VIP sampler's first sample", Duration::from_secs(5), || {
            let t = sampler.timeline.lock().expect("timeline lock");
            assert!(t.error.is_none(), "VIP sampler: {}", t.error.as_deref().unwrap_or(""));
            t.samples > 0
        });
        sampler
    }
}

fn sample_loop(
    addr: Ipv4Addr,
    names: &[(u8, String)],
    timeline: &Mutex<Timeline>,
    bg: &Background,
) -> std::io::Result<()> {
    // Opened once: the handles are dropped when this thread ends, before the lab deletes the namespaces.
    let handles: Vec<(u8, NsHandle)> =
        names.iter().map(|(i, n)| NsHandle::open(n).map(|h| (*i, h))).collect::<Result<_, _>>()?;
    let mut next = Instant::now();
    while !bg.stop.load(Ordering::Relaxed) {
        let mut holders = BTreeSet::new();
        for (i, h) in &handles {
            h.enter()?;
            // A dump that races an interface going away (the TUN device of a killed node) may fail; read
            // again rather than end the sampler.
            let mut tries = 0;
            let held = loop {
                match has_ipv4(addr) {
                    Ok(held) => break held,
                    Err(_) if tries < 5 => tries += 1,
                    Err(e) => return Err(e),
                }
            };
            if held {
                holders.insert(*i);
            }
        }
        let at = Instant::now();
        {
            let mut t = timeline.lock().expect("timeline lock");
            t.samples += 1;
            t.max_holders = t.max_holders.max(holders.len());
            if t.changes.last().map(|c| &c.holders) != Some(&holders) {
                if t.changes.len() < MAX_CHANGES {
                    t.changes.push(HolderChange { at, holders });
                } else {
                    t.dropped += 1;
                }
            }
        }
        next += SAMPLE_EVERY;
        let now = Instant::now();
        if next <= now {
            next = now; // fell behind (a loaded machine): sample again at once, do not burst to catch up
        } else {
            std::thread::sleep(next - now);
        }
    }
    Ok(())
}

impl VipSampler {
    /// The most nodes ever seen holding the address in one sample.
    pub fn max_holders(&self) -> usize {
        self.lock().max_holders
    }

    /// Every change so far, the first sample first.
    pub fn changes(&self) -> Vec<HolderChange> {
        self.lock().changes.clone()
    }

    /// The holders in the latest sample (panics if the sampler stopped on an error).
    pub fn holders(&self) -> BTreeSet<u8> {
        let t = self.lock();
        assert!(t.error.is_none(), "VIP sampler stopped: {}", t.error.as_deref().unwrap_or(""));
        t.changes.last().map(|c| c.holders.clone()).unwrap_or_default()
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.lock().samples
    }

    /// Panic, with the timeline, if two nodes were ever seen holding the address at once.
    pub fn assert_never_two(&self) {
        assert!(self.max_holders() <= 1, "two VIP holders at once:\n{}", self.timeline());
    }

    /// Wait until the holders are exactly `want` (node numbers); the instant of the sample that first showed
    /// it. Panics, with the timeline, after `within`.
    pub fn wait_holders(&self, want: &[u8], within: Duration) -> Instant {
        let want: BTreeSet<u8> = want.iter().copied().collect();
        let deadline = Instant::now() + within;
        loop {
            {
                let t = self.lock();
                if let Some(e) = &t.error {
                    panic!("VIP sampler stopped: {e}\n{}", self.describe(&t));
                }
                if let Some(c) = t.changes.last().filter(|c| c.holders == want) {
                    return c.at;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never held by exactly {want:?} within {within:?}:\n{}",
                    self.addr,
                    self.describe(&t)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until node `k` is the one and only holder.
    pub fn wait_sole_holder(&self, k: u8, within: Duration) -> Instant {
        self.wait_holders(&[k], within)
    }

    /// Wait until no node holds the address.
    pub fn wait_no_holder(&self, within: Duration) -> Instant {
        self.wait_holders(&[], within)
    }

    /// The changes as text, times relative to the lab's start: `+1.234 s  [2]`.
    pub fn timeline(&self) -> String {
        self.describe(&self.lock())
    }

    /// Stop sampling now (the timeline stays readable). The lab does it anyway when it drops.
    pub fn stop(&self) {
        self.bg.stop_and_join();
    }

    fn describe(&self, t: &Timeline) -> String {
        let mut s = format!(
            "{} samples of {}, at most {} holder(s) at once, {} change(s){}:\n",
            t.samples,
            self.addr,
            t.max_holders,
            t.changes.len(),
            if t.dropped > 0 { format!(" ({} more not kept)", t.dropped) } else { String::new() }
        );
        for c in &t.changes {
            let at = c.at.saturating_duration_since(self.t0).as_secs_f64();
            let _ = writeln!(s, "  +{at:.3} s  {:?}", c.holders);
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.timeline.lock().expect("timeline lock")
    }
}

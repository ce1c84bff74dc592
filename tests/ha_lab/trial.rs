//! One stack in its lab ([`Bench`]) and the trials run on it: a fault and its recovery, each an event measured
//! the same way whatever the stack ([`Bench::event`]).
//!
//! An event, with the fault at instant `t`:
//! ```text
//!   t-2.5 s  "held" caller: 20 calls at 10/s, each held 3 s, so all are up before t and end (BYE) after it
//!   t-1 s    "new" caller: 20 calls/s, held 0.2 s, until t+8 s
//!   t        the fault (or the recovery)
//!   t+8 s    the window ends; later only if no phone has been answered since t (or, after a recovery, in the
//!            last 0.5 s), until one is or 45 s have passed
//! ```
//! Measured: from `t` to the first 200 to an OPTIONS sent at or after `t` (the lab's [`Pinger`], every 20 ms);
//! the longest stretch without a 200 in the window; the time two nodes held the VIP at once and the most at
//! once ([`VipSampler`], every 20 ms); new calls that failed; held calls that could not end; the path the VIP
//! took. This file must not know what a fault does to a stack (`stack.rs` and its neighbours do).

use std::time::{Duration, Instant};

use crate::netns::{poll_until, HolderChange, Lab, Ns, Pinger, Uac, UacSpec, VipSampler};
use crate::stack::{Stack, StackKind};

/// The window after a fault or a recovery, unless service has not come back by then.
const WINDOW: Duration = Duration::from_secs(8);
/// The longest a window is stretched waiting for service to come back.
const MAX_WINDOW: Duration = Duration::from_secs(45);
const NEW_RATE: u64 = 20;
const NEW_HOLD: Duration = Duration::from_millis(200);
const HELD_CALLS: u64 = 20;
const HELD_RATE: u64 = 10;
const HELD_HOLD: Duration = Duration::from_secs(3);
/// A caller's own bound (SIPp `-timeout`): its calls plus retransmissions for a long outage.
const CALLER_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    KillHa,
    RestartHa,
    KillNode,
    RestartNode,
    Partition,
    Heal,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::KillHa => "kill -9 HA daemon",
            Fault::RestartHa => "HA daemon restarted",
            Fault::KillNode => "kill -9 node",
            Fault::RestartNode => "node rejoins",
            Fault::Partition => "partition",
            Fault::Heal => "heal",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Fault::KillHa => "killha",
            Fault::RestartHa => "restartha",
            Fault::KillNode => "killnode",
            Fault::RestartNode => "rejoin",
            Fault::Partition => "cut",
            Fault::Heal => "heal",
        }
    }

    /// The recovery that undoes a fault.
    pub fn recovery(self) -> Fault {
        match self {
            Fault::KillHa => Fault::RestartHa,
            Fault::KillNode => Fault::RestartNode,
            Fault::Partition => Fault::Heal,
            other => other,
        }
    }

    fn is_recovery(self) -> bool {
        matches!(self, Fault::RestartHa | Fault::RestartNode | Fault::Heal)
    }
}

/// What one event did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub fault: Fault,
    /// From the fault to the first 200 through the VIP; `None`: none within the (stretched) window.
    pub first_answer: Option<Duration>,
    pub max_gap: Duration,
    pub two_holders: Duration,
    pub most_holders: usize,
    pub new_calls: u64,
    pub new_failed: u64,
    pub held_calls: u64,
    pub held_unended: u64,
    /// The holders in the window, as a path: `X` the faulted node, `A`, `B` the others in order of appearance,
    /// `-` none; `X>X+A>A` is "two holders, then the new one alone".
    pub path: String,
    /// Anything odd: the stack not settled before the event.
    pub note: Option<String>,
}

/// A stack running in its own lab, with the prober and the VIP sampler. Fields drop in order: the stack (the
/// Pacemaker stack stops its cluster) before the lab.
pub struct Bench {
    pub stack: Box<dyn Stack>,
    pub vip: VipSampler,
    pub pinger: Pinger,
    pub lab: Lab,
}

impl Bench {
    /// The lab for `kind` with PBX 1, the stack started and serving on the VIP. `Ok(None)`: not root (the
    /// lab said why); `Err`: the stack cannot run here, and why.
    pub fn open(kind: StackKind, bound: Duration) -> Result<Option<Bench>, String> {
        let Some(mut lab) = Lab::new(kind.tag()) else { return Ok(None) };
        lab.set_process_bound(bound);
        lab.start_pbx(1, "uas_health.xml");
        let stack = kind.start(&mut lab)?;
        let vip = lab.vip_sampler();
        poll_until(&format!("{}: one VIP holder", stack.name()), Duration::from_secs(30), || vip.holders().len() == 1);
        let holder = *vip.holders().first().expect("one holder");
        // The pinger is the judge of readiness: a node's SIP server may take a moment after the VIP.
        let pinger = lab.pinger(lab.vip_sip());
        let bench = Bench { stack, vip, pinger, lab };
        let ready = bench.wait_serving(Duration::from_secs(30));
        assert!(
            ready,
            "{}: n{holder} holds the VIP but does not answer:\n{}",
            bench.stack.name(),
            bench.pinger.summary()
        );
        Ok(Some(bench))
    }

    /// The one VIP holder, waiting (up to `within`) for there to be exactly one.
    fn sole_holder(&self, within: Duration) -> Option<u8> {
        let deadline = Instant::now() + within;
        loop {
            let h = self.vip.holders();
            if h.len() == 1 {
                return h.first().copied();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every ping of the last second was answered, waiting up to `within` for it.
    fn wait_serving(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let now = Instant::now();
            // Pings younger than 100 ms may still be on their way back.
            let (from, to) = (now - Duration::from_millis(1100), now - Duration::from_millis(100));
            if self.pinger.ok_between(from, to) >= 45 {
                return true;
            }
            if now >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A fault on the current holder, then its recovery on the same node: two outcomes.
    pub fn trial(&mut self, fault: Fault, trial: usize) -> Vec<Outcome> {
        let settled = self.wait_serving(Duration::from_secs(30));
        let holder = self.sole_holder(Duration::from_secs(30));
        let note =
            (!settled || holder.is_none()).then(|| format!("not settled before: holders {:?}", self.vip.holders()));
        let node = holder.unwrap_or_else(|| *self.vip.holders().first().unwrap_or(&1));
        let mut hit = self.event(fault, node, trial);
        if hit.note.is_none() {
            hit.note = note;
        }
        let back = self.event(fault.recovery(), node, trial);
        vec![hit, back]
    }

    /// One event on `node`; see the module docs.
    fn event(&mut self, fault: Fault, node: u8, trial: usize) -> Outcome {
        let vip_sip = self.lab.vip_sip();
        let label = |what: &str| format!("{}-{trial}-{what}", fault.slug());
        let note = (fault.is_recovery() && !self.wait_serving(Duration::from_secs(10)))
            .then(|| "no service before the recovery".to_string());
        let caller = |what: &str, calls: u64, rate: u64, hold: Duration| {
            UacSpec::new(&label(what), vip_sip)
                .scenario("uac_failover.xml")
                .calls(calls)
                .rate(rate)
                .hold(hold)
                .timeout(CALLER_TIMEOUT)
                .trace(false)
        };
        let held = self.lab.start_uac(caller("held", HELD_CALLS, HELD_RATE, HELD_HOLD));
        std::thread::sleep(Duration::from_millis(1500));
        let new_calls = NEW_RATE * (1 + WINDOW.as_secs());
        let new = self.lab.start_uac(caller("new", new_calls, NEW_RATE, NEW_HOLD));
        std::thread::sleep(Duration::from_millis(1000));

        let t = Instant::now();
        match fault {
            Fault::KillHa => self.stack.kill_ha(&mut self.lab, node),
            Fault::RestartHa => self.stack.restart_ha(&mut self.lab, node),
            Fault::KillNode => self.stack.kill_node(&mut self.lab, node),
            Fault::RestartNode => self.stack.restart_node(&mut self.lab, node),
            Fault::Partition => self.lab.cut_link(Ns::Node(node)),
            Fault::Heal => self.lab.restore_link(Ns::Node(node)),
        }
        std::thread::sleep((t + WINDOW).saturating_duration_since(Instant::now()));
        while Instant::now() < t + MAX_WINDOW {
            let now = Instant::now();
            let answered = self.pinger.gap_after(t).is_some();
            let recent = self.pinger.ok_between(now - Duration::from_millis(600), now - Duration::from_millis(100)) > 0;
            if answered && (!fault.is_recovery() || recent) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let end = Instant::now();

        let (held_ok, new_ok) = (self.finish(held), self.finish(new));
        let (two_holders, most_holders) = two_holders(&self.vip.changes(), t, end);
        Outcome {
            fault,
            first_answer: self.pinger.gap_after(t).filter(|d| t + *d <= end),
            max_gap: self.pinger.longest_outage(t, end),
            two_holders,
            most_holders,
            new_calls,
            new_failed: new_calls.saturating_sub(new_ok),
            held_calls: HELD_CALLS,
            held_unended: HELD_CALLS.saturating_sub(held_ok),
            path: holder_path(&self.vip.changes(), node, t, end),
            note,
        }
    }

    /// Wait for a caller to finish; its successful calls.
    fn finish(&mut self, uac: Uac) -> u64 {
        self.lab.wait_uac(uac).successful.unwrap_or(0)
    }
}

/// The time in `[from, to)` with two or more holders, and the most holders seen in it.
pub fn two_holders(changes: &[HolderChange], from: Instant, to: Instant) -> (Duration, usize) {
    let (mut total, mut most) = (Duration::ZERO, 0);
    for (k, c) in changes.iter().enumerate() {
        let start = c.at.max(from);
        let stop = changes.get(k + 1).map_or(to, |n| n.at).min(to);
        if stop > start {
            most = most.max(c.holders.len());
            if c.holders.len() >= 2 {
                total += stop - start;
            }
        }
    }
    (total, most)
}

/// The holder sets in `[from, to)` as a path, the faulted node named `X` and the others `A`, `B` in order of
/// appearance (so that trials on different nodes read the same).
pub fn holder_path(changes: &[HolderChange], faulted: u8, from: Instant, to: Instant) -> String {
    let mut names: Vec<u8> = vec![faulted];
    let mut steps: Vec<String> = Vec::new();
    for (k, c) in changes.iter().enumerate() {
        let stop = changes.get(k + 1).map_or(to, |n| n.at).min(to);
        if stop <= c.at.max(from) {
            continue;
        }
        let mut set: Vec<String> = Vec::new();
        for h in &c.holders {
            if !names.contains(h) {
                names.push(*h);
            }
        }
        let mut ordered: Vec<usize> =
            c.holders.iter().map(|h| names.iter().position(|n| n == h).expect("named")).collect();
        ordered.sort();
        for i in ordered {
            set.push(["X", "A", "B"][i.min(2)].to_string());
        }
        let step = if set.is_empty() { "-".to_string() } else { set.join("+") };
        if steps.last() != Some(&step) {
            steps.push(step);
        }
    }
    steps.join(">")
}

//! Backend health: a per-backend state machine that flips only after N results in a row (no flapping), fed by
//! SIP OPTIONS probes ([`probe`]) and by failures the proxy sees on real traffic (timeouts, transport errors,
//! 503). Every flip is published as a [`HealthEvent`] that routing and the dialog table subscribe to; the current
//! state of each backend is also readable at once (routing reads it for every new call).
//!
//! This module decides *whether* a backend is alive; it never decides where a call goes.

pub mod probe;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::cluster::event::{Event, Journal};
use crate::config::HealthConfig;
use crate::metrics as m;

/// Up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Up,
    Down,
}

impl BackendState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
        }
    }
}

/// Published on every flip.
#[derive(Debug, Clone)]
pub struct HealthEvent {
    /// Index into the routing table's backends.
    pub backend: usize,
    pub state: BackendState,
    pub at: Instant,
}

/// The N-in-a-row rule for one backend.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: BackendState,
    oks: u32,
    fails: u32,
    down_after: u32,
    up_after: u32,
}

impl Tracker {
    /// A backend starts up: calls flow before the first probe answers.
    pub fn new(down_after: u32, up_after: u32) -> Tracker {
        Tracker { state: BackendState::Up, oks: 0, fails: 0, down_after, up_after }
    }

    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Take a state decided elsewhere (another node's probes); the runs start over.
    pub fn force(&mut self, state: BackendState) {
        self.state = state;
        self.oks = 0;
        self.fails = 0;
    }

    /// Record one result; the new state when this result flips it.
    pub fn observe(&mut self, ok: bool) -> Option<BackendState> {
        if ok {
            self.oks += 1;
            self.fails = 0;
            if self.state == BackendState::Down && self.oks >= self.up_after {
                self.state = BackendState::Up;
                return Some(BackendState::Up);
            }
        } else {
            self.fails += 1;
            self.oks = 0;
            if self.state == BackendState::Up && self.fails >= self.down_after {
                self.state = BackendState::Down;
                return Some(BackendState::Down);
            }
        }
        None
    }
}

/// What the admin surface shows of one backend.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub name: String,
    pub state: BackendState,
    /// Round trip of the last answered probe.
    pub last_rtt: Option<Duration>,
    /// When the state last flipped (`None`: never since start).
    pub last_change: Option<Instant>,
    /// Why the last failure counted (probe timeout, 503, transport error ...).
    pub last_failure: Option<String>,
}

struct Slot {
    name: String,
    /// The state, readable without a lock by every call; also awaited by transactions in flight.
    state: watch::Sender<BackendState>,
    /// Short sections only (one observation); never held across an await.
    inner: Mutex<SlotInner>,
    /// Maintenance: no new calls (set by the admin API, replicated).
    drained: std::sync::atomic::AtomicBool,
}

struct SlotInner {
    tracker: Tracker,
    last_rtt: Option<Duration>,
    last_change: Option<Instant>,
    last_failure: Option<String>,
}

/// Health of every backend.
pub struct Health {
    slots: Vec<Slot>,
    /// Probes in flight, answered through the proxy's response path.
    pub pending: probe::PendingProbes,
    events: broadcast::Sender<HealthEvent>,
    pub config: HealthConfig,
    /// Flips go to the cluster through it (disabled on a standalone node).
    journal: Journal,
}

impl Health {
    pub fn new(names: &[String], config: HealthConfig) -> Health {
        Health::with_journal(names, config, Journal::default())
    }

    pub fn with_journal(names: &[String], config: HealthConfig, journal: Journal) -> Health {
        let slots = names
            .iter()
            .map(|n| Slot {
                name: n.clone(),
                state: watch::Sender::new(BackendState::Up),
                inner: Mutex::new(SlotInner {
                    tracker: Tracker::new(config.down_after, config.up_after),
                    last_rtt: None,
                    last_change: None,
                    last_failure: None,
                }),
                drained: std::sync::atomic::AtomicBool::new(false),
            })
            .collect();
        Health { slots, pending: Default::default(), events: broadcast::channel(256).0, config, journal }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_up(&self, backend: usize) -> bool {
        self.slots.get(backend).is_none_or(|s| *s.state.borrow() == BackendState::Up)
    }

    /// Follow one backend's state (a transaction waiting on it gives up when it goes down).
    pub fn watch(&self, backend: usize) -> Option<watch::Receiver<BackendState>> {
        self.slots.get(backend).map(|s| s.state.subscribe())
    }

    /// Every flip from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.events.subscribe()
    }

    /// A probe answered in time with an accepted code.
    pub fn probe_ok(&self, backend: usize, rtt: Duration) {
        if let Some(slot) = self.slots.get(backend) {
            metrics::histogram!(m::PROBE_RTT, "backend" => slot.name.clone()).record(rtt.as_secs_f64());
        }
        self.observe(backend, true, Some(rtt), None);
    }

    /// Drain (`true`) a backend: it takes no new calls while another backend can, its dialogs go on; or
    /// undrain it. Whether that changed anything.
    pub fn set_drained(&self, backend: usize, on: bool) -> bool {
        let Some(slot) = self.slots.get(backend) else { return false };
        let was = slot.drained.swap(on, std::sync::atomic::Ordering::Relaxed);
        if was != on {
            metrics::gauge!(m::BACKEND_DRAINED, "backend" => slot.name.clone()).set(if on { 1.0 } else { 0.0 });
            tracing::info!(backend = %slot.name, drained = on, "backend drain changed");
        }
        was != on
    }

    pub fn is_drained(&self, backend: usize) -> bool {
        self.slots.get(backend).is_some_and(|s| s.drained.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A failure: a probe timeout or bad answer, or on real traffic a timeout, transport error or 503.
    pub fn failure(&self, backend: usize, why: &str) {
        self.observe(backend, false, None, Some(why));
    }

    fn observe(&self, backend: usize, ok: bool, rtt: Option<Duration>, why: Option<&str>) {
        let Some(slot) = self.slots.get(backend) else { return };
        let flipped = {
            let mut inner = slot.inner.lock().expect("health lock");
            if rtt.is_some() {
                inner.last_rtt = rtt;
            }
            if let Some(w) = why {
                if inner.last_failure.as_deref() != Some(w) {
                    inner.last_failure = Some(w.to_string());
                }
            }
            let flipped = inner.tracker.observe(ok);
            if flipped.is_some() {
                inner.last_change = Some(Instant::now());
            }
            flipped
        };
        let name = slot.name.clone();
        if let Some(state) = flipped {
            metrics::counter!(m::BACKEND_STATE_CHANGES, "backend" => name.clone(), "state" => state.as_str())
                .increment(1);
            metrics::gauge!(m::BACKEND_UP, "backend" => name).set(if state == BackendState::Up { 1.0 } else { 0.0 });
            tracing::info!(backend = %slot.name, state = %state.as_str(), reason = why.unwrap_or("probes answer"), "backend state changed");
            slot.state.send_replace(state);
            let _ = self.events.send(HealthEvent { backend, state, at: Instant::now() });
            if let Ok(index) = u16::try_from(backend) {
                self.journal.record(Event::Backend { index, up: state == BackendState::Up });
            }
        }
    }

    /// A state another node decided (replicated): taken as is, without an event (the dialogs' re-homing is
    /// replicated on its own).
    pub fn apply(&self, backend: usize, state: BackendState) {
        let Some(slot) = self.slots.get(backend) else { return };
        {
            let mut inner = slot.inner.lock().expect("health lock");
            if inner.tracker.state() == state {
                return;
            }
            inner.tracker.force(state);
            inner.last_change = Some(Instant::now());
        }
        metrics::gauge!(m::BACKEND_UP, "backend" => slot.name.clone()).set(if state == BackendState::Up {
            1.0
        } else {
            0.0
        });
        tracing::info!(backend = %slot.name, state = %state.as_str(), "backend state replicated");
        slot.state.send_replace(state);
    }

    /// Every backend's up/down, for a snapshot.
    pub fn export(&self) -> Vec<(u16, bool)> {
        (0..self.slots.len()).filter_map(|i| Some((u16::try_from(i).ok()?, self.is_up(i)))).collect()
    }

    /// The state of every backend, for the admin surface.
    pub fn snapshot(&self) -> Vec<BackendStatus> {
        self.slots
            .iter()
            .map(|s| {
                let i = s.inner.lock().expect("health lock");
                BackendStatus {
                    name: s.name.clone(),
                    state: i.tracker.state(),
                    last_rtt: i.last_rtt,
                    last_change: i.last_change,
                    last_failure: i.last_failure.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_n_in_a_row() {
        let mut t = Tracker::new(3, 2);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failure run");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(BackendState::Down));
        assert_eq!(t.observe(false), None, "no repeated event");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(BackendState::Up));
    }

    #[test]
    fn alternating_results_never_flip() {
        let mut t = Tracker::new(3, 2);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0), None);
        }
        assert_eq!(t.state(), BackendState::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn flips_are_published_and_visible() {
        let h = Health::new(&["a".into(), "b".into()], HealthConfig::default());
        let mut events = h.subscribe();
        let mut watch_b = h.watch(1).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        h.failure(1, "probe timeout");
        h.failure(1, "probe timeout");
        assert!(h.is_up(1));
        h.failure(1, "503");
        assert!(!h.is_up(1) && h.is_up(0));
        let e = events.try_recv().unwrap();
        assert_eq!((e.backend, e.state), (1, BackendState::Down));
        watch_b.changed().await.unwrap();
        assert_eq!(*watch_b.borrow(), BackendState::Down);
        let s = &h.snapshot()[1];
        assert_eq!((s.state, s.last_failure.as_deref()), (BackendState::Down, Some("503")));
        assert!(s.last_change.is_some());
        h.probe_ok(1, Duration::from_millis(3));
        h.probe_ok(1, Duration::from_millis(4));
        assert!(h.is_up(1));
        assert_eq!(h.snapshot()[1].last_rtt, Some(Duration::from_millis(4)));
    }
}

//! The dialog table: every INVITE dialog the proxy has seen form, keyed by [`DialogId`], with its state, its
//! *current* home backend, the client's flow, the route set, both CSeqs and its times. The proxy writes it from
//! transaction outcomes (1xx/2xx with a To tag, BYE answered, INVITE failed) and reads it to route in-dialog
//! requests; health events re-home the dialogs of a failed backend. Nothing here sends a message.
//!
//! A call that passes this proxy twice (a spiral through a record-routing PBX) has one entry per pass, its
//! [`Leg`]: each pass has its own phone side. [`DialogTable::leg_of`] finds the one a request belongs to.
//!
//! Memory matters (100k+ calls): times are seconds since the table was made (u32), the backend an index (u16),
//! and the route set one shared buffer.

mod id;
#[cfg(test)]
mod tests;

pub use id::{DialogId, Leg};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::cluster::event::{DialogRecord, Event, Journal};
use crate::metrics as m;
use crate::transport::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// A provisional response with a To tag arrived.
    Early,
    /// The INVITE was answered 2xx.
    Confirmed,
    /// A BYE is on its way; the entry goes when it is answered (or the reaper takes it).
    Terminated,
}

/// No backend (a call between two phones, or the PBX side unknown).
pub const NO_BACKEND: u16 = u16::MAX;

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub state: DialogState,
    /// The backend in-dialog requests go to now (index into the routing table), or [`NO_BACKEND`].
    pub home: u16,
    /// The phone's side: where its requests came from (or where the PBX's INVITE went).
    pub client: Option<Target>,
    /// The Record-Route values of the dialog-forming 2xx, as one buffer.
    pub route_set: Option<Bytes>,
    /// Highest CSeq seen from the caller and from the callee.
    pub caller_cseq: u32,
    pub callee_cseq: u32,
    /// The caller's address counted against `dialogs.max_per_source` (a call from a phone; `None` for a call from
    /// a backend).
    pub source: Option<std::net::IpAddr>,
    /// An ACK followed the 2xx (or the dialog came through replication, where that is not known).
    pub acked: bool,
    /// Seconds since the table's epoch.
    pub created: u32,
    pub confirmed: u32,
    pub last_activity: u32,
}

impl Dialog {
    pub fn home(&self) -> Option<usize> {
        (self.home != NO_BACKEND).then_some(usize::from(self.home))
    }
}

/// What the INVITE transaction knows when a dialog forms.
#[derive(Debug, Clone, Default)]
pub struct NewDialog {
    pub home: Option<usize>,
    pub client: Option<Target>,
    pub caller_cseq: u32,
}

/// The table. A DashMap because every transaction task and reading task uses it concurrently; entries are small
/// and no lock is held across an await.
#[derive(Debug)]
pub struct DialogTable {
    map: DashMap<DialogId, Dialog>,
    /// Dialogs per caller address (calls from phones only), for `dialogs.max_per_source`. An entry goes when its
    /// count drops to zero, so the map never outgrows the table.
    per_source: DashMap<std::net::IpAddr, u32>,
    /// Cheap count for the cap and the gauge; DashMap::len walks every shard.
    count: AtomicUsize,
    epoch: Instant,
    /// Confirmed dialogs' changes go to the cluster through it (disabled on a standalone node).
    journal: Journal,
    /// Calls established here since start.
    calls: std::sync::atomic::AtomicU64,
}

impl Default for DialogTable {
    fn default() -> Self {
        DialogTable::new()
    }
}

fn backend_u16(b: Option<usize>) -> u16 {
    b.and_then(|b| u16::try_from(b).ok()).filter(|b| *b != NO_BACKEND).unwrap_or(NO_BACKEND)
}

impl DialogTable {
    pub fn new() -> DialogTable {
        DialogTable::with_journal(Journal::default())
    }

    /// A table whose confirmed dialogs' changes are replicated through `journal`.
    pub fn with_journal(journal: Journal) -> DialogTable {
        DialogTable {
            map: DashMap::new(),
            per_source: DashMap::new(),
            count: AtomicUsize::new(0),
            epoch: Instant::now(),
            journal,
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Give back the capacity a past load left in the table (see [`crate::memory`]).
    pub fn shrink(&self) {
        crate::memory::shrink_sparse(&self.map);
        crate::memory::shrink_sparse(&self.per_source);
    }

    /// How many dialogs each backend is home to (index = backend), for the admin surface.
    pub fn count_by_home(&self, backends: usize) -> Vec<usize> {
        let mut n = vec![0; backends];
        for d in self.map.iter() {
            if let Some(c) = n.get_mut(usize::from(d.home)) {
                *c += 1;
            }
        }
        n
    }

    /// Calls established since start: confirmed here, or (on a standby) learnt through replication, so the
    /// number follows the cluster on every node. The `sipfront_calls_total` metric counts only the former.
    pub fn calls_total(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Count a call when its first leg is confirmed (a spiraled call has two).
    fn count_call_once(&self, id: &DialogId) {
        if !self.map.get(&id.twin()).is_some_and(|t| t.state != DialogState::Early) {
            self.count_call();
        }
    }

    fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::CALLS).increment(1);
    }

    pub fn get(&self, id: &DialogId) -> Option<Dialog> {
        self.map.get(id).map(|d| d.clone())
    }

    fn insert_if_new(&self, id: DialogId, d: Dialog) {
        let source = d.source;
        let mut added = false;
        self.map.entry(id).or_insert_with(|| {
            added = true;
            d
        });
        if added {
            self.count.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!(m::DIALOGS_ACTIVE).increment(1.0);
            self.count_source(source, 1);
        }
    }

    /// Dialogs held for calls from this address.
    pub fn count_from(&self, ip: std::net::IpAddr) -> usize {
        self.per_source.get(&ip).map_or(0, |n| *n as usize)
    }

    fn count_source(&self, ip: Option<std::net::IpAddr>, delta: i32) {
        let Some(ip) = ip else { return };
        if delta > 0 {
            *self.per_source.entry(ip).or_insert(0) += delta.unsigned_abs();
        } else {
            self.per_source.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(delta.unsigned_abs());
                *n == 0
            });
        }
    }

    fn fresh(&self, id: &DialogId, state: DialogState, n: &NewDialog) -> Dialog {
        let now = self.now();
        let source = if id.leg() == Leg::FromPhone { n.client.map(|c| c.addr.ip()) } else { None };
        Dialog {
            state,
            home: backend_u16(n.home),
            client: n.client,
            source,
            acked: false,
            route_set: None,
            caller_cseq: n.caller_cseq,
            callee_cseq: 0,
            created: now,
            confirmed: if state == DialogState::Confirmed { now } else { 0 },
            last_activity: now,
        }
    }

    /// A provisional response with a To tag: an early dialog.
    pub fn early(&self, id: DialogId, n: &NewDialog) {
        let d = self.fresh(&id, DialogState::Early, n);
        self.insert_if_new(id, d);
    }

    /// A 2xx to the INVITE: the dialog is confirmed (a re-INVITE's 2xx just refreshes it).
    pub fn confirm(&self, id: DialogId, n: &NewDialog, route_set: Option<Bytes>) {
        let now = self.now();
        if let Some(mut d) = self.map.get_mut(&id) {
            d.last_activity = now;
            if d.state == DialogState::Early {
                d.state = DialogState::Confirmed;
                d.confirmed = now;
                drop(d);
                self.count_call_once(&id);
                let Some(mut d) = self.map.get_mut(&id) else { return };
                d.route_set = route_set;
                if self.journal.enabled() {
                    self.journal.record(Event::DialogUp(record(&id, &d, now)));
                }
            }
            return;
        }
        let mut d = self.fresh(&id, DialogState::Confirmed, n);
        d.route_set = route_set;
        self.count_call_once(&id);
        if self.journal.enabled() {
            self.journal.record(Event::DialogUp(record(&id, &d, now)));
        }
        self.insert_if_new(id, d);
    }

    /// The entry an in-dialog request belongs to: the leg `hint` names (from our Record-Route token) when the
    /// table holds it, else the other leg when only that one is here (a call that passed once, a token-less
    /// request), else the hinted leg's key (for the caller to find missing).
    pub fn leg_of(&self, call_id: &[u8], tag_a: &[u8], tag_b: &[u8], hint: Leg) -> DialogId {
        let id = DialogId::for_leg(call_id, tag_a, tag_b, hint);
        if self.map.contains_key(&id) {
            return id;
        }
        let other = DialogId::for_leg(call_id, tag_a, tag_b, hint.other());
        if self.map.contains_key(&other) {
            other
        } else {
            id
        }
    }

    /// The dialog ended (its BYE answered): every leg of it goes.
    pub fn end(&self, call_id: &[u8], tag_a: &[u8], tag_b: &[u8]) {
        for leg in [Leg::FromPhone, Leg::FromPbx] {
            self.remove(&DialogId::for_leg(call_id, tag_a, tag_b, leg));
        }
    }

    /// An in-dialog request passed: note the time and its CSeq; a BYE marks the dialog terminated. Returns the
    /// dialog as it is now.
    pub fn touch(&self, id: &DialogId, from_caller: bool, cseq: u32, bye: bool) -> Option<Dialog> {
        let now = self.now();
        let mut d = self.map.get_mut(id)?;
        d.last_activity = now;
        if from_caller {
            d.caller_cseq = d.caller_cseq.max(cseq);
        } else {
            d.callee_cseq = d.callee_cseq.max(cseq);
        }
        if bye {
            d.state = DialogState::Terminated;
        }
        Some(d.clone())
    }

    /// The phone of a dialog with a PBX sent an in-dialog request over another connection than the one recorded
    /// (it reconnected, after a failover or through its NAT): requests toward it follow the new connection. Kept
    /// local, like every connection: the replicated record names no connection.
    pub fn follow_client(&self, id: &DialogId, now_at: Target) {
        if let Some(mut d) = self.map.get_mut(id) {
            let moved = d.client.is_some_and(|c| c.transport.is_reliable() && c.conn != now_at.conn);
            if d.home != NO_BACKEND && moved {
                d.client = Some(now_at);
            }
        }
    }

    /// The end-to-end ACK of a dialog's 2xx passed.
    pub fn acked(&self, id: &DialogId) {
        if let Some(mut d) = self.map.get_mut(id) {
            d.acked = true;
        }
    }

    /// Move one dialog to another backend (its home was found down on the request path).
    pub fn set_home(&self, id: &DialogId, backend: usize) {
        if let Some(mut d) = self.map.get_mut(id) {
            d.home = backend_u16(Some(backend));
            if d.state != DialogState::Early {
                self.journal.record(Event::DialogHome { id: id.0.clone(), home: d.home });
            }
        }
    }

    /// Move every dialog homed on `from` to `to`; returns how many moved.
    pub fn rehome(&self, from: usize, to: usize) -> usize {
        let (from, to) = (backend_u16(Some(from)), backend_u16(Some(to)));
        self.journal.record(Event::Rehome { from, to });
        self.rehome_quiet(from, to)
    }

    fn rehome_quiet(&self, from: u16, to: u16) -> usize {
        let mut moved = 0;
        for mut d in self.map.iter_mut() {
            if d.home == from {
                d.home = to;
                moved += 1;
            }
        }
        moved
    }

    /// How many dialogs live on a backend.
    pub fn count_on(&self, backend: usize) -> usize {
        let b = backend_u16(Some(backend));
        self.map.iter().filter(|d| d.home == b).count()
    }

    /// BYE answered, INVITE failed, or 481: the dialog is gone.
    pub fn remove(&self, id: &DialogId) -> Option<Dialog> {
        let d = self.remove_quiet(id);
        if d.as_ref().is_some_and(|d| d.state != DialogState::Early) {
            self.journal.record(Event::DialogGone { id: id.0.clone() });
        }
        d
    }

    fn remove_quiet(&self, id: &DialogId) -> Option<Dialog> {
        let d = self.map.remove(id).map(|(_, d)| d);
        if let Some(d) = &d {
            self.count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::DIALOGS_ACTIVE).decrement(1.0);
            self.count_source(d.source, -1);
        }
        d
    }

    fn retain(&self, mut keep: impl FnMut(&DialogId, &Dialog) -> bool) -> usize {
        let mut gone = 0;
        self.map.retain(|k, d| {
            let k = keep(k, d);
            if !k {
                gone += 1;
                self.count_source(d.source, -1);
            }
            k
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        metrics::gauge!(m::DIALOGS_ACTIVE).decrement(gone as f64);
        gone
    }

    /// Remove early dialogs of a Call-ID that never got confirmed (the INVITE failed).
    pub fn remove_early(&self, call_id: &[u8]) -> usize {
        self.retain(|k, d| !(d.state == DialogState::Early && k.call_id() == call_id))
    }

    /// The reaper: calls older than `max_call`, dialogs silent for `idle`, terminated ones whose BYE was never
    /// answered, and early ones that never got an answer (a branch abandoned on failover). Returns how many went.
    pub fn reap(&self, limits: &ReapLimits) -> usize {
        let now = self.now();
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let (max_call, idle) = (secs(limits.max_call), secs(limits.idle));
        let (terminated, early, unacked) = (secs(limits.terminated), secs(limits.early), secs(limits.unacked));
        self.retain(|id, d| {
            let age = now.saturating_sub(d.created);
            let quiet = now.saturating_sub(d.last_activity);
            let stale = match d.state {
                DialogState::Early => age >= early,
                DialogState::Confirmed => !d.acked && now.saturating_sub(d.confirmed) >= unacked,
                DialogState::Terminated => quiet >= terminated,
            };
            let keep = age < max_call && quiet < idle && !stale;
            if !keep && d.state != DialogState::Early {
                self.journal.record(Event::DialogGone { id: id.0.clone() });
            }
            keep
        })
    }

    /// Every dialog the cluster replicates (early ones are not: their INVITE transaction cannot move anyway).
    pub fn export(&self) -> Vec<DialogRecord> {
        let now = self.now();
        self.map.iter().filter(|d| d.state != DialogState::Early).map(|e| record(e.key(), e.value(), now)).collect()
    }

    /// Apply a replicated change from another node (nothing is journaled back).
    pub fn apply(&self, ev: &Event) {
        match ev {
            Event::DialogUp(r) => {
                let id = DialogId(r.id.clone());
                let d = self.dialog_of(r);
                if !r.terminated && !self.map.contains_key(&id) && !self.map.contains_key(&id.twin()) {
                    // Seen here through replication: counted for the dashboard, not in the metric (that is
                    // the serving node's).
                    self.calls.fetch_add(1, Ordering::Relaxed);
                }
                let source = d.source;
                match self.map.insert(id, d) {
                    None => {
                        self.count.fetch_add(1, Ordering::Relaxed);
                        metrics::gauge!(m::DIALOGS_ACTIVE).increment(1.0);
                    }
                    Some(old) => self.count_source(old.source, -1),
                }
                self.count_source(source, 1);
            }
            Event::DialogHome { id, home } => {
                if let Some(mut d) = self.map.get_mut(&DialogId(id.clone())) {
                    d.home = *home;
                }
            }
            Event::Rehome { from, to } => {
                self.rehome_quiet(*from, *to);
            }
            Event::DialogGone { id } => {
                self.remove_quiet(&DialogId(id.clone()));
            }
            _ => {}
        }
    }

    /// Replace the whole table with a snapshot's dialogs.
    pub fn replace_all(&self, records: &[DialogRecord]) {
        self.retain(|_, _| false);
        for r in records {
            self.apply(&Event::DialogUp(r.clone()));
        }
    }

    /// A node taking over: count every dialog as active from now, so the idle limit starts afresh (the last
    /// requests went through the old leader, which did not replicate each one).
    pub fn refresh_activity(&self) {
        let now = self.now();
        for mut d in self.map.iter_mut() {
            d.last_activity = d.last_activity.max(now);
        }
    }

    fn dialog_of(&self, r: &DialogRecord) -> Dialog {
        let now = self.now();
        let created = now.saturating_sub(r.age);
        let from_phone = DialogId(r.id.clone()).leg() == Leg::FromPhone;
        Dialog {
            state: if r.terminated { DialogState::Terminated } else { DialogState::Confirmed },
            home: r.home,
            client: r.client.map(Into::into),
            source: r.client.filter(|_| from_phone).map(|c| c.addr.ip()),
            acked: true,
            route_set: r.route_set.clone(),
            caller_cseq: r.caller_cseq,
            callee_cseq: r.callee_cseq,
            created,
            confirmed: created,
            last_activity: now.saturating_sub(r.quiet),
        }
    }
}

fn record(id: &DialogId, d: &Dialog, now: u32) -> DialogRecord {
    DialogRecord {
        id: id.0.clone(),
        terminated: d.state == DialogState::Terminated,
        home: d.home,
        client: d.client.map(Into::into),
        route_set: d.route_set.clone(),
        caller_cseq: d.caller_cseq,
        callee_cseq: d.callee_cseq,
        age: now.saturating_sub(d.created),
        quiet: now.saturating_sub(d.last_activity),
    }
}

/// How long the reaper lets each kind of dialog live.
#[derive(Debug, Clone, Copy)]
pub struct ReapLimits {
    /// Any dialog older than this (`dialogs.max_call_duration`).
    pub max_call: Duration,
    /// Any dialog without a request for this long (`dialogs.idle_timeout`).
    pub idle: Duration,
    /// A terminated dialog whose BYE got no answer (64*T1).
    pub terminated: Duration,
    /// An early dialog that was never confirmed (timer C plus 64*T1).
    pub early: Duration,
    /// A confirmed dialog whose 2xx was never ACKed (`dialogs.ack_timeout`).
    pub unacked: Duration,
}

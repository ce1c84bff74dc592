//! The dialog table: every INVITE dialog the proxy has seen form, keyed by [`DialogId`], with its state and the
//! backend it lives on. The proxy writes it from transaction outcomes (1xx/2xx with a To tag, BYE answered, INVITE
//! failed); nothing here sends a message. Replication and re-homing build on this table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::time::Instant;

use crate::metrics as m;

/// Call-ID plus both tags. The tags are stored in sorted order so a request from either side of the call finds
/// the same entry (the PBX's BYE has From and To swapped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId(Bytes);

impl DialogId {
    pub fn new(call_id: &[u8], tag_a: &[u8], tag_b: &[u8]) -> DialogId {
        let (lo, hi) = if tag_a <= tag_b { (tag_a, tag_b) } else { (tag_b, tag_a) };
        let mut b = BytesMut::with_capacity(call_id.len() + lo.len() + hi.len() + 2);
        b.put_slice(call_id);
        b.put_u8(0);
        b.put_slice(lo);
        b.put_u8(0);
        b.put_slice(hi);
        DialogId(b.freeze())
    }

    /// The Call-ID part.
    pub fn call_id(&self) -> &[u8] {
        self.0.split(|c| *c == 0).next().unwrap_or(b"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// A provisional response with a To tag arrived.
    Early,
    /// The INVITE was answered 2xx.
    Confirmed,
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub state: DialogState,
    /// Index into the routing table's backends, when the dialog goes to one.
    pub backend: Option<usize>,
    pub created: Instant,
    pub confirmed: Option<Instant>,
}

/// The table. A DashMap because every transaction task writes to it concurrently; entries are small and no
/// lock is held across an await.
#[derive(Debug, Default)]
pub struct DialogTable {
    map: DashMap<DialogId, Dialog>,
    /// Cheap count for the gauge; DashMap::len walks every shard.
    count: AtomicUsize,
}

impl DialogTable {
    pub fn new() -> DialogTable {
        DialogTable::default()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &DialogId) -> Option<Dialog> {
        self.map.get(id).map(|d| d.clone())
    }

    fn insert_if_new(&self, id: DialogId, d: Dialog) -> bool {
        let mut added = false;
        self.map.entry(id).or_insert_with(|| {
            added = true;
            d
        });
        if added {
            self.count.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!(m::DIALOGS_ACTIVE).increment(1.0);
        }
        added
    }

    /// A provisional response with a To tag: an early dialog.
    pub fn early(&self, id: DialogId, backend: Option<usize>) {
        self.insert_if_new(id, Dialog { state: DialogState::Early, backend, created: Instant::now(), confirmed: None });
    }

    /// A 2xx to the INVITE: the dialog is confirmed.
    pub fn confirm(&self, id: DialogId, backend: Option<usize>) {
        let now = Instant::now();
        if let Some(mut d) = self.map.get_mut(&id) {
            d.state = DialogState::Confirmed;
            d.confirmed.get_or_insert(now);
            return;
        }
        self.insert_if_new(id, Dialog { state: DialogState::Confirmed, backend, created: now, confirmed: Some(now) });
    }

    /// BYE answered, INVITE failed, or 481: the dialog is gone.
    pub fn remove(&self, id: &DialogId) -> Option<Dialog> {
        let d = self.map.remove(id).map(|(_, d)| d);
        if d.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::DIALOGS_ACTIVE).decrement(1.0);
        }
        d
    }

    /// Remove early dialogs of a Call-ID that never got confirmed (the INVITE failed).
    pub fn remove_early(&self, call_id: &[u8]) {
        let mut gone = 0;
        self.map.retain(|k, d| {
            let keep = !(d.state == DialogState::Early && k.call_id() == call_id);
            gone += usize::from(!keep);
            keep
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        metrics::gauge!(m::DIALOGS_ACTIVE).decrement(gone as f64);
    }

    /// Drop dialogs older than `max_age` (calls whose BYE we never saw); returns how many.
    pub fn reap(&self, max_age: Duration) -> usize {
        let now = Instant::now();
        let mut gone = 0;
        self.map.retain(|_, d| {
            let keep = now.duration_since(d.created) < max_age;
            gone += usize::from(!keep);
            keep
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        metrics::gauge!(m::DIALOGS_ACTIVE).decrement(gone as f64);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_side_finds_the_dialog() {
        let t = DialogTable::new();
        t.early(DialogId::new(b"c1", b"caller", b"callee"), Some(0));
        t.confirm(DialogId::new(b"c1", b"callee", b"caller"), Some(0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&DialogId::new(b"c1", b"caller", b"callee")).unwrap().state, DialogState::Confirmed);
        assert!(t.remove(&DialogId::new(b"c1", b"callee", b"caller")).is_some());
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reaper_and_failed_invite() {
        let t = DialogTable::new();
        t.early(DialogId::new(b"c1", b"a", b"b"), None);
        t.early(DialogId::new(b"c1", b"a", b"c"), None);
        t.confirm(DialogId::new(b"c2", b"a", b"b"), None);
        t.remove_early(b"c1");
        assert_eq!(t.len(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.reap(Duration::from_secs(11)), 0);
        assert_eq!(t.reap(Duration::from_secs(10)), 1);
        assert!(t.is_empty());
    }
}

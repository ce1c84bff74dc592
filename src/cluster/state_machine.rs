//! The replicated state machine: applies committed [`Batch`]es to the proxy's own tables (dialogs, flows,
//! backend health, bans), so a follower that becomes leader already routes every established call.
//!
//! A node skips the batches it proposed itself in this process (its tables already hold those changes; applying
//! them again later could undo a newer local change). A snapshot is the tables exported whole, encoded with
//! bincode and kept in `data_dir/snapshot`, so a restarted node starts from it and a lagging one catches up in
//! one transfer.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use super::event::{unix_ms, Batch, Event, Tables};
use super::log_store::replace_file;
use super::TypeConfig;
use crate::health::BackendState;
use crate::metrics as m;
use crate::proxy::Proxy;

type C = TypeConfig;

/// A snapshot as stored on disk and sent to a peer.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMetaOf<C>,
    pub data: Vec<u8>,
}

struct Applied {
    last: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    snapshot: Option<StoredSnapshot>,
}

/// The state machine handed to Raft; clones share everything.
#[derive(Clone)]
pub struct StateMachine {
    proxy: Arc<Proxy>,
    origin: u64,
    dir: PathBuf,
    applied: Arc<Mutex<Applied>>,
    /// Milliseconds from the proposal of the last batch applied here (another node's) to its apply.
    pub apply_lag_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachine {
    pub fn new(proxy: Arc<Proxy>, origin: u64, dir: PathBuf) -> io::Result<StateMachine> {
        let snapshot = match std::fs::read(dir.join("snapshot")) {
            Ok(b) => Some(
                bincode::deserialize::<StoredSnapshot>(&b)
                    .map_err(|e| io::Error::other(format!("snapshot file: {e}")))?,
            ),
            Err(_) => None,
        };
        let applied = Applied { last: None, membership: StoredMembershipOf::<C>::default(), snapshot };
        Ok(StateMachine {
            proxy,
            origin,
            dir,
            applied: Arc::new(Mutex::new(applied)),
            apply_lag_ms: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_event(&self, ev: &Event) {
        match ev {
            Event::DialogUp(_) | Event::DialogHome { .. } | Event::Rehome { .. } | Event::DialogGone { .. } => {
                self.proxy.dialogs.apply(ev)
            }
            Event::FlowUp(_) | Event::FlowGone { .. } => self.proxy.flows.apply(ev),
            Event::Backend { index, up } => {
                self.proxy.health.apply(usize::from(*index), if *up { BackendState::Up } else { BackendState::Down })
            }
            Event::Drain { index, drained } => {
                self.proxy.health.set_drained(usize::from(*index), *drained);
            }
            Event::Ban(_) | Event::Unban { .. } => self.proxy.guard.apply(ev),
        }
    }

    fn apply_batch(&self, b: &Batch) {
        if b.origin == self.origin {
            return;
        }
        for ev in &b.events {
            self.apply_event(ev);
        }
        metrics::counter!(m::CLUSTER_BATCHES, "side" => "applied").increment(1);
        metrics::counter!(m::CLUSTER_EVENTS, "side" => "applied").increment(b.events.len() as u64);
        let lag = unix_ms().saturating_sub(b.stamp_ms);
        self.apply_lag_ms.store(lag, std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!(m::CLUSTER_APPLY_LAG).record(lag as f64 / 1000.0);
    }

    fn install(&self, tables: &Tables) {
        self.proxy.dialogs.replace_all(&tables.dialogs);
        self.proxy.flows.replace_all(&tables.flows);
        for (i, up) in &tables.backends {
            self.proxy.health.apply(usize::from(*i), if *up { BackendState::Up } else { BackendState::Down });
        }
        self.proxy.guard.replace_bans(&tables.bans);
    }
}

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = Vec<u8>;

    /// The tables are exported here, on the cluster thread, between two applies (so the snapshot is exactly the
    /// state at `last`); encoding and writing them (tens of milliseconds for tens of thousands of dialogs) run on
    /// the blocking pool, so heartbeats go on meanwhile: a snapshot on the cluster thread held a leader's
    /// heartbeats back past the election timeout under load (8,000 calls/s, `scripts/bench-cluster.sh`).
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let started = std::time::Instant::now();
        let (last, membership) = {
            let g = self.lock();
            (g.last, g.membership.clone())
        };
        let tables = Tables {
            dialogs: self.proxy.dialogs.export(),
            flows: self.proxy.flows.export(),
            backends: self.proxy.health.export(),
            bans: self.proxy.guard.export_bans(),
        };
        let exported_ms = started.elapsed().as_millis() as u64;
        let (dialogs, flows) = (tables.dialogs.len(), tables.flows.len());
        let meta = SnapshotMetaOf::<C> { last_log_id: last, last_membership: membership };
        let dir = self.dir.clone();
        let stored_meta = meta.clone();
        let stored = tokio::task::spawn_blocking(move || -> io::Result<StoredSnapshot> {
            let data = bincode::serialize(&tables).map_err(io::Error::other)?;
            drop(tables);
            let stored = StoredSnapshot { meta: stored_meta, data };
            let file = bincode::serialize(&stored).map_err(io::Error::other)?;
            replace_file(&dir, "snapshot", &file)?;
            Ok(stored)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(
            dialogs,
            flows,
            bytes = stored.data.len(),
            exported_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let data = stored.data.clone();
        self.lock().snapshot = Some(stored);
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let g = self.lock();
        Ok((g.last, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            match &entry.payload {
                EntryPayload::Normal(batch) => self.apply_batch(batch),
                EntryPayload::Membership(mem) => {
                    self.lock().membership = StoredMembershipOf::<C>::new(Some(entry.log_id), mem.clone());
                }
                EntryPayload::Blank => {}
            }
            self.lock().last = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let tables = Tables::decode(&snapshot).map_err(|e| io::Error::other(format!("snapshot: {e}")))?;
        self.install(&tables);
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot };
        let file = bincode::serialize(&stored).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || replace_file(&dir, "snapshot", &file))
            .await
            .map_err(io::Error::other)??;
        let mut g = self.lock();
        g.last = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.snapshot = Some(stored);
        tracing::info!(dialogs = tables.dialogs.len(), flows = tables.flows.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        Ok(self.lock().snapshot.clone().map(|s| Snapshot { meta: s.meta, snapshot: s.data }))
    }
}

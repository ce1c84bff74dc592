//! The Raft log and vote, kept in memory and made durable in `data_dir`: `vote` is replaced atomically
//! (write, fsync, rename) before `save_vote` returns; the log is an append-only file of records (entries,
//! truncations, purges, the committed id) written and fsynced by one writer thread, which groups whatever
//! arrived meanwhile into one fsync. An append is readable at once and acknowledged to Raft when flushed, so the
//! data plane's thread never waits on a disk. When the file holds much more than the live log (after purges), the
//! writer rewrites it whole.
//!
//! On start the records are replayed; a torn last record (power cut mid-write) is ignored.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::TypeConfig;

type C = TypeConfig;

/// Purged entries freed at once between two yields (at 8,000 calls/s an entry is about 100 KB of table changes).
const DROP_AT_ONCE: u64 = 4;
/// Rewrite the log file when it holds this many more records than live entries.
const REWRITE_SLACK: u64 = 20_000;

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(EntryOf<C>),
    TruncateAfter(Option<LogIdOf<C>>),
    Purge(LogIdOf<C>),
    Committed(Option<LogIdOf<C>>),
}

#[derive(Default)]
struct Inner {
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    purged: Option<LogIdOf<C>>,
    log: BTreeMap<u64, EntryOf<C>>,
    /// Records in the file now.
    records: u64,
}

enum Op {
    /// Append these encoded records; fsync; then run the callback (Raft's flush notification).
    Append(Vec<u8>, Option<IOFlushed<C>>),
    /// Write these records, fsync, then answer.
    Sync(Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Replace the vote file.
    Vote(Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Replace the log file with these records.
    Rewrite(Vec<u8>, oneshot::Sender<io::Result<()>>),
}

/// The log store handed to Raft; clones share everything.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    writer: std::sync::mpsc::Sender<Op>,
}

fn encode(rec: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let body = bincode::serialize(rec).map_err(io::Error::other)?;
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl LogStore {
    /// Open (or create) the store under `dir` and start its writer thread.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir).map_err(|e| other(&format!("cannot create {}", dir.display()), e))?;
        let mut inner = Inner::default();
        if let Ok(b) = std::fs::read(dir.join("vote")) {
            inner.vote = Some(bincode::deserialize(&b).map_err(|e| other("vote file", e))?);
        }
        let log_path = dir.join("log");
        if let Ok(f) = File::open(&log_path) {
            let mut r = BufReader::new(f);
            loop {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                if r.read_exact(&mut body).is_err() {
                    tracing::warn!(file = %log_path.display(), "raft log ends in a torn record; ignored");
                    break;
                }
                let Ok(rec) = bincode::deserialize::<Record>(&body) else {
                    tracing::warn!(file = %log_path.display(), "raft log record undecodable; the rest is ignored");
                    break;
                };
                inner.records += 1;
                replay(&mut inner, rec);
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let dir2 = dir.to_path_buf();
        // The writer's flush acknowledges appends: it runs under the opener's (the cluster thread's) policy.
        let policy = super::sched::current();
        std::thread::Builder::new().name("raft-log".into()).spawn(move || {
            if let Err(e) = super::sched::apply(policy) {
                tracing::warn!(error = %e, "raft log writer: cannot take the cluster thread's scheduling policy");
            }
            writer(dir2, file, rx)
        })?;
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)), writer: tx })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(&self, op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Op) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(op(tx)).map_err(|_| io::Error::other("raft log writer stopped"))?;
        rx.await.map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    /// Rewrite the file when purges left it mostly dead.
    async fn maybe_rewrite(&self) -> io::Result<()> {
        let buf = {
            let mut g = self.lock();
            if g.records < g.log.len() as u64 + REWRITE_SLACK {
                return Ok(());
            }
            let mut buf = Vec::new();
            encode(&Record::Committed(g.committed), &mut buf)?;
            if let Some(p) = g.purged {
                encode(&Record::Purge(p), &mut buf)?;
            }
            for e in g.log.values() {
                encode(&Record::Entry(e.clone()), &mut buf)?;
            }
            g.records = g.log.len() as u64 + 2;
            buf
        };
        self.sync(|tx| Op::Rewrite(buf, tx)).await
    }
}

/// Drop purged entries [`DROP_AT_ONCE`] at a time, yielding to the cluster thread's other tasks in between.
async fn drop_gradually(mut dead: BTreeMap<u64, EntryOf<C>>) {
    while let Some((first, _)) = dead.first_key_value() {
        let rest = dead.split_off(&(first + DROP_AT_ONCE));
        drop(std::mem::replace(&mut dead, rest));
        tokio::task::yield_now().await;
    }
}

/// Drop the entries up to `upto` from the live log; they are returned for the caller to free.
fn purge_upto(inner: &mut Inner, upto: LogIdOf<C>) -> BTreeMap<u64, EntryOf<C>> {
    let live = inner.log.split_off(&(upto.index + 1));
    inner.purged = Some(upto);
    std::mem::replace(&mut inner.log, live)
}

fn replay(inner: &mut Inner, rec: Record) {
    match rec {
        Record::Entry(e) => {
            inner.log.insert(e.log_id.index, e);
        }
        Record::TruncateAfter(after) => {
            let from = after.map_or(0, |l| l.index + 1);
            inner.log.split_off(&from);
        }
        Record::Purge(upto) => drop(purge_upto(inner, upto)),
        Record::Committed(c) => inner.committed = c,
    }
}

fn writer(dir: PathBuf, mut file: File, rx: std::sync::mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(more) = rx.try_recv() {
            ops.push(more);
        }
        let mut result: io::Result<()> = Ok(());
        let mut dirty = false;
        let mut done: Vec<Box<dyn FnOnce(io::Result<()>) + Send>> = Vec::new();
        for op in ops {
            match op {
                Op::Append(buf, cb) => {
                    if result.is_ok() {
                        result = file.write_all(&buf);
                    }
                    dirty = true;
                    if let Some(cb) = cb {
                        done.push(Box::new(move |r| cb.io_completed(r)));
                    }
                }
                Op::Sync(buf, tx) => {
                    if result.is_ok() {
                        result = file.write_all(&buf);
                    }
                    dirty = true;
                    done.push(Box::new(move |r| {
                        let _ = tx.send(r);
                    }));
                }
                Op::Vote(buf, tx) => {
                    let r = replace_file(&dir, "vote", &buf);
                    let _ = tx.send(r);
                }
                Op::Rewrite(buf, tx) => {
                    let r = replace_file(&dir, "log", &buf).and_then(|()| {
                        file = OpenOptions::new().append(true).open(dir.join("log"))?;
                        Ok(())
                    });
                    let _ = tx.send(r);
                }
            }
        }
        if dirty && result.is_ok() {
            result = file.sync_data();
        }
        for cb in done {
            cb(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

/// Write `name` atomically: a temp file, fsync, rename, fsync the directory.
pub(super) fn replace_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        Ok(self.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let g = self.lock();
        let last = g.log.values().next_back().map(|e| e.log_id).or(g.purged);
        Ok(LogState { last_purged_log_id: g.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let buf = bincode::serialize(vote).map_err(io::Error::other)?;
        self.sync(|tx| Op::Vote(buf, tx)).await?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let mut buf = Vec::new();
        encode(&Record::Committed(committed), &mut buf)?;
        {
            let mut g = self.lock();
            g.committed = committed;
            g.records += 1;
        }
        // Not worth an fsync of its own: it rides on the next append's.
        self.writer.send(Op::Append(buf, None)).map_err(|_| io::Error::other("raft log writer stopped"))
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + Send,
        I::IntoIter: Send,
    {
        let mut buf = Vec::new();
        let mut n = 0;
        {
            let mut g = self.lock();
            for e in entries {
                encode(&Record::Entry(e.clone()), &mut buf)?;
                g.log.insert(e.log_id.index, e);
                n += 1;
            }
            g.records += n;
        }
        self.writer.send(Op::Append(buf, Some(callback))).map_err(|_| io::Error::other("raft log writer stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let mut buf = Vec::new();
        encode(&Record::TruncateAfter(last_log_id), &mut buf)?;
        {
            let mut g = self.lock();
            replay(&mut g, Record::TruncateAfter(last_log_id));
            g.records += 1;
        }
        self.sync(|tx| Op::Sync(buf, tx)).await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let mut buf = Vec::new();
        encode(&Record::Purge(log_id), &mut buf)?;
        let dead = {
            let mut g = self.lock();
            g.records += 1;
            purge_upto(&mut g, log_id)
        };
        // Hundreds of entries of hundreds of table changes each are a million frees, tens of milliseconds (4000
        // entries held a loaded leader's heartbeats back past the election timeout). Freed on another thread,
        // they contend for this thread's malloc arena; freed here a few at a time, heartbeats go out between.
        tokio::spawn(drop_gradually(dead));
        self.sync(|tx| Op::Sync(buf, tx)).await?;
        self.maybe_rewrite().await
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::type_config::alias::VoteOf;
    use openraft::{EntryPayload, LogId};

    use super::*;
    use crate::cluster::event::Batch;

    fn entry(term: u64, index: u64) -> EntryOf<C> {
        let batch = Batch { origin: 7, stamp_ms: index, events: Vec::new() };
        openraft::Entry {
            log_id: LogId { leader_id: LeaderId { term, node_id: 1 }, index },
            payload: EntryPayload::Normal(batch),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sipfront-logstore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Append, then wait until the writer thread has flushed it (it works in order).
    async fn append(s: &mut LogStore, entries: Vec<EntryOf<C>>) {
        s.append(entries, IOFlushed::noop()).await.unwrap();
        s.sync(|tx| Op::Sync(Vec::new(), tx)).await.unwrap();
    }

    #[tokio::test]
    async fn the_vote_and_log_survive_a_restart_with_truncation_and_purge_replayed() {
        let d = dir("replay");
        {
            let mut s = LogStore::open(&d).unwrap();
            let vote: VoteOf<C> = openraft::Vote::new(3, 2);
            s.save_vote(&vote).await.unwrap();
            append(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
            s.truncate_after(Some(entry(1, 7).log_id)).await.unwrap();
            append(&mut s, vec![entry(3, 8)]).await;
            s.purge(entry(1, 3).log_id).await.unwrap();
        }
        let mut s = LogStore::open(&d).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(openraft::Vote::new(3, 2)));
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id, Some(entry(3, 8).log_id));
        let got: Vec<u64> = s.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, vec![4, 5, 6, 7, 8], "purged head and truncated tail stay gone");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_ignored() {
        let d = dir("torn");
        {
            let mut s = LogStore::open(&d).unwrap();
            append(&mut s, (1..=3).map(|i| entry(1, i)).collect()).await;
        }
        let mut f = OpenOptions::new().append(true).open(d.join("log")).unwrap();
        f.write_all(&[0, 0, 1, 0, 1, 2, 3]).unwrap(); // a record header promising 256 bytes, then 3
        drop(f);
        let mut s = LogStore::open(&d).unwrap();
        assert_eq!(s.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(3));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_log_mostly_purged_is_rewritten_small() {
        let d = dir("rewrite");
        let mut s = LogStore::open(&d).unwrap();
        let n = REWRITE_SLACK + 100;
        append(&mut s, (1..=n).map(|i| entry(1, i)).collect()).await;
        let before = std::fs::metadata(d.join("log")).unwrap().len();
        s.purge(entry(1, n - 10).log_id).await.unwrap();
        let after = std::fs::metadata(d.join("log")).unwrap().len();
        assert!(after * 100 < before, "rewritten: {before} -> {after} bytes");
        drop(s);
        let mut s = LogStore::open(&d).unwrap();
        let got = s.try_get_log_entries(0..).await.unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(s.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index), Some(n - 10));
        let _ = std::fs::remove_dir_all(&d);
    }
}

//! One process per `cluster.data_dir`. Two nodes started on the same directory (one host, or a copied config)
//! would write the same Raft vote and log and silently break Raft's promises; so the directory is locked with
//! `flock` on `sipfront.lock` inside it for as long as the cluster runs, and the holder's pid is written into
//! the file so the one refused can name it.
//!
//! The lock goes with the open file: a crash, even `kill -9`, releases it, and no stale file ever blocks a start
//! (the file is never removed: removing it would let two processes lock two different files). The descriptor is
//! close-on-exec (std's default), so a hook's long-lived child cannot keep it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside `data_dir`.
pub const LOCK_FILE: &str = "sipfront.lock";

/// Why `data_dir` could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot use {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is in use by another sipfront process ({holder}, per {}): every node needs a data_dir of its own",
        dir.display(),
        file.display()
    )]
    Held { dir: PathBuf, file: PathBuf, holder: String },
}

/// Held while the cluster runs; dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Create `dir` if needed and lock it, or say which process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io { path, source: e });
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid not yet written".to_owned(),
            };
            return Err(LockError::Held { dir: dir.to_path_buf(), file: path, holder });
        }
        let write = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write(&mut file).map_err(io_err(&path))?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("sipfront-dirlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DirLock::acquire(&dir).expect("the first lock");
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock is per open file: a second open in this same process conflicts as another process would.
        let e = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("in use"), "{e}");
        drop(first);
        let again = DirLock::acquire(&dir).expect("released on drop");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

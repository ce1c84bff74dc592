//! Mounting and unmounting a block device, over the system calls (no `mount(8)`), reading the mount table, and
//! finding a block device: waiting for its node to appear, and on AWS Nitro the NVMe device behind an EBS volume
//! id. Owns no state: every function looks at the kernel afresh. Knows nothing of loop devices or images (that
//! is [`super::local`]) nor of when to mount (the cluster's decision).
//!
//! The mount table read is `/proc/thread-self/mountinfo`, the calling thread's mount namespace: the same as
//! `/proc/self/mountinfo` for sipfront, whose threads share one namespace, and right for a test thread that made
//! a private one. Blocking calls (mount, syncfs, umount) of the async functions run on a short-lived thread of
//! their own, which shares the caller's namespace, so a slow flush of a large volume never stalls the
//! (current-thread) runtime that carries SIP and Raft traffic.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::{sys, VolumeError};

/// How often [`unmount`] retries while the filesystem is busy.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// How often [`wait_for_block_device`] looks for the device.
const DEVICE_POLL: Duration = Duration::from_millis(50);
/// At most this many processes are named in a [`VolumeError::Busy`].
const MAX_HOLDERS: usize = 8;

/// What is mounted at a mount point (the topmost mount, if several are stacked there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mounted device as the kernel reports it (`/dev/loop3`, `/dev/nvme1n1`; `tmpfs` for a pseudo fs).
    pub source: PathBuf,
    /// `ext4`, `xfs`, ...
    pub fs_type: String,
    /// The filesystem's device number (`st_dev` of its files); for ext4 or xfs on a block device, that device's
    /// `st_rdev`.
    pub dev: u64,
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountEntry {
    pub mount_point: PathBuf,
    pub info: MountInfo,
}

/// What is mounted at `mount_point` in this mount namespace, if anything. A symlink in the path is resolved
/// first, as the kernel lists mount points resolved.
pub fn mounted_at(mount_point: &Path) -> io::Result<Option<MountInfo>> {
    let mount_point = resolve(mount_point);
    Ok(mount_table()?.into_iter().rev().find(|e| e.mount_point == mount_point).map(|e| e.info))
}

/// The whole mount table of the calling thread's mount namespace, in mount order.
pub(super) fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read("/proc/thread-self/mountinfo")?))
}

/// Parse `/proc/*/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`, i.e. id, parent id,
/// major:minor, root, mount point, options, optional fields ending with `-`, then type, source, super options.
/// Space, tab, newline and backslash in paths appear as `\040`, `\011`, `\012`, `\134`. Bad lines are skipped.
pub(super) fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    let parse_line = |line: &[u8]| -> Option<MountEntry> {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let (major, minor) = std::str::from_utf8(fields.get(2)?).ok()?.split_once(':')?;
        let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
        let mount_point = unescape(fields.get(4)?);
        let dash = 6 + fields.get(6..)?.iter().position(|f| *f == b"-")?;
        let fs_type = String::from_utf8_lossy(&unescape(fields.get(dash + 1)?)).into_owned();
        let source = PathBuf::from(OsStr::from_bytes(&unescape(fields.get(dash + 2)?)));
        let mount_point = PathBuf::from(OsStr::from_bytes(&mount_point));
        Some(MountEntry { mount_point, info: MountInfo { source, fs_type, dev } })
    };
    text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(parse_line).collect()
}

/// Undo the kernel's octal escapes (`\040` → space); anything else is kept as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Split `mount -o` style options into the generic `MS_*` flags and the filesystem's own options, which the
/// kernel takes as a string (`noatime,nodev,errors=remount-ro` → `MS_NOATIME | MS_NODEV`, `errors=remount-ro`).
pub(super) fn parse_options(options: &str) -> (libc::c_ulong, String) {
    const FLAGS: &[(&str, libc::c_ulong, bool)] = &[
        ("ro", libc::MS_RDONLY, true),
        ("rw", libc::MS_RDONLY, false),
        ("nosuid", libc::MS_NOSUID, true),
        ("suid", libc::MS_NOSUID, false),
        ("nodev", libc::MS_NODEV, true),
        ("dev", libc::MS_NODEV, false),
        ("noexec", libc::MS_NOEXEC, true),
        ("exec", libc::MS_NOEXEC, false),
        ("sync", libc::MS_SYNCHRONOUS, true),
        ("async", libc::MS_SYNCHRONOUS, false),
        ("dirsync", libc::MS_DIRSYNC, true),
        ("noatime", libc::MS_NOATIME, true),
        ("atime", libc::MS_NOATIME, false),
        ("nodiratime", libc::MS_NODIRATIME, true),
        ("diratime", libc::MS_NODIRATIME, false),
        ("relatime", libc::MS_RELATIME, true),
        ("norelatime", libc::MS_RELATIME, false),
        ("strictatime", libc::MS_STRICTATIME, true),
        ("lazytime", libc::MS_LAZYTIME, true),
        ("nolazytime", libc::MS_LAZYTIME, false),
    ];
    let mut flags = 0;
    let mut data = Vec::new();
    for option in options.split(',').map(str::trim).filter(|o| !o.is_empty() && *o != "defaults") {
        match FLAGS.iter().find(|(name, _, _)| *name == option) {
            Some((_, flag, true)) => flags |= flag,
            Some((_, flag, false)) => flags &= !flag,
            None => data.push(option),
        }
    }
    (flags, data.join(","))
}

/// The device number of the block device at `device` (after symlinks).
pub(super) fn block_device_number(device: &Path) -> Result<u64, VolumeError> {
    match fs::metadata(device) {
        Ok(m) if m.file_type().is_block_device() => Ok(m.rdev()),
        Ok(_) => Err(VolumeError::NotBlockDevice { device: device.to_owned(), image_allowed: false }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(VolumeError::DeviceMissing { device: device.to_owned(), waited: Duration::ZERO })
        }
        Err(source) => Err(VolumeError::Device { device: device.to_owned(), source }),
    }
}

/// Whether the mounted filesystem `info` is on the block device numbered `rdev`: by the filesystem's device
/// number, or (for filesystems like btrfs that report an anonymous one) by the listed source's `st_rdev`.
pub(super) fn is_on_device(info: &MountInfo, rdev: u64) -> bool {
    info.dev == rdev || fs::metadata(&info.source).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
}

/// Mount the block device `device` at `mount_point` (created if missing) with `mount -o` style `options`.
/// Idempotent: if this device is already mounted there, nothing happens; if something else is, that is
/// [`VolumeError::MountPointTaken`]. Blocking (the kernel may replay the journal): call it off the async runtime.
pub fn mount(device: &Path, mount_point: &Path, fs_type: &str, options: &str) -> Result<(), VolumeError> {
    let rdev = block_device_number(device)?;
    let mp_error = |source| VolumeError::MountPoint { mount_point: mount_point.to_owned(), source };
    fs::create_dir_all(mount_point).map_err(mp_error)?;
    match mounted_at(mount_point).map_err(VolumeError::MountTable)? {
        Some(info) if is_on_device(&info, rdev) => {
            tracing::debug!(device = %device.display(), mount_point = %mount_point.display(), "already mounted");
            return Ok(());
        }
        Some(info) => {
            let (mounted, fs_type) = (info.source, info.fs_type);
            return Err(VolumeError::MountPointTaken { mount_point: mount_point.to_owned(), mounted, fs_type });
        }
        None => {}
    }
    let (flags, data) = parse_options(options);
    sys::mount(Some(device), &resolve(mount_point), Some(fs_type), flags, Some(&data)).map_err(|source| {
        VolumeError::Mount { device: device.to_owned(), mount_point: mount_point.to_owned(), source }
    })?;
    tracing::info!(device = %device.display(), mount_point = %mount_point.display(), fs_type, options, "mounted");
    Ok(())
}

/// Unmount whatever is mounted at `mount_point` (the topmost mount): flush it (`syncfs`), then `umount2`. While
/// files on it are open the kernel says EBUSY; we retry every 100 ms until `within` has passed, then return
/// [`VolumeError::Busy`] naming the processes that hold it. Never detaches lazily on its own: whether to kill the
/// holders or call [`unmount_lazy`] is the caller's decision. Not mounted → `Ok`.
pub async fn unmount(mount_point: &Path, within: Duration) -> Result<(), VolumeError> {
    let started = Instant::now();
    let target = resolve(mount_point);
    if mounted_at(&target).map_err(VolumeError::MountTable)?.is_none() {
        return Ok(());
    }
    let unmount_error = |source| VolumeError::Unmount { mount_point: mount_point.to_owned(), source };
    let flush_target = target.clone();
    let flushed = off_runtime(move || File::open(&flush_target).and_then(|dir| sys::syncfs(&dir))).await;
    if let Err(e) = flushed.and_then(|r| r) {
        tracing::warn!(mount_point = %mount_point.display(), error = %e, "syncfs failed; umount will flush anyway");
    }
    loop {
        let attempt = target.clone();
        let result = off_runtime(move || sys::umount(&attempt, libc::UMOUNT_NOFOLLOW)).await.map_err(unmount_error)?;
        match result {
            Ok(()) => {
                tracing::info!(mount_point = %mount_point.display(), took = ?started.elapsed(), "unmounted");
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let waited = started.elapsed();
                if waited >= within {
                    let holders = off_runtime(move || holders(&target)).await.unwrap_or_default();
                    return Err(VolumeError::Busy { mount_point: mount_point.to_owned(), waited, holders });
                }
                tokio::time::sleep(BUSY_RETRY.min(within - waited)).await;
            }
            // Someone else unmounted it in the meantime.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && matches!(mounted_at(&target), Ok(None)) => {
                return Ok(());
            }
            Err(source) => return Err(unmount_error(source)),
        }
    }
}

/// Detach the mount at `mount_point` from the tree at once, even while busy (`umount -l`): the filesystem stays
/// alive, and keeps its device, until the last holder closes it. Only for a caller that decided so after
/// [`VolumeError::Busy`] (and knows nobody else will mount the device meanwhile). Not mounted → `Ok`.
pub fn unmount_lazy(mount_point: &Path) -> Result<(), VolumeError> {
    let target = resolve(mount_point);
    if mounted_at(&target).map_err(VolumeError::MountTable)?.is_none() {
        return Ok(());
    }
    sys::umount(&target, libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW)
        .map_err(|source| VolumeError::Unmount { mount_point: mount_point.to_owned(), source })?;
    tracing::warn!(mount_point = %mount_point.display(), "detached lazily; the filesystem lives on until released");
    Ok(())
}

/// Wait until `path` (typically a udev symlink like `/dev/disk/by-id/...`) exists and is a block device, looking
/// every 50 ms; its resolved path (`/dev/nvme1n1`). [`VolumeError::DeviceMissing`] after `within`.
pub async fn wait_for_block_device(path: &Path, within: Duration) -> Result<PathBuf, VolumeError> {
    let started = Instant::now();
    loop {
        match fs::canonicalize(path).and_then(|resolved| Ok((fs::metadata(&resolved)?, resolved))) {
            Ok((meta, resolved)) if meta.file_type().is_block_device() => return Ok(resolved),
            Ok(_) => return Err(VolumeError::NotBlockDevice { device: path.to_owned(), image_allowed: false }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(VolumeError::Device { device: path.to_owned(), source }),
        }
        let waited = started.elapsed();
        if waited >= within {
            return Err(VolumeError::DeviceMissing { device: path.to_owned(), waited });
        }
        tokio::time::sleep(DEVICE_POLL.min(within - waited)).await;
    }
}

/// On AWS Nitro instances an EBS volume appears as an NVMe device (`/dev/nvme1n1`) whatever device name it was
/// attached as; its controller's serial number is the volume id without the dash (`vol0123456789abcdef0`). The
/// device whose serial matches `volume_id` (`vol-0123456789abcdef0`, with or without the dash), if attached.
pub fn nvme_device_for_volume(volume_id: &str) -> Option<PathBuf> {
    nvme_device_in(Path::new("/sys"), volume_id)
}

/// [`nvme_device_for_volume`] over the sysfs tree at `sys_root` (a fake one in the tests).
pub(super) fn nvme_device_in(sys_root: &Path, volume_id: &str) -> Option<PathBuf> {
    let wanted = volume_id.trim().replace('-', "");
    let block = sys_root.join("block");
    let mut names: Vec<_> = fs::read_dir(&block).ok()?.flatten().map(|e| e.file_name()).collect();
    names.sort();
    names.into_iter().filter(|n| n.as_bytes().starts_with(b"nvme")).find_map(|name| {
        let serial = fs::read_to_string(block.join(&name).join("device/serial")).ok()?;
        serial.trim().eq_ignore_ascii_case(&wanted).then(|| Path::new("/dev").join(name))
    })
}

/// Run a blocking system call on a thread of its own and await its result. The thread inherits the calling
/// thread's namespaces (a tokio blocking-pool thread might not share a test's private mount namespace).
pub(super) async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("sipfront-volume".into()).spawn(move || {
        let _ = tx.send(f());
    })?;
    rx.await.map_err(|_| io::Error::other("the volume helper thread panicked"))
}

/// The processes with a working directory, root or open file under `mount_point`, as `PID (COMMAND)`, at most
/// [`MAX_HOLDERS`]. Best effort: processes that vanish or that we may not inspect are skipped.
fn holders(mount_point: &Path) -> Vec<String> {
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    let uses = |link: PathBuf| fs::read_link(link).is_ok_and(|target| target.starts_with(mount_point));
    let mut found = Vec::new();
    for pid in procs.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let dir = Path::new("/proc").join(pid.to_string());
        let fds = fs::read_dir(dir.join("fd")).into_iter().flatten().flatten().map(|e| e.path());
        if uses(dir.join("cwd")) || uses(dir.join("root")) || fds.into_iter().any(uses) {
            let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", comm.trim()));
            if found.len() == MAX_HOLDERS {
                break;
            }
        }
    }
    found
}

/// `path` with symlinks resolved, as the mount table lists it; unchanged if it does not exist.
fn resolve(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

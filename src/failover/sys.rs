//! The raw system calls of the failover module (mount, umount2, syncfs, the loop device ioctls, pipe2,
//! pidfd_open, kill), each wrapped once so that every `unsafe` block of the module lives in this file beside its
//! reason. Nothing here knows what a volume or a hook is; descriptors are handed out as [`OwnedFd`]s or [`File`]s,
//! so they are closed exactly once, on drop.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

// From <linux/loop.h>; the libc crate does not have them.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
pub(super) const LO_FLAGS_READ_ONLY: u32 = 1;
pub(super) const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from <linux/loop.h> (232 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    /// Flags (`LO_FLAGS_*`) and the name `losetup -l` shows (the image path, truncated to 63 bytes).
    pub(super) fn new(flags: u32, file_name: &Path) -> LoopInfo64 {
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = file_name.as_os_str().as_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        info
    }
}

/// `struct loop_config` from <linux/loop.h> (304 bytes), the argument of LOOP_CONFIGURE.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel copies these structs by size: a layout mistake must not compile.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232 && std::mem::size_of::<LoopConfig>() == 304);

/// Whether we run as root (the tests skip what needs it otherwise).
#[cfg(test)]
pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn c_str(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mount(2)`. `None` passes NULL (for propagation changes, which take no source, type or data).
pub(super) fn mount(
    source: Option<&Path>,
    target: &Path,
    fs_type: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    let fs_type = fs_type.map(c_str).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(c_str).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or points to a NUL-terminated string that outlives the call; `data` is a
    // string as the filesystems in question (ext4, xfs, ...) expect.
    check(unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fs_type), flags, ptr(&data).cast()) })
}

/// `umount2(2)`.
pub(super) fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// `syncfs(2)`: write out the filesystem `fd` is on.
pub(super) fn syncfs(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor the caller keeps open for the call.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// LOOP_CTL_GET_FREE on `/dev/loop-control`: the number of a free loop device (created if need be).
pub(super) fn loop_get_free(control: &File) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; the descriptor is open for the call.
    let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    u32::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Bind `backing` to the loop device `device` with `info`, in one step (LOOP_CONFIGURE, Linux 5.8) where the
/// kernel has it, else with LOOP_SET_FD then LOOP_SET_STATUS64 (undone if the second fails). EBUSY means another
/// process bound the device first. `legacy` forces the two-step path (for its test).
pub(super) fn loop_attach(device: &File, backing: &File, info: &LoopInfo64, legacy: bool) -> io::Result<()> {
    if !legacy {
        let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let config = LoopConfig { fd, block_size: 0, info: *info, reserved: [0; 8] };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is (same layout), borrowed for the
        // whole call; the descriptor inside it is open (we borrow `backing`).
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config as *const LoopConfig) };
        match check(rc) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {} // older kernel
            other => return other,
        }
    }
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as an integer argument; it is open for the call.
    check(unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd() as libc::c_ulong) })?;
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, which `info` is, borrowed for the whole call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64 as _, info as *const LoopInfo64) };
    if let Err(e) = check(rc) {
        let _ = loop_detach(device);
        return Err(e);
    }
    Ok(())
}

/// LOOP_CLR_FD: unbind the loop device (at once if nobody else has it open, else when the last opener closes).
pub(super) fn loop_detach(device: &File) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the descriptor is open for the call.
    check(unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD as _, 0) })
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid, writable array of two ints for the call.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Put a descriptor in non-blocking mode (for the read end of a hook's output pipe, polled by tokio).
pub(super) fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL take no pointers; the descriptor is open for both calls.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        check(flags)?;
        check(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when the process exits (Linux 5.3). The caller must not
/// have reaped `pid` yet, so the number cannot have been reused.
pub(super) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags, no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    check(fd)?;
    // SAFETY: the call succeeded, so `fd` is an open descriptor that nothing else owns (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Register `fd` with tokio's reactor for readability (a pidfd, or the read end of a pipe), as a [`File`] so that
/// it can be read through `&File`. Must be called on a tokio runtime.
pub(super) fn async_readable(fd: OwnedFd) -> io::Result<AsyncFd<File>> {
    // SAFETY: the `File` owns the descriptor, which stays open and the same until the `AsyncFd` (its only owner,
    // never handing out `&mut File`s here) drops it.
    Ok(unsafe { AsyncFd::register_with_interest(File::from(fd), Interest::READABLE) }?)
}

/// `kill(-pgid, signal)`: signal every process of a process group.
pub(super) fn kill_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH)); // never kill(0) or kill(-1)
    }
    // SAFETY: plain system call with integer arguments.
    check(unsafe { libc::kill(-pgid, signal) })
}

/// Give the calling thread a mount namespace of its own in which nothing propagates to the host: the tests mount
/// there, and the mounts die with the thread. Threads it spawns afterwards share the namespace.
#[cfg(test)]
pub(super) fn private_mount_namespace() -> io::Result<()> {
    // SAFETY: plain system call with an integer argument; CLONE_NEWNS (with the implied CLONE_FS) only affects the
    // calling thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
}

//! The PBX data volume in `mode = "local"`: a block device or an image file, mounted only on the active node.
//! This module owns attaching an image to a loop device, mounting the volume at its mount point, unmounting it,
//! and cleaning up leftovers at start-up. It never formats, checks or resizes the filesystem, never kills the
//! processes that keep it busy, and never decides when to mount (the cluster's decision).
//!
//! # Images and loop devices
//! An image file is attached to a free loop device through `/dev/loop-control` with `LO_FLAGS_AUTOCLEAR`, in
//! one step (LOOP_CONFIGURE) where the kernel has it. We close our descriptor of the loop device once the
//! filesystem is mounted, so the mount is its only user: unmounting it detaches the loop device, and so does the
//! death of the mount namespace holding the mount (when sipfront runs in a private mount namespace and all its
//! processes die). Our volume is recognised by the loop device's backing file
//! (`/sys/dev/block/7:N/loop/backing_file`), so a mount left by an earlier run of sipfront is adopted by
//! [`LocalVolume::acquire`] and removed by [`LocalVolume::release_if_mounted`].
//!
//! # Namespaces
//! A PBX must see the mount, so it must share sipfront's mount namespace: run both in the host's (the usual
//! case; the mount then outlives a crashed sipfront, which is why a follower calls `release_if_mounted` at
//! start-up), or start the PBX from the `on_acquire` hook if sipfront runs with systemd's `PrivateMounts=`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::mount::{self, MountInfo};
use super::sys::{self, LoopInfo64, LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY};
use super::VolumeError;

/// How often we try to bind a free loop device that another process takes first.
const ATTACH_ATTEMPTS: usize = 8;

/// What [`LocalVolume`] manages, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVolumeSpec {
    /// A block device (`/dev/sdb`, `/dev/disk/by-id/...`) or a regular file holding a filesystem image.
    pub device: PathBuf,
    /// Where the PBX expects its data; created if missing.
    pub mount_point: PathBuf,
    /// `ext4`, `xfs`, ...
    pub fs_type: String,
    /// `mount -o` style: `noatime,nodev` and the filesystem's own (`errors=remount-ro`); `ro` also makes the
    /// loop device read-only.
    pub options: String,
    /// How long [`LocalVolume::release`] retries while the volume is busy.
    pub unmount_timeout: Duration,
}

/// The data volume on this node. Dropping it changes nothing: the filesystem stays mounted until `release`.
#[derive(Debug)]
pub struct LocalVolume {
    spec: LocalVolumeSpec,
    /// Some exactly while we know the volume to be mounted at the mount point (by us, or found there).
    held: Option<Held>,
    /// Attach loop devices with LOOP_SET_FD + LOOP_SET_STATUS64 even where LOOP_CONFIGURE exists (its test).
    legacy_loop_setup: bool,
}

#[derive(Debug, Clone)]
struct Held {
    /// The mounted block device: the configured one, or the loop device carrying the image.
    device: PathBuf,
    /// The image, when `device` is its loop device.
    image: Option<PathBuf>,
    since: Instant,
}

/// What the configured `device` is, looked at afresh on every call (it may come and go).
enum Backing {
    Block {
        device: PathBuf,
        rdev: u64,
    },
    /// Canonical path.
    Image(PathBuf),
    /// Nothing at that path (now): only a mount still listing it can be recognised.
    Gone(PathBuf),
}

/// A loop device bound to some file.
struct LoopDevice {
    path: PathBuf,
    dev: u64,
    autoclear: bool,
}

impl LocalVolume {
    /// Changes nothing; the device need not exist yet.
    pub fn new(spec: LocalVolumeSpec) -> LocalVolume {
        LocalVolume { spec, held: None, legacy_loop_setup: false }
    }

    /// Mount the volume at the mount point, attaching the image to a loop device first if `device` is a file.
    /// Idempotent: if our volume is already mounted there (by this value, or left by an earlier run), nothing
    /// changes. Fails if something else is mounted there, or if the image is mounted through another loop
    /// device. On error nothing is left behind (a loop device we attached detaches with our descriptor).
    pub async fn acquire(&mut self) -> Result<(), VolumeError> {
        let started = Instant::now();
        let (spec, legacy) = (self.spec.clone(), self.legacy_loop_setup);
        let (held, fresh) = mount::off_runtime(move || attach_and_mount(&spec, legacy))
            .await
            .map_err(|source| self.mount_error(source))??;
        let (device, mount_point) = (held.device.display().to_string(), self.spec.mount_point.display().to_string());
        match (fresh, self.held.is_some()) {
            (true, true) => tracing::warn!(%device, %mount_point, "volume had been unmounted; mounted it again"),
            (true, false) => tracing::info!(%device, %mount_point, took = ?started.elapsed(), "volume acquired"),
            (false, false) => tracing::warn!(%device, %mount_point, "volume was already mounted; adopted it"),
            (false, true) => return Ok(()),
        }
        self.held = Some(held);
        Ok(())
    }

    /// Unmount the volume (which also detaches its loop device), waiting up to `unmount_timeout` while it is
    /// busy, then [`VolumeError::Busy`]; it stays mounted then and [`mounted`](Self::mounted) stays true.
    /// Idempotent. A filesystem at the mount point that is not our volume is left alone (with a warning).
    pub async fn release(&mut self) -> Result<(), VolumeError> {
        let started = Instant::now();
        let backing = backing(&self.spec.device)?;
        let current = mount::mounted_at(&self.spec.mount_point).map_err(VolumeError::MountTable)?;
        let mount_point = self.spec.mount_point.display().to_string();
        match current {
            Some(info) if is_ours(&backing, &info) => {
                mount::unmount(&self.spec.mount_point, self.spec.unmount_timeout).await?;
                let held_for = self.held.take().map(|h| h.since.elapsed());
                if let Backing::Image(image) = &backing {
                    detach_leftover_loops(image);
                }
                tracing::info!(%mount_point, took = ?started.elapsed(), ?held_for, "volume released");
            }
            Some(info) => {
                let mounted = info.source.display().to_string();
                tracing::warn!(%mount_point, %mounted, "not our volume at the mount point; left alone");
                self.held = None;
            }
            None if self.held.take().is_some() => tracing::warn!(%mount_point, "volume had already been unmounted"),
            None => {}
        }
        Ok(())
    }

    /// For a follower at start-up: unmount every mount of our volume in this mount namespace, at the mount point
    /// or elsewhere (left by a crashed run, or by hand), and detach loop devices still bound to our image that
    /// nothing mounts. Whether anything was found.
    pub async fn release_if_mounted(&mut self) -> Result<bool, VolumeError> {
        let backing = backing(&self.spec.device)?;
        let table = mount::mount_table().map_err(VolumeError::MountTable)?;
        let mut found = false;
        for entry in table.iter().rev().filter(|e| is_ours(&backing, &e.info)) {
            // Stacked mounts: unmount only while ours is the one on top.
            let top = mount::mounted_at(&entry.mount_point).map_err(VolumeError::MountTable)?;
            if !top.is_some_and(|info| is_ours(&backing, &info)) {
                tracing::warn!(mount_point = %entry.mount_point.display(), "our volume is mounted under another mount");
                continue;
            }
            let (device, mount_point) = (entry.info.source.display(), entry.mount_point.display());
            tracing::warn!(%device, %mount_point, "unmounting a leftover mount of the volume");
            mount::unmount(&entry.mount_point, self.spec.unmount_timeout).await?;
            found = true;
        }
        if let Backing::Image(image) = &backing {
            found |= detach_leftover_loops(image) > 0;
        }
        self.held = None;
        Ok(found)
    }

    /// We hold the volume: acquired, and not released since (as far as we know; the kernel is not asked).
    pub fn mounted(&self) -> bool {
        self.held.is_some()
    }

    /// For status output: `mounted /dev/loop3 (image /x.img) at /mnt/pbx`, `mounted /dev/sdb at /mnt/pbx`, or
    /// `not mounted (/x.img for /mnt/pbx)`.
    pub fn describe(&self) -> String {
        let mount_point = self.spec.mount_point.display();
        match &self.held {
            Some(Held { device, image: Some(image), .. }) => {
                format!("mounted {} (image {}) at {mount_point}", device.display(), image.display())
            }
            Some(Held { device, image: None, .. }) => format!("mounted {} at {mount_point}", device.display()),
            None => format!("not mounted ({} for {mount_point})", self.spec.device.display()),
        }
    }

    #[cfg(test)]
    pub(super) fn use_legacy_loop_setup(&mut self) {
        self.legacy_loop_setup = true;
    }

    fn mount_error(&self, source: io::Error) -> VolumeError {
        VolumeError::Mount { device: self.spec.device.clone(), mount_point: self.spec.mount_point.clone(), source }
    }
}

/// The blocking part of [`LocalVolume::acquire`]: the held volume, and whether we mounted it just now.
fn attach_and_mount(spec: &LocalVolumeSpec, legacy: bool) -> Result<(Held, bool), VolumeError> {
    let backing = backing(&spec.device)?;
    let image = match &backing {
        Backing::Image(image) => Some(image.clone()),
        _ => None,
    };
    let held = |device: PathBuf| Held { device, image: image.clone(), since: Instant::now() };
    match mount::mounted_at(&spec.mount_point).map_err(VolumeError::MountTable)? {
        Some(info) if is_ours(&backing, &info) => return Ok((held(info.source), false)),
        Some(info) => {
            let (mount_point, mounted, fs_type) = (spec.mount_point.clone(), info.source, info.fs_type);
            return Err(VolumeError::MountPointTaken { mount_point, mounted, fs_type });
        }
        None => {}
    }
    let (mount_point, fs_type, options) = (&spec.mount_point, &spec.fs_type, &spec.options);
    match backing {
        Backing::Gone(device) => Err(VolumeError::DeviceMissing { device, waited: Duration::ZERO }),
        Backing::Block { device, .. } => {
            mount::mount(&device, mount_point, fs_type, options)?;
            Ok((held(device), true))
        }
        Backing::Image(image) => {
            refuse_if_mounted_elsewhere(&image)?;
            let read_only = options.split(',').any(|o| o.trim() == "ro");
            let (loop_path, loop_device) = attach_loop(&image, read_only, legacy)?;
            // On error `loop_device` closes here and the kernel detaches it (autoclear).
            mount::mount(&loop_path, mount_point, fs_type, options)?;
            drop(loop_device); // the mount holds it from now on
            Ok((held(loop_path), true))
        }
    }
}

fn backing(device: &Path) -> Result<Backing, VolumeError> {
    match fs::metadata(device) {
        Ok(m) if m.file_type().is_block_device() => Ok(Backing::Block { device: device.to_owned(), rdev: m.rdev() }),
        Ok(m) if m.is_file() => fs::canonicalize(device)
            .map(Backing::Image)
            .map_err(|source| VolumeError::Device { device: device.to_owned(), source }),
        Ok(_) => Err(VolumeError::NotBlockDevice { device: device.to_owned(), image_allowed: true }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Backing::Gone(device.to_owned())),
        Err(source) => Err(VolumeError::Device { device: device.to_owned(), source }),
    }
}

/// Whether the mounted filesystem `info` is our volume.
fn is_ours(backing: &Backing, info: &MountInfo) -> bool {
    match backing {
        Backing::Block { rdev, .. } => mount::is_on_device(info, *rdev),
        Backing::Image(image) => loop_backing_file(info.dev).as_deref() == Some(image.as_path()),
        Backing::Gone(path) => info.source == *path || loop_backing_file(info.dev).as_deref() == Some(path.as_path()),
    }
}

/// The file behind the loop device numbered `dev`; None if it is not a bound loop device.
fn loop_backing_file(dev: u64) -> Option<PathBuf> {
    let sys = format!("/sys/dev/block/{}:{}/loop/backing_file", libc::major(dev), libc::minor(dev));
    let text = fs::read_to_string(sys).ok()?;
    let text = text.trim_end_matches('\n');
    Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text)))
}

/// The loop devices bound to `image`.
#[cfg(test)]
pub(super) fn loops_backed_by(image: &Path) -> Vec<PathBuf> {
    loop_devices_of(image).into_iter().map(|l| l.path).collect()
}

fn loop_devices_of(image: &Path) -> Vec<LoopDevice> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    let mut found = Vec::new();
    for name in entries.flatten().map(|e| e.file_name()).filter(|n| n.as_bytes().starts_with(b"loop")) {
        let path = Path::new("/dev").join(&name);
        let Ok(dev) = fs::metadata(&path).map(|m| m.rdev()) else { continue };
        if loop_backing_file(dev).as_deref() != Some(image) {
            continue;
        }
        let autoclear = fs::read_to_string(Path::new("/sys/block").join(&name).join("loop/autoclear"));
        found.push(LoopDevice { path, dev, autoclear: autoclear.is_ok_and(|a| a.trim() == "1") });
    }
    found
}

/// Fail if `image` is mounted through a loop device other than one we would attach: two mounts of one ext4
/// image through two loop devices corrupt it. An autoclear loop device exists only while something holds it:
/// not mounted here, it is mounted in another mount namespace (another node on this host, or a killed node's
/// namespace still being torn down), so it is refused too, and the caller tries again. An attached,
/// unmounted one without autoclear (set up by hand) is only worth a warning.
fn refuse_if_mounted_elsewhere(image: &Path) -> Result<(), VolumeError> {
    let loops = loop_devices_of(image);
    if loops.is_empty() {
        return Ok(());
    }
    let table = mount::mount_table().map_err(VolumeError::MountTable)?;
    for l in loops {
        if let Some(entry) = table.iter().find(|e| e.info.dev == l.dev) {
            let (image, loop_device, mount_point) = (image.to_owned(), l.path, entry.mount_point.clone());
            return Err(VolumeError::ImageInUse { image, loop_device, mount_point });
        }
        if l.autoclear {
            let mount_point = PathBuf::from("(another mount namespace)");
            return Err(VolumeError::ImageInUse { image: image.to_owned(), loop_device: l.path, mount_point });
        }
        tracing::warn!(image = %image.display(), loop_device = %l.path.display(), "image already on a loop device");
    }
    Ok(())
}

/// Detach loop devices bound to `image` that nothing mounts and that lack autoclear (set up by hand); the
/// kernel detaches autoclear ones itself. How many were detached. Best effort: failures are logged.
fn detach_leftover_loops(image: &Path) -> usize {
    let leftovers: Vec<LoopDevice> = loop_devices_of(image).into_iter().filter(|l| !l.autoclear).collect();
    if leftovers.is_empty() {
        return 0;
    }
    let Ok(table) = mount::mount_table() else { return 0 };
    let mut detached = 0;
    for l in leftovers.into_iter().filter(|l| !table.iter().any(|e| e.info.dev == l.dev)) {
        match File::open(&l.path).and_then(|device| sys::loop_detach(&device)) {
            Ok(()) => {
                let (image, loop_device) = (image.display(), l.path.display());
                tracing::warn!(%image, %loop_device, "detached a leftover loop device");
                detached += 1;
            }
            Err(e) => {
                tracing::warn!(loop_device = %l.path.display(), error = %e, "cannot detach a leftover loop device")
            }
        }
    }
    detached
}

/// Bind `image` to a free loop device with autoclear; its path and our open descriptor of it (the device stays
/// bound while that is open, or while mounted).
fn attach_loop(image: &Path, read_only: bool, legacy: bool) -> Result<(PathBuf, File), VolumeError> {
    let error = |step| move |source| VolumeError::Loop { image: image.to_owned(), step, source };
    let backing = OpenOptions::new().read(true).write(!read_only).open(image).map_err(error("open the image"))?;
    let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control");
    let control = control.map_err(error("open /dev/loop-control"))?;
    let flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
    let info = LoopInfo64::new(flags, image);
    let mut busy = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..ATTACH_ATTEMPTS {
        let n = sys::loop_get_free(&control).map_err(error("get a free loop device"))?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device =
            OpenOptions::new().read(true).write(!read_only).open(&path).map_err(error("open the loop device"))?;
        match sys::loop_attach(&device, &backing, &info, legacy) {
            Ok(()) => {
                tracing::debug!(image = %image.display(), loop_device = %path.display(), "loop device attached");
                return Ok((path, device));
            }
            // Another process bound it between LOOP_CTL_GET_FREE and now: ask for another.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = e,
            Err(source) => return Err(error("bind the image")(source)),
        }
    }
    Err(error("bind the image")(busy))
}

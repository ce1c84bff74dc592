//! The data volume against a real kernel: 32 MiB ext4 images on loop devices, mounted in a private mount
//! namespace per test (so nothing shows on the host, and the mounts die with the test's thread), each image and
//! mount point in a temp dir of its own. Needs root; skipped with a message otherwise. A [`Scratch`] undoes
//! everything on drop, panics included: mounts under its dir, loop devices on its image, the dir.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{eventually, TempDir};
use crate::failover::local::loops_backed_by;
use crate::failover::mount;
use crate::failover::{sys, LocalVolume, LocalVolumeSpec, VolumeError};

const UNMOUNT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the kernel may take to detach an autoclear loop device after the unmount.
const DETACH_WITHIN: Duration = Duration::from_secs(5);

/// False (after saying why) when the tests cannot run.
fn have_root(test: &str) -> bool {
    if !sys::is_root() {
        eprintln!("SKIPPED {test}: needs root (mount namespaces, loop devices, mount)");
        return false;
    }
    true
}

/// Run `body` on a thread of its own in a private mount namespace, on a current-thread runtime (as sipfront
/// runs). Threads it starts share the namespace; the namespace and its mounts die when they have all exited.
fn in_private_mount_namespace<F: Future<Output = ()>>(body: impl FnOnce() -> F + Send) {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            sys::private_mount_namespace().expect("a private mount namespace");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(body());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A temp dir with a fresh ext4 image (`pbx.img`) and a mount point (`mnt`, not created).
struct Scratch {
    image: PathBuf,
    mount_point: PathBuf,
    dir: TempDir,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = TempDir::new(test);
        let dir_path = std::fs::canonicalize(&dir.path).expect("canonical temp dir");
        let image = dir_path.join("pbx.img");
        File::create(&image).and_then(|f| f.set_len(32 << 20)).expect("create the image");
        run("mkfs.ext4", &["-q", "-F", image.to_str().expect("utf-8 path")]);
        Scratch { image, mount_point: dir_path.join("mnt"), dir }
    }

    fn spec(&self, device: &Path) -> LocalVolumeSpec {
        LocalVolumeSpec {
            device: device.to_owned(),
            mount_point: self.mount_point.clone(),
            fs_type: "ext4".into(),
            options: "noatime,nodev".into(),
            unmount_timeout: UNMOUNT_TIMEOUT,
        }
    }

    /// Attach the image by hand, as an operator would: `losetup` without autoclear.
    fn losetup(&self) -> PathBuf {
        PathBuf::from(run("losetup", &["-f", "--show", self.image.to_str().expect("utf-8 path")]))
    }

    fn loops(&self) -> Vec<PathBuf> {
        loops_backed_by(&self.image)
    }

    async fn loops_gone(&self) -> bool {
        eventually(DETACH_WITHIN, || self.loops().is_empty()).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let table = mount::mount_table().unwrap_or_default();
        let root = self.mount_point.parent().unwrap_or(&self.mount_point);
        for entry in table.iter().rev().filter(|e| e.mount_point.starts_with(root)) {
            let _ = sys::umount(&entry.mount_point, libc::MNT_DETACH);
        }
        for device in self.loops() {
            let _ = Command::new("losetup").arg("-d").arg(&device).output();
        }
        // `dir` is removed after this, as the field drops.
    }
}

fn autoclear(loop_device: &Path) -> String {
    let name = loop_device.file_name().expect("a device name").to_string_lossy().into_owned();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/autoclear")).expect("autoclear flag").trim().to_owned()
}

#[test]
fn an_image_volume_keeps_its_data_across_release_and_acquire() {
    if !have_root("an_image_volume_keeps_its_data_across_release_and_acquire") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("cycle");
        let mut volume = LocalVolume::new(scratch.spec(&scratch.image));
        assert!(!volume.mounted());
        assert_eq!(
            volume.describe(),
            format!("not mounted ({} for {})", scratch.image.display(), scratch.mount_point.display())
        );

        volume.acquire().await.expect("acquire");
        assert!(volume.mounted());
        let loops = scratch.loops();
        assert_eq!(loops.len(), 1, "one loop device: {loops:?}");
        assert_eq!(autoclear(&loops[0]), "1");
        let described = format!(
            "mounted {} (image {}) at {}",
            loops[0].display(),
            scratch.image.display(),
            scratch.mount_point.display()
        );
        assert_eq!(volume.describe(), described);
        let info = mount::mounted_at(&scratch.mount_point).expect("mount table").expect("mounted");
        assert_eq!((info.source.as_path(), info.fs_type.as_str()), (loops[0].as_path(), "ext4"));
        volume.acquire().await.expect("acquire again");
        assert_eq!(scratch.loops(), loops, "idempotent: no second loop device");

        // A udev-style symlink resolves to the loop device.
        let link = scratch.dir.path.join("by-id-link");
        std::os::unix::fs::symlink(&loops[0], &link).expect("symlink");
        assert_eq!(mount::wait_for_block_device(&link, Duration::from_secs(1)).await.expect("device"), loops[0]);

        std::fs::write(scratch.mount_point.join("data.txt"), "recording 1").expect("write on the volume");
        volume.release().await.expect("release");
        assert!(!volume.mounted());
        assert_eq!(mount::mounted_at(&scratch.mount_point).expect("mount table"), None);
        assert!(scratch.loops_gone().await, "the loop device detached: {:?}", scratch.loops());
        assert!(!scratch.mount_point.join("data.txt").exists(), "the file lives on the volume, not below it");
        volume.release().await.expect("release again");

        volume.acquire().await.expect("acquire after release");
        let data = std::fs::read_to_string(scratch.mount_point.join("data.txt")).expect("the file is back");
        assert_eq!(data, "recording 1");
        volume.release().await.expect("release");
        assert!(scratch.loops_gone().await);
    });
}

#[test]
fn a_busy_volume_stays_mounted_until_its_files_are_closed() {
    if !have_root("a_busy_volume_stays_mounted_until_its_files_are_closed") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("busy");
        let mut volume = LocalVolume::new(scratch.spec(&scratch.image));
        volume.acquire().await.expect("acquire");
        let open_file = File::create(scratch.mount_point.join("held-open")).expect("open a file on the volume");

        let started = Instant::now();
        match volume.release().await {
            Err(VolumeError::Busy { waited, holders, .. }) => {
                assert!(waited >= UNMOUNT_TIMEOUT && waited < UNMOUNT_TIMEOUT * 10, "waited {waited:?}");
                let us = format!("{} (", std::process::id());
                assert!(holders.iter().any(|h| h.starts_with(&us)), "we hold it: {holders:?}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(volume.mounted(), "still mounted, and we know it");
        assert!(mount::mounted_at(&scratch.mount_point).expect("mount table").is_some());
        assert_eq!(scratch.loops().len(), 1);

        drop(open_file);
        volume.release().await.expect("release once the file is closed");
        assert!(!volume.mounted());
        assert!(scratch.loops_gone().await);
    });
}

#[test]
fn the_two_step_loop_setup_also_autoclears() {
    if !have_root("the_two_step_loop_setup_also_autoclears") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("legacy");
        let mut volume = LocalVolume::new(scratch.spec(&scratch.image));
        volume.use_legacy_loop_setup();
        volume.acquire().await.expect("acquire");
        let loops = scratch.loops();
        assert_eq!(loops.len(), 1);
        assert_eq!(autoclear(&loops[0]), "1");
        volume.release().await.expect("release");
        assert!(scratch.loops_gone().await);
    });
}

#[test]
fn leftovers_of_an_earlier_run_are_adopted_or_released() {
    if !have_root("leftovers_of_an_earlier_run_are_adopted_or_released") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("leftover");
        let mut crashed = LocalVolume::new(scratch.spec(&scratch.image));
        crashed.acquire().await.expect("acquire");
        drop(crashed); // the mount stays: sipfront restarted while active
        let loops = scratch.loops();

        let mut leader = LocalVolume::new(scratch.spec(&scratch.image));
        leader.acquire().await.expect("acquire adopts the mount");
        assert!(leader.mounted());
        assert_eq!(scratch.loops(), loops, "no second loop device");
        drop(leader);

        let mut follower = LocalVolume::new(scratch.spec(&scratch.image));
        assert!(follower.release_if_mounted().await.expect("release leftovers"), "found the mount");
        assert_eq!(mount::mounted_at(&scratch.mount_point).expect("mount table"), None);
        assert!(scratch.loops_gone().await);

        // An image attached by hand (no autoclear) and not mounted is detached too.
        let by_hand = scratch.losetup();
        assert_eq!(autoclear(&by_hand), "0");
        assert!(follower.release_if_mounted().await.expect("release leftovers"), "found the loop device");
        assert!(scratch.loops_gone().await);
        assert!(!follower.release_if_mounted().await.expect("nothing left"));
    });
}

#[test]
fn what_is_not_our_volume_is_never_touched() {
    if !have_root("what_is_not_our_volume_is_never_touched") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("foreign");
        std::fs::create_dir_all(&scratch.mount_point).expect("mkdir");
        sys::mount(Some(Path::new("tmpfs")), &scratch.mount_point, Some("tmpfs"), 0, None).expect("mount a tmpfs");
        let mut volume = LocalVolume::new(scratch.spec(&scratch.image));
        let result = volume.acquire().await;
        assert!(
            matches!(result, Err(VolumeError::MountPointTaken { ref fs_type, .. }) if fs_type == "tmpfs"),
            "{result:?}"
        );
        assert!(scratch.loops().is_empty(), "nothing attached on error");
        volume.release().await.expect("release leaves a foreign mount alone");
        assert!(!volume.release_if_mounted().await.expect("nothing of ours"));
        let info = mount::mounted_at(&scratch.mount_point).expect("mount table").expect("the tmpfs");
        assert_eq!(info.fs_type, "tmpfs");
        sys::umount(&scratch.mount_point, 0).expect("unmount the tmpfs");

        // The image mounted elsewhere through a loop device of its own: mounting it again would corrupt it.
        let by_hand = scratch.losetup();
        let elsewhere = scratch.dir.path.join("elsewhere");
        mount::mount(&by_hand, &elsewhere, "ext4", "").expect("mount by hand");
        let result = volume.acquire().await;
        assert!(
            matches!(result, Err(VolumeError::ImageInUse { ref loop_device, .. }) if *loop_device == by_hand),
            "{result:?}"
        );
        assert_eq!(scratch.loops(), [by_hand], "no second loop device");
    });
}

#[test]
fn a_block_device_is_mounted_idempotently() {
    if !have_root("a_block_device_is_mounted_idempotently") {
        return;
    }
    in_private_mount_namespace(|| async {
        let scratch = Scratch::new("block");
        let device = scratch.losetup();
        let mut volume = LocalVolume::new(scratch.spec(&device));
        volume.acquire().await.expect("acquire");
        volume.acquire().await.expect("acquire again");
        mount::mount(&device, &scratch.mount_point, "ext4", "").expect("mount is idempotent too");
        assert_eq!(volume.describe(), format!("mounted {} at {}", device.display(), scratch.mount_point.display()));
        std::fs::write(scratch.mount_point.join("x"), "y").expect("write");

        let other = Scratch::new("block-other");
        let other_device = other.losetup();
        let result = mount::mount(&other_device, &scratch.mount_point, "ext4", "");
        assert!(matches!(result, Err(VolumeError::MountPointTaken { .. })), "{result:?}");

        volume.release().await.expect("release");
        assert_eq!(mount::mounted_at(&scratch.mount_point).expect("mount table"), None);
        assert_eq!(scratch.loops(), [device], "a block device of our own is not detached");
    });
}

#[test]
fn the_loop_device_goes_with_the_mount_namespace() {
    if !have_root("the_loop_device_goes_with_the_mount_namespace") {
        return;
    }
    let scratch = Scratch::new("namespace");
    let spec = scratch.spec(&scratch.image);
    in_private_mount_namespace(|| async {
        let mut volume = LocalVolume::new(spec);
        volume.acquire().await.expect("acquire");
        assert_eq!(scratch.loops().len(), 1);
        // No release: the thread ends, and with it the namespace and its mounts, as when sipfront is killed.
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    assert!(runtime.block_on(scratch.loops_gone()), "the loop device outlived the namespace: {:?}", scratch.loops());
}

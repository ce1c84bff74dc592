//! The pure parts (mount table, mount options, the EBS NVMe lookup over a fake sysfs), hooks with real processes
//! (real time, small timeouts), and in `volume` the volume against a real kernel: loop devices and ext4 in a
//! private mount namespace (needs root; skipped with a message otherwise).

mod volume;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::hook::{self, Hook, HookFailure, OUTPUT_TAIL_BYTES};
use super::mount::{self, parse_mountinfo, parse_options, MountEntry, MountInfo};
use super::VolumeError;

/// A directory under the system temp dir, removed with its contents on drop (panics included).
pub(super) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub(super) fn new(test: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sipfront-failover-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Poll `cond` every 10 ms until it holds or `within` passes; its last value.
pub(super) async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[test]
fn mountinfo_lines_are_parsed_with_their_escapes() {
    let text = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
        36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n\
        40 27 7:3 / /srv/pbx\\040data rw - ext4 /dev/loop3 rw\n\
        41 27 7:4 / /a\\011b\\134c\\012d rw - ext4 /dev/odd\\040name rw\n\
        garbage line\n\
        42 27 7:x / /bad rw - ext4 /dev/loop9 rw\n\
        43 27 7:5 / /no-separator rw ext4 /dev/loop5 rw\n";
    let entries = parse_mountinfo(text);
    let entry = |mp: &str, source: &str, fs_type: &str, (major, minor)| MountEntry {
        mount_point: PathBuf::from(mp),
        info: MountInfo { source: PathBuf::from(source), fs_type: fs_type.into(), dev: libc::makedev(major, minor) },
    };
    assert_eq!(
        entries,
        [
            entry("/proc", "proc", "proc", (0, 21)),
            entry("/mnt/parent", "/dev/root", "ext3", (98, 0)),
            entry("/srv/pbx data", "/dev/loop3", "ext4", (7, 3)),
            entry("/a\tb\\c\nd", "/dev/odd name", "ext4", (7, 4)),
        ]
    );
}

#[test]
fn a_backslash_without_three_octal_digits_is_kept() {
    let entries = parse_mountinfo(b"1 1 8:1 / /x\\09\\y\\ rw - ext4 /dev/sda1 rw\n");
    assert_eq!(entries[0].mount_point, Path::new("/x\\09\\y\\"));
}

#[test]
fn mounted_at_reads_this_namespace() {
    let proc = mount::mounted_at(Path::new("/proc")).expect("mount table").expect("/proc is mounted");
    assert_eq!(proc.fs_type, "proc");
    let dir = TempDir::new("not-mounted");
    assert_eq!(mount::mounted_at(&dir.path).expect("mount table"), None);
    assert_eq!(mount::mounted_at(&dir.path.join("missing")).expect("mount table"), None);
}

#[test]
fn mount_options_split_into_flags_and_filesystem_data() {
    assert_eq!(parse_options(""), (0, String::new()));
    assert_eq!(parse_options("defaults"), (0, String::new()));
    let (flags, data) = parse_options("noatime, nodev,errors=remount-ro,nosuid,data=ordered");
    assert_eq!(flags, libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOSUID);
    assert_eq!(data, "errors=remount-ro,data=ordered");
    assert_eq!(parse_options("ro,rw").0, 0, "the later option wins");
    assert_eq!(parse_options("rw,ro").0, libc::MS_RDONLY);
}

#[test]
fn the_ebs_volume_is_found_by_its_nvme_serial() {
    let sys = TempDir::new("nvme");
    let disk = |name: &str, serial: Option<&str>| {
        let dir = sys.path.join("block").join(name);
        std::fs::create_dir_all(dir.join("device")).expect("mkdir");
        if let Some(serial) = serial {
            std::fs::write(dir.join("device/serial"), serial).expect("write serial");
        }
    };
    disk("nvme0n1", Some("vol0aaaaaaaaaaaaaaaaa\n"));
    disk("nvme1n1", Some("vol0123456789abcdef0 \n")); // padded, as the controller reports it
    disk("nvme2n1", None);
    disk("vda", Some("vol0123456789abcdef0\n")); // not NVMe: ignored
    let find = |id| mount::nvme_device_in(&sys.path, id);
    assert_eq!(find("vol-0123456789abcdef0"), Some(PathBuf::from("/dev/nvme1n1")));
    assert_eq!(find("vol0123456789abcdef0"), Some(PathBuf::from("/dev/nvme1n1")));
    assert_eq!(find("VOL-0123456789ABCDEF0"), Some(PathBuf::from("/dev/nvme1n1")));
    assert_eq!(find("vol-0aaaaaaaaaaaaaaaaa"), Some(PathBuf::from("/dev/nvme0n1")));
    assert_eq!(find("vol-0fffffffffffffff0"), None);
    assert_eq!(mount::nvme_device_in(&sys.path.join("nowhere"), "vol-0123456789abcdef0"), None);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_missing_device_gives_up_after_the_deadline() {
    let dir = TempDir::new("wait");
    let started = tokio::time::Instant::now();
    let result = mount::wait_for_block_device(&dir.path.join("nvme9n1"), Duration::from_secs(3)).await;
    match result {
        Err(VolumeError::DeviceMissing { waited, .. }) => assert_eq!(waited, Duration::from_secs(3)),
        other => panic!("expected DeviceMissing, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let file = dir.path.join("plain");
    std::fs::write(&file, b"x").expect("write");
    let result = mount::wait_for_block_device(&file, Duration::from_secs(3)).await;
    assert!(matches!(result, Err(VolumeError::NotBlockDevice { .. })), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn unmounting_what_is_not_mounted_is_ok() {
    let dir = TempDir::new("unmount");
    mount::unmount(&dir.path, Duration::from_secs(1)).await.expect("not mounted: nothing to do");
    mount::unmount(&dir.path.join("missing"), Duration::from_secs(1)).await.expect("missing: nothing to do");
}

fn hook(command: &str, timeout: Duration) -> Hook {
    Hook { name: "on_acquire", command: command.into(), timeout }
}

/// SIGKILLs a process on drop, so a test that fails does not leave its daemon behind.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-9", &self.0.to_string()]).output();
    }
}

/// Whether `pid` has exited (gone, or a zombie waiting for whoever reaps orphans here).
fn process_gone(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Run `command` as a hook with `timeout` that records its background child's pid in a file; that pid.
async fn run_with_background_child<F: Future>(
    dir: &TempDir,
    timeout: Duration,
    run: impl FnOnce(Hook) -> F,
) -> (F::Output, libc::pid_t) {
    let pid_file = dir.path.join("child.pid");
    let command = format!("sleep 30 & echo $! > {}.tmp && mv {0}.tmp {0}; sleep 30", pid_file.display());
    let result = run(hook(&command, timeout)).await;
    let pid = std::fs::read_to_string(&pid_file).expect("the hook wrote its child's pid");
    (result, pid.trim().parse().expect("a pid"))
}

#[tokio::test]
async fn a_hook_sees_the_event_in_its_environment() {
    let env = [("SIPFRONT_EVENT", "acquire".to_owned()), ("SIPFRONT_NODE_ID", "2".to_owned())];
    let command = r#"echo "$SIPFRONT_EVENT/$SIPFRONT_NODE_ID/$SIPFRONT_HOOK"; read x || echo "stdin at EOF""#;
    let run = hook::run(&hook(command, Duration::from_secs(10)), &env).await.expect("the hook succeeds");
    assert_eq!(run.status, 0);
    assert_eq!(run.output_tail, "acquire/2/on_acquire\nstdin at EOF");
    assert!(run.took < Duration::from_secs(10));
}

#[tokio::test]
async fn a_failing_hook_reports_its_status_and_output() {
    let command = "echo first; echo oops >&2; exit 3";
    match hook::run(&hook(command, Duration::from_secs(10)), &[]).await {
        Err(HookFailure::Exit { status: 3, output_tail }) => assert_eq!(output_tail, "first\noops"),
        other => panic!("expected exit status 3, got {other:?}"),
    }
    match hook::run(&hook("echo dying; kill -9 $$", Duration::from_secs(10)), &[]).await {
        Err(HookFailure::Signal { signal: 9, output_tail }) => assert_eq!(output_tail, "dying"),
        other => panic!("expected SIGKILL, got {other:?}"),
    }
}

#[tokio::test]
async fn only_the_tail_of_a_long_output_is_kept() {
    let command = "i=0; while [ $i -lt 400 ]; do echo \"line $i: ----------------------\"; i=$((i+1)); done; exit 1";
    match hook::run(&hook(command, Duration::from_secs(10)), &[]).await {
        Err(HookFailure::Exit { status: 1, output_tail }) => {
            assert!(output_tail.len() <= OUTPUT_TAIL_BYTES, "{} bytes", output_tail.len());
            assert!(output_tail.len() > OUTPUT_TAIL_BYTES - 40, "{} bytes", output_tail.len());
            assert!(output_tail.ends_with("line 399: ----------------------"), "{output_tail}");
        }
        other => panic!("expected exit status 1, got {other:?}"),
    }
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = TempDir::new("hook-timeout");
    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    let (result, child) = run_with_background_child(&dir, timeout, |h| async move { hook::run(&h, &[]).await }).await;
    let _cleanup = KillOnDrop(child);
    assert!(matches!(result, Err(HookFailure::Timeout { after }) if after == timeout), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(eventually(Duration::from_secs(5), || process_gone(child)).await, "background child {child} survived");
}

#[tokio::test]
async fn dropping_a_running_hook_kills_its_group() {
    let dir = TempDir::new("hook-drop");
    let (result, child) = run_with_background_child(&dir, Duration::from_secs(60), |h| async move {
        tokio::time::timeout(Duration::from_millis(300), async move { hook::run(&h, &[]).await }).await
    })
    .await;
    let _cleanup = KillOnDrop(child);
    assert!(result.is_err(), "the hook was still running: {result:?}");
    assert!(eventually(Duration::from_secs(5), || process_gone(child)).await, "background child {child} survived");
}

#[tokio::test]
async fn a_hook_that_leaves_a_daemon_running_returns_at_its_exit() {
    let started = Instant::now();
    let command = "sleep 30 & echo \"daemon $!\"; echo started >&2";
    let run = hook::run(&hook(command, Duration::from_secs(20)), &[]).await.expect("the hook succeeds");
    let daemon: libc::pid_t =
        run.output_tail.lines().next().and_then(|l| l.strip_prefix("daemon ")).expect("pid").parse().expect("pid");
    let _cleanup = KillOnDrop(daemon);
    assert!(run.output_tail.ends_with("started"), "{}", run.output_tail);
    assert!(started.elapsed() < Duration::from_secs(5), "waited for the daemon: {:?}", started.elapsed());
    assert!(!process_gone(daemon), "the daemon keeps running after a successful hook");
}

/// A `tracing` writer that keeps what is logged.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_output_line_is_logged_under_the_hook_target() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber); // this thread only: the runtime is current-thread
    let command = "echo 'line one'; printf 'no newline at the end' >&2";
    hook::run(&hook(command, Duration::from_secs(10)), &[]).await.expect("the hook succeeds");
    let log = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
    let output: Vec<&str> = log.lines().filter(|l| l.contains(" INFO sipfront::hook: ")).collect();
    assert_eq!(output.len(), 2, "{log}");
    for (logged, line) in output.iter().zip(["line one", "no newline at the end"]) {
        assert!(logged.contains(&format!("sipfront::hook: {line} hook=")) && logged.contains("on_acquire"), "{logged}");
    }
}

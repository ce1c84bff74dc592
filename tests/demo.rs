//! `sipfront demo`, the real binary: three nodes, two test PBXs, the pseudo-VIP and the call generator on
//! 127.0.9.x (no root). Calls flow; the leader is killed through the demo's API; a new leader takes over, and
//! every call, those up at the kill included, ends cleanly (`failed == 0`: the point of the demo). Then SIGTERM:
//! the demo exits 0 within 10 s and leaves no process behind.
//!
//! The demo runs in its own process group under coreutils `timeout` (killed on drop, panicking or not); its
//! children die with it (`PR_SET_PDEATHSIG`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_exchange, sipfront_bin, Proc};
use serde_json::Value;

const DASH: &str = "127.0.9.1:8080";

fn http(method: &str, path: &str) -> (u16, String) {
    http_exchange(DASH, method, path, None, "").unwrap_or((0, String::new()))
}

fn json(path: &str) -> Value {
    match http("GET", path) {
        (200, body) => serde_json::from_str(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn calls() -> Value {
    json("/api/v1/demo")["calls"].clone()
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Poll `ok` every 100 ms until it holds; `what` and the demo's output in the panic otherwise.
fn poll(what: &str, within: Duration, out: &Path, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > within {
            panic!("{what}: not within {within:?}\ndemo output:\n{}", std::fs::read_to_string(out).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

/// Processes whose command line names the demo's dir, or a demo PBX (the PBX's command line has only its
/// address, in the demo's 127.0.9.x range).
fn leftovers(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .filter_map(|e| {
            let pid = e.ok()?.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&dir) || cmd.contains("demo-pbx --listen 127.0.9.")).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

fn tempdir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipfront-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn calls_survive_a_leader_kill_and_the_demo_stops_cleanly() {
    let dir = tempdir("demo-test");
    let out = std::env::temp_dir().join(format!("sipfront-demo-test-{}.out", std::process::id()));
    let log = std::fs::File::create(&out).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "120"]).arg(sipfront_bin());
    cmd.args(["demo", "--duration", "60", "--rate", "4", "--hold", "3s", "--dir"]).arg(&dir);
    cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    let started = Instant::now();
    let mut demo = Proc::spawn("demo", cmd);

    poll("a leader with both PBXs up", Duration::from_secs(30), &out, || {
        let b = json("/api/v1/backends");
        json("/api/v1/cluster")["leader"].is_u64()
            && b["backends"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["state"] == "up"))
    });
    let ready = started.elapsed();
    poll("calls answered before the kill", Duration::from_secs(20), &out, || count(&calls(), "answered") >= 15);

    let leader = json("/api/v1/cluster")["leader"].as_u64().expect("a leader");
    let before = calls();
    let (code, body) = http("POST", &format!("/api/v1/demo/node/{leader}/kill"));
    assert_eq!(code, 200, "kill through the demo's API: {body}");
    let killed_at = Instant::now();
    assert_eq!(json("/api/v1/demo")["nodes"][leader as usize - 1]["running"], false, "node {leader} is down");
    let takeover = poll("a new leader", Duration::from_secs(15), &out, || {
        json("/api/v1/cluster")["leader"].as_u64().is_some_and(|l| l != leader)
    });
    // Calls placed after the kill are answered, and every call up at the kill has ended by now (hold ≤ 4.5 s).
    poll("calls answered and ended after the kill", Duration::from_secs(30), &out, || {
        let c = calls();
        count(&c, "answered") >= count(&before, "answered") + 20 && count(&c, "ended") >= count(&before, "answered")
    });
    let after = calls();
    eprintln!(
        "ready after {ready:?}; at the kill of node {leader}: {before}; new leader after {takeover:?}; \
         {:?} after the kill: {after}",
        killed_at.elapsed()
    );
    assert_eq!(count(&after, "failed"), 0, "no call failed across the kill: {after}");

    demo.signal_program("TERM");
    poll("the demo exits after SIGTERM", Duration::from_secs(10), &out, || demo.try_wait().is_some());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(demo.status.unwrap().success(), "exit status {:?}:\n{text}", demo.status);
    assert!(text.contains("dashboard: http://127.0.9.1:8080/"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("calls: active 0,") && l.ends_with("failed 0")), "{text}");
    poll("no process of the demo left", Duration::from_secs(2), &out, || leftovers(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&out);
}

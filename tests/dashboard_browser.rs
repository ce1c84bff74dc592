//! The built-in dashboard in a real headless browser (Debian's `chromium`, installed by the README's test
//! command), against a real three-node cluster: `sipfront demo` (three nodes, two test PBXs and a gentle call
//! generator, all on loopback, no root). The page must show the leader, the VIP holder and both backends up;
//! fault: the leader is killed through the demo's API; the page must then show another leader and the old one
//! unreachable. Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard-*.png` (and to `$SIPFRONT_SCREENSHOT_DIR`
//! when set, which is how the README's picture was made).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{chromium, headless_args, tempdir};
use common::{http_exchange, sipfront_bin, Proc};

/// The demo's dashboard (its own address: the demo puts everything on 127.0.9.x).
const DASH: &str = "127.0.9.1:8080";

fn http(method: &str, path: &str) -> (u16, String) {
    http_exchange(DASH, method, path, None, "").unwrap_or((0, String::new()))
}

fn json(path: &str) -> serde_json::Value {
    let (code, body) = http("GET", path);
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn poll(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run headless Chromium on the dashboard for `budget` of virtual time (the page polls the API meanwhile);
/// the DOM, and a screenshot at `shot`.
fn browse(budget_ms: u32, shot: &Path) -> String {
    let profile = tempdir("chromium-profile");
    let common_args = |c: &mut Command| {
        headless_args(c, &profile);
        c.arg(format!("--virtual-time-budget={budget_ms}"));
    };
    let mut dump = Command::new("timeout");
    dump.arg("60").arg(chromium());
    common_args(&mut dump);
    let out = dump.arg("--dump-dom").arg(format!("http://{DASH}/")).output().expect("run chromium");
    let mut shoot = Command::new("timeout");
    shoot.arg("60").arg(chromium());
    common_args(&mut shoot);
    let st = shoot.arg(format!("--screenshot={}", shot.display())).arg(format!("http://{DASH}/")).status();
    assert!(st.is_ok_and(|s| s.success()) && shot.exists(), "chromium made no screenshot at {}", shot.display());
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attribute `attr` of the first element whose opening tag contains `marker`.
fn attr_of(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_end = dom[at..].find('>')? + at;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_end];
    let a = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[a..a + tag[a..].find('"')?].to_owned())
}

/// The text inside the element with `id`.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open_end = dom[at..].find('>')? + at + 1;
    let close = dom[open_end..].find("</")? + open_end;
    Some(dom[open_end..close].trim().to_owned())
}

fn shot_path(name: &str) -> PathBuf {
    // Cargo sets CARGO_TARGET_TMPDIR when it compiles integration tests, not when it runs them.
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("dashboard-{name}.png"))
}

fn keep(shot: &Path) {
    if let Some(dir) = std::env::var_os("SIPFRONT_SCREENSHOT_DIR") {
        let _ = std::fs::copy(shot, Path::new(&dir).join(shot.file_name().unwrap()));
    }
}

#[test]
fn dashboard_shows_the_cluster_and_follows_a_leader_kill() {
    let dir = tempdir("demo");
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "180"]).arg(sipfront_bin()).args(["demo", "--duration", "150"]);
    cmd.arg("--dir").arg(&dir).stdout(Stdio::null()).stderr(Stdio::null());
    let mut demo = Proc::spawn("demo", cmd);

    poll("the demo cluster has a leader and both PBXs up", Duration::from_secs(30), || {
        let c = json("/api/v1/cluster");
        let b = json("/api/v1/backends");
        c["leader"].is_u64()
            && b["backends"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["state"] == "up"))
    });
    let leader = json("/api/v1/cluster")["leader"].as_u64().unwrap();

    let before = shot_path("before");
    let dom = browse(4000, &before);
    keep(&before);
    assert!(dom.contains("data-loaded=\"true\""), "the page rendered a full poll:\n{dom}");
    assert_eq!(text_of(&dom, "leader").as_deref(), Some(leader.to_string().as_str()), "leader shown");
    let card = format!("data-node-id=\"{leader}\"");
    assert_eq!(attr_of(&dom, &card, "data-role").as_deref(), Some("leader"), "the leader's card");
    for b in ["pbx1", "pbx2"] {
        assert_eq!(attr_of(&dom, &format!("data-backend=\"{b}\""), "data-state").as_deref(), Some("up"), "{b} up");
    }
    assert_eq!(text_of(&dom, "conn-status").as_deref(), Some("live"));

    let (code, body) = http("POST", &format!("/api/v1/demo/node/{leader}/kill"));
    assert_eq!(code, 200, "kill through the demo API: {body}");
    poll("another leader", Duration::from_secs(15), || {
        json("/api/v1/cluster")["leader"].as_u64().is_some_and(|l| l != leader)
    });
    let new = json("/api/v1/cluster")["leader"].as_u64().unwrap();

    let after = shot_path("after-kill");
    let dom = browse(4000, &after);
    keep(&after);
    assert_eq!(text_of(&dom, "leader").as_deref(), Some(new.to_string().as_str()), "the new leader shown");
    assert_eq!(attr_of(&dom, &card, "data-role").as_deref(), Some("unreachable"), "the killed node's card");
    assert!(dom.contains("data-kind=\"leader-changed\""), "the timeline shows the leader change");

    demo.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

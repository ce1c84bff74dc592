//! SIPVicious (Debian's `sipvicious`: svmap, svwar, svcrack) against the real binary with `[security]` on: the
//! INVITE svmap rang the PBX with, svwar's extension enumeration and svcrack's password guessing all find nothing,
//! the PBX never hears of them, the scanners' address is banned (admin API, metrics, log) and a phone on another
//! address is still served.
//!
//! SIPVicious 0.3.3 ignores its `-b` (binding address), so the tools send from 127.0.0.1 (source ports
//! 15150-15152, clear of the load bench's 5060-5090); the config's `allow = []` takes loopback off the default
//! allow-list. Test number (tests/common/mod.rs): 150; the admin server on 127.0.0.150:9090.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "sipvicious-test-token-0123456789";

/// Fail loudly when SIPVicious is missing: scripts/test.sh installs it, so a missing one is a broken machine.
fn require_sipvicious() {
    let ok = ["svmap", "svwar", "svcrack"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok_and(|o| o.status.success()));
    assert!(
        ok,
        "svmap, svwar and svcrack are not on PATH: install SIPVicious (Debian/Ubuntu: apt-get install sipvicious)"
    );
}

/// Run one SIPVicious tool (bounded by coreutils `timeout`); its output, stdout and stderr together.
fn sipvicious(h: &Harness, tool: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["-k", "2", "60", tool])
        .args(args)
        .current_dir(&h.dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} failed ({}):\n{text}", out.status);
    text
}

/// A counter's value in the exposition, summed over the series whose labels include `labels`.
fn counter(admin: &str, name: &str, labels: &str) -> f64 {
    let (code, text) = http_exchange(admin, "GET", "/metrics", None, "").expect("admin answers");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn sipvicious_finds_nothing_through_sipfront_and_is_banned() {
    require_sipvicious();
    let mut h = Harness::new("sipvicious", 150);
    let pbx = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    let token = h.dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let admin = format!("{}:9090", h.front_ip());
    let cfg = FrontConfig::new()
        .backend("pbx", h.pbx(PBX1_PORT), Tp::Udp)
        .section(&format!("[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"", token.display()))
        .section("[security]\nallow = []");
    h.start_sipfront(&cfg);
    let host = h.front_ip().to_string();
    let target = format!("udp://{}", h.sipfront());

    let map = sipvicious(&h, "svmap", &["-m", "INVITE", "-P", "15150", "-p", "5060", &host]);
    let war = sipvicious(&h, "svwar", &["--force", "-e100-199", "-P", "15151", "--maximumtime=2", &target]);
    let crack = sipvicious(&h, "svcrack", &["-u", "100", "-r", "1000-1100", "-P", "15152", &target]);
    for (tool, out) in [("svmap", &map), ("svwar", &war), ("svcrack", &crack)] {
        assert!(out.contains("found nothing"), "{tool} found something through sipfront:\n{out}");
    }

    let (code, body) = http_exchange(&admin, "GET", "/api/v1/bans", Some(TOKEN), "").expect("admin answers");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bans = v["bans"].as_array().unwrap();
    assert!(
        bans.iter()
            .any(|b| b["ip"] == "127.0.0.1" && b["reason"] == "user_agent" && b["remaining_s"].as_u64() > Some(200)),
        "the scanners' address is banned for ban_time: {v}"
    );
    assert!(counter(&admin, "sipfront_guard_dropped_total", "reason=\"user_agent\"") >= 1.0);
    assert!(counter(&admin, "sipfront_guard_dropped_total", "reason=\"banned\"") >= 1.0, "svwar and svcrack: banned");
    assert!(counter(&admin, "sipfront_guard_bans_total", "reason=\"user_agent\"") >= 1.0);
    assert!(h.front_log_text().contains("guard: source banned"), "{}", h.front_log_text());

    // A phone on another address is served; the PBX, which has seen nothing before it, gets its request.
    let phone = UdpPeer::bind_addr(h.front(UAC_PORT));
    let ruri = format!("sip:100@{}", h.sipfront());
    phone.send(
        request("OPTIONS", &ruri, phone.local, Tp::Udp, "phone-1", "User-Agent: Yealink\r\n").as_bytes(),
        h.sipfront(),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let m = pbx.recv_msg_until(deadline).expect("the phone's OPTIONS at the PBX");
        assert_ne!(m.header("User-Agent"), Some("friendly-scanner"), "a scanner's request reached the PBX: {m:?}");
        if m.header("Call-ID") == Some("phone-1") {
            break;
        }
    }
}

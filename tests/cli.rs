//! What a new user sees from the binary itself: `check-config`'s summary and warnings, a log file without colour
//! codes, a bind error that names its cause once. (Harness number 250: 127.0.0.250.)

mod common;

use std::process::Command;

use common::*;

fn check_config(text: &str, dir: &std::path::Path, name: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(sipfront_bin()).args(["check-config", path.to_str().unwrap()]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

const CONFIG: &str = r#"
[node]
id = 1
name = "cli"
[sip]
listen = ["udp:LISTEN:5060"]
advertise = "LISTEN"
[[backend]]
name = "pbx"
uri = "sip:127.0.1.250:5080"
"#;

#[test]
fn check_config_speaks_toml_and_warns_about_an_address_this_host_lacks() {
    let dir = std::env::temp_dir().join(format!("sipfront-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out) = check_config(&CONFIG.replace("LISTEN", "127.0.0.250"), &dir, "local.toml");
    assert!(ok, "{out}");
    assert!(out.contains("policy active-standby"), "the policy as written in TOML: {out}");
    assert!(!out.contains("warning"), "{out}");
    // 192.0.2.1 (TEST-NET-1) is on no interface here.
    let (ok, out) = check_config(&CONFIG.replace("LISTEN", "192.0.2.1"), &dir, "foreign.toml");
    assert!(ok, "valid, only unlikely: {out}");
    assert!(out.contains("warning: sip.listen udp:192.0.2.1:5060: 192.0.2.1 is not an address of this host"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_log_has_no_colour_codes_and_a_bind_error_names_its_cause_once() {
    let mut h = Harness::new("cli_log", 250);
    h.start_sipfront(&FrontConfig::new().backend("pbx", h.pbx(PBX1_PORT), Tp::Udp));
    let log = h.front_log_text();
    assert!(log.contains("INFO"), "sipfront logged: {log}");
    assert!(!log.contains('\x1b'), "no ANSI escapes in a log file:\n{log}");
    // A second sipfront on the same address: it must fail, saying why once.
    let dir = std::env::temp_dir().join(format!("sipfront-cli-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("second.toml");
    std::fs::write(&path, CONFIG.replace("LISTEN", &h.front_ip().to_string())).unwrap();
    let out = Command::new("timeout")
        .args(["-k", "2", "20", &sipfront_bin(), "run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second one cannot bind: {err}");
    assert!(err.contains("cannot bind"), "{err}");
    assert_eq!(err.matches("os error 98").count(), 1, "the cause once per line printed:\n{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

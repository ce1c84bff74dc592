//! Load through the real `sipfront` binary: 10,000 SIPp calls at 200 calls/s (INVITE, 100, 180, 200, ACK, BYE,
//! 200, all mandatory on both sides) over UDP and over TCP, about 50 s each; the two tests run side by side.
//! Every call must succeed on the caller and on the PBX. Test numbers (see tests/common/mod.rs): 70-79.

mod common;

use std::time::Duration;

use common::*;

const CALLS: u64 = 10_000;
const RATE: u64 = 200;

fn load(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let run_time = Duration::from_secs(CALLS / RATE);
    let uas = h.start_sipp(
        SippSpec::uas(&h, "uas", "uas.xml", tp, PBX1_PORT)
            .calls(CALLS)
            .trace(false)
            .timeout(run_time + Duration::from_secs(80)),
    );
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let uac = h.run_sipp(
        SippSpec::uac(&h, "uac", "uac.xml", tp)
            .calls(CALLS)
            .trace(false)
            .timeout(run_time + Duration::from_secs(60))
            .arg("-r")
            .arg(&RATE.to_string())
            .arg("-d")
            .arg("0")
            .arg("-l")
            .arg("2000"),
    );
    uac.assert_ok(CALLS);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(CALLS);
    assert!(h.sipfront_alive(), "sipfront died under load:\n{}", h.front_log_text());
    let problems = h.front_log_problems();
    assert!(problems.is_empty(), "sipfront logged warnings or errors under load:\n{}", problems.join("\n"));
    eprintln!("{name}: {CALLS} calls at {RATE}/s in {:.1} s", uac.elapsed.as_secs_f64());
}

#[test]
fn load_10k_calls_udp() {
    load("load_10k_calls_udp", 70, Tp::Udp);
}

#[test]
fn load_10k_calls_tcp() {
    load("load_10k_calls_tcp", 71, Tp::Tcp);
}

//! Serial failover through the real `sipfront` binary: the first backend is silent (timer B), refuses the
//! connection, or answers 503, and the call completes on the second backend. Timer B is 64*T1, so these tests
//! set `t1 = "50ms"` (3.2 s) where they wait for it. Test numbers (see tests/common/mod.rs): 40-49.

mod common;

use std::time::Duration;

use common::*;

const T1_MS: u64 = 50;

fn timer_b() -> Duration {
    Duration::from_millis(64 * T1_MS)
}

#[test]
fn failover_silent_backend_udp() {
    let mut h = Harness::new("failover_silent_backend_udp", 40);
    // The first backend: a socket that reads and never answers.
    let silent = UdpPeer::bind_addr(h.pbx(PBX1_PORT));
    let uas = h.start_sipp(SippSpec::uas(&h, "uas2", "uas.xml", Tp::Udp, PBX2_PORT));
    h.start_sipfront(
        &FrontConfig::new().t1(&format!("{T1_MS}ms")).backend("silent", h.pbx(PBX1_PORT), Tp::Udp).backend(
            "pbx2",
            h.pbx(PBX2_PORT),
            Tp::Udp,
        ),
    );
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Udp));
    uac.assert_ok(1);
    h.wait_sipp(uas).assert_ok(1);
    assert!(uac.elapsed >= timer_b(), "the call completed in {:?}, before timer B ({:?})", uac.elapsed, timer_b());

    // The silent backend got the INVITE, retransmitted on timer A (T1, 2*T1, ...), one branch, and nothing else
    // (no CANCEL: it never answered).
    let got = drain_udp(&silent, Duration::from_millis(200));
    assert!(got.len() >= 3, "timer A should retransmit the INVITE to the silent backend: {got:#?}");
    assert!(got.iter().all(|m| m.method() == Some("INVITE")), "only INVITEs: {:?}", starts(&got));
    let branches: std::collections::HashSet<String> = got.iter().map(|m| m.header_values("Via")[0].clone()).collect();
    assert_eq!(branches.len(), 1, "retransmissions keep the branch: {branches:?}");
}

fn starts(msgs: &[SipMsg]) -> Vec<&str> {
    msgs.iter().map(|m| m.start.as_str()).collect()
}

#[test]
fn failover_silent_backend_tcp() {
    let mut h = Harness::new("failover_silent_backend_tcp", 41);
    // The first backend accepts the connection, reads, and never answers.
    let mute = MuteTcpBackend::start(h.pbx(PBX1_PORT));
    let uas = h.start_sipp(SippSpec::uas(&h, "uas2", "uas.xml", Tp::Tcp, PBX2_PORT));
    h.start_sipfront(&FrontConfig::new().t1(&format!("{T1_MS}ms")).backend("mute", mute.addr, Tp::Tcp).backend(
        "pbx2",
        h.pbx(PBX2_PORT),
        Tp::Tcp,
    ));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Tcp));
    uac.assert_ok(1);
    h.wait_sipp(uas).assert_ok(1);
    assert!(uac.elapsed >= timer_b(), "the call completed in {:?}, before timer B ({:?})", uac.elapsed, timer_b());
    // TCP is reliable: one INVITE, no retransmission, no CANCEL.
    let got = mute.requests();
    assert_eq!(starts(&got).len(), 1, "exactly one INVITE to the mute backend: {:?}", starts(&got));
    assert_eq!(got[0].method(), Some("INVITE"));
}

#[test]
fn failover_connection_refused_tcp() {
    let mut h = Harness::new("failover_connection_refused_tcp", 42);
    // Nothing listens on the first backend's port: the connect fails at once, and sipfront moves on without
    // waiting for any timer (default T1 here: timer B would be 32 s).
    assert!(!socket_bound(h.pbx(PBX1_PORT), Tp::Tcp));
    let uas = h.start_sipp(SippSpec::uas(&h, "uas2", "uas.xml", Tp::Tcp, PBX2_PORT));
    h.start_sipfront(&FrontConfig::new().backend("down", h.pbx(PBX1_PORT), Tp::Tcp).backend(
        "pbx2",
        h.pbx(PBX2_PORT),
        Tp::Tcp,
    ));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Tcp));
    uac.assert_ok(1);
    h.wait_sipp(uas).assert_ok(1);
    assert!(uac.elapsed < Duration::from_secs(5), "failover after a refused connect took {:?}", uac.elapsed);
}

fn failover_503(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let busy = h.start_sipp(SippSpec::uas(&h, "uas1_503", "uas_503.xml", tp, PBX1_PORT));
    let uas = h.start_sipp(SippSpec::uas(&h, "uas2", "uas.xml", tp, PBX2_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp).backend("pbx2", h.pbx(PBX2_PORT), tp));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", tp));
    uac.assert_ok(1);
    // The 503 backend got its ACK from sipfront; the second backend carried the whole call.
    let busy = h.wait_sipp(busy);
    busy.assert_ok(1);
    h.wait_sipp(uas).assert_ok(1);
    assert!(uac.received().all(|m| m.status() != Some(503)), "the 503 must not reach the caller");
    let inv = busy.received_request("INVITE");
    let ack = busy.received_request("ACK");
    assert_eq!(ack.header_values("Via"), [inv.header_values("Via")[0].clone()], "hop-by-hop ACK for the 503");
    let sent = busy.sent().filter(|m| m.status() == Some(503)).count();
    assert_eq!(sent, 1, "sipfront should ACK the 503 at once, not after retransmissions:\n{}", busy.summary_of_trace());
}

#[test]
fn failover_on_503_udp() {
    failover_503("failover_on_503_udp", 43, Tp::Udp);
}

#[test]
fn failover_on_503_tcp() {
    failover_503("failover_on_503_tcp", 44, Tp::Tcp);
}

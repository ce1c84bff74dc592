//! Backend health through the real `sipfront` binary: OPTIONS probes, a PBX killed with SIGKILL in the middle of
//! 100 established calls (every call still ends cleanly on the standby PBX, and new calls placed during the kill
//! all complete), the PBX coming back (new calls return to it, re-homed dialogs stay), a flapping PBX that never
//! flips, and the distribution of detection times over ten kills. Each test says what it injects and checks that
//! no call was lost: SIPp's totals on every caller, and per Call-ID which PBX saw which request.
//!
//! PBXs are SIPp running tests/sipp/uas_health.xml (it answers probes, new calls, and BYEs of dialogs it never
//! saw), or a [`RustPbx`] where the test scripts each probe's answer. Probing is `interval = "200ms"`,
//! `down_after = 3`, `up_after = 2`. Also here: a BYE in flight to a PBX that hangs fails over, a CANCELled
//! INVITE pending at a PBX that hangs ends when the PBX is declared down, and the dialog table's cap answers 503
//! with Retry-After. Test numbers (see tests/common/mod.rs): 80-89, 94, 97-98.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const INTERVAL: &str = "200ms";
const INTERVAL_MS: u64 = 200;
const DOWN_AFTER: u32 = 3;
const UP_AFTER: u32 = 2;
/// The probe timeout of the kill tests. With the spec's 500 ms a dead UDP PBX is declared down only after three
/// probe timeouts (0.9 to 1.1 s after the kill: over the 1 s budget about half the time), so the kill tests
/// probe with a 200 ms timeout, which puts UDP detection at 0.6 to 0.8 s (see `detection_times_*`).
const KILL_TIMEOUT: &str = "200ms";
/// A dead backend must be declared down within this long after the kill.
const DETECTION_BUDGET: Duration = Duration::from_secs(1);
/// The second and third callers, beside the first on 127.0.0.N.
const UAC2_PORT: u16 = 5092;

/// A SIPp PBX (uas_health.xml) with no fixed call count: stopped with [`Harness::stop_sipp`].
fn sipp_pbx(h: &Harness, label: &str, tp: Tp, port: u16) -> SippSpec {
    SippSpec::uas(h, label, "uas_health.xml", tp, port).calls(1_000_000).timeout(Duration::from_secs(90))
}

/// Two backends, pbx1 preferred, probed every 200 ms.
fn two_pbx_config(h: &Harness, tp: Tp, probe_timeout: &str) -> FrontConfig {
    FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp).backend("pbx2", h.pbx(PBX2_PORT), tp).health(
        INTERVAL,
        probe_timeout,
        DOWN_AFTER,
        UP_AFTER,
    )
}

/// A caller placing `calls` basic calls (uac.xml) at `rate` per second, each held `hold_ms` before its BYE.
fn caller(h: &Harness, label: &str, tp: Tp, port: u16, calls: u64, rate: u64, hold_ms: u64) -> SippSpec {
    SippSpec::uac(h, label, "uac.xml", tp)
        .port(port)
        .calls(calls)
        .timeout(Duration::from_secs(45))
        .arg("-r")
        .arg(&rate.to_string())
        .arg("-l")
        .arg(&calls.to_string())
        .arg("-d")
        .arg(&hold_ms.to_string())
}

/// Poll until `cond` holds, or panic with `what` at the deadline.
fn poll_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn call_id(m: &SipMsg) -> String {
    m.header("Call-ID").unwrap_or("").to_string()
}

/// The Call-IDs of the INVITEs a caller sent.
fn calls_placed(run: &SippRun) -> BTreeSet<String> {
    run.sent().filter(|m| m.method() == Some("INVITE")).map(call_id).collect()
}

/// Call-IDs of the requests with `method` in a trace.
fn requests_in(trace: &[Traced], method: &str) -> BTreeSet<String> {
    trace.iter().filter(|t| !t.sent && t.msg.method() == Some(method)).map(|t| call_id(&t.msg)).collect()
}

/// Call-IDs of the `code` answers to `method` that a PBX sent.
fn answered(trace: &[Traced], method: &str, code: u16) -> BTreeSet<String> {
    trace
        .iter()
        .filter(|t| t.sent && t.msg.status() == Some(code) && t.msg.cseq_method() == Some(method))
        .map(|t| call_id(&t.msg))
        .collect()
}

fn missing<'a>(want: &'a BTreeSet<String>, got: &BTreeSet<String>) -> Vec<&'a String> {
    want.iter().filter(|c| !got.contains(*c)).collect()
}

fn changes_summary(h: &Harness) -> Vec<(String, String)> {
    h.state_changes().into_iter().map(|c| (c.backend, c.state)).collect()
}

fn pair(b: &str, s: &str) -> (String, String) {
    (b.to_string(), s.to_string())
}

// ------------------------------------------------------------------------------------------------ PBX killed mid-call

/// Injected: SIGKILL of the preferred PBX (its SIPp process group) while it holds 100 confirmed calls and a
/// second caller places new calls at 50/s. Checked: the kill is detected (the `state=down` line) within 1 s;
/// all 100 held calls end with the caller's BYE answered 200 by the standby PBX, which never saw their INVITE
/// (their Request-URI still names the dead PBX); all 250 new calls complete; 0 failed anywhere.
fn pbx_failure_mid_call(name: &str, n: u8, tp: Tp) {
    const HELD: u64 = 100;
    const BURST: u64 = 250;
    let mut h = Harness::new(name, n);
    let pbx1 = h.start_sipp(sipp_pbx(&h, "pbx1", tp, PBX1_PORT));
    let pbx2 = h.start_sipp(sipp_pbx(&h, "pbx2", tp, PBX2_PORT));
    h.start_sipfront(&two_pbx_config(&h, tp, KILL_TIMEOUT));

    // 100 calls at 100/s, each held 8 s: all on pbx1, all confirmed (pbx1 got their ACKs) before the kill.
    let held = h.start_sipp(caller(&h, "held", tp, UAC_PORT, HELD, 100, 8000));
    poll_until("pbx1 confirming the 100 held calls (100 ACKs)", Duration::from_secs(6), || {
        pbx1.received_count("ACK") >= HELD as usize
    });
    // New calls at 50/s (held 2 s: a BYE is never in flight while the dead PBX is still believed up), a few of
    // them on pbx1 before the kill, the rest during and after it.
    let burst = h.start_sipp(caller(&h, "burst", tp, UAC2_PORT, BURST, 50, 2000));
    poll_until("the new calls reaching pbx1", Duration::from_secs(5), || {
        pbx1.received_count("INVITE") >= HELD as usize + 10
    });
    assert!(h.state_changes().is_empty(), "no backend may change state before the kill: {:?}", changes_summary(&h));

    let killed = h.kill_sipp(&pbx1);
    let down = h.wait_state_change("pbx1", "down", 1, killed + Duration::from_secs(10));
    let detection = down.map(|d| d - killed);
    eprintln!("{name}: pbx1 killed; down logged after {detection:?}");

    let held = h.wait_sipp(held);
    let burst = h.wait_sipp(burst);
    let t = Instant::now();
    let pbx2 = h.stop_sipp(pbx2, Duration::from_secs(5));
    eprintln!("{name}: held ran {:?}, burst ran {:?}, pbx2 stopped in {:?}", held.elapsed, burst.elapsed, t.elapsed());
    let pbx1_trace = pbx1.trace_now();

    let detection =
        detection.unwrap_or_else(|| panic!("sipfront never logged pbx1 going down:\n{}", h.front_log_text()));
    assert!(
        detection <= DETECTION_BUDGET,
        "pbx1 declared down {detection:?} after the kill (budget {DETECTION_BUDGET:?})"
    );
    // No lost call: every caller's call succeeded.
    held.assert_ok(HELD);
    burst.assert_ok(BURST);

    // The held calls: INVITE and ACK at pbx1 before the kill, BYE at pbx2 after it (with pbx1's Contact as its
    // Request-URI), every BYE answered 200 by pbx2, no INVITE of theirs at pbx2.
    let held_ids = calls_placed(&held);
    assert_eq!(held_ids.len(), HELD as usize);
    let at_pbx1 = requests_in(&pbx1_trace, "ACK");
    assert!(
        missing(&held_ids, &at_pbx1).is_empty(),
        "held calls never confirmed at pbx1: {:?}",
        missing(&held_ids, &at_pbx1)
    );
    let byes_at_pbx2 = requests_in(&pbx2.trace, "BYE");
    let ok_from_pbx2 = answered(&pbx2.trace, "BYE", 200);
    assert!(
        missing(&held_ids, &byes_at_pbx2).is_empty(),
        "held calls whose BYE did not reach pbx2: {:?}",
        missing(&held_ids, &byes_at_pbx2)
    );
    assert!(
        missing(&held_ids, &ok_from_pbx2).is_empty(),
        "held calls whose BYE pbx2 did not answer 200: {:?}",
        missing(&held_ids, &ok_from_pbx2)
    );
    let invites_at_pbx2 = requests_in(&pbx2.trace, "INVITE");
    assert!(held_ids.iter().all(|c| !invites_at_pbx2.contains(c)), "a held call's INVITE reached pbx2");
    let pbx1_uri = format!("sip:{}", h.pbx(PBX1_PORT));
    for t in pbx2.trace.iter().filter(|t| !t.sent && t.msg.method() == Some("BYE")) {
        if held_ids.contains(&call_id(&t.msg)) {
            let ruri = t.msg.request_uri().unwrap_or("");
            assert!(ruri.starts_with(&pbx1_uri), "a re-homed BYE keeps its Request-URI ({pbx1_uri}...): {ruri}");
        }
    }
    assert_eq!(pbx2.failed, Some(0), "pbx2 failed calls:\n{}", pbx2.errors);

    // The new calls: each INVITEd at pbx1 (before the kill, or in flight at it) or at pbx2, all ended.
    let burst_ids = calls_placed(&burst);
    let burst_pbx1: BTreeSet<String> = requests_in(&pbx1_trace, "INVITE").intersection(&burst_ids).cloned().collect();
    let burst_pbx2: BTreeSet<String> = invites_at_pbx2.intersection(&burst_ids).cloned().collect();
    assert!(!burst_pbx1.is_empty() && !burst_pbx2.is_empty(), "new calls went to both PBXs");
    assert!(
        missing(&burst_ids, &burst_pbx1.union(&burst_pbx2).cloned().collect()).is_empty(),
        "every new call reached a PBX"
    );

    assert_eq!(changes_summary(&h), [pair("pbx1", "down")], "the only state change is pbx1 going down");
    assert!(h.sipfront_alive(), "sipfront died");
    eprintln!(
        "{name}: detection {:.0} ms; {HELD} held calls re-homed to pbx2; {BURST} new calls ({} at pbx1, {} at pbx2), \
         0 failed",
        detection.as_secs_f64() * 1e3,
        burst_pbx1.len(),
        burst_pbx2.len()
    );
}

#[test]
fn pbx_failure_mid_call_udp() {
    pbx_failure_mid_call("pbx_failure_mid_call_udp", 80, Tp::Udp);
}

#[test]
fn pbx_failure_mid_call_tcp() {
    pbx_failure_mid_call("pbx_failure_mid_call_tcp", 81, Tp::Tcp);
}

// ------------------------------------------------------------------------------------------------ recovery

/// Injected: SIGKILL of the preferred PBX holding 20 calls, then the PBX restarted on the same address.
/// Checked: `state=down`, then `state=up` after `up_after` probes; 10 new calls placed after that all go to the
/// restarted PBX; the 20 held calls (re-homed to pbx2 while pbx1 was down) stay there: their BYEs reach pbx2,
/// none reaches the restarted pbx1; 0 failed anywhere.
fn recovery(name: &str, n: u8, tp: Tp) {
    const HELD: u64 = 20;
    const FRESH: u64 = 10;
    let mut h = Harness::new(name, n);
    let pbx1 = h.start_sipp(sipp_pbx(&h, "pbx1", tp, PBX1_PORT));
    let pbx2 = h.start_sipp(sipp_pbx(&h, "pbx2", tp, PBX2_PORT));
    h.start_sipfront(&two_pbx_config(&h, tp, KILL_TIMEOUT));

    // Held 8 s: the kill, the restart and the new calls all happen before the first BYE.
    let held = h.start_sipp(caller(&h, "held", tp, UAC_PORT, HELD, 50, 8000));
    poll_until("pbx1 confirming the held calls", Duration::from_secs(6), || {
        pbx1.received_count("ACK") >= HELD as usize
    });

    let killed = h.kill_sipp(&pbx1);
    let down = h.wait_state_change("pbx1", "down", 1, killed + Duration::from_secs(10));
    assert!(down.is_some(), "sipfront never logged pbx1 going down:\n{}", h.front_log_text());

    let pbx1b = h.start_sipp(sipp_pbx(&h, "pbx1-restarted", tp, PBX1_PORT));
    let restarted = Instant::now();
    let up = h.wait_state_change("pbx1", "up", 1, restarted + Duration::from_secs(10));
    let up_after = up.map(|u| u - restarted);
    eprintln!("{name}: down after {:?}, up {up_after:?} after the restart", down.map(|d| d - killed));
    let up_after = up_after.unwrap_or_else(|| panic!("sipfront never logged pbx1 up again:\n{}", h.front_log_text()));
    // up_after probes answered: at most (up_after + 1) intervals, plus slack for a loaded machine.
    assert!(up_after <= Duration::from_millis(INTERVAL_MS * (UP_AFTER as u64 + 1) + 500), "up after {up_after:?}");

    let fresh = h.run_sipp(caller(&h, "fresh", tp, UAC2_PORT, FRESH, 20, 0));
    let early_byes = held.trace_now().iter().filter(|t| t.sent && t.msg.method() == Some("BYE")).count();
    assert_eq!(early_byes, 0, "the held calls hung up before the recovery was over: raise their hold time");
    fresh.assert_ok(FRESH);
    let held = h.wait_sipp(held);
    held.assert_ok(HELD);
    let pbx1b = h.stop_sipp(pbx1b, Duration::from_secs(5));
    let pbx2 = h.stop_sipp(pbx2, Duration::from_secs(5));

    let (held_ids, fresh_ids) = (calls_placed(&held), calls_placed(&fresh));
    let invites_1b = requests_in(&pbx1b.trace, "INVITE");
    assert!(
        missing(&fresh_ids, &invites_1b).is_empty(),
        "new calls after the recovery not at pbx1: {:?}",
        missing(&fresh_ids, &invites_1b)
    );
    assert!(requests_in(&pbx2.trace, "INVITE").is_disjoint(&fresh_ids), "new calls after the recovery reached pbx2");
    let byes_2 = requests_in(&pbx2.trace, "BYE");
    assert!(
        missing(&held_ids, &byes_2).is_empty(),
        "re-homed calls whose BYE missed pbx2: {:?}",
        missing(&held_ids, &byes_2)
    );
    assert!(requests_in(&pbx1b.trace, "BYE").is_disjoint(&held_ids), "a re-homed call's BYE went back to pbx1");
    assert_eq!(pbx1b.failed, Some(0), "pbx1 (restarted) failed calls:\n{}", pbx1b.errors);
    assert_eq!(pbx2.failed, Some(0), "pbx2 failed calls:\n{}", pbx2.errors);
    assert_eq!(changes_summary(&h), [pair("pbx1", "down"), pair("pbx1", "up")]);
}

#[test]
fn recovery_udp() {
    recovery("recovery_udp", 82, Tp::Udp);
}

#[test]
fn recovery_tcp() {
    recovery("recovery_tcp", 83, Tp::Tcp);
}

// ------------------------------------------------------------------------------------------------ flapping

/// What the flapping PBX noted while it answered.
#[derive(Default, Debug)]
struct FlapNotes {
    /// Index of the first probe that arrived after sipfront had logged the state change.
    down_seen_at: Option<usize>,
    up_seen_at: Option<usize>,
}

/// Probes 0..=30 alternate an answer with a failure (`fail`: 503, or `None` for silence); 31 and 32 are answered
/// 200 (a silent probe's timeout lands late); from 33 every probe gets 503 until sipfront has logged pbx1 down,
/// then 200 until it has logged it up.
const FLAP_LAST: usize = 30;
const FAIL_FROM: usize = FLAP_LAST + 3;

fn flapping(name: &str, n: u8, tp: Tp, fail: Option<u16>) {
    let mut h = Harness::new(name, n);
    let notes = Arc::new(Mutex::new(FlapNotes::default()));
    let log: Arc<Mutex<Option<std::path::PathBuf>>> = Arc::default();
    let (notes2, log2) = (notes.clone(), log.clone());
    let seen = move |state: &str| {
        let path = log2.lock().expect("lock").clone();
        let text = path.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        state_changes(&text).iter().any(|c| c.backend == "pbx1" && c.state == state)
    };
    let policy: ProbePolicy = Box::new(move |i, _| {
        if i <= FLAP_LAST {
            return if i % 2 == 0 { Some(200) } else { fail };
        }
        if i < FAIL_FROM {
            return Some(200);
        }
        let mut notes = notes2.lock().expect("lock");
        if notes.down_seen_at.is_none() {
            if !seen("down") {
                return Some(503);
            }
            notes.down_seen_at = Some(i);
        }
        if notes.up_seen_at.is_none() && seen("up") {
            notes.up_seen_at = Some(i);
        }
        Some(200)
    });
    let pbx = RustPbx::start(h.pbx(PBX1_PORT), tp, h.sipfront(), policy);
    let pbx2 = RustPbx::healthy(h.pbx(PBX2_PORT), tp, h.sipfront());
    h.start_sipfront(
        &FrontConfig::new()
            .backend("pbx1", pbx.addr, tp)
            .backend("pbx2", pbx2.addr, tp)
            .health(INTERVAL, "500ms", DOWN_AFTER, UP_AFTER),
    );
    *log.lock().expect("lock") = h.front_log_path();

    // The flapping phase: 31 probes, half of them failed, never three in a row.
    poll_until("31 probes", Duration::from_millis(INTERVAL_MS * 31 + 5000), || pbx.probes().len() > FLAP_LAST + 1);
    assert!(
        h.state_changes().is_empty(),
        "a backend answering every other probe must not flip (down_after {DOWN_AFTER}): {:?}",
        changes_summary(&h)
    );
    // Then steady failures: down at the third, and steady answers: up at the second.
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(h.wait_state_change("pbx1", "up", 1, deadline).is_some(), "pbx1 never went down and up again");
    // The PBX notes the line at the next probe.
    poll_until("the probe after pbx1 came up", Duration::from_secs(3), || {
        notes.lock().expect("lock").up_seen_at.is_some()
    });
    let probes = pbx.probes();
    let notes = notes.lock().expect("lock");
    let down_at = notes.down_seen_at.expect("down seen");
    let up_at = notes.up_seen_at.expect("up seen");
    assert_eq!(down_at, FAIL_FROM + DOWN_AFTER as usize, "pbx1 went down after {} failed probes", down_at - FAIL_FROM);
    assert_eq!(up_at, down_at + UP_AFTER as usize, "pbx1 came up after {} good probes", up_at - down_at);
    assert_eq!(changes_summary(&h), [pair("pbx1", "down"), pair("pbx1", "up")]);

    // What a probe looks like: OPTIONS to the backend's address, Max-Forwards 70, sipfront's Via alone (over UDP
    // from sipfront's probe socket for this backend: sipfront's address, a port of its own).
    let p = &probes[0].msg;
    let ruri = p.request_uri().unwrap_or("");
    assert!(ruri.starts_with(&format!("sip:{}", pbx.addr)), "probe Request-URI {ruri}");
    assert_eq!(p.header("Max-Forwards"), Some("70"), "probe: {p:#?}");
    let vias = p.header_values("Via");
    let via = match tp {
        Tp::Tcp => format!("SIP/2.0/TCP {};branch=z9hG4bK", h.sipfront()),
        Tp::Udp => format!("SIP/2.0/UDP {}:", h.sipfront().ip()),
    };
    assert!(vias.len() == 1 && vias[0].starts_with(&via), "probe Via {vias:?}, want {via}...");
    assert!(vias[0].contains(";branch=z9hG4bK"), "probe Via {vias:?}");
    assert_eq!(p.cseq_method(), Some("OPTIONS"));
    // Every interval, on the whole: the median gap between probes is close to it.
    let mut gaps: Vec<u128> = probes.windows(2).map(|w| (w[1].at - w[0].at).as_millis()).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!((150..=300).contains(&median), "median gap between probes {median} ms (interval {INTERVAL})");
    let branches: HashSet<String> = probes.iter().map(|p| p.msg.header_values("Via")[0].clone()).collect();
    assert_eq!(branches.len(), probes.len(), "every probe is a new transaction");
    assert!(pbx2.probes().len() >= probes.len() - 2, "pbx2 is probed as well");
    eprintln!(
        "{name}: {} probes; flapping ignored; down at failure {DOWN_AFTER}, up at success {UP_AFTER}",
        probes.len()
    );
}

#[test]
fn flapping_backend_never_flips_udp() {
    // Alternately 200 and 503.
    flapping("flapping_backend_never_flips_udp", 84, Tp::Udp, Some(503));
}

#[test]
fn flapping_backend_never_flips_tcp() {
    // Alternately 200 and silence (each silent probe times out).
    flapping("flapping_backend_never_flips_tcp", 85, Tp::Tcp, None);
}

// ------------------------------------------------------------------------------------------------ detection times

/// Injected: ten SIGKILLs of the preferred PBX, each followed by a restart on the same address once the kill
/// was detected. Checked: every kill is logged `state=down` within the budget and every restart `state=up`;
/// pbx2 never changes state. Prints min / median / max.
fn detection_times(name: &str, n: u8, tp: Tp, probe_timeout: &str, budget: Duration) -> Vec<Duration> {
    const KILLS: usize = 10;
    let mut h = Harness::new(name, n);
    let mut pbx1 = h.start_sipp(sipp_pbx(&h, "pbx1-0", tp, PBX1_PORT));
    let _pbx2 = h.start_sipp(sipp_pbx(&h, "pbx2", tp, PBX2_PORT));
    h.start_sipfront(&two_pbx_config(&h, tp, probe_timeout));
    let mut times = Vec::new();
    for i in 1..=KILLS {
        // pbx1 has answered a probe since it (re)started: it is really up.
        poll_until("a probe answered by pbx1", Duration::from_secs(5), || pbx1.received_count("OPTIONS") > 0);
        // The `state=up` line follows a probe at once: kill at a spread of phases within the probe interval
        // (0, 70, 140, 10, 80 ... ms after it), or every kill would land just after a probe.
        std::thread::sleep(Duration::from_millis((i as u64 - 1) * 70 % INTERVAL_MS));
        let killed = h.kill_sipp(&pbx1);
        let down = h.wait_state_change("pbx1", "down", i, killed + Duration::from_secs(10));
        let down = down.unwrap_or_else(|| panic!("kill {i}: no `state=down` for pbx1:\n{}", h.front_log_text()));
        times.push(down - killed);
        pbx1 = h.start_sipp(sipp_pbx(&h, &format!("pbx1-{i}"), tp, PBX1_PORT));
        let up = h.wait_state_change("pbx1", "up", i, Instant::now() + Duration::from_secs(10));
        assert!(up.is_some(), "restart {i}: no `state=up` for pbx1:\n{}", h.front_log_text());
    }
    let mut sorted = times.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "{name}: detection over {KILLS} kills (interval {INTERVAL}, timeout {probe_timeout}, down_after {DOWN_AFTER}): \
         min {:.0} ms, median {:.0} ms, max {:.0} ms; all: {:?}",
        ms(sorted[0]),
        ms(sorted[KILLS / 2]),
        ms(sorted[KILLS - 1]),
        times.iter().map(|d| ms(*d).round() as u64).collect::<Vec<_>>()
    );
    let changes = h.state_changes();
    assert!(changes.iter().all(|c| c.backend == "pbx1"), "pbx2 changed state: {:?}", changes_summary(&h));
    assert_eq!(changes.len(), 2 * KILLS, "one down and one up per kill: {:?}", changes_summary(&h));
    assert!(
        sorted[KILLS - 1] <= budget,
        "slowest detection {:?} over the budget {budget:?}: {times:?}",
        sorted[KILLS - 1]
    );
    assert!(h.sipfront_alive());
    times
}

#[test]
fn detection_times_udp() {
    detection_times("detection_times_udp", 86, Tp::Udp, KILL_TIMEOUT, DETECTION_BUDGET);
}

#[test]
fn detection_times_tcp() {
    detection_times("detection_times_tcp", 87, Tp::Tcp, KILL_TIMEOUT, DETECTION_BUDGET);
}

/// The spec's own probe timeout (500 ms) on UDP: a killed PBX process makes the kernel answer the probe with
/// port unreachable, so detection does not wait for the timeout and stays within the same 1 s budget.
#[test]
fn detection_times_udp_timeout_500ms() {
    detection_times("detection_times_udp_timeout_500ms", 88, Tp::Udp, "500ms", DETECTION_BUDGET);
}

// ------------------------------------------------------------------------------------------------ BYE in flight

fn header_lines(name: &str, values: &[String]) -> String {
    values.iter().map(|v| format!("{name}: {v}\r\n")).collect()
}

/// Injected: the preferred PBX hangs (answers nothing more, probes included; its socket or connection stays open)
/// the moment the caller's BYE reaches it. Checked: the BYE in flight is not left to timer F (32 s): once pbx1 is
/// declared down sipfront sends it to pbx2, Request-URI unchanged, pbx2's 200 reaches the caller and the call
/// completes; pbx1 going down is the only state change.
fn bye_in_flight(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let hung = Arc::new(AtomicBool::new(false));
    let hung2 = hung.clone();
    let pbx1 = RustPbx::start(
        h.pbx(PBX1_PORT),
        tp,
        h.sipfront(),
        Box::new(move |_, _| (!hung2.load(Ordering::Relaxed)).then_some(200)),
    );
    let pbx2 = RustPbx::healthy(h.pbx(PBX2_PORT), tp, h.sipfront());
    h.start_sipfront(&two_pbx_config(&h, tp, KILL_TIMEOUT));
    let uac = h.start_sipp(SippSpec::uac(&h, "uac", "uac.xml", tp).arg("-d").arg("200"));

    let wait = Duration::from_secs(5);
    let (inv, reply) = pbx1.expect(wait, "INVITE");
    let answer = format!(
        "{}Contact: <sip:{};transport={}>\r\n",
        header_lines("Record-Route", &inv.header_values("Record-Route")),
        pbx1.addr,
        tp.lower()
    );
    reply.send(response_to(&inv, 180, "Ringing", "pbx1", &answer).as_bytes());
    reply.send(response_to(&inv, 200, "OK", "pbx1", &answer).as_bytes());
    let (ack, _) = pbx1.expect(wait, "ACK");
    assert_eq!(ack.method(), Some("ACK"), "{ack:#?}");
    let (bye, _) = pbx1.expect(wait, "BYE");
    hung.store(true, Ordering::Relaxed);
    let hung_at = Instant::now();
    assert_eq!(bye.method(), Some("BYE"), "{bye:#?}");

    let (moved, reply2) = pbx2.expect(wait, "the BYE, moved from the hung pbx1");
    let moved_after = hung_at.elapsed();
    assert_eq!((moved.method(), moved.header("Call-ID")), (Some("BYE"), bye.header("Call-ID")), "{moved:#?}");
    assert_eq!(moved.request_uri(), bye.request_uri(), "the Request-URI stays pbx1's Contact");
    reply2.send(response_to(&moved, 200, "OK", "", "").as_bytes());
    let uac = h.wait_sipp(uac);
    uac.assert_ok(1);
    assert_eq!(changes_summary(&h), [pair("pbx1", "down")]);
    assert!(
        moved_after <= DETECTION_BUDGET + Duration::from_millis(200),
        "the BYE reached pbx2 {moved_after:?} after pbx1 hung"
    );
    eprintln!("{name}: BYE moved to pbx2 {:.0} ms after pbx1 hung", moved_after.as_secs_f64() * 1e3);
}

#[test]
fn bye_in_flight_moves_to_standby_udp() {
    bye_in_flight("bye_in_flight_moves_to_standby_udp", 89, Tp::Udp);
}

#[test]
fn bye_in_flight_moves_to_standby_tcp() {
    bye_in_flight("bye_in_flight_moves_to_standby_tcp", 97, Tp::Tcp);
}

// ------------------------------------------------------------------------------------------------ dialog cap

/// Injected: more calls than `[dialogs] max = 5`. Checked: with 5 calls up, a 6th INVITE gets sipfront's own 503
/// with Retry-After (never reaching the PBX, not counted against the PBX's health); the 5 calls complete, and
/// once they have ended a new call goes through.
#[test]
fn dialog_cap_gets_503_with_retry_after() {
    let mut h = Harness::new("dialog_cap_gets_503_with_retry_after", 98);
    let pbx = h.start_sipp(sipp_pbx(&h, "pbx1", Tp::Udp, PBX1_PORT));
    h.start_sipfront(
        &FrontConfig::new()
            .backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp)
            .health(INTERVAL, "500ms", DOWN_AFTER, UP_AFTER)
            .section("[dialogs]\nmax = 5"),
    );
    let held = h.start_sipp(caller(&h, "held", Tp::Udp, UAC_PORT, 5, 50, 3000));
    poll_until("5 calls up at the PBX", Duration::from_secs(5), || pbx.received_count("ACK") >= 5);

    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:service@{}", h.sipfront());
    c.send(request("INVITE", &ruri, c.local, Tp::Udp, "over-cap", "").as_bytes(), h.sipfront());
    let resp = loop {
        let m = c.recv_msg(Duration::from_secs(3)).expect("no answer to the INVITE over the cap");
        if m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(resp.status(), Some(503), "{resp:#?}");
    assert!(resp.header("Retry-After").is_some_and(|v| !v.is_empty()), "503 needs a Retry-After: {resp:#?}");
    let to = resp.header("To").unwrap_or("").to_string();
    let ack =
        request("ACK", &ruri, c.local, Tp::Udp, "over-cap", "").replace(&format!("To: <{ruri}>"), &format!("To: {to}"));
    c.send(ack.as_bytes(), h.sipfront());

    let held = h.wait_sipp(held);
    held.assert_ok(5);
    let after = h.run_sipp(caller(&h, "after", Tp::Udp, UAC2_PORT, 1, 1, 0));
    after.assert_ok(1);
    let pbx = h.stop_sipp(pbx, Duration::from_secs(5));
    assert!(pbx.received().all(|m| m.header("Call-ID") != Some("over-cap")), "the INVITE over the cap reached the PBX");
    assert_eq!(pbx.failed, Some(0));
    assert!(h.state_changes().is_empty(), "sipfront's own 503 is not the PBX's failure: {:?}", changes_summary(&h));
}

// ------------------------------------------------------------------------------------------------ CANCEL, PBX hung

/// Injected: the preferred PBX hangs (answers nothing more) with an INVITE pending, and the caller CANCELs:
/// first before any answer, then (the PBX back up) after the PBX's 180. Checked: the CANCEL gets its 200 at
/// once, and the INVITE's 487 comes as soon as pbx1 is declared down, not after timer B or the CANCEL's own
/// 64*T1 (32 s); the cancelled call does not go on to pbx2.
#[test]
fn cancelled_invite_at_hung_pbx_ends_when_it_is_down() {
    cancelled_invite_at_hung_pbx("cancelled_invite_at_hung_pbx_ends_when_it_is_down", 94, false);
}

#[test]
fn cancelled_ringing_invite_at_hung_pbx_ends_when_it_is_down() {
    cancelled_invite_at_hung_pbx("cancelled_ringing_invite_at_hung_pbx_ends_when_it_is_down", 79, true);
}

/// One round on a fresh node and PBXs (a second round on the same PBX would meet the first one's leftovers).
fn cancelled_invite_at_hung_pbx(name: &str, n: u8, ringing: bool) {
    let mut h = Harness::new(name, n);
    let hung = Arc::new(AtomicBool::new(false));
    let hung2 = hung.clone();
    let pbx1 = RustPbx::start(
        h.pbx(PBX1_PORT),
        Tp::Udp,
        h.sipfront(),
        Box::new(move |_, _| (!hung2.load(Ordering::Relaxed)).then_some(200)),
    );
    let pbx2 = RustPbx::healthy(h.pbx(PBX2_PORT), Tp::Udp, h.sipfront());
    h.start_sipfront(&two_pbx_config(&h, Tp::Udp, KILL_TIMEOUT));
    let c = UdpPeer::bind(h.front_ip());
    let ruri = format!("sip:service@{}", h.sipfront());
    let wait = Duration::from_secs(3);

    {
        let round = 1;
        let cid = format!("cancel-{round}");
        c.send(request("INVITE", &ruri, c.local, Tp::Udp, &cid, "").as_bytes(), h.sipfront());
        let (inv, reply) = pbx1.expect(wait, "INVITE");
        if ringing {
            reply.send(response_to(&inv, 180, "Ringing", "pbx1", "").as_bytes());
        }
        hung.store(true, Ordering::Relaxed);
        let hung_at = Instant::now();
        let want = if ringing { 180 } else { 100 };
        let mut got = Vec::new();
        while !got.contains(&want) {
            let m = c.recv_msg(wait).unwrap_or_else(|| panic!("round {round}: no {want} (got {got:?})"));
            got.push(m.status().unwrap_or(0));
        }
        c.send(request("CANCEL", &ruri, c.local, Tp::Udp, &cid, "").as_bytes(), h.sipfront());
        let mut finals = Vec::new();
        let deadline = hung_at + DETECTION_BUDGET + Duration::from_millis(1500);
        while !finals.iter().any(|(_, m): &(Duration, String)| m.ends_with(" INVITE")) {
            let Some(m) = c.recv_msg_until(deadline) else { break };
            if m.status().is_some_and(|s| s >= 200) {
                finals.push((hung_at.elapsed(), format!("{} {}", m.status().unwrap(), m.cseq_method().unwrap_or(""))));
            }
        }
        let codes: Vec<&str> = finals.iter().map(|(_, m)| m.as_str()).collect();
        let down = h.state_changes().iter().filter(|c| c.state == "down").count();
        assert_eq!(down, round, "round {round}: pbx1 declared down");
        assert_eq!(
            codes,
            ["200 CANCEL", "487 INVITE"],
            "round {round} (ringing: {ringing}): within {:?} of pbx1 hanging the caller should have 200 for the \
             CANCEL and 487 for the INVITE; got {finals:?}",
            deadline - hung_at
        );
        let to = c.recv_msg(Duration::from_millis(1)).map(|m| m.start);
        assert!(to.is_none(), "nothing more for the caller: {to:?}");
        c.send(request("ACK", &ruri, c.local, Tp::Udp, &cid, "").as_bytes(), h.sipfront());
        // pbx1 back; wait until it is up again.
        hung.store(false, Ordering::Relaxed);
        assert!(h.wait_state_change("pbx1", "up", round, Instant::now() + Duration::from_secs(5)).is_some());
    }
    assert!(pbx2.recv(Duration::from_millis(100)).is_none(), "a cancelled call must not go on to pbx2");
}

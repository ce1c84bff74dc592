//! Interop matrix: real phones (baresip, `tests/shared/baresip.rs`) through the real sipfront binary to a real
//! proxy-shaped PBX (Kamailio as registrar and record-routing proxy with Path, `tests/shared/kamailio.rs` and
//! `tests/interop/kamailio.cfg`). Every scenario runs once per transport of the phone's leg (UDP, TCP, TLS);
//! sipfront reaches Kamailio over UDP.
//!
//! ```text
//!   alice 127.0.2.N:5070 ─┐                          ┌─ Kamailio 127.0.1.N:5080 (registrar, record_route,
//!                         ├─ sipfront 127.0.0.N:5060 ┤   lookup with the Path sipfront added: back through
//!   bob   127.0.3.N:5070 ─┘  (TLS :5061, admin :9090)│   sipfront to the callee's flow: a spiral)
//!   RTP flows phone to phone directly.
//! ```
//!
//! Each call is a spiral through sipfront (phone → sipfront → Kamailio → sipfront → phone), the shape of a real
//! registrar behind a front door. Kamailio record-routes in the main matrix (the dialog's requests spiral too);
//! the `path_only_*` tests run the call scenarios with a Kamailio that does not, as many registrars do (the
//! dialog's requests must go phone → sipfront → phone, sipfront's two Record-Routes being the whole route set).
//!
//! Each scenario asserts at both phones (events, call lists empty within 2 s of the hangup, RTP both ways, the
//! callee's call established, i.e. the ACK reached it, and no final answer retransmitted more than once), at the
//! PBX (what Kamailio logged: the ACK, the BYE and its 200, when it record-routes) and at sipfront
//! (`sipfront_final_responses_total` has no 482, 481 or 408). One more test sends a call into a real loop
//! (Kamailio relays `loop` back to sipfront, addressed to itself, for ever), which must end in 482 (or 483 when
//! Max-Forwards runs out first).
//!
//! Test numbers (tests/common/mod.rs): 200-228. Needs `kamailio`, `baresip-core` (scripts/test.sh installs them).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::baresip::{Phone, PhoneSpec, SipTransport};
use common::front_tls::front_tls;
use common::kamailio::Kamailio;
use common::*;

/// Deadline for anything that must happen (a call set up, an event, a line in the PBX's log).
const WAIT: Duration = Duration::from_secs(10);
/// Both phones' call lists must be empty this soon after a hangup.
const HANGUP: Duration = Duration::from_secs(2);
/// A final answer sent at most this often per transaction: the first send and at most one retransmission (T1 is
/// 500 ms; an ACK that came back misses it only under heavy load).
const MAX_SENDS: usize = 2;

/// How Kamailio routes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pbx {
    /// It record-routes: the ACK, BYE and re-INVITEs pass it too (phone → sipfront → Kamailio → sipfront →
    /// phone, every time).
    RecordRoute,
    /// It routes the initial INVITE only (by the callee's Path), as many registrars do: the dialog's requests
    /// go phone → sipfront → phone (sipfront's two Record-Routes, one per pass, are the whole route set).
    PathOnly,
}

impl Pbx {
    fn label(self) -> &'static str {
        match self {
            Pbx::RecordRoute => "rr",
            Pbx::PathOnly => "path",
        }
    }
}

/// Everything one test runs. Fields drop in order: phones, then Kamailio, then the harness (sipfront, the dir).
struct Rig {
    alice: Phone,
    bob: Phone,
    pbx: Kamailio,
    mode: Pbx,
    /// The admin listener (`/metrics`).
    admin: String,
    /// The phones' domain: sipfront's advertised address.
    domain: String,
    h: Harness,
}

impl Rig {
    /// sipfront on 127.0.0.N in front of Kamailio on 127.0.1.N (routing as `mode` says), alice (registering
    /// every `alice_regint` s) and bob registered through it over `tp`. The test is named `scenario_tp_mode`.
    fn new(scenario: &str, n: u8, tp: SipTransport, mode: Pbx, alice_regint: u32) -> Rig {
        let mut h = Harness::new(&format!("kam_{scenario}_{}_{}", tp.lower(), mode.label()), n);
        let front_ip = h.front_ip();
        let admin = format!("{front_ip}:9090");
        let front_uri = format!("sip:{}", h.sipfront());
        let pbx = Kamailio::start(&h.dir, h.pbx(PBX1_PORT), &front_uri, mode == Pbx::RecordRoute);
        let mut cfg = FrontConfig::new()
            .backend("kamailio", h.pbx(PBX1_PORT), Tp::Udp)
            .health("1s", "500ms", 3, 1)
            .section(&format!("[admin]\nlisten = \"{admin}\""));
        let mut outbound = h.sipfront();
        let mut ca = None;
        if tp == SipTransport::Tls {
            let tls = SocketAddr::new(IpAddr::V4(front_ip), 5061);
            let (ca_file, section) = front_tls(&h.dir, front_ip);
            cfg = cfg.listen(&format!("tls:{tls}")).section(&section);
            outbound = tls;
            ca = Some(ca_file);
        }
        h.start_sipfront(&cfg);
        let domain = front_ip.to_string();
        let phone = |name: &str, ip: Ipv4Addr, regint: u32| {
            let mut spec = PhoneSpec::new(name, name, &domain, ip).transport(tp).outbound(outbound).regint(regint);
            if let Some(ca) = &ca {
                spec = spec.ca_file(ca);
            }
            Phone::start(spec, &h.dir)
        };
        let mut alice = phone("alice", Ipv4Addr::new(127, 0, 2, n), alice_regint);
        let mut bob = phone("bob", Ipv4Addr::new(127, 0, 3, n), 600);
        alice.wait_registered(WAIT);
        bob.wait_registered(WAIT);
        Rig { alice, bob, pbx, mode, admin, domain, h }
    }

    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain)
    }

    /// The sum of the `sipfront_final_responses_total` samples with this code (all origins).
    fn final_responses(&self, code: u16) -> f64 {
        sample_sum(&final_response_lines(&metrics_text(&self.admin), Some(code)))
    }

    /// Called right after a hangup: both phones' call lists are empty within [`HANGUP`] of now.
    fn assert_idle_soon(&mut self) {
        let deadline = Instant::now() + HANGUP;
        self.alice.wait_no_calls(deadline.saturating_duration_since(Instant::now())).unwrap();
        self.bob.wait_no_calls(deadline.saturating_duration_since(Instant::now())).unwrap();
    }

    /// sipfront sent or relayed no 482, 481 or 408, and is still running.
    fn assert_no_proxy_errors(&mut self) {
        assert!(self.h.sipfront_alive(), "sipfront died:\n{}", self.h.front_log_text());
        for code in [482, 481, 408] {
            let n = self.final_responses(code);
            assert_eq!(
                n,
                0.0,
                "sipfront counted {n} final {code} responses; its warnings:\n{:#?}",
                self.h.front_log_problems()
            );
        }
    }

    /// alice calls bob, bob answers, both see the call established and RTP both ways; the Call-ID.
    fn establish(&mut self) -> String {
        let bob_uri = self.uri("bob");
        self.alice.dial(&bob_uri);
        let incoming = self.bob.wait_event("CALL_INCOMING", WAIT);
        self.bob.accept();
        let est = self.alice.wait_event("CALL_ESTABLISHED", WAIT);
        assert_eq!(est.call, incoming.call, "one call, one Call-ID");
        // The callee's session is established only when the ACK came (re's sipsess).
        if self.bob.try_wait_event("CALL_ESTABLISHED", WAIT).is_none() {
            let cid = &est.call;
            let oks = self.bob.sip_trace().iter().filter(|t| t.sent && t.msg.status() == Some(200)).count();
            let at_pbx: Vec<String> = self.pbx.call_lines(cid).into_iter().map(|l| l.line).collect();
            panic!(
                "bob's call was never established: no ACK reached him within {WAIT:?} (he sent 200 OK {oks} \
                 times; Kamailio, {:?}, logged for this call:\n{}",
                self.mode,
                at_pbx.join("\n")
            );
        }
        let zero = Default::default();
        self.alice.wait_rtp(WAIT, zero);
        self.bob.wait_rtp(WAIT, zero);
        if self.mode == Pbx::RecordRoute {
            self.pbx.expect(WAIT, "the ACK of the 200", &est.call, |l| l.is_request("ACK", &est.call));
        }
        est.call
    }

    /// After the hangup by `by_alice`'s side: both call lists empty within 2 s, the BYE went through Kamailio
    /// and was answered 200 to the phone that sent it, the other phone got it (and only that one), every final
    /// answer of the callee was sent at most twice, and sipfront counted no proxy errors.
    fn assert_hung_up(&mut self, cid: &str, by_alice: bool) {
        self.assert_idle_soon();
        let (closer, other) =
            if by_alice { (&mut self.alice, &mut self.bob) } else { (&mut self.bob, &mut self.alice) };
        let closed = other.wait_event("CALL_CLOSED", WAIT);
        assert_eq!(closed.call, cid);
        closer.wait_event("CALL_CLOSED", WAIT);
        if self.mode == Pbx::RecordRoute {
            self.pbx.expect(WAIT, "the BYE", cid, |l| l.is_request("BYE", cid));
            self.pbx.expect(WAIT, "the 200 to the BYE", cid, |l| l.is_reply(200, "BYE", cid));
        }
        let (closer, other) = if by_alice { (&self.alice, &self.bob) } else { (&self.bob, &self.alice) };
        let got = |p: &Phone, sent: bool| {
            p.sip_trace()
                .into_iter()
                .filter(|t| t.sent == sent && t.msg.header("Call-ID") == Some(cid))
                .collect::<Vec<_>>()
        };
        let bye_ok =
            got(closer, false).iter().any(|t| t.msg.status() == Some(200) && t.msg.cseq_method() == Some("BYE"));
        assert!(bye_ok, "{} got no 200 to its BYE", closer.name());
        assert!(
            !got(closer, false).iter().any(|t| t.msg.method() == Some("BYE")),
            "{}'s own BYE came back to it",
            closer.name()
        );
        assert!(got(other, false).iter().any(|t| t.msg.method() == Some("BYE")), "{} got no BYE", other.name());
        assert_sent_at_most_twice(&self.bob, cid);
        assert_sent_at_most_twice(&self.alice, cid);
        self.assert_no_proxy_errors();
    }
}

/// Every final answer `phone` sent to an INVITE of this call went out at most twice: the ACK reached it (a
/// phone retransmits a final answer every T1, doubling, until the ACK comes).
fn assert_sent_at_most_twice(phone: &Phone, cid: &str) {
    let mut per_answer: std::collections::BTreeMap<String, usize> = Default::default();
    for t in phone.sip_trace() {
        let final_answer = t.msg.status().is_some_and(|s| s >= 200);
        if t.sent && final_answer && t.msg.cseq_method() == Some("INVITE") && t.msg.header("Call-ID") == Some(cid) {
            let key = format!("{} {}", t.msg.header("CSeq").unwrap_or_default(), t.msg.start);
            *per_answer.entry(key).or_default() += 1;
        }
    }
    for (answer, n) in per_answer {
        assert!(n <= MAX_SENDS, "{} sent `{answer}` {n} times: no ACK reached it", phone.name());
    }
}

// ------------------------------------------------------------------------------------------------ scenarios

/// Register (both phones at setup), refresh (alice every 3 s), a call to the refreshed binding, unregister (then
/// a call to alice gets Kamailio's 404).
fn register_refresh_unregister(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("register", n, tp, pbx, 3);
    let front = r.h.sipfront().to_string();
    // Kamailio got both REGISTERs from sipfront, each with sipfront's Path (it routes back through sipfront).
    for user in ["alice", "bob"] {
        let reg = r.pbx.expect(WAIT, "a REGISTER", "", |l| {
            l.request && l.method() == "REGISTER" && l.field("contact").is_some_and(|c| c.contains(&format!("{user}-")))
        });
        assert_eq!(reg.field("src"), Some(front.as_str()), "{user}'s REGISTER came from sipfront: {}", reg.line);
    }
    // The refresh: a second REGISTER_OK at alice, a second REGISTER at Kamailio.
    r.alice.wait_event("REGISTER_OK", Duration::from_secs(15));
    let alice_regs = |k: &Kamailio| {
        k.lines().into_iter().filter(|l| l.request && l.method() == "REGISTER" && l.line.contains("alice-")).count()
    };
    assert!(alice_regs(&r.pbx) >= 2, "Kamailio saw no refresh:\n{}", r.pbx.log_text());
    // The refreshed binding reaches alice: bob calls, alice rings, bob gives up (CANCEL).
    let alice_uri = r.uri("alice");
    r.bob.dial(&alice_uri);
    let ring = r.alice.wait_event("CALL_INCOMING", WAIT);
    r.bob.wait_event("CALL_RINGING", WAIT);
    r.bob.hangup();
    r.assert_idle_soon();
    r.alice.wait_event("CALL_CLOSED", WAIT);
    r.bob.wait_event("CALL_CLOSED", WAIT);
    r.pbx.expect(WAIT, "the CANCEL", &ring.call, |l| l.is_request("CANCEL", &ring.call));
    assert_sent_at_most_twice(&r.alice, &ring.call);
    // Unregister: a REGISTER with expires 0 at Kamailio, then alice is unknown there.
    r.alice.unregister();
    let gone = |l: &common::kamailio::PbxLine| {
        l.request
            && l.method() == "REGISTER"
            && l.line.contains("alice-")
            && (l.field("expires") == Some("0") || l.field("contact").is_some_and(|c| c.ends_with("expires=0")))
    };
    r.pbx.expect(WAIT, "alice's REGISTER with expires 0", "", gone);
    r.bob.dial(&alice_uri);
    let closed = r.bob.wait_event("CALL_CLOSED", WAIT);
    assert!(closed.param.starts_with("404"), "a call to unregistered alice: {closed:?}");
    r.bob.wait_no_calls(HANGUP).unwrap();
    r.assert_no_proxy_errors();
}

/// A calls B, media both ways, the caller hangs up.
fn caller_hangs_up(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("caller_bye", n, tp, pbx, 600);
    let cid = r.establish();
    r.alice.hangup();
    r.assert_hung_up(&cid, true);
}

/// A calls B, media both ways, the callee hangs up (its BYE spirals through sipfront to alice).
fn callee_hangs_up(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("callee_bye", n, tp, pbx, 600);
    let cid = r.establish();
    r.bob.hangup();
    r.assert_hung_up(&cid, false);
}

/// Hold and resume by the caller (two re-INVITEs through the spiral); media flows again after the resume.
fn hold_and_resume(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("hold", n, tp, pbx, 600);
    let cid = r.establish();
    let answered = |e: &common::baresip::Event| e.kind == "CALL_REMOTE_SDP" && e.param == "answer";
    r.alice.clear_pending();
    r.bob.clear_pending();
    r.alice.hold();
    r.alice.try_wait_event_where(WAIT, answered).expect("alice got the answer to her hold");
    r.bob.wait_event("CALL_REMOTE_SDP", WAIT);
    assert_eq!(r.alice.audio_dir().as_deref(), Some("sendonly"), "alice holds");
    assert_eq!(r.bob.audio_dir().as_deref(), Some("recvonly"), "bob is held");
    let before = r.alice.rtp();
    r.alice.resume();
    r.alice.try_wait_event_where(WAIT, answered).expect("alice got the answer to her resume");
    r.bob.wait_event("CALL_REMOTE_SDP", WAIT);
    assert_eq!(r.alice.audio_dir().as_deref(), Some("sendrecv"));
    assert_eq!(r.bob.audio_dir().as_deref(), Some("sendrecv"));
    r.alice.wait_rtp(WAIT, before);
    // Counted by CSeq: a UDP retransmission is the same request.
    let cseqs = |method: &str| {
        let lines = r.pbx.call_lines(&cid);
        let requests = lines.iter().filter(|l| l.is_request(method, &cid));
        requests.filter_map(|l| l.field("cs").map(String::from)).collect::<std::collections::BTreeSet<_>>().len()
    };
    if r.mode == Pbx::RecordRoute {
        assert_eq!(cseqs("INVITE"), 3, "Kamailio saw the INVITE and both re-INVITEs");
        assert_eq!(cseqs("ACK"), 3, "Kamailio saw the ACK of each 200");
    }
    r.alice.hangup();
    r.assert_hung_up(&cid, true);
}

/// The caller gives up while B rings: CANCEL through the spiral, 487 back.
fn cancel_before_answer(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("cancel", n, tp, pbx, 600);
    let bob_uri = r.uri("bob");
    r.alice.dial(&bob_uri);
    let ring = r.bob.wait_event("CALL_INCOMING", WAIT);
    r.alice.wait_event("CALL_RINGING", WAIT);
    r.alice.hangup();
    r.assert_idle_soon();
    let cid = ring.call;
    r.bob.wait_event("CALL_CLOSED", WAIT);
    r.alice.wait_event("CALL_CLOSED", WAIT);
    r.pbx.expect(WAIT, "the CANCEL", &cid, |l| l.is_request("CANCEL", &cid));
    r.pbx.expect(WAIT, "the 487", &cid, |l| l.is_reply(487, "INVITE", &cid));
    r.pbx.expect(WAIT, "the ACK of the 487", &cid, |l| l.is_request("ACK", &cid));
    let got_487 = r
        .alice
        .sip_trace()
        .iter()
        .any(|t| !t.sent && t.msg.status() == Some(487) && t.msg.header("Call-ID") == Some(cid.as_str()));
    assert!(got_487, "alice got the 487 of her INVITE");
    assert_sent_at_most_twice(&r.bob, &cid);
    r.assert_no_proxy_errors();
}

/// B rejects the call (baresip answers 486 Busy Here); alice gets the 486.
fn busy(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("busy", n, tp, pbx, 600);
    let bob_uri = r.uri("bob");
    r.alice.dial(&bob_uri);
    let ring = r.bob.wait_event("CALL_INCOMING", WAIT);
    r.bob.hangup();
    r.assert_idle_soon();
    let cid = ring.call;
    let closed = r.alice.wait_event("CALL_CLOSED", WAIT);
    assert!(closed.param.starts_with("486"), "alice sees the 486: {closed:?}");
    r.bob.wait_event("CALL_CLOSED", WAIT);
    r.pbx.expect(WAIT, "the 486", &cid, |l| l.is_reply(486, "INVITE", &cid));
    r.pbx.expect(WAIT, "the ACK of the 486", &cid, |l| l.is_request("ACK", &cid));
    assert_sent_at_most_twice(&r.bob, &cid);
    r.assert_no_proxy_errors();
}

/// A call to a user Kamailio does not know gets its 404, passed through to alice.
fn unknown_user(tp: SipTransport, n: u8, pbx: Pbx) {
    let mut r = Rig::new("404", n, tp, pbx, 600);
    let nobody = r.uri("nobody");
    r.alice.dial(&nobody);
    let closed = r.alice.wait_event("CALL_CLOSED", WAIT);
    assert!(closed.param.starts_with("404"), "alice sees Kamailio's 404: {closed:?}");
    r.alice.wait_no_calls(HANGUP).unwrap();
    let cid = closed.call;
    r.pbx.expect(WAIT, "the INVITE", &cid, |l| l.is_request("INVITE", &cid));
    r.pbx.expect(WAIT, "the ACK of the 404", &cid, |l| l.is_request("ACK", &cid));
    assert_eq!(r.bob.count_events("CALL_INCOMING"), 0, "bob is not called");
    r.assert_no_proxy_errors();
}

/// `mod $module { fn udp, fn tcp, fn tls }`, running `$scenario` with test numbers `$base`, `$base + 1`, `$base + 2`.
macro_rules! matrix {
    ($module:ident, $scenario:ident, $pbx:expr, $base:literal) => {
        mod $module {
            use super::{Pbx, SipTransport};

            #[test]
            fn udp() {
                super::$scenario(SipTransport::Udp, $base, $pbx);
            }

            #[test]
            fn tcp() {
                super::$scenario(SipTransport::Tcp, $base + 1, $pbx);
            }

            #[test]
            fn tls() {
                super::$scenario(SipTransport::Tls, $base + 2, $pbx);
            }
        }
    };
}

matrix!(register_refresh_unregister, register_refresh_unregister, Pbx::RecordRoute, 200);
matrix!(caller_hangs_up, caller_hangs_up, Pbx::RecordRoute, 203);
matrix!(callee_hangs_up, callee_hangs_up, Pbx::RecordRoute, 206);
matrix!(hold_and_resume, hold_and_resume, Pbx::RecordRoute, 209);
matrix!(cancel_before_answer, cancel_before_answer, Pbx::RecordRoute, 212);
matrix!(busy, busy, Pbx::RecordRoute, 215);
matrix!(unknown_user, unknown_user, Pbx::RecordRoute, 218);
matrix!(path_only_caller_hangs_up, caller_hangs_up, Pbx::PathOnly, 222);
matrix!(path_only_callee_hangs_up, callee_hangs_up, Pbx::PathOnly, 225);

/// Hold and resume with a Kamailio that does not record-route (UDP only: the test numbers end at 229).
#[test]
fn path_only_hold_and_resume_udp() {
    hold_and_resume(SipTransport::Udp, 228, Pbx::PathOnly);
}

/// A real loop: Kamailio relays `sip:loop@...` back to sipfront unchanged, for ever. sipfront should end it with
/// 482 Loop Detected (RFC 3261 16.3 item 4); 483 Too Many Hops (Max-Forwards ran out first) is accepted as the
/// worst case. The test prints which one came and after how many passes.
#[test]
fn a_real_loop_ends_in_482() {
    let mut r = Rig::new("loop", 221, SipTransport::Udp, Pbx::RecordRoute, 600);
    let loop_uri = r.uri("loop");
    r.alice.dial(&loop_uri);
    let closed = r.alice.wait_event("CALL_CLOSED", Duration::from_secs(30));
    let passes = r.pbx.call_lines(&closed.call).iter().filter(|l| l.is_request("INVITE", &closed.call)).count();
    eprintln!("the loop ended at alice with `{}` after {passes} INVITE(s) at Kamailio", closed.param);
    let code = &closed.param[..closed.param.len().min(3)];
    assert!(code == "482" || code == "483", "alice got `{}` after {passes} passes through Kamailio", closed.param);
    r.alice.wait_no_calls(HANGUP).unwrap();
    assert!(r.h.sipfront_alive(), "sipfront died");
}

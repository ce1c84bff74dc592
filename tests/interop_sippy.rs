//! Real phones calling through sipfront and a bridging PBX: two baresip phones, the Sippy B2BUA (every call two
//! dialogs, each with its own Call-ID, as commercial PBXs such as PortSIP do) and Kamailio as the registrar
//! behind it. Test numbers (tests/common/mod.rs): 230-236, 134-137, 106-109 and 148.
//!
//! ```text
//!   alice 127.0.0.N:5070 ──┐                      ┌─ REGISTER (its stateful proxy) ──┐
//!                          ├─ sipfront ── Sippy ──┤                                  ├─ Kamailio 127.0.1.N:5082
//!   bob   127.0.0.N:5074 ──┘  127.0.0.N   :5080   └─ the call's B leg (static route) ┘   registrar, Path, lookup
//!          ^                    :5060                                                      │
//!          └──────────── sipfront ◄── the B leg, along bob's Path (sipfront's flow token) ──┘
//! ```
//!
//! Phones register through sipfront (its Path carries the flow token) and the B2BUA's proxy to Kamailio. A call
//! from alice reaches the B2BUA as its A leg; the B2BUA places the B leg, under a new Call-ID, to Kamailio, which
//! finds bob's binding and relays along the Path back through sipfront to bob. sipfront thus carries both legs
//! of every call, as it does in front of a PBX that is registrar and B2BUA in one. Both PBX addresses are
//! sipfront backends, the B2BUA preferred (every phone's request goes there), Kamailio a standby: sipfront knows
//! the requests Kamailio sends as a PBX's. One test leaves Kamailio out of sipfront's backends: a registrar it does
//! not know, reaching phones only through their Path and sipfront's Record-Route tokens. Each test checks what both
//! phones saw (events, RTP both ways, calls gone), what the PBX saw (in its SIP log, both legs ended), and that
//! sipfront answered nothing with 482, 481 or 408 (`sipfront_final_responses_total`). The phones' leg runs over
//! UDP, TCP or TLS (sipfront's `tls:` listener); the B2BUA speaks UDP only. Over TCP and TLS one test carries three
//! calls in turn (CANCEL, 486, 404). Hold and resume are re-INVITEs the B2BUA relays leg to leg; the register test
//! refreshes and unregisters through it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::baresip::{Event, Phone, PhoneSpec, SipTransport};
use common::front_tls::front_tls;
use common::sippy::{Bridged, LegEnd, Registrar, Sippy};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Everything one test runs. Dropped in order: the phones first (their unregistering is not waited for), then
/// the PBX, the registrar and sipfront (the harness), each killing its process group.
struct Rig {
    alice: Phone,
    bob: Phone,
    pbx: Sippy,
    registrar: Registrar,
    admin: String,
    domain: String,
    /// How many of the B2BUA's calls [`Rig::bridged`] has returned: the next one it returns is a later call.
    calls_seen: usize,
    h: Harness,
}

/// Where the registrar stands for sipfront.
#[derive(Clone, Copy, PartialEq)]
enum RegistrarIs {
    /// A standby backend (priority 2): sipfront knows its requests as a PBX's.
    Backend,
    /// Not a backend: its requests reach phones only through the Path and sipfront's Record-Route tokens.
    Unlisted,
}

/// Start the registrar, the B2BUA, sipfront (with its admin listener) and two registered phones.
fn rig(name: &str, n: u8, tp: SipTransport) -> Rig {
    rig_with(name, n, tp, RegistrarIs::Backend, 60)
}

/// [`rig`], with the registrar's place for sipfront and alice's registration interval (seconds) chosen. Over TLS
/// the phones reach sipfront's `tls:` listener on 127.0.0.N:5061 (its certificate from a test CA they trust).
fn rig_with(name: &str, n: u8, tp: SipTransport, registrar_is: RegistrarIs, alice_regint: u32) -> Rig {
    let mut h = Harness::new(name, n);
    let registrar = Registrar::start(&h.dir, h.pbx(PBX2_PORT));
    let pbx = Sippy::start(&h.dir, h.pbx(PBX1_PORT), registrar.addr, registrar.addr);
    let admin = format!("{}:9090", h.front_ip());
    // Probes stay off: Sippy answers OPTIONS outside a dialog with 501.
    let mut cfg = FrontConfig::new().backend("sippy", h.pbx(PBX1_PORT), Tp::Udp);
    if registrar_is == RegistrarIs::Backend {
        cfg = cfg.backend("kamailio", registrar.addr, Tp::Udp);
    }
    let mut cfg = cfg.section(&format!("[admin]\nlisten = \"{admin}\""));
    let (mut outbound, mut ca) = (h.sipfront(), None);
    if tp == SipTransport::Tls {
        let tls = SocketAddr::new(IpAddr::V4(h.front_ip()), 5061);
        let (ca_file, section) = front_tls(&h.dir, h.front_ip());
        cfg = cfg.listen(&format!("tls:{tls}")).section(&section);
        (outbound, ca) = (tls, Some(ca_file));
    }
    h.start_sipfront(&cfg);
    let domain = h.front_ip().to_string();
    let phone = |user: &str, sip_port: u16, ctrl_port: u16, regint: u32| {
        let mut spec =
            PhoneSpec::new(user, user, &domain, h.front_ip()).transport(tp).outbound(outbound).regint(regint);
        if let Some(ca) = &ca {
            spec = spec.ca_file(ca);
        }
        // baresip listens on sip_port for UDP and TCP and on sip_port + 1 for TLS.
        spec.sip_port = sip_port;
        spec.ctrl_port = ctrl_port;
        Phone::start(spec, &h.dir)
    };
    let mut alice = phone("alice", 5070, 4444, alice_regint);
    let mut bob = phone("bob", 5074, 4445, 60);
    alice.wait_registered(WAIT);
    bob.wait_registered(WAIT);
    // Both REGISTERs reached the registrar by way of the B2BUA's proxy, each with sipfront's Path (its flow token
    // in the user part).
    let front = h.sipfront().to_string();
    for user in ["alice", "bob"] {
        let contact = format!("<sip:{user}");
        let reg = registrar.expect(WAIT, &format!("REGISTER of {user}"), |l| {
            l.is_method("REGISTER") && l.field("contact").is_some_and(|c| c.starts_with(&contact))
        });
        assert_eq!(reg.field("src"), Some(pbx.addr.to_string().as_str()), "relayed by the B2BUA: {}", reg.line);
        let path = reg.field("path").unwrap_or_default();
        assert!(path.contains(&format!("@{front};lr")), "sipfront's Path with its flow token: {}", reg.line);
    }
    Rig { alice, bob, pbx, registrar, admin, domain, calls_seen: 0, h }
}

impl Rig {
    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain)
    }

    /// alice dials bob; bob's phone rings and alice hears it ringing. The call as the PBX bridged it.
    fn ring(&mut self) -> Bridged {
        let uri = self.uri("bob");
        self.alice.dial(&uri);
        let incoming = self.bob.wait_event("CALL_INCOMING", WAIT);
        self.alice.wait_event("CALL_RINGING", WAIT);
        let call = self.bridged();
        assert_ne!(call.incoming, call.outgoing.clone().unwrap_or_default(), "each leg has its own Call-ID");
        assert_eq!(incoming.call, call.outgoing.clone().unwrap_or_default(), "bob got the B2BUA's B leg");
        call
    }

    /// The latest call the B2BUA took, once its log shows both legs' INVITEs (it writes the log from a thread);
    /// a call taken after the one returned last time (a rig may carry several calls).
    fn bridged(&mut self) -> Bridged {
        let deadline = Instant::now() + WAIT;
        loop {
            let calls = self.pbx.calls();
            if let Some(c) = calls.last().filter(|c| c.outgoing.is_some() && calls.len() > self.calls_seen) {
                self.calls_seen = calls.len();
                return c.clone();
            }
            assert!(Instant::now() < deadline, "the B2BUA bridged no call: {calls:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Rig::ring`], then bob answers: both phones established, RTP both ways at each.
    fn answer(&mut self) -> Bridged {
        let call = self.ring();
        self.bob.accept();
        let a = self.alice.wait_event("CALL_ESTABLISHED", WAIT);
        let b = self.bob.wait_event("CALL_ESTABLISHED", WAIT);
        assert_eq!(a.call, call.incoming, "alice's call is the B2BUA's A leg");
        assert_eq!(b.call, call.outgoing.clone().unwrap_or_default());
        let (ra, rb) = (self.alice.wait_rtp(WAIT, Default::default()), self.bob.wait_rtp(WAIT, Default::default()));
        // Media flows phone to phone (the B2BUA passes SDP through): each has sent and received.
        assert!(ra.sent > 0 && ra.received > 0 && rb.sent > 0 && rb.received > 0, "RTP {ra:?} {rb:?}");
        call
    }

    /// Both phones saw the call close and hold no call; the B2BUA ended both legs as expected; sipfront answered
    /// nothing with 482, 481 or 408. What each phone's CALL_CLOSED said (alice, bob).
    fn assert_ended(&mut self, call: &Bridged, want: (LegEnd, LegEnd)) -> (String, String) {
        let a = self.alice.wait_event("CALL_CLOSED", WAIT);
        let b = self.bob.try_wait_event("CALL_CLOSED", WAIT);
        self.alice.wait_no_calls(WAIT).unwrap_or_else(|e| panic!("{e}"));
        self.bob.wait_no_calls(WAIT).unwrap_or_else(|e| panic!("{e}"));
        let ends = self.pbx.wait_legs_end(call, Instant::now() + WAIT);
        assert_eq!(ends, (Some(want.0), Some(want.1)), "how the B2BUA's legs (A, B) of {call:?} ended");
        assert_front_clean(&self.admin);
        (a.param, b.map(|e| e.param).unwrap_or_default())
    }
}

/// sipfront's count of final responses with `code` (every `origin`), 0 when never counted.
fn final_responses(admin: &str, code: u16) -> f64 {
    sample_sum(&final_response_lines(&metrics_text(admin), Some(code)))
}

/// No 482 (a spiral taken for a loop), 481 (a request lost its dialog or transaction) or 408 from sipfront; the
/// counter is there (it counted the 200s to the REGISTERs), so a missing sample is a code never sent.
fn assert_front_clean(admin: &str) {
    assert!(final_responses(admin, 200) >= 2.0, "sipfront_final_responses_total counts the 200s sipfront relayed");
    for code in [482, 481, 408] {
        assert_eq!(final_responses(admin, code), 0.0, "sipfront sent {code}s");
    }
}

fn call_caller_hangs_up(name: &str, n: u8, tp: SipTransport, registrar_is: RegistrarIs) {
    let mut r = rig_with(name, n, tp, registrar_is, 60);
    let call = r.answer();
    r.alice.hangup();
    r.assert_ended(&call, (LegEnd::Bye, LegEnd::Bye));
    let b_leg = call.outgoing.clone().unwrap_or_default();
    // bob sent its 200 once: the B2BUA's ACK came back to it through Kamailio and sipfront.
    assert_eq!(r.bob.sent_responses(200, "INVITE", &b_leg), 1, "bob retransmitted its 200 OK: no ACK reached it");
    // Kamailio Record-Routed bob's side: the B leg's INVITE, ACK and BYE all passed it.
    for m in ["INVITE", "ACK", "BYE"] {
        r.registrar.expect(WAIT, &format!("{m} of the B leg"), |l| l.is_request(m, &b_leg));
    }
    assert!(
        r.pbx
            .messages()
            .iter()
            .all(|m| m.msg.header("Call-ID") != Some(&call.incoming) || m.peer.contains(&r.h.sipfront().to_string())),
        "the A leg went to sipfront only"
    );
}

#[test]
fn udp_call_media_both_ways_caller_hangs_up() {
    call_caller_hangs_up("sippy_caller_bye", 230, SipTransport::Udp, RegistrarIs::Backend);
}

#[test]
fn tcp_call_media_both_ways_caller_hangs_up() {
    call_caller_hangs_up("sippy_tcp_caller_bye", 235, SipTransport::Tcp, RegistrarIs::Backend);
}

/// The B leg's in-dialog requests come from an address sipfront does not know, following its own Record-Route
/// (`;d=` token): they reach bob as the INVITE did.
#[test]
fn udp_call_through_a_registrar_sipfront_does_not_list() {
    call_caller_hangs_up("sippy_unlisted_registrar", 236, SipTransport::Udp, RegistrarIs::Unlisted);
}

fn call_callee_hangs_up(name: &str, n: u8, tp: SipTransport) {
    let mut r = rig(name, n, tp);
    let call = r.answer();
    r.bob.hangup();
    r.assert_ended(&call, (LegEnd::Bye, LegEnd::Bye));
    // alice got the B2BUA's BYE of the A leg (not bob's own BYE back).
    let byes: Vec<_> = r.alice.sip_trace().into_iter().filter(|t| !t.sent && t.msg.method() == Some("BYE")).collect();
    assert!(!byes.is_empty(), "alice got no BYE");
    assert!(byes.iter().all(|t| t.msg.header("Call-ID") == Some(&call.incoming)), "alice's BYEs: {byes:?}");
    let to_bob = r.bob.sip_trace().into_iter().filter(|t| !t.sent && t.msg.method() == Some("BYE")).count();
    assert_eq!(to_bob, 0, "bob's own BYE came back to bob");
}

#[test]
fn udp_call_callee_hangs_up() {
    call_callee_hangs_up("sippy_callee_bye", 231, SipTransport::Udp);
}

#[test]
fn tcp_call_callee_hangs_up() {
    call_callee_hangs_up("sippy_tcp_callee_bye", 106, SipTransport::Tcp);
}

/// The phones' leg over TLS (sipfront's `tls:` listener), the B2BUA's over UDP.
#[test]
fn tls_call_media_both_ways_caller_hangs_up() {
    call_caller_hangs_up("sippy_tls_caller_bye", 135, SipTransport::Tls, RegistrarIs::Backend);
}

#[test]
fn tls_call_callee_hangs_up() {
    call_callee_hangs_up("sippy_tls_callee_bye", 136, SipTransport::Tls);
}

/// alice cancels while bob rings: 487 on both legs, the B leg's CANCEL through the registrar.
fn cancel_before_answer(r: &mut Rig) {
    let established = r.bob.count_events("CALL_ESTABLISHED");
    let call = r.ring();
    r.alice.hangup();
    let (_, b) = r.assert_ended(&call, (LegEnd::Failed(487), LegEnd::Failed(487)));
    assert_eq!(r.bob.count_events("CALL_ESTABLISHED"), established, "bob never answered: {b}");
    let b_leg = call.outgoing.clone().unwrap_or_default();
    r.registrar.expect(WAIT, "the B leg's CANCEL", |l| l.is_request("CANCEL", &b_leg));
}

/// bob rejects the ringing call with 486; alice's call closes with it.
fn busy_callee_486(r: &mut Rig) {
    let call = r.ring();
    r.bob.hangup(); // rejects the ringing call with 486
    let (a, _) = r.assert_ended(&call, (LegEnd::Failed(486), LegEnd::Failed(486)));
    assert!(a.contains("486"), "alice's call closed with: {a}");
}

/// alice calls a user with no binding: the registrar's 404 through the B2BUA and sipfront.
fn unregistered_user_404(r: &mut Rig) {
    let incoming = r.bob.count_events("CALL_INCOMING");
    let uri = r.uri("nobody");
    r.alice.dial(&uri);
    let closed = r.alice.wait_event("CALL_CLOSED", WAIT);
    // Kamailio found no binding and said 404; the B2BUA passed it to its A leg, sipfront to alice.
    assert!(closed.param.contains("404"), "alice's call closed with: {}", closed.param);
    assert!(r.registrar.log_text().contains("B2B-NOUSER ru=sip:nobody@"), "Kamailio looked nobody up");
    let call = r.bridged();
    let ends = r.pbx.wait_legs_end(&call, Instant::now() + WAIT);
    assert_eq!(ends, (Some(LegEnd::Failed(404)), Some(LegEnd::Failed(404))), "the B2BUA's legs of {call:?}");
    r.alice.wait_no_calls(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.bob.count_events("CALL_INCOMING"), incoming, "bob was not called");
    assert_front_clean(&r.admin);
}

#[test]
fn udp_cancel_before_answer() {
    cancel_before_answer(&mut rig("sippy_cancel", 232, SipTransport::Udp));
}

#[test]
fn udp_busy_callee_486_reaches_caller() {
    busy_callee_486(&mut rig("sippy_busy", 233, SipTransport::Udp));
}

#[test]
fn udp_call_to_unregistered_user_gets_the_pbx_answer() {
    unregistered_user_404(&mut rig("sippy_nouser", 234, SipTransport::Udp));
}

/// Over a stream transport (one test number for three cells): one rig, three calls in turn, each judged as its
/// UDP test judges it: a CANCEL before the answer, a 486 from bob, a call to a user with no binding.
fn cancel_busy_and_unregistered(name: &str, n: u8, tp: SipTransport) {
    let mut r = rig(name, n, tp);
    cancel_before_answer(&mut r);
    r.alice.clear_pending();
    r.bob.clear_pending();
    busy_callee_486(&mut r);
    r.alice.clear_pending();
    r.bob.clear_pending();
    unregistered_user_404(&mut r);
    assert_eq!(r.pbx.calls().len(), 3, "the B2BUA took three calls");
}

#[test]
fn tcp_cancel_busy_486_and_unregistered_user_404() {
    cancel_busy_and_unregistered("sippy_tcp_fail", 108, SipTransport::Tcp);
}

#[test]
fn tls_cancel_busy_486_and_unregistered_user_404() {
    cancel_busy_and_unregistered("sippy_tls_fail", 148, SipTransport::Tls);
}

/// alice holds and resumes: each re-INVITE reaches the B2BUA on the A leg, which sends its own on the B leg, through
/// the registrar and sipfront to bob; media flows again after the resume.
fn hold_and_resume(name: &str, n: u8, tp: SipTransport) {
    let mut r = rig(name, n, tp);
    let call = r.answer();
    let answered = |e: &Event| e.kind == "CALL_REMOTE_SDP" && e.param == "answer";
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
    // On each leg the INVITE and both re-INVITEs (counted by CSeq: a UDP retransmission is the same request), each
    // answered 200 and ACKed.
    let b_leg = call.outgoing.clone().unwrap_or_default();
    for (leg, cid) in [("A", &call.incoming), ("B", &b_leg)] {
        let msgs = r.pbx.messages();
        let cseqs = |pred: &dyn Fn(&SipMsg) -> bool| {
            let of_leg = msgs.iter().filter(|m| m.msg.header("Call-ID") == Some(cid.as_str()) && pred(&m.msg));
            of_leg.filter_map(|m| m.msg.header("CSeq").map(String::from)).collect::<std::collections::BTreeSet<_>>()
        };
        let invites = cseqs(&|m| m.method() == Some("INVITE"));
        let oks = cseqs(&|m| m.status() == Some(200) && m.cseq_method() == Some("INVITE"));
        let acks = cseqs(&|m| m.method() == Some("ACK"));
        assert_eq!(invites.len(), 3, "the {leg} leg's INVITEs at the B2BUA: {invites:?}");
        assert_eq!(oks.len(), 3, "the 200s to the {leg} leg's INVITEs: {oks:?}");
        assert_eq!(acks.len(), 3, "the {leg} leg's ACKs: {acks:?}");
    }
    let re_invites = r.registrar.lines().into_iter().filter(|l| l.is_request("INVITE", &b_leg)).count();
    assert!(re_invites >= 3, "the registrar (record-routing) saw the B leg's INVITE and both re-INVITEs");
    r.alice.hangup();
    r.assert_ended(&call, (LegEnd::Bye, LegEnd::Bye));
}

#[test]
fn udp_hold_and_resume_through_the_b2bua() {
    hold_and_resume("sippy_hold", 134, SipTransport::Udp);
}

#[test]
fn tcp_hold_and_resume_through_the_b2bua() {
    hold_and_resume("sippy_tcp_hold", 107, SipTransport::Tcp);
}

#[test]
fn tls_hold_and_resume_through_the_b2bua() {
    hold_and_resume("sippy_tls_hold", 109, SipTransport::Tls);
}

/// Register (both phones at setup), refresh (alice every 3 s), each relayed by the B2BUA to the registrar with
/// sipfront's Path; a call to the refreshed binding (bob calls alice, then cancels); unregister, after which a call
/// to alice gets the registrar's 404 through the B2BUA.
#[test]
fn udp_register_refresh_unregister_through_the_b2bua() {
    let mut r = rig_with("sippy_register", 137, SipTransport::Udp, RegistrarIs::Backend, 3);
    let alices = |l: &common::sippy::RegLine| {
        l.is_method("REGISTER") && l.field("contact").is_some_and(|c| c.starts_with("<sip:alice"))
    };
    r.alice.wait_event("REGISTER_OK", Duration::from_secs(15));
    let regs: Vec<_> = r.registrar.lines().into_iter().filter(alices).collect();
    assert!(regs.len() >= 2, "the registrar saw no refresh:\n{}", r.registrar.log_text());
    let (b2bua, front) = (r.pbx.addr.to_string(), format!("@{};lr", r.h.sipfront()));
    for reg in &regs {
        assert_eq!(reg.field("src"), Some(b2bua.as_str()), "relayed by the B2BUA: {}", reg.line);
        assert!(reg.field("path").unwrap_or_default().contains(&front), "with sipfront's Path: {}", reg.line);
    }
    // The refreshed binding reaches alice: bob calls, alice rings, bob gives up.
    let alice_uri = r.uri("alice");
    r.bob.dial(&alice_uri);
    r.alice.wait_event("CALL_INCOMING", WAIT);
    r.bob.wait_event("CALL_RINGING", WAIT);
    let call = r.bridged();
    r.bob.hangup();
    r.bob.wait_event("CALL_CLOSED", WAIT);
    r.alice.wait_event("CALL_CLOSED", WAIT);
    let ends = r.pbx.wait_legs_end(&call, Instant::now() + WAIT);
    assert_eq!(ends, (Some(LegEnd::Failed(487)), Some(LegEnd::Failed(487))), "the B2BUA's legs of {call:?}");
    r.alice.wait_no_calls(WAIT).unwrap_or_else(|e| panic!("{e}"));
    // Unregister: alice's REGISTER with expires 0 reaches the registrar by way of the B2BUA; then she is unknown.
    r.alice.unregister();
    let gone = |l: &common::sippy::RegLine| {
        alices(l) && (l.field("expires") == Some("0") || l.field("contact").is_some_and(|c| c.ends_with("expires=0")))
    };
    let reg = r.registrar.expect(WAIT, "alice's REGISTER with expires 0", gone);
    assert_eq!(reg.field("src"), Some(b2bua.as_str()), "relayed by the B2BUA: {}", reg.line);
    r.bob.dial(&alice_uri);
    let closed = r.bob.wait_event("CALL_CLOSED", WAIT);
    assert!(closed.param.starts_with("404"), "a call to unregistered alice: {closed:?}");
    let call = r.bridged();
    let ends = r.pbx.wait_legs_end(&call, Instant::now() + WAIT);
    assert_eq!(ends, (Some(LegEnd::Failed(404)), Some(LegEnd::Failed(404))), "the B2BUA's legs of {call:?}");
    r.bob.wait_no_calls(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_front_clean(&r.admin);
}

//! Interop matrix, the WebRTC row through a bridging PBX: the two JsSIP phones of `tests/interop_jssip.rs` (JsSIP
//! 3.13.8 in headless Chromium, each with its own secure WebSocket to sipfront's `wss:` listener; the rig is
//! `tests/shared/jssip.rs`) and, as the PBX, the Sippy B2BUA (`b2bua_radius -H`, `tests/shared/sippy.rs`) with
//! Kamailio as the registrar behind it (`tests/interop/kamailio-b2bua.cfg`), as in `tests/interop_sippy.rs`.
//!
//! ```text
//!   Chromium  alice ─ wss ─┐                        ┌─ REGISTER (its stateful proxy) ──┐
//!   (page on               ├─ sipfront ── Sippy ────┤                                  ├─ Kamailio 127.0.1.N:5082
//!   :8080)    bob   ─ wss ─┘  127.0.0.N   :5080     └─ the call's B leg (static route) ┘   registrar, Path, lookup
//!                      ^        :5067 wss                                                    │
//!                      └──── sipfront ◄── the B leg, along bob's Path (sipfront's flow token) ┘
//! ```
//!
//! sipfront's backends are the B2BUA (priority 1) and the registrar (priority 2), probes off (Sippy answers an
//! OPTIONS outside a dialog with 501). The phones register through sipfront (its Path carries the WebSocket's flow
//! token) and the B2BUA's proxy to Kamailio. A call from alice is the B2BUA's A leg; its B leg (a new Call-ID) goes
//! to Kamailio, which finds bob's `.invalid` WebSocket binding and relays along the Path back through sipfront to
//! bob: sipfront carries both legs of every call. The B2BUA passes the SDP through untouched (no RTP proxy), so the
//! WebRTC offer and answer (ICE candidates, DTLS fingerprints) reach the other phone as sent, and SRTP flows browser
//! to browser.
//!
//! Each scenario asserts at both phones (JsSIP's session events and SIP traces, as the Kamailio row does: each phone
//! sees its own leg's Call-ID, `confirmed`, `ended`/`failed` with the right cause, no session left within 2 s of the
//! hangup, each 200 to an INVITE sent at most twice), RTP both ways (`getStats()`), at the PBX (Sippy's SIP log:
//! how each leg ended; Kamailio's log: the B leg's requests it record-routed, the REGISTERs it got from the B2BUA
//! with sipfront's Path) and at sipfront (`sipfront_final_responses_total` counted answers, none of them 482, 481 or
//! 408; no warning in its log). Test numbers (tests/common/mod.rs): 112-118. Needs Chromium, Kamailio, the Sippy
//! B2BUA and JsSIP (`scripts/test.sh` installs and fetches them).

mod common;

use std::time::{Duration, Instant};

use common::jssip::{tls_section, Phones, WAIT};
use common::sippy::{Bridged, LegEnd, RegLine, Registrar, Sippy};
use common::*;

const WSS_PORT: u16 = 5067;
const ADMIN_PORT: u16 = 9090;
const PAGE_PORT: u16 = 8080;

// ------------------------------------------------------------------------------------------------ the rig

/// Everything one test runs; fields drop in order: the phones (the browser, the page server), the B2BUA, the
/// registrar, then the harness (sipfront). The phones' methods (`tests/shared/jssip.rs`) are the rig's, by `Deref`.
struct Rig {
    phones: Phones,
    pbx: Sippy,
    registrar: Registrar,
    admin: String,
    h: Harness,
}

impl std::ops::Deref for Rig {
    type Target = Phones;
    fn deref(&self) -> &Phones {
        &self.phones
    }
}

impl std::ops::DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut Phones {
        &mut self.phones
    }
}

/// Whether `l` is a REGISTER whose Contact is the phone's with this (random, JsSIP-chosen) user part.
fn register_of(l: &RegLine, contact_user: &str) -> bool {
    l.is_method("REGISTER") && l.field("contact").is_some_and(|c| c.contains(&format!("<sip:{contact_user}@")))
}

/// Whether `l` asks for `expires` seconds (in the Expires header or the Contact's parameter).
fn asks_expires(l: &RegLine, expires: &str) -> bool {
    l.field("expires") == Some(expires)
        || l.field("contact").is_some_and(|c| c.split(';').any(|p| p == format!("expires={expires}")))
}

impl Rig {
    /// The registrar on 127.0.1.N:5082, the B2BUA on 127.0.1.N:5080, sipfront (wss: and admin) in front of both,
    /// the page in Chromium, alice (registering for `alice_expires` s) and bob (600 s) registered through it all.
    fn new(scenario: &str, n: u8, alice_expires: u32) -> Rig {
        let mut h = Harness::new(&format!("jssip_sippy_{scenario}"), n);
        let ip = h.front_ip();
        let (admin, page) = (format!("{ip}:{ADMIN_PORT}"), h.front(PAGE_PORT));
        let registrar = Registrar::start(&h.dir, h.pbx(PBX2_PORT));
        let pbx = Sippy::start(&h.dir, h.pbx(PBX1_PORT), registrar.addr, registrar.addr);
        // A token, or sipfront warns that switchover and drain are refused (the test wants a log without warnings).
        let token = h.dir.join("admin.token");
        std::fs::write(&token, "jssip-sippy-interop-admin-token-0123456789").unwrap();
        // Probes stay off: Sippy answers OPTIONS outside a dialog with 501.
        let cfg = FrontConfig::new()
            .backend_prio("sippy", pbx.addr, Tp::Udp, 1)
            .backend_prio("kamailio", registrar.addr, Tp::Udp, 2)
            .listen(&format!("wss:{ip}:{WSS_PORT}"))
            .section(&tls_section(&h.dir, ip))
            .section(&format!("[websocket]\nallowed_origins = [\"http://{page}\"]"))
            .section(&format!("[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"", token.display()));
        h.start_sipfront(&cfg);
        let ws = format!("wss://{ip}:{WSS_PORT}");
        let phones = Phones::open(&format!("jssip-sippy-{scenario}"), page, &ws, &ip.to_string());
        let mut r = Rig { phones, pbx, registrar, admin, h };
        r.start_phone("alice", alice_expires);
        r.start_phone("bob", 600);
        r.wait_event("alice", "registered");
        r.wait_event("bob", "registered");
        // Both REGISTERs reached the registrar by way of the B2BUA's proxy, each with sipfront's Path (its flow
        // token in the user part) and the phone's WebSocket Contact.
        let (b2bua, front) = (r.pbx.addr.to_string(), format!("@{};lr", r.h.sipfront()));
        for who in ["alice", "bob"] {
            let user = r.contact_user(who);
            let reg = r.registrar.expect(WAIT, &format!("the REGISTER of {who}"), |l| register_of(l, &user));
            assert_eq!(reg.field("src"), Some(b2bua.as_str()), "relayed by the B2BUA: {}", reg.line);
            r.assert_path_relayed(&reg, &front);
            // The registrar stored sipfront's Path, not the one the B2BUA's proxy put on top (see the cfg).
            let cid = reg.field("cid").unwrap_or_default();
            let log = r.registrar.log_text();
            let kept = log.lines().find(|l| l.contains("B2B-PATH ") && l.ends_with(&format!(" cid={cid}")));
            assert!(kept.is_some_and(|l| l.contains("kept=<sip:") && l.contains(&front)), "{kept:?}");
            let contact = reg.field("contact").unwrap_or_default();
            assert!(contact.contains(".invalid;transport=ws>"), "the phone's WebSocket Contact: {}", reg.line);
        }
        r
    }

    /// The REGISTER the registrar logged as `reg` left the B2BUA with sipfront's Path (`front`: `@ADDR;lr`) among
    /// its Path headers (the registrar logs the first only, and the B2BUA's proxy adds its own on top when the phone
    /// supports `path`, as JsSIP does).
    fn assert_path_relayed(&self, reg: &RegLine, front: &str) {
        let cid = reg.field("cid").unwrap_or_default();
        let sent = self.pbx.messages().into_iter().filter(|m| m.sent && m.msg.method() == Some("REGISTER"));
        let paths: Vec<Vec<String>> =
            sent.filter(|m| cid_is(&m.msg, cid)).map(|m| m.msg.header_values("Path")).collect();
        assert!(!paths.is_empty(), "the B2BUA's log has no REGISTER of {cid} sent: {}", reg.line);
        assert!(paths.iter().all(|p| p.iter().any(|v| v.contains(front))), "sipfront's Path {front} kept: {paths:?}");
    }

    /// The user part of `who`'s Contact (JsSIP makes one up).
    fn contact_user(&mut self, who: &str) -> String {
        let v = self.js(&format!("phones.{who}.ua.contact.uri.user"));
        v.as_str().unwrap_or_else(|| panic!("{who}'s Contact user: {v}")).to_owned()
    }

    /// Poll `done` every 50 ms until it holds; at `within`, panic with `what` and both SIP traces.
    fn poll(&mut self, what: &str, within: Duration, mut done: impl FnMut(&mut Rig) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; SIP:\n{}", self.traces());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The latest call the B2BUA took, once its log shows both legs' INVITEs (it writes the log from a thread).
    fn bridged(&mut self) -> Bridged {
        let deadline = Instant::now() + WAIT;
        loop {
            let calls = self.pbx.calls();
            if let Some(c) = calls.last().filter(|c| c.outgoing.is_some()) {
                return c.clone();
            }
            assert!(Instant::now() < deadline, "the B2BUA bridged no call: {calls:?}\nSIP:\n{}", self.traces());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `caller` dials `callee`, whose phone rings, and the caller hears it (`progress`). The call as the B2BUA
    /// bridged it: the caller's session is its A leg, the callee's its B leg, each with its own Call-ID.
    fn ring(&mut self, caller: &str, callee: &str) -> Bridged {
        let target = self.uri(callee);
        self.js(&format!("call('{caller}', '{target}')"));
        let incoming = self.wait_event(callee, "new-incoming");
        self.wait_event(caller, "progress");
        let call = self.bridged();
        let outgoing = self.wait_event(caller, "new-outgoing");
        let b_leg = call.outgoing.clone().unwrap_or_default();
        assert_ne!(call.incoming, b_leg, "each leg has its own Call-ID");
        assert_eq!(outgoing["callId"].as_str(), Some(call.incoming.as_str()), "{caller}'s call is the A leg");
        assert_eq!(incoming["callId"].as_str(), Some(b_leg.as_str()), "{callee} got the B2BUA's B leg");
        call
    }

    /// [`Rig::ring`] alice to bob, bob answers: `confirmed` at both (bob's: the ACK of the B leg came), the ACK at
    /// the B2BUA (A leg) and the registrar (B leg), RTP both ways at both.
    fn establish(&mut self) -> Bridged {
        let call = self.ring("alice", "bob");
        self.js("answer('bob')");
        self.expect_event("alice", "confirmed", "local", "");
        self.expect_event("bob", "confirmed", "remote", "");
        let (a_leg, b_leg) = (call.incoming.clone(), call.outgoing.clone().unwrap_or_default());
        self.poll("the A leg's ACK at the B2BUA", WAIT, |r| {
            r.pbx.messages().iter().any(|m| !m.sent && m.msg.method() == Some("ACK") && cid_is(&m.msg, &a_leg))
        });
        self.registrar.expect(WAIT, "the B leg's ACK", |l| l.is_request("ACK", &b_leg));
        // The B2BUA passed the SDP through untouched (no RTP proxy): bob got alice's offer (ICE candidates, DTLS
        // fingerprint and all) as she sent it, alice bob's answer.
        for (from, leg_from, to, leg_to) in [("alice", &a_leg, "bob", &b_leg), ("bob", &b_leg, "alice", &a_leg)] {
            let sent = self.bodies(from, leg_from).into_iter().find(|b| b.0).map(|b| b.2);
            let got = self.bodies(to, leg_to).into_iter().find(|b| !b.0).map(|b| b.2);
            assert!(sent.as_ref().is_some_and(|s| s.contains("a=fingerprint:")), "{from}'s SDP: {sent:?}");
            assert_eq!(got, sent, "{from}'s SDP as {to} got it");
        }
        self.wait_rtp("alice", (0, 0));
        self.wait_rtp("bob", (0, 0));
        call
    }

    /// The B2BUA's log until both legs of `call` ended: they ended as `want` (A leg, B leg).
    fn assert_legs(&mut self, call: &Bridged, want: (LegEnd, LegEnd)) {
        let ends = self.pbx.wait_legs_end(call, Instant::now() + WAIT);
        let traces = if ends == (Some(want.0), Some(want.1)) { String::new() } else { self.traces() };
        assert_eq!(ends, (Some(want.0), Some(want.1)), "how the B2BUA's legs (A, B) of {call:?} ended:\n{traces}");
    }

    /// The B2BUA sent each final answer to an INVITE on the A leg at most twice (its 2xx is resent until the ACK).
    fn assert_b2bua_answers_acked(&mut self, call: &Bridged) {
        let mut per_answer = std::collections::BTreeMap::<String, usize>::new();
        for m in self.pbx.messages() {
            let of_call = cid_is(&m.msg, &call.incoming) && m.msg.cseq_method() == Some("INVITE");
            if m.sent && of_call && m.msg.status().is_some_and(|s| s >= 200) {
                *per_answer.entry(format!("{} {}", m.msg.header("CSeq").unwrap_or(""), m.msg.start)).or_default() += 1;
            }
        }
        for (answer, n) in per_answer {
            assert!(n <= 2, "the B2BUA sent `{answer}` {n} times, no ACK reached it:\n{}", self.traces());
        }
    }

    /// sipfront runs, counted final responses, and none of them 482, 481 or 408; it logged no warning.
    fn assert_no_proxy_errors(&mut self) {
        assert!(self.h.sipfront_alive(), "sipfront died:\n{}", self.h.front_log_text());
        let text = metrics_text(&self.admin);
        let total = sample_sum(&final_response_lines(&text, None));
        assert!(total > 0.0, "sipfront counted no final response at all:\n{text}");
        for code in [482, 481, 408] {
            let bad = final_response_lines(&text, Some(code));
            assert!(bad.is_empty(), "sipfront counted {bad:?}; SIP:\n{}", self.traces());
        }
        assert_eq!(self.h.front_log_problems(), Vec::<String>::new(), "sipfront warned");
    }

    /// After a hangup by alice (`by_alice`) or bob: no session left within 2 s, `ended` at both with the right
    /// originator, both legs ended by a BYE answered 200 at the B2BUA, the B leg's BYE through the registrar, the
    /// closer's BYE answered, each 200 to an INVITE sent at most twice (bob's, the B2BUA's), no proxy errors.
    fn assert_hung_up(&mut self, call: &Bridged, by_alice: bool) {
        self.assert_idle_soon();
        let (closer, other) = if by_alice { ("alice", "bob") } else { ("bob", "alice") };
        self.expect_event(closer, "ended", "local", "Terminated");
        self.expect_event(other, "ended", "remote", "Terminated");
        self.assert_legs(call, (LegEnd::Bye, LegEnd::Bye));
        let b_leg = call.outgoing.clone().unwrap_or_default();
        self.registrar.expect(WAIT, "the B leg's BYE", |l| l.is_request("BYE", &b_leg));
        self.poll(&format!("{closer} gets the 200 to its BYE"), WAIT, |r| r.answers(closer, 200, "BYE") > 0);
        // Each phone's BYE (sent or received) is its own leg's: the B2BUA ended the other leg with its own BYE.
        for (who, leg) in [("alice", &call.incoming), ("bob", &b_leg)] {
            let trace = self.trace(who);
            let byes: Vec<_> = trace.iter().filter(|(_, m)| m.method() == Some("BYE")).collect();
            assert!(!byes.is_empty(), "{who} saw no BYE");
            assert!(byes.iter().all(|(_, m)| cid_is(m, leg)), "{who}'s BYEs are of its leg {leg}: {byes:?}");
        }
        self.assert_sent_at_most_twice("bob", &b_leg);
        self.assert_b2bua_answers_acked(call);
        self.assert_no_proxy_errors();
    }
}

fn cid_is(m: &SipMsg, call_id: &str) -> bool {
    m.header("Call-ID") == Some(call_id)
}

// ------------------------------------------------------------------------------------------------ scenarios

/// Register (both at setup, through sipfront and the B2BUA's proxy to the registrar), refresh (alice's 10 s
/// registration, which JsSIP renews after 5 s, again relayed with sipfront's Path), a call to the refreshed
/// binding that rings (then cancelled: both legs 487), unregister (then a call to alice gets the registrar's 404
/// through the B2BUA).
#[test]
fn register_refresh_unregister() {
    let mut r = Rig::new("register", 112, 10);
    let user = r.contact_user("alice");
    let (b2bua, front) = (r.pbx.addr.to_string(), format!("@{};lr", r.h.sipfront()));
    r.registrar.expect(WAIT, "alice's REGISTER for 10 s", |l| register_of(l, &user) && asks_expires(l, "10"));
    // The refresh: at the registrar, then its 200 at alice, who stays registered (JsSIP reports the first only).
    let refreshes = |r: &Rig| -> Vec<RegLine> {
        let lines = r.registrar.lines().into_iter();
        lines.filter(|l| register_of(l, &user) && asks_expires(l, "10")).collect()
    };
    r.poll("alice's refresh, at the registrar and answered", Duration::from_secs(20), |r| {
        refreshes(r).len() >= 2 && r.answers("alice", 200, "REGISTER") >= 2
    });
    for reg in refreshes(&r) {
        assert_eq!(reg.field("src"), Some(b2bua.as_str()), "relayed by the B2BUA: {}", reg.line);
        r.assert_path_relayed(&reg, &front);
    }
    let ok = "phones.alice.ua.isRegistered() && !phones.alice.events.some(e => e.ev === 'registrationFailed')";
    assert_eq!(r.js(ok), true, "alice's refresh failed:\n{}", r.traces());
    // The refreshed binding reaches alice: bob calls, alice rings, bob gives up.
    let call = r.ring("bob", "alice");
    r.js("phones.bob.session.terminate(), true");
    r.assert_idle_soon();
    r.expect_event("bob", "failed", "local", "Canceled");
    r.expect_event("alice", "failed", "remote", "Canceled");
    r.assert_legs(&call, (LegEnd::Failed(487), LegEnd::Failed(487)));
    // Unregister: the REGISTER with expires 0 at the registrar, by way of the B2BUA; then alice is unknown there.
    r.js("phones.alice.ua.unregister(), true");
    let gone = r.wait_event("alice", "unregistered");
    assert_eq!(gone["code"], 200, "{gone}");
    let reg = r.registrar.expect(WAIT, "alice's un-REGISTER", |l| register_of(l, &user) && asks_expires(l, "0"));
    assert_eq!(reg.field("src"), Some(b2bua.as_str()), "relayed by the B2BUA: {}", reg.line);
    r.js("phones.bob.events = [], true");
    let alice = r.uri("alice");
    r.js(&format!("call('bob', '{alice}')"));
    let failed = r.expect_event("bob", "failed", "remote", "Not Found");
    assert_eq!(failed["code"], 404, "{failed}");
    r.assert_idle_soon();
    assert!(r.registrar.log_text().contains("B2B-NOUSER ru=sip:alice@"), "the registrar looked alice up");
    let call = r.bridged();
    r.assert_legs(&call, (LegEnd::Failed(404), LegEnd::Failed(404)));
    r.assert_no_proxy_errors();
}

/// alice calls bob, media both ways, alice hangs up: the B2BUA ends the B leg with its own BYE.
#[test]
fn caller_hangs_up() {
    let mut r = Rig::new("caller_bye", 113, 600);
    let call = r.establish();
    r.js("phones.alice.session.terminate(), true");
    r.assert_hung_up(&call, true);
}

/// alice calls bob, media both ways, bob hangs up (his BYE goes through sipfront and the registrar to the B2BUA,
/// which sends its own on the A leg through sipfront to alice).
#[test]
fn callee_hangs_up() {
    let mut r = Rig::new("callee_bye", 114, 600);
    let call = r.establish();
    r.js("phones.bob.session.terminate(), true");
    r.assert_hung_up(&call, false);
}

/// alice holds and resumes: each re-INVITE reaches the B2BUA on the A leg, which sends its own on the B leg through
/// the registrar and sipfront to bob (`hold`/`unhold` at both); media flows both ways after the resume.
#[test]
fn hold_and_resume() {
    let mut r = Rig::new("hold", 115, 600);
    let call = r.establish();
    for (on, ev, done) in [(true, "hold", "held"), (false, "unhold", "resumed")] {
        assert_eq!(r.js(&format!("setHold('alice', {on})")), true, "JsSIP would not {ev}");
        r.expect_event("alice", ev, "local", "");
        r.expect_event("bob", ev, "remote", "");
        r.wait_event("alice", done);
    }
    let (alice, bob) = (r.wait_rtp("alice", (0, 0)), r.wait_rtp("bob", (0, 0)));
    r.wait_rtp("alice", alice);
    r.wait_rtp("bob", bob);
    // On each leg at the B2BUA the INVITE and both re-INVITEs (counted by CSeq: a retransmission is the same
    // request), each answered 200 and ACKed.
    let b_leg = call.outgoing.clone().unwrap_or_default();
    for (leg, cid) in [("A", call.incoming.clone()), ("B", b_leg.clone())] {
        let counts = |r: &Rig| {
            let msgs = r.pbx.messages();
            let cseqs = |pred: &dyn Fn(&SipMsg) -> bool| {
                let of_leg = msgs.iter().filter(|m| cid_is(&m.msg, &cid) && pred(&m.msg));
                of_leg.filter_map(|m| m.msg.header("CSeq").map(String::from)).collect::<std::collections::BTreeSet<_>>()
            };
            let invites = cseqs(&|m| m.method() == Some("INVITE")).len();
            let oks = cseqs(&|m| m.status() == Some(200) && m.cseq_method() == Some("INVITE")).len();
            (invites, oks, cseqs(&|m| m.method() == Some("ACK")).len())
        };
        r.poll(&format!("3 INVITEs, 3 200s, 3 ACKs on the {leg} leg"), WAIT, |r| counts(r) == (3, 3, 3));
    }
    let re_invites = r.registrar.lines().into_iter().filter(|l| l.is_request("INVITE", &b_leg)).count();
    assert!(re_invites >= 3, "the registrar (record-routing) saw the B leg's INVITE and both re-INVITEs");
    r.js("phones.alice.session.terminate(), true");
    r.assert_hung_up(&call, true);
}

/// alice gives up while bob rings: CANCEL to the B2BUA, which cancels the B leg through the registrar; 487 on
/// both legs, `failed`/`Canceled` at both phones.
#[test]
fn cancel_before_answer() {
    let mut r = Rig::new("cancel", 116, 600);
    let call = r.ring("alice", "bob");
    r.js("phones.alice.session.terminate(), true");
    r.assert_idle_soon();
    r.expect_event("alice", "failed", "local", "Canceled");
    r.expect_event("bob", "failed", "remote", "Canceled");
    r.assert_legs(&call, (LegEnd::Failed(487), LegEnd::Failed(487)));
    let b_leg = call.outgoing.clone().unwrap_or_default();
    r.registrar.expect(WAIT, "the B leg's CANCEL", |l| l.is_request("CANCEL", &b_leg));
    r.registrar.expect(WAIT, "the ACK of the B leg's 487", |l| l.is_request("ACK", &b_leg));
    // JsSIP reports the cancel before the 487 is in: wait for it, then count.
    let a_leg = call.incoming.clone();
    r.poll("the 487 at alice", WAIT, |r| r.finals_received("alice", &a_leg, 487) > 0);
    assert_eq!(r.finals_received("alice", &a_leg, 487), 1, "alice got the 487 once:\n{}", r.traces());
    r.assert_sent_at_most_twice("bob", &b_leg);
    r.assert_b2bua_answers_acked(&call);
    r.assert_no_proxy_errors();
}

/// bob rejects the call with 486: the B2BUA passes it to the A leg, `failed`/`Busy` at alice, once.
#[test]
fn busy() {
    let mut r = Rig::new("busy", 117, 600);
    let call = r.ring("alice", "bob");
    r.js("phones.bob.session.terminate({ status_code: 486 }), true");
    r.assert_idle_soon();
    r.expect_event("bob", "failed", "local", "Rejected");
    let failed = r.expect_event("alice", "failed", "remote", "Busy");
    assert_eq!(failed["code"], 486, "{failed}");
    r.assert_legs(&call, (LegEnd::Failed(486), LegEnd::Failed(486)));
    let b_leg = call.outgoing.clone().unwrap_or_default();
    r.registrar.expect(WAIT, "the ACK of the B leg's 486", |l| l.is_request("ACK", &b_leg));
    assert_eq!(r.finals_received("alice", &call.incoming, 486), 1, "alice got the 486 once:\n{}", r.traces());
    r.assert_sent_at_most_twice("bob", &b_leg);
    r.assert_b2bua_answers_acked(&call);
    r.assert_no_proxy_errors();
}

/// A call to a user the registrar does not know gets its 404, which the B2BUA passes to the A leg and sipfront to
/// alice, once.
#[test]
fn unknown_user_gets_404() {
    let mut r = Rig::new("404", 118, 600);
    let target = r.uri("nobody");
    r.js(&format!("call('alice', '{target}')"));
    let failed = r.expect_event("alice", "failed", "remote", "Not Found");
    assert_eq!(failed["code"], 404, "{failed}");
    r.assert_idle_soon();
    let cid = failed["callId"].as_str().expect("a Call-ID").to_owned();
    assert!(r.registrar.log_text().contains("B2B-NOUSER ru=sip:nobody@"), "the registrar looked nobody up");
    let call = r.bridged();
    assert_eq!(call.incoming, cid, "alice's call is the B2BUA's A leg");
    r.assert_legs(&call, (LegEnd::Failed(404), LegEnd::Failed(404)));
    r.poll("the ACK of the 404 at the B2BUA", WAIT, |r| {
        r.pbx.messages().iter().any(|m| !m.sent && m.msg.method() == Some("ACK") && cid_is(&m.msg, &cid))
    });
    assert_eq!(r.finals_received("alice", &cid, 404), 1, "alice got the 404 once:\n{}", r.traces());
    assert!(r.events("bob").iter().all(|e| e["ev"] != "new-incoming"), "bob is not called");
    r.assert_b2bua_answers_acked(&call);
    r.assert_no_proxy_errors();
}

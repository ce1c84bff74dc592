//! Interop matrix, the WebRTC row: two JsSIP user agents (alice, bob; JsSIP 3.13.8 from the npm registry,
//! `scripts/fetch-jssip.sh`) on one page in headless Chromium, each with its own secure WebSocket to sipfront's
//! `wss:` listener (RFC 7118), registered with Kamailio (`tests/shared/kamailio.rs`, record-routing, with Path)
//! behind it over UDP. Kamailio stores the phones' `.invalid` WebSocket Contacts with sipfront's Path and reaches
//! them back along it: only sipfront ever talks to a browser. Kamailio also grants GRUUs (JsSIP asks for them), and
//! JsSIP's dialog Contact is then its pub-gruu at sipfront's address: in-dialog requests go by the route set.
//!
//! ```text
//!   Chromium  alice ─ wss ─┐                            ┌─ Kamailio 127.0.1.N:5080 (registrar, record_route,
//!   (page on  bob   ─ wss ─┼─ sipfront 127.0.0.N:5067 ──┤   lookup → sipfront's Path → the callee's WebSocket)
//!   :8080)                 │  (admin :9090)             │
//!   SRTP flows browser to browser (ICE on this host, no STUN).
//! ```
//!
//! Each scenario asserts at both phones (JsSIP's session events: `confirmed` on both, the callee's meaning its ACK
//! came; `ended`/`failed` with the right cause; no session or dialog left within 2 s of the hangup; the callee's
//! 200 sent at most twice, i.e. not retransmitted for want of an ACK), RTP both ways (`getStats()`), at the PBX
//! (Kamailio's log: the ACK, the BYE and its 200) and at sipfront (`sipfront_final_responses_total` counted
//! answers, none of them 482, 481 or 408). The page is `tests/webrtc/phones.html`; it records each phone's events
//! and its SIP messages as they cross the WebSocket, and a failure prints both traces.
//!
//! Chromium runs with a fake microphone (granted without a prompt), loopback ICE candidates allowed, and
//! certificate errors ignored: sipfront's certificate is a self-signed one made here, and its trust is not what
//! this row tests. Test numbers (tests/common/mod.rs): 121-127. Needs Chromium, Kamailio and JsSIP
//! (`scripts/test.sh` installs and fetches them).

mod common;

use std::time::{Duration, Instant};

use common::jssip::{tls_section, Phones, WAIT};
use common::kamailio::Kamailio;
use common::*;

const WSS_PORT: u16 = 5067;
const ADMIN_PORT: u16 = 9090;
const PAGE_PORT: u16 = 8080;

// ------------------------------------------------------------------------------------------------ the rig

/// Everything one test runs; fields drop in order: the phones (the browser, the page server), Kamailio, then the
/// harness. The phones' methods (`tests/shared/jssip.rs`) are the rig's, by `Deref`.
struct Rig {
    phones: Phones,
    pbx: Kamailio,
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

impl Rig {
    /// sipfront (wss: and admin) in front of Kamailio on 127.0.1.N, the page in Chromium, alice (registering for
    /// `alice_expires` s) and bob (600 s) registered through it.
    fn new(scenario: &str, n: u8, alice_expires: u32) -> Rig {
        let mut h = Harness::new(&format!("jssip_{scenario}"), n);
        let ip = h.front_ip();
        let (admin, page) = (format!("{ip}:{ADMIN_PORT}"), h.front(PAGE_PORT));
        let pbx = Kamailio::start(&h.dir, h.pbx(PBX1_PORT), &format!("sip:{}", h.sipfront()), true);
        // A token, or sipfront warns that switchover and drain are refused (the test wants a log without warnings).
        let token = h.dir.join("admin.token");
        std::fs::write(&token, "jssip-interop-admin-token-0123456789").unwrap();
        let cfg = FrontConfig::new()
            .backend("kamailio", pbx.addr, Tp::Udp)
            .health("1s", "500ms", 3, 1)
            .listen(&format!("wss:{ip}:{WSS_PORT}"))
            .section(&tls_section(&h.dir, ip))
            .section(&format!("[websocket]\nallowed_origins = [\"http://{page}\"]"))
            .section(&format!("[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"", token.display()));
        h.start_sipfront(&cfg);
        let ws = format!("wss://{ip}:{WSS_PORT}");
        let phones = Phones::open(&format!("jssip-{scenario}"), page, &ws, &ip.to_string());
        let mut r = Rig { phones, pbx, admin, h };
        r.start_phone("alice", alice_expires);
        r.start_phone("bob", 600);
        r.wait_event("alice", "registered");
        r.wait_event("bob", "registered");
        r
    }

    /// Poll `done` every 50 ms until it holds; at `within`, panic with `what` and both SIP traces.
    fn poll(&mut self, what: &str, within: Duration, mut done: impl FnMut(&mut Rig) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; SIP:\n{}", self.traces());
            std::thread::sleep(Duration::from_millis(50));
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

    /// alice calls bob, bob answers: `confirmed` at both (bob's: the ACK came), the ACK at Kamailio, RTP both
    /// ways at both. The Call-ID.
    fn establish(&mut self) -> String {
        let target = self.uri("bob");
        self.js(&format!("call('alice', '{target}')"));
        let incoming = self.wait_event("bob", "new-incoming");
        let cid = incoming["callId"].as_str().expect("a Call-ID").to_owned();
        self.wait_event("alice", "progress");
        self.js("answer('bob')");
        self.expect_event("alice", "confirmed", "local", "");
        let confirmed = self.wait_event("bob", "confirmed");
        assert_eq!((confirmed["originator"].as_str(), confirmed["callId"].as_str()), (Some("remote"), Some(&*cid)));
        self.pbx.expect(WAIT, "the ACK of the 200", &cid, |l| l.is_request("ACK", &cid));
        self.wait_rtp("alice", (0, 0));
        self.wait_rtp("bob", (0, 0));
        cid
    }

    /// After a hangup by alice (`by_alice`) or bob: no session left within 2 s, `ended` at both with the right
    /// originator, the BYE and its 200 through Kamailio, the 200 answers sent at most twice, no proxy errors.
    fn assert_hung_up(&mut self, cid: &str, by_alice: bool) {
        self.assert_idle_soon();
        let (closer, other) = if by_alice { ("alice", "bob") } else { ("bob", "alice") };
        self.expect_event(closer, "ended", "local", "Terminated");
        self.expect_event(other, "ended", "remote", "Terminated");
        self.pbx.expect(WAIT, "the BYE", cid, |l| l.is_request("BYE", cid));
        self.pbx.expect(WAIT, "the 200 to the BYE", cid, |l| l.is_reply(200, "BYE", cid));
        self.poll(&format!("{closer} gets the 200 to its BYE"), WAIT, |r| r.answers(closer, 200, "BYE") > 0);
        self.assert_sent_at_most_twice("bob", cid);
        self.assert_no_proxy_errors();
    }
}

// ------------------------------------------------------------------------------------------------ scenarios

/// Whether `l` is alice's REGISTER (by her Contact's user) asking for `expires` seconds.
fn alice_register(l: &common::kamailio::PbxLine, contact_user: &str, expires: &str) -> bool {
    l.request && l.method() == "REGISTER" && l.line.contains(contact_user) && l.field("expires") == Some(expires)
}

/// Register (both at setup, through sipfront to Kamailio), refresh (alice's 10 s registration, which JsSIP
/// renews after 5 s), a call to the refreshed binding that rings (then cancelled), unregister (then a call to
/// alice gets Kamailio's 404).
#[test]
fn register_refresh_unregister() {
    let mut r = Rig::new("register", 121, 10);
    let front = r.h.sipfront().to_string();
    let user = r.js("phones.alice.ua.contact.uri.user").as_str().expect("alice's Contact user").to_owned();
    let first = r.pbx.expect(WAIT, "alice's REGISTER", "", |l| alice_register(l, &user, "10"));
    assert_eq!(first.field("src"), Some(front.as_str()), "from sipfront: {}", first.line);
    assert!(first.field("contact").is_some_and(|c| c.contains(".invalid;transport=ws>")), "{}", first.line);
    // The refresh: at Kamailio, then its 200 at alice, who stays registered (JsSIP reports the first only).
    let refreshed = |r: &mut Rig| {
        let at_pbx = r.pbx.lines().iter().filter(|l| alice_register(l, &user, "10")).count();
        at_pbx >= 2 && r.answers("alice", 200, "REGISTER") >= 2
    };
    r.poll("alice's refresh, at Kamailio and answered", WAIT, refreshed);
    let ok = "phones.alice.ua.isRegistered() && !phones.alice.events.some(e => e.ev === 'registrationFailed')";
    assert_eq!(r.js(ok), true, "alice's refresh failed:\n{}", r.traces());
    // The refreshed binding reaches alice: bob calls, alice rings, bob gives up.
    let alice = r.uri("alice");
    r.js(&format!("call('bob', '{alice}')"));
    r.wait_event("alice", "new-incoming");
    r.wait_event("bob", "progress");
    r.js("phones.bob.session.terminate(), true");
    r.assert_idle_soon();
    r.expect_event("bob", "failed", "local", "Canceled");
    r.expect_event("alice", "failed", "remote", "Canceled");
    // Unregister: the REGISTER with expires 0 at Kamailio, then alice is unknown there.
    r.js("phones.alice.ua.unregister(), true");
    let gone = r.wait_event("alice", "unregistered");
    assert_eq!(gone["code"], 200, "{gone}");
    r.pbx.expect(WAIT, "alice's un-REGISTER", "", |l| alice_register(l, &user, "0"));
    r.js("phones.bob.events = [], true");
    r.js(&format!("call('bob', '{alice}')"));
    let failed = r.expect_event("bob", "failed", "remote", "Not Found");
    assert_eq!(failed["code"], 404, "{failed}");
    r.assert_idle_soon();
    r.assert_no_proxy_errors();
}

/// alice calls bob, media both ways, alice hangs up.
#[test]
fn caller_hangs_up() {
    let mut r = Rig::new("caller_bye", 122, 600);
    let cid = r.establish();
    r.js("phones.alice.session.terminate(), true");
    r.assert_hung_up(&cid, true);
}

/// alice calls bob, media both ways, bob hangs up (his BYE spirals through sipfront and Kamailio to alice).
#[test]
fn callee_hangs_up() {
    let mut r = Rig::new("callee_bye", 123, 600);
    let cid = r.establish();
    r.js("phones.bob.session.terminate(), true");
    r.assert_hung_up(&cid, false);
}

/// alice holds and resumes (two re-INVITEs through the spiral, `hold`/`unhold` at both), media flows both ways
/// after the resume.
#[test]
fn hold_and_resume() {
    let mut r = Rig::new("hold", 124, 600);
    let cid = r.establish();
    for (on, ev, done) in [(true, "hold", "held"), (false, "unhold", "resumed")] {
        assert_eq!(r.js(&format!("setHold('alice', {on})")), true, "JsSIP would not {ev}");
        r.expect_event("alice", ev, "local", "");
        r.expect_event("bob", ev, "remote", "");
        r.wait_event("alice", done);
    }
    let (alice, bob) = (r.wait_rtp("alice", (0, 0)), r.wait_rtp("bob", (0, 0)));
    r.wait_rtp("alice", alice);
    r.wait_rtp("bob", bob);
    // Counted by CSeq (a retransmission is the same request): the INVITE, both re-INVITEs, an ACK for each.
    let cseqs = |pbx: &Kamailio, method: &str| {
        let lines = pbx.call_lines(&cid);
        let cseqs = lines.iter().filter(|l| l.is_request(method, &cid)).filter_map(|l| l.field("cs"));
        cseqs.map(String::from).collect::<std::collections::BTreeSet<_>>().len()
    };
    let what = "3 INVITEs and 3 ACKs at Kamailio";
    r.poll(what, WAIT, |r| cseqs(&r.pbx, "INVITE") == 3 && cseqs(&r.pbx, "ACK") == 3);
    r.js("phones.alice.session.terminate(), true");
    r.assert_hung_up(&cid, true);
}

/// alice gives up while bob rings: CANCEL through the spiral, 487 back, `failed`/`Canceled` at both.
#[test]
fn cancel_before_answer() {
    let mut r = Rig::new("cancel", 125, 600);
    let target = r.uri("bob");
    r.js(&format!("call('alice', '{target}')"));
    let cid = r.wait_event("bob", "new-incoming")["callId"].as_str().expect("a Call-ID").to_owned();
    r.wait_event("alice", "progress");
    r.js("phones.alice.session.terminate(), true");
    r.assert_idle_soon();
    r.expect_event("alice", "failed", "local", "Canceled");
    r.expect_event("bob", "failed", "remote", "Canceled");
    r.pbx.expect(WAIT, "the CANCEL", &cid, |l| l.is_request("CANCEL", &cid));
    r.pbx.expect(WAIT, "the 487", &cid, |l| l.is_reply(487, "INVITE", &cid));
    r.pbx.expect(WAIT, "the ACK of the 487", &cid, |l| l.is_request("ACK", &cid));
    // JsSIP reports the cancel before the 487 is in: wait for it, then count.
    r.poll("the 487 at alice", WAIT, |r| r.finals_received("alice", &cid, 487) > 0);
    assert_eq!(r.finals_received("alice", &cid, 487), 1, "alice got the 487 once:\n{}", r.traces());
    r.assert_sent_at_most_twice("bob", &cid);
    r.assert_no_proxy_errors();
}

/// bob rejects the call with 486: `failed`/`Busy` at alice, once.
#[test]
fn busy() {
    let mut r = Rig::new("busy", 126, 600);
    let target = r.uri("bob");
    r.js(&format!("call('alice', '{target}')"));
    let cid = r.wait_event("bob", "new-incoming")["callId"].as_str().expect("a Call-ID").to_owned();
    r.js("phones.bob.session.terminate({ status_code: 486 }), true");
    r.assert_idle_soon();
    r.expect_event("bob", "failed", "local", "Rejected");
    let failed = r.expect_event("alice", "failed", "remote", "Busy");
    assert_eq!(failed["code"], 486, "{failed}");
    r.pbx.expect(WAIT, "the 486", &cid, |l| l.is_reply(486, "INVITE", &cid));
    r.pbx.expect(WAIT, "the ACK of the 486", &cid, |l| l.is_request("ACK", &cid));
    assert_eq!(r.finals_received("alice", &cid, 486), 1, "alice got the 486 once:\n{}", r.traces());
    r.assert_sent_at_most_twice("bob", &cid);
    r.assert_no_proxy_errors();
}

/// A call to a user Kamailio does not know gets its 404, passed through to alice once.
#[test]
fn unknown_user_gets_404() {
    let mut r = Rig::new("404", 127, 600);
    let target = r.uri("nobody");
    r.js(&format!("call('alice', '{target}')"));
    let failed = r.expect_event("alice", "failed", "remote", "Not Found");
    assert_eq!(failed["code"], 404, "{failed}");
    r.assert_idle_soon();
    let cid = failed["callId"].as_str().expect("a Call-ID").to_owned();
    r.pbx.expect(WAIT, "the INVITE", &cid, |l| l.is_request("INVITE", &cid));
    assert!(r.pbx.log_text().contains(&format!("PBX-NOUSER ru={target} cid={cid}")), "Kamailio's lookup failed");
    r.pbx.expect(WAIT, "the ACK of the 404", &cid, |l| l.is_request("ACK", &cid));
    assert_eq!(r.finals_received("alice", &cid, 404), 1, "alice got the 404 once:\n{}", r.traces());
    assert!(r.events("bob").iter().all(|e| e["ev"] != "new-incoming"), "bob is not called");
    r.assert_no_proxy_errors();
}

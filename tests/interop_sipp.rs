//! Interop matrix, SIPp as the phones: a SIPp caller "alice" and a SIPp callee "bob" that registers through
//! sipfront first, in front of a proxy-shaped PBX (Kamailio: registrar and record-routing proxy with Path,
//! `tests/interop/kamailio.cfg`) and of a bridging one (the Sippy B2BUA, its REGISTERs relayed to a Kamailio
//! registrar, `tests/interop/kamailio-b2bua.cfg`). Every flow runs against both; all on UDP.
//!
//! ```text
//!   alice (SIPp UAC)  127.0.0.N:5090 ─┐                            ┌─ Kamailio 127.0.1.N:5080
//!                                     ├─ sipfront 127.0.0.N:5060 ──┤      or
//!   bob   (SIPp)      127.0.0.N:5070 ─┘   (admin :9090)            └─ Sippy 127.0.1.N:5080 ─ registrar :5082
//! ```
//!
//! bob is one SIPp run in client mode (`tests/interop/sipp/bob_register.xml`): REGISTER through sipfront (whose
//! Path brings the PBX's INVITE back to this socket), wait, unregister. The PBX's INVITE carries a Call-ID SIPp
//! has never seen, so it goes to the run's out-of-call scenario (`-oocsf bob_*.xml`, the callee's half), which
//! sets a SIPp global at its end; only then does the registering call go on to unregister. So bob's run succeeds
//! (exit 0, one successful call) only when the callee's half ran to its end. alice calls `bob` with the caller
//! scenarios of `tests/sipp/` (CANCEL, 486) or their variants here (`alice_*.xml`: the answered calls send the ACK
//! and BYE to the 200's Contact URI, as SIPp's `[next_url]` would copy the B2BUA's `Contact: Anonymous <sip:..>`
//! display name into the request line; the 404; the hold and resume, `alice_hold.xml` / `bob_hold.xml`, whose
//! re-INVITEs both ends check for a=sendonly / a=recvonly then a=sendrecv). One cell has no call: bob registers for
//! 4 s, refreshes and unregisters (`bob_refresh.xml`), each REGISTER reaching the registrar with sipfront's Path.
//!
//! Each flow asserts SIPp's own verdict at both ends (exit code, one successful call, none failed, no unexpected
//! message in `-trace_err`), what the PBX logged (Kamailio's `PBX-REQ` / `PBX-RPL` lines; the B2BUA's SIP log
//! and its registrar's `B2B-REQ` lines), and that sipfront's `sipfront_final_responses_total` counted 200s but
//! no 482, 481 or 408.
//!
//! Test numbers (tests/common/mod.rs): 138-147, 251-254. Needs `sipp`, `kamailio` and `b2bua_radius` (scripts/test.sh).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use common::sippy::{Bridged, LegEnd, Registrar, Sippy};
use common::*;

/// Deadline for anything that must happen (a registration, a line in a PBX's log).
const WAIT: Duration = Duration::from_secs(10);
/// SIPp's `-timeout` for each run: bob's covers the whole call, and a wait that never ends fails there.
const SIPP_TIMEOUT: Duration = Duration::from_secs(25);
/// bob's SIPp `-p`, on sipfront's address like the caller's (the PBX's address belongs to the PBX), away from the
/// caller's 5090. (SIPp 3.6.1's calls leave from a UDP port of their own; bob's Contact names that one.)
const BOB_PORT: u16 = 5070;
/// The scenarios of this file (bob's, and the caller's 404); alice's others are `tests/sipp/`'s.
const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sipp");

/// What happens to alice's call to bob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// bob answers, alice hangs up.
    CallerHangsUp,
    /// bob answers, then hangs up.
    CalleeHangsUp,
    /// alice cancels while bob rings.
    Cancel,
    /// bob answers 486 Busy Here.
    Busy,
    /// bob registered and unregistered before the call: the PBX answers 404.
    Unregistered,
    /// bob answers; alice holds (re-INVITE, a=sendonly) and resumes (re-INVITE, a=sendrecv), then hangs up.
    Hold,
}

impl Flow {
    /// alice's scenario: a file of `tests/sipp/` or an absolute path.
    fn caller(self) -> String {
        match self {
            Flow::CallerHangsUp => format!("{HERE}/alice_call.xml"),
            Flow::CalleeHangsUp => format!("{HERE}/alice_bye_in.xml"),
            Flow::Cancel => "uac_cancel.xml".into(),
            Flow::Busy => "uac_486.xml".into(),
            Flow::Unregistered => format!("{HERE}/alice_404.xml"),
            Flow::Hold => format!("{HERE}/alice_hold.xml"),
        }
    }

    /// bob's out-of-call scenario (the callee's half); none when bob is not called.
    fn callee(self) -> Option<&'static str> {
        match self {
            Flow::CallerHangsUp => Some("bob_answer.xml"),
            Flow::CalleeHangsUp => Some("bob_bye.xml"),
            Flow::Cancel => Some("bob_cancel.xml"),
            Flow::Busy => Some("bob_busy.xml"),
            Flow::Unregistered => None,
            Flow::Hold => Some("bob_hold.xml"),
        }
    }

    /// The final answer to the INVITE, as the PBX saw it.
    fn final_status(self) -> u16 {
        match self {
            Flow::CallerHangsUp | Flow::CalleeHangsUp | Flow::Hold => 200,
            Flow::Cancel => 487,
            Flow::Busy => 486,
            Flow::Unregistered => 404,
        }
    }
}

/// The PBX behind sipfront.
enum Pbx {
    /// Registrar and record-routing proxy in one: a call is one dialog, spiralling through sipfront.
    Kamailio(Kamailio),
    /// A B2BUA (every call two dialogs) and the registrar it relays REGISTERs to, which routes its B legs.
    Sippy { b2bua: Sippy, registrar: Registrar },
}

/// Which PBX a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PbxKind {
    Kamailio,
    Sippy,
}

/// Everything one test runs. Fields drop in order: the PBX, then the harness (SIPp, sipfront, the test dir).
struct Rig {
    pbx: Pbx,
    /// The admin listener (`/metrics`).
    admin: String,
    h: Harness,
}

impl Rig {
    fn new(name: &str, n: u8, kind: PbxKind) -> Rig {
        let mut h = Harness::new(name, n);
        let admin = format!("{}:9090", h.front_ip());
        let (pbx, cfg) = match kind {
            PbxKind::Kamailio => {
                let front_uri = format!("sip:{}", h.sipfront());
                let k = Kamailio::start(&h.dir, h.pbx(PBX1_PORT), &front_uri, true);
                let cfg = FrontConfig::new().backend("kamailio", k.addr, Tp::Udp).health("1s", "500ms", 3, 1);
                (Pbx::Kamailio(k), cfg)
            }
            PbxKind::Sippy => {
                let registrar = Registrar::start(&h.dir, h.pbx(PBX2_PORT));
                let b2bua = Sippy::start(&h.dir, h.pbx(PBX1_PORT), registrar.addr, registrar.addr);
                // Probes stay off: Sippy answers OPTIONS outside a dialog with 501. The registrar is a standby
                // backend, so sipfront knows its requests (the B legs) as a PBX's.
                let cfg = FrontConfig::new().backend("sippy", b2bua.addr, Tp::Udp).backend(
                    "registrar",
                    registrar.addr,
                    Tp::Udp,
                );
                (Pbx::Sippy { b2bua, registrar }, cfg)
            }
        };
        h.start_sipfront(&cfg.section(&format!("[admin]\nlisten = \"{admin}\"")));
        Rig { pbx, admin, h }
    }

    /// Start bob: he registers, then takes the call with `callee` (or, without one, unregisters at once).
    /// Returns once sipfront relayed the 200 to his REGISTER.
    fn start_bob(&mut self, callee: Option<&str>) -> Sipp {
        let mut spec = SippSpec::uac(&self.h, "bob", &format!("{HERE}/bob_register.xml"), Tp::Udp)
            .port(BOB_PORT)
            .timeout(SIPP_TIMEOUT)
            .arg("-s")
            .arg("bob");
        spec = match callee {
            Some(ooc) => spec.arg("-oocsf").arg(&format!("{HERE}/{ooc}")),
            None => spec.arg("-set").arg("done").arg("1"),
        };
        let bob = self.h.start_sipp(spec);
        let deadline = Instant::now() + WAIT;
        while !bob.trace_now().iter().any(|t| !t.sent && is_reply(&t.msg, 200, "REGISTER")) {
            if !self.h.sipp_running(&bob) {
                let run = self.h.wait_sipp(bob);
                panic!("bob's SIPp ended before his REGISTER was answered:\n{}", run.describe());
            }
            assert!(Instant::now() < deadline, "bob got no 200 to his REGISTER within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        bob
    }

    /// The sum of the `sipfront_final_responses_total` samples with this code (all origins).
    fn final_responses(&self, code: u16) -> f64 {
        sample_sum(&final_response_lines(&metrics_text(&self.admin), Some(code)))
    }

    /// sipfront still runs, counted the 200s it relayed (bob's REGISTERs at least), and no 482, 481 or 408.
    fn assert_front_clean(&mut self) {
        assert!(self.h.sipfront_alive(), "sipfront died:\n{}", self.h.front_log_text());
        assert!(self.final_responses(200) >= 2.0, "sipfront_final_responses_total counts the 200s sipfront relayed");
        for code in [482, 481, 408] {
            let n = self.final_responses(code);
            assert_eq!(n, 0.0, "sipfront counted {n} final {code}s; its warnings:\n{:#?}", self.h.front_log_problems());
        }
    }
}

fn is_reply(m: &SipMsg, status: u16, method: &str) -> bool {
    m.status() == Some(status) && m.cseq_method() == Some(method)
}

/// SIPp's verdict: exit 0, one successful call, none failed, and no event in its error log (`-trace_err`) but
/// the out-of-call INVITE handed to bob's callee scenario (an unexpected message, an aborted call, a discarded
/// message would be there).
fn assert_sipp_ok(run: &SippRun) {
    run.assert_ok(1);
    // Events are `DATE\tTIME\tEPOCH: text`, not always a line each: drop the expected text, and what is left must
    // be time stamps.
    let rest = run
        .errors
        .replace("The following events occurred:", "")
        .replace("Received out-of-call INVITE message, using the out-of-call scenario", "");
    // SIPp's own scheduling under a loaded machine (`Overload warning: the minor watchdog timer 500ms has been
    // tripped (N), M trips remaining.`) says nothing about the SIP it saw.
    let rest: String = rest.split('\n').filter(|l| !l.contains("Overload warning: the minor watchdog")).collect();
    let unexpected = rest.chars().any(|c| !(c.is_ascii_digit() || c.is_ascii_whitespace() || ".:-".contains(c)));
    assert!(!unexpected, "SIPp {} logged events:\n{}", run.label, run.describe());
}

/// The Call-ID of the first INVITE a run sent (alice) or received (bob).
fn invite_call_id(run: &SippRun, sent: bool) -> String {
    let mut msgs = if sent { run.sent().collect::<Vec<_>>() } else { run.received().collect() };
    msgs.retain(|m| m.method() == Some("INVITE"));
    let first = msgs.first().unwrap_or_else(|| panic!("{} has no INVITE:\n{}", run.label, run.summary_of_trace()));
    first.header("Call-ID").unwrap_or_default().to_string()
}

/// Every final answer to an INVITE that `run` sent went out at most twice (the first send and one retransmission):
/// its ACK came back.
fn assert_acked(run: &SippRun) {
    let mut sends: std::collections::BTreeMap<String, usize> = Default::default();
    for m in run.sent().filter(|m| m.status().is_some_and(|s| s >= 200) && m.cseq_method() == Some("INVITE")) {
        let cseq = m.header("CSeq").unwrap_or_default();
        *sends.entry(format!("{} (CSeq {cseq})", m.start)).or_default() += 1;
    }
    for (answer, n) in sends {
        assert!(n <= 2, "{} sent `{answer}` {n} times: no ACK reached it\n{}", run.label, run.summary_of_trace());
    }
}

/// bob registers (and for `Flow::Unregistered` unregisters at once), alice calls him; both SIPp runs are judged,
/// then what the PBX and sipfront saw.
fn run(flow: Flow, kind: PbxKind, n: u8) {
    let name = format!("sipp_{kind:?}_{flow:?}").to_lowercase();
    let mut r = Rig::new(&name, n, kind);
    let bob = r.start_bob(flow.callee());
    let caller = SippSpec::uac(&r.h, "alice", &flow.caller(), Tp::Udp).timeout(SIPP_TIMEOUT).arg("-s").arg("bob");
    let (alice, bob) = if flow == Flow::Unregistered {
        // bob's run ends once he has unregistered; only then does alice call.
        let bob = r.h.wait_sipp(bob);
        (r.h.run_sipp(caller), bob)
    } else {
        let alice = r.h.run_sipp(caller);
        (alice, r.h.wait_sipp(bob))
    };
    assert_sipp_ok(&alice);
    assert_sipp_ok(&bob);
    let a_leg = invite_call_id(&alice, true);
    let b_leg = if flow == Flow::Unregistered {
        assert!(bob.received().all(|m| m.method() != Some("INVITE")), "bob was called:\n{}", bob.summary_of_trace());
        None
    } else {
        assert_acked(&bob);
        Some(invite_call_id(&bob, false))
    };
    let front = r.h.sipfront().to_string();
    match &r.pbx {
        Pbx::Kamailio(k) => {
            assert_eq!(b_leg.as_deref().unwrap_or(&a_leg), a_leg, "a proxy keeps the Call-ID");
            assert_kamailio_saw(k, flow, &a_leg, &front);
        }
        Pbx::Sippy { b2bua, registrar } => assert_sippy_saw(b2bua, registrar, flow, &a_leg, b_leg.as_deref(), &front),
    }
    if flow == Flow::Hold {
        assert_held_and_resumed(&r.pbx, &alice, &bob, &a_leg, b_leg.as_deref().unwrap_or_default());
    }
    r.assert_front_clean();
}

/// The distinct CSeqs of `msgs` that `pred` accepts (a UDP retransmission is the same request or answer).
fn cseqs<'a>(msgs: impl Iterator<Item = &'a SipMsg>, pred: impl Fn(&SipMsg) -> bool) -> BTreeSet<String> {
    msgs.filter(|m| pred(m)).filter_map(|m| m.header("CSeq").map(String::from)).collect()
}

/// The `a=` direction of each distinct INVITE (or 200 to one) `msgs` holds, in CSeq order.
fn directions<'a>(msgs: impl Iterator<Item = &'a SipMsg>, answers: bool) -> Vec<String> {
    let mut by_cseq: std::collections::BTreeMap<u32, String> = Default::default();
    for m in msgs {
        let wanted = if answers { is_reply(m, 200, "INVITE") } else { m.method() == Some("INVITE") };
        let cseq = m.header("CSeq").and_then(|c| c.split(' ').next()?.parse().ok());
        if let (true, Some(cseq)) = (wanted, cseq) {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let dir =
                ["sendonly", "recvonly", "sendrecv", "inactive"].into_iter().find(|d| body.contains(&format!("a={d}")));
            by_cseq.insert(cseq, dir.unwrap_or("none").to_string());
        }
    }
    by_cseq.into_values().collect()
}

/// Hold and resume at both ends (alice sent sendonly then sendrecv and got recvonly then sendrecv back; bob got
/// sendonly then sendrecv; each INVITE answered 200 and ACKed) and at the PBX: on each of its dialogs, the INVITE
/// and both re-INVITEs, three 200s and three ACKs.
fn assert_held_and_resumed(pbx: &Pbx, alice: &SippRun, bob: &SippRun, a_leg: &str, b_leg: &str) {
    let offers = ["none", "sendonly", "sendrecv"];
    assert_eq!(directions(alice.sent(), false), offers, "alice's offers:\n{}", alice.summary_of_trace());
    let answers = ["none", "recvonly", "sendrecv"];
    assert_eq!(directions(alice.received(), true), answers, "alice's answers:\n{}", alice.summary_of_trace());
    assert_eq!(directions(bob.received(), false), offers, "bob's offers:\n{}", bob.summary_of_trace());
    assert_eq!(directions(bob.sent(), true), answers, "bob's answers:\n{}", bob.summary_of_trace());
    let acks = cseqs(bob.received(), |m| m.method() == Some("ACK"));
    assert_eq!(acks.len(), 3, "bob's ACKs: {acks:?}");
    // Each of the PBX's dialogs: three INVITEs, three 200s, three ACKs (one dialog through a proxy, two at a B2BUA).
    let legs = match pbx {
        Pbx::Kamailio(k) => {
            let lines = k.call_lines(a_leg);
            let count = |pred: &dyn Fn(&common::kamailio::PbxLine) -> bool| {
                lines.iter().filter(|l| pred(l)).filter_map(|l| l.field("cs")).collect::<BTreeSet<_>>().len()
            };
            let invites = count(&|l| l.is_request("INVITE", a_leg));
            let oks = count(&|l| l.is_reply(200, "INVITE", a_leg));
            let acks = count(&|l| l.is_request("ACK", a_leg));
            vec![("the call", invites, oks, acks)]
        }
        Pbx::Sippy { b2bua, registrar } => {
            let msgs: Vec<SipMsg> = b2bua.messages().into_iter().map(|m| m.msg).collect();
            let re_invites = registrar.lines().into_iter().filter(|l| l.is_request("INVITE", b_leg)).count();
            assert!(re_invites >= 3, "the registrar (record-routing) saw the B leg's INVITE and both re-INVITEs");
            [("the A leg", a_leg), ("the B leg", b_leg)]
                .into_iter()
                .map(|(leg, cid)| {
                    let of_leg = || msgs.iter().filter(move |m| m.header("Call-ID") == Some(cid));
                    let invites = cseqs(of_leg(), |m| m.method() == Some("INVITE")).len();
                    let oks = cseqs(of_leg(), |m| is_reply(m, 200, "INVITE")).len();
                    let acks = cseqs(of_leg(), |m| m.method() == Some("ACK")).len();
                    (leg, invites, oks, acks)
                })
                .collect()
        }
    };
    for (leg, invites, oks, acks) in legs {
        assert_eq!((invites, oks, acks), (3, 3, 3), "{leg}'s INVITEs, 200s to them and ACKs at the PBX");
    }
}

/// bob registers for 4 s, refreshes, unregisters (`bob_refresh.xml`): SIPp's verdict, each REGISTER at the
/// registrar (Expires 4, 4, 0, CSeq 1, 2, 3) with sipfront's Path (Kamailio's, or the B2BUA's registrar by way of
/// the B2BUA), and sipfront clean.
fn register_refresh_unregister(kind: PbxKind, n: u8) {
    let mut r = Rig::new(&format!("sipp_{kind:?}_register").to_lowercase(), n, kind);
    let spec = SippSpec::uac(&r.h, "bob", &format!("{HERE}/bob_refresh.xml"), Tp::Udp)
        .port(BOB_PORT)
        .timeout(SIPP_TIMEOUT)
        .arg("-s")
        .arg("bob");
    let bob = r.h.run_sipp(spec);
    assert_sipp_ok(&bob);
    let oks = cseqs(bob.received(), |m| is_reply(m, 200, "REGISTER"));
    assert_eq!(oks.len(), 3, "bob's 200s: {oks:?}");
    let path = format!("@{};lr", r.h.sipfront());
    let want = [("1", "4"), ("2", "4"), ("3", "0")];
    let regs: Vec<(String, String, String, String)> = match &r.pbx {
        Pbx::Kamailio(k) => {
            k.expect(WAIT, "bob's unregistering", "", |l| l.method() == "REGISTER" && l.field("expires") == Some("0"));
            let lines = k.lines().into_iter().filter(|l| l.request && l.method() == "REGISTER");
            let f = |l: &common::kamailio::PbxLine, k: &str| l.field(k).unwrap_or_default().to_string();
            lines.map(|l| (f(&l, "cs"), f(&l, "expires"), f(&l, "path"), f(&l, "src"))).collect()
        }
        Pbx::Sippy { b2bua, registrar } => {
            registrar
                .expect(WAIT, "bob's unregistering", |l| l.is_method("REGISTER") && l.field("expires") == Some("0"));
            let src = b2bua.addr.to_string();
            let lines = registrar.lines().into_iter().filter(|l| l.is_method("REGISTER"));
            let f = |l: &common::sippy::RegLine, k: &str| l.field(k).unwrap_or_default().to_string();
            // The registrar's log has no CSeq: the order of the lines stands for it (the B2BUA numbers its own).
            let cs = (1..).map(|i: u32| i.to_string());
            let regs: Vec<_> =
                lines.zip(cs).map(|(l, cs)| (cs, f(&l, "expires"), f(&l, "path"), f(&l, "src"))).collect();
            assert!(regs.iter().all(|r| r.3 == src), "relayed by the B2BUA: {regs:?}");
            regs
        }
    };
    let got: Vec<(&str, &str)> = regs.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(got, want, "the REGISTERs at the registrar (CSeq, Expires): {regs:?}");
    assert!(regs.iter().all(|r| r.2.contains(&path)), "each with sipfront's Path ({path}): {regs:?}");
    if let Pbx::Kamailio(_) = r.pbx {
        let front = r.h.sipfront().to_string();
        assert!(regs.iter().all(|r| r.3 == front), "each from sipfront: {regs:?}");
    }
    r.assert_front_clean();
}

/// Kamailio got bob's REGISTER and his unregistering from sipfront, and every request of the call (it
/// record-routes): the flow's requests, and the replies it relayed.
fn assert_kamailio_saw(k: &Kamailio, flow: Flow, cid: &str, front: &str) {
    let bobs = |l: &common::kamailio::PbxLine| {
        l.request && l.method() == "REGISTER" && l.field("contact").is_some_and(|c| c.starts_with("<sip:bob@"))
    };
    let reg = k.expect(WAIT, "bob's REGISTER", "", bobs);
    assert_eq!(reg.field("src"), Some(front), "bob's REGISTER came from sipfront: {}", reg.line);
    k.expect(WAIT, "bob's REGISTER with Expires 0", "", |l| bobs(l) && l.field("expires") == Some("0"));
    let (requests, reply): (&[&str], (u16, &str)) = match flow {
        Flow::CallerHangsUp | Flow::CalleeHangsUp | Flow::Hold => (&["INVITE", "ACK", "BYE"], (200, "BYE")),
        Flow::Cancel => (&["INVITE", "CANCEL", "ACK"], (487, "INVITE")),
        Flow::Busy => (&["INVITE", "ACK"], (486, "INVITE")),
        Flow::Unregistered => (&["INVITE", "ACK"], (404, "INVITE")),
    };
    for m in requests {
        k.expect(WAIT, &format!("the {m}"), cid, |l| l.is_request(m, cid));
    }
    if flow == Flow::Unregistered {
        // Kamailio's own answer: it looked bob up and found nobody.
        assert!(k.log_text().contains("PBX-NOUSER ru=sip:bob@"), "Kamailio looked bob up:\n{}", k.log_text());
    } else {
        k.expect(WAIT, &format!("the {} to the {}", reply.0, reply.1), cid, |l| l.is_reply(reply.0, reply.1, cid));
    }
}

/// The registrar got bob's REGISTER and his unregistering by way of the B2BUA, with sipfront's Path; the B2BUA
/// bridged alice's call (the A leg) to bob's (the B leg, routed by the registrar), and both legs ended as the flow
/// says.
fn assert_sippy_saw(b2bua: &Sippy, registrar: &Registrar, flow: Flow, a_leg: &str, b_leg: Option<&str>, front: &str) {
    let bobs = |l: &common::sippy::RegLine| {
        l.is_method("REGISTER") && l.field("contact").is_some_and(|c| c.starts_with("<sip:bob@"))
    };
    let reg = registrar.expect(WAIT, "bob's REGISTER", bobs);
    assert_eq!(reg.field("src"), Some(b2bua.addr.to_string().as_str()), "relayed by the B2BUA: {}", reg.line);
    let path = reg.field("path").unwrap_or_default();
    assert!(path.contains(&format!("@{front};lr")), "sipfront's Path with its flow token: {}", reg.line);
    registrar.expect(WAIT, "bob's REGISTER with Expires 0", |l| bobs(l) && l.field("expires") == Some("0"));
    let call = bridged(b2bua);
    assert_eq!(call.incoming, a_leg, "the B2BUA's A leg is alice's call: {call:?}");
    if let Some(b) = b_leg {
        assert_eq!(call.outgoing.as_deref(), Some(b), "bob got the B2BUA's B leg: {call:?}");
    }
    let want = match flow {
        Flow::CallerHangsUp | Flow::CalleeHangsUp | Flow::Hold => LegEnd::Bye,
        other => LegEnd::Failed(other.final_status()),
    };
    let ends = b2bua.wait_legs_end(&call, Instant::now() + WAIT);
    assert_eq!(ends, (Some(want), Some(want)), "how the B2BUA's legs (A, B) of {call:?} ended");
    let b = call.outgoing.clone().unwrap_or_default();
    let requests: &[&str] = match flow {
        Flow::CallerHangsUp | Flow::CalleeHangsUp | Flow::Hold => &["INVITE", "ACK", "BYE"],
        Flow::Cancel => &["INVITE", "CANCEL", "ACK"],
        Flow::Busy | Flow::Unregistered => &["INVITE", "ACK"],
    };
    for m in requests {
        registrar.expect(WAIT, &format!("the B leg's {m}"), |l| l.is_request(m, &b));
    }
    if flow == Flow::Unregistered {
        assert!(registrar.log_text().contains("B2B-NOUSER ru=sip:bob@"), "the registrar looked bob up");
    }
    // The A leg went between sipfront and the B2BUA only.
    let stray =
        b2bua.messages().into_iter().find(|m| m.msg.header("Call-ID") == Some(a_leg) && !m.peer.contains(front));
    assert!(stray.is_none(), "the A leg went elsewhere than sipfront: {stray:?}");
}

/// The latest call the B2BUA took, once its log shows both legs' INVITEs (it writes the log from a thread).
fn bridged(b2bua: &Sippy) -> Bridged {
    let deadline = Instant::now() + WAIT;
    loop {
        let calls = b2bua.calls();
        if let Some(c) = calls.last().filter(|c| c.outgoing.is_some()) {
            return c.clone();
        }
        assert!(Instant::now() < deadline, "the B2BUA bridged no call: {calls:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------ the matrix

/// `mod $module { fn kamailio, fn sippy }`, each calling `$cell` (a `fn(PbxKind, u8)`) with its PBX and test number
/// (`$nk` for Kamailio, `$ns` for Sippy).
macro_rules! matrix {
    ($module:ident, $cell:expr, $nk:literal, $ns:literal) => {
        mod $module {
            #[allow(unused_imports)]
            use super::{register_refresh_unregister, run, Flow, PbxKind};

            #[test]
            fn kamailio() {
                ($cell)(PbxKind::Kamailio, $nk);
            }

            #[test]
            fn sippy() {
                ($cell)(PbxKind::Sippy, $ns);
            }
        }
    };
}

matrix!(caller_hangs_up, |k, n| run(Flow::CallerHangsUp, k, n), 138, 143);
matrix!(callee_hangs_up, |k, n| run(Flow::CalleeHangsUp, k, n), 139, 144);
matrix!(cancel_before_answer, |k, n| run(Flow::Cancel, k, n), 140, 145);
matrix!(busy, |k, n| run(Flow::Busy, k, n), 141, 146);
matrix!(unregistered_user_gets_404, |k, n| run(Flow::Unregistered, k, n), 142, 147);
matrix!(hold_and_resume, |k, n| run(Flow::Hold, k, n), 251, 252);
matrix!(register_refresh_unregister, register_refresh_unregister, 253, 254);

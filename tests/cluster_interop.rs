//! Real SIP peers through a leader failover: three sipfront nodes in network namespaces (`tests/netns`), three
//! baresip phones (alice, bob, carol) in the phones namespace registered through the VIP over UDP, and a real PBX:
//!
//! - **Kamailio** 5.6 on pbx1 (`tests/interop/kamailio.cfg` with `WITH_RR`): a registrar with Path that
//!   record-routes, loose-routes and relays calls between registered phones (`lookup`, `t_relay`), logging every
//!   request and reply it sees. Every call is a spiral, phone -> sipfront -> Kamailio -> sipfront -> phone, with
//!   one Call-ID.
//! - **the Sippy B2BUA** on pbx1, Kamailio behind it on pbx2 as the registrar (REGISTERs go through the B2BUA's
//!   proxy; sipfront has it as its standby backend): every call is two dialogs with their own Call-IDs, alice ->
//!   sipfront -> Sippy (A leg), then Sippy -> Kamailio -> sipfront -> bob (B leg), as a bridging PBX does.
//!
//! Injected, in each: `kill -9` of the leader while two calls are established (alice->bob, carol->bob; bob taking
//! the second put the first on hold with a re-INVITE, as baresip does). Checked, nothing lost: once a survivor
//! holds the VIP, alice (the caller) ends call 1 and bob (the callee) ends call 2; at both phones each call
//! closes, the BYE was sent once and got 200, the callee's 200 to the INVITE was sent once (the ACK reached it),
//! and no call is left; the PBX saw every INVITE, ACK and BYE and relayed the 200 to each BYE (the B2BUA ended
//! both legs of every call with a BYE answered 200); no phone sent or got a 408, 481 or 482, and the node serving
//! after the failover counted none (`sipfront_final_responses_total`); a new call alice->bob then goes through
//! and ends cleanly too; no dialog is left on the new leader; never two VIP holders.
//!
//! The phones and PBXs are the drivers of `tests/shared` (`baresip`, `kamailio`, `sippy`), started from a thread
//! inside their namespace (`nsenter::in_ns`): a child inherits the network namespace of the thread that forks it,
//! and a socket stays in the namespace it was made in, so they run there unchanged, driven from the test thread.
//!
//! Lab tags 19-20 (see tests/netns/mod.rs). The tests take a lock so they run one at a time (times are measured).
//! The times are printed (`failover interop ...`) and appended to `$SIPFRONT_FAILOVER_LOG` when it is set.

mod netns;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netns::baresip::{Phone, PhoneSpec};
use netns::config::quoted;
use netns::kamailio::Kamailio;
use netns::nsenter::in_ns;
use netns::sippy::{LegEnd, Sippy};
use netns::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Any single step (a registration, a call set up or ended, a VIP move) must be done within this.
const STEP: Duration = Duration::from_secs(10);
/// Every node's admin API, on the loopback of its own namespace.
const ADMIN: &str = "127.0.0.1:9090";
/// Final responses that mean a broken call: the dialog was lost (481), a spiral was taken for a loop (482), a
/// request went nowhere (408).
const BROKEN: [u16; 3] = [408, 481, 482];
/// The `flows` column of `sipfront status` (registration flows in the replicated table).
const FLOWS: usize = 9;

/// One call as each phone knows it: one Call-ID through a proxying PBX, one per leg through a B2BUA.
#[derive(Debug, Clone)]
struct Call {
    caller: String,
    callee: String,
}

/// What a run through the failover measured.
struct Failover {
    old: u8,
    new: u8,
    /// Calls 1 and 2 (through the kill) and 3 (after it).
    calls: [Call; 3],
    /// Dialog entries every node held at the kill.
    dialogs: String,
    vip_moved: Duration,
    /// From each hangup to its BYE's 200 at the phone that hung up.
    byes: [Duration; 3],
    /// From the kill to the 200 of call 1's and call 2's BYE.
    ended: [Duration; 2],
}

/// The cluster and the phones, the PBX already up (it is the test's, started before this).
struct Rig {
    // Dropped in this order: the phones, then the lab (its namespaces and everything still in them).
    alice: Phone,
    bob: Phone,
    carol: Phone,
    sampler: VipSampler,
    lab: Lab,
}

/// A baresip phone in the phones namespace: the account `sip:NAME@VIP` (so it registers and calls through the VIP,
/// no outbound proxy needed), registering once an hour (the failover must not lean on a fresh REGISTER), SIP on
/// 5070 + 2n (baresip binds TLS on the next port), its control socket on 4440 + n.
fn start_phone(lab: &Lab, name: &str, n: u16) -> Phone {
    let mut spec = PhoneSpec::new(name, name, &lab.vip().to_string(), lab.phone_ip()).regint(3600);
    spec.sip_port = 5070 + 2 * n;
    spec.ctrl_port = 4440 + n;
    let dir = lab.dir.clone();
    let phone = in_ns(&lab.ns(Ns::Phones), move || Phone::start(spec, &dir)).expect("baresip in the phones namespace");
    // From its SIP trace, not its REGISTER_OK event: baresip registers as it starts, and an event sent before the
    // driver's control connection is up is lost.
    poll_until(&format!("{name} registered"), STEP, || {
        phone
            .sip_trace()
            .iter()
            .any(|t| !t.sent && t.msg.status() == Some(200) && t.msg.cseq_method() == Some("REGISTER"))
    });
    phone
}

/// `caller` calls `callee`, who answers; established at both ends (the callee says so only once the ACK came).
fn call(caller: &mut Phone, callee: &mut Phone, domain: &str) -> Call {
    caller.dial(&format!("sip:{}@{domain}", callee.spec.user));
    let incoming = callee.wait_event("CALL_INCOMING", STEP);
    callee.accept();
    if callee.try_wait_event_where(STEP, |e| e.kind == "CALL_ESTABLISHED" && e.call == incoming.call).is_none() {
        let events = callee.event_summary();
        panic!("{}: call {} not established within {STEP:?}: {events}", callee.name(), incoming.call);
    }
    // The caller sets up one call at a time: its next CALL_ESTABLISHED is this call's.
    let established = caller.wait_event("CALL_ESTABLISHED", STEP);
    Call { caller: established.call, callee: incoming.call }
}

/// Whether `phone`'s trace holds a 200 to a BYE of call `id` that it received.
fn bye_answered(phone: &Phone, id: &str) -> bool {
    phone.sip_trace().iter().any(|t| {
        !t.sent
            && t.msg.status() == Some(200)
            && t.msg.cseq_method() == Some("BYE")
            && t.msg.header("Call-ID") == Some(id)
    })
}

/// `ender` hangs up its call `id` (made its current call first: bob has two); the BYE is answered 200 at `ender`
/// and both ends close the call, `other` (as `other_id`) as hung up by its peer. From the hangup to that 200.
fn hang_up(ender: &mut Phone, id: &str, other: &mut Phone, other_id: &str) -> Duration {
    ender.command("callfind", id);
    let started = Instant::now();
    ender.hangup();
    let what = format!("{}: 200 to its BYE of {id}", ender.name());
    poll_until(&what, STEP, || bye_answered(ender, id));
    let took = started.elapsed();
    for (phone, id, why) in [(ender, id, "Connection reset by user"), (other, other_id, "Connection reset by peer")] {
        let Some(closed) = phone.try_wait_event_where(STEP, |e| e.kind == "CALL_CLOSED" && e.call == id) else {
            let events = phone.event_summary();
            panic!("{}: call {id} not closed within {STEP:?}: {events}", phone.name());
        };
        assert_eq!(closed.param, why, "{}: how call {id} ended", phone.name());
    }
    took
}

/// How many requests `method` of call `id` the phone sent.
fn sent_requests(phone: &Phone, method: &str, id: &str) -> usize {
    let trace = phone.sip_trace();
    trace.iter().filter(|t| t.sent && t.msg.method() == Some(method) && t.msg.header("Call-ID") == Some(id)).count()
}

/// Every message with a status in [`BROKEN`] that `phone` sent or received, as `sent|received CODE CSeq Call-ID`.
fn broken_at_phone(phone: &Phone) -> Vec<String> {
    let trace = phone.sip_trace();
    trace
        .iter()
        .filter(|t| t.msg.status().is_some_and(|s| BROKEN.contains(&s)))
        .map(|t| {
            let dir = if t.sent { "sent" } else { "received" };
            let (status, cseq) = (t.msg.status().unwrap_or_default(), t.msg.header("CSeq").unwrap_or_default());
            format!("{dir} {status} {cseq} {}", t.msg.header("Call-ID").unwrap_or_default())
        })
        .collect()
}

/// Kamailio saw the INVITE, ACK and BYE of call `id` and relayed the 200 to the BYE; no 408/481/482 for it.
fn assert_kamailio_saw(kam: &Kamailio, id: &str) {
    let lines = kam.call_lines(id);
    for method in ["INVITE", "ACK", "BYE"] {
        assert!(lines.iter().any(|l| l.is_request(method, id)), "Kamailio saw no {method} of call {id}");
    }
    assert!(lines.iter().any(|l| l.is_reply(200, "BYE", id)), "Kamailio relayed no 200 to the BYE of {id}");
    let bad: Vec<&str> =
        lines.iter().filter(|l| l.status().is_some_and(|s| BROKEN.contains(&s))).map(|l| l.line.as_str()).collect();
    assert!(bad.is_empty(), "Kamailio got broken-call replies for {id}: {bad:?}");
}

/// GET `path` from node i's admin API, inside its namespace.
fn admin_get(lab: &Lab, i: u8, path: &'static str) -> String {
    let got = in_ns(&lab.ns(Ns::Node(i)), move || http_exchange(ADMIN, "GET", path, None, "")).expect("enter node ns");
    let (code, body) = got.unwrap_or_else(|| panic!("n{i}: no answer from the admin API on {ADMIN}"));
    assert_eq!(code, 200, "n{i}: GET {path}: {body}");
    body
}

/// The `sipfront_final_responses_total` samples of one code (`"481"`, `"200"` ...) as `(labels, value)`.
fn final_responses(metrics: &str, code: &str) -> Vec<(String, f64)> {
    let want = format!("code=\"{code}\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("sipfront_final_responses_total{"))
        .filter_map(|l| l.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|kv| kv == want))
        .map(|(labels, v)| (labels.to_string(), v.trim().parse().unwrap_or(f64::NAN)))
        .collect()
}

impl Rig {
    /// Three nodes with these backends (UDP, priority by order: new calls and REGISTERs go to the first), `health`
    /// changes of the probes if any; one VIP holder that sees the first backend up; the three phones registered
    /// through the VIP.
    fn start(mut lab: Lab, backends: &[SocketAddr], health: &[(&str, &str)]) -> Rig {
        for i in 1..=3u8 {
            let mut cfg = NodeConfig::cluster(&lab, i).without("backend").table("admin", &[("listen", &quoted(ADMIN))]);
            for (b, addr) in (1..).zip(backends) {
                cfg = cfg.backend(&format!("pbx{b}"), &format!("sip:{addr};transport=udp"), b);
            }
            for (k, v) in health {
                cfg = cfg.set("health", k, v);
            }
            lab.start_node(i, &cfg.toml());
        }
        let sampler = lab.vip_sampler();
        poll_until("one VIP holder", Duration::from_secs(15), || sampler.holders().len() == 1);
        let leader = *sampler.holders().first().unwrap();
        lab.wait_sip_ready(&format!("n{leader}"), Ns::Phones, lab.vip_sip());
        poll_until("the PBX up at the leader", STEP, || {
            let v: serde_json::Value = serde_json::from_str(&admin_get(&lab, leader, "/api/v1/backends")).unwrap();
            v["backends"][0]["state"] == "up"
        });
        let alice = start_phone(&lab, "alice", 0);
        let bob = start_phone(&lab, "bob", 1);
        let carol = start_phone(&lab, "carol", 2);
        Rig { alice, bob, carol, sampler, lab }
    }

    /// Wait until node `leader` reports every node with its dialogs and the 3 phones' flows; the dialog count.
    fn wait_replicated(&self, leader: u8) -> String {
        let mut dialogs = String::new();
        poll_until("dialogs and flows on every node", STEP, || {
            let s = self.lab.status(leader);
            let col = |i: u8, c: usize| status_field(&s, i, c).map(str::to_string);
            let same = (1..=3).all(|i| col(i, DIALOGS) == col(leader, DIALOGS) && col(i, FLOWS) == col(leader, FLOWS));
            dialogs = col(leader, DIALOGS).unwrap_or_default();
            same && col(leader, FLOWS).as_deref() == Some("3") && dialogs.parse::<u64>().is_ok_and(|d| d > 0)
        });
        dialogs
    }

    /// The fault and the calls around it; see the module docs. Checks what the phones and sipfront saw; the PBX is
    /// the caller's to check.
    fn failover(&mut self) -> Failover {
        let domain = self.lab.vip().to_string();
        let old = *self.sampler.holders().first().unwrap();
        let call1 = call(&mut self.alice, &mut self.bob, &domain);
        let call2 = call(&mut self.carol, &mut self.bob, &domain);
        // bob's accept of call 2 held call 1: a re-INVITE toward alice, done once its ACK reached her.
        let alice = &self.alice;
        poll_until("bob's hold of call 1 done", STEP, || {
            alice
                .sip_trace()
                .iter()
                .any(|t| !t.sent && t.msg.method() == Some("ACK") && t.msg.header("Call-ID") == Some(&call1.caller))
        });
        let dialogs = self.wait_replicated(old);

        let killed = self.lab.kill9(&format!("n{old}"));
        self.lab.wait_exit(&format!("n{old}"), Duration::from_secs(2)).expect("the killed node exits");
        let sampler = &self.sampler;
        poll_until("a survivor holds the VIP", STEP, || {
            sampler.holders().len() == 1 && !sampler.holders().contains(&old)
        });
        let new = *sampler.holders().first().unwrap();
        let vip_moved = sampler
            .changes()
            .iter()
            .find(|c| c.at > killed && c.holders.len() == 1 && c.holders.contains(&new))
            .map(|c| c.at - killed)
            .expect("the VIP's move in the sampler's timeline");
        self.lab.wait_sip_ready(&format!("n{new}"), Ns::Phones, self.lab.vip_sip());

        let bye1 = hang_up(&mut self.alice, &call1.caller, &mut self.bob, &call1.callee);
        let ended1 = killed.elapsed();
        let bye2 = hang_up(&mut self.bob, &call2.callee, &mut self.carol, &call2.caller);
        let ended2 = killed.elapsed();
        let call3 = call(&mut self.alice, &mut self.bob, &domain);
        let bye3 = hang_up(&mut self.alice, &call3.caller, &mut self.bob, &call3.callee);

        let calls = [call1, call2, call3];
        // Each BYE was sent once (no retransmission: none was lost on the way) and bob's 200 to each INVITE once
        // (its ACK came).
        let byes = [(&self.alice, &calls[0].caller), (&self.bob, &calls[1].callee), (&self.alice, &calls[2].caller)];
        for (phone, id) in byes {
            assert_eq!(sent_requests(phone, "BYE", id), 1, "{}: BYEs of {id} sent", phone.name());
        }
        for c in &calls {
            assert_eq!(self.bob.sent_responses(200, "INVITE", &c.callee), 1, "bob's 200s to the INVITE of {c:?}");
        }
        for phone in [&mut self.alice, &mut self.bob, &mut self.carol] {
            phone.wait_no_calls(STEP).unwrap_or_else(|e| panic!("{e}"));
            let broken = broken_at_phone(phone);
            assert!(broken.is_empty(), "{}: broken-call responses: {broken:?}", phone.name());
        }
        Failover { old, new, calls, dialogs, vip_moved, byes: [bye1, bye2, bye3], ended: [ended1, ended2] }
    }

    /// What the serving node counted: no 408/481/482, and at least `min_ok` final 200s. The 200s counted.
    fn assert_sipfront_clean(&self, f: &Failover, min_ok: f64) -> f64 {
        let text = admin_get(&self.lab, f.new, "/metrics");
        for code in BROKEN {
            let counted: Vec<_> =
                final_responses(&text, &code.to_string()).into_iter().filter(|(_, v)| *v != 0.0).collect();
            assert!(counted.is_empty(), "n{} counted {code} final responses: {counted:?}", f.new);
        }
        let ok: f64 = final_responses(&text, "200").iter().map(|(_, v)| v).sum();
        assert!(
            ok >= min_ok,
            "n{} counted {ok} final 200s, {min_ok} at least: {:?}",
            f.new,
            final_responses(&text, "200")
        );
        let (lab, new) = (&self.lab, f.new);
        poll_until("no dialog left on the new leader", STEP, || {
            status_field(&lab.status(new), new, DIALOGS) == Some("0")
        });
        self.sampler.assert_never_two();
        ok
    }
}

fn report(pbx: &str, f: &Failover, ok: f64) {
    let line = format!(
        "failover interop {pbx} kill9 n{}->n{}: {} dialogs replicated, VIP moved {} ms; call 1 (caller's BYE {} ms) \
         ended {} ms and call 2 (callee's BYE {} ms) ended {} ms after the kill; new call's BYE {} ms; \
         n{} final 200s {ok}",
        f.old,
        f.new,
        f.dialogs,
        f.vip_moved.as_millis(),
        f.byes[0].as_millis(),
        f.ended[0].as_millis(),
        f.byes[1].as_millis(),
        f.ended[1].as_millis(),
        f.byes[2].as_millis(),
        f.new,
    );
    println!("{line}");
    if let Ok(path) = std::env::var("SIPFRONT_FAILOVER_LOG") {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{line}").unwrap();
    }
}

/// Kamailio as the PBX: one Call-ID per call, sipfront carries both passes of the spiral.
#[test]
fn baresip_calls_through_kamailio_survive_a_leader_kill9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(lab) = Lab::new(19) else { return };
    let (dir, pbx, front) = (lab.dir.clone(), lab.pbx_sip(1), format!("sip:{}", lab.vip_sip()));
    // Record-routing (`true`): it stays in the calls' dialogs, so every in-dialog request spirals too.
    let kam = in_ns(&lab.ns(Ns::Pbx(1)), move || Kamailio::start(&dir, pbx, &front, true)).expect("Kamailio in pbx1");
    let mut rig = Rig::start(lab, &[pbx], &[]);
    let f = rig.failover();
    for c in &f.calls {
        assert_eq!(c.caller, c.callee, "a proxy keeps the Call-ID");
        assert_kamailio_saw(&kam, &c.caller);
    }
    // Each BYE and call 3's INVITE are relayed twice (once per pass of the spiral): 2 + 2 + 2 + 2.
    let ok = rig.assert_sipfront_clean(&f, 8.0);
    report("kamailio", &f, ok);
}

/// The Sippy B2BUA as the PBX (Kamailio behind it as the registrar): two legs, two Call-IDs, both through sipfront.
#[test]
fn baresip_calls_through_the_sippy_b2bua_survive_a_leader_kill9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(lab) = Lab::new(20) else { return };
    let (dir, registrar, front) = (lab.dir.clone(), lab.pbx_sip(2), format!("sip:{}", lab.vip_sip()));
    let kam = in_ns(&lab.ns(Ns::Pbx(2)), move || Kamailio::start(&dir, registrar, &front, true));
    let kam = kam.expect("Kamailio in pbx2");
    let (dir, pbx) = (lab.dir.clone(), lab.pbx_sip(1));
    let sippy =
        in_ns(&lab.ns(Ns::Pbx(1)), move || Sippy::start(&dir, pbx, registrar, registrar)).expect("Sippy in pbx1");
    // The B2BUA answers OPTIONS outside a dialog with 501: alive all the same. The registrar is a backend too (the
    // standby one: calls and REGISTERs go to the B2BUA), as it is when one PBX host is B2BUA and registrar: the B
    // leg's ACK and BYE reach sipfront from the registrar, and sipfront relays in-dialog requests toward a phone
    // only from a backend (from anyone else, an ACK is dropped and a BYE gets 481).
    let mut rig = Rig::start(lab, &[pbx, registrar], &[("ok_codes", "[200, 501]")]);
    let f = rig.failover();
    let bridged = sippy.calls();
    assert_eq!(bridged.len(), 3, "the B2BUA bridged every call: {bridged:?}");
    for (c, b) in f.calls.iter().zip(&bridged) {
        assert_eq!((&b.incoming, b.outgoing.as_ref()), (&c.caller, Some(&c.callee)), "the legs of {c:?}");
        let ends = sippy.wait_legs_end(b, Instant::now() + STEP);
        assert_eq!(ends, (Some(LegEnd::Bye), Some(LegEnd::Bye)), "how the B2BUA's legs (A, B) of {c:?} ended");
        assert_kamailio_saw(&kam, &c.callee);
    }
    // Each call is two legs through sipfront: per BYE one 200 on each leg, and call 3's INVITE on each leg.
    let ok = rig.assert_sipfront_clean(&f, 8.0);
    report("sippy", &f, ok);
}

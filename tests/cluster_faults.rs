//! Fault tests of the three-node cluster: the real binary on every node, each node, the phones and both PBXs in
//! their own network namespace on one bridge (`tests/netns`), the VIP on the bridge subnet. Each test injects a
//! fault while SIPp places calls through the VIP, counts every call, and checks that nothing was lost: every
//! call (INVITE, hold, BYE) succeeds from the phone's side and every established call's BYE reached its PBX and
//! was answered; a 20 ms sampler reading every node's addresses never sees two VIP holders.
//!
//! Lab tags 10-14 (see tests/netns/mod.rs). The tests take a lock so they run one at a time: failover times
//! are the thing measured, and three clusters at once on two cores would measure the machine instead.
//! Failover times are printed (`failover ...`) and appended to `$SIPFRONT_FAILOVER_LOG` when it is set.

mod netns;

use std::io::Write as _;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netns::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Calls per second during every fault, and how long each is held: about 100 established calls at any time.
const RATE: u64 = 50;
const HOLD: Duration = Duration::from_secs(2);

/// A running cluster: PBXs up, three nodes, one VIP holder.
struct Cluster {
    lab: Lab,
    vip: VipSampler,
    pinger: Pinger,
    tomls: Vec<String>,
}

impl Cluster {
    fn start(tag: u8) -> Option<Cluster> {
        let mut lab = Lab::new(tag)?;
        lab.start_pbx(1, "uas_health.xml");
        lab.start_pbx(2, "uas_health.xml");
        let tomls: Vec<String> = (1..=3).map(|i| NodeConfig::cluster(&lab, i).toml()).collect();
        for i in 1..=3u8 {
            lab.start_node(i, &tomls[usize::from(i) - 1]);
        }
        let vip = lab.vip_sampler();
        poll_until("one VIP holder", Duration::from_secs(15), || vip.holders().len() == 1);
        lab.wait_sip_ready(&format!("n{}", vip.holders().first().unwrap()), Ns::Phones, lab.vip_sip());
        let pinger = lab.pinger(lab.vip_sip());
        Some(Cluster { lab, vip, pinger, tomls })
    }

    /// The one VIP holder (waiting up to 1 s for it: the sampler reads every 20 ms, a move takes a moment).
    fn holder(&self) -> u8 {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let h = self.vip.holders();
            if h.len() == 1 {
                return *h.first().unwrap();
            }
            assert!(Instant::now() < deadline, "one holder expected:\n{}", self.vip.timeline());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node that took the VIP from `old` (the sampler reads every 20 ms: it may trail the first answer).
    fn new_holder(&self, old: u8) -> u8 {
        poll_until("a new VIP holder", Duration::from_secs(1), || {
            let h = self.vip.holders();
            h.len() == 1 && !h.contains(&old)
        });
        self.holder()
    }

    fn restart(&mut self, i: u8) {
        self.lab.start_node(i, &self.tomls[usize::from(i) - 1]);
    }

    /// `sipfront status` as node i's namespace sees it.
    fn status(&self, i: u8) -> String {
        self.lab.status(i)
    }

    /// The status row of node `id` as seen from node `from`.
    fn row(&self, from: u8, id: u8) -> String {
        status_row(&self.status(from), id).to_string()
    }

    /// Wait until node `i` reports itself a follower of `leader`, with its log applied as far as the leader's.
    fn wait_follower(&self, i: u8, leader: u8, within: Duration) {
        poll_until(&format!("n{i} follows n{leader}, caught up"), within, || {
            let s = self.status(leader);
            status_field(&s, i, ROLE) == Some("follower")
                && status_field(&s, i, LEADER) == Some(leader.to_string().as_str())
                && status_field(&s, i, APPLIED).is_some()
                && status_field(&s, i, APPLIED) == status_field(&s, leader, APPLIED)
        });
    }

    /// The calls every PBX saw: INVITEs (by Call-ID), BYEs received, 200s to BYE sent.
    fn pbx_byes(&self) -> (usize, usize, usize) {
        let (mut invites, mut byes, mut ok) = (std::collections::HashSet::new(), 0, 0);
        for j in 1..=2 {
            for t in self.lab.pbx_trace(j) {
                let m = &t.msg;
                if !t.sent && m.method() == Some("INVITE") {
                    invites.insert(m.header("Call-ID").unwrap_or_default().to_string());
                } else if !t.sent && m.method() == Some("BYE") {
                    byes += 1;
                } else if t.sent && m.status() == Some(200) && m.cseq_method() == Some("BYE") {
                    ok += 1;
                }
            }
        }
        (invites.len(), byes, ok)
    }
}

fn calls(c: &mut Cluster, label: &str, n: u64) -> Uac {
    let spec = UacSpec::new(label, c.lab.vip_sip())
        .scenario("uac_failover.xml")
        .calls(n)
        .rate(RATE)
        .hold(HOLD)
        .timeout(Duration::from_secs(n / RATE + 60))
        .trace(std::env::var_os("SIPFRONT_TRACE_CALLS").is_some());
    c.lab.start_uac(spec)
}

/// Every call succeeded at the phone, and the PBXs answered a BYE for every call they saw.
fn assert_nothing_lost(c: &mut Cluster, uac: Uac, n: u64) {
    let run = c.lab.wait_uac(uac);
    assert_eq!((run.successful, run.failed), (Some(n), Some(0)), "calls through the faults: {}", run.describe());
    let (invited, _byes, byes_ok) = c.pbx_byes();
    assert_eq!(invited as u64, n, "the PBXs saw every call once");
    assert!(byes_ok as u64 >= n, "every call's BYE answered 200 by its PBX: {byes_ok} of {n}");
    c.vip.assert_never_two();
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
    let line = format!(
        "failover {what}: n={} min={} median={} max={} ms  all={ms:?}",
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
    eprintln!("{line}");
    if let Ok(path) = std::env::var("SIPFRONT_FAILOVER_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Fault: the leader's process is killed with SIGKILL, ten times, with about 100 calls established and 50 new
/// calls per second. Each time a survivor must answer an OPTIONS sent to the VIP within 1 s.
#[test]
fn leader_kill9_ten_times_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start(10) else { return };
    const KILLS: usize = 10;
    let n = RATE * (KILLS as u64 * 5 + 6);
    let uac = calls(&mut c, "calls", n);
    let mut times = Vec::new();
    std::thread::sleep(Duration::from_millis(2500)); // ~100 calls established
    for round in 0..KILLS {
        let old = c.holder();
        let killed_at = c.lab.kill9(&format!("n{old}"));
        // The failover time runs from the kill; only OPTIONS sent once the process is gone count as answered
        // by a survivor (a signal takes a moment to land).
        c.lab.wait_exit(&format!("n{old}"), Duration::from_secs(2)).expect("killed node exits");
        let dead_at = Instant::now();
        let gap = c.pinger.wait_gap_after(dead_at, Duration::from_secs(5)) + (dead_at - killed_at);
        let new = c.new_holder(old);
        assert_ne!(new, old, "round {round}: the VIP moved");
        assert!(gap <= Duration::from_secs(1), "round {round}: OPTIONS to the VIP answered {gap:?} after the kill");
        times.push(gap);
        c.restart(old);
        c.wait_follower(old, new, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(c.holder(), new, "round {round}: the restarted node did not disturb the leader");
    }
    assert_nothing_lost(&mut c, uac, n);
    report("kill -9", &mut times);
}

/// Fault: the leader's link to the LAN is cut (its bridge port disabled: nothing in or out), five times. It
/// must give the VIP up and another node take it, never two at once; healed, it rejoins as a follower and the
/// VIP stays where it is.
#[test]
fn partitioned_leader_gives_up_the_vip_and_rejoins_as_follower() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start(11) else { return };
    const CUTS: usize = 5;
    let n = RATE * (CUTS as u64 * 5 + 6);
    let uac = calls(&mut c, "calls", n);
    let mut times = Vec::new();
    std::thread::sleep(Duration::from_millis(2500));
    for round in 0..CUTS {
        let old = c.holder();
        c.lab.cut_link(Ns::Node(old));
        let cut_at = Instant::now();
        let gap = c.pinger.wait_gap_after(cut_at, Duration::from_secs(5));
        let new = c.new_holder(old);
        assert_ne!(new, old, "round {round}: the VIP moved off the cut-off node");
        assert!(gap <= Duration::from_secs(1), "round {round}: OPTIONS to the VIP answered {gap:?} after the cut");
        times.push(gap);
        let row = c.row(old, old);
        assert!(!row.contains("held"), "round {round}: the cut-off node still holds the VIP: {row}");
        let changes_before = c.vip.changes().len();
        c.lab.restore_link(Ns::Node(old));
        c.wait_follower(old, new, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(c.holder(), new, "round {round}: healing moved the VIP");
        assert_eq!(c.vip.changes().len(), changes_before, "round {round}: no VIP move on heal:\n{}", c.vip.timeline());
    }
    assert_nothing_lost(&mut c, uac, n);
    report("partition", &mut times);
}

/// Fault: every node is restarted in turn (SIGTERM, start again, wait until caught up) under 50 calls/s.
#[test]
fn rolling_restart_loses_no_call_and_no_dialog() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start(12) else { return };
    let n = RATE * 30;
    let uac = calls(&mut c, "calls", n);
    std::thread::sleep(Duration::from_millis(2500));
    for i in [1u8, 2, 3] {
        let label = format!("n{i}");
        c.lab.sigterm(&label);
        let st = c.lab.wait_exit(&label, Duration::from_secs(10)).expect("node stops on SIGTERM");
        assert!(st.success(), "n{i} exits cleanly: {st}");
        c.restart(i);
        let leader = c.holder();
        c.wait_follower(i, leader, Duration::from_secs(10));
        // The restarted node holds the established calls again: its dialog count catches up with the leader's.
        let s = c.status(leader);
        let established: u64 = status_field(&s, leader, DIALOGS).and_then(|d| d.parse().ok()).unwrap_or(0);
        assert!(established > 0, "calls are established during the restarts");
        poll_until(&format!("n{i} has the leader's dialogs"), Duration::from_secs(5), || {
            let s = c.status(leader);
            status_field(&s, i, DIALOGS).is_some() && status_field(&s, i, DIALOGS) == status_field(&s, leader, DIALOGS)
        });
    }
    assert_nothing_lost(&mut c, uac, n);
    for i in 1..=3 {
        assert_eq!(status_field(&c.status(i), i, DIALOGS), Some("0"), "n{i}: every dialog ended everywhere");
    }
}

/// Fault: both followers are killed. The last node has no quorum: it must not hold the VIP, and must say why in
/// its status and its log. One follower back: the VIP is held again.
#[test]
fn two_of_three_down_leaves_no_vip_holder() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start(13) else { return };
    let last = c.holder();
    let others: Vec<u8> = (1..=3).filter(|i| *i != last).collect();
    for i in &others {
        c.lab.kill9(&format!("n{i}"));
    }
    c.vip.wait_no_holder(Duration::from_secs(2));
    let row = c.row(last, last);
    assert!(!row.contains("held") && row.contains("quorum"), "status says why: {row}");
    poll_until("the log says it", Duration::from_secs(2), || {
        let log = c.lab.log_text(&format!("n{last}"));
        log.contains("released the VIP") && log.contains("quorum")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.vip.holders().is_empty(), "still no holder:\n{}", c.vip.timeline());
    c.restart(others[0]);
    poll_until("a leader again", Duration::from_secs(10), || c.vip.holders().len() == 1);
    c.lab.wait_sip_ready(&format!("n{}", c.holder()), Ns::Phones, c.lab.vip_sip());
    c.vip.assert_never_two();
}

/// Fault (planned): leadership handed to each other node in turn with `sipfront switchover` under load.
#[test]
fn switchover_under_load_fails_no_call() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start(14) else { return };
    let n = RATE * 16;
    let uac = calls(&mut c, "calls", n);
    let mut times = Vec::new();
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..3 {
        let old = c.holder();
        let to = old % 3 + 1;
        let t0 = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &c.lab.ns(Ns::Node(old)), &sipfront_bin(), "switchover", "--to", &to.to_string()])
            .arg("--config")
            .arg(c.lab.dir.join(format!("n{old}.toml")))
            .output()
            .expect("run sipfront switchover");
        assert!(out.status.success(), "switchover: {}", String::from_utf8_lossy(&out.stderr));
        c.vip.wait_sole_holder(to, Duration::from_secs(2));
        times.push(c.pinger.wait_gap_after(t0, Duration::from_secs(2)));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_nothing_lost(&mut c, uac, n);
    report("switchover", &mut times);
}

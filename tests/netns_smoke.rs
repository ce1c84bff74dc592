//! The network-namespace harness (tests/netns) against today's binary: one standalone node in `sf1-n1` on its
//! own address, both PBXs, 20 calls from the phone namespace, the OPTIONS pinger (through a cut and restored
//! link too), the VIP sampler watching an address added and removed by hand, and the cleanup (no namespace, no process left), after a normal end and
//! after a panic. Needs root; skipped with a message otherwise. Lab tags: 1-9.

mod netns;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::*;

/// What a dropped lab must not leave: its namespaces in `ip netns list`, a live process in its groups.
fn assert_cleaned_up(namespaces: &[String], groups: &[u32]) {
    let listed = listed_namespaces();
    let left: Vec<&String> = namespaces.iter().filter(|n| listed.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left after the lab dropped: {left:?}");
    let alive = live_processes_in_groups(groups);
    assert!(alive.is_empty(), "processes left after the lab dropped:\n{}", alive.join("\n"));
}

fn call_ids_of(trace: &[Traced], method: &str) -> BTreeSet<String> {
    trace
        .iter()
        .filter(|t| !t.sent && t.msg.method() == Some(method))
        .filter_map(|t| t.msg.header("Call-ID").map(String::from))
        .collect()
}

#[test]
fn one_node_two_pbxs_calls_pings_and_vip_sampling() {
    let (namespaces, groups) = {
        let Some(mut lab) = Lab::new(1) else { return };
        lab.start_pbx(1, "uas_health.xml");
        lab.start_pbx(2, "uas_health.xml");
        let node = lab.node_sip(1);
        let toml = NodeConfig::standalone(&lab, 1).toml();
        lab.start_node(1, &toml);
        lab.wait_sip_ready("n1", Ns::Phones, node);

        // The pinger, from the phone namespace to the node: answered at once.
        let ping = lab.pinger(node);
        let gap = ping.wait_gap_after(Instant::now(), Duration::from_secs(5));
        assert!(gap < Duration::from_secs(1), "first 200 to the pinger after {gap:?}:\n{}", ping.summary());

        // 20 calls at 10/s from 10.201.T.50, all through the node to the preferred PBX.
        let calls_from = Instant::now();
        let run = lab.run_uac(UacSpec::new("calls", node).calls(20).rate(10).timeout(Duration::from_secs(30)));
        run.assert_ok(20);
        let placed: BTreeSet<String> = run
            .sent()
            .filter(|m| m.method() == Some("INVITE"))
            .filter_map(|m| m.header("Call-ID"))
            .map(String::from)
            .collect();
        assert_eq!(placed.len(), 20, "20 distinct calls placed");
        let (pbx1, pbx2) = (lab.pbx_trace(1), lab.pbx_trace(2));
        assert_eq!(call_ids_of(&pbx1, "INVITE"), placed, "every call reached pbx1 (priority 1)");
        assert!(call_ids_of(&pbx2, "INVITE").is_empty(), "no call reached pbx2");
        // The node probes both PBXs across the bridge (besides the harness's own readiness OPTIONS).
        let probes =
            |t: &[Traced]| call_ids_of(t, "OPTIONS").into_iter().filter(|c| !c.starts_with("lab-ready-")).count();
        assert!(probes(&pbx1) > 0 && probes(&pbx2) > 0, "the node's OPTIONS probes reach both PBXs");

        // The pinger kept getting answers while the calls ran.
        let calls_until = Instant::now();
        assert!(
            ping.ok_between(calls_from, calls_until) > 0
                && ping.longest_outage(calls_from, calls_until) < Duration::from_secs(1),
            "the node stopped answering pings during the calls:\n{}",
            ping.summary()
        );

        // A pulled cable: the phones cut off the bridge get no answer, and get one again once plugged back.
        let cut_at = Instant::now();
        lab.cut_link(Ns::Phones);
        std::thread::sleep(Duration::from_millis(300)); // a window to observe silence in, not a readiness wait
        let restored_at = Instant::now();
        lab.restore_link(Ns::Phones);
        assert_eq!(ping.ok_between(cut_at, restored_at), 0, "answers through a cut link:\n{}", ping.summary());
        let back = ping.wait_gap_after(restored_at, Duration::from_secs(5));
        assert!(back < Duration::from_secs(1), "answers again {back:?} after the link came back");

        // The sampler, pointed at the VIP nobody runs yet: added by hand on node 2, then removed.
        let vip = lab.vip_sampler();
        assert_eq!(vip.holders(), BTreeSet::new(), "nobody holds the VIP yet");
        let cidr = format!("{}/24", lab.vip());
        let added_at = Instant::now();
        lab.ip_in(Ns::Node(2), &["addr", "add", &cidr, "dev", "eth0"]);
        let seen = vip.wait_sole_holder(2, Duration::from_secs(2));
        assert!(seen >= added_at, "the sampler saw node 2 hold the VIP before it was added:\n{}", vip.timeline());
        let removed_at = Instant::now();
        lab.ip_in(Ns::Node(2), &["addr", "del", &cidr, "dev", "eth0"]);
        let gone = vip.wait_no_holder(Duration::from_secs(2));
        assert!(gone >= removed_at, "the sampler saw the VIP go before it was removed:\n{}", vip.timeline());
        vip.stop();
        vip.assert_never_two();
        let states: Vec<BTreeSet<u8>> = vip.changes().into_iter().map(|c| c.holders).collect();
        assert_eq!(states, [BTreeSet::new(), BTreeSet::from([2]), BTreeSet::new()], "{}", vip.timeline());
        assert!(vip.samples() >= 3, "{}", vip.timeline());

        // A graceful stop: SIGTERM, and sipfront exits 0.
        lab.sigterm("n1");
        let status = lab.wait_exit("n1", Duration::from_secs(10)).expect("sipfront did not exit on SIGTERM");
        assert!(status.success(), "sipfront exited {status} on SIGTERM:\n{}", lab.log_text("n1"));

        (lab.namespaces(), lab.process_groups())
    };
    assert_cleaned_up(&namespaces, &groups);
}

#[test]
fn lab_cleans_up_after_a_panic() {
    // The lab's namespaces and process groups: filled in inside its scope, read after it unwound.
    type Made = (Vec<String>, Vec<u32>);
    let left: Arc<Mutex<Option<Made>>> = Arc::default();
    let left2 = left.clone();
    let outcome = std::panic::catch_unwind(move || {
        let Some(mut lab) = Lab::new(2) else { return };
        lab.start_pbx(1, "uas_health.xml");
        lab.kill9("p1");
        assert!(!lab.alive("p1"));
        lab.restart_pbx(1);
        // A process that would outlive the test by minutes if the lab did not kill it.
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        lab.spawn(Ns::Phones, "sleeper", sleeper);
        assert!(lab.alive("sleeper") && lab.alive("p1"));
        *left2.lock().expect("lock") = Some((lab.namespaces(), lab.process_groups()));
        panic!("deliberate failure: the lab must clean up while unwinding (its log tails are printed above)");
    });
    let Some((namespaces, groups)) = left.lock().expect("lock").take() else {
        outcome.expect("the lab panicked before it was up");
        return; // not root: skipped
    };
    assert!(outcome.is_err(), "the closure should have panicked");
    assert_eq!(groups.len(), 3, "p1 twice and the sleeper: {groups:?}");
    assert_cleaned_up(&namespaces, &groups);
}

/// The config builder, without root: the cluster format is well-formed TOML with the brief's values, edits land
/// where they should, and the standalone subset passes today's `sipfront check-config`.
#[test]
fn node_configs_render() {
    let dir = std::env::temp_dir().join(format!("sipfront-netns-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = NodeConfig::cluster_in(7, &dir, 2)
        .set("cluster", "election_timeout", "\"500ms\"")
        .set_backend("pbx2", "weight", "3")
        .raw("[timers]\nt1 = \"100ms\"")
        .toml();
    let v: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"));
    let get = |path: &str| {
        path.split('.')
            .try_fold(toml::Value::Table(v.clone()), |at, k| at.get(k).cloned())
            .unwrap_or_else(|| panic!("no {path} in:\n{text}"))
    };
    assert_eq!(get("node.id").as_integer(), Some(2));
    assert_eq!(get("sip.advertise").as_str(), Some("10.201.7.100"));
    assert_eq!(get("sip.listen").as_array().map(|a| a.len()), Some(2));
    assert_eq!(get("cluster.listen").as_str(), Some("10.201.7.12:7000"));
    assert_eq!(get("cluster.election_timeout").as_str(), Some("500ms"));
    assert_eq!(get("cluster.heartbeat").as_str(), Some("60ms"));
    let peers = get("cluster.peers");
    let peers = peers.as_array().expect("peers");
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[2].get("addr").and_then(|a| a.as_str()), Some("10.201.7.13:7000"));
    assert_eq!(get("cluster.secret_file").as_str(), Some(dir.join("cluster.key").to_str().expect("utf-8")));
    assert_eq!(get("vip.address").as_str(), Some("10.201.7.100/24"));
    assert_eq!(get("vip.garp_count").as_integer(), Some(3));
    assert_eq!(get("health.down_after").as_integer(), Some(3));
    assert_eq!(get("timers.t1").as_str(), Some("100ms"));
    let backends = get("backend");
    let backends = backends.as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0].get("uri").and_then(|u| u.as_str()), Some("sip:10.201.7.21:5060;transport=udp"));
    assert_eq!(backends[1].get("weight").and_then(|w| w.as_integer()), Some(3));

    let standalone = NodeConfig::standalone_in(7, 1).toml();
    assert!(!standalone.contains("[cluster]") && !standalone.contains("[vip]"), "{standalone}");
    let path = dir.join("standalone.toml");
    std::fs::write(&path, &standalone).expect("write");
    let out = Command::new(sipfront_bin()).arg("check-config").arg(&path).output().expect("run sipfront");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "check-config refused:\n{standalone}\n{}", String::from_utf8_lossy(&out.stderr));
}

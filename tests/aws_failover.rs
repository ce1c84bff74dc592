//! The AWS failover module against the `moto` EC2 emulator (behind our fault-injecting proxy), with the real
//! `aws-sdk-ec2` on both sides: sipfront's movers, and the test's own client that builds the world and checks
//! in the emulator who owns what. Each test has its own emulator process.
//!
//! Faults injected here, each named in its test: throttling (RequestLimitExceeded) and 5xx answers, a call
//! applied but answered 500, the API paused mid-move (calls hang until it resumes), a stale term, and realistic
//! volume state changes (attaching/detaching for several polls, attach refused while attached elsewhere).
#![cfg(feature = "aws")]

mod aws;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use aws::{Emulator, World};
use aws_sdk_ec2::types::VolumeAttachmentState;
use sipfront::config::{AwsConfig, AwsVipMethod, ConfigDuration};
use sipfront::failover::aws::{AwsError, AwsVip, AwsVipError, AwsVipSpec, EbsError, EbsSpec, EbsVolume, Ec2};
use sipfront::failover::Claim;

/// sipfront's EC2 handle for node `i` (0-based) of the world.
fn ec2_for(emu: &Emulator, w: &World, i: usize, call_timeout_ms: u64, budget_ms: u64) -> Arc<Ec2> {
    aws::test_env();
    let cfg = AwsConfig {
        region: Some("us-east-1".into()),
        instance_id: Some(w.instances[i].clone()),
        eni_id: Some(w.enis[i].clone()),
        endpoint_url: Some(emu.ec2.clone()),
        call_timeout: ConfigDuration::millis(call_timeout_ms),
        call_budget: ConfigDuration::millis(budget_ms),
    };
    Arc::new(Ec2::new(cfg))
}

fn vip_spec(method: AwsVipMethod, address: Ipv4Addr, w: &World) -> AwsVipSpec {
    AwsVipSpec {
        method,
        address,
        allocation_id: None,
        private_ip: None,
        route_tables: if method == AwsVipMethod::RouteTable { vec![w.route_table.clone()] } else { vec![] },
    }
}

fn ebs_spec(w: &World) -> EbsSpec {
    EbsSpec {
        volume_id: w.volume.clone(),
        device: "/dev/sdf".into(),
        local_device: None,
        mount_point: "/nonexistent/sipfront-test".into(),
        fs_type: "ext4".into(),
        mount_options: String::new(),
        attach_timeout: Duration::from_secs(20),
        force_detach_after: Duration::from_millis(500),
        unmount_timeout: Duration::from_secs(1),
    }
}

/// Node i (1-based) claims at `term`; `silent` says how long every other node has been silent.
fn claim(node: u32, term: u64, silent: Option<Duration>) -> Claim {
    Claim::new(node, term, || Ok(()), move |_| silent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_ip_moves_a_b_c_and_a_stale_term_is_refused() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 11).await;
    let vip: Ipv4Addr = "10.11.1.100".parse().unwrap();
    for (i, term) in [(0usize, 1u64), (1, 2), (2, 3)] {
        let mut v = AwsVip::new(ec2_for(&emu, &w, i, 2000, 10_000), vip_spec(AwsVipMethod::SecondaryIp, vip, &w), None);
        v.acquire(&claim(i as u32 + 1, term, None)).await.unwrap_or_else(|e| panic!("node {} acquire: {e}", i + 1));
        // moto leaves the address on the old ENI too: we unassign it, so exactly one holder must remain.
        assert_eq!(w.secondary_holders(&c, "10.11.1.100").await, vec![w.enis[i].clone()], "after node {}", i + 1);
    }
    let key = "sipfront:owner:10.11.1.100";
    assert_eq!(w.owner_tag(&c, &w.subnet, key).await.as_deref(), Some("node=3 term=3"));
    // Node 1 acting on term 2 (stale: node 3 moved it at term 3) is refused, and nothing moves.
    let mut stale = AwsVip::new(ec2_for(&emu, &w, 0, 2000, 10_000), vip_spec(AwsVipMethod::SecondaryIp, vip, &w), None);
    let err = stale.acquire(&claim(1, 2, None)).await.expect_err("a stale term must be refused");
    assert!(
        matches!(err, AwsVipError::Aws(AwsError::Fenced { node: 3, term: 3, ours: 2, .. })),
        "refused as fenced by node 3 term 3: {err}"
    );
    assert_eq!(w.secondary_holders(&c, "10.11.1.100").await, vec![w.enis[2].clone()], "node 3 still holds it");
    assert_eq!(emu.count("AssignPrivateIpAddresses"), 3, "no assign for the stale claim:\n{}", emu.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_ip_moves_a_b_c() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 12).await;
    let public: Ipv4Addr = w.eip.parse().unwrap();
    for (i, term) in [(0usize, 1u64), (1, 2), (2, 3)] {
        let mut v =
            AwsVip::new(ec2_for(&emu, &w, i, 2000, 10_000), vip_spec(AwsVipMethod::ElasticIp, public, &w), None);
        v.acquire(&claim(i as u32 + 1, term, None)).await.unwrap_or_else(|e| panic!("node {} acquire: {e}", i + 1));
        assert_eq!(w.eip_holder(&c).await.as_deref(), Some(w.enis[i].as_str()), "after node {}", i + 1);
    }
    // Acquiring again at the same term changes nothing and calls no AssociateAddress.
    let before = emu.count("AssociateAddress");
    let mut v = AwsVip::new(ec2_for(&emu, &w, 2, 2000, 10_000), vip_spec(AwsVipMethod::ElasticIp, public, &w), None);
    v.acquire(&claim(3, 3, None)).await.unwrap();
    assert_eq!(emu.count("AssociateAddress"), before, "an Elastic IP already ours is not re-associated");
    assert_eq!(w.owner_tag(&c, &w.allocation, "sipfront:owner").await.as_deref(), Some("node=3 term=3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_entry_moves_a_b_c() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 13).await;
    let vip: Ipv4Addr = "192.168.250.1".parse().unwrap();
    for (i, term) in [(0usize, 1u64), (1, 2), (2, 3)] {
        let mut v = AwsVip::new(ec2_for(&emu, &w, i, 2000, 10_000), vip_spec(AwsVipMethod::RouteTable, vip, &w), None);
        v.acquire(&claim(i as u32 + 1, term, None)).await.unwrap_or_else(|e| panic!("node {} acquire: {e}", i + 1));
        assert_eq!(
            w.route_target(&c, "192.168.250.1/32").await.as_deref(),
            Some(w.enis[i].as_str()),
            "after node {}",
            i + 1
        );
    }
    assert_eq!(emu.count("CreateRoute"), 1, "created once, then replaced:\n{}", emu.calls());
    assert_eq!(emu.count("ReplaceRoute"), 2);
    let eni = c.describe_network_interfaces().network_interface_ids(&w.enis[2]).send().await.unwrap();
    assert_eq!(eni.network_interfaces()[0].source_dest_check(), Some(false), "source/dest check off on the holder");
}

/// Realistic volume behaviour (several polls of attaching/detaching; attach refused while attached elsewhere):
/// A attaches; B takes it from a live A with a plain detach; C takes it from a B silent for longer than
/// `force_detach_after` with Force. Then a stale term is refused and the attachment stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebs_volume_moves_with_detach_then_force_when_the_holder_is_dead() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 14).await;
    emu.realism(r#"{"attach_polls": 2, "detach_polls": 2, "refuse_attach_in_use": true}"#);
    let vol = |i| EbsVolume::new(ec2_for(&emu, &w, i, 2000, 10_000), ebs_spec(&w));

    vol(0).attach(&claim(1, 1, None)).await.expect("A attaches");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[0].clone(), VolumeAttachmentState::Attached)]);

    emu.clear_calls();
    // A is alive (acknowledging the leader): detach without Force, wait through "detaching", attach.
    vol(1).attach(&claim(2, 2, Some(Duration::ZERO))).await.expect("B attaches");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[1].clone(), VolumeAttachmentState::Attached)]);
    let calls = emu.calls();
    assert!(calls.contains("\"Force\": \"false\""), "a plain detach from a live holder:\n{calls}");
    assert!(!calls.contains("\"Force\": \"true\""), "no Force while the holder is alive:\n{calls}");

    emu.clear_calls();
    // B has been silent for 10 s (dead to the cluster): Force at once.
    vol(2).attach(&claim(3, 3, Some(Duration::from_secs(10)))).await.expect("C attaches");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[2].clone(), VolumeAttachmentState::Attached)]);
    assert!(emu.calls().contains("\"Force\": \"true\""), "Force on a dead holder:\n{}", emu.calls());
    assert_eq!(w.owner_tag(&c, &w.volume, "sipfront:owner").await.as_deref(), Some("node=3 term=3"));

    // A, on the stale term 2, is refused by the tag; C keeps the volume.
    let err = vol(0).attach(&claim(1, 2, None)).await.expect_err("stale term");
    assert!(matches!(err, EbsError::Aws(AwsError::Fenced { node: 3, term: 3, .. })), "{err}");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[2].clone(), VolumeAttachmentState::Attached)]);

    // C lets go: detached, available, and re-attachable by A at a newer term.
    vol(2).detach_here(3).await.expect("C detaches");
    assert!(w.attachments(&c).await.is_empty(), "available after release");
    vol(0).attach(&claim(1, 4, None)).await.expect("A re-attaches at term 4");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[0].clone(), VolumeAttachmentState::Attached)]);
}

/// Throttling and 5xx on the way, and an attach that EC2 applied but answered 500: all retried, counted, and
/// the move completes once; nothing is attached twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_5xx_and_a_half_applied_call_are_retried() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 15).await;
    emu.realism(r#"{"refuse_attach_in_use": true}"#);
    emu.faults(
        r#"[{"action": "DescribeVolumes", "kind": "throttle", "count": 2},
            {"action": "AttachVolume", "kind": "apply_then_error", "count": 1},
            {"action": "CreateTags", "kind": "unavailable", "count": 1}]"#,
    );
    let ec2 = ec2_for(&emu, &w, 0, 2000, 20_000);
    EbsVolume::new(ec2.clone(), ebs_spec(&w)).attach(&claim(1, 1, None)).await.expect("attach despite the faults");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[0].clone(), VolumeAttachmentState::Attached)]);
    assert!(ec2.retries() >= 4, "2 throttled + 1 half-applied + 1 unavailable retried; counted {}", ec2.retries());
    let calls = emu.calls();
    assert_eq!(calls.matches("\"fault\": \"throttle\"").count(), 2, "{calls}");
    // The half-applied attach is retried once (refused: already attached) and then found done.
    assert_eq!(calls.matches("\"action\": \"AttachVolume\"").count(), 2, "{calls}");
    assert_eq!(
        calls.matches("\"action\": \"AttachVolume\"").count(),
        2,
        "the half-applied attach found done, not repeated twice: {calls}"
    );
}

/// The API stops answering mid-move (every call hangs). Each attempt times out and is retried with backoff;
/// within the budget the move completes once the API is back. Past the budget the move fails and says so,
/// and running it again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_paused_mid_move_is_retried_and_completed_after_it_returns() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 16).await;
    let ec2 = ec2_for(&emu, &w, 0, 300, 8_000);
    let vol = EbsVolume::new(ec2.clone(), ebs_spec(&w));
    emu.pause();
    let move_ = tokio::spawn(async move { vol.attach(&claim(1, 1, None)).await });
    // Let a few attempts time out, then bring the API back.
    let t0 = std::time::Instant::now();
    while ec2.retries() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no retries seen while paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emu.resume();
    move_.await.unwrap().expect("completed after the API came back");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[0].clone(), VolumeAttachmentState::Attached)]);

    // Past the budget: reported as exhausted, nothing half-applied silently; a second run completes it.
    let ec2 = ec2_for(&emu, &w, 1, 300, 1_000);
    let vol = EbsVolume::new(ec2.clone(), ebs_spec(&w));
    emu.pause();
    let err = vol.attach(&claim(2, 2, Some(Duration::ZERO))).await.expect_err("budget exhausted while paused");
    assert!(matches!(err, EbsError::Aws(AwsError::Exhausted { .. })), "{err}");
    emu.resume();
    vol.attach(&claim(2, 2, Some(Duration::ZERO))).await.expect("resumed");
    assert_eq!(w.attachments(&c).await, vec![(w.instances[1].clone(), VolumeAttachmentState::Attached)]);
}

/// Sum of the emulator's own time for the calls it logged (the `"ms"` of each entry), and how many calls.
fn emulator_ms(calls: &str) -> (f64, usize) {
    let mut total = 0.0;
    let mut n = 0;
    for part in calls.split("\"ms\": ").skip(1) {
        let end = part.find([',', '}']).unwrap_or(part.len());
        total += part[..end].trim().parse::<f64>().unwrap_or(0.0);
        n += 1;
    }
    (total, n)
}

/// Not a pass/fail timing: moves the VIP (each method) and the volume back and forth ten times and prints, per
/// move, the wall time, the calls made, the time the emulator spent on them, and the rest (sipfront's own
/// overhead: the SDK, signing, HTTP on loopback, our logic). The closing note of the AWS issue quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_latency_report() {
    let emu = Emulator::start();
    let c = emu.client().await;
    let w = World::build(&c, 17).await;
    let ec2: Vec<Arc<Ec2>> = (0..2).map(|i| ec2_for(&emu, &w, i, 2000, 10_000)).collect();
    let mut term = 0u64;
    let mut lines = Vec::new();
    for (label, method, addr) in [
        ("secondary-ip", AwsVipMethod::SecondaryIp, "10.17.1.100"),
        ("elastic-ip", AwsVipMethod::ElasticIp, w.eip.as_str()),
        ("route-table", AwsVipMethod::RouteTable, "192.168.251.1"),
    ] {
        let address: Ipv4Addr = addr.parse().unwrap();
        let mut samples = Vec::new();
        for round in 0..10 {
            let i = round % 2;
            term += 1;
            let mut v = AwsVip::new(ec2[i].clone(), vip_spec(method, address, &w), None);
            emu.clear_calls();
            let t = std::time::Instant::now();
            v.acquire(&claim(i as u32 + 1, term, None)).await.unwrap();
            let wall = t.elapsed().as_secs_f64() * 1000.0;
            let (server, n) = emulator_ms(&emu.calls());
            if round > 0 {
                samples.push((wall, server, n)); // round 0 also learns the node's identity
            }
        }
        lines.push(summary(label, &samples));
    }
    let mut samples = Vec::new();
    for round in 0..10 {
        let i = round % 2;
        term += 1;
        emu.clear_calls();
        let t = std::time::Instant::now();
        EbsVolume::new(ec2[i].clone(), ebs_spec(&w))
            .attach(&claim(i as u32 + 1, term, Some(Duration::ZERO)))
            .await
            .unwrap();
        let wall = t.elapsed().as_secs_f64() * 1000.0;
        let (server, n) = emulator_ms(&emu.calls());
        samples.push((wall, server, n));
    }
    lines.push(summary("ebs attach (detach from the other)", &samples));
    for l in &lines {
        println!("move latency {l}");
    }
    if let Some(path) = std::env::var_os("SIPFRONT_FAILOVER_LOG") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for l in &lines {
            let _ = writeln!(f, "move latency {l}");
        }
    }
}

fn summary(label: &str, samples: &[(f64, f64, usize)]) -> String {
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let wall = med(samples.iter().map(|s| s.0).collect());
    let server = med(samples.iter().map(|s| s.1).collect());
    let over = med(samples.iter().map(|s| s.0 - s.1).collect());
    let max_over = samples.iter().map(|s| s.0 - s.1).fold(0.0, f64::max);
    let calls = samples.iter().map(|s| s.2).max().unwrap_or(0);
    format!(
        "{label}: median {wall:.1} ms per move, {calls} calls, emulator {server:.1} ms, sipfront overhead median \
         {over:.1} ms (max {max_over:.1} ms)"
    )
}

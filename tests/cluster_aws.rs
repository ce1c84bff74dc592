//! The data volume and the AWS VIP following the active role in the three-node lab (`tests/netns`), the real
//! binary on every node:
//! - `aws`: `[vip] mode = "aws"` (secondary IP) and `[volume] mode = "aws-ebs"` against the EC2 emulator
//!   (`tests/aws/emulator.py`, run inside the phones' namespace, with realistic attach/detach states), the
//!   attached "EBS volume" being an ext4 loop device the test made; a plain detach never completes there, as
//!   for a volume still mounted on a live host. Fault: the leader is `kill -9`ed.
//! - `local`: `[volume] mode = "local"` on an ext4 image file (each node attaches its own loop device when it
//!   takes the role). Fault: the leader is `kill -9`ed while its test PBX writes records; then a graceful stop.
//! - placement: `[[backend]] node` maps pbx1 to node 1 and pbx2 to node 2. Fault: pbx1 stops; the role and the
//!   volume must move to node 2.
//!
//! Each node runs in its own mount namespace (`ip netns exec` makes one), so a node's mount is its own, and a
//! killed node's mount goes with its namespace. The test PBX (`pbx_hook.sh`, the volume's hooks) appends
//! numbered records to the volume, fsyncs each, and only then acknowledges it in a file outside the volume; it
//! stops when its sipfront dies. What must hold: every record acknowledged before the kill is on the volume
//! when the survivor has mounted it, the volume is mounted on exactly one node, and (aws) the emulator shows the
//! VIP and the volume on the survivor's ENI and instance, tagged with its node id and Raft term.
//!
//! Lab tags 15-17 (tests/netns/mod.rs). Times (from the kill to VIP and volume owned by the survivor) are
//! printed and appended to `$SIPFRONT_FAILOVER_LOG` when it is set.
#![cfg(feature = "aws")]

mod aws;
mod netns;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws::{Emulator, World};
use netns::config::quoted;
use netns::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The test PBX run by the volume's hooks. Acquire: note the owner, start the writer (bounded: 3000 records,
/// and only while the sipfront that ran the hook lives). Release: stop the writer.
const PBX_HOOK: &str = r#"#!/bin/sh
set -eu
DIR="$(dirname "$0")"
PIDFILE="$DIR/writer-n$SIPFRONT_NODE_ID.pid"
case "$SIPFRONT_EVENT" in
acquire)
  echo "n$SIPFRONT_NODE_ID term $SIPFRONT_TERM" >> "$SIPFRONT_MOUNT_POINT/owners"
  sync "$SIPFRONT_MOUNT_POINT/owners"
  (
    i=0
    while [ $i -lt 3000 ] && kill -0 "$SIPFRONT_PID" 2>/dev/null; do
      i=$((i+1))
      echo "n$SIPFRONT_NODE_ID-$i" >> "$SIPFRONT_MOUNT_POINT/records"
      sync "$SIPFRONT_MOUNT_POINT/records"
      echo "n$SIPFRONT_NODE_ID-$i" >> "$DIR/acked"
      sleep 0.01
    done
  ) </dev/null >/dev/null 2>&1 &
  echo $! > "$PIDFILE"
  ;;
release)
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    while kill -0 "$(cat "$PIDFILE")" 2>/dev/null; do sleep 0.01; done
    rm -f "$PIDFILE"
  fi
  ;;
esac
"#;

/// An ext4 image in the lab's dir.
fn make_image(dir: &Path) -> PathBuf {
    let img = dir.join("pbx-data.img");
    let f = std::fs::File::create(&img).expect("create image");
    f.set_len(64 << 20).expect("size image");
    let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).status().expect("run mkfs.ext4 (e2fsprogs)");
    assert!(st.success(), "mkfs.ext4 failed");
    std::fs::write(dir.join("pbx_hook.sh"), PBX_HOOK).expect("write hook");
    img
}

/// A loop device the test attached (the "EBS volume" of the aws test), detached on drop.
struct LoopDev(String);

impl LoopDev {
    fn attach(img: &Path) -> LoopDev {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(img).output().expect("losetup");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        LoopDev(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The volume's keys common to both modes.
fn volume_keys(lab: &Lab) -> Vec<(&'static str, String)> {
    let hook = quoted(&format!("/bin/sh {}", lab.dir.join("pbx_hook.sh").display()));
    vec![
        ("mount_point", quoted(&lab.dir.join("mnt").display().to_string())),
        ("on_acquire", hook.clone()),
        ("on_release", hook),
        ("hook_timeout", "\"10s\"".into()),
        ("unmount_timeout", "\"5s\"".into()),
    ]
}

fn with_table(mut cfg: NodeConfig, table: &str, keys: &[(&str, String)]) -> NodeConfig {
    for (k, v) in keys {
        cfg = cfg.set(table, k, v);
    }
    cfg
}

/// A file on the volume as node `i`'s mount namespace sees it ("" if not mounted there or missing).
fn read_on(lab: &mut Lab, i: u8, file: &str) -> String {
    let Some(pid) = lab.program_pid(&format!("n{i}")) else { return String::new() };
    let mp = lab.dir.join("mnt");
    let p = format!("/proc/{pid}/root{}/{file}", mp.display());
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Which running nodes have the volume mounted (from their own mount tables).
fn mounted_on(lab: &mut Lab) -> Vec<u8> {
    let mp = lab.dir.join("mnt").display().to_string();
    (1..=3u8)
        .filter(|i| {
            let Some(pid) = lab.program_pid(&format!("n{i}")) else { return false };
            let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            info.lines().any(|l| l.split_whitespace().nth(4) == Some(mp.as_str()))
        })
        .collect()
}

/// Every record `node` acknowledged is on the volume (as node `on` sees it); how many.
fn acked_records_present(lab: &mut Lab, node: u8, on: u8) -> usize {
    let acked = std::fs::read_to_string(lab.dir.join("acked")).unwrap_or_default();
    let records = read_on(lab, on, "records");
    let on_volume: std::collections::HashSet<&str> = records.lines().collect();
    let prefix = format!("n{node}-");
    let mine: Vec<&str> = acked.lines().filter(|l| l.starts_with(&prefix)).collect();
    let missing: Vec<&&str> = mine.iter().filter(|r| !on_volume.contains(**r)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records of n{node} missing on the volume: {:?}",
        missing.len(),
        missing
    );
    mine.len()
}

fn report(what: &str, line: &str) {
    println!("failover {what}: {line}");
    if let Some(path) = std::env::var_os("SIPFRONT_FAILOVER_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{what}: {line}");
        }
    }
}

/// A lab (tag `tag`) with both PBXs and three nodes sharing a `local` volume on an ext4 image; `adjust`
/// changes each node's config. `None` when not root.
fn local_volume_cluster(tag: u8, adjust: impl Fn(NodeConfig) -> NodeConfig) -> Option<Lab> {
    let mut lab = Lab::new(tag)?;
    let img = make_image(&lab.dir);
    lab.start_pbx(1, "uas_health.xml");
    lab.start_pbx(2, "uas_health.xml");
    let mut keys = volume_keys(&lab);
    keys.push(("mode", "\"local\"".into()));
    keys.push(("device", quoted(&img.display().to_string())));
    for i in 1..=3u8 {
        let cfg = adjust(with_table(NodeConfig::cluster(&lab, i), "volume", &keys));
        lab.start_node(i, &cfg.toml());
    }
    Some(lab)
}

fn holder(vip: &VipSampler) -> u8 {
    poll_until("one VIP holder", Duration::from_secs(15), || vip.holders().len() == 1);
    *vip.holders().first().unwrap()
}

/// Wait until `node`'s test PBX has acknowledged `n` records.
fn wait_acks(lab: &Lab, node: u8, n: usize) {
    let prefix = format!("n{node}-");
    poll_until(&format!("n{node} acknowledged {n} records"), Duration::from_secs(30), || {
        let acked = std::fs::read_to_string(lab.dir.join("acked")).unwrap_or_default();
        acked.lines().filter(|l| l.starts_with(&prefix)).count() >= n
    });
}

/// Fault: the leader is killed with SIGKILL while its test PBX writes. The survivor must mount the same data
/// with every acknowledged record, and the volume must be mounted on one node only.
#[test]
fn local_volume_follows_the_leader_with_every_acknowledged_record() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = local_volume_cluster(16, |c| c) else { return };
    let vip = lab.vip_sampler();
    let old = holder(&vip);
    poll_until("the leader's PBX started on the volume", Duration::from_secs(15), || {
        read_on(&mut lab, old, "owners").contains(&format!("n{old} "))
    });
    wait_acks(&lab, old, 200);
    assert_eq!(mounted_on(&mut lab), vec![old], "mounted on the leader only");

    let killed = lab.kill9(&format!("n{old}"));
    lab.wait_exit(&format!("n{old}"), Duration::from_secs(2)).expect("killed node exits");
    poll_until("a new VIP holder", Duration::from_secs(5), || {
        vip.holders().len() == 1 && !vip.holders().contains(&old)
    });
    let new = holder(&vip);
    let vip_at = killed.elapsed();
    poll_until("the survivor's PBX started on the volume", Duration::from_secs(30), || {
        read_on(&mut lab, new, "owners").contains(&format!("n{new} "))
    });
    let volume_at = killed.elapsed();
    assert_eq!(mounted_on(&mut lab), vec![new], "mounted on the survivor only");
    let kept = acked_records_present(&mut lab, old, new);
    assert!(kept >= 200, "n{old} acknowledged {kept} records");
    assert!(read_on(&mut lab, new, "owners").contains(&format!("n{old} ")), "the old owner's line is still there");
    report(
        "local volume, leader kill -9",
        &format!("vip {vip_at:?}, volume mounted + hook {volume_at:?}, {kept} acknowledged records all present"),
    );

    // The killed node comes back as a follower; then a graceful stop of the leader hands the volume on:
    // hook (writer stopped), unmount, handover, and the next leader mounts it.
    lab.restart(&format!("n{old}"));
    wait_acks(&lab, new, 50);
    std::thread::sleep(Duration::from_secs(1)); // the restarted node catches up (a follower needs the log)
    lab.sigterm(&format!("n{new}"));
    lab.wait_exit(&format!("n{new}"), Duration::from_secs(20)).expect("graceful stop");
    poll_until("a third VIP holder", Duration::from_secs(5), || {
        vip.holders().len() == 1 && !vip.holders().contains(&new)
    });
    let next = holder(&vip);
    poll_until("the next leader's PBX started", Duration::from_secs(30), || {
        read_on(&mut lab, next, "owners").contains(&format!("n{next} "))
    });
    let kept_new = acked_records_present(&mut lab, new, next);
    assert!(kept_new >= 50, "n{new} acknowledged {kept_new} records");
    assert_eq!(mounted_on(&mut lab), vec![next]);
}

/// Fault: the leader is killed with SIGKILL. With `[vip] mode = "aws"` (secondary IP) and an EBS volume, the
/// survivor must own both in the emulator (the old instance's attachment force-detached once the old node was
/// silent for `force_detach_after`), tagged with its id and term, with the data intact.
#[test]
fn aws_vip_and_ebs_volume_follow_the_leader_after_kill9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = Lab::new(15) else { return };
    let img = make_image(&lab.dir);
    let dev = LoopDev::attach(&img);
    aws::test_env();
    let emu = Emulator::start_in(&lab.ns(Ns::Phones), &lab.phone_ip().to_string());
    let w = emu.block(|c| async move { World::build_in(&c, "10.201.0.0/16", "10.201.15.0/24").await });
    // A plain detach never completes (as on AWS while the dead node's host still has the file system
    // mounted): only Force, once the node has been silent for `force_detach_after`, frees the volume.
    emu.realism(r#"{"attach_polls": 2, "detach_polls": 1000000, "refuse_attach_in_use": true}"#);
    // Fault: the first three AssignPrivateIpAddresses are refused (as with a missing IAM permission): the
    // leader reports it, backs off, and takes the VIP once EC2 accepts.
    emu.faults(
        r#"[{"action": "AssignPrivateIpAddresses", "kind": "error", "status": 403, "code": "UnauthorizedOperation",
             "message": "You are not authorized to perform this operation.", "count": 3}]"#,
    );
    lab.start_pbx(1, "uas_health.xml");
    lab.start_pbx(2, "uas_health.xml");
    let vip_ip = lab.vip().to_string();
    for i in 1..=3u8 {
        let k = usize::from(i) - 1;
        let aws_keys = [
            ("region", quoted("us-east-1")),
            ("instance_id", quoted(&w.instances[k])),
            ("eni_id", quoted(&w.enis[k])),
            ("endpoint_url", quoted(&emu.ec2)),
            ("call_timeout", "\"1s\"".into()),
            ("call_budget", "\"10s\"".into()),
        ];
        let mut vol = volume_keys(&lab);
        vol.extend([
            ("mode", "\"aws-ebs\"".into()),
            ("volume_id", quoted(&w.volume)),
            ("device", quoted("/dev/sdf")),
            ("local_device", quoted(&dev.0)),
            ("force_detach_after", "\"500ms\"".into()),
            ("attach_timeout", "\"20s\"".into()),
        ]);
        let cfg =
            NodeConfig::cluster(&lab, i).set("vip", "mode", "\"aws\"").raw("[vip.aws]\nmethod = \"secondary-ip\"");
        let cfg = with_table(with_table(cfg, "aws", &aws_keys), "volume", &vol);
        lab.start_node(i, &cfg.toml());
    }
    let vip = lab.vip_sampler();
    let old = holder(&vip);
    let owns = |emu: &Emulator, node: u8| {
        let (w, ip) = (w.clone(), vip_ip.clone());
        let k = usize::from(node) - 1;
        emu.block(move |c| async move {
            let eni = w.secondary_holders(&c, &ip).await == vec![w.enis[k].clone()];
            let vol = w.attachments(&c).await
                == vec![(w.instances[k].clone(), aws_sdk_ec2::types::VolumeAttachmentState::Attached)];
            (eni, vol)
        })
    };
    poll_until("the leader owns the VIP and the volume on EC2", Duration::from_secs(20), || {
        owns(&emu, old) == (true, true)
    });
    poll_until("the leader's PBX started on the volume", Duration::from_secs(20), || {
        read_on(&mut lab, old, "owners").contains(&format!("n{old} "))
    });
    wait_acks(&lab, old, 100);
    let log = lab.log_text(&format!("n{old}"));
    assert_eq!(
        log.matches("leader cannot take the VIP").count(),
        3,
        "three refusals reported, with backoff (not one per 20 ms tick):\n{log}"
    );
    assert!(log.contains("UnauthorizedOperation"), "the EC2 error is in the log");

    let killed = lab.kill9(&format!("n{old}"));
    lab.wait_exit(&format!("n{old}"), Duration::from_secs(2)).expect("killed node exits");
    poll_until("a new VIP holder", Duration::from_secs(5), || {
        vip.holders().len() == 1 && !vip.holders().contains(&old)
    });
    let new = holder(&vip);
    let (mut eni_at, mut vol_at) = (None, None);
    poll_until("the survivor owns the VIP and the volume on EC2", Duration::from_secs(30), || {
        let (eni, vol) = owns(&emu, new);
        if eni && eni_at.is_none() {
            eni_at = Some(killed.elapsed());
        }
        if vol && vol_at.is_none() {
            vol_at = Some(killed.elapsed());
        }
        eni && vol
    });
    poll_until("the survivor's PBX started on the volume", Duration::from_secs(30), || {
        read_on(&mut lab, new, "owners").contains(&format!("n{new} "))
    });
    let mounted_at = killed.elapsed();
    assert_eq!(mounted_on(&mut lab), vec![new], "mounted on the survivor only");
    let kept = acked_records_present(&mut lab, old, new);
    let status = lab.status(new);
    assert!(status.contains(&format!("volume {} held (term", w.volume)), "status shows the volume held:\n{status}");
    let calls = emu.calls();
    assert!(calls.contains("\"Force\": \"true\""), "the dead node's attachment was force-detached:\n{calls}");
    let (w2, vol_id, subnet) = (w.clone(), w.volume.clone(), w.subnet.clone());
    let key = format!("sipfront:owner:{vip_ip}");
    let (vol_tag, vip_tag) = emu.block(move |c| async move {
        (w2.owner_tag(&c, &vol_id, "sipfront:owner").await, w2.owner_tag(&c, &subnet, &key).await)
    });
    let vol_tag = vol_tag.expect("volume owner tag");
    assert!(vol_tag.starts_with(&format!("node={new} term=")), "volume tagged by the survivor: {vol_tag}");
    assert_eq!(vip_tag.as_deref(), Some(vol_tag.as_str()), "VIP and volume moved in the same term");
    report(
        "aws secondary-ip + ebs, leader kill -9",
        &format!(
            "vip on the survivor's ENI {:?}, volume attached {:?}, mounted + hook {mounted_at:?}; {kept} acknowledged \
             records all present",
            eni_at.unwrap(),
            vol_at.unwrap()
        ),
    );
    drop(vip);
    drop(lab);
    drop(emu);
    drop(dev);
}

/// With `[[backend]] node`, the active role and the volume follow the active backend: pbx1 runs "on" node 1
/// and pbx2 "on" node 2. Node 1 must end up leading (its PBX is preferred); fault: pbx1 is stopped, and the
/// role, the VIP and the volume must move to node 2, with every acknowledged record.
#[test]
fn the_role_and_volume_follow_the_active_backend() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let placed = |c: NodeConfig| c.set_backend("pbx1", "node", "1").set_backend("pbx2", "node", "2");
    let Some(mut lab) = local_volume_cluster(17, placed) else { return };
    let vip = lab.vip_sampler();
    poll_until("node 1 (pbx1's node) leads", Duration::from_secs(20), || {
        vip.holders().into_iter().collect::<Vec<_>>() == [1]
    });
    poll_until("node 1's PBX started on the volume", Duration::from_secs(15), || {
        read_on(&mut lab, 1, "owners").contains("n1 ")
    });
    wait_acks(&lab, 1, 100);
    let stopped = Instant::now();
    lab.stop_pbx(1, Duration::from_millis(100));
    poll_until("node 2 (pbx2's node) leads", Duration::from_secs(20), || {
        vip.holders().into_iter().collect::<Vec<_>>() == [2]
    });
    let vip_at = stopped.elapsed();
    poll_until("node 2's PBX started on the volume", Duration::from_secs(20), || {
        read_on(&mut lab, 2, "owners").contains("n2 ")
    });
    assert_eq!(mounted_on(&mut lab), vec![2], "mounted on node 2 only");
    let kept = acked_records_present(&mut lab, 1, 2);
    report(
        "placement, pbx1 stopped",
        &format!(
            "role on pbx2's node {vip_at:?} after the stop, volume {:?}; {kept} acknowledged records all present",
            stopped.elapsed()
        ),
    );
}

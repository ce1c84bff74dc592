//! The HA stacks the peer lab compares, behind one trait: how each is started in the lab's namespaces and what
//! "kill the HA daemon", "kill the node" and their recoveries mean for it. A partition and its heal are the
//! lab's (a bridge port disabled and enabled), the same for every stack, so they are not here.
//!
//! This file owns the trait, the list of stacks with their lab tags, and the sipfront stack; the Kamailio
//! stacks are in `keepalived.rs` and `pacemaker.rs`. It must not measure anything (`trial.rs` does).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::{Lab, NodeConfig, Ns};

/// One HA stack running in a lab.
pub trait Stack {
    /// What the table calls it, with its timing (`keepalived VRRPv3 0.1 s`).
    fn name(&self) -> String;
    /// kill -9 of the HA daemon on `node`, the SIP server left running.
    fn kill_ha(&mut self, lab: &mut Lab, node: u8);
    /// Start the HA daemon killed by [`Stack::kill_ha`] again.
    fn restart_ha(&mut self, lab: &mut Lab, node: u8);
    /// The whole node dies: silent on the network at once, every process gone, no address left.
    fn kill_node(&mut self, lab: &mut Lab, node: u8);
    /// The node killed by [`Stack::kill_node`] boots: network back, SIP server and HA daemon started.
    fn restart_node(&mut self, lab: &mut Lab, node: u8);
}

/// The stacks, each with its own lab tag (21-24, see tests/netns/mod.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKind {
    Sipfront,
    KeepalivedV2,
    KeepalivedV3,
    /// Corosync token 3000 ms, corosync 3's default.
    Pacemaker3s,
    /// Corosync token 1000 ms, a tuned LAN setting.
    Pacemaker1s,
}

impl StackKind {
    pub const ALL: [StackKind; 5] = [
        StackKind::Sipfront,
        StackKind::KeepalivedV2,
        StackKind::KeepalivedV3,
        StackKind::Pacemaker3s,
        StackKind::Pacemaker1s,
    ];

    /// The two Pacemaker stacks share a tag: they never run at once (one lab at a time).
    pub fn tag(self) -> u8 {
        match self {
            StackKind::Sipfront => 21,
            StackKind::KeepalivedV2 => 22,
            StackKind::KeepalivedV3 => 23,
            StackKind::Pacemaker3s | StackKind::Pacemaker1s => 24,
        }
    }

    /// The short name `HA_LAB_STACKS` filters on.
    pub fn slug(self) -> &'static str {
        match self {
            StackKind::Sipfront => "sipfront",
            StackKind::KeepalivedV2 => "vrrp2",
            StackKind::KeepalivedV3 => "vrrp3",
            StackKind::Pacemaker3s => "pacemaker3s",
            StackKind::Pacemaker1s => "pacemaker1s",
        }
    }

    /// Start the stack in `lab` (PBX 1 is up already). `Err` says why it cannot run here.
    pub fn start(self, lab: &mut Lab) -> Result<Box<dyn Stack>, String> {
        use crate::keepalived::{Keepalived, Vrrp};
        Ok(match self {
            StackKind::Sipfront => Box::new(Sipfront::start(lab)),
            StackKind::KeepalivedV2 => Box::new(Keepalived::start(lab, Vrrp::V2)?),
            StackKind::KeepalivedV3 => Box::new(Keepalived::start(lab, Vrrp::V3)?),
            StackKind::Pacemaker3s => Box::new(crate::pacemaker::Pacemaker::start(lab, 3000)?),
            StackKind::Pacemaker1s => Box::new(crate::pacemaker::Pacemaker::start(lab, 1000)?),
        })
    }
}

/// sipfront's own cluster, configured as tests/cluster_faults.rs runs it (`NodeConfig::cluster`: election
/// timeout 300 ms, heartbeat 60 ms). Its HA daemon is its SIP server: killing one kills the other.
pub struct Sipfront;

impl Sipfront {
    fn start(lab: &mut Lab) -> Sipfront {
        lab.start_pbx(2, "uas_health.xml");
        for i in 1..=3u8 {
            let toml = NodeConfig::cluster(lab, i).toml();
            lab.start_node(i, &toml);
        }
        Sipfront
    }
}

impl Stack for Sipfront {
    fn name(&self) -> String {
        let et = std::env::var("SIPFRONT_LAB_ELECTION_TIMEOUT").unwrap_or_else(|_| "300ms".into());
        format!("sipfront (Raft, election {et})")
    }

    fn kill_ha(&mut self, lab: &mut Lab, node: u8) {
        lab.kill9(&format!("n{node}"));
    }

    fn restart_ha(&mut self, lab: &mut Lab, node: u8) {
        lab.restart(&format!("n{node}"));
    }

    fn kill_node(&mut self, lab: &mut Lab, node: u8) {
        lab.cut_link(Ns::Node(node));
        lab.kill9(&format!("n{node}"));
    }

    fn restart_node(&mut self, lab: &mut Lab, node: u8) {
        lab.restore_link(Ns::Node(node));
        lab.restart(&format!("n{node}"));
    }
}

// ------------------------------------------------------------------------------------------------ shared bits

/// `sysctl -w KEY=VALUE` inside node i's namespace (its own copy of the net.* sysctls).
pub fn node_sysctl(lab: &Lab, i: u8, setting: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Ns::Node(i)), "sysctl", "-qw", setting])
        .output()
        .expect("run sysctl");
    assert!(out.status.success(), "sysctl {setting} in n{i}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Remove the VIP from node i's eth0 if it is there (a dead host keeps no address; a rebooted one starts
/// without it). Quiet when it is not.
pub fn drop_vip(lab: &Lab, i: u8) {
    let _ = Command::new("ip")
        .args(["-n", &lab.ns(Ns::Node(i)), "addr", "del", &format!("{}/24", lab.vip()), "dev", "eth0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The Kamailio config of the Kamailio stacks, `tests/ha_lab/kamailio.cfg` filled in for this lab (relaying to
/// PBX 1), written to the lab's dir. `stderr_log`: run in the foreground by the lab, logging to stderr; else
/// for the Pacemaker resource agent (daemonised, logging to syslog, its listen addresses given by the agent).
pub fn kamailio_cfg(lab: &Lab, stderr_log: bool) -> PathBuf {
    const TEMPLATE: &str = include_str!("kamailio.cfg");
    let mut text = TEMPLATE
        .replace("@VIP@", &lab.vip().to_string())
        .replace("@PORT@", &crate::netns::SIP_PORT.to_string())
        .replace("@PBX@", &lab.pbx_sip(1).to_string());
    if !stderr_log {
        // The resource agent's own `-l` options replace the listen line (see the cfg's header).
        text = text.lines().filter(|l| !l.starts_with("listen=")).collect::<Vec<_>>().join("\n") + "\n";
        text = text.replace("log_stderror=yes", "log_stderror=no");
    }
    let path = lab.dir.join(if stderr_log { "kamailio.cfg" } else { "kamailio-daemon.cfg" });
    std::fs::write(&path, text).expect("write kamailio.cfg");
    path
}

/// Start Kamailio in node i's namespace in the foreground, labelled `k{i}`, on the VIP (bound before the node
/// holds it). Fails the test if it exits within its first moments (a config error).
pub fn start_kamailio(lab: &mut Lab, i: u8, cfg: &std::path::Path) {
    node_sysctl(lab, i, "net.ipv4.ip_nonlocal_bind=1");
    let work = lab.dir.join(format!("k{i}"));
    std::fs::create_dir_all(&work).expect("create kamailio dir");
    let mut cmd = Command::new("kamailio");
    cmd.args(["-DD", "-E", "-m", "32", "-M", "8", "-f"])
        .arg(cfg)
        .arg("-w")
        .arg(&work)
        .arg("-P")
        .arg(work.join("kamailio.pid"))
        // The runtime dir (default /run/kamailio) is shared by every namespace: one per node in the lab dir.
        .arg("-Y")
        .arg(&work);
    let label = format!("k{i}");
    lab.spawn(Ns::Node(i), &label, cmd);
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.alive(&label), "kamailio on n{i} exited at start:\n{}", lab.log_text(&label));
}

/// Run a helper command to completion under `timeout -s KILL` (so it cannot outlive the test by more than
/// `bound`); its output, or why it failed.
pub fn run_bounded(bound: Duration, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &bound.as_secs().max(1).to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{program} {} exited {}: {}", args.join(" "), out.status, tail(&text, 15)))
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

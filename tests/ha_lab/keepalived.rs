//! Kamailio behind keepalived (Debian's `keepalived` 2.2.7, VRRP only): on each node a Kamailio on the VIP
//! (`k{i}`) and a keepalived (`ka{i}`) that puts the VIP on eth0 while it is VRRP master and sends gratuitous ARPs
//! when it becomes master. Two timings: VRRPv2 with the classic 1 s advert (master down after 3 adverts plus
//! skew, about 3.6 s), and VRRPv3 with 0.1 s adverts (about 0.36 s).
//!
//! The config is what an operator would deploy for a SIP front door: every node `state BACKUP` with `nopreempt`
//! and priorities 100/90/80, so a node that comes back does not take the VIP again (a second interruption for
//! nothing); keepalived's default GARP settings (5 GARPs at the move, 5 more 5 s later). No track script: the
//! usual `pidof kamailio` would see every namespace's Kamailio here (one pid namespace), so the faults are the
//! daemons' and the node's, not Kamailio's.
//!
//! A keepalived crash is what `kill -9` does to it in real life, not what a test's `kill -9` of the parent does:
//! killing only the parent makes the VRRP child drop the VIP and hand over cleanly, killing only the child makes
//! the parent respawn it. So: SIGSTOP the parent, SIGKILL the VRRP child, SIGKILL the parent; the VIP stays on
//! eth0 with no daemon to remove it.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::{Lab, Ns};
use crate::stack::{drop_vip, kamailio_cfg, run_bounded, start_kamailio, Stack};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vrrp {
    /// VRRPv2, advert 1 s.
    V2,
    /// VRRPv3, advert 0.1 s.
    V3,
}

pub struct Keepalived {
    vrrp: Vrrp,
}

impl Keepalived {
    pub fn start(lab: &mut Lab, vrrp: Vrrp) -> Result<Keepalived, String> {
        ensure_installed()?;
        let cfg = kamailio_cfg(lab, true);
        for i in 1..=3u8 {
            start_kamailio(lab, i, &cfg);
        }
        for i in 1..=3u8 {
            let conf = lab.dir.join(format!("keepalived-n{i}.conf"));
            std::fs::write(&conf, config(lab, i, vrrp)).expect("write keepalived.conf");
            let pid = |what: &str| lab.dir.join(format!("ka{i}-{what}.pid")).display().to_string();
            let mut cmd = Command::new(keepalived_bin());
            // Foreground parent, log to the console (the lab's ka{i}.log), VRRP subsystem only, pid files in the
            // lab's dir (the defaults under /run would be shared by the three nodes).
            cmd.args(["-n", "-l", "-D", "-G", "-P", "-f"]).arg(&conf).args([
                "-p",
                &pid("parent"),
                "-r",
                &pid("vrrp"),
                "-c",
                &pid("checkers"),
            ]);
            lab.spawn(Ns::Node(i), &format!("ka{i}"), cmd);
        }
        Ok(Keepalived { vrrp })
    }

    fn remove_pid_files(lab: &Lab, i: u8) {
        for what in ["parent", "vrrp", "checkers"] {
            let _ = std::fs::remove_file(lab.dir.join(format!("ka{i}-{what}.pid")));
        }
    }
}

impl Stack for Keepalived {
    fn name(&self) -> String {
        match self.vrrp {
            Vrrp::V2 => "Kamailio + keepalived VRRPv2 1 s".into(),
            Vrrp::V3 => "Kamailio + keepalived VRRPv3 0.1 s".into(),
        }
    }

    fn kill_ha(&mut self, lab: &mut Lab, node: u8) {
        let label = format!("ka{node}");
        if let Some(parent) = lab.program_pid(&label) {
            let parent = parent.to_string();
            signal("STOP", &parent);
            for child in children(&parent) {
                signal("KILL", &child);
            }
            signal("KILL", &parent);
        }
        lab.kill9(&label); // reaps `timeout` and anything else left in the group
    }

    fn restart_ha(&mut self, lab: &mut Lab, node: u8) {
        Keepalived::remove_pid_files(lab, node);
        lab.restart(&format!("ka{node}"));
    }

    fn kill_node(&mut self, lab: &mut Lab, node: u8) {
        lab.cut_link(Ns::Node(node));
        lab.kill9(&format!("ka{node}"));
        lab.kill9(&format!("k{node}"));
        drop_vip(lab, node);
    }

    fn restart_node(&mut self, lab: &mut Lab, node: u8) {
        lab.restore_link(Ns::Node(node));
        Keepalived::remove_pid_files(lab, node);
        lab.restart(&format!("k{node}"));
        lab.restart(&format!("ka{node}"));
    }
}

/// Node i's keepalived.conf.
fn config(lab: &Lab, i: u8, vrrp: Vrrp) -> String {
    let (version, advert) = match vrrp {
        Vrrp::V2 => (2, "1"),
        Vrrp::V3 => (3, "0.1"),
    };
    let priority = 110 - 10 * u32::from(i);
    format!(
        "# keepalived for the peer lab (tests/ha_lab/keepalived.rs), node {i}\n\
         global_defs {{\n    router_id sf{tag}-n{i}\n    vrrp_version {version}\n}}\n\n\
         vrrp_instance SIP {{\n    state BACKUP\n    nopreempt\n    interface eth0\n    virtual_router_id 51\n    \
         priority {priority}\n    advert_int {advert}\n    virtual_ipaddress {{\n        {vip}/24 dev eth0\n    }}\n}}\n",
        tag = lab.tag,
        vip = lab.vip(),
    )
}

fn keepalived_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/keepalived").exists() {
        "/usr/sbin/keepalived"
    } else {
        "keepalived"
    }
}

/// keepalived on PATH, or installed now from the distribution (`apt-get install -y keepalived`).
pub fn ensure_installed() -> Result<(), String> {
    let present =
        || Command::new(keepalived_bin()).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if present().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("ha_lab: keepalived is missing; installing it (apt-get install -y keepalived)");
    let _ = run_bounded(Duration::from_secs(300), "apt-get", &["update", "-qq"]);
    run_bounded(Duration::from_secs(600), "apt-get", &["install", "-y", "-qq", "keepalived"])
        .map_err(|e| format!("keepalived is not installed and apt-get could not install it: {e}"))?;
    match present() {
        Ok(s) if s.success() => Ok(()),
        _ => Err("keepalived still does not run after apt-get install".into()),
    }
}

fn signal(sig: &str, pid: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), pid]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// The pids whose parent is `pid`.
fn children(pid: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-P", pid]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).split_whitespace().map(String::from).collect()
}

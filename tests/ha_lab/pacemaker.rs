//! Kamailio under Pacemaker + Corosync, driven through `scripts/ha-lab/pacemaker.sh` (written beside this lab):
//! `up TAG TOKEN_MS KAMAILIO_CFG` builds the 3-node cluster in the lab's node namespaces (IPaddr2 VIP on eth0,
//! ocf:heartbeat:kamailio with our config) and returns once the VIP is up; `kill-ha`, `kill-node`, `restart`
//! act on one node; `down` stops everything. What "kill the node" does (beyond the processes) is the script's.
//!
//! Every call runs under `timeout -s KILL`, and `down` runs when the stack is dropped, before the lab deletes
//! the namespaces (whose drop SIGKILLs anything still running in them anyway).

use std::path::PathBuf;
use std::time::Duration;

use crate::netns::{Lab, Ns};
use crate::stack::{kamailio_cfg, node_sysctl, run_bounded, Stack};

pub struct Pacemaker {
    tag: u8,
    token_ms: u32,
}

/// The script, when it exists and is executable.
pub fn script() -> Result<PathBuf, String> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ha-lab/pacemaker.sh"));
    let meta = std::fs::metadata(&path).map_err(|_| format!("{} does not exist (yet)", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    Ok(path)
}

impl Pacemaker {
    /// The cluster with Corosync's `token` (and `token_coefficient: 0`, so it is the token used) at `token_ms`.
    pub fn start(lab: &mut Lab, token_ms: u32) -> Result<Pacemaker, String> {
        script()?;
        let cfg = kamailio_cfg(lab, false);
        for i in 1..=3u8 {
            node_sysctl(lab, i, "net.ipv4.ip_nonlocal_bind=1");
        }
        let pm = Pacemaker { tag: lab.tag, token_ms };
        // From here on a failure drops `pm`, which runs `down`.
        let (tag, cfg) = (pm.tag.to_string(), cfg.display().to_string());
        pm.run(Duration::from_secs(300), &["up", &tag, &token_ms.to_string(), &cfg])
            .map_err(|e| format!("pacemaker.sh up failed: {e}"))?;
        Ok(pm)
    }

    fn run(&self, bound: Duration, args: &[&str]) -> Result<String, String> {
        let script = script()?;
        run_bounded(bound, &script.display().to_string(), args)
    }

    /// `pacemaker.sh VERB TAG NODE`; a failure is printed, not fatal (the trial then measures what happened).
    fn node_verb(&self, verb: &str, node: u8) {
        if let Err(e) = self.run(Duration::from_secs(120), &[verb, &self.tag.to_string(), &node.to_string()]) {
            eprintln!("ha_lab: pacemaker.sh {verb} {} {node}: {e}", self.tag);
        }
    }
}

impl Stack for Pacemaker {
    fn name(&self) -> String {
        format!("Kamailio + Pacemaker/Corosync token {} ms", self.token_ms)
    }

    fn kill_ha(&mut self, _lab: &mut Lab, node: u8) {
        self.node_verb("kill-ha", node);
    }

    fn restart_ha(&mut self, _lab: &mut Lab, node: u8) {
        self.node_verb("restart", node);
    }

    /// The script kills every process of the node and drops its VIP; the lab also cuts its link first, so a
    /// dead node is silent at once as it is for the other stacks.
    fn kill_node(&mut self, lab: &mut Lab, node: u8) {
        lab.cut_link(Ns::Node(node));
        self.node_verb("kill-node", node);
    }

    fn restart_node(&mut self, lab: &mut Lab, node: u8) {
        lab.restore_link(Ns::Node(node));
        self.node_verb("restart", node);
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        if let Err(e) = self.run(Duration::from_secs(120), &["down", &self.tag.to_string()]) {
            eprintln!("ha_lab: pacemaker.sh down {}: {e}", self.tag);
        }
    }
}

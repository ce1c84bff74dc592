//! The demo's child processes: three nodes (`sipfront run --config nI.toml`) and two test PBXs
//! (`sipfront demo-pbx --listen ...`), their configs, and the kill/start buttons.
//!
//! It owns the `Child` handles and the files in the demo's dir; nothing here speaks SIP or HTTP. Each child runs
//! in its own process group (a kill takes the whole group), logs to `<name>.log` in the dir (appended: a
//! restart keeps the history), and carries `PR_SET_PDEATHSIG = SIGKILL`, so that even a demo killed with
//! SIGKILL leaves nothing running. The death signal fires when the *thread* that forked exits, so children are
//! only ever started from the demo's main thread (its runtime is a current-thread one; see `super::run`).

use std::io::Read as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{node_ip, pbx_addr, DemoError, ADMIN_PORT, CLUSTER_PORT, NODES, PBXS, SIP_PORT, VIP_IP};
use crate::config::Config;

/// What a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Pbx,
}

/// One child: how to start it, and the running process if there is one.
struct Slot {
    kind: Kind,
    id: u8,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Slot {
    fn name(&self) -> String {
        match self.kind {
            Kind::Node => format!("node {}", self.id),
            Kind::Pbx => format!("pbx{}", self.id),
        }
    }
}

/// Every child of the demo.
pub struct Procs {
    exe: PathBuf,
    slots: Vec<Slot>,
}

impl Procs {
    /// The children the configs in `dir` describe (none started yet).
    pub fn new(exe: PathBuf, dir: &Path) -> Procs {
        let mut slots = Vec::new();
        for j in 1..=PBXS {
            let args = vec!["demo-pbx".into(), "--listen".into(), pbx_addr(j).to_string()];
            slots.push(Slot { kind: Kind::Pbx, id: j, args, log: dir.join(format!("pbx{j}.log")), child: None });
        }
        for i in 1..=NODES {
            let cfg = dir.join(format!("n{i}.toml")).display().to_string();
            let args = vec!["run".into(), "--config".into(), cfg];
            slots.push(Slot { kind: Kind::Node, id: i, args, log: dir.join(format!("n{i}.log")), child: None });
        }
        Procs { exe, slots }
    }

    fn slot(&mut self, kind: Kind, id: u8) -> Result<&mut Slot, DemoError> {
        let what = if kind == Kind::Node { "node" } else { "pbx" };
        self.slots.iter_mut().find(|s| s.kind == kind && s.id == id).ok_or(DemoError::NoSuch { what, id: id.into() })
    }

    /// Start a child that does not run; a message for the operator.
    pub fn start(&mut self, kind: Kind, id: u8) -> Result<String, DemoError> {
        let exe = self.exe.clone();
        let s = self.slot(kind, id)?;
        if alive(s) {
            return Ok(format!("{} already runs", s.name()));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|source| DemoError::Io { what: format!("open {}", s.log.display()), source })?;
        let log2 = log.try_clone().map_err(|source| DemoError::Io { what: "duplicate a log file".into(), source })?;
        let mut cmd = Command::new(&exe);
        cmd.args(&s.args).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, _exit.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The demo died before the prctl took effect: no one would ever kill this child.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| DemoError::Spawn { what: s.name(), source })?;
        let msg = format!("{} started (pid {})", s.name(), child.id());
        s.child = Some(child);
        Ok(msg)
    }

    /// SIGKILL a child's process group and reap it.
    pub fn kill(&mut self, kind: Kind, id: u8) -> Result<String, DemoError> {
        let s = self.slot(kind, id)?;
        if !alive(s) {
            return Ok(format!("{} is not running", s.name()));
        }
        let mut child = s.child.take().expect("alive");
        signal_group(&child, libc::SIGKILL);
        let _ = child.wait();
        Ok(format!("{} killed (SIGKILL)", s.name()))
    }

    /// Start every child: the PBXs first, so the nodes' first probes find them.
    pub fn start_all(&mut self) -> Result<(), DemoError> {
        let all: Vec<(Kind, u8)> = self.slots.iter().map(|s| (s.kind, s.id)).collect();
        for (kind, id) in all {
            self.start(kind, id)?;
        }
        Ok(())
    }

    /// Stop everything: SIGTERM to the nodes (a graceful stop), up to `grace` for them to exit, then SIGKILL to
    /// whatever is left (the PBXs need no grace).
    pub fn stop_all(&mut self, grace: Duration) {
        for s in self.slots.iter_mut().filter(|s| s.kind == Kind::Node) {
            if let Some(c) = s.child.as_ref() {
                signal_group(c, libc::SIGTERM);
            }
        }
        let until = Instant::now() + grace;
        while Instant::now() < until && self.slots.iter_mut().any(|s| s.kind == Kind::Node && alive(s)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for s in &mut self.slots {
            if let Some(mut c) = s.child.take() {
                signal_group(&c, libc::SIGKILL);
                let _ = c.wait();
            }
        }
    }

    /// `[{"id", "running"}]` of one kind, for `GET /api/v1/demo`.
    pub fn json(&mut self, kind: Kind) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for s in self.slots.iter_mut().filter(|s| s.kind == kind) {
            let running = alive(s);
            out.push(match kind {
                Kind::Node => serde_json::json!({ "id": s.id, "running": running }),
                Kind::Pbx => serde_json::json!({ "id": s.id, "name": format!("pbx{}", s.id), "running": running }),
            });
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all(Duration::ZERO);
    }
}

fn alive(s: &mut Slot) -> bool {
    match s.child.as_mut().map(|c| c.try_wait()) {
        Some(Ok(None)) => true,
        Some(_) => {
            s.child = None;
            false
        }
        None => false,
    }
}

fn signal_group(c: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a process group we created (the child's pid is its group id); no memory involved.
    unsafe {
        libc::kill(-(c.id() as libc::pid_t), sig);
    }
}

/// The cluster secret, the admin token and node `i`'s config, as written into `dir`.
pub fn node_toml(dir: &Path, i: u8) -> String {
    let ip = node_ip(i);
    let peers: Vec<String> =
        (1..=NODES).map(|p| format!("{{ id = {p}, addr = \"{}:{CLUSTER_PORT}\" }}", node_ip(p))).collect();
    let backends: String = (1..=PBXS)
        .map(|j| {
            format!(
                "\n[[backend]]\nname = \"pbx{j}\"\nuri = \"sip:{}:{SIP_PORT};transport=udp\"\npriority = {j}\n",
                pbx_addr(j).ip()
            )
        })
        .collect();
    let d = dir.display();
    format!(
        "# Node {i} of `sipfront demo`: everything on loopback, the pseudo-VIP {VIP_IP} advertised.\n\
         [node]\nid = {i}\nname = \"node{i}\"\n\n\
         [sip]\nlisten = [\"udp:{ip}:{SIP_PORT}\", \"tcp:{ip}:{SIP_PORT}\"]\nadvertise = \"{VIP_IP}\"\n\n\
         [cluster]\nlisten = \"{ip}:{CLUSTER_PORT}\"\npeers = [ {peers} ]\nsecret_file = \"{d}/cluster.key\"\n\
         election_timeout = \"300ms\"\nheartbeat = \"60ms\"\ndata_dir = \"{d}/n{i}-data\"\n\n\
         [vip]\nmode = \"none\"\n\n\
         [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
         [health]\ninterval = \"500ms\"\ntimeout = \"400ms\"\ndown_after = 3\nup_after = 2\n\n\
         [log]\nlevel = \"info\"\n{backends}",
        peers = peers.join(", ")
    )
}

/// Write the secret, the token and the three configs into `dir`, each config checked as `run` will load it.
/// The admin token (the demo sends it with the dashboard's actions).
pub fn write_configs(dir: &Path) -> Result<String, DemoError> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|source| DemoError::Io { what: format!("write {}", p.display()), source })
    };
    write("cluster.key", &random_hex(32)?)?;
    let token = random_hex(24)?;
    write("admin.token", &token)?;
    for i in 1..=NODES {
        // A left-over data dir from an earlier demo in the same dir would resume an old cluster.
        let _ = std::fs::remove_dir_all(dir.join(format!("n{i}-data")));
        let text = node_toml(dir, i);
        Config::from_toml(&text).map_err(|source| DemoError::Config { node: i, source })?;
        write(&format!("n{i}.toml"), &text)?;
    }
    Ok(token)
}

fn random_hex(n: usize) -> Result<String, DemoError> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|source| DemoError::Io { what: "read /dev/urandom".into(), source })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_are_valid() {
        let dir = std::env::temp_dir().join(format!("sipfront-demo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = write_configs(&dir).unwrap();
        assert_eq!(token.len(), 48);
        for i in 1..=NODES {
            let cfg = Config::load(&dir.join(format!("n{i}.toml"))).unwrap();
            assert_eq!(cfg.node.id, u32::from(i));
            assert_eq!(cfg.sip.advertise, "127.0.9.100");
            assert_eq!(cfg.admin.listen, Some(format!("127.0.9.1{i}:9090").parse().unwrap()));
            assert_eq!(cfg.backends.len(), 2);
            assert_eq!(cfg.backends[0].uri, "sip:127.0.9.21:5060;transport=udp");
            assert_eq!(cfg.cluster.as_ref().unwrap().peers.len(), 3);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

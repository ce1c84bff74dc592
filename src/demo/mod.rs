//! `sipfront demo`: a whole three-node cluster on loopback, no root and no other software, to look at.
//!
//! ```text
//!   caller (127.0.9.50) ──► pseudo-VIP 127.0.9.100:5060 ──► the serving leader ──► pbx1 127.0.9.21 (priority 1)
//!     calls, holds, BYEs       vip.rs: a UDP relay            node 1/2/3: 127.0.9.11-13      pbx2 127.0.9.22
//!                              ▲ PBX answers come back here (every node advertises 127.0.9.100)
//!   dashboard 127.0.9.1:8080 (web.rs): the node's page; /api/v1/demo here, the rest relayed to a node's admin API
//! ```
//!
//! This module orchestrates: it writes the configs, starts the children ([`procs`]), finds the serving leader
//! every 200 ms over the cluster protocol, runs the relay, the dashboard and the call generator, reads the
//! terminal's commands and stops everything in order. It touches nothing outside its dir and 127.0.9.x (that
//! range is the demo's; the tests use others). The runtime is a current-thread one on the main thread, and
//! children are started only from it (see [`procs`] on `PR_SET_PDEATHSIG`).
//!
//! ```text
//!  mod.rs     options, the run, the leader watch, the terminal, the shutdown
//!  procs.rs   the configs and the child processes (nodes, PBXs): start, kill, stop
//!  pbx.rs     the test PBX (`sipfront demo-pbx`)
//!  caller.rs  the call generator; requests.rs the ACK and BYE it sends
//!  terminal.rs the banner, the status lines, the commands
//!  vip.rs     the pseudo-VIP relay
//!  web.rs     the dashboard server and the API relay
//! ```

pub mod caller;
pub mod pbx;
mod procs;
mod requests;
mod terminal;
pub mod vip;
mod web;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::DemoControl;
use crate::config::{Config, ConfigError};
use caller::CallStats;
use procs::{Kind, Procs};

/// Nodes and PBXs of the demo.
pub const NODES: u8 = 3;
pub const PBXS: u8 = 2;
pub const SIP_PORT: u16 = 5060;
pub const CLUSTER_PORT: u16 = 7000;
pub const ADMIN_PORT: u16 = 9090;
/// The pseudo-VIP every node advertises.
pub const VIP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 100);
/// The call generator's address.
pub const CALLER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 50);
/// How often the demo asks who serves.
const LEADER_POLL: Duration = Duration::from_millis(200);

/// Node `i`'s address: 127.0.9.1i.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 9, 10 + i)
}

/// PBX `j`'s SIP address: 127.0.9.2j:5060.
pub fn pbx_addr(j: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 9, 20 + j), SIP_PORT))
}

/// Why the demo could not run, or an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("node {node}'s generated config is invalid: {source}")]
    Config { node: u8, source: ConfigError },
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("cannot bind the {what} on {addr}: {source} (is another demo running?)")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("--listen {listen}: the demo's dashboard sends the admin token for you, so it listens on loopback only")]
    NotLoopback { listen: SocketAddr },
    #[error("no {what} {id} (nodes are 1-3, PBXs 1-2)")]
    NoSuch { what: &'static str, id: u32 },
    #[error("unknown action `{0}`: kill or start")]
    Action(String),
}

/// `sipfront demo`'s options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The dashboard's address.
    pub listen: SocketAddr,
    /// New calls per second.
    pub rate: f64,
    /// How long a call lasts (± 50 %).
    pub hold: Duration,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// The working dir; `None`: a fresh temp dir.
    pub dir: Option<PathBuf>,
    /// Keep the dir on exit (a temp dir is removed otherwise; a `--dir` given is always kept).
    pub keep: bool,
}

/// The processes and the call counters, behind the admin surface's demo trait (the dashboard's buttons).
pub(crate) struct Control {
    /// A std mutex: sections are short (a fork, a kill, a few `try_wait`s) and never cross an `.await`.
    procs: Mutex<Procs>,
    calls: Arc<CallStats>,
}

impl Control {
    fn procs(&self) -> std::sync::MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn act_on(&self, kind: Kind, id: u32, action: &str) -> Result<String, DemoError> {
        let what = if kind == Kind::Node { "node" } else { "pbx" };
        let id8 = u8::try_from(id).map_err(|_| DemoError::NoSuch { what, id })?;
        match action {
            "kill" => self.procs().kill(kind, id8),
            "start" => self.procs().start(kind, id8),
            other => Err(DemoError::Action(other.to_owned())),
        }
    }
}

impl DemoControl for Control {
    fn state(&self) -> serde_json::Value {
        let mut p = self.procs();
        serde_json::json!({ "nodes": p.json(Kind::Node), "pbxs": p.json(Kind::Pbx), "calls": self.calls.json() })
    }

    fn act(&self, what: &str, id: u32, action: &str) -> Result<String, String> {
        let kind = match what {
            "node" => Kind::Node,
            "pbx" => Kind::Pbx,
            _ => return Err(format!("no `{what}`: node or pbx")),
        };
        self.act_on(kind, id, action).map_err(|e| e.to_string())
    }
}

/// Who serves: the node id, published every [`LEADER_POLL`] by [`watch_leader`].
#[derive(Clone)]
pub(crate) struct Leader {
    pub id: watch::Receiver<Option<u64>>,
}

/// Run the demo until Ctrl-C, SIGTERM, `quit` or `--duration`. Blocks the calling thread, which must be the
/// main thread: children die with it (see [`procs`]).
pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DemoError::Io { what: "start the runtime".into(), source })?;
    let r = rt.block_on(run_async(opts));
    // Not a plain drop: stdin is read on a blocking thread that no one can interrupt, and a drop would wait
    // for the user to press Enter.
    rt.shutdown_background();
    r
}

async fn run_async(opts: DemoOptions) -> Result<(), DemoError> {
    let started = tokio::time::Instant::now();
    let (dir, temp) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            (std::env::temp_dir().join(format!("sipfront-demo-{}-{nanos:08x}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&dir)
        .map_err(|source| DemoError::Io { what: format!("create {}", dir.display()), source })?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let token = procs::write_configs(&dir)?;
    let cfg = Config::load(&dir.join("n1.toml")).map_err(|source| DemoError::Config { node: 1, source })?;

    // Everything that binds a fixed address first: a second demo fails here, before it starts any process.
    let vip_addr = SocketAddr::from((VIP_IP, SIP_PORT));
    let relay = vip::Relay::bind(vip_addr).await.map_err(|source| DemoError::Bind {
        what: "pseudo-VIP",
        addr: vip_addr,
        source,
    })?;
    let listener = web::bind(opts.listen).await?;

    let exe = std::env::current_exe().map_err(|source| DemoError::Io { what: "find this program".into(), source })?;
    let calls = Arc::new(CallStats::default());
    let control = Arc::new(Control { procs: Mutex::new(Procs::new(exe, &dir)), calls: calls.clone() });
    terminal::banner(&opts, &dir, temp && !opts.keep);
    control.procs().start_all()?;

    let shutdown = CancellationToken::new();
    let (id_tx, id_rx) = watch::channel(None);
    let (sip_tx, sip_rx) = watch::channel(None);
    tokio::spawn(watch_leader(cfg.clone(), id_tx, sip_tx, shutdown.clone()));
    tokio::spawn(relay.run(sip_rx, shutdown.clone()));
    let nodes = (1..=NODES).map(|i| (u64::from(i), format!("http://{}:{ADMIN_PORT}", node_ip(i)))).collect();
    let web = Arc::new(web::Web { control: control.clone(), leader: id_rx.clone(), nodes, token });
    tokio::spawn(web::serve(listener, web, shutdown.clone()));

    let leader = Leader { id: id_rx };
    let stop_calls = CancellationToken::new();
    let caller_cfg = caller::CallerConfig {
        bind: SocketAddr::from((CALLER_IP, 0)),
        vip: vip_addr,
        rate: opts.rate,
        hold: opts.hold,
    };
    let ready = terminal::wait_ready(leader.clone(), started, stop_calls.clone());
    let caller = tokio::spawn({
        let (calls, stop) = (calls.clone(), stop_calls.clone());
        async move {
            // Calls start once a leader serves with both PBXs up: before that they could only fail.
            if !ready.await {
                return Ok(());
            }
            caller::run(caller_cfg, calls, stop).await
        }
    });

    terminal::interact(&opts, &cfg, &control, &leader, started).await;

    // Stop in order: no new calls and the held ones hung up (through the relay, which still runs), then the
    // nodes gracefully, then whatever is left.
    println!("stopping: hanging up the calls ...");
    stop_calls.cancel();
    match tokio::time::timeout(Duration::from_secs(3), caller).await {
        Ok(Ok(Err(e))) => eprintln!("call generator: {e}"),
        Ok(_) => {}
        Err(_) => println!("  {} call(s) still up after 3 s; stopping anyway", calls.json()["active"]),
    }
    shutdown.cancel();
    println!("stopping: the nodes (SIGTERM, then SIGKILL after 3 s) and the PBXs ...");
    control.procs().stop_all(Duration::from_secs(3));
    println!("{}", terminal::calls_line(&calls));
    if temp && !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept {}", dir.display());
    }
    Ok(())
}

/// Every [`LEADER_POLL`], ask the nodes over the cluster protocol who serves; publish its id and SIP address.
async fn watch_leader(
    cfg: Config,
    id: watch::Sender<Option<u64>>,
    sip: watch::Sender<Option<SocketAddr>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LEADER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = match crate::cluster::ctl::statuses(&cfg).await {
            Ok(all) => {
                // The node that serves SIP now; a leader still taking over is not there yet.
                let serving = all
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .find(|s| s.serving && s.role == "leader")
                    .map(|s| s.id);
                serving.or_else(|| crate::cluster::ctl::leader_of(&all))
            }
            Err(_) => None,
        };
        id.send_if_modified(|v| std::mem::replace(v, now) != now);
        let addr = now.and_then(|n| u8::try_from(n).ok()).map(|n| SocketAddr::from((node_ip(n), SIP_PORT)));
        sip.send_if_modified(|v| std::mem::replace(v, addr) != addr);
    }
}

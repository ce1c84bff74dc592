//! The demo's terminal: what runs and where (first), a status line every 5 s, the leader's changes, the calls'
//! failures, and the commands read from stdin (`kill N`, `start pbx1`, `switchover N`, `status`, `quit` ...).
//! It owns nothing but stdout and stdin; actions go through [`Control`], the cluster through `cluster::ctl`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caller::CallStats;
use super::procs::Kind;
use super::{node_ip, pbx_addr, Control, DemoOptions, Leader, ADMIN_PORT, CALLER_IP, NODES, PBXS, SIP_PORT, VIP_IP};
use crate::admin::DemoControl;
use crate::config::Config;

const STATUS_EVERY: Duration = Duration::from_secs(5);

const HELP: &str =
    "commands: kill N | start N (node 1-3) | kill pbxN | start pbxN (1-2) | switchover N | status | help | quit";

/// What runs, and where; the dashboard's URL last, where the eye lands.
pub(super) fn banner(opts: &DemoOptions, dir: &Path, removed: bool) {
    println!("sipfront demo: three nodes, two test PBXs and a call generator, all on loopback (127.0.9.x, no root)");
    let fate = if removed { "removed on exit; --keep keeps it" } else { "kept on exit" };
    println!("  dir         {} ({fate})", dir.display());
    for i in 1..=NODES {
        let ip = node_ip(i);
        println!(
            "  node {i}      SIP udp+tcp {ip}:{SIP_PORT}, cluster {ip}:7000, admin http://{ip}:{ADMIN_PORT}/, log n{i}.log"
        );
    }
    for j in 1..=PBXS {
        println!("  pbx{j}        test PBX on udp:{} (priority {j}), log pbx{j}.log", pbx_addr(j));
    }
    println!("  pseudo-VIP  udp:{VIP_IP}:{SIP_PORT}: a relay to the serving leader (every node advertises it)");
    println!(
        "  calls       {}/s from {CALLER_IP} to sip:demo@{VIP_IP}:{SIP_PORT}, held {:?} ±50%{}",
        opts.rate,
        opts.hold,
        opts.duration.map(|d| format!(", stopping after {d:?}")).unwrap_or_default()
    );
    println!("{HELP}");
    println!("dashboard: http://{}/", opts.listen);
}

/// Wait until a leader serves with every PBX up (its admin API says so); `false` if stopped first.
pub(super) async fn wait_ready(leader: Leader, started: Instant, stop: CancellationToken) -> bool {
    let mut warned = false;
    loop {
        let current = *leader.id.borrow();
        if let Some(id) = current {
            let base = format!("http://{}:{ADMIN_PORT}", node_ip(u8::try_from(id).unwrap_or(0)));
            if let Ok(v) = crate::admin::client::get_json(&base, "/api/v1/backends").await {
                let list = v["backends"].as_array().cloned().unwrap_or_default();
                if list.len() == usize::from(PBXS) && list.iter().all(|b| b["state"] == "up") {
                    let t = started.elapsed().as_secs_f64();
                    println!("ready after {t:.1} s: node {id} leads and serves, pbx1 and pbx2 are up; calls start");
                    return true;
                }
            }
        }
        if !warned && started.elapsed() > Duration::from_secs(30) {
            println!("no leader with both PBXs up after 30 s: see the logs (n1.log ...) in the demo's dir");
            warned = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Until Ctrl-C, SIGTERM, `quit` or `--duration`: status lines, the leader's changes, the commands.
pub(super) async fn interact(opts: &DemoOptions, cfg: &Config, control: &Control, leader: &Leader, started: Instant) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let deadline = opts.duration.map(|d| started + d);
    let mut tick = tokio::time::interval_at(Instant::now() + STATUS_EVERY, STATUS_EVERY);
    let mut leader_rx = leader.id.clone();
    let mut failures_seen = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return println!("Ctrl-C"),
            _ = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {
                return println!("SIGTERM");
            }
            _ = crate::transaction::sleep_until_opt(deadline) => {
                return println!("--duration {:?} elapsed", opts.duration.unwrap_or_default());
            }
            _ = tick.tick() => {
                println!("[{:>4}s] {}", started.elapsed().as_secs(), status_line(control, leader));
                for (_, why) in control.calls.failures_after(failures_seen) {
                    println!("  call failed: {why}");
                }
                failures_seen = control.calls.failed.load(Ordering::Relaxed);
            }
            r = leader_rx.changed() => {
                if r.is_ok() {
                    let now = *leader_rx.borrow_and_update();
                    match now {
                        Some(id) => println!("[{:>4}s] leader: node {id}", started.elapsed().as_secs()),
                        None => println!("[{:>4}s] no leader serves", started.elapsed().as_secs()),
                    }
                }
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    if command(&l, cfg, control).await {
                        return println!("quit");
                    }
                }
                // End of input (stdin is /dev/null, say): the demo runs on until a signal or --duration.
                _ => stdin_open = false,
            },
        }
    }
}

/// One command line; `true` to quit.
async fn command(line: &str, cfg: &Config, control: &Control) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["quit" | "exit" | "q"] => return true,
        ["help" | "?"] => println!("{HELP}"),
        ["status"] => {
            match crate::cluster::ctl::statuses(cfg).await {
                Ok(all) => print!("{}", crate::cluster::ctl::render(&all)),
                Err(e) => println!("cluster status: {e:#}"),
            }
            println!("processes: {}", control.state());
            println!("{}", calls_line(&control.calls));
        }
        [action @ ("kill" | "start"), target] => {
            let (kind, id) = match target.strip_prefix("pbx") {
                Some(n) => (Kind::Pbx, n),
                None => (Kind::Node, target.strip_prefix("node").unwrap_or(target)),
            };
            match id.parse::<u32>() {
                Ok(id) => match control.act_on(kind, id, action) {
                    Ok(msg) => println!("{msg}"),
                    Err(e) => println!("{e}"),
                },
                Err(_) => println!("`{target}`: a node (1-3) or a PBX (pbx1, pbx2)"),
            }
        }
        ["switchover", to] => match to.trim_start_matches("node").parse::<u64>() {
            Ok(to) => match crate::cluster::ctl::switchover(cfg, to).await {
                Ok(msg) => println!("switchover: {msg}"),
                Err(e) => println!("switchover: {e:#}"),
            },
            Err(_) => println!("switchover N: N is a node id (1-3)"),
        },
        _ => println!("unknown command `{line}`; {HELP}"),
    }
    false
}

fn status_line(control: &Control, leader: &Leader) -> String {
    let st = control.state();
    let up = |k: &str| st[k].as_array().map_or(0, |a| a.iter().filter(|x| x["running"] == true).count());
    let who = match *leader.id.borrow() {
        Some(id) => format!("leader node {id}"),
        None => "no leader".to_owned(),
    };
    format!(
        "{who} | nodes {}/{NODES} running, PBXs {}/{PBXS} | {}",
        up("nodes"),
        up("pbxs"),
        calls_line(&control.calls)
    )
}

pub(super) fn calls_line(c: &CallStats) -> String {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "calls: active {}, placed {}, answered {}, ended {}, failed {}",
        g(&c.active),
        g(&c.placed),
        g(&c.answered),
        g(&c.ended),
        g(&c.failed)
    )
}

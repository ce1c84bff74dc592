//! The `sipfront` command: `run` a node from its config file, `check-config` a file, `status` and `switchover`
//! a cluster, or start the local `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use sipfront::config::{Config, LogFormat};
use sipfront::server::Server;

// The global allocator: glibc's malloc unless a feature picks another (see Cargo.toml, `alloc-*`).
#[cfg(all(feature = "alloc-mimalloc", feature = "alloc-jemalloc"))]
compile_error!("features `alloc-mimalloc` and `alloc-jemalloc` exclude each other: pick one allocator");
#[cfg(all(feature = "alloc-mimalloc", not(feature = "alloc-jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "alloc-jemalloc", not(feature = "alloc-mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The config `sipfront run` uses when no file is given: one node on 127.0.0.1:5060 (UDP and TCP) in front of
/// a PBX on 127.0.0.1:5080. The same text as config/single-node.toml.
const DEFAULT_CONFIG: &str = include_str!("../config/single-node.toml");

#[derive(Parser)]
#[command(name = "sipfront", version, about = "A stateful SIP front door for a highly available PBX cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node in the foreground (SIGINT/SIGTERM stop it gracefully; SIGHUP re-reads the TLS certificate).
    Run {
        /// The node's TOML config; without it, the embedded single-node default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: print a one-line summary, or the key at fault and why.
    CheckConfig { file: PathBuf },
    /// Show every cluster node's role, term, leader, log position, lag and who holds the VIP: from a node's
    /// admin API (`--url`, or the config's `[admin] listen`), else over the cluster protocol.
    Status {
        /// Any node's config file (its `[admin] listen`, or the peers and the cluster secret).
        #[arg(long, short, required_unless_present = "url")]
        config: Option<PathBuf>,
        /// A node's admin API, `http://HOST:PORT` (no config needed).
        #[arg(long)]
        url: Option<String>,
        /// Print the statuses in full (debug form) instead of the table.
        #[arg(long)]
        raw: bool,
    },
    /// Hand leadership and the VIP to another node, gracefully (no call fails).
    Switchover {
        #[arg(long, short)]
        config: PathBuf,
        /// The node id to take over.
        #[arg(long)]
        to: u64,
    },
    /// A whole three-node cluster on this machine to look at: three nodes, two test PBXs, a pseudo-VIP and a
    /// gentle call generator, all on 127.0.9.x (no root, no other software), with the dashboard.
    Demo {
        /// The dashboard's address (loopback only).
        #[arg(long, default_value = "127.0.9.1:8080")]
        listen: std::net::SocketAddr,
        /// New calls per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// How long a call lasts, ± 50 % ("20s", "1500ms").
        #[arg(long, default_value = "20s", value_parser = sipfront::config::parse_duration)]
        hold: std::time::Duration,
        /// Stop by itself after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// The working dir (configs, logs, Raft data); default a fresh temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the temp dir on exit.
        #[arg(long)]
        keep: bool,
    },
    /// The demo's test PBX (started by `sipfront demo`).
    #[command(hide = true)]
    DemoPbx {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                println!("{}", cfg.summary());
                for w in cfg.warnings() {
                    println!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { config, url, raw } => status(config, url, raw),
        Command::Demo { listen, rate, hold, duration, dir, keep } => {
            let duration = duration.map(std::time::Duration::from_secs);
            let opts = sipfront::demo::DemoOptions { listen, rate, hold, duration, dir, keep };
            match sipfront::demo::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DemoPbx { listen } => {
            let Some(rt) = runtime() else { return ExitCode::FAILURE };
            match rt.block_on(sipfront::demo::pbx::run(listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: demo PBX on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Switchover { config, to } => ctl(&config, |cfg| async move {
            println!("{}", sipfront::cluster::ctl::switchover(&cfg, to).await?);
            Ok(())
        }),
        Command::Run { config } => {
            let cfg = match &config {
                Some(path) => Config::load(path),
                None => Config::from_toml(DEFAULT_CONFIG),
            };
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(&cfg.log.level, cfg.log.format);
            if config.is_none() {
                tracing::info!(
                    "no --config given: running the embedded default (config/single-node.toml: SIP on 127.0.0.1:5060, \
                     one PBX at 127.0.0.1:5080)"
                );
            }
            for warning in cfg.warnings() {
                tracing::warn!("{warning}");
            }
            // One thread: every message wakes at most one task, and a wake-up is a queue push, not a futex call
            // to another worker. Measured with ../shared/bench/run-bench.sh (2,000 calls/s): 14.0 % of a core on
            // the current-thread runtime against 19.4 % on the 2-worker one; the clean ceiling (8,000 calls/s,
            // SIPp's own) did not change. (A cluster member runs Raft on a second thread of its own.)
            let Some(rt) = runtime() else { return ExitCode::FAILURE };
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: the log is on stderr too.
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `sipfront status`: through a node's admin API when one is named (or configured), else the peer protocol.
fn status(config: Option<PathBuf>, url: Option<String>, raw: bool) -> ExitCode {
    let show = move |all: Vec<(u64, Result<sipfront::cluster::NodeStatus, String>)>| {
        if raw {
            println!("{all:#?}");
        } else {
            print!("{}", sipfront::cluster::ctl::render(&all));
        }
    };
    if let Some(url) = url {
        let Some(rt) = runtime() else { return ExitCode::FAILURE };
        return match rt.block_on(sipfront::admin::client::get_json(&url, "/api/v1/cluster")) {
            Ok(v) => {
                show(sipfront::admin::client::statuses_from(&v));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let path = config.expect("clap requires --config without --url");
    ctl(&path, |cfg| async move {
        let all = match cfg.admin.listen {
            Some(mut a) => {
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let v = sipfront::admin::client::get_json(&format!("http://{a}"), "/api/v1/cluster").await?;
                sipfront::admin::client::statuses_from(&v)
            }
            None => sipfront::cluster::ctl::statuses(&cfg).await?,
        };
        show(all);
        Ok(())
    })
}

/// Run an operator command against the cluster named in a config file.
fn ctl<F, Fut>(path: &std::path::Path, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = runtime() else { return ExitCode::FAILURE };
    match rt.block_on(f(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime, or `None` after saying why not.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every election at info; its warnings are what an operator needs.
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{level},openraft=warn")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        // Logs go to stderr; colours only when that is a terminal, so a log file or journald gets plain text.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line: timestamp, level, fields, message; for journald/Loki/Elastic shippers.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// The process's Prometheus recorder (every `metrics::` call lands in it); `None` if one is already set.
fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Durations from sub-millisecond (probe RTTs on a LAN) to tens of seconds (an EBS attach).
    const BUCKETS: &[f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS).ok()?;
    match builder.install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no Prometheus recorder: /metrics will be empty");
            None
        }
    }
}

/// SIGHUP: new TLS connections get the certificate now in the files; open connections keep theirs. A bad file
/// leaves the old certificate in use.
fn reload_tls(server: &Server) {
    match server.proxy.transports.reload_tls() {
        None => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
        Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
        Some(Err(e)) => {
            tracing::error!(key = e.key(), error = %e, "SIGHUP: TLS reload failed, keeping the old certificate")
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let prometheus = install_metrics();
    sipfront::metrics::describe();
    let shutdown = CancellationToken::new();
    let server = Server::start(&cfg, shutdown.clone()).await?;
    if cfg.admin.listen.is_some() {
        let cluster = server.cluster.as_ref().map(|c| c.shared.clone());
        let state = sipfront::admin::AdminState::new(&cfg, server.proxy.clone(), cluster, prometheus)?;
        sipfront::admin::start(state, shutdown.child_token()).await?;
    }
    tracing::info!(node = cfg.node.id, name = %cfg.node.name, backends = cfg.backends.len(), "sipfront running");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = hup.recv() => reload_tls(&server),
        }
    }
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

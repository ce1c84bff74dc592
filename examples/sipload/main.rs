//! sipload: a SIP call-load generator for UDP and TLS alike, so that both figures of the load bench come from one
//! tool (Debian's SIPp has no TLS).
//!
//! ```text
//! sipload uac --proxy 127.0.0.1:5071 --transport tls --connections 50 --ca ca.pem --rate 1000 --calls 10000
//!      calls ──INVITE/ACK/BYE──▶ proxy ──UDP──▶ sipload uas --listen 127.0.0.1:5080   (or SIPp -sf uas.xml)
//! sipload gen-cert DIR          a throwaway CA and a server certificate for 127.0.0.1 / localhost
//! ```
//!
//! `uac` prints one JSON line on stdout and one line for people on stderr. Modules: `msg` (request bytes),
//! `link` (UDP socket or TLS connections, inbound dispatch by Call-ID), `uac` (pacing, one task per call),
//! `uas`, `report`, `cert`.

mod cert;
mod link;
mod msg;
mod report;
mod uac;
mod uas;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_rustls::rustls::pki_types::ServerName;

#[derive(Parser)]
#[command(name = "sipload", about = "SIP call-load generator (UAC and UAS) over UDP and TLS")]
struct Cli {
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Place calls through a proxy.
    Uac(UacArgs),
    /// Answer calls over UDP.
    Uas {
        #[arg(long)]
        listen: SocketAddr,
        /// Stop after this long even without a signal.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
    /// Write ca.pem, server.crt and server.key (127.0.0.1 and localhost) into DIR.
    GenCert { dir: PathBuf },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Udp,
    Tls,
}

#[derive(clap::Args)]
struct UacArgs {
    #[arg(long)]
    proxy: SocketAddr,
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// New calls per second.
    #[arg(long)]
    rate: f64,
    /// Calls in all.
    #[arg(long)]
    calls: u64,
    /// Between the ACK and the BYE.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// A transaction without a final response this long counts the call as timed out.
    #[arg(long, default_value_t = 8000)]
    timeout_ms: u64,
    /// TLS connections; calls go round robin over them.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// CA file (PEM) the proxy's certificate is checked against.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// Server name sent as SNI and checked in the certificate; without it, the proxy's IP (no SNI).
    #[arg(long)]
    sni: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build()?;
    match cli.cmd {
        Cmd::GenCert { dir } => cert::generate(&dir),
        Cmd::Uas { listen, max_seconds } => rt.block_on(uas::run(listen, Duration::from_secs(max_seconds))),
        Cmd::Uac(args) => rt.block_on(run_uac(args)),
    }
}

async fn run_uac(a: UacArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rate > 0.0 && a.calls > 0, "--rate and --calls must be positive");
    anyhow::ensure!(a.connections > 0, "--connections must be positive");
    let inbound = Arc::new(link::Inbound { calls: Default::default(), stray: Default::default() });
    let link = match a.transport {
        TransportArg::Udp => link::Link::udp(a.proxy, inbound.clone()).await?,
        TransportArg::Tls => {
            anyhow::ensure!(a.ca.is_some() || a.insecure, "TLS needs --ca FILE or --insecure");
            let settings = sipfront::transport::TlsSettings {
                cert_file: None,
                key_file: None,
                ca_file: a.ca.clone(),
                verify_backends: !a.insecure,
                handshake_timeout: Duration::from_secs(5),
            };
            let config = sipfront::transport::tls::load_client_config(&settings)?;
            let name = match &a.sni {
                Some(n) => ServerName::try_from(n.clone()).context("--sni")?,
                None => ServerName::IpAddress(a.proxy.ip().into()),
            };
            let t = std::time::Instant::now();
            let connect = link::Link::tls(a.proxy, a.connections, config, name, inbound.clone());
            let l = tokio::time::timeout(Duration::from_secs(30), connect).await.context("TLS connect")??;
            eprintln!("sipload: {} TLS connections up in {} ms", a.connections, t.elapsed().as_millis());
            l
        }
    };
    let base = report::Summary {
        transport: if a.transport == TransportArg::Tls { "tls" } else { "udp" },
        proxy: a.proxy.to_string(),
        connections: link.connections(),
        rate: a.rate,
        hold_ms: a.hold_ms,
        attempted: 0,
        succeeded: 0,
        failed: 0,
        timed_out: 0,
        achieved_cps: 0.0,
        setup_p50_ms: 0.0,
        setup_p99_ms: 0.0,
        retransmissions: 0,
        stray: 0,
        wall_s: 0.0,
    };
    let opts = uac::UacOptions {
        rate: a.rate,
        calls: a.calls,
        hold: Duration::from_millis(a.hold_ms),
        timeout: Duration::from_millis(a.timeout_ms),
    };
    let out = uac::run(link, inbound.clone(), a.proxy, opts).await;
    let mut s = report::Summary::new(&out.results, out.cut_off, base);
    s.stray = inbound.stray.load(Ordering::Relaxed);
    s.wall_s = (out.start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    eprintln!("{}", s.human());
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

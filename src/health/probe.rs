//! The prober: one task per backend sends a SIP OPTIONS every `interval` and waits up to `timeout` for a final
//! answer; an accepted code counts as alive, anything else (another code, silence, a transport error) as a
//! failure.
//!
//! UDP backends are probed from a socket of their own, connected to the backend, on the listener's address: when
//! the PBX process dies, the kernel's ICMP port-unreachable fails the probe at once instead of after `timeout`
//! (a crashed PBX is then down after `down_after` probes, whatever the timeout). TCP backends are probed over
//! the proxy's connection to them, whose loss is a transport error; their answers come back through the proxy,
//! which hands probe branches here.
//!
//! The OPTIONS is composed with `format!`: a fixed, tiny request gains nothing from a structured builder.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::routing::Backend;
use crate::sip::{Message, SERVER_NAME};
use crate::transport::Transport;

/// Probes waiting for their answer, by branch.
#[derive(Default)]
pub struct PendingProbes(DashMap<Bytes, oneshot::Sender<u16>>);

impl PendingProbes {
    /// Hand a final response to the probe that sent this branch; false when it is not a probe's.
    pub fn complete(&self, branch: &[u8], code: u16) -> bool {
        if code < 200 {
            return self.0.contains_key(branch);
        }
        match self.0.remove(branch) {
            Some((_, tx)) => {
                let _ = tx.send(code);
                true
            }
            None => false,
        }
    }
}

/// Start probing every backend until `shutdown`.
pub fn start(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    if !proxy.health.config.enabled {
        return;
    }
    for index in 0..proxy.routing.backends().len() {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        if proxy.routing.backends()[index].transport == Transport::Udp {
            tokio::spawn(udp_prober(proxy, index, shutdown));
            continue;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(proxy.health.config.interval.get());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut cseq = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !proxy.is_active() {
                    continue; // a standby does not probe; the leader's verdicts reach it replicated
                }
                cseq = cseq.wrapping_add(1);
                // A probe may outlive the interval (timeout > interval); each runs on its own.
                tokio::spawn(probe_once(proxy.clone(), index, cseq));
            }
        });
    }
}

async fn probe_once(proxy: Arc<Proxy>, index: usize, cseq: u32) {
    let backend = &proxy.routing.backends()[index];
    let branch = proxy.new_branch(0);
    let (tx, rx) = oneshot::channel();
    proxy.health.pending.0.insert(branch.clone(), tx);
    let msg = options(&proxy, backend, &branch, cseq, None);
    let sent = Instant::now();
    let cfg = &proxy.health.config;
    let outcome = match proxy.transports.send_wait(backend.target(), msg).await {
        Err(e) => Err(format!("transport error: {e}")),
        Ok(()) => match tokio::time::timeout(cfg.timeout.get(), rx).await {
            Ok(Ok(code)) if cfg.ok_codes.contains(&code) => Ok(code),
            Ok(Ok(code)) => Err(format!("probe answered {code}")),
            Ok(Err(_)) | Err(_) => Err("probe timeout".to_string()),
        },
    };
    proxy.health.pending.0.remove(&branch);
    let result = if outcome.is_ok() { "ok" } else { "fail" };
    metrics::counter!(crate::metrics::PROBES, "backend" => backend.name.clone(), "result" => result).increment(1);
    match outcome {
        Ok(_) => proxy.health.probe_ok(index, sent.elapsed()),
        Err(why) => proxy.health.failure(index, &why),
    }
}

/// A socket on the listener's address (free-bound: on a cluster that is the VIP, which a standby lacks).
fn probe_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    crate::transport::set_freebind(&s, addr)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// A UDP backend's prober: its own connected socket, so a dead PBX process shows as port unreachable at once.
async fn udp_prober(proxy: Arc<Proxy>, index: usize, shutdown: CancellationToken) {
    let backend = proxy.routing.backends()[index].clone();
    let cfg = proxy.health.config.clone();
    let local = proxy.transports.local_addr(Transport::Udp).map(|a| a.ip()).unwrap_or(match backend.addr {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    });
    // On a cluster the listener's address is the VIP: a socket bound to it connects only once this host has
    // it. Until then (a standby, or a leader a moment before taking the VIP) try again every interval.
    let mut warned = false;
    let sock = loop {
        match probe_socket(SocketAddr::new(local, 0)) {
            Ok(s) => match s.connect(backend.addr).await {
                Ok(()) => break s,
                Err(e) if proxy.is_active() && !warned => {
                    tracing::warn!(backend = %backend.name, error = %e, "cannot open a probe socket yet; retrying");
                    warned = true;
                }
                Err(_) => {}
            },
            Err(e) if !warned => {
                tracing::warn!(backend = %backend.name, error = %e, "cannot open a probe socket; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval.get()) => {}
        }
    };
    let Ok(me) = sock.local_addr() else { return };
    // Our Via names this socket: the listener's address when it has one, else the advertised host.
    let via_host = if local.is_unspecified() { None } else { Some(me) };
    let mut tick = tokio::time::interval(cfg.interval.get());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pending: VecDeque<(Bytes, Instant)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    let mut cseq = 0u32;
    let fail = |why: &str| {
        metrics::counter!(crate::metrics::PROBES, "backend" => backend.name.clone(), "result" => "fail").increment(1);
        proxy.health.failure(index, why);
    };
    loop {
        let expiry = pending.front().map(|(_, sent)| *sent + cfg.timeout.get());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if !proxy.is_active() {
                    pending.clear(); // a standby does not probe; the leader's verdicts reach it replicated
                    continue;
                }
                cseq = cseq.wrapping_add(1);
                let branch = proxy.new_branch(0);
                let msg = options(&proxy, &backend, &branch, cseq, Some((via_host, me.port())));
                match sock.send(&msg).await {
                    Ok(_) => pending.push_back((branch, Instant::now())),
                    Err(e) => fail(&format!("transport error: {e}")),
                }
            }
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    let Ok(m) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else { continue };
                    let (Some(code), Some(branch)) = (m.status(), m.top_via().and_then(|v| v.branch())) else { continue };
                    if code < 200 {
                        continue;
                    }
                    let Some(pos) = pending.iter().position(|(b, _)| b[..] == *branch) else { continue };
                    let Some((_, sent)) = pending.remove(pos) else { continue };
                    if cfg.ok_codes.contains(&code) {
                        metrics::counter!(crate::metrics::PROBES, "backend" => backend.name.clone(), "result" => "ok").increment(1);
                        proxy.health.probe_ok(index, sent.elapsed());
                    } else {
                        fail(&format!("probe answered {code}"));
                    }
                }
                // ICMP port unreachable on the connected socket: nothing listens there any more.
                Err(_) => {
                    for _ in pending.drain(..) {
                        fail("probe: port unreachable");
                    }
                }
            },
            _ = crate::transaction::sleep_until_opt(expiry) => {
                let now = Instant::now();
                while pending.front().is_some_and(|(_, sent)| *sent + cfg.timeout.get() <= now) {
                    pending.pop_front();
                    fail("probe timeout");
                }
            }
        }
    }
}

/// The OPTIONS probe. `via`: sent from a probe socket of its own (its address when known, and its port); `None`:
/// from the listener of the backend's transport.
fn options(
    proxy: &Proxy,
    backend: &Backend,
    branch: &[u8],
    cseq: u32,
    via: Option<(Option<SocketAddr>, u16)>,
) -> Bytes {
    let t = backend.transport;
    let (host, port) = match via {
        Some((Some(addr), port)) => (crate::proxy::host_of(addr.ip()), port),
        Some((None, port)) => (proxy.settings.advertise_host().into_owned(), port),
        None => (proxy.settings.advertise_host().into_owned(), proxy.port_for(t)),
    };
    let mut s = String::with_capacity(400);
    let target = match backend.addr {
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        a => a.to_string(),
    };
    let _ = write!(
        s,
        "OPTIONS sip:{target};transport={tl} SIP/2.0\r\n\
         Via: SIP/2.0/{tu} {host}:{port};branch={branch};rport\r\n\
         From: <sip:sipfront@{host}>;tag={tag}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: probe-{node}-{tag}@{host}\r\n\
         CSeq: {cseq} OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         User-Agent: {SERVER_NAME}\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        tl = t.as_lower(),
        tu = t.as_upper(),
        branch = String::from_utf8_lossy(branch),
        tag = proxy.local_tag(),
        node = proxy.settings.node_id,
    );
    Bytes::from(s)
}

//! The prober: one task per backend sends a SIP OPTIONS every `interval` from our listener and waits up to
//! `timeout` for a final answer; an accepted code counts as alive, anything else (another code, silence, a
//! transport error) as a failure. Answers come back through the proxy, which hands probe branches here.
//!
//! The OPTIONS is composed with `format!`: a fixed, tiny request gains nothing from a structured builder.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::routing::Backend;
use crate::sip::SERVER_NAME;

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
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(proxy.health.config.interval.get());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut cseq = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
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
    let msg = options(&proxy, backend, &branch, cseq);
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

fn options(proxy: &Proxy, backend: &Backend, branch: &[u8], cseq: u32) -> Bytes {
    let t = backend.transport;
    let host = proxy.settings.advertise_host();
    let port = proxy.port_for(t);
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

//! How a request is rewritten for the next hop (our Via, Record-Route, Max-Forwards, Route popping; RFC 3261
//! §16.6) and the two stateless relays: ACK for a 2xx downstream, and responses no transaction claims upstream.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::plan::HopAddr;
use super::{Plan, Proxy};
use crate::dialog::Leg;
use crate::sip::{ForwardEdit, HeaderName, Message, Via, ViaTransport};
use crate::transport::{Source, Target, Transport};

/// Attempts a transaction may make (serial failover over the backends); a branch is checked against each.
const MAX_ATTEMPTS: usize = 16;

impl Proxy {
    /// A new RFC 3261 branch: magic cookie, this request's loop hash, and a unique part.
    /// The branch of a client transaction's `attempt`-th try: derived from the client's own branch (RFC 3261
    /// magic cookie only) and where it came from, under the token key. Every node of a cluster holds that key,
    /// so a request retransmitted to the node that took over after a crash goes out byte for byte as before and
    /// the PBX sees a retransmission, not a second request. Other requests get a random branch.
    pub(crate) fn tx_branch(&self, loop_hash: u32, req: &Message, src: &Source, attempt: usize) -> Bytes {
        let via = req.top_via();
        let client = via.as_ref().and_then(|v| v.branch()).filter(|b| b.starts_with(b"z9hG4bK") && b.len() > 7);
        let Some(client) = client else {
            return self.new_branch(loop_hash);
        };
        let h = self.branch_digest(client, req.method_bytes(), src.remote, attempt);
        let mut s = String::with_capacity(40);
        let _ = write!(s, "z9hG4bK{loop_hash:08x}.{h:016x}");
        Bytes::from(s)
    }

    fn branch_digest(&self, client: &[u8], method: &[u8], from: SocketAddr, attempt: usize) -> u64 {
        let ip = match from.ip() {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        let (port, attempt) = (from.port().to_be_bytes(), (attempt as u32).to_be_bytes());
        let parts: [&[u8]; 5] = [client, method, &ip, &port, &attempt];
        self.settings.token_key.digest64(&parts)
    }

    /// Whether the top Via of a response no transaction claims carries a branch this cluster made for the client
    /// the next Via names (a 2xx retransmitted after its INVITE transaction ended). Anyone can write our address
    /// into a Via: without this check a stranger's response would be relayed to whatever its second Via says.
    fn made_branch(&self, resp: &Message, next: &Via<'_>, ip: std::net::IpAddr) -> bool {
        let Some(ours) = resp.top_via().and_then(|v| v.branch().map(|b| b.to_vec())) else { return false };
        let Some(h) = ours.get(16..).filter(|_| ours.starts_with(b"z9hG4bK") && ours.get(15) == Some(&b'.')) else {
            return false;
        };
        let Some(h) = std::str::from_utf8(h).ok().and_then(|h| u64::from_str_radix(h, 16).ok()) else { return false };
        let Some(client) = next.branch() else { return false };
        let method = resp.cseq_method();
        let ports = [next.rport().flatten(), next.sent_by.port.or(Some(5060))];
        (0..MAX_ATTEMPTS).any(|attempt| {
            ports.iter().flatten().any(|&port| {
                self.branch_digest(client, method.as_str().as_bytes(), SocketAddr::new(ip, port), attempt) == h
            })
        })
    }

    pub(crate) fn new_branch(&self, loop_hash: u32) -> Bytes {
        let mut s = String::with_capacity(40);
        let _ = write!(s, "z9hG4bK{loop_hash:08x}.{:016x}", self.unique());
        Bytes::from(s)
    }

    fn via_value(&self, t: Transport, branch: &[u8]) -> String {
        let mut s = String::with_capacity(80);
        let _ = write!(s, "SIP/2.0/{} {}:{};branch=", t.as_upper(), self.settings.advertise_host(), self.port_for(t));
        s.push_str(std::str::from_utf8(branch).unwrap_or_default());
        s
    }

    fn record_route_value(&self, t: Transport, flow: Option<u64>, token: &str) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(s, "<sip:{}:{}", self.settings.advertise_host(), self.port_for(t));
        if t != Transport::Udp {
            // RFC 7118 §5.2: the URI parameter is `ws` for secure WebSockets too (the scheme says `sips`).
            let name = if t == Transport::Wss { "ws" } else { t.as_lower() };
            let _ = write!(s, ";transport={name}");
        }
        if let Some(f) = flow {
            let _ = write!(s, ";ft={f}");
        }
        let _ = write!(s, ";d={token};lr>");
        s
    }

    /// Rewrite `req` for one attempt toward a hop on transport `out` (a backend's, when `backend` is set) with
    /// our `branch`.
    pub(crate) fn build_forward(
        &self,
        req: &Message,
        src: Source,
        plan: &Plan,
        out: Transport,
        backend: Option<usize>,
        branch: &[u8],
    ) -> Bytes {
        let via = self.via_value(out, branch);
        let rr: Vec<String> = if plan.record_route {
            // The token names this dialog (Call-ID and the caller's tag) and the backend it goes to.
            let home = backend.or(plan.from_backend).and_then(|b| u8::try_from(b).ok()).unwrap_or(u8::MAX);
            let key = &self.settings.token_key;
            let (call_id, tag) = (req.call_id(), req.from_tag().unwrap_or_default());
            // The client-facing entry names the client's connection so requests from the PBX find it again; the
            // token covers it too.
            let leg = Leg::of(plan.from_backend.is_some());
            let token = key.dialog_token(call_id, tag, home, leg, src.conn);
            let inbound = self.record_route_value(src.transport, src.conn, &token);
            if src.transport == out && src.conn.is_none() {
                vec![inbound]
            } else {
                // Transport changes (or a flow token): the top entry faces the next hop, the lower one the client.
                let outbound = key.dialog_token(call_id, tag, home, leg, None);
                vec![self.record_route_value(out, None, &outbound), inbound]
            }
        } else {
            Vec::new()
        };
        let path = plan.path_token.as_ref().map(|token| {
            let mut s = String::with_capacity(160);
            let _ = write!(
                s,
                "<sip:{}@{}:{}",
                String::from_utf8_lossy(token),
                self.settings.advertise_host(),
                self.port_for(out)
            );
            if out != Transport::Udp {
                let _ = write!(s, ";transport={}", out.as_lower());
            }
            s.push_str(";lr;ob>");
            s
        });
        let rr_refs: Vec<&[u8]> = rr.iter().map(|s| s.as_bytes()).collect();
        req.forward(&ForwardEdit {
            via: via.as_bytes(),
            record_route: &rr_refs,
            request_uri: None,
            pop_routes: plan.pop_routes,
            source: Some(src.remote),
            max_forwards: plan.max_forwards,
            method: None,
            path: path.as_deref().map(str::as_bytes),
        })
    }

    /// Relay a request without a transaction (ACK for a 2xx, RFC 3261 §16.11 / §13.2.2.4).
    pub(crate) fn forward_stateless(self: &Arc<Self>, req: Message, src: Source) {
        if req.max_forwards() == Some(0) {
            // Cannot be forwarded (RFC 3261 §16.3 step 3) and an ACK cannot be answered: drop and count.
            self.stats.unroutable_acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(from = %src.remote, "ACK with Max-Forwards 0 dropped");
            return;
        }
        let plan = match self.plan(&req, src) {
            Ok(p) => p,
            Err((code, reason)) => {
                tracing::debug!(code, reason, "stateless ACK not routable, dropped");
                self.stats.unroutable_acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        let Some(hop) = plan.hops.first().cloned() else {
            return;
        };
        let branch = self.new_branch(plan.loop_hash);
        let bytes = self.build_forward(&req, src, &plan, hop.transport(), hop.backend, &branch);
        match hop.addr {
            HopAddr::Resolved(t) => self.transports.send(t, bytes),
            HopAddr::Name { host, port, transport } => {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Some(addr) = resolve(&host, port).await {
                        this.transports.send(Target { transport, addr, conn: None }, bytes);
                    }
                });
            }
        }
    }

    /// Relay a response by its second Via (our Via removed): received/rport when present, else sent-by.
    pub(crate) fn relay_response_stateless(&self, resp: &Message) {
        let Some(next) = resp.header_values(HeaderName::Via).nth(1).and_then(Via::parse) else {
            return;
        };
        let transport = match next.transport {
            ViaTransport::Udp => Transport::Udp,
            ViaTransport::Tcp => Transport::Tcp,
            ViaTransport::Tls => Transport::Tls,
            // Reachable only over its own connection, found by address (the sent-by is `.invalid`).
            ViaTransport::Ws => Transport::Ws,
            ViaTransport::Wss => Transport::Wss,
            _ => return,
        };
        let ip = next.received().and_then(|r| std::str::from_utf8(r).ok()?.parse().ok()).or_else(|| next.sent_by.ip());
        let Some(ip) = ip else { return };
        if !self.made_branch(resp, &next, ip) {
            tracing::debug!(to = %ip, "response with a branch we did not make, dropped");
            metrics::counter!(crate::metrics::RESPONSES_DROPPED, "reason" => "foreign_branch").increment(1);
            return;
        }
        let port = next.rport().flatten().or(next.sent_by.port).unwrap_or(5060);
        self.stats.stateless_responses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::final_response(resp.status().unwrap_or(0), "relayed");
        self.transports.send(Target { transport, addr: SocketAddr::new(ip, port), conn: None }, resp.strip_top_via());
    }
}

/// Look up a host name (URIs with a name instead of an address; RFC 3263 SRV/NAPTR is not done).
pub async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

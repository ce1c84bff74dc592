//! Where a request goes (RFC 3261 §16.4–16.6): pop our own Route entries, follow the next Route or the
//! Request-URI, or send an initial request to the backends in the policy's order. Also loop detection (§16.3
//! step 4) through the loop part of our branch.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use super::Proxy;
use crate::sip::{find_param, parse_name_addr, HeaderName, Message, Method, SipUri, Via};
use crate::transport::{ConnId, Source, Target, Transport};

/// Where one attempt goes.
#[derive(Debug, Clone)]
pub enum HopAddr {
    /// A resolved address (and maybe a known connection).
    Resolved(Target),
    /// A host name to look up on the transaction task.
    Name { host: String, port: u16, transport: Transport },
}

#[derive(Debug, Clone)]
pub struct Hop {
    pub addr: HopAddr,
    /// The backend this hop is, if it is one (index into the routing table).
    pub backend: Option<usize>,
}

impl Hop {
    pub fn transport(&self) -> Transport {
        match &self.addr {
            HopAddr::Resolved(t) => t.transport,
            HopAddr::Name { transport, .. } => *transport,
        }
    }
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Attempts in order; more than one only for initial requests to backends (serial failover).
    pub hops: Vec<Hop>,
    /// Our own Route values to remove from the top.
    pub pop_routes: usize,
    /// Add our Record-Route (dialog-forming initial requests).
    pub record_route: bool,
    /// Max-Forwards to write.
    pub max_forwards: u32,
    /// Loop-detection hash, the first part of every branch we give this request.
    pub loop_hash: u32,
}

/// What our popped Route entries told us.
#[derive(Default)]
struct Popped {
    count: usize,
    /// `transport` of the last popped entry (the side the request leaves on).
    transport: Option<Transport>,
    /// Flow token of a connection-oriented client flow (`;ft=` in our client-facing Record-Route).
    flow: Option<ConnId>,
}

fn transport_param(uri: &SipUri<'_>) -> Option<Transport> {
    match uri.transport() {
        Some(t) if t.eq_ignore_ascii_case(b"tcp") => Some(Transport::Tcp),
        Some(t) if t.eq_ignore_ascii_case(b"udp") => Some(Transport::Udp),
        _ => None,
    }
}

impl Proxy {
    /// Whether a host and port are this node's (the advertised host or a listener address).
    pub(crate) fn is_own(&self, host: &[u8], port: Option<u16>) -> bool {
        let host_ours = host.eq_ignore_ascii_case(self.settings.advertise.as_bytes())
            || self.own_addrs.iter().any(|(_, a)| {
                std::str::from_utf8(host).ok().and_then(|h| h.parse::<std::net::IpAddr>().ok()) == Some(a.ip())
            });
        if !host_ours {
            return false;
        }
        let port = port.unwrap_or(5060);
        self.own_addrs.iter().any(|(_, a)| a.port() == port)
    }

    pub(crate) fn is_own_via(&self, via: &Via<'_>) -> bool {
        self.is_own(via.sent_by.host, via.sent_by.port)
    }

    fn pop_own_routes(&self, req: &Message) -> Popped {
        let mut p = Popped::default();
        for v in req.header_values(HeaderName::Route) {
            let Some(uri) = parse_name_addr(v).and_then(|na| SipUri::parse(na.uri)) else {
                break;
            };
            if !self.is_own(uri.host_port.host, uri.host_port.port) {
                break;
            }
            p.count += 1;
            p.transport = transport_param(&uri).or(Some(Transport::Udp));
            if let Some(ft) = find_param(uri.params, "ft").and_then(|f| std::str::from_utf8(f).ok()?.parse().ok()) {
                p.flow = Some(ft);
            }
        }
        p
    }

    /// Loop hash over what stays the same when a request comes back to us unchanged.
    pub(crate) fn loop_hash(req: &Message) -> u32 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.request_uri().hash(&mut h);
        req.call_id().hash(&mut h);
        req.from_tag().hash(&mut h);
        req.to_tag().hash(&mut h);
        req.cseq().hash(&mut h);
        req.method_bytes().hash(&mut h);
        for r in req.header_values(HeaderName::ProxyRequire) {
            r.hash(&mut h);
        }
        h.finish() as u32
    }

    /// Whether one of the request's Vias is ours with this request's loop hash: it went round in a circle.
    fn is_loop(&self, req: &Message, hash: u32) -> bool {
        let mut prefix = [0u8; 16];
        let _ = std::io::Write::write_fmt(&mut &mut prefix[..], format_args!("z9hG4bK{hash:08x}."));
        req.header_values(HeaderName::Via)
            .filter_map(Via::parse)
            .any(|v| self.is_own_via(&v) && v.branch().is_some_and(|b| b.starts_with(&prefix)))
    }

    /// Whether a request comes from one of the backends (its source, or its top Via's sent-by).
    pub(crate) fn came_from_backend(&self, req: &Message, src: Source) -> bool {
        if self.routing.is_backend_source(src.remote) {
            return true;
        }
        req.top_via().is_some_and(|v| {
            v.sent_by.ip().is_some_and(|ip| {
                let sa = SocketAddr::new(ip, v.sent_by.port.unwrap_or(5060));
                self.routing.backend_at(sa).is_some()
            })
        })
    }

    fn hop_for_uri(&self, uri: &[u8], hint: Option<Transport>) -> Result<Hop, (u16, &'static str)> {
        let u = SipUri::parse(uri).ok_or((416, "Unsupported URI Scheme"))?;
        if u.sips {
            return Err((416, "Unsupported URI Scheme"));
        }
        let transport = transport_param(&u).or(hint).unwrap_or(Transport::Udp);
        let port = u.host_port.port.unwrap_or(5060);
        match u.host_port.ip() {
            Some(ip) => {
                let addr = SocketAddr::new(ip, port);
                let backend = self.routing.backend_at(addr);
                let transport = backend.map(|b| self.routing.backends()[b].transport).unwrap_or(transport);
                Ok(Hop { addr: HopAddr::Resolved(Target { transport, addr, conn: None }), backend })
            }
            None => Ok(Hop {
                addr: HopAddr::Name { host: String::from_utf8_lossy(u.host_port.host).into_owned(), port, transport },
                backend: None,
            }),
        }
    }

    fn backend_hops(&self) -> Vec<Hop> {
        let backends = self.routing.backends();
        self.routing
            .plan()
            .into_iter()
            .map(|i| Hop { addr: HopAddr::Resolved(backends[i].target()), backend: Some(i) })
            .collect()
    }

    /// Decide where a request goes, or the error to answer it with.
    pub fn plan(self: &Arc<Self>, req: &Message, src: Source) -> Result<Plan, (u16, &'static str)> {
        let popped = self.pop_own_routes(req);
        let loop_hash = Self::loop_hash(req);
        if self.is_loop(req, loop_hash) {
            return Err((482, "Loop Detected"));
        }
        let max_forwards = match req.max_forwards() {
            Some(n) => n.saturating_sub(1),
            None => self.settings.max_forwards,
        };
        let method = req.method().unwrap_or(Method::Other);
        let initial = req.to_tag().is_none();
        let next_route = req.header_values(HeaderName::Route).nth(popped.count);
        let hops = if let Some(route) = next_route {
            // Loose routing: the next Route is where it goes; the Request-URI stays (RFC 3261 §16.6 step 7).
            let uri = parse_name_addr(route).ok_or((400, "Bad Request: malformed Route"))?.uri;
            vec![self.hop_for_uri(uri, None)?]
        } else if popped.count > 0 || !initial || self.came_from_backend(req, src) {
            let ruri = req.request_uri();
            let ruri_ours = SipUri::parse(ruri).is_some_and(|u| self.is_own(u.host_port.host, u.host_port.port));
            if ruri_ours && self.came_from_backend(req, src) {
                return Err((404, "Not Found"));
            }
            if ruri_ours {
                // A client that does not keep the route set, or an in-dialog request to our address.
                self.backend_hops()
            } else {
                let mut hop = self.hop_for_uri(ruri, popped.transport)?;
                // A request from a backend toward a client on a connection we recorded: use that connection.
                if let (Some(flow), HopAddr::Resolved(t)) = (popped.flow, &mut hop.addr) {
                    if self.came_from_backend(req, src) && self.transports.conn_alive(flow) {
                        t.conn = Some(flow);
                        t.transport = Transport::Tcp;
                    }
                }
                vec![hop]
            }
        } else {
            self.backend_hops()
        };
        if hops.is_empty() {
            return Err((503, "Service Unavailable"));
        }
        Ok(Plan {
            hops,
            pop_routes: popped.count,
            record_route: initial && method.forms_dialog() && method != Method::Notify,
            max_forwards,
            loop_hash,
        })
    }
}

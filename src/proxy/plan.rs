//! Where a request goes (RFC 3261 §16.4–16.6): pop our own Route entries, follow the next Route or the
//! Request-URI, or send an initial request to the backends in the policy's order. Also loop detection (§16.3
//! step 4) through the loop part of our branch.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use super::Proxy;
use bytes::Bytes;

use crate::dialog::{DialogId, Leg};
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
    /// Attempts in order; more than one when a backend-bound request may fail over to the next backend.
    pub hops: Vec<Hop>,
    /// Our own Route values to remove from the top.
    pub pop_routes: usize,
    /// Add our Record-Route (dialog-forming initial requests).
    pub record_route: bool,
    /// Max-Forwards to write.
    pub max_forwards: u32,
    /// Loop-detection hash, the first part of every branch we give this request.
    pub loop_hash: u32,
    /// The backend this request came from, when it came from one.
    pub from_backend: Option<usize>,
    /// A REGISTER: the flow token our Path carries (the flow is the request's source).
    pub path_token: Option<Bytes>,
    /// An in-dialog request: the dialog entry (leg) it belongs to, so a re-INVITE's 2xx refreshes that one.
    pub dialog: Option<DialogId>,
}

/// What our popped Route entries told us.
#[derive(Default)]
struct Popped {
    count: usize,
    /// `transport` of the last popped entry (the side the request leaves on).
    transport: Option<Transport>,
    /// Connection of a connection-oriented client flow (`;ft=` in our client-facing Record-Route).
    conn: Option<ConnId>,
    /// The backend named by our dialog token (`;d=`), checked against this request's dialog.
    dialog_backend: Option<usize>,
    /// A phone's registered flow, from the token in the user part of our Path.
    flow: Option<(Bytes, Target)>,
    /// The dialog leg our token names: which pass of a spiral this request is on (the last popped entry's).
    leg: Option<Leg>,
    /// The popped entries named both legs: the request comes out of the PBX side of the last one.
    crossed: bool,
}

/// Equal addresses, an IPv4 one and its IPv4-mapped IPv6 form included (a dual-stack listener).
fn same_ip(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn transport_param(uri: &SipUri<'_>) -> Option<Transport> {
    match uri.transport() {
        Some(t) if t.eq_ignore_ascii_case(b"tcp") => Some(Transport::Tcp),
        Some(t) if t.eq_ignore_ascii_case(b"udp") => Some(Transport::Udp),
        Some(t) if t.eq_ignore_ascii_case(b"tls") => Some(Transport::Tls),
        Some(t) if t.eq_ignore_ascii_case(b"ws") => Some(Transport::Ws),
        Some(t) if t.eq_ignore_ascii_case(b"wss") => Some(Transport::Wss),
        _ => None,
    }
}

/// A Route of ours carried a token that fails its check.
const FORGED: (u16, &str) = (403, "Forbidden (bad route token)");
/// A next hop named by a host name not in `routing.relay_allow`.
const NOT_RESOLVED: (u16, &str) = (403, "Forbidden (host names are not resolved)");
/// A next hop that is neither a backend, nor a registered phone, nor in `routing.relay_allow`.
const NO_RELAY: (u16, &str) = (403, "Forbidden (not a relay)");

impl Proxy {
    /// Whether a host and port are this node's (the advertised host or a listener address).
    pub(crate) fn is_own(&self, host: &[u8], port: Option<u16>) -> bool {
        let host_ours = host.eq_ignore_ascii_case(self.settings.advertise.as_bytes()) || {
            // Parsed once, not once per listener: this runs for every Via and Route we look at.
            let ip = std::str::from_utf8(host).ok().and_then(|h| h.parse::<std::net::IpAddr>().ok());
            ip.is_some_and(|ip| self.own_addrs.iter().any(|(_, a)| a.ip() == ip))
        };
        if !host_ours {
            return false;
        }
        let port = port.unwrap_or(5060);
        self.own_addrs.iter().any(|(_, a)| a.port() == port)
    }

    pub(crate) fn is_own_via(&self, via: &Via<'_>) -> bool {
        self.is_own(via.sent_by.host, via.sent_by.port)
    }

    fn pop_own_routes(&self, req: &Message) -> Result<Popped, (u16, &'static str)> {
        let mut p = Popped::default();
        let key = &self.settings.token_key;
        for v in req.header_values(HeaderName::Route) {
            let Some(uri) = parse_name_addr(v).and_then(|na| SipUri::parse(na.uri)) else { break };
            if !self.is_own(uri.host_port.host, uri.host_port.port) {
                break;
            }
            p.count += 1;
            p.transport = transport_param(&uri).or(Some(Transport::Udp));
            let ft: Option<ConnId> = match find_param(uri.params, "ft") {
                Some(f) => Some(std::str::from_utf8(f).ok().and_then(|f| f.parse().ok()).ok_or(FORGED)?),
                None => None,
            };
            if let Some(d) = find_param(uri.params, "d") {
                let t = key.check_dialog_token(d, req.call_id(), [req.from_tag(), req.to_tag()]).ok_or(FORGED)?;
                // The flow parameter is covered by the token: a rewritten one is a forgery.
                if t.conn != ft {
                    return Err(FORGED);
                }
                let b = usize::from(t.backend);
                p.dialog_backend = (b < self.routing.backends().len()).then_some(b);
                // Both passes' entries back to back (a PBX in the middle that does not Record-Route): the request
                // went through the PBX's side already, and goes on as the last pass would.
                p.crossed |= t.leg.is_some() && p.leg.is_some() && t.leg != p.leg;
                p.leg = t.leg.or(p.leg);
            }
            if ft.is_some() {
                p.conn = ft;
            }
            if let Some(user) = uri.user.filter(|u| !u.is_empty()) {
                let flow = key.check_flow_token(user).ok_or(FORGED)?;
                p.flow = Some((Bytes::copy_from_slice(user), flow));
            }
        }
        Ok(p)
    }

    /// Loop hash (RFC 3261 §16.6 step 8) over every field whose change makes a request that comes back to us a
    /// spiral rather than a loop: Request-URI, Call-ID, both tags, CSeq, and the Route, Proxy-Require and
    /// Proxy-Authorization headers as received. The Route set matters: a request of a dialog that passes us twice
    /// (phone -> sipfront -> PBX -> sipfront -> phone) keeps its Request-URI, tags and CSeq on both passes, and
    /// only its Route set (our first entry and the PBX's gone on the second pass) tells the passes apart. The top
    /// Via is left out on purpose: every hop rewrites it, so with it a real loop would never match.
    pub(crate) fn loop_hash(req: &Message) -> u32 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.request_uri().hash(&mut h);
        req.call_id().hash(&mut h);
        req.from_tag().hash(&mut h);
        req.to_tag().hash(&mut h);
        req.cseq().hash(&mut h);
        req.method_bytes().hash(&mut h);
        for name in [HeaderName::Route, HeaderName::ProxyRequire, HeaderName::ProxyAuthorization] {
            for v in req.header_values(name) {
                name.hash(&mut h);
                v.hash(&mut h);
            }
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

    /// The backend a request comes from: its source address, or its top Via's sent-by (a PBX's own connection).
    pub(crate) fn backend_of(&self, req: &Message, src: Source) -> Option<usize> {
        self.routing.backend_at(src.remote).or_else(|| {
            let v = req.top_via()?;
            let ip = v.sent_by.ip()?;
            // Only from the backend's own host: anyone can write a backend's address into a Via.
            if !same_ip(ip, src.remote.ip()) {
                return None;
            }
            self.routing.backend_at(SocketAddr::new(ip, v.sent_by.port.unwrap_or(5060)))
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
            None => {
                // Never a DNS lookup on the call path for a name nobody configured: an attacker's Request-URI or
                // Route would make us resolve (and reach) anything.
                let host = String::from_utf8_lossy(u.host_port.host).to_ascii_lowercase();
                if !self.settings.relay_hosts.contains(&host) {
                    return Err(NOT_RESOLVED);
                }
                Ok(Hop { addr: HopAddr::Name { host, port, transport }, backend: None })
            }
        }
    }

    fn backend_hop(&self, i: usize) -> Hop {
        Hop { addr: HopAddr::Resolved(self.routing.backends()[i].target()), backend: Some(i) }
    }

    /// Backends in the policy's order, those up only. With probes off nothing brings a backend back up, so the
    /// down ones are still tried when none is up; with probes on, none up means an empty list (answered 503 with
    /// Retry-After at once, not 408 after timer B).
    pub(crate) fn backend_order(&self) -> Vec<usize> {
        let order = self.routing.plan();
        let up: Vec<usize> = order.iter().copied().filter(|&i| self.health.is_up(i)).collect();
        if up.is_empty() && !self.settings.health.enabled {
            order
        } else {
            up
        }
    }

    /// The order for new calls: [`Proxy::backend_order`] with drained backends moved last (they take new calls
    /// only when no other backend is up).
    fn new_call_order(&self) -> Vec<usize> {
        let mut order = self.backend_order();
        order.sort_by_key(|&i| self.health.is_drained(i)); // stable: the policy's order stays within each group
        order
    }

    fn backend_hops(&self) -> Vec<Hop> {
        self.new_call_order().into_iter().map(|i| self.backend_hop(i)).collect()
    }

    /// Hops for a request of an established dialog homed on `home`: the home while it is up (moving the dialog
    /// to the policy's survivor when it is not), then the other live backends as fallbacks.
    fn dialog_hops(&self, home: usize, id: Option<&DialogId>) -> Vec<Hop> {
        let order = self.new_call_order();
        let home = if self.health.is_up(home) {
            home
        } else {
            let Some(survivor) = order.first().copied() else {
                return Vec::new(); // nothing up: 503
            };
            if let (Some(id), true) = (id, survivor != home) {
                self.dialogs.set_home(id, survivor);
            }
            survivor
        };
        std::iter::once(home).chain(order.into_iter().filter(|&i| i != home)).map(|i| self.backend_hop(i)).collect()
    }

    /// A request toward a phone: its recorded flow while it lives; for a connection-oriented phone whose
    /// connection is gone (a failover, a NAT rebinding), the connection it registered anew; else, for UDP, the
    /// recorded address; else the Request-URI (the phone's Contact).
    fn phone_hop(
        &self,
        req: &Message,
        popped: &Popped,
        dialog: Option<(&DialogId, Target)>,
    ) -> Result<Hop, (u16, &'static str)> {
        let resolved = |t: Target| Ok(Hop { addr: HopAddr::Resolved(t), backend: None });
        if let Some((id, c)) = dialog {
            let alive = |conn: ConnId| self.transports.conn_alive(conn);
            if c.conn.is_some_and(alive) {
                return resolved(c);
            }
            if c.transport.is_reliable() {
                let to = req.header(HeaderName::To).and_then(parse_name_addr).map(|na| na.uri).unwrap_or_default();
                if let Some(now_at) = self.flows.relearned(req.request_uri(), to, Some(c.addr.ip()), alive) {
                    metrics::counter!(crate::metrics::FLOWS_RELEARNED).increment(1);
                    self.dialogs.follow_client(id, now_at);
                    return resolved(now_at);
                }
            }
            // A replicated UDP flow is the phone's NAT binding, reachable from the VIP. A replicated connection
            // flow names a connection on another node (and travels as TCP even for TLS): the phone's Contact, on
            // the transport it names, is the better guess until the phone reconnects.
            if c.conn.is_none() && !c.transport.is_reliable() {
                return resolved(c);
            }
        }
        let mut hop = match self.hop_for_uri(req.request_uri(), popped.transport) {
            // A phone's Contact with a host name (a WebSocket client's `.invalid`): its flow is the only way.
            Err(e) if e == NOT_RESOLVED => return Err((430, "Flow Failed")),
            r => r?,
        };
        if let (Some(conn), HopAddr::Resolved(t)) = (popped.conn, &mut hop.addr) {
            if let Some(transport) = self.transports.conn_transport(conn) {
                t.conn = Some(conn);
                t.transport = transport;
            }
        }
        Ok(hop)
    }

    /// Decide where a request goes, or the error to answer it with.
    pub fn plan(self: &Arc<Self>, req: &Message, src: Source) -> Result<Plan, (u16, &'static str)> {
        let popped = self.pop_own_routes(req).inspect_err(|_| {
            self.stats.forged_tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::FORGED_TOKENS).increment(1);
        })?;
        let loop_hash = Self::loop_hash(req);
        if self.is_loop(req, loop_hash) {
            self.stats.loops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::LOOPS).increment(1);
            tracing::debug!(from = %src.remote, call_id = %String::from_utf8_lossy(req.call_id()), "request came back unchanged: loop, 482");
            return Err((482, "Loop Detected"));
        }
        let max_forwards = match req.max_forwards() {
            Some(n) => n.saturating_sub(1),
            None => self.settings.max_forwards,
        };
        let method = req.method().unwrap_or(Method::Other);
        let from_backend = self.backend_of(req, src);
        // The leg our popped Record-Route names; without one (a request that skipped our Route) the leg that is
        // here, or the one phone -> PBX when both are.
        let dialog_id = match (req.from_tag(), req.to_tag()) {
            (Some(f), Some(t)) => Some(self.dialogs.leg_of(req.call_id(), f, t, popped.leg.unwrap_or(Leg::FromPhone))),
            _ => None,
        };
        // (Not when the request crossed both our passes: then it comes from the other leg's phone.)
        if let (Some(id), None, Some(_), false) = (&dialog_id, from_backend, src.conn, popped.crossed) {
            // The phone's side of a call: a reconnected phone is reached on its new connection from now on.
            self.dialogs.follow_client(id, src.into());
        }
        if let (Some(id), Method::Ack) = (&dialog_id, method) {
            self.dialogs.acked(id);
        }
        let next_route = req.header_values(HeaderName::Route).nth(popped.count);
        let hops = if let Some(route) = next_route {
            // Loose routing: the next Route is where it goes; the Request-URI stays (RFC 3261 §16.6 step 7).
            let uri = parse_name_addr(route).ok_or((400, "Bad Request: malformed Route"))?.uri;
            let hop = self.hop_for_uri(uri, None).inspect_err(|_| self.count_relay_refused("route"))?;
            // From a phone, a Route past ours may only lead to a backend, to a hop the dialog's own route set
            // names (a PBX that Record-Routes another address of its own), or where the operator allows.
            if from_backend.is_none() && hop.backend.is_none() && !self.relay_allowed(&hop) {
                let recorded = dialog_id.as_ref().and_then(|id| self.dialogs.get(id)).and_then(|d| d.route_set);
                if recorded.is_none_or(|set| memchr::memmem::find(&set, uri).is_none()) {
                    self.count_relay_refused("route");
                    return Err(NO_RELAY);
                }
            }
            // A PBX that Record-Routes itself: when the next Route is a backend, the dialog's current home wins,
            // so a re-homed call does not go back to the failed PBX.
            let home = match (&dialog_id, hop.backend, from_backend) {
                (Some(id), Some(_), None) => {
                    let d = self.dialogs.touch(id, true, req.cseq(), method == Method::Bye);
                    d.and_then(|d| d.home()).or(popped.dialog_backend)
                }
                _ => None,
            };
            match home {
                Some(home) => self.dialog_hops(home, dialog_id.as_ref()),
                None => vec![hop],
            }
        } else if let Some((token, flow)) = &popped.flow {
            // The PBX reaches a registered phone through our Path: deliver to the phone's own flow.
            // Registered (not expired, not de-registered) and, for a connection, still connected.
            let alive = self.flows.get(token).is_some() && flow.conn.is_none_or(|id| self.transports.conn_alive(id));
            if !alive {
                return Err((430, "Flow Failed"));
            }
            vec![Hop { addr: HopAddr::Resolved(*flow), backend: None }]
        } else if let Some(id) = &dialog_id {
            let dialog = self.dialogs.touch(id, from_backend.is_none(), req.cseq(), method == Method::Bye);
            // Toward the phone: from a backend; across both our passes at once; or, in a dialog whose other side
            // is no backend (a registrar elsewhere that reached the phone along our Path), from anyone but the
            // phone itself.
            let from_other_side = dialog.as_ref().is_some_and(|d| {
                d.home().is_none()
                    && d.client.is_some_and(|c| c.addr != src.remote && c.conn.is_none_or(|c| Some(c) != src.conn))
            });
            if from_backend.is_some() || popped.crossed || from_other_side {
                vec![self.phone_hop(req, &popped, dialog.and_then(|d| d.client).map(|c| (id, c)))?]
            } else if let Some(home) = dialog.and_then(|d| d.home()).or(popped.dialog_backend) {
                self.dialog_hops(home, Some(id))
            } else {
                // Neither a dialog we hold nor our token: only toward a backend (a PBX that does not
                // Record-Route is reached at its Contact) or our own address.
                self.uri_or_backends(req, &popped, from_backend)?
            }
        } else if from_backend.is_some() || popped.count > 0 {
            self.uri_or_backends(req, &popped, from_backend)?
        } else {
            self.backend_hops()
        };
        if hops.is_empty() {
            self.stats.no_backend.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::NO_BACKEND, "method" => method.as_str()).increment(1);
            return Err((503, "Service Unavailable (no backend up)"));
        }
        let initial = dialog_id.is_none();
        if initial && method == Method::Invite && self.dialogs.len() >= self.settings.dialogs.max {
            self.stats.over_capacity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::OVER_CAPACITY, "table" => "dialogs").increment(1);
            return Err((503, "Service Unavailable (dialog table full)"));
        }
        let per_source = self.settings.dialogs.max_per_source;
        if initial
            && method == Method::Invite
            && from_backend.is_none()
            && self.dialogs.count_from(src.remote.ip()) >= per_source
        {
            self.stats.over_capacity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::metrics::OVER_CAPACITY, "table" => "dialogs_per_source").increment(1);
            return Err((503, "Service Unavailable (too many calls from this address)"));
        }
        let path_token = if method == Method::Register && from_backend.is_none() {
            let token = Bytes::from(self.settings.token_key.flow_token(&src.into()));
            if self.flows.refuses_new(&token) {
                self.stats.over_capacity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!(crate::metrics::OVER_CAPACITY, "table" => "flows").increment(1);
                return Err((503, "Service Unavailable (registration flows full)"));
            }
            Some(token)
        } else {
            None
        };
        Ok(Plan {
            hops,
            pop_routes: popped.count,
            record_route: initial && method.forms_dialog() && method != Method::Notify,
            max_forwards,
            loop_hash,
            from_backend,
            path_token,
            dialog: dialog_id,
        })
    }

    /// Route by the Request-URI (to a phone, or in-dialog without our Record-Route); a request for our own address
    /// goes to the backends.
    fn uri_or_backends(
        &self,
        req: &Message,
        popped: &Popped,
        from_backend: Option<usize>,
    ) -> Result<Vec<Hop>, (u16, &'static str)> {
        let ruri_ours =
            SipUri::parse(req.request_uri()).is_some_and(|u| self.is_own(u.host_port.host, u.host_port.port));
        match (ruri_ours, from_backend) {
            (true, Some(_)) => Err((404, "Not Found")),
            (true, None) => Ok(self.backend_hops()),
            (false, Some(_)) => Ok(vec![self.phone_hop(req, popped, None)?]),
            // A phone's request for elsewhere: a new one goes to the PBX, whose dial plan decides (sipfront is a
            // front door, not a relay); one of a dialog we know nothing of only to a backend it names.
            (false, None) if req.to_tag().is_none() => Ok(self.backend_hops()),
            (false, None) => {
                let hop = self.hop_for_uri(req.request_uri(), popped.transport).ok().filter(|h| h.backend.is_some());
                match hop {
                    Some(hop) => Ok(vec![hop]),
                    None if self.relay_allowed_uri(req.request_uri()) => {
                        Ok(vec![self.hop_for_uri(req.request_uri(), popped.transport)?])
                    }
                    None => {
                        self.count_relay_refused("unknown_dialog");
                        Err((481, "Call/Transaction Does Not Exist"))
                    }
                }
            }
        }
    }

    /// Whether a hop that is no backend is where the operator allows requests to go (`routing.relay_allow`).
    fn relay_allowed(&self, hop: &Hop) -> bool {
        match &hop.addr {
            HopAddr::Resolved(t) => self.settings.relay_nets.iter().any(|n| n.contains(t.addr.ip())),
            // Only allowed names get this far (hop_for_uri).
            HopAddr::Name { .. } => true,
        }
    }

    fn relay_allowed_uri(&self, uri: &[u8]) -> bool {
        self.hop_for_uri(uri, None).is_ok_and(|h| self.relay_allowed(&h))
    }

    fn count_relay_refused(&self, reason: &'static str) {
        self.stats.relay_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(crate::metrics::RELAY_REFUSED, "reason" => reason).increment(1);
    }
}

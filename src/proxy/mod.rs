//! The stateful proxy (RFC 3261 §16): every message the transports read comes to [`Proxy::on_message`], which
//! classifies it and either answers it here (OPTIONS to us, malformed or unroutable requests), relays it without
//! state (ACK for a 2xx, responses no transaction claims), hands it to the transaction that owns it
//! (retransmissions, ACK for a non-2xx, CANCEL, responses), or starts a new proxy transaction.
//!
//! This module decides *where* a request goes ([`plan`]) and *how* it is rewritten ([`forward`]); the timers and
//! retransmissions live in [`crate::transaction`]. Nothing here blocks: the reading task calls in, and anything
//! that must wait (connects, DNS, timers) runs on a transaction task.

mod forward;
mod local;
mod plan;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

pub use forward::resolve;
pub(crate) use local::RETRY_AFTER;
pub use plan::{Hop, HopAddr, Plan};
pub use stats::{Stats, StatsSnapshot};

use crate::cluster::event::Journal;
use crate::config::{Config, ConfigError, DialogConfig, HealthConfig};
use crate::dialog::DialogTable;
use crate::health::Health;
use crate::metrics as m;
use crate::registration::FlowTable;
use crate::routing::Routing;
use crate::sip::{Message, Method};
use crate::token::TokenKey;
use crate::transaction::{self, ServerEntry, ServerKey, Timers, TransactionTable, TxEvent};
use crate::transport::{Inbound, Source, Transport, Transports, Verdict};

/// Settings the proxy reads on every message, taken from the config once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: u32,
    /// Host in our Via and Record-Route.
    pub advertise: String,
    pub max_forwards: u32,
    pub timers: Timers,
    pub health: HealthConfig,
    pub dialogs: DialogConfig,
    pub max_flows: usize,
    /// Authenticates our Record-Route and Path tokens.
    pub token_key: TokenKey,
    /// Caps on live transactions, in all and per source IP (`sip.max_transactions*`).
    pub max_transactions: usize,
    pub max_transactions_per_source: usize,
    /// Where else than backends and phones a request may go (`routing.relay_allow`).
    pub relay_nets: Vec<crate::config::Cidr>,
    pub relay_hosts: Vec<String>,
    /// Per-source rate limits, bans and scanner rules (`[security]`, run by [`crate::guard`]).
    pub security: crate::config::SecurityConfig,
}

/// An IP address as written in a Via or URI host: IPv6 in brackets.
pub fn host_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }
}

impl Settings {
    /// The advertised host as written in a Via or URI: IPv6 addresses in brackets.
    pub fn advertise_host(&self) -> std::borrow::Cow<'_, str> {
        if self.advertise.contains(':') {
            format!("[{}]", self.advertise).into()
        } else {
            self.advertise.as_str().into()
        }
    }

    /// Settings from a validated config; reads the token secret file when one is named.
    pub fn from_config(cfg: &Config) -> Result<Settings, ConfigError> {
        // Every node of a cluster must accept the others' tokens: without a secret of its own, the key comes
        // from the cluster's.
        let token_key = match (&cfg.sip.secret_file, &cfg.cluster) {
            (Some(path), _) => TokenKey::from_secret(&crate::config::read_secret(path)?),
            (None, Some(c)) => {
                let mut s = b"sipfront sip tokens\0".to_vec();
                s.extend(crate::config::read_secret_for("cluster.secret_file", &c.secret_file)?);
                TokenKey::from_secret(&s)
            }
            (None, None) => TokenKey::random(),
        };
        Ok(Settings {
            node_id: cfg.node.id,
            advertise: cfg.sip.advertise.clone(),
            max_forwards: cfg.sip.max_forwards,
            timers: Timers::from_config(&cfg.timers),
            health: cfg.health.clone(),
            dialogs: cfg.dialogs.clone(),
            max_flows: cfg.registrations.max_flows,
            token_key,
            max_transactions: cfg.sip.max_transactions,
            max_transactions_per_source: cfg.sip.max_transactions_per_source,
            relay_nets: cfg.routing.relay_nets(),
            relay_hosts: cfg.routing.relay_hosts(),
            security: cfg.security.clone(),
        })
    }

    /// Defaults for tests: RFC timers, probes on, a random token key.
    pub fn for_tests(advertise: &str) -> Settings {
        Settings {
            node_id: 1,
            advertise: advertise.into(),
            max_forwards: 70,
            timers: Timers::default(),
            health: HealthConfig::default(),
            dialogs: DialogConfig::default(),
            max_flows: 100_000,
            token_key: TokenKey::random(),
            max_transactions: 20_000,
            max_transactions_per_source: 1_000,
            relay_nets: Vec::new(),
            relay_hosts: Vec::new(),
            security: crate::config::SecurityConfig::default(),
        }
    }
}

/// Everything a proxy transaction needs, shared by all tasks.
pub struct Proxy {
    pub settings: Settings,
    pub transports: Transports,
    pub routing: Routing,
    pub dialogs: DialogTable,
    pub flows: FlowTable,
    /// Flood and scanner protection: every message passes it first.
    pub guard: crate::guard::Guard,
    pub health: Health,
    pub txs: TransactionTable,
    pub stats: Stats,
    /// Port of each transport's listener, for our Via and Record-Route.
    udp_port: Option<u16>,
    tcp_port: Option<u16>,
    tls_port: Option<u16>,
    /// `ws:` and `wss:` listener ports, for a Record-Route toward a WebSocket client.
    ws_ports: (Option<u16>, Option<u16>),
    /// Every listener address, to recognise our own Via and Route entries.
    own_addrs: Vec<(Transport, std::net::SocketAddr)>,
    /// Per-process random part of branches and tags, so a restarted node never reuses one.
    instance: u64,
    seq: AtomicU64,
    /// Serving: always on a standalone node; on a cluster only while this node leads and holds the VIP.
    active: std::sync::atomic::AtomicBool,
    /// Recent failover events this node saw (for the admin API and the dashboard).
    pub events: Arc<crate::events::EventLog>,
}

impl Proxy {
    pub fn new(settings: Settings, transports: Transports, routing: Routing) -> Arc<Proxy> {
        Proxy::with_journal(settings, transports, routing, Journal::default())
    }

    /// A proxy whose tables replicate their changes through `journal` (a cluster member).
    pub fn with_journal(settings: Settings, transports: Transports, routing: Routing, journal: Journal) -> Arc<Proxy> {
        let udp_port = transports.local_addr(Transport::Udp).map(|a| a.port());
        let tcp_port = transports.local_addr(Transport::Tcp).map(|a| a.port());
        let tls_port = transports.local_addr(Transport::Tls).map(|a| a.port());
        let ws_ports = (
            transports.local_addr(Transport::Ws).map(|a| a.port()),
            transports.local_addr(Transport::Wss).map(|a| a.port()),
        );
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.finish()
        };
        let names: Vec<String> = routing.backends().iter().map(|b| b.name.clone()).collect();
        let events = Arc::new(crate::events::EventLog::new(settings.node_id));
        Arc::new(Proxy {
            events,
            health: Health::with_journal(&names, settings.health.clone(), journal.clone()),
            flows: FlowTable::with_journal(settings.max_flows, journal.clone()),
            guard: crate::guard::Guard::new(
                &settings.security,
                routing.backends().iter().map(|b| b.addr.ip()),
                journal.clone(),
            ),
            settings,
            own_addrs: transports.local_addrs(),
            transports,
            routing,
            dialogs: DialogTable::with_journal(journal),
            txs: TransactionTable::new(),
            stats: Stats::default(),
            udp_port,
            tcp_port,
            tls_port,
            ws_ports,
            instance,
            seq: AtomicU64::new(1),
            active: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether this node serves SIP now (a standby drops what reaches it, and does not probe).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
    }

    /// The listener port we advertise for a transport.
    pub fn port_for(&self, t: Transport) -> u16 {
        match t {
            Transport::Udp => self.udp_port.or(self.tcp_port),
            Transport::Tcp => self.tcp_port.or(self.udp_port),
            // Never fall back to a plain port for TLS: a peer would shake hands with a non-TLS listener.
            Transport::Tls => return self.tls_port.unwrap_or(5061),
            // RFC 7118 §5's defaults; a WebSocket client only ever reaches a port we listen on anyway.
            Transport::Ws => return self.ws_ports.0.unwrap_or(80),
            Transport::Wss => return self.ws_ports.1.unwrap_or(443),
        }
        .unwrap_or(5060)
    }

    /// A fresh unique token (branch suffix, To tag).
    pub fn unique(&self) -> u64 {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.instance.rotate_left(17) ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A To tag for a response sipfront generates itself. The prefix is this process's, so an ACK carrying it is
    /// recognised as the hop-by-hop ACK of one of our own non-2xx answers (we never answer an INVITE with 2xx).
    pub fn local_tag(&self) -> String {
        format!("sf{:08x}.{:x}", self.instance as u32, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether a To tag is one [`Proxy::local_tag`] made.
    pub fn is_local_tag(&self, tag: &[u8]) -> bool {
        let mut prefix = [0u8; 10];
        let _ = std::io::Write::write_fmt(&mut &mut prefix[..], format_args!("sf{:08x}", self.instance as u32));
        tag.len() > 11 && tag.starts_with(&prefix) && tag[10] == b'.'
    }

    fn handle(self: &Arc<Self>, data: Bytes, src: Source) -> Verdict {
        if !self.is_active() {
            metrics::counter!(crate::metrics::DROPPED_STANDBY).increment(1);
            return Verdict::Accepted;
        }
        // Banned or over its rate: dropped unread and unanswered (crate::guard says why); a banned source's stream
        // connection closes too.
        use crate::guard::Admission;
        let admission = self.guard.admit(src.remote.ip());
        match admission {
            Admission::Banned => return Verdict::Refused,
            Admission::Drop => return Verdict::Accepted,
            Admission::Exempt | Admission::Counted { .. } => {}
        }
        let msg = match Message::parse(data.clone()) {
            Ok(msg) => msg,
            Err(e) => return self.on_malformed(data, e, src),
        };
        if msg.is_request() {
            if !self.guard.admit_request(admission, &msg) {
                // A scanner's User-Agent (banned at once), or over the REGISTER / new-request rate (banned after
                // `ban_after`). Only on a stream does the ban matter here, and only a drop pays the lookup.
                let banned = src.conn.is_some() && self.guard.is_banned(src.remote.ip());
                return if banned { Verdict::Refused } else { Verdict::Accepted };
            }
            self.on_request(msg, src);
        } else {
            self.on_response(msg, src);
        }
        Verdict::Accepted
    }

    fn on_request(self: &Arc<Self>, req: Message, src: Source) {
        let method = req.method().unwrap_or(Method::Other);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::REQUESTS, "method" => method.as_str()).increment(1);
        match method {
            Method::Ack => {
                let key = ServerKey::for_request(&req, Method::Invite);
                let entry = self.txs.server(&key);
                if let Some(ServerEntry::Live(tx)) = entry {
                    // Same branch as an INVITE still running: it knows whether this ACKs its non-2xx answer.
                    let _ = tx.send(TxEvent::Ack(Box::new((req, src))));
                } else if let Some(ServerEntry::Done(_)) = entry {
                    // The INVITE was answered 2xx: a UA that reuses the INVITE's branch for the ACK. End to end.
                    self.forward_stateless(req, src);
                } else if req.to_tag().is_some_and(|t| self.is_local_tag(t)) {
                    // ACK for a non-2xx we answered without a transaction (483, 420, 404, 400 ...): ends here.
                    self.stats.acks_absorbed.fetch_add(1, Ordering::Relaxed);
                } else {
                    // ACK for a 2xx: end-to-end, relayed without state.
                    self.forward_stateless(req, src);
                }
            }
            Method::Cancel => {
                let key = ServerKey::for_request(&req, Method::Invite);
                match self.txs.server(&key) {
                    Some(ServerEntry::Live(tx)) => {
                        self.reply(&req, src, 200, "OK");
                        let _ = tx.send(TxEvent::Cancel);
                    }
                    // Already answered: the CANCEL has no effect but is still acknowledged (RFC 3261 §9.2).
                    Some(ServerEntry::Done(_)) => self.reply(&req, src, 200, "OK"),
                    None => self.reply(&req, src, 481, "Call/Transaction Does Not Exist"),
                }
            }
            _ => {
                let key = ServerKey::for_request(&req, method);
                if let Some(entry) = self.txs.server(&key) {
                    self.stats.retransmissions_absorbed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::RETRANSMISSIONS_ABSORBED).increment(1);
                    match entry {
                        ServerEntry::Live(tx) => drop(tx.send(TxEvent::Retransmit)),
                        ServerEntry::Done(Some(answer)) => self.transports.send(src.into(), answer),
                        ServerEntry::Done(None) => {}
                    }
                    return;
                }
                if let Some((code, reason)) = self.local_answer(&req, src) {
                    return self.reply(&req, src, code, reason);
                }
                match self.plan(&req, src) {
                    Ok(plan) => {
                        let from = plan.from_backend.is_none().then_some(src.remote.ip());
                        let s = &self.settings;
                        if !self.txs.admits(from, s.max_transactions, s.max_transactions_per_source) {
                            self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(m::OVER_CAPACITY, "table" => "transactions").increment(1);
                            return self.reply(&req, src, 503, "Service Unavailable (too many transactions)");
                        }
                        transaction::start(self.clone(), req, src, plan, key)
                    }
                    Err((code, reason)) => self.reply(&req, src, code, reason),
                }
            }
        }
    }

    fn on_response(self: &Arc<Self>, resp: Message, src: Source) {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let class = match resp.status().unwrap_or(0) / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "6xx",
        };
        metrics::counter!(m::RESPONSES, "class" => class).increment(1);
        let Some(via) = resp.top_via() else { return };
        if !self.is_own_via(&via) {
            // Not sent through us: nothing to route it by (RFC 3261 §16.7: silently dropped).
            self.stats.stray_responses.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %src.remote, "response whose top Via is not ours, dropped");
            return;
        }
        if let Some(branch) = via.branch() {
            if let Some(tx) = self.txs.client(branch) {
                let _ = tx.send(TxEvent::Response(Box::new(resp)));
                return;
            }
            if self.health.pending.complete(branch, resp.status().unwrap_or(0)) {
                return;
            }
        }
        // No transaction (e.g. a 2xx retransmission after it ended): relay by the next Via.
        self.relay_response_stateless(&resp);
    }
}

/// Adapter so the transports can hold the proxy as `Arc<dyn Inbound>` while the proxy methods take `&Arc<Self>`.
pub struct ProxyInbound(pub Arc<Proxy>);

impl Inbound for ProxyInbound {
    fn on_message(&self, data: Bytes, source: Source) -> Verdict {
        self.0.handle(data, source)
    }

    /// A banned source gets no connection (backends and `security.allow` are never banned in effect). One atomic
    /// load while nobody is banned.
    fn admits_connection(&self, remote: std::net::IpAddr) -> bool {
        let guard = &self.0.guard;
        !guard.is_banned(remote) || guard.is_exempt(remote)
    }
}

//! Registration flows (RFC 3327 Path, RFC 5626-style flow tokens): for every phone that registered through us,
//! the flow its REGISTER came on (transport, source address, TCP connection), under the token we put in our Path,
//! until the registration expires. The PBX reaches the phone by routing to that Path; the proxy then delivers to
//! the flow itself, which is what gets through NATs and reaches connection-oriented clients at all.
//!
//! Connections cannot move between nodes, nor outlive a NAT binding: a TCP, TLS or WebSocket phone whose connection
//! is gone reconnects and registers again, under a new flow token. Bindings of this node's connections are also
//! indexed by the AOR's user part, so a request for an established call of that phone (whose dialog still names
//! the old connection, or an address on another node) finds its new connection ([`FlowTable::relearned`]).
//!
//! This module keeps the table and reads expiries from REGISTER answers; it sends nothing.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::cluster::event::{Event, FlowRecord, Journal};
use crate::sip::{find_param, parse_name_addr, HeaderName, Message, SipUri};
use crate::transport::{ConnId, Target};

/// One registered flow.
#[derive(Debug, Clone)]
pub struct Binding {
    pub flow: Target,
    /// The address-of-record (the REGISTER's To URI).
    pub aor: Bytes,
    /// The Contact URI it registered; empty for a binding replicated from another node.
    pub contact: Bytes,
    pub expires: Instant,
}

/// Tokens of this node's connection flows kept per AOR user: a few devices per extension, newest last.
const FLOWS_PER_USER: usize = 16;

/// The user part of a URI, if it has one.
fn uri_user(uri: &[u8]) -> Option<&[u8]> {
    SipUri::parse(uri)?.user.filter(|u| !u.is_empty())
}

/// Flows by token. DashMap: REGISTER answers write and PBX requests read concurrently.
#[derive(Debug)]
pub struct FlowTable {
    map: DashMap<Bytes, Binding>,
    count: AtomicUsize,
    max: usize,
    /// Bindings and removals go to the cluster through it (disabled on a standalone node).
    journal: Journal,
    /// Tokens of this node's connection flows by AOR user part, for [`FlowTable::relearned`]. Stale tokens are
    /// skipped on lookup and pruned by [`FlowTable::reap`].
    by_user: DashMap<Bytes, Vec<Bytes>>,
}

impl FlowTable {
    pub fn new(max: usize) -> FlowTable {
        FlowTable::with_journal(max, Journal::default())
    }

    pub fn with_journal(max: usize, journal: Journal) -> FlowTable {
        FlowTable { map: DashMap::new(), count: AtomicUsize::new(0), max, journal, by_user: DashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Give back the capacity a past load left in the table (see [`crate::memory`]).
    pub fn shrink(&self) {
        crate::memory::shrink_sparse(&self.map);
        crate::memory::shrink_sparse(&self.by_user);
    }

    /// Whether a new flow (one not in the table) would exceed the cap.
    pub fn refuses_new(&self, token: &[u8]) -> bool {
        self.len() >= self.max && !self.map.contains_key(token)
    }

    /// Record or refresh a flow for `ttl`; a zero ttl removes it (de-registration).
    pub fn bind(&self, token: Bytes, flow: Target, aor: Bytes, contact: Bytes, ttl: Duration) {
        if ttl.is_zero() {
            self.unbind(&token);
            return;
        }
        if self.journal.enabled() {
            self.journal.record(Event::FlowUp(FlowRecord {
                token: token.clone(),
                flow: flow.into(),
                aor: aor.clone(),
                ttl_ms: ttl.as_millis() as u64,
            }));
        }
        if flow.conn.is_some() {
            // Bounded like the flows themselves: one source registering endless user names (an open registrar)
            // must not grow the index past `registrations.max_flows` users.
            let user = uri_user(&aor).filter(|u| self.by_user.len() < self.max || self.by_user.contains_key(*u));
            if let Some(user) = user {
                let mut tokens = self.by_user.entry(Bytes::copy_from_slice(user)).or_default();
                tokens.retain(|t| *t != token);
                if tokens.len() >= FLOWS_PER_USER {
                    tokens.remove(0);
                }
                tokens.push(token.clone());
            }
        }
        self.insert(token, Binding { flow, aor, contact, expires: Instant::now() + ttl });
    }

    /// The connection flow a phone registered anew (after a failover, or a reconnect through its NAT) for a
    /// request toward it whose recorded connection is gone: among this node's live connection flows of the To
    /// URI's user, the one whose Contact is the Request-URI, else the one from the same host as before (`near`),
    /// else the one of the same AOR host; the newest registration breaks ties.
    pub fn relearned(
        &self,
        ruri: &[u8],
        to: &[u8],
        near: Option<IpAddr>,
        alive: impl Fn(ConnId) -> bool,
    ) -> Option<Target> {
        let to = SipUri::parse(to)?;
        let user = to.user.filter(|u| !u.is_empty())?;
        let tokens = self.by_user.get(user)?.clone();
        let now = Instant::now();
        let mut best: Option<((u8, Instant), Target)> = None;
        for t in &tokens {
            let Some(b) = self.map.get(t).filter(|b| b.expires > now).map(|b| b.clone()) else { continue };
            if !b.flow.conn.is_some_and(&alive) {
                continue;
            }
            let same_host =
                SipUri::parse(&b.aor).is_some_and(|a| a.host_port.host.eq_ignore_ascii_case(to.host_port.host));
            let score = (u8::from(!b.contact.is_empty() && b.contact.eq_ignore_ascii_case(ruri)) << 2)
                | (u8::from(near == Some(b.flow.addr.ip())) << 1)
                | u8::from(same_host);
            if best.as_ref().is_none_or(|(s, _)| (score, b.expires) > *s) {
                best = Some(((score, b.expires), b.flow));
            }
        }
        best.map(|(_, t)| t)
    }

    fn insert(&self, token: Bytes, b: Binding) {
        if self.map.insert(token, b).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!(crate::metrics::FLOWS_ACTIVE).increment(1.0);
        }
    }

    pub fn unbind(&self, token: &[u8]) {
        if self.remove_quiet(token) {
            self.journal.record(Event::FlowGone { token: Bytes::copy_from_slice(token) });
        }
    }

    fn remove_quiet(&self, token: &[u8]) -> bool {
        let gone = self.map.remove(token).is_some();
        if gone {
            self.count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(crate::metrics::FLOWS_ACTIVE).decrement(1.0);
        }
        gone
    }

    /// Every live binding, for a snapshot.
    pub fn export(&self) -> Vec<FlowRecord> {
        let now = Instant::now();
        self.map
            .iter()
            .filter(|b| b.expires > now)
            .map(|b| FlowRecord {
                token: b.key().clone(),
                flow: b.flow.into(),
                aor: b.aor.clone(),
                ttl_ms: (b.expires - now).as_millis() as u64,
            })
            .collect()
    }

    /// Apply a replicated change from another node (nothing is journaled back).
    pub fn apply(&self, ev: &Event) {
        match ev {
            Event::FlowUp(r) => {
                let expires = Instant::now() + Duration::from_millis(r.ttl_ms);
                let b = Binding { flow: r.flow.into(), aor: r.aor.clone(), contact: Bytes::new(), expires };
                self.insert(r.token.clone(), b);
            }
            Event::FlowGone { token } => {
                self.remove_quiet(token);
            }
            _ => {}
        }
    }

    /// Replace every binding with a snapshot's.
    pub fn replace_all(&self, records: &[FlowRecord]) {
        let tokens: Vec<Bytes> = self.map.iter().map(|b| b.key().clone()).collect();
        for t in tokens {
            self.remove_quiet(&t);
        }
        for r in records {
            self.apply(&Event::FlowUp(r.clone()));
        }
    }

    /// The live binding under a token.
    pub fn get(&self, token: &[u8]) -> Option<Binding> {
        self.map.get(token).filter(|b| b.expires > Instant::now()).map(|b| b.clone())
    }

    /// Drop expired bindings; returns how many.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let mut gone = 0;
        self.map.retain(|_, b| {
            let keep = b.expires > now;
            gone += usize::from(!keep);
            keep
        });
        self.count.fetch_sub(gone, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::FLOWS_ACTIVE).decrement(gone as f64);
        self.by_user.retain(|_, tokens| {
            tokens.retain(|t| self.map.contains_key(t));
            !tokens.is_empty()
        });
        gone
    }
}

fn parse_secs(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// How long the registrar granted the binding of this REGISTER's Contact: that Contact's `expires` in the 2xx,
/// else the 2xx's Expires header, else what the REGISTER asked for, else an hour (RFC 3261 §10.2.1.1).
pub fn granted_expiry(register: &Message, ok: &Message) -> Duration {
    let our = register
        .header_values(HeaderName::Contact)
        .next()
        .and_then(parse_name_addr)
        .map(|na| na.uri)
        .unwrap_or_default();
    let from_contact = ok
        .header_values(HeaderName::Contact)
        .filter_map(parse_name_addr)
        .find(|na| !our.is_empty() && na.uri.eq_ignore_ascii_case(our))
        .and_then(|na| find_param(na.params, "expires").and_then(parse_secs));
    let expires_header = |m: &Message| {
        m.fields().find(|f| m.field_name(f).eq_ignore_ascii_case(b"Expires")).and_then(|f| parse_secs(m.slice(f.value)))
    };
    let asked = register
        .header_values(HeaderName::Contact)
        .next()
        .and_then(parse_name_addr)
        .and_then(|na| find_param(na.params, "expires").and_then(parse_secs))
        .or_else(|| expires_header(register));
    let secs = from_contact.or_else(|| expires_header(ok)).or(asked).unwrap_or(3600);
    Duration::from_secs(u64::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::from(s.replace('\n', "\r\n"))).unwrap()
    }

    const REG: &str = "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\nFrom: <sip:100@pbx>;tag=1\nTo: <sip:100@pbx>\nCall-ID: r\nCSeq: 1 REGISTER\nContact: <sip:100@192.0.2.1:5062>\nExpires: 600\nContent-Length: 0\n\n";

    #[test]
    fn expiry_from_the_matching_contact_then_headers() {
        let ok = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\nFrom: <sip:100@pbx>;tag=1\nTo: <sip:100@pbx>;tag=2\nCall-ID: r\nCSeq: 1 REGISTER\nContact: <sip:100@198.51.100.7>;expires=50, <sip:100@192.0.2.1:5062>;expires=120\nContent-Length: 0\n\n";
        assert_eq!(granted_expiry(&msg(REG), &msg(ok)), Duration::from_secs(120));
        let ok2 = ok.replace(
            "Contact: <sip:100@198.51.100.7>;expires=50, <sip:100@192.0.2.1:5062>;expires=120\n",
            "Expires: 90\n",
        );
        assert_eq!(granted_expiry(&msg(REG), &msg(&ok2)), Duration::from_secs(90));
        let ok3 = ok.replace("Contact: <sip:100@198.51.100.7>;expires=50, <sip:100@192.0.2.1:5062>;expires=120\n", "");
        assert_eq!(granted_expiry(&msg(REG), &msg(&ok3)), Duration::from_secs(600), "what was asked");
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_expire_and_the_cap_holds() {
        let t = FlowTable::new(1);
        let flow = Target { transport: Transport::Udp, addr: "192.0.2.1:5062".parse().unwrap(), conn: None };
        t.bind(
            Bytes::from_static(b"a"),
            flow,
            Bytes::from_static(b"sip:100@pbx"),
            Bytes::new(),
            Duration::from_secs(60),
        );
        assert!(t.refuses_new(b"b"));
        assert!(!t.refuses_new(b"a"), "a refresh is always taken");
        assert!(t.get(b"a").is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(t.get(b"a").is_none());
        assert_eq!(t.reap(), 1);
        assert!(t.is_empty());
        t.bind(Bytes::from_static(b"a"), flow, Bytes::new(), Bytes::new(), Duration::from_secs(60));
        t.bind(Bytes::from_static(b"a"), flow, Bytes::new(), Bytes::new(), Duration::ZERO);
        assert!(t.is_empty(), "expires=0 de-registers");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnected_phone_is_found_by_its_new_connection() {
        let t = FlowTable::new(100);
        let conn = |id: u64, port: u16| Target {
            transport: Transport::Tls,
            addr: std::net::SocketAddr::from(([192, 0, 2, 1], port)),
            conn: Some(id),
        };
        let hour = Duration::from_secs(3600);
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        // The desk phone and a softphone share extension 100; another extension, and a UDP phone, are not candidates.
        t.bind(b("desk"), conn(1, 40001), b("sip:100@pbx"), b("sip:100@192.0.2.1:40001;transport=tls"), hour);
        tokio::time::advance(Duration::from_secs(1)).await;
        let soft = Target { addr: "198.51.100.9:50000".parse().unwrap(), ..conn(2, 0) };
        t.bind(b("soft"), soft, b("sip:100@pbx"), b("sip:soft@x.invalid;transport=tls"), hour);
        t.bind(b("other"), conn(3, 40003), b("sip:200@pbx"), Bytes::new(), hour);
        let udp = Target { transport: Transport::Udp, addr: "192.0.2.1:5060".parse().unwrap(), conn: None };
        t.bind(b("udp"), udp, b("sip:100@pbx"), b("sip:100@192.0.2.1"), hour);
        let all = |_: ConnId| true;
        let near: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());

        // The Contact the call was made with wins, then the old host, then the newest.
        let found = t.relearned(b"sip:soft@x.invalid;transport=tls", b"sip:100@pbx", near, all);
        assert_eq!(found, Some(soft));
        assert_eq!(t.relearned(b"sip:100@10.0.0.1", b"<sip:100@pbx>", near, all), None, "a To value is not a URI");
        assert_eq!(t.relearned(b"sip:100@10.0.0.1", b"sip:100@pbx", near, all), Some(conn(1, 40001)));
        assert_eq!(t.relearned(b"sip:100@10.0.0.1", b"sip:100@pbx", None, all), Some(soft), "the newest");
        // A connection that is gone is no candidate; nor is anything for an unknown user.
        assert_eq!(t.relearned(b"sip:100@10.0.0.1", b"sip:100@pbx", near, |c| c != 1), Some(soft));
        assert_eq!(t.relearned(b"sip:x", b"sip:300@pbx", near, all), None);
        // De-registered or expired: gone from the index too.
        t.unbind(b"soft");
        assert_eq!(t.relearned(b"sip:soft@x.invalid;transport=tls", b"sip:100@pbx", None, all), Some(conn(1, 40001)));
        tokio::time::advance(hour).await;
        t.reap();
        assert!(t.by_user.is_empty());
    }

    #[test]
    fn the_user_index_is_bounded_by_max_flows() {
        let t = FlowTable::new(3);
        let flow = Target { transport: Transport::Tcp, addr: "192.0.2.1:40000".parse().unwrap(), conn: Some(7) };
        for i in 0..50 {
            let aor = Bytes::from(format!("sip:user{i}@example.com"));
            t.bind(Bytes::from_static(b"one-source"), flow, aor, Bytes::new(), Duration::from_secs(60));
        }
        assert_eq!(t.len(), 1, "one source, one flow");
        assert!(t.by_user.len() <= 3, "{} users indexed", t.by_user.len());
    }
}

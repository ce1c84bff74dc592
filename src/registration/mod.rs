//! Registration flows (RFC 3327 Path, RFC 5626-style flow tokens): for every phone that registered through us,
//! the flow its REGISTER came on (transport, source address, TCP connection), under the token we put in our Path,
//! until the registration expires. The PBX reaches the phone by routing to that Path; the proxy then delivers to
//! the flow itself, which is what gets through NATs and reaches connection-oriented clients at all.
//!
//! This module keeps the table and reads expiries from REGISTER answers; it sends nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::cluster::event::{Event, FlowRecord, Journal};
use crate::sip::{find_param, parse_name_addr, HeaderName, Message};
use crate::transport::Target;

/// One registered flow.
#[derive(Debug, Clone)]
pub struct Binding {
    pub flow: Target,
    /// The address-of-record (the REGISTER's To URI).
    pub aor: Bytes,
    pub expires: Instant,
}

/// Flows by token. DashMap: REGISTER answers write and PBX requests read concurrently.
#[derive(Debug)]
pub struct FlowTable {
    map: DashMap<Bytes, Binding>,
    count: AtomicUsize,
    max: usize,
    /// Bindings and removals go to the cluster through it (disabled on a standalone node).
    journal: Journal,
}

impl FlowTable {
    pub fn new(max: usize) -> FlowTable {
        FlowTable::with_journal(max, Journal::default())
    }

    pub fn with_journal(max: usize, journal: Journal) -> FlowTable {
        FlowTable { map: DashMap::new(), count: AtomicUsize::new(0), max, journal }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a new flow (one not in the table) would exceed the cap.
    pub fn refuses_new(&self, token: &[u8]) -> bool {
        self.len() >= self.max && !self.map.contains_key(token)
    }

    /// Record or refresh a flow for `ttl`; a zero ttl removes it (de-registration).
    pub fn bind(&self, token: Bytes, flow: Target, aor: Bytes, ttl: Duration) {
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
        self.insert(token, Binding { flow, aor, expires: Instant::now() + ttl });
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
                self.insert(r.token.clone(), Binding { flow: r.flow.into(), aor: r.aor.clone(), expires });
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
        t.bind(Bytes::from_static(b"a"), flow, Bytes::from_static(b"sip:100@pbx"), Duration::from_secs(60));
        assert!(t.refuses_new(b"b"));
        assert!(!t.refuses_new(b"a"), "a refresh is always taken");
        assert!(t.get(b"a").is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(t.get(b"a").is_none());
        assert_eq!(t.reap(), 1);
        assert!(t.is_empty());
        t.bind(Bytes::from_static(b"a"), flow, Bytes::new(), Duration::from_secs(60));
        t.bind(Bytes::from_static(b"a"), flow, Bytes::new(), Duration::ZERO);
        assert!(t.is_empty(), "expires=0 de-registers");
    }
}

//! Answers sipfront gives itself: OPTIONS addressed to it (keep-alive pings, monitoring), Max-Forwards
//! exhausted, unsupported Proxy-Require, and 400 for malformed requests that can still be answered. Unanswerable
//! garbage is dropped and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::Proxy;
use crate::metrics as m;
use crate::sip::{HeaderName, Message, Method, ParseError, ResponseBuilder, SipUri};
use crate::transport::{Source, Verdict};

/// Option tags we support (none that a proxy has to understand yet).
const SUPPORTED: &[u8] = b"path, outbound";
/// Seconds a client told 503 should wait.
pub(crate) const RETRY_AFTER: &[u8] = b"5";

impl Proxy {
    /// A response we owe this new request ourselves, or `None` to route it.
    pub(crate) fn local_answer(&self, req: &Message, _src: Source) -> Option<(u16, &'static str)> {
        let method = req.method()?;
        let to_us = req.header(HeaderName::Route).is_none()
            && SipUri::parse(req.request_uri())
                .is_some_and(|u| u.user.is_none() && self.is_own(u.host_port.host, u.host_port.port));
        if method == Method::Options && (to_us || req.max_forwards() == Some(0)) {
            return Some((200, "OK"));
        }
        if req.max_forwards() == Some(0) {
            return Some((483, "Too Many Hops"));
        }
        if req.header(HeaderName::ProxyRequire).is_some() {
            return Some((420, "Bad Extension"));
        }
        None
    }

    /// Send our own response to a request, back the way it came.
    pub(crate) fn reply(&self, req: &Message, src: Source, code: u16, reason: &str) {
        let tag = self.local_tag();
        let mut b = ResponseBuilder::new(req, code, reason).source(src.remote);
        if code > 100 {
            b = b.to_tag(tag.as_bytes());
        }
        let unsupported: Vec<u8>;
        if code == 420 {
            unsupported = req.header_values(HeaderName::ProxyRequire).collect::<Vec<_>>().join(&b", "[..]);
            b = b.header("Unsupported", &unsupported);
        }
        if code == 503 {
            // Over capacity: tell the client when to come back instead of letting it hammer us (RFC 3261 §21.5.4).
            b = b.header("Retry-After", RETRY_AFTER);
        }
        if code == 200 && req.method() == Some(Method::Options) {
            b = b
                .header("Allow", crate::sip::ALLOW.as_bytes())
                .header("Supported", SUPPORTED)
                .header("Accept", b"application/sdp");
        }
        self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
        m::final_response(code, "local");
        self.transports.send(src.into(), b.build());
    }

    /// A message that did not parse or is too odd to pass on (`sip::sanity`): answered when it is a request we can
    /// answer (400, 416 or 505, `ParseError::status`), else dropped and counted.
    pub(crate) fn on_malformed(self: &Arc<Self>, data: Bytes, err: ParseError, src: Source) -> Verdict {
        match Message::parse_for_reply(data) {
            Some(req) if req.method() != Some(Method::Ack) => {
                self.stats.malformed_rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::MALFORMED_REJECTED, "reason" => err.reason()).increment(1);
                let code = err.status();
                tracing::debug!(from = %src.remote, reason = err.reason(), code, "malformed request, answering");
                let reason = match code {
                    416 => "Unsupported URI Scheme".to_owned(),
                    505 => "Version Not Supported".to_owned(),
                    _ => format!("Bad Request ({})", err.reason()),
                };
                let warning = format!("399 {} \"{}\"", self.settings.advertise_host(), err.reason());
                let tag = self.local_tag();
                let resp = ResponseBuilder::new(&req, code, &reason)
                    .source(src.remote)
                    .to_tag(tag.as_bytes())
                    .header("Warning", warning.as_bytes())
                    .build();
                m::final_response(code, "local");
                self.transports.send(src.into(), resp);
                Verdict::Accepted
            }
            _ => {
                self.stats.malformed_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::MALFORMED_DROPPED, "reason" => err.reason()).increment(1);
                tracing::debug!(from = %src.remote, reason = err.reason(), "unparseable message dropped");
                Verdict::Garbage
            }
        }
    }
}

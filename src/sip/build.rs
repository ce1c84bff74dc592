//! Builders: rewrite a request for forwarding, strip our Via from a response, and compose our own answers, ACKs
//! and CANCELs. Untouched header lines are copied byte for byte; one output buffer, sized once.

use bytes::{BufMut, Bytes, BytesMut};
use std::io::Write as _;

use super::header::HeaderName;
use super::message::{HeaderField, Message};
use super::values::{split_list, Via};

/// Value of our `Server` / `User-Agent` header.
/// Our Server and User-Agent header: the product only. The version is in `sipfront_build_info`, not on the wire
/// for every scanner to match against a list of known flaws.
pub const SERVER_NAME: &str = "sipfront";

pub(crate) fn put_content_length(out: &mut BytesMut, n: usize) {
    out.extend_from_slice(b"Content-Length: ");
    put_num(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

fn put_num(out: &mut BytesMut, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Offset of a sub-slice inside the message buffer.
fn offset_in(msg: &Message, sub: &[u8]) -> usize {
    sub.as_ptr() as usize - msg.as_bytes().as_ptr() as usize
}

/// Write a header field with its first `skip` list items removed; returns how many items it removed.
fn write_field_skipping(out: &mut BytesMut, msg: &Message, f: &HeaderField, skip: usize) -> usize {
    if skip == 0 {
        out.extend_from_slice(msg.field_line(f));
        out.extend_from_slice(b"\r\n");
        return 0;
    }
    let value = msg.slice(f.value);
    let mut removed = 0;
    for item in split_list(value, true) {
        if removed < skip {
            removed += 1;
            continue;
        }
        // The rest of the line from this item on is kept as written.
        let start = offset_in(msg, item);
        out.extend_from_slice(msg.field_name(f));
        out.extend_from_slice(b": ");
        out.extend_from_slice(&msg.as_bytes()[start..f.value.1 as usize]);
        out.extend_from_slice(b"\r\n");
        return removed;
    }
    removed
}

/// Whether a list header line holds at least one value.
fn has_value(msg: &Message, f: &HeaderField) -> bool {
    split_list(msg.slice(f.value), true).next().is_some()
}

/// Write a Via value with `received`/`rport` filled in from the packet's source (RFC 3261 §18.2.1, RFC 3581).
fn write_via_with_received(out: &mut BytesMut, via: &Via<'_>, src: std::net::SocketAddr) {
    let head_len = via.raw.len() - via.params.len();
    out.extend_from_slice(&via.raw[..head_len]);
    let wants_rport = via.rport().is_some();
    for seg in via.params.split(|c| *c == b';').filter(|s| !s.is_empty()) {
        let name = seg.split(|c| *c == b'=').next().unwrap_or(b"");
        let name = super::values::trim(name);
        if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        out.put_u8(b';');
        out.extend_from_slice(seg);
    }
    let host_differs = via.sent_by.ip() != Some(src.ip());
    if host_differs || wants_rport {
        let _ = write!((&mut *out).writer(), ";received={}", src.ip());
    }
    if wants_rport {
        let _ = write!((&mut *out).writer(), ";rport={}", src.port());
    }
}

/// What to change when forwarding a request (RFC 3261 §16.6).
#[derive(Debug, Default)]
pub struct ForwardEdit<'a> {
    /// Our Via value, pushed on top: `SIP/2.0/UDP host:port;branch=z9hG4bK...`.
    pub via: &'a [u8],
    /// Record-Route values to add above any existing ones (none, one, or two when the transport changes).
    pub record_route: &'a [&'a [u8]],
    /// A new Request-URI (strict-route handling); `None` keeps it.
    pub request_uri: Option<&'a [u8]>,
    /// How many Route values to remove from the top (our own).
    pub pop_routes: usize,
    /// Fill `received`/`rport` into the received top Via from this source.
    pub source: Option<std::net::SocketAddr>,
    /// The Max-Forwards value to write (already decremented).
    pub max_forwards: u32,
    /// Replace the method (used to turn a request into its CANCEL/ACK twin): (method, CSeq rewrite).
    pub method: Option<&'a str>,
    /// A Path value to add above any existing ones (REGISTER, RFC 3327).
    pub path: Option<&'a [u8]>,
}

impl Message {
    /// Rewrite this request for forwarding. One allocation: the output buffer.
    pub fn forward(&self, edit: &ForwardEdit<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(self.as_bytes().len() + edit.via.len() + 160);
        let method = match edit.method {
            Some(m) => m.as_bytes(),
            None => self.method_bytes(),
        };
        out.extend_from_slice(method);
        out.put_u8(b' ');
        out.extend_from_slice(edit.request_uri.unwrap_or(self.request_uri()));
        out.extend_from_slice(b" SIP/2.0\r\nVia: ");
        out.extend_from_slice(edit.via);
        out.extend_from_slice(b"\r\n");
        for rr in edit.record_route {
            out.extend_from_slice(b"Record-Route: ");
            out.extend_from_slice(rr);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(path) = edit.path {
            out.extend_from_slice(b"Path: ");
            out.extend_from_slice(path);
            out.extend_from_slice(b"\r\n");
        }
        let mut first_via = true;
        let mut routes_to_pop = edit.pop_routes;
        let mut wrote_mf = false;
        for f in self.fields() {
            match f.name {
                // The top Via is the first value of the first Via line that has one (`Via: ,` has none).
                HeaderName::Via if first_via && has_value(self, &f) => {
                    first_via = false;
                    match (edit.source, self.top_via()) {
                        (Some(src), Some(via)) => {
                            out.extend_from_slice(self.field_name(&f));
                            out.extend_from_slice(b": ");
                            write_via_with_received(&mut out, &via, src);
                            let rest_start = offset_in(self, via.raw) + via.raw.len();
                            out.extend_from_slice(&self.as_bytes()[rest_start..f.value.1 as usize]);
                            out.extend_from_slice(b"\r\n");
                        }
                        _ => {
                            out.extend_from_slice(self.field_line(&f));
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                HeaderName::Route if routes_to_pop > 0 => {
                    routes_to_pop -= write_field_skipping(&mut out, self, &f, routes_to_pop);
                }
                HeaderName::MaxForwards => {
                    if !wrote_mf {
                        out.extend_from_slice(b"Max-Forwards: ");
                        put_num(&mut out, u64::from(edit.max_forwards));
                        out.extend_from_slice(b"\r\n");
                        wrote_mf = true;
                    }
                }
                HeaderName::CSeq if edit.method.is_some() => {
                    out.extend_from_slice(b"CSeq: ");
                    put_num(&mut out, u64::from(self.cseq()));
                    out.put_u8(b' ');
                    out.extend_from_slice(method);
                    out.extend_from_slice(b"\r\n");
                }
                _ => {
                    out.extend_from_slice(self.field_line(&f));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if !wrote_mf {
            out.extend_from_slice(b"Max-Forwards: ");
            put_num(&mut out, u64::from(edit.max_forwards));
            out.extend_from_slice(b"\r\n");
        }
        if !self.has_content_length() {
            put_content_length(&mut out, self.body().len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body());
        out.freeze()
    }

    /// A response with our top Via removed, for relaying upstream (RFC 3261 §16.7 step 9).
    pub fn strip_top_via(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.as_bytes().len());
        out.extend_from_slice(self.start_line_bytes());
        out.extend_from_slice(b"\r\n");
        let mut done = false;
        for f in self.fields() {
            if f.name == HeaderName::Via && !done {
                // A Via line without a value is dropped and the next one is stripped instead.
                done = write_field_skipping(&mut out, self, &f, 1) == 1;
                continue;
            }
            out.extend_from_slice(self.field_line(&f));
            out.extend_from_slice(b"\r\n");
        }
        if !self.has_content_length() {
            put_content_length(&mut out, self.body().len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body());
        out.freeze()
    }

    /// The CANCEL or hop-by-hop ACK for a request we sent (RFC 3261 §9.1, §17.1.1.3): same Request-URI, Call-ID,
    /// From, CSeq number, our single Via and Route set; To from `to` (the final response's To for an ACK).
    pub fn twin_request(&self, method: &str, to: Option<&[u8]>) -> Bytes {
        let mut out = BytesMut::with_capacity(512);
        out.extend_from_slice(method.as_bytes());
        out.put_u8(b' ');
        out.extend_from_slice(self.request_uri());
        out.extend_from_slice(b" SIP/2.0\r\n");
        if let Some(v) = self.header_values(HeaderName::Via).next() {
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        for f in self.fields() {
            match f.name {
                HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                    out.extend_from_slice(self.field_line(&f));
                    out.extend_from_slice(b"\r\n");
                }
                HeaderName::To => {
                    match to {
                        Some(to) => {
                            out.extend_from_slice(b"To: ");
                            out.extend_from_slice(to);
                        }
                        None => out.extend_from_slice(self.field_line(&f)),
                    }
                    out.extend_from_slice(b"\r\n");
                }
                _ => {}
            }
        }
        out.extend_from_slice(b"CSeq: ");
        put_num(&mut out, u64::from(self.cseq()));
        out.put_u8(b' ');
        out.extend_from_slice(method.as_bytes());
        out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
        out.freeze()
    }
}

/// Composes sipfront's own responses to a request (RFC 3261 §8.2.6): Via (top one with received/rport), From,
/// To (with our tag when the request had none), Call-ID, CSeq copied, plus any extra headers.
pub struct ResponseBuilder<'a> {
    req: &'a Message,
    code: u16,
    reason: &'a str,
    source: Option<std::net::SocketAddr>,
    to_tag: Option<&'a [u8]>,
    extra: Vec<(&'a str, &'a [u8])>,
    /// Content-Type and body; `None`: `Content-Length: 0`.
    body: Option<(&'a str, &'a [u8])>,
}

impl<'a> ResponseBuilder<'a> {
    pub fn new(req: &'a Message, code: u16, reason: &'a str) -> Self {
        ResponseBuilder { req, code, reason, source: None, to_tag: None, extra: Vec::new(), body: None }
    }

    /// A body and its Content-Type (a UAS's SDP answer; the proxy's own answers have none).
    pub fn body(mut self, content_type: &'a str, body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// Fill received/rport of the top Via from where the request came from.
    pub fn source(mut self, src: std::net::SocketAddr) -> Self {
        self.source = Some(src);
        self
    }

    /// Add a To tag when the request's To has none (every final response and 101-199 need one).
    pub fn to_tag(mut self, tag: &'a [u8]) -> Self {
        self.to_tag = Some(tag);
        self
    }

    pub fn header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.extra.push((name, value));
        self
    }

    pub fn build(self) -> Bytes {
        let req = self.req;
        let mut out = BytesMut::with_capacity(512);
        out.extend_from_slice(b"SIP/2.0 ");
        put_num(&mut out, u64::from(self.code));
        out.put_u8(b' ');
        // A reason phrase must not contain CR/LF; ours are static, but keep the guarantee local.
        out.extend(self.reason.bytes().filter(|c| *c != b'\r' && *c != b'\n'));
        out.extend_from_slice(b"\r\n");
        let mut first_via = true;
        for f in req.fields() {
            match f.name {
                HeaderName::Via if first_via && has_value(req, &f) => {
                    first_via = false;
                    match (self.source, req.top_via()) {
                        (Some(src), Some(via)) => {
                            out.extend_from_slice(b"Via: ");
                            write_via_with_received(&mut out, &via, src);
                            let rest_start = offset_in(req, via.raw) + via.raw.len();
                            out.extend_from_slice(&req.as_bytes()[rest_start..f.value.1 as usize]);
                        }
                        _ => out.extend_from_slice(req.field_line(&f)),
                    }
                    out.extend_from_slice(b"\r\n");
                }
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    out.extend_from_slice(req.field_line(&f));
                    out.extend_from_slice(b"\r\n");
                }
                HeaderName::To => {
                    out.extend_from_slice(req.field_line(&f));
                    if let (Some(tag), None) = (self.to_tag, req.to_tag()) {
                        out.extend_from_slice(b";tag=");
                        out.extend_from_slice(tag);
                    }
                    out.extend_from_slice(b"\r\n");
                }
                _ => {}
            }
        }
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(SERVER_NAME.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.extra {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(value.iter().filter(|c| **c != b'\r' && **c != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
        match self.body {
            Some((content_type, body)) => {
                out.extend_from_slice(b"Content-Type: ");
                out.extend(content_type.bytes().filter(|c| *c != b'\r' && *c != b'\n'));
                out.extend_from_slice(b"\r\nContent-Length: ");
                put_num(&mut out, body.len() as u64);
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(body);
            }
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
        out.freeze()
    }
}

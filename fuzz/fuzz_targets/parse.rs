//! Fuzz the lazy SIP parser and the builders that run on what it accepts.
//!
//! For any input: `Message::parse` must not panic. When it accepts the input:
//! - every reader routing uses must not panic;
//! - parse → `write_to` → parse gives the same message (start line, header names and values in order, body), and
//!   `write_to` is a fixed point from then on;
//! - a request's `forward()`, `ResponseBuilder` answer and CANCEL twin must parse;
//! - `strip_top_via()` must parse whenever the second Via value is a valid Via, and removes exactly one Via value.
//!
//! Rejected input goes through `parse_for_reply` and `ResponseBuilder`, as the 400 path does.
#![no_main]

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sipfront::sip::{find_param, parse_name_addr, ForwardEdit, HeaderName, Message, ResponseBuilder, SipUri, Via};

const OUR_VIA: &[u8] = b"SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKfuzz";
const OUR_RR: &[u8] = b"<sip:192.0.2.53:5060;lr>";

fn source(data: &[u8]) -> SocketAddr {
    // Vary between a v4 and a v6 source, and whether it matches a typical sent-by.
    match data.len() % 3 {
        0 => "198.51.100.20:40123".parse().unwrap(),
        1 => "10.0.0.5:5060".parse().unwrap(),
        _ => "[2001:db8::7]:5062".parse().unwrap(),
    }
}

/// Touch every reader the routing layer uses.
fn read_everything(m: &Message) {
    let _ = (m.method(), m.method_bytes(), m.request_uri(), m.status(), m.reason(), m.start_line_bytes());
    let _ = (m.call_id(), m.cseq(), m.cseq_method(), m.from_tag(), m.to_tag(), m.max_forwards(), m.body());
    for v in m.header_values(HeaderName::Via) {
        if let Some(via) = Via::parse(v) {
            let _ = (via.branch(), via.received(), via.rport(), via.is_rfc3261(), via.sent_by.ip());
        }
    }
    for name in [HeaderName::Route, HeaderName::RecordRoute, HeaderName::Contact, HeaderName::Path] {
        for v in m.header_values(name) {
            if let Some(na) = parse_name_addr(v) {
                let _ = find_param(na.params, "expires");
                if let Some(u) = SipUri::parse(na.uri) {
                    let _ = (u.is_loose(), u.transport(), u.host_port.ip());
                }
            }
        }
    }
    if let Some(u) = SipUri::parse(m.request_uri()) {
        let _ = u.is_loose();
    }
}

type Fields<'a> = Vec<(HeaderName, &'a [u8], &'a [u8])>;

fn fields(m: &Message) -> Fields<'_> {
    m.fields().map(|f| (f.name, m.field_name(&f), m.slice(f.value))).collect()
}

fn assert_same(a: &Message, b: &Message) {
    assert_eq!(a.start_line_bytes(), b.start_line_bytes());
    assert_eq!(
        (a.method(), a.method_bytes(), a.request_uri(), a.status(), a.reason()),
        (b.method(), b.method_bytes(), b.request_uri(), b.status(), b.reason())
    );
    let fa = fields(a);
    let mut fb = fields(b);
    if !a.has_content_length() {
        let (name, _, value) = fb.pop().expect("write_to adds Content-Length");
        assert_eq!(name, HeaderName::ContentLength);
        assert_eq!(value, a.body().len().to_string().as_bytes());
    }
    assert_eq!(fa, fb);
    assert_eq!(a.body(), b.body());
    assert!(b.has_content_length());
    assert_eq!(
        (a.call_id(), a.cseq(), a.cseq_method(), a.from_tag(), a.to_tag(), a.max_forwards()),
        (b.call_id(), b.cseq(), b.cseq_method(), b.from_tag(), b.to_tag(), b.max_forwards())
    );
    assert_eq!(a.top_via().map(|v| v.raw), b.top_via().map(|v| v.raw));
}

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let src = source(data);
    let msg = match Message::parse(buf.clone()) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.reason();
            if let Some(req) = Message::parse_for_reply(buf) {
                read_everything(&req);
                let _ = ResponseBuilder::new(&req, 400, e.reason()).source(src).to_tag(b"t").build();
            }
            return;
        }
    };
    read_everything(&msg);

    // Round trip.
    let mut out = BytesMut::new();
    msg.write_to(&mut out);
    let again = Message::parse(out.clone().freeze()).expect("write_to output must parse");
    assert_same(&msg, &again);
    let mut out2 = BytesMut::new();
    again.write_to(&mut out2);
    assert_eq!(out, out2, "write_to must be a fixed point");

    if msg.is_request() {
        let rr = [OUR_RR];
        let edit = ForwardEdit {
            via: OUR_VIA,
            record_route: &rr,
            request_uri: None,
            pop_routes: data.len() % 3,
            source: Some(src),
            max_forwards: 69,
            method: None,
            path: None,
        };
        let fwd = Message::parse(msg.forward(&edit)).expect("forward output must parse");
        assert_eq!(fwd.top_via().map(|v| v.raw), Some(OUR_VIA));
        // The client's Via keeps its place in the list, unless quotes or angle brackets in its parameters (never
        // valid there) change how the list splits once received/rport are rewritten.
        let top_raw = msg.top_via().unwrap().raw;
        if !top_raw.iter().any(|c| matches!(c, b'"' | b'<' | b'>')) {
            assert_eq!(fwd.header_values(HeaderName::Via).count(), msg.header_values(HeaderName::Via).count() + 1);
        }
        assert_eq!(fwd.call_id(), msg.call_id());
        assert_eq!((fwd.cseq(), fwd.cseq_method()), (msg.cseq(), msg.cseq_method()));
        assert_eq!(fwd.max_forwards(), Some(69));
        assert_eq!(fwd.body(), msg.body());
        read_everything(&fwd);

        let resp = ResponseBuilder::new(&msg, 200, "OK").source(src).to_tag(b"t").build();
        let resp = Message::parse(resp).expect("ResponseBuilder output must parse");
        assert_eq!(resp.call_id(), msg.call_id());
        // Our tag is visible when the request's To is a name-addr without any `tag` parameter (and no stray quote
        // in its parameters that would swallow ours).
        let to = msg.header(HeaderName::To).and_then(parse_name_addr);
        if to.is_some_and(|na| find_param(na.params, "tag").is_none() && !na.params.contains(&b'"')) {
            assert_eq!(resp.to_tag(), Some(&b"t"[..]));
        }

        let cancel = Message::parse(msg.twin_request("CANCEL", None)).expect("twin_request output must parse");
        assert_eq!(cancel.cseq(), msg.cseq());
    }

    let second_via_ok = msg.header_values(HeaderName::Via).nth(1).and_then(Via::parse).is_some();
    match Message::parse(msg.strip_top_via()) {
        Ok(s) => {
            assert_eq!(s.header_values(HeaderName::Via).count() + 1, msg.header_values(HeaderName::Via).count());
            assert_eq!(s.body(), msg.body());
        }
        Err(e) => assert!(!second_via_ok, "strip_top_via output must parse: {e}"),
    }
});

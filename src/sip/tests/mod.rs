//! Parser unit tests: every header form the proxy core issue lists, and every rejection; the builders; and a
//! deterministic round-trip property over a seed corpus and a few thousand pseudo-random mutations of it.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// Test messages are written with `\n`; the wire uses CRLF.
fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

fn parse(s: &str) -> Message {
    match Message::parse(Bytes::from(crlf(s))) {
        Ok(m) => m,
        Err(e) => panic!("did not parse ({e}):\n{s}"),
    }
}

fn parse_err(s: &str) -> ParseError {
    match Message::parse(Bytes::from(crlf(s))) {
        Ok(_) => panic!("parsed but should not:\n{s}"),
        Err(e) => e,
    }
}

fn parse_bytes(b: &[u8]) -> Message {
    Message::parse(Bytes::copy_from_slice(b)).unwrap_or_else(|e| panic!("did not parse ({e}): {:?}", lossy(b)))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn values(m: &Message, name: HeaderName) -> Vec<String> {
    m.header_values(name).map(lossy).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A minimal valid INVITE; tests derive variants with `str::replace`.
const BASE: &str = "INVITE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;rport
Max-Forwards: 70
From: Alice <sip:alice@example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.net>
Call-ID: 3848276298220188511@10.0.0.5
CSeq: 2 INVITE
Content-Length: 0

";

const BASE_VIA: &str = "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;rport\n";
const BASE_CALL_ID: &str = "Call-ID: 3848276298220188511@10.0.0.5\n";

fn base_with(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "BASE has no {old:?}");
    BASE.replacen(old, new, 1)
}

const RESPONSE: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKproxy1
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;received=192.0.2.9;rport=5060
From: Alice <sip:alice@example.com>;tag=9fxced76sl
To: Bob <sip:bob@example.net>;tag=8321234356
Call-ID: 3848276298220188511@10.0.0.5
CSeq: 2 INVITE
Content-Length: 0

";

const OUR_VIA: &[u8] = b"SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKours";
const OUR_RR: &[u8] = b"<sip:192.0.2.53:5060;lr>";

/// An INVITE from a phone behind NAT, our own Route on top (sharing a line with the next one).
const ROUTED: &str = "INVITE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;rport
Route: <sip:192.0.2.53;lr>, <sip:edge.example.net;lr>
Route: <sip:last.example.net;lr>
Record-Route: <sip:edge.example.net;lr>
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=a1
To: <sip:bob@example.net>
Call-ID: fwd-test@10.0.0.5
CSeq: 10 INVITE
Subject :  keep   me   exactly\t
X-Custom: a,b;c=\"d,e\"
Content-Type: application/sdp
Content-Length: 5

hello";

fn fwd_edit<'a>(rr: &'a [&'a [u8]], pop: usize, source: Option<SocketAddr>) -> ForwardEdit<'a> {
    ForwardEdit { via: OUR_VIA, record_route: rr, pop_routes: pop, source, max_forwards: 69, ..Default::default() }
}

mod build;
mod parse;
mod reject;
mod round_trip;
mod sanity;

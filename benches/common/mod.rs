//! Messages and helpers shared by the parse / proxy_rewrite benches and `tests/alloc_parse.rs` (which includes this
//! file with `#[path]`), so the numbers they report are about the same bytes.
#![allow(dead_code)]

use std::net::SocketAddr;

use sipfront::sip::{ForwardEdit, HeaderName, Message};

/// A realistic ~1.1 kB INVITE as it reaches the proxy: three Vias (two sharing a compact `v:` line), our own Route
/// plus one more on one line, a Record-Route, compact and long header forms, and an SDP body.
pub const INVITE_1K: &[u8] = concat!(
    "INVITE sip:+4930123456@pbx.example.net;user=phone SIP/2.0\r\n",
    "Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;rport\r\n",
    "v: SIP/2.0/TCP 198.51.100.7:5061;branch=z9hG4bK776asdhds;received=198.51.100.7,",
    "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bKnashds8;received=192.0.2.1;rport=5060\r\n",
    "Route: <sip:sipfront.example.net;lr>, <sip:edge.example.net;lr>\r\n",
    "Record-Route: <sip:edge.example.net;lr>\r\n",
    "Max-Forwards: 69\r\n",
    "f: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774\r\n",
    "To: <sip:+4930123456@pbx.example.net;user=phone>\r\n",
    "i: a84b4c76e66710@pc33.example.com\r\n",
    "CSeq: 314159 INVITE\r\n",
    "m: <sip:alice@203.0.113.10:5060;transport=udp>;expires=3600\r\n",
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY\r\n",
    "k: replaces, timer, 100rel\r\n",
    "Session-Expires: 1800;refresher=uac\r\n",
    "User-Agent: ExamplePhone/5.2.1\r\n",
    "c: application/sdp\r\n",
    "Content-Length: 242\r\n",
    "\r\n",
    "v=0\r\n",
    "o=alice 2890844526 2890844526 IN IP4 203.0.113.10\r\n",
    "s=-\r\n",
    "c=IN IP4 203.0.113.10\r\n",
    "t=0 0\r\n",
    "m=audio 49170 RTP/AVP 0 8 101\r\n",
    "a=rtpmap:0 PCMU/8000\r\n",
    "a=rtpmap:8 PCMA/8000\r\n",
    "a=rtpmap:101 telephone-event/8000\r\n",
    "a=fmtp:101 0-15\r\n",
    "a=ptime:20\r\n",
    "a=sendrecv\r\n",
)
.as_bytes();

/// The 200 OK a backend sends for that INVITE once forwarded: our Via on top, then the client's three.
pub const OK_200: &[u8] = concat!(
    "SIP/2.0 200 OK\r\n",
    "Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bK1a2b3c4d.00000000000000a1\r\n",
    "Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;received=203.0.113.10;rport=5060\r\n",
    "v: SIP/2.0/TCP 198.51.100.7:5061;branch=z9hG4bK776asdhds;received=198.51.100.7,",
    "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bKnashds8;received=192.0.2.1;rport=5060\r\n",
    "Record-Route: <sip:192.0.2.53:5060;lr>\r\n",
    "Record-Route: <sip:edge.example.net;lr>\r\n",
    "From: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774\r\n",
    "To: <sip:+4930123456@pbx.example.net;user=phone>;tag=as6f1c2b7e\r\n",
    "Call-ID: a84b4c76e66710@pc33.example.com\r\n",
    "CSeq: 314159 INVITE\r\n",
    "Contact: <sip:+4930123456@10.20.0.11:5060>\r\n",
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY\r\n",
    "Supported: replaces, timer\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 202\r\n",
    "\r\n",
    "v=0\r\n",
    "o=pbx 1093 1093 IN IP4 10.20.0.11\r\n",
    "s=pbx\r\n",
    "c=IN IP4 10.20.0.11\r\n",
    "t=0 0\r\n",
    "m=audio 18230 RTP/AVP 8 101\r\n",
    "a=rtpmap:8 PCMA/8000\r\n",
    "a=rtpmap:101 telephone-event/8000\r\n",
    "a=fmtp:101 0-16\r\n",
    "a=ptime:20\r\n",
    "a=sendrecv\r\n",
)
.as_bytes();

/// Our Via for the forwarded INVITE.
pub const OUR_VIA: &[u8] = b"SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bK1a2b3c4d.00000000000000a1";
/// Our Record-Route.
pub const OUR_RR: &[u8] = b"<sip:192.0.2.53:5060;lr>";

/// The edit the proxy applies to `INVITE_1K`: our Via, one Record-Route, pop our own Route, received/rport from the
/// packet source, Max-Forwards decremented.
pub fn forward_edit<'a>(rr: &'a [&'a [u8]], source: SocketAddr) -> ForwardEdit<'a> {
    ForwardEdit {
        via: OUR_VIA,
        record_route: rr,
        request_uri: None,
        pop_routes: 1,
        source: Some(source),
        max_forwards: 68,
        method: None,
        path: None,
    }
}

pub fn client_addr() -> SocketAddr {
    "203.0.113.10:40312".parse().unwrap()
}

/// Read every header the routing layer needs and fold them into a number, so nothing is optimised away. Returns
/// `None` if any of them is missing (the benches assert it is not).
pub fn read_routing(msg: &Message) -> Option<u64> {
    let via = msg.top_via()?;
    let branch = via.branch()?;
    let mut acc = branch.len() as u64 + via.sent_by_raw.len() as u64 + u64::from(via.sent_by.port.unwrap_or(0));
    acc += msg.call_id().len() as u64;
    acc += u64::from(msg.cseq()) + msg.cseq_method() as u64;
    acc += msg.from_tag()?.len() as u64;
    acc += msg.to_tag().map_or(0, |t| t.len() as u64);
    acc += u64::from(msg.max_forwards().unwrap_or(70));
    for r in msg.header_values(HeaderName::Route) {
        acc += r.len() as u64;
    }
    acc += msg.body().len() as u64;
    Some(acc)
}

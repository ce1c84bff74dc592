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

// ---------------------------------------------------------------------------------------------------------------
// Start line and the headers routing needs
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn request_start_line_and_routing_headers() {
    let m = parse(BASE);
    assert!(m.is_request());
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.method_bytes(), b"INVITE");
    assert_eq!(m.request_uri(), b"sip:bob@example.net");
    assert_eq!(m.status(), None);
    assert_eq!(m.start_line_bytes(), b"INVITE sip:bob@example.net SIP/2.0");
    let via = m.top_via().unwrap();
    assert_eq!(via.transport, ViaTransport::Udp);
    assert_eq!(via.sent_by.host, b"10.0.0.5");
    assert_eq!(via.sent_by.port, Some(5060));
    assert_eq!(via.sent_by_raw, b"10.0.0.5:5060");
    assert_eq!(via.branch(), Some(&b"z9hG4bK74bf9"[..]));
    assert!(via.is_rfc3261());
    assert_eq!(via.rport(), Some(None));
    assert_eq!(via.received(), None);
    assert_eq!(m.call_id(), b"3848276298220188511@10.0.0.5");
    assert_eq!(m.cseq(), 2);
    assert_eq!(m.cseq_method(), Method::Invite);
    assert_eq!(m.from_tag(), Some(&b"9fxced76sl"[..]));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.max_forwards(), Some(70));
    assert!(m.has_content_length());
    assert_eq!(m.body(), b"");
    assert_eq!(m.field_count(), 7);
}

#[test]
fn response_start_line() {
    let m = parse(RESPONSE);
    assert!(!m.is_request());
    assert_eq!(m.status(), Some(200));
    assert_eq!(m.reason(), b"OK");
    assert_eq!(m.method(), None);
    assert_eq!(m.method_bytes(), b"INVITE", "a response's method is its CSeq method");
    assert_eq!(m.request_uri(), b"");
    assert_eq!(m.to_tag(), Some(&b"8321234356"[..]));
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKproxy1"[..]));
    // A multi-word reason phrase, and none at all.
    let m = parse(&RESPONSE.replace("200 OK", "486 Busy Here, try later"));
    assert_eq!(m.status(), Some(486));
    assert_eq!(m.reason(), b"Busy Here, try later");
    let m = parse(&RESPONSE.replace("200 OK", "180"));
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.reason(), b"");
}

#[test]
fn unknown_method_must_match_cseq_exactly() {
    let m = parse(&BASE.replace("INVITE", "FOOBAR"));
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.method_bytes(), b"FOOBAR");
    assert_eq!(m.cseq_method(), Method::Other);
    assert_eq!(
        parse_err(&BASE.replacen("INVITE", "FOOBAR", 1).replace("2 INVITE", "2 BARFOO")),
        ParseError::CSeqMethodMismatch
    );
}

#[test]
fn via_received_rport_and_sent_by() {
    let m = parse(&base_with(
        BASE_VIA,
        "Via: SIP/2.0/TCP [2001:db8::9]:5070;received=2001:db8::1;rport=40000;branch=z9hG4bKip6\n",
    ));
    let via = m.top_via().unwrap();
    assert_eq!(via.transport, ViaTransport::Tcp);
    assert_eq!(via.sent_by.host, b"2001:db8::9");
    assert_eq!(via.sent_by.port, Some(5070));
    assert_eq!(via.sent_by_raw, b"[2001:db8::9]:5070");
    assert_eq!(via.received(), Some(&b"2001:db8::1"[..]));
    assert_eq!(via.rport(), Some(Some(40000)));
    assert_eq!(via.branch(), Some(&b"z9hG4bKip6"[..]));
    // No port, no rport, an RFC 2543 branch.
    let m = parse(&base_with(BASE_VIA, "Via: SIP/2.0/UDP pc33.example.com;branch=1234\n"));
    let via = m.top_via().unwrap();
    assert_eq!(via.sent_by.host, b"pc33.example.com");
    assert_eq!(via.sent_by.port, None);
    assert_eq!(via.rport(), None);
    assert!(!via.is_rfc3261());
}

#[test]
fn route_record_route_and_contact_values() {
    let m = parse(&base_with(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\n\
         Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\n\
         Record-Route: <sip:rr1.example.net;lr>\n\
         Route: <sip:p3.example.net;lr>\n\
         Record-Route: <sip:rr2.example.net;lr>,<sip:rr3.example.net;lr>\n\
         Contact: \"Alice, home\" <sip:alice@10.0.0.5>;expires=60, <sip:alice@10.0.0.6>\n\
         m: sip:alice@10.0.0.7;q=0.5\n",
    ));
    assert_eq!(
        values(&m, HeaderName::Route),
        ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>", "<sip:p3.example.net;lr>"]
    );
    assert_eq!(
        values(&m, HeaderName::RecordRoute),
        ["<sip:rr1.example.net;lr>", "<sip:rr2.example.net;lr>", "<sip:rr3.example.net;lr>"]
    );
    assert_eq!(
        values(&m, HeaderName::Contact),
        ["\"Alice, home\" <sip:alice@10.0.0.5>;expires=60", "<sip:alice@10.0.0.6>", "sip:alice@10.0.0.7;q=0.5"]
    );
    // `header` gives the first line's whole value.
    assert_eq!(m.header(HeaderName::Route), Some(&b"<sip:p1.example.net;lr>, <sip:p2.example.net;lr>"[..]));
    let na = parse_name_addr(m.header_values(HeaderName::Route).next().unwrap()).unwrap();
    let uri = SipUri::parse(na.uri).unwrap();
    assert_eq!(uri.host_port.host, b"p1.example.net");
    assert!(uri.is_loose());
    // A wildcard Contact is one value.
    let m = parse(&base_with("Max-Forwards: 70\n", "Max-Forwards: 70\nContact: *\n"));
    assert_eq!(values(&m, HeaderName::Contact), ["*"]);
}

#[test]
fn content_length_and_body() {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\n";
    let s = base_with("Content-Length: 0\n", &format!("Content-Length: {}\n", body.len()));
    let mut raw = crlf(&s);
    raw.extend_from_slice(body.as_bytes());
    let m = parse_bytes(&raw);
    assert!(m.has_content_length());
    assert_eq!(m.body(), body.as_bytes());
    // Bytes past Content-Length are ignored (RFC 3261 §18.3).
    raw.extend_from_slice(b"garbage past the body");
    let m = parse_bytes(&raw);
    assert_eq!(m.body(), body.as_bytes());
    // Compact `l`, with surrounding whitespace.
    let m = parse(&base_with("Content-Length: 0\n", "l:   0  \n"));
    assert!(m.has_content_length());
    assert_eq!(m.body(), b"");
    // The same length twice is tolerated.
    let m = parse(&base_with("Content-Length: 0\n", "Content-Length: 0\nl: 00\n"));
    assert_eq!(m.body(), b"");
}

#[test]
fn missing_content_length_on_udp_means_rest_of_datagram() {
    let s = BASE.replace("Content-Length: 0\n", "");
    let mut raw = crlf(&s);
    raw.extend_from_slice(b"v=0\r\ns=-\r\n");
    let m = parse_bytes(&raw);
    assert!(!m.has_content_length());
    assert_eq!(m.body(), b"v=0\r\ns=-\r\n");
    let m = parse(&s);
    assert!(!m.has_content_length());
    assert_eq!(m.body(), b"");
}

#[test]
fn content_length_larger_than_datagram_is_rejected() {
    let mut raw = crlf(&base_with("Content-Length: 0\n", "Content-Length: 11\n"));
    raw.extend_from_slice(b"0123456789");
    assert_eq!(Message::parse(Bytes::from(raw.clone())).unwrap_err(), ParseError::BodyTruncated);
    raw.push(b'X');
    assert_eq!(parse_bytes(&raw).body(), b"0123456789X");
}

// ---------------------------------------------------------------------------------------------------------------
// Header forms
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn compact_forms() {
    let m = parse(
        "INVITE sip:bob@example.net SIP/2.0
v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKc0mp;rport
f: <sip:alice@example.com>;tag=ftag
t: <sip:bob@example.net>;tag=ttag
i: compact-call-id@10.0.0.5
CSeq: 7 INVITE
m: <sip:alice@10.0.0.5>
c: application/sdp
k: 100rel, timer
s: a subject
e: gzip
o: presence
r: <sip:carol@example.net>
u: dialog
x: 1800
b: <sip:dave@example.net>
a: *;+sip.instance
j: *;audio
d: proxy
y: identity-value
l: 5

v=0
",
    );
    let via = m.top_via().unwrap();
    assert_eq!(via.branch(), Some(&b"z9hG4bKc0mp"[..]));
    assert_eq!(m.from_tag(), Some(&b"ftag"[..]));
    assert_eq!(m.to_tag(), Some(&b"ttag"[..]));
    assert_eq!(m.call_id(), b"compact-call-id@10.0.0.5");
    assert_eq!(values(&m, HeaderName::Contact), ["<sip:alice@10.0.0.5>"]);
    assert_eq!(m.header(HeaderName::ContentType), Some(&b"application/sdp"[..]));
    assert_eq!(values(&m, HeaderName::Supported), ["100rel", "timer"]);
    assert_eq!(m.body(), b"v=0\r\n");
    assert_eq!(m.max_forwards(), None);
    let names: Vec<(String, HeaderName)> = m.fields().map(|f| (lossy(m.field_name(&f)), f.name)).collect();
    let expect = |n: &str| names.iter().find(|(raw, _)| raw == n).unwrap().1;
    assert_eq!(expect("v"), HeaderName::Via);
    assert_eq!(expect("f"), HeaderName::From);
    assert_eq!(expect("t"), HeaderName::To);
    assert_eq!(expect("i"), HeaderName::CallId);
    assert_eq!(expect("m"), HeaderName::Contact);
    assert_eq!(expect("l"), HeaderName::ContentLength);
    assert_eq!(expect("c"), HeaderName::ContentType);
    assert_eq!(expect("k"), HeaderName::Supported);
    // Compact forms routing never reads stay `Other` and are kept as written.
    for n in ["s", "e", "o", "r", "u", "x", "b", "a", "j", "d", "y"] {
        assert_eq!(expect(n), HeaderName::Other, "{n}");
    }
    let subject = m.fields().find(|f| m.field_name(f) == b"s").unwrap();
    assert_eq!(m.field_line(&subject), b"s: a subject");
    assert_eq!(m.slice(subject.value), b"a subject");
    // Upper-case compact names too.
    let m = parse(&BASE.replace("Via:", "V:").replace("Call-ID:", "I:").replace("From:", "F:").replace("To:", "T:"));
    assert_eq!(m.call_id(), b"3848276298220188511@10.0.0.5");
    assert_eq!(m.from_tag(), Some(&b"9fxced76sl"[..]));
}

#[test]
fn several_values_per_line_and_repeated_vias() {
    let m = parse(&base_with(
        BASE_VIA,
        "v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKtop;rport , SIP/2.0/TCP proxy1.example.net;branch=z9hG4bKp1\n\
         Via: SIP/2.0/UDP proxy2.example.net:5080;branch=z9hG4bKp2\n",
    ));
    let vias = values(&m, HeaderName::Via);
    assert_eq!(
        vias,
        [
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKtop;rport",
            "SIP/2.0/TCP proxy1.example.net;branch=z9hG4bKp1",
            "SIP/2.0/UDP proxy2.example.net:5080;branch=z9hG4bKp2"
        ]
    );
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKtop"[..]));
    let branches: Vec<_> = m.header_values(HeaderName::Via).map(|v| Via::parse(v).unwrap().branch().unwrap()).collect();
    assert_eq!(branches, [&b"z9hG4bKtop"[..], b"z9hG4bKp1", b"z9hG4bKp2"]);
}

#[test]
fn folded_lines() {
    let m = parse(
        "INVITE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060
 ;branch=z9hG4bKfold
\t;rport
Max-Forwards:
   70
From: Alice
 <sip:alice@example.com>;tag=foldtag
To: <sip:bob@example.net>
Call-ID:
 folded@10.0.0.5
CSeq: 2
 INVITE
Subject: I know you're there,
         pick up the phone
         and talk to me!
Content-Length: 0

",
    );
    let via = m.top_via().unwrap();
    assert_eq!(via.sent_by_raw, b"10.0.0.5:5060");
    assert_eq!(via.branch(), Some(&b"z9hG4bKfold"[..]));
    assert_eq!(via.rport(), Some(None));
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.from_tag(), Some(&b"foldtag"[..]));
    assert_eq!(m.call_id(), b"folded@10.0.0.5");
    assert_eq!(m.cseq(), 2);
    assert_eq!(m.cseq_method(), Method::Invite);
    let subject = m.fields().find(|f| m.field_name(f) == b"Subject").unwrap();
    assert_eq!(
        m.slice(subject.value),
        b"I know you're there,\r\n         pick up the phone\r\n         and talk to me!"
    );
    // The folded line is one field, copied whole.
    assert_eq!(m.field_count(), 8);
    assert!(m.field_line(&subject).ends_with(b"talk to me!"));
    assert!(m.field_line(&subject).starts_with(b"Subject: I know"));
}

#[test]
fn whitespace_only_continuation_does_not_change_the_value() {
    let m = parse(&base_with("Max-Forwards: 70\n", "Max-Forwards: 70\n   \n"));
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.header(HeaderName::MaxForwards), Some(&b"70"[..]));
}

#[test]
fn case_insensitive_names() {
    let m = parse(
        "INVITE sip:bob@example.net SIP/2.0
VIA: SIP/2.0/UDP 10.0.0.5:5060;BRANCH=z9hG4bKcase;RPORT
max-forwards: 12
FROM: <sip:alice@example.com>;TAG=upper
to: <sip:bob@example.net>
call-id: lower@x
cSeQ: 3 INVITE
CONTENT-LENGTH: 0

",
    );
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKcase"[..]));
    assert_eq!(m.top_via().unwrap().rport(), Some(None));
    assert_eq!(m.max_forwards(), Some(12));
    assert_eq!(m.from_tag(), Some(&b"upper"[..]));
    assert_eq!(m.call_id(), b"lower@x");
    assert_eq!(m.cseq(), 3);
    assert!(m.has_content_length());
    // Method names are case-sensitive: `invite` is an unknown method whose CSeq must say `invite` too.
    assert_eq!(parse_err(&BASE.replacen("INVITE", "invite", 1)), ParseError::CSeqMethodMismatch);
    assert_eq!(parse(&BASE.replace("INVITE", "invite")).method(), Some(Method::Other));
}

#[test]
fn whitespace_before_colon() {
    let m = parse(
        &BASE
            .replace("Via:", "Via :")
            .replace("Call-ID:", "Call-ID\t:")
            .replace("CSeq:", "CSeq   :")
            .replace("Max-Forwards:", "Max-Forwards :"),
    );
    assert_eq!(m.call_id(), b"3848276298220188511@10.0.0.5");
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK74bf9"[..]));
    assert_eq!(m.cseq(), 2);
    assert_eq!(m.max_forwards(), Some(70));
    let f = m.fields().find(|f| f.name == HeaderName::CallId).unwrap();
    assert_eq!(m.field_name(&f), b"Call-ID");
    assert_eq!(m.field_line(&f), b"Call-ID\t: 3848276298220188511@10.0.0.5");
}

#[test]
fn bare_lf_and_leading_keepalive_crlf() {
    let s = format!("\r\n\r\n{}", BASE);
    let m = Message::parse(Bytes::from(s.into_bytes())).unwrap();
    assert_eq!(m.start_line_bytes(), b"INVITE sip:bob@example.net SIP/2.0");
    assert_eq!(m.call_id(), b"3848276298220188511@10.0.0.5");
    assert_eq!(m.field_count(), 7);
}

#[test]
fn non_utf8_bytes_in_values() {
    let mut raw = crlf(&base_with(
        "To: Bob <sip:bob@example.net>\n",
        "To: \"Bj\u{1}rn\" <sip:bjorn@example.net>\nSubject: \u{2}\n",
    ));
    // Latin-1 "Björn" and raw 0xff/0xfe bytes where the placeholders are.
    let pos = raw.iter().position(|c| *c == 1).unwrap();
    raw.splice(pos..pos + 1, [0xf6]);
    let pos = raw.iter().position(|c| *c == 2).unwrap();
    raw.splice(pos..pos + 1, [0xff, 0xfe, b' ', 0x80]);
    let m = parse_bytes(&raw);
    let subject = m.fields().find(|f| m.field_name(f) == b"Subject").unwrap();
    assert_eq!(m.slice(subject.value), [0xff, 0xfe, b' ', 0x80]);
    let to = m.header(HeaderName::To).unwrap();
    assert_eq!(to, b"\"Bj\xf6rn\" <sip:bjorn@example.net>");
    assert_eq!(parse_name_addr(to).unwrap().uri, b"sip:bjorn@example.net");
    // Copied byte for byte when forwarded.
    let out = m.forward(&ForwardEdit {
        via: b"SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKx",
        max_forwards: 69,
        ..Default::default()
    });
    let fwd = parse_bytes(&out);
    assert_eq!(fwd.header(HeaderName::To).unwrap(), to);
    assert!(out.windows(7).any(|w| w == b"Subject"));
    assert!(out.windows(4).any(|w| w == [0xff, 0xfe, b' ', 0x80]));
}

#[test]
fn more_than_max_headers_spill() {
    let extra: String = (0..MAX_HEADERS + 5).map(|i| format!("X-Filler-{i}: {i}\n")).collect();
    let m = parse(&base_with("Content-Length: 0\n", &format!("{extra}Content-Length: 0\n")));
    assert_eq!(m.field_count(), 7 + MAX_HEADERS + 5);
    let last = m.field(m.field_count() - 1);
    assert_eq!(last.name, HeaderName::ContentLength);
    assert_eq!(
        m.field_line(&m.field(m.field_count() - 2)),
        format!("X-Filler-{}: {}", MAX_HEADERS + 4, MAX_HEADERS + 4).as_bytes()
    );
    assert_eq!(m.fields().count(), m.field_count());
    assert_eq!(m.call_id(), b"3848276298220188511@10.0.0.5");
}

// ---------------------------------------------------------------------------------------------------------------
// Rejections: every ParseError variant that a message can trigger
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn reject_empty() {
    assert_eq!(Message::parse(Bytes::new()).unwrap_err(), ParseError::Empty);
    assert_eq!(Message::parse(Bytes::from_static(b"\r\n\r\n")).unwrap_err(), ParseError::Empty);
}

#[test]
fn reject_truncated() {
    assert_eq!(Message::parse(Bytes::from_static(b"INVITE sip:a@b SIP/2.0")).unwrap_err(), ParseError::Truncated);
    // No empty line after the headers.
    let s = BASE.trim_end_matches('\n');
    assert_eq!(parse_err(s), ParseError::Truncated);
    assert_eq!(parse_err(&format!("{s}\n")), ParseError::Truncated);
}

#[test]
fn reject_bad_start_line() {
    for sl in [
        "INVITE sip:bob@example.net",
        "INVITE  SIP/2.0",
        " INVITE sip:bob@example.net SIP/2.0",
        "INV<TE sip:bob@example.net SIP/2.0",
        "INVITE bob.example.net SIP/2.0",
        "INVITE sip:bob @example.net SIP/2.0",
        "garbage",
    ] {
        let s = BASE.replacen("INVITE sip:bob@example.net SIP/2.0", sl, 1);
        assert_eq!(parse_err(&s), ParseError::BadStartLine, "{sl}");
    }
}

#[test]
fn reject_bad_version() {
    for sl in [
        "INVITE sip:bob@example.net SIP/1.0",
        "INVITE sip:bob@example.net sip/2.0",
        "INVITE sip:bob@example.net HTTP/1.1",
    ] {
        assert_eq!(
            parse_err(&BASE.replacen("INVITE sip:bob@example.net SIP/2.0", sl, 1)),
            ParseError::BadVersion,
            "{sl}"
        );
    }
    assert_eq!(parse_err(&RESPONSE.replace("SIP/2.0 200", "SIP/3.0 200")), ParseError::BadVersion);
    assert_eq!(parse_err(&RESPONSE.replace("SIP/2.0 200", "SIP/2.0200")), ParseError::BadVersion);
}

#[test]
fn reject_bad_status() {
    for sl in ["SIP/2.0 99 Low", "SIP/2.0 700 High", "SIP/2.0 2000 OK", "SIP/2.0 20 OK", "SIP/2.0 OK", "SIP/2.0 "] {
        assert_eq!(parse_err(&RESPONSE.replace("SIP/2.0 200 OK", sl)), ParseError::BadStatus, "{sl}");
    }
}

#[test]
fn reject_bad_header_line() {
    for (old, new) in [
        ("Max-Forwards: 70\n", "Max-Forwards 70\n"),       // no colon
        ("Max-Forwards: 70\n", ": 70\n"),                  // empty name
        ("Max-Forwards: 70\n", "Max Forwards: 70\n"),      // space inside the name
        ("Max-Forwards: 70\n", "Max-Forwards<: 70\n"),     // not a token
        ("Max-Forwards: 70\n", "\rMax-Forwards: 70\n"),    // stray CR first
        ("Max-Forwards: 70\n", "Max-Forw\u{e4}rds: 70\n"), // non-ASCII name
    ] {
        assert_eq!(parse_err(&base_with(old, new)), ParseError::BadHeaderLine, "{new:?}");
    }
    // A continuation line with nothing to continue.
    let s = BASE.replacen("SIP/2.0\n", "SIP/2.0\n  folded: nothing\n", 1);
    assert_eq!(parse_err(&s), ParseError::BadHeaderLine);
}

#[test]
fn reject_bad_content_length() {
    for cl in ["Content-Length: abc\n", "Content-Length: -1\n", "Content-Length:\n", "l: 99999999999\n", "l: 1 2\n"] {
        assert_eq!(parse_err(&base_with("Content-Length: 0\n", cl)), ParseError::BadContentLength, "{cl}");
    }
    // Two different lengths.
    let mut raw = crlf(&base_with("Content-Length: 0\n", "Content-Length: 2\nl: 3\n"));
    raw.extend_from_slice(b"abc");
    assert_eq!(Message::parse(Bytes::from(raw)).unwrap_err(), ParseError::BadContentLength);
}

#[test]
fn reject_body_truncated() {
    assert_eq!(parse_err(&base_with("Content-Length: 0\n", "Content-Length: 1\n")), ParseError::BodyTruncated);
}

#[test]
fn reject_missing_via() {
    assert_eq!(parse_err(&base_with(BASE_VIA, "")), ParseError::MissingVia);
    assert_eq!(parse_err(&RESPONSE.replace("Via:", "X-Via:")), ParseError::MissingVia);
}

#[test]
fn reject_bad_via() {
    for v in [
        "Via: garbage\n",
        "Via: SIP/2.0/UDP\n",
        "Via: SIP/2.0/UDP bad host;branch=z9hG4bKx\n",
        "Via: SIP/2.0/UDP host:99999;branch=z9hG4bKx\n",
        "Via: SIP/3.0/UDP host;branch=z9hG4bKx\n",
        "Via: ,\n",
    ] {
        assert_eq!(parse_err(&base_with(BASE_VIA, v)), ParseError::BadVia, "{v}");
    }
}

#[test]
fn reject_missing_call_id() {
    assert_eq!(parse_err(&base_with(BASE_CALL_ID, "")), ParseError::MissingCallId);
}

#[test]
fn reject_bad_cseq() {
    for c in ["", "CSeq: INVITE\n", "CSeq: 2\n", "CSeq: two INVITE\n", "CSeq: 99999999999 INVITE\n", "CSeq:  \n"] {
        assert_eq!(parse_err(&base_with("CSeq: 2 INVITE\n", c)), ParseError::BadCSeq, "{c:?}");
    }
}

#[test]
fn reject_cseq_method_mismatch() {
    assert_eq!(parse_err(&base_with("CSeq: 2 INVITE\n", "CSeq: 2 BYE\n")), ParseError::CSeqMethodMismatch);
    assert_eq!(parse_err(&base_with("CSeq: 2 INVITE\n", "CSeq: 2 invite\n")), ParseError::CSeqMethodMismatch);
    // The first CSeq counts.
    assert_eq!(
        parse_err(&base_with("CSeq: 2 INVITE\n", "CSeq: 2 ACK\nCSeq: 2 INVITE\n")),
        ParseError::CSeqMethodMismatch
    );
}

#[test]
fn reject_missing_from_and_to() {
    assert_eq!(
        parse_err(&base_with("From: Alice <sip:alice@example.com>;tag=9fxced76sl\n", "")),
        ParseError::MissingFrom
    );
    assert_eq!(parse_err(&base_with("To: Bob <sip:bob@example.net>\n", "")), ParseError::MissingTo);
}

#[test]
fn reject_bad_max_forwards() {
    for mf in ["Max-Forwards: seventy\n", "Max-Forwards:\n", "Max-Forwards: -1\n", "Max-Forwards: 99999999999\n"] {
        assert_eq!(parse_err(&base_with("Max-Forwards: 70\n", mf)), ParseError::BadMaxForwards, "{mf:?}");
    }
}

#[test]
fn parse_error_reason_matches_display() {
    use ParseError::*;
    // TooLarge needs a buffer over 2 GiB; it is only checked here for its text.
    for e in [
        Empty,
        Truncated,
        BadStartLine,
        BadVersion,
        BadStatus,
        BadHeaderLine,
        BadContentLength,
        BodyTruncated,
        MissingVia,
        BadVia,
        MissingCallId,
        BadCSeq,
        CSeqMethodMismatch,
        MissingFrom,
        MissingTo,
        BadMaxForwards,
        TooLarge,
    ] {
        assert_eq!(e.to_string(), e.reason());
    }
}

#[test]
fn parse_for_reply_answers_a_request_without_call_id() {
    let s = base_with(BASE_CALL_ID, "");
    assert_eq!(parse_err(&s), ParseError::MissingCallId);
    let req = Message::parse_for_reply(Bytes::from(crlf(&s))).expect("usable for a 400");
    assert_eq!(req.method(), Some(Method::Invite));
    assert_eq!(req.call_id(), b"");
    let resp = ResponseBuilder::new(&req, 400, "Bad Request (missing Call-ID)")
        .source(addr("192.0.2.9:40000"))
        .to_tag(b"ourtag")
        .header("Warning", b"399 sipfront \"missing Call-ID\"")
        .build();
    let text = lossy(&resp);
    assert!(text.starts_with("SIP/2.0 400 Bad Request (missing Call-ID)\r\n"), "{text}");
    assert!(text.contains("Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;received=192.0.2.9;rport=40000\r\n"));
    assert!(text.contains("To: Bob <sip:bob@example.net>;tag=ourtag\r\n"));
    assert!(text.contains("CSeq: 2 INVITE\r\n"));
    assert!(!text.contains("\r\nCall-ID") && !text.contains("\r\ni:"));
    // Other broken requests are still answerable: bad CSeq, body shorter than Content-Length.
    for s in [base_with("CSeq: 2 INVITE\n", "CSeq: x\n"), base_with("Content-Length: 0\n", "Content-Length: 50\n")] {
        assert!(Message::parse_for_reply(Bytes::from(crlf(&s))).is_some(), "{s}");
    }
    // But not a response, nor a request without a usable Via, nor one whose header section is cut off.
    assert!(Message::parse_for_reply(Bytes::from(crlf(RESPONSE))).is_none());
    assert!(Message::parse_for_reply(Bytes::from(crlf(&base_with(BASE_VIA, "")))).is_none());
    assert!(Message::parse_for_reply(Bytes::from(crlf(&base_with(BASE_VIA, "Via: junk\n")))).is_none());
    assert!(Message::parse_for_reply(Bytes::from(crlf(BASE.trim_end_matches('\n')))).is_none());
}

// ---------------------------------------------------------------------------------------------------------------
// forward()
// ---------------------------------------------------------------------------------------------------------------

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

#[test]
fn forward_puts_our_via_and_record_route_on_top() {
    let m = parse(ROUTED);
    let rr = [OUR_RR];
    let out = m.forward(&fwd_edit(&rr, 0, None));
    let f = parse_bytes(&out);
    assert_eq!(f.start_line_bytes(), m.start_line_bytes());
    assert_eq!(f.top_via().unwrap().raw, OUR_VIA);
    assert_eq!(
        values(&f, HeaderName::Via),
        ["SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKours", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;rport"]
    );
    assert_eq!(values(&f, HeaderName::RecordRoute), ["<sip:192.0.2.53:5060;lr>", "<sip:edge.example.net;lr>"]);
    assert!(lossy(&out).starts_with(
        "INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKours\r\n\
         Record-Route: <sip:192.0.2.53:5060;lr>\r\n"
    ));
    // Without a source the client's Via is copied as is; nothing popped.
    assert_eq!(values(&f, HeaderName::Route).len(), 3);
    assert_eq!(f.body(), b"hello");
    // Two Record-Routes (transport change) keep their order.
    let rr2 = [&b"<sip:192.0.2.53;transport=tcp;lr>"[..], b"<sip:192.0.2.53;lr>"];
    let f = parse_bytes(&m.forward(&fwd_edit(&rr2, 0, None)));
    assert_eq!(
        values(&f, HeaderName::RecordRoute),
        ["<sip:192.0.2.53;transport=tcp;lr>", "<sip:192.0.2.53;lr>", "<sip:edge.example.net;lr>"]
    );
}

#[test]
fn forward_pops_own_route_when_two_share_a_line() {
    let m = parse(ROUTED);
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 1, None)));
    assert_eq!(values(&f, HeaderName::Route), ["<sip:edge.example.net;lr>", "<sip:last.example.net;lr>"]);
    assert_eq!(f.header(HeaderName::Route), Some(&b"<sip:edge.example.net;lr>"[..]));
    // Popping two spans the first line entirely; three removes every Route.
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 2, None)));
    assert_eq!(values(&f, HeaderName::Route), ["<sip:last.example.net;lr>"]);
    let out = m.forward(&fwd_edit(&[], 3, None));
    let f = parse_bytes(&out);
    assert!(f.header(HeaderName::Route).is_none());
    assert!(!lossy(&out).contains("\r\nRoute"), "no empty Route line left");
    // Popping more than there are is harmless.
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 9, None)));
    assert_eq!(f.header_values(HeaderName::Route).count(), 0);
    // Own Route alone on its line: the line goes.
    let m = parse(&ROUTED.replace(
        "Route: <sip:192.0.2.53;lr>, <sip:edge.example.net;lr>\n",
        "Route: <sip:192.0.2.53;lr>\nroute: <sip:edge.example.net;lr>\n",
    ));
    let out = m.forward(&fwd_edit(&[], 1, None));
    assert!(lossy(&out).contains("\r\nroute: <sip:edge.example.net;lr>\r\nRoute: <sip:last.example.net;lr>\r\n"));
}

#[test]
fn forward_writes_or_adds_max_forwards() {
    let m = parse(ROUTED);
    let out = m.forward(&fwd_edit(&[], 0, None));
    let f = parse_bytes(&out);
    assert_eq!(f.max_forwards(), Some(69));
    assert_eq!(f.fields().filter(|x| x.name == HeaderName::MaxForwards).count(), 1);
    // Written where the original stood.
    assert!(lossy(&out).contains("Record-Route: <sip:edge.example.net;lr>\r\nMax-Forwards: 69\r\nFrom:"));
    // Missing: added at the end of the header section.
    let m = parse(&ROUTED.replace("Max-Forwards: 70\n", ""));
    let out = m.forward(&ForwardEdit { max_forwards: 70, ..fwd_edit(&[], 0, None) });
    assert_eq!(parse_bytes(&out).max_forwards(), Some(70));
    assert!(lossy(&out).contains("Content-Length: 5\r\nMax-Forwards: 70\r\n\r\nhello"));
    // Two Max-Forwards lines collapse into one.
    let m = parse(&ROUTED.replace("Max-Forwards: 70\n", "Max-Forwards: 70\nMax-Forwards: 20\n"));
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 0, None)));
    assert_eq!(f.fields().filter(|x| x.name == HeaderName::MaxForwards).count(), 1);
    assert_eq!(f.max_forwards(), Some(69));
}

#[test]
fn forward_fills_received_and_rport() {
    let m = parse(ROUTED);
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 0, Some(addr("198.51.100.20:40123")))));
    let vias = values(&f, HeaderName::Via);
    assert_eq!(vias[1], "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;received=198.51.100.20;rport=40123");
    let client = Via::parse(f.header_values(HeaderName::Via).nth(1).unwrap()).unwrap();
    assert_eq!(client.received(), Some(&b"198.51.100.20"[..]));
    assert_eq!(client.rport(), Some(Some(40123)));
    // No rport asked for and the host matches the source: the Via is left alone.
    let m = parse(&ROUTED.replace("10.0.0.5:5060;branch=z9hG4bKclient;rport", "10.0.0.5:5060;branch=z9hG4bKclient"));
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 0, Some(addr("10.0.0.5:5060")))));
    assert_eq!(values(&f, HeaderName::Via)[1], "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient");
    // No rport, other host: received only.
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 0, Some(addr("198.51.100.20:5060")))));
    assert_eq!(values(&f, HeaderName::Via)[1], "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;received=198.51.100.20");
    // Stale received/rport values are replaced, other Vias on the same line kept, compact name kept.
    let m = parse(&ROUTED.replace(
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;rport\n",
        "v: SIP/2.0/UDP 10.0.0.5:5060;received=1.1.1.1;branch=z9hG4bKclient;rport=1 ,SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKold\n",
    ));
    let out = m.forward(&fwd_edit(&[], 0, Some(addr("[2001:db8::7]:5062"))));
    assert!(
        lossy(&out).contains(
            "\r\nv: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;received=2001:db8::7;rport=5062 ,SIP/2.0/UDP \
             10.9.9.9;branch=z9hG4bKold\r\n"
        ),
        "{}",
        lossy(&out)
    );
    let f = parse_bytes(&out);
    assert_eq!(f.header_values(HeaderName::Via).count(), 3);
}

#[test]
fn forward_keeps_other_headers_byte_identical() {
    let m = parse(ROUTED);
    let rr = [OUR_RR];
    let out = m.forward(&fwd_edit(&rr, 1, Some(addr("198.51.100.20:40123"))));
    let f = parse_bytes(&out);
    let untouched = |msg: &Message| -> Vec<Vec<u8>> {
        msg.fields()
            .filter(|x| {
                !matches!(
                    x.name,
                    HeaderName::Via | HeaderName::Route | HeaderName::MaxForwards | HeaderName::RecordRoute
                )
            })
            .map(|x| msg.field_line(&x).to_vec())
            .collect()
    };
    assert_eq!(untouched(&m), untouched(&f));
    assert!(lossy(&out).contains("\r\nSubject :  keep   me   exactly\t\r\n"));
    assert_eq!(f.body(), m.body());
    // The existing Record-Route is kept as written, below ours.
    assert_eq!(
        f.field_line(&f.fields().filter(|x| x.name == HeaderName::RecordRoute).nth(1).unwrap()),
        b"Record-Route: <sip:edge.example.net;lr>"
    );
}

#[test]
fn forward_adds_content_length_when_missing() {
    let s = ROUTED.replace("Content-Length: 5\n", "");
    let m = parse(&s);
    assert!(!m.has_content_length());
    assert_eq!(m.body(), b"hello");
    let out = m.forward(&fwd_edit(&[], 0, None));
    let f = parse_bytes(&out);
    assert!(f.has_content_length());
    assert_eq!(f.header(HeaderName::ContentLength), Some(&b"5"[..]));
    assert_eq!(f.body(), b"hello");
    // Bytes after Content-Length are not forwarded.
    let mut raw = crlf(ROUTED);
    raw.extend_from_slice(b"TRAILING");
    let out = parse_bytes(&raw).forward(&fwd_edit(&[], 0, None));
    assert!(out.ends_with(b"\r\n\r\nhello"));
}

#[test]
fn forward_can_change_method_and_request_uri() {
    let m = parse(ROUTED);
    let out = m.forward(&ForwardEdit {
        method: Some("CANCEL"),
        request_uri: Some(b"sip:bob@10.20.0.11:5060"),
        ..fwd_edit(&[], 1, None)
    });
    let f = parse_bytes(&out);
    assert_eq!(f.method(), Some(Method::Cancel));
    assert_eq!(f.request_uri(), b"sip:bob@10.20.0.11:5060");
    assert_eq!(f.cseq(), 10);
    assert_eq!(f.cseq_method(), Method::Cancel);
}

#[test]
fn forward_when_first_via_line_is_empty() {
    // `Via: ,` has no value; the top Via is on the next line. Must not panic, must fill in that one.
    let m = parse(&ROUTED.replace("Via: SIP/2.0/UDP 10.0.0.5", "Via: ,\nVia: SIP/2.0/UDP 10.0.0.5"));
    let f = parse_bytes(&m.forward(&fwd_edit(&[], 0, Some(addr("198.51.100.20:40123")))));
    let vias = values(&f, HeaderName::Via);
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[1], "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKclient;received=198.51.100.20;rport=40123");
    let r = ResponseBuilder::new(&m, 100, "Trying").source(addr("198.51.100.20:40123")).build();
    let r = parse_bytes(&r);
    assert_eq!(r.top_via().unwrap().received(), Some(&b"198.51.100.20"[..]));
}

// ---------------------------------------------------------------------------------------------------------------
// strip_top_via(), twin_request(), ResponseBuilder
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn strip_top_via_removes_our_via_line() {
    let m = parse(RESPONSE);
    let out = m.strip_top_via();
    let r = parse_bytes(&out);
    assert_eq!(
        values(&r, HeaderName::Via),
        ["SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;received=192.0.2.9;rport=5060"]
    );
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.to_tag(), Some(&b"8321234356"[..]));
    // Everything else byte for byte: the output is the input minus the first Via line.
    let expect = lossy(&crlf(RESPONSE)).replace("Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKproxy1\r\n", "");
    assert_eq!(lossy(&out), expect);
}

#[test]
fn strip_top_via_when_vias_share_a_line() {
    let s = RESPONSE.replace(
        "Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKproxy1\nVia:",
        "v: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKproxy1 , SIP/2.0/TCP 10.1.1.1;branch=z9hG4bKmid,\nVia:",
    );
    let m = parse(&s);
    assert_eq!(m.header_values(HeaderName::Via).count(), 3);
    let out = m.strip_top_via();
    assert!(lossy(&out).contains("\r\nv: SIP/2.0/TCP 10.1.1.1;branch=z9hG4bKmid,\r\nVia: SIP/2.0/UDP 10.0.0.5"));
    let r = parse_bytes(&out);
    let branches: Vec<_> =
        r.header_values(HeaderName::Via).map(|v| lossy(Via::parse(v).unwrap().branch().unwrap())).collect();
    assert_eq!(branches, ["z9hG4bKmid", "z9hG4bK74bf9"]);
    // A first Via line without any value is not what gets stripped.
    let m = parse(&RESPONSE.replacen("Via: ", "Via: ,\nVia: ", 1));
    let r = parse_bytes(&m.strip_top_via());
    assert_eq!(r.top_via().unwrap().branch(), Some(&b"z9hG4bK74bf9"[..]));
}

#[test]
fn strip_top_via_adds_content_length_and_keeps_body() {
    let mut raw = crlf(&RESPONSE.replace("Content-Length: 0\n", ""));
    raw.extend_from_slice(b"v=0\r\n");
    let m = parse_bytes(&raw);
    let r = parse_bytes(&m.strip_top_via());
    assert!(r.has_content_length());
    assert_eq!(r.body(), b"v=0\r\n");
    // The only Via stripped: the result is no longer routable.
    let m = parse(&RESPONSE.replace("Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKproxy1\n", ""));
    assert_eq!(Message::parse(m.strip_top_via()).unwrap_err(), ParseError::MissingVia);
}

#[test]
fn twin_request_cancel_and_ack() {
    // The request as we sent it: our Via alone on top, a Route set.
    let sent = parse(
        "INVITE sip:bob@10.20.0.11 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKsent, SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKclient
Via: SIP/2.0/UDP 10.0.0.4;branch=z9hG4bKolder
Route: <sip:pbx.example.net;lr>
Max-Forwards: 69
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.net>
Call-ID: twin@10.0.0.5
CSeq: 314 INVITE
Contact: <sip:alice@10.0.0.5>
Content-Type: application/sdp
Content-Length: 3

abc",
    );
    let cancel = sent.twin_request("CANCEL", None);
    let c = parse_bytes(&cancel);
    assert_eq!(c.method(), Some(Method::Cancel));
    assert_eq!(c.request_uri(), b"sip:bob@10.20.0.11");
    assert_eq!(values(&c, HeaderName::Via), ["SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bKsent"]);
    assert_eq!(values(&c, HeaderName::Route), ["<sip:pbx.example.net;lr>"]);
    assert_eq!(c.call_id(), b"twin@10.0.0.5");
    assert_eq!(c.from_tag(), Some(&b"a1"[..]));
    assert_eq!(c.header(HeaderName::To), Some(&b"<sip:bob@example.net>"[..]));
    assert_eq!((c.cseq(), c.cseq_method()), (314, Method::Cancel));
    assert_eq!(c.max_forwards(), Some(70));
    assert_eq!(c.body(), b"");
    assert!(c.header(HeaderName::Contact).is_none() && c.header(HeaderName::ContentType).is_none());
    let ack = sent.twin_request("ACK", Some(b"<sip:bob@example.net>;tag=b7"));
    let a = parse_bytes(&ack);
    assert_eq!(a.method(), Some(Method::Ack));
    assert_eq!((a.cseq(), a.cseq_method()), (314, Method::Ack));
    assert_eq!(a.to_tag(), Some(&b"b7"[..]));
    assert_eq!(a.top_via().unwrap().branch(), Some(&b"z9hG4bKsent"[..]));
}

#[test]
fn response_builder_to_tag_only_when_absent() {
    let req = parse(BASE);
    let r = parse_bytes(&ResponseBuilder::new(&req, 486, "Busy Here").to_tag(b"ours").build());
    assert_eq!(r.status(), Some(486));
    assert_eq!(r.reason(), b"Busy Here");
    assert_eq!(r.to_tag(), Some(&b"ours"[..]));
    let req = parse(&BASE.replace("To: Bob <sip:bob@example.net>", "To: Bob <sip:bob@example.net>;tag=theirs"));
    let out = ResponseBuilder::new(&req, 200, "OK").to_tag(b"ours").build();
    let r = parse_bytes(&out);
    assert_eq!(r.to_tag(), Some(&b"theirs"[..]));
    assert!(!lossy(&out).contains("ours"));
    // A 100 Trying gets no tag unless asked.
    let req = parse(BASE);
    let r = parse_bytes(&ResponseBuilder::new(&req, 100, "Trying").build());
    assert_eq!(r.to_tag(), None);
}

#[test]
fn response_builder_copies_dialog_headers_and_fills_received() {
    let req = parse(&base_with(BASE_VIA, &format!("{BASE_VIA}Via: SIP/2.0/TCP 10.9.9.9;branch=z9hG4bKlower\n")));
    let out = ResponseBuilder::new(&req, 200, "OK")
        .source(addr("198.51.100.20:40123"))
        .to_tag(b"t1")
        .header("Allow", ALLOW.as_bytes())
        .header("X-Injected", b"a\r\nVia: evil")
        .build();
    let r = parse_bytes(&out);
    assert_eq!(
        values(&r, HeaderName::Via),
        [
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;received=198.51.100.20;rport=40123",
            "SIP/2.0/TCP 10.9.9.9;branch=z9hG4bKlower"
        ]
    );
    assert_eq!(r.call_id(), req.call_id());
    assert_eq!(r.from_tag(), req.from_tag());
    assert_eq!((r.cseq(), r.cseq_method()), (2, Method::Invite));
    assert_eq!(r.body(), b"");
    assert!(r.has_content_length());
    assert!(r.header(HeaderName::MaxForwards).is_none(), "Max-Forwards is not echoed");
    let text = lossy(&out);
    assert!(text.contains(&format!("\r\nServer: {SERVER_NAME}\r\n")));
    assert!(text.contains(&format!("\r\nAllow: {ALLOW}\r\n")));
    assert!(text.contains("\r\nX-Injected: aVia: evil\r\n"), "CR/LF stripped from extra header values");
    // Reason phrases cannot inject lines either.
    let r = parse_bytes(&ResponseBuilder::new(&req, 500, "Oops\r\nX-Bad: 1").build());
    assert_eq!(r.reason(), b"OopsX-Bad: 1");
}

// ---------------------------------------------------------------------------------------------------------------
// Round trip: parse → write_to → parse gives the same message, on a seed corpus and deterministic mutations
// ---------------------------------------------------------------------------------------------------------------

const SEED_INVITE_SDP: &str = "INVITE sip:+4930123456@pbx.example.net;user=phone SIP/2.0
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;rport
v: SIP/2.0/TCP 198.51.100.7:5061;branch=z9hG4bK776asdhds;received=198.51.100.7,SIP/2.0/UDP 10.1.2.3;branch=z9hG4bKn
Route: <sip:sipfront.example.net;lr>, <sip:edge.example.net;lr>
Record-Route: <sip:edge.example.net;lr>
Max-Forwards: 69
f: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
To: <sip:+4930123456@pbx.example.net;user=phone>
i: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
m: <sip:alice@203.0.113.10:5060;transport=udp>;expires=3600
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY
k: replaces, timer, 100rel
c: application/sdp
Content-Length: 134

v=0
o=alice 2890844526 2890844526 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
m=audio 49170 RTP/AVP 0 8 101
a=sendrecv
";

const SEED_200_OK: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bK1a2b3c4d.00000000000000a1
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;received=203.0.113.10;rport=5060
Record-Route: <sip:192.0.2.53:5060;lr>, <sip:edge.example.net;lr>
From: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
To: <sip:+4930123456@pbx.example.net;user=phone>;tag=as6f1c2b7e
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
Contact: <sip:+4930123456@10.20.0.11:5060>
Content-Type: application/sdp
Content-Length: 68

v=0
o=pbx 1093 1093 IN IP4 10.20.0.11
s=pbx
c=IN IP4 10.20.0.11
";

const SEED_REGISTER: &str = "REGISTER sip:registrar.example.com SIP/2.0
Via: SIP/2.0/TCP 10.0.0.5:55060;branch=z9hG4bKnashds7;rport
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: Bob <sip:bob@example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4>;expires=7200, \"Bob, mobile\" <sip:bob@192.0.2.5;transport=tcp>;q=0.5
Contact: <sip:bob@192.0.2.6>
Expires: 7200
Supported: path, outbound
Content-Length: 0

";

const SEED_BYE: &str = "BYE sip:alice@203.0.113.10:5060 SIP/2.0
Via: SIP/2.0/UDP 10.20.0.11:5060;branch=z9hG4bKbye1
Route: <sip:192.0.2.53:5060;lr>
Route: <sip:edge.example.net;lr>
Max-Forwards: 70
From: <sip:+4930123456@pbx.example.net>;tag=as6f1c2b7e
To: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 102 BYE
Content-Length: 0

";

const SEED_COMPACT: &str = "OPTIONS sip:sipfront.example.net SIP/2.0
v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKopt;rport
f: <sip:monitor@example.com>;tag=m1
t: <sip:sipfront.example.net>
i: opt-1@10.0.0.5
CSeq: 1 OPTIONS
m: <sip:monitor@10.0.0.5>
k: path
s: ping
l: 0

";

const SEED_FOLDED: &str = "MESSAGE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060
  ;branch=z9hG4bKfolded;rport
Max-Forwards:
 70
From: Alice
\t<sip:alice@example.com>;tag=f1
To: <sip:bob@example.net>
Call-ID: folded-1@10.0.0.5
CSeq: 5
 MESSAGE
Subject: first line,
   second line
Content-Type: text/plain

Hello Bob, no Content-Length on UDP.";

/// Same message: start line, header names and values in order, body. A message that had no Content-Length gets
/// one, last, from `write_to`.
fn check_same(a: &Message, b: &Message) -> Result<(), String> {
    if a.start_line_bytes() != b.start_line_bytes() {
        return Err("start line differs".into());
    }
    if (a.method(), a.method_bytes(), a.request_uri(), a.status(), a.reason())
        != (b.method(), b.method_bytes(), b.request_uri(), b.status(), b.reason())
    {
        return Err("parsed start line differs".into());
    }
    let fa: Vec<_> = a.fields().map(|f| (f.name, a.field_name(&f), a.slice(f.value))).collect();
    let mut fb: Vec<_> = b.fields().map(|f| (f.name, b.field_name(&f), b.slice(f.value))).collect();
    if !a.has_content_length() {
        let added = fb.pop().ok_or("no Content-Length added")?;
        if added.0 != HeaderName::ContentLength || added.2 != a.body().len().to_string().as_bytes() {
            return Err(format!("added Content-Length wrong: {:?}", lossy(added.2)));
        }
    }
    if fa != fb {
        return Err(format!("fields differ:\n{fa:?}\n{fb:?}"));
    }
    if a.body() != b.body() || !b.has_content_length() {
        return Err("body differs".into());
    }
    if (a.call_id(), a.cseq(), a.cseq_method(), a.from_tag(), a.to_tag(), a.max_forwards())
        != (b.call_id(), b.cseq(), b.cseq_method(), b.from_tag(), b.to_tag(), b.max_forwards())
    {
        return Err("routing headers differ".into());
    }
    if a.top_via().map(|v| v.raw) != b.top_via().map(|v| v.raw) {
        return Err("top Via differs".into());
    }
    Ok(())
}

/// Round trip, then the builders on the parsed message: their output must parse too. Returns an error text instead
/// of panicking so the mutation loop can say which input failed.
fn check_message(input: &[u8]) -> Result<bool, String> {
    let Ok(a) = Message::parse(Bytes::copy_from_slice(input)) else {
        // Whatever is rejected, the 400 path must cope with it.
        if let Some(req) = Message::parse_for_reply(Bytes::copy_from_slice(input)) {
            let _ = ResponseBuilder::new(&req, 400, "Bad Request").source(addr("192.0.2.9:5060")).to_tag(b"x").build();
        }
        return Ok(false);
    };
    let mut out = BytesMut::new();
    a.write_to(&mut out);
    let b = Message::parse(out.clone().freeze()).map_err(|e| format!("write_to output does not parse: {e}"))?;
    check_same(&a, &b)?;
    let mut again = BytesMut::new();
    b.write_to(&mut again);
    if again != out {
        return Err("write_to is not a fixed point".into());
    }
    if a.is_request() {
        let rr = [OUR_RR];
        let fwd = a.forward(&fwd_edit(&rr, 1, Some(addr("198.51.100.20:40123"))));
        let f = Message::parse(fwd).map_err(|e| format!("forward output does not parse: {e}"))?;
        if f.top_via().map(|v| v.raw) != Some(OUR_VIA) || f.call_id() != a.call_id() || f.body() != a.body() {
            return Err("forward output lost something".into());
        }
        let resp = ResponseBuilder::new(&a, 200, "OK").source(addr("198.51.100.20:40123")).to_tag(b"t").build();
        let r = Message::parse(resp).map_err(|e| format!("ResponseBuilder output does not parse: {e}"))?;
        if r.call_id() != a.call_id() || r.cseq() != a.cseq() {
            return Err("response lost Call-ID/CSeq".into());
        }
        let twin = a.twin_request("CANCEL", None);
        Message::parse(twin).map_err(|e| format!("twin_request output does not parse: {e}"))?;
    }
    let second_via_ok = a.header_values(HeaderName::Via).nth(1).and_then(Via::parse).is_some();
    match Message::parse(a.strip_top_via()) {
        Ok(s) => {
            if s.header_values(HeaderName::Via).count() + 1 != a.header_values(HeaderName::Via).count() {
                return Err("strip_top_via removed other than one Via".into());
            }
        }
        Err(e) if second_via_ok => return Err(format!("strip_top_via output does not parse: {e}")),
        Err(_) => {}
    }
    Ok(true)
}

/// xorshift64* — deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\r\n \t:;,<>\"\\=/@0123456789aZ\xff\x80\x00";
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b"\n",
    b",",
    b";rport",
    b";branch=z9hG4bKmut",
    b";received=1.2.3.4",
    b"Via: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKinj\r\n",
    b"v: ,\r\n",
    b"Route: <sip:x;lr>, <sip:y;lr>\r\n",
    b"Content-Length: 3\r\n",
    b"l: 0\r\n",
    b"Max-Forwards: 0\r\n",
    b"Call-ID: dup\r\n",
    b"CSeq: 1 BYE\r\n",
    b"<sip:a@b;lr>",
    b"\"quoted, \\\" string\"",
    b"SIP/2.0",
    b"\xc3\xa9",
];

fn line_bounds(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s = 0;
    for (i, c) in b.iter().enumerate() {
        if *c == b'\n' {
            out.push((s, i + 1));
            s = i + 1;
        }
    }
    out
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    let pos = rng.below(buf.len() + 1);
    match rng.below(10) {
        0 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] = INTERESTING[rng.below(INTERESTING.len())];
        }
        1 => buf.insert(pos, INTERESTING[rng.below(INTERESTING.len())]),
        2 => {
            let end = (pos + 1 + rng.below(8)).min(buf.len());
            buf.drain(pos.min(end)..end);
        }
        3 | 4 => {
            let lines = line_bounds(buf);
            if lines.len() > 1 {
                let (s, e) = lines[rng.below(lines.len())];
                let line = buf[s..e].to_vec();
                if rng.below(2) == 0 {
                    let (at, _) = lines[rng.below(lines.len())];
                    buf.splice(at..at, line); // duplicate a line elsewhere
                } else {
                    buf.drain(s..e); // remove a line
                }
            }
        }
        5 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] ^= 0x20; // flip case (or worse)
        }
        6 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            buf.splice(pos..pos, t.iter().copied());
        }
        7 => buf.truncate(pos),
        8 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] = rng.next() as u8;
        }
        _ => {
            // Replace a line's start with a token (often a header line).
            let lines = line_bounds(buf);
            if !lines.is_empty() {
                let (s, e) = lines[rng.below(lines.len())];
                let t = TOKENS[rng.below(TOKENS.len())];
                buf.splice(s..e, t.iter().copied());
            }
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> =
        [SEED_INVITE_SDP, SEED_200_OK, SEED_REGISTER, SEED_BYE, SEED_COMPACT, SEED_FOLDED, BASE, RESPONSE, ROUTED]
            .iter()
            .map(|s| crlf(s))
            .collect();
    // The same with bare LF line endings, and with a leading keep-alive CRLF.
    v.push(SEED_BYE.as_bytes().to_vec());
    v.push([&b"\r\n"[..], &crlf(SEED_COMPACT)].concat());
    v
}

#[test]
fn round_trip_seed_corpus() {
    for (i, s) in seeds().iter().enumerate() {
        match check_message(s) {
            Ok(true) => {}
            Ok(false) => panic!("seed {i} does not parse: {:?}", Message::parse(Bytes::copy_from_slice(s)).err()),
            Err(e) => panic!("seed {i}: {e}\n{}", lossy(s)),
        }
    }
}

#[test]
fn round_trip_holds_for_mutations() {
    const PER_SEED: usize = 800;
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut parsed, mut total) = (0, 0);
    for seed in &seeds {
        for _ in 0..PER_SEED {
            let mut buf = seed.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut buf);
            }
            total += 1;
            match std::panic::catch_unwind(|| check_message(&buf)) {
                Ok(Ok(ok)) => parsed += usize::from(ok),
                Ok(Err(e)) => panic!("mutation {total}: {e}\ninput: {:?}", lossy(&buf)),
                Err(_) => panic!("mutation {total} panicked\ninput: {:?}", lossy(&buf)),
            }
        }
    }
    eprintln!("{parsed} of {total} mutations parsed and round-tripped");
    // The mutations must leave enough messages parseable for the round trip to be exercised.
    assert!(parsed * 4 > total, "only {parsed} of {total} mutations parsed");
}

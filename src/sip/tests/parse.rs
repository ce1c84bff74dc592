//! The start line, the headers routing reads, every header form, and every rejection.

use super::*;

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
    // A wildcard Contact is one value (a REGISTER with `Expires: 0`: anything else with it is refused).
    let unregister = base_with("Max-Forwards: 70\n", "Max-Forwards: 70\nContact: *\nExpires: 0\n")
        .replace("INVITE sip:bob@example.net", "REGISTER sip:example.net")
        .replace("CSeq: 2 INVITE", "CSeq: 2 REGISTER");
    let m = parse(&unregister);
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

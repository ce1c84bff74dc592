//! The builders: forward(), strip_top_via(), twin_request() and ResponseBuilder.

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// forward()
// ---------------------------------------------------------------------------------------------------------------

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
    // Two Max-Forwards lines never get this far: the parser refuses them (`sip::sanity`).
    let two = ROUTED.replace("Max-Forwards: 70\n", "Max-Forwards: 70\nMax-Forwards: 20\n");
    assert_eq!(Message::parse(Bytes::from(crlf(&two))).err(), Some(ParseError::DuplicateMaxForwards));
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

//! `sip::sanity`: what parses but is too odd to pass on, each rule alone; what stays accepted; and the answer
//! path for requests whose start line is broken.

use super::*;

#[test]
fn a_second_single_instance_header_is_refused() {
    for (line, err) in [
        (BASE_CALL_ID, ParseError::DuplicateCallId),
        ("CSeq: 2 INVITE\n", ParseError::DuplicateCSeq),
        ("From: Alice <sip:alice@example.com>;tag=9fxced76sl\n", ParseError::DuplicateFrom),
        ("To: Bob <sip:bob@example.net>\n", ParseError::DuplicateTo),
        ("Max-Forwards: 70\n", ParseError::DuplicateMaxForwards),
    ] {
        // The same line twice, and a compact form beside the long one.
        assert_eq!(parse_err(&base_with(line, &format!("{line}{line}"))), err, "{line}");
    }
    assert_eq!(
        parse_err(&base_with(BASE_CALL_ID, &format!("{BASE_CALL_ID}i: other@10.0.0.5\n"))),
        ParseError::DuplicateCallId
    );
    assert_eq!(
        parse_err(&base_with(
            "To: Bob <sip:bob@example.net>\n",
            "To: Bob <sip:bob@example.net>\nt: <sip:eve@example.org>\n"
        )),
        ParseError::DuplicateTo
    );
    // Via, Route, Contact and the like repeat by design.
    parse(&base_with(BASE_VIA, &format!("{BASE_VIA}Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx\n")));
}

#[test]
fn control_bytes_and_lone_cr_are_refused() {
    for bad in ["\0", "\x01", "\x1b[31m", "\x7f", "\rX-Smuggled: yes", "\x0b", "\x0c"] {
        let s = base_with("To: Bob <sip:bob@example.net>\n", &format!("To: Bob{bad} <sip:bob@example.net>\n"));
        assert_eq!(parse_err(&s), ParseError::ControlByte, "{bad:?}");
    }
    // In the start line too.
    assert_eq!(parse_err(&BASE.replacen("bob@example.net", "bob\x01@example.net", 1)), ParseError::ControlByte);
    // HTAB, folding and UTF-8 are text.
    parse(&base_with("To: Bob <sip:bob@example.net>\n", "To:\t\"Bób\u{e9}\" <sip:bob@example.net>\n"));
    parse(&base_with("To: Bob <sip:bob@example.net>\n", "To: Bob\n <sip:bob@example.net>\n"));
    // The body is not the header section: a binary body is fine.
    let body = "v=0\0\x01\x02\r";
    let s = base_with(
        "Content-Length: 0\n\n",
        &format!("Content-Type: application/octet-stream\nContent-Length: {}\n\n", body.len()),
    );
    let mut raw = crlf(&s);
    raw.extend_from_slice(body.as_bytes());
    Message::parse(Bytes::from(raw)).expect("a binary body parses");
}

#[test]
fn cseq_from_two_to_the_31_is_refused() {
    assert_eq!(parse_err(&base_with("CSeq: 2 INVITE", "CSeq: 2147483648 INVITE")), ParseError::BadCSeq);
    assert_eq!(parse_err(&base_with("CSeq: 2 INVITE", "CSeq: 4294967295 INVITE")), ParseError::BadCSeq);
    assert_eq!(parse(&base_with("CSeq: 2 INVITE", "CSeq: 2147483647 INVITE")).cseq(), 2_147_483_647);
}

#[test]
fn call_id_is_one_word() {
    assert_eq!(parse_err(&base_with(BASE_CALL_ID, "Call-ID:\n")), ParseError::MissingCallId);
    assert_eq!(parse_err(&base_with(BASE_CALL_ID, "Call-ID: abc def\n")), ParseError::BadCallId);
    parse(&base_with(BASE_CALL_ID, "Call-ID: a.b-c!%*_+`'~()<>:\\\"/[]?{}@x\n"));
}

#[test]
fn from_and_to_must_name_an_address() {
    for (old, new, err) in [
        ("From: Alice <sip:alice@example.com>;tag=9fxced76sl", "From: Alice;tag=9fxced76sl", ParseError::BadFrom),
        ("From: Alice <sip:alice@example.com>;tag=9fxced76sl", "From: <>;tag=1", ParseError::BadFrom),
        ("From: Alice <sip:alice@example.com>;tag=9fxced76sl", "From: \"Alice <sip:a@b>;tag=1", ParseError::BadFrom),
        ("From: Alice <sip:alice@example.com>;tag=9fxced76sl", "From: <sip:alice@>;tag=1", ParseError::BadFrom),
        ("To: Bob <sip:bob@example.net>", "To: bob", ParseError::BadTo),
        ("To: Bob <sip:bob@example.net>", "To: <:bob>", ParseError::BadTo),
        ("To: Bob <sip:bob@example.net>", "To: <sip:bob@exa mple.net>", ParseError::BadTo),
    ] {
        assert_eq!(parse_err(&base_with(old, new)), err, "{new}");
    }
    for ok in [
        "To: <tel:+4930123456>",
        "To: sip:bob@example.net",
        "To: \"Bob <the builder>\" <sip:bob@[2001:db8::1]:5060;transport=tcp>",
        "To: <urn:service:sos>",
        "To: <mailto:bob@example.net>",
    ] {
        parse(&base_with("To: Bob <sip:bob@example.net>", ok));
    }
    // Responses are held to it too.
    assert_eq!(
        parse_err(&RESPONSE.replace("To: Bob <sip:bob@example.net>;tag=8321234356", "To: x")),
        ParseError::BadTo
    );
}

#[test]
fn request_uri_schemes() {
    for ok in
        ["sip:bob@example.net", "SIPS:bob@example.net:5061", "tel:+4930123456", "urn:service:sos", "sip:[2001:db8::1]"]
    {
        parse(&BASE.replacen("sip:bob@example.net", ok, 1));
    }
    for (bad, err) in [
        ("http://example.net/", ParseError::UnsupportedUriScheme),
        ("mailto:bob@example.net", ParseError::UnsupportedUriScheme),
        ("sip:", ParseError::BadRequestUri),
        ("sip:bob@", ParseError::BadRequestUri),
        ("sip:bob@host:99999", ParseError::BadRequestUri),
        ("1sip:bob@example.net", ParseError::BadRequestUri),
        (":bob", ParseError::BadRequestUri),
    ] {
        assert_eq!(parse_err(&BASE.replacen("sip:bob@example.net", bad, 1)), err, "{bad}");
    }
    assert_eq!(ParseError::UnsupportedUriScheme.status(), 416);
    assert_eq!(ParseError::BadVersion.status(), 505);
    assert_eq!(ParseError::DuplicateTo.status(), 400);
}

#[test]
fn a_request_with_a_broken_start_line_is_still_answerable() {
    for (sl, method) in [
        ("BYE Anonymous <sip:bob@example.net> SIP/2.0", Some(Method::Bye)),
        ("INVITE", Some(Method::Invite)),
        ("INV\0ITE sip:bob@example.net SIP/2.0", Some(Method::Other)),
        ("INVITE sip:bob@example.net SIP/3.0", Some(Method::Invite)),
        ("ACK sip bob SIP/2.0", Some(Method::Ack)),
    ] {
        let s = BASE.replacen("INVITE sip:bob@example.net SIP/2.0", sl, 1);
        assert!(Message::parse(Bytes::from(crlf(&s))).is_err(), "{sl:?}");
        let req = Message::parse_for_reply(Bytes::from(crlf(&s))).unwrap_or_else(|| panic!("answerable: {sl:?}"));
        assert!(req.is_request());
        assert_eq!(req.method(), method, "{sl:?}");
        assert_eq!(req.request_uri(), b"");
        let resp = ResponseBuilder::new(&req, 400, "Bad Request (bad start line)").to_tag(b"t").build();
        let text = lossy(&resp);
        assert!(
            text.contains("Call-ID: 3848276298220188511@10.0.0.5\r\n") && text.contains("CSeq: 2 INVITE\r\n"),
            "{text}"
        );
    }
    // A broken status line is a response: never answered.
    assert!(
        Message::parse_for_reply(Bytes::from(crlf(&RESPONSE.replace("SIP/2.0 200 OK", "SIP/2.0 2000 OK")))).is_none()
    );
}

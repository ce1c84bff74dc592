//! `sip::sanity`: what parses but is too odd to pass on, each rule alone; what stays accepted; and the answer
//! path for requests whose start line is broken.

use super::*;
use crate::sip::sanity_max;

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

#[test]
fn sizes_that_crash_a_pbx_are_refused() {
    let long = |n: usize| "x".repeat(n);
    let method = long(sanity_max::METHOD + 1).to_uppercase();
    let s = BASE
        .replace("INVITE sip:bob", &format!("{method} sip:bob"))
        .replace("CSeq: 2 INVITE", &format!("CSeq: 2 {method}"));
    assert_eq!(parse_err(&s), ParseError::MethodTooLong);
    let s = base_with(
        "To: Bob <sip:bob@example.net>",
        &format!("To: \"{}\" <sip:bob@example.net>", long(sanity_max::FIELD)),
    );
    assert_eq!(parse_err(&s), ParseError::FieldTooLong);
    // Many fields, each short, but too much together.
    let many: String = (0..40).map(|i| format!("X-Pad-{i}: {}\n", long(500))).collect();
    assert_eq!(
        parse_err(&base_with("Content-Length: 0\n", &format!("{many}Content-Length: 0\n"))),
        ParseError::HeadTooLarge
    );
    let vias: String = (0..sanity_max::VIAS)
        .map(|i| format!("Via: SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK{i}\n", i / 250, i % 250))
        .collect();
    assert_eq!(parse_err(&base_with(BASE_VIA, &format!("{BASE_VIA}{vias}"))), ParseError::TooManyVias);
    parse(&base_with(
        BASE_VIA,
        &format!("{BASE_VIA}{}", vias.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()),
    ));
    assert_eq!(
        parse_err(&base_with(BASE_CALL_ID, &format!("Call-ID: {}\n", long(sanity_max::CALL_ID + 1)))),
        ParseError::CallIdTooLong
    );
    assert_eq!(parse_err(&base_with("Max-Forwards: 70", "Max-Forwards: 256")), ParseError::BadMaxForwards);
    assert_eq!(parse(&base_with("Max-Forwards: 70", "Max-Forwards: 255")).max_forwards(), Some(255));
}

#[test]
fn a_request_needs_a_branch_and_well_formed_contact_and_expires() {
    assert_eq!(parse_err(&base_with(";branch=z9hG4bK74bf9", "")), ParseError::BadVia);
    assert_eq!(parse_err(&base_with(";branch=z9hG4bK74bf9", ";branch=")), ParseError::BadVia);
    // A response's top Via is ours to check, not the grammar's.
    parse(&RESPONSE.replace(";branch=z9hG4bKproxy1", ""));
    assert_eq!(parse_err(&base_with("Content-Length", "Contact: garbage\nContent-Length")), ParseError::BadContact);
    assert_eq!(
        parse_err(&base_with("Content-Length", "Contact: *\nContent-Length")),
        ParseError::BadContact,
        "* outside REGISTER"
    );
    assert_eq!(parse_err(&base_with("Content-Length", "Expires: soon\nContent-Length")), ParseError::BadExpires);
    parse(&base_with(
        "Content-Length",
        "Contact: <sip:alice@10.0.0.5>;expires=60, <tel:+49301234>\nExpires: 3600\nContent-Length",
    ));
    let register = |extra: &str| {
        base_with("Content-Length", &format!("{extra}Content-Length"))
            .replace("INVITE sip:bob@example.net", "REGISTER sip:example.net")
            .replace("CSeq: 2 INVITE", "CSeq: 2 REGISTER")
    };
    parse(&register("Contact: *\nExpires: 0\n"));
    assert_eq!(parse_err(&register("Contact: *\nExpires: 3600\n")), ParseError::BadContact);
    assert_eq!(parse_err(&register("Contact: *\n")), ParseError::BadContact, "no Expires: 0");
    assert_eq!(parse_err(&register("Contact: *, <sip:alice@10.0.0.5>\nExpires: 0\n")), ParseError::BadContact);
    // Headers in a Request-URI, an empty tag.
    assert_eq!(
        parse_err(&BASE.replacen("sip:bob@example.net", "sip:bob@example.net?Call-ID=evil", 1)),
        ParseError::BadRequestUri
    );
    assert_eq!(parse_err(&base_with(";tag=9fxced76sl", ";tag=")), ParseError::BadFrom);
    // A From without a tag is tolerated (RFC 2543 peers).
    parse(&base_with(";tag=9fxced76sl", ""));
}

//! Rejections: every ParseError a message can trigger, and the 400 path (`parse_for_reply`).

use super::*;

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
        DuplicateCallId,
        DuplicateCSeq,
        DuplicateFrom,
        DuplicateTo,
        DuplicateMaxForwards,
        ControlByte,
        BadCallId,
        BadFrom,
        BadTo,
        BadRequestUri,
        UnsupportedUriScheme,
        MethodTooLong,
        FieldTooLong,
        HeadTooLarge,
        TooManyVias,
        CallIdTooLong,
        BadContact,
        BadExpires,
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

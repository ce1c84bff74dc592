//! Malformed input to the real `sipfront` binary, then a normal SIPp call through it.
//!
//! UDP: each bad datagram is followed by an OPTIONS probe from the same socket. sipfront reads a UDP socket in
//! order and answers on the reading task, so whatever it answers to the bad datagram arrives before the probe's
//! 200: "dropped" is asserted without sleeping, as "nothing before the probe's answer".
//! TCP: a connection that sends something that cannot be framed or parsed is closed, alone; a framed request that
//! is malformed but answerable gets 400 and the connection stays.
//! Test numbers (see tests/common/mod.rs): 60-69.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `400 Bad Request (<reason>)` with `Warning: 399 <host> "<reason>"`.
    BadRequest(&'static str),
    /// Another refusal with the same Warning: 416 Unsupported URI Scheme, 505 Version Not Supported.
    Refused(u16, &'static str),
    /// No answer at all.
    Dropped,
}

/// A well-formed INVITE to sipfront, with `$LOCAL`, `$IP`, `$FRONT`, `$CID` to fill in; cases edit its lines.
const INVITE: &str = "INVITE sip:service@$FRONT SIP/2.0\r\n\
Via: SIP/2.0/UDP $LOCAL;branch=z9hG4bK-$CID;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:tester@$IP>;tag=t-$CID\r\n\
To: <sip:service@$FRONT>\r\n\
Call-ID: $CID\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

/// Deterministic binary junk.
fn junk(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

fn udp_cases(trap: std::net::SocketAddr) -> Vec<(&'static str, Vec<u8>, Expect)> {
    let edit = |from: &str, to: &str| INVITE.replace(from, to).into_bytes();
    let without = |line: &str| INVITE.replace(line, "").into_bytes();
    use Expect::*;
    vec![
        // Malformed, but a request with a usable Via: 400 with the reason.
        ("no Call-ID", without("Call-ID: $CID\r\n"), BadRequest("missing Call-ID")),
        ("CSeq number not a number", edit("CSeq: 1 INVITE", "CSeq: abc INVITE"), BadRequest("missing or bad CSeq")),
        ("CSeq without a method", edit("CSeq: 1 INVITE", "CSeq: 1"), BadRequest("missing or bad CSeq")),
        ("no CSeq", without("CSeq: 1 INVITE\r\n"), BadRequest("missing or bad CSeq")),
        (
            "CSeq method not the request's",
            edit("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            BadRequest("CSeq method does not match request method"),
        ),
        (
            "Content-Length larger than the datagram",
            edit("Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\nContent-Length: 500\r\n\r\nv=0\r\n"),
            BadRequest("Content-Length larger than the message"),
        ),
        (
            "Content-Length not a number",
            edit("Content-Length: 0", "Content-Length: ten"),
            BadRequest("bad Content-Length"),
        ),
        (
            "two different Content-Lengths",
            edit("Content-Length: 0\r\n", "Content-Length: 0\r\nl: 7\r\n"),
            BadRequest("bad Content-Length"),
        ),
        (
            "huge Max-Forwards",
            edit("Max-Forwards: 70", "Max-Forwards: 99999999999999999999"),
            BadRequest("bad Max-Forwards"),
        ),
        (
            "Max-Forwards not a number",
            edit("Max-Forwards: 70", "Max-Forwards: seventy"),
            BadRequest("bad Max-Forwards"),
        ),
        ("no From", without("From: <sip:tester@$IP>;tag=t-$CID\r\n"), BadRequest("missing From")),
        (
            "header line without a colon",
            edit("Max-Forwards: 70", "Max-Forwards 70"),
            BadRequest("malformed header line"),
        ),
        ("no To", without("To: <sip:service@$FRONT>\r\n"), BadRequest("missing To")),
        // Nothing to answer: dropped.
        ("binary garbage", junk(300, 7), Dropped),
        ("binary garbage with CRLFs", [junk(100, 8), b"\r\n\r\n".to_vec(), junk(50, 9)].concat(), Dropped),
        ("text garbage", b"hello sipfront, how are you?\r\n\r\n".to_vec(), Dropped),
        // A broken start line, but the headers to answer from are there.
        ("start line without SIP version", edit(" SIP/2.0\r\nVia", "\r\nVia"), BadRequest("bad start line")),
        (
            "start line with one token",
            edit("INVITE sip:service@$FRONT SIP/2.0", "INVITE"),
            BadRequest("bad start line"),
        ),
        (
            "a name-addr as Request-URI",
            edit("INVITE sip:service@$FRONT SIP/2.0", "INVITE Anonymous <sip:service@$FRONT> SIP/2.0"),
            BadRequest("bad start line"),
        ),
        (
            "unsupported SIP version",
            edit("$FRONT SIP/2.0\r\n", "$FRONT SIP/3.0\r\n"),
            Refused(505, "unsupported SIP version"),
        ),
        ("NUL inside the method", edit("INVITE sip:", "INV\0ITE sip:"), BadRequest("bad start line")),
        // Parseable, but too odd to pass on (sip::sanity).
        (
            "two Call-IDs",
            edit("Call-ID: $CID\r\n", "Call-ID: $CID\r\ni: other-$CID\r\n"),
            BadRequest("more than one Call-ID"),
        ),
        (
            "two Tos",
            edit("To: <sip:service@$FRONT>\r\n", "To: <sip:service@$FRONT>\r\nTo: <sip:other@$FRONT>\r\n"),
            BadRequest("more than one To"),
        ),
        (
            "a lone CR inside a header",
            edit("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nSubject: hi\rX-Smuggled: 1\r\n"),
            BadRequest("control character in the header section"),
        ),
        (
            "a NUL inside a header",
            edit("To: <sip:", "To: \0<sip:"),
            BadRequest("control character in the header section"),
        ),
        ("CSeq 2**31", edit("CSeq: 1 INVITE", "CSeq: 2147483648 INVITE"), BadRequest("missing or bad CSeq")),
        ("From without an address", edit("From: <sip:tester@$IP>", "From: tester"), BadRequest("bad From")),
        (
            "Request-URI without a host",
            edit("INVITE sip:service@$FRONT SIP/2.0", "INVITE sip:service@ SIP/2.0"),
            BadRequest("bad Request-URI"),
        ),
        (
            "http: Request-URI",
            edit("INVITE sip:service@$FRONT SIP/2.0", "INVITE http://$FRONT/ SIP/2.0"),
            Refused(416, "unsupported URI scheme"),
        ),
        ("header section not terminated", edit("Content-Length: 0\r\n\r\n", "Content-Length: 0\r\n"), Dropped),
        ("no Via", without("Via: SIP/2.0/UDP $LOCAL;branch=z9hG4bK-$CID;rport\r\n"), Dropped),
        ("unparseable Via", edit("Via: SIP/2.0/UDP $LOCAL;", "Via: garbage;"), Dropped),
        (
            "malformed ACK (never answered)",
            INVITE.replace("INVITE", "ACK").replace("Call-ID: $CID\r\n", "").into_bytes(),
            Dropped,
        ),
        ("NUL bytes only", vec![0u8; 64], Dropped),
        ("CRLF keep-alive", b"\r\n\r\n".to_vec(), Dropped),
        ("empty datagram", Vec::new(), Dropped),
        (
            "response with a foreign Via",
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {trap};branch=z9hG4bK-foreign\r\n\
                 Via: SIP/2.0/UDP {trap};branch=z9hG4bK-foreign2\r\nFrom: <sip:a@$IP>;tag=1\r\n\
                 To: <sip:b@$IP>;tag=2\r\nCall-ID: $CID\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
            Dropped,
        ),
    ]
}

fn fill(data: &[u8], h: &Harness, local: std::net::SocketAddr, cid: &str) -> Vec<u8> {
    // Binary cases are not UTF-8; only text cases have placeholders.
    match std::str::from_utf8(data) {
        Ok(s) => s
            .replace("$LOCAL", &local.to_string())
            .replace("$IP", &local.ip().to_string())
            .replace("$FRONT", &h.sipfront().to_string())
            .replace("$CID", cid)
            .into_bytes(),
        Err(_) => data.to_vec(),
    }
}

/// What a 400 for a malformed request must look like; the first difference, if any.
fn bad_request_mismatch(h: &Harness, resp: &SipMsg, reason: &str, cid: Option<&str>) -> Option<String> {
    refusal_mismatch(h, resp, 400, reason, cid)
}

/// What our refusal of a malformed or odd request must look like (`code` 400, 416 or 505); the first difference.
fn refusal_mismatch(h: &Harness, resp: &SipMsg, code: u16, reason: &str, cid: Option<&str>) -> Option<String> {
    let warning = format!("399 {} \"{reason}\"", h.front_ip());
    let phrase = match code {
        416 => "Unsupported URI Scheme".to_owned(),
        505 => "Version Not Supported".to_owned(),
        _ => format!("Bad Request ({reason})"),
    };
    if resp.status() != Some(code) || resp.reason() != phrase {
        return Some(format!("expected `{code} {phrase}`, got `{}`", resp.start));
    }
    if resp.header("Warning") != Some(warning.as_str()) {
        return Some(format!("expected `Warning: {warning}`, got {:?}", resp.header("Warning")));
    }
    if cid.is_some() && resp.header("Call-ID") != cid {
        return Some(format!("Call-ID {:?} not echoed: {:?}", cid, resp.header("Call-ID")));
    }
    // sipfront's tag on the To it copies (a request without To gets a 400 without To).
    if reason != "missing To" && !resp.header("To").is_some_and(|t| t.contains(";tag=")) {
        return Some(format!("no To tag: {:?}", resp.header("To")));
    }
    None
}

fn assert_bad_request(h: &Harness, resp: &SipMsg, reason: &str, cid: Option<&str>, case: &str) {
    if let Some(e) = bad_request_mismatch(h, resp, reason, cid) {
        panic!("{case}: {e}\n{resp:#?}");
    }
}

/// One UDP case against what came back before the probe's answer.
fn check_case(
    h: &Harness,
    case: &str,
    expect: Expect,
    cid: &str,
    before: &[(String, Option<SipMsg>)],
) -> Result<(), String> {
    match expect {
        Expect::Dropped if before.is_empty() => Ok(()),
        Expect::Dropped => Err(format!("expected no answer, got:\n{}", raw_list(before))),
        Expect::BadRequest(reason) | Expect::Refused(_, reason) => {
            let code = if let Expect::Refused(code, _) = expect { code } else { 400 };
            let [(raw, parsed)] = before else {
                return Err(format!("expected one {code}, got {}:\n{}", before.len(), raw_list(before)));
            };
            let resp = parsed.as_ref().ok_or_else(|| format!("unparseable answer: {raw:?}"))?;
            let cid = (!case.contains("Call-ID")).then_some(cid);
            match refusal_mismatch(h, resp, code, reason, cid) {
                None => Ok(()),
                Some(e) => Err(format!("{e}\n{raw}")),
            }
        }
    }
}

/// Send `data` to sipfront, then an OPTIONS (Call-ID `probe_cid`) from the same socket, and return everything that
/// came back before the OPTIONS' 200: what sipfront answered to `data` (sipfront reads a UDP socket in order).
fn send_then_probe(
    h: &mut Harness,
    c: &UdpPeer,
    data: &[u8],
    probe_cid: &str,
    case: &str,
) -> Vec<(String, Option<SipMsg>)> {
    c.send(data, h.sipfront());
    c.send(options_to(c.local, h.sipfront(), Tp::Udp, probe_cid).as_bytes(), h.sipfront());
    let mut before = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let Some((d, _)) = c.recv_until(deadline) else {
            panic!("case {case:?}: no answer to the OPTIONS probe after it; sipfront alive: {}", h.sipfront_alive());
        };
        match SipMsg::parse(&d) {
            Some(m) if m.header("Call-ID") == Some(probe_cid) => {
                assert_eq!(m.status(), Some(200), "probe after {case:?}: {m:#?}");
                return before;
            }
            m => before.push((String::from_utf8_lossy(&d).into_owned(), m)),
        }
    }
}

fn raw_list(msgs: &[(String, Option<SipMsg>)]) -> String {
    msgs.iter().map(|(raw, _)| raw.as_str()).collect::<Vec<_>>().join("\n----\n")
}

#[test]
fn malformed_udp_then_a_call() {
    let mut h = Harness::new("malformed_udp_then_a_call", 60);
    let trap = UdpPeer::bind_addr(h.pbx(5999));
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas.xml", Tp::Udp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());

    let mut failures = Vec::new();
    for (i, (case, data, expect)) in udp_cases(trap.local).into_iter().enumerate() {
        let cid = format!("bad-{i}");
        let filled = fill(&data, &h, c.local, &cid);
        let before = send_then_probe(&mut h, &c, &filled, &format!("probe-{i}"), case);
        if let Err(e) = check_case(&h, case, expect, &cid, &before) {
            failures.push(format!("case {case:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} malformed case(s) failed:\n{}", failures.len(), failures.join("\n\n"));
    assert!(trap.recv(Duration::from_millis(100)).is_none(), "a response with a foreign Via must not be relayed");

    // sipfront still carries a normal call, and the PBX saw nothing but that call.
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Udp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);
    let methods: Vec<&str> = uas.received().filter_map(|m| m.method()).collect();
    assert_eq!(methods, ["INVITE", "ACK", "BYE"], "the PBX should see only the good call");
}

/// Whether sipfront closed the connection, within the wait, without sending anything first.
fn assert_closed_silently(c: &mut TcpPeer, what: &str) {
    match c.recv(WAIT) {
        TcpRead::Closed => {}
        other => panic!("{what}: sipfront should close the connection without an answer, got {other:?}"),
    }
}

fn options_ok(c: &mut TcpPeer, h: &Harness, cid: &str, what: &str) {
    c.send(options_to(c.local, h.sipfront(), Tp::Tcp, cid).as_bytes()).unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let m = c.expect_msg(WAIT, what);
    assert_eq!((m.status(), m.header("Call-ID")), (Some(200), Some(cid)), "{what}: {m:#?}");
}

fn tcp_invite(h: &Harness, c: &TcpPeer, cid: &str) -> String {
    INVITE
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace("$LOCAL", &c.local.to_string())
        .replace("$IP", &c.local.ip().to_string())
        .replace("$FRONT", &h.sipfront().to_string())
        .replace("$CID", cid)
}

#[test]
fn malformed_tcp_closes_only_that_connection() {
    let mut h = Harness::new("malformed_tcp_closes_only_that_connection", 61);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas.xml", Tp::Tcp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Tcp));
    // A bystander connection, open the whole time.
    let mut keeper = TcpPeer::connect(h.front_ip(), h.sipfront());
    options_ok(&mut keeper, &h, "keeper-0", "keeper before");

    // Framed and answerable: 400, and the connection stays.
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    let bad = tcp_invite(&h, &c, "tcp-no-cseq").replace("CSeq: 1 INVITE\r\n", "");
    c.send(bad.as_bytes()).expect("send");
    let resp = c.expect_msg(WAIT, "400 over TCP");
    assert_bad_request(&h, &resp, "missing or bad CSeq", Some("tcp-no-cseq"), "TCP request without CSeq");
    options_ok(&mut c, &h, "after-400", "same connection after a 400");
    // A bad start line is answered too when the headers to answer from are there.
    let bad = tcp_invite(&h, &c, "tcp-bad-start").replace(" SIP/2.0\r\nVia", "\r\nVia");
    c.send(bad.as_bytes()).expect("send");
    let resp = c.expect_msg(WAIT, "400 over TCP");
    assert_bad_request(&h, &resp, "bad start line", Some("tcp-bad-start"), "TCP request with a bad start line");
    // Framed but unanswerable (no Via): the framing can no longer be trusted, the connection closes.
    let bad = tcp_invite(&h, &c, "tcp-no-via").replace(" SIP/2.0\r\nVia", "\r\nX-Via");
    c.send(bad.as_bytes()).expect("send");
    assert_closed_silently(&mut c, "a framed message with a bad start line and no Via");

    // No Content-Length on a stream: closed.
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    let bad = tcp_invite(&h, &c, "tcp-no-length").replace("Content-Length: 0\r\n", "");
    c.send(bad.as_bytes()).expect("send");
    assert_closed_silently(&mut c, "a message without Content-Length");

    // Content-Length past max_message_size (65535): closed as soon as the header section is in.
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    let bad = tcp_invite(&h, &c, "tcp-huge-length").replace("Content-Length: 0", "Content-Length: 70000");
    c.send(bad.as_bytes()).expect("send");
    assert_closed_silently(&mut c, "Content-Length 70000");

    // A header section that never ends, past max_message_size: closed.
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    let mut huge = tcp_invite(&h, &c, "tcp-endless").replace("Content-Length: 0\r\n\r\n", "");
    while huge.len() < 70_000 {
        huge.push_str("X-Filler: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    let _ = c.send(huge.as_bytes()); // sipfront may close while this is still being written
    assert_closed_silently(&mut c, "a 70 kB header section");

    // Binary garbage with an empty line in it: no Content-Length, closed.
    let mut c = TcpPeer::connect(h.front_ip(), h.sipfront());
    let _ = c.send(&[junk(200, 3), b"\r\n\r\n".to_vec()].concat());
    assert_closed_silently(&mut c, "binary garbage");

    // The bystander was not affected, and a normal TCP call goes through.
    options_ok(&mut keeper, &h, "keeper-1", "keeper after the others were closed");
    assert!(h.sipfront_alive(), "sipfront died:\n{}", h.front_log_text());
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Tcp));
    uac.assert_ok(1);
    h.wait_sipp(uas).assert_ok(1);
}

/// Replace every `from` in `data` with `to` (the corpus is bytes: some of it is not UTF-8).
fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// The odd-request corpus, `tests/attack/odd/*.sip`: requests that parse, but crashed SIPp 3.6.1 acting as the PBX
/// when sipfront passed them on, or that two parsers read differently (see its README). Injected: each one, over
/// UDP, with a real SIPp UAS as the PBX. Checked: sipfront answers every one itself (400, 416 or 505, with a
/// Warning naming the fault), the PBX receives none of them, and SIPp is still alive afterwards to carry a normal
/// call, the only thing it saw.
#[test]
fn odd_requests_are_answered_here_and_never_reach_the_pbx() {
    let mut h = Harness::new("odd_requests_are_answered_here_and_never_reach_the_pbx", 62);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas.xml", Tp::Udp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), Tp::Udp));
    let c = UdpPeer::bind(h.front_ip());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attack/odd");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/attack/odd")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sip"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the corpus is there: {files:?}");

    let mut failures = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let cid = format!("odd-{i}-{}", h.n);
        let mut data = std::fs::read(path).expect("read a corpus file");
        for (from, to) in [
            ("@PROXY@", h.sipfront().to_string()),
            ("@PBX@", h.pbx(PBX1_PORT).to_string()),
            ("@LOCAL@", c.local.to_string()),
            ("@BRANCH@", format!("z9hG4bK-{cid}")),
            ("@CALLID@", cid.clone()),
        ] {
            data = replace_bytes(&data, from.as_bytes(), to.as_bytes());
        }
        let before = send_then_probe(&mut h, &c, &data, &format!("probe-odd-{i}"), &name);
        let refused = match before.as_slice() {
            [(_, Some(m))] => {
                matches!(m.status(), Some(400 | 416 | 505))
                    && m.header("Warning").is_some_and(|w| w.starts_with(&format!("399 {} ", h.front_ip())))
            }
            _ => false,
        };
        if !refused {
            failures.push(format!("{name}: expected one 400/416/505 with a Warning, got:\n{}", raw_list(&before)));
        }
    }
    assert!(failures.is_empty(), "{} odd request(s) not refused:\n{}", failures.len(), failures.join("\n\n"));

    // The PBX is alive, saw nothing odd, and carries a normal call.
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", Tp::Udp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);
    let methods: Vec<&str> = uas.received().filter_map(|m| m.method()).collect();
    assert_eq!(methods, ["INVITE", "ACK", "BYE"], "the PBX should see only the good call");
}

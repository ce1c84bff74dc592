//! Call flows through the real `sipfront` binary with SIPp on both sides: a caller (UAC) on 127.0.0.N:5090 and a
//! PBX (UAS) on 127.0.1.N:5080, each flow over UDP and over TCP (and the basic call across transports). Each test
//! asserts SIPp's exit code and totals on both sides, and what the PBX and the caller saw of sipfront's rewriting.
//! Test numbers (the N of the addresses, see tests/common/mod.rs): 20-39.

mod common;

use common::*;

/// The Record-Route entries sipfront must add for a caller on `client` and a PBX on `pbx`, top first; `*` stands
/// for the flow token (`;ft=N`) a TCP caller's entry carries, `#` for the dialog token (`;d=HEX`) every entry has.
fn expected_record_route(h: &Harness, client: Tp, pbx: Tp) -> Vec<String> {
    let me = h.sipfront();
    let entry = |tp: Tp, flow: bool| {
        let mut s = format!("<sip:{me}");
        if tp == Tp::Tcp {
            s.push_str(";transport=tcp");
        }
        if flow {
            s.push_str(";ft=*");
        }
        s.push_str(";d=#;lr>");
        s
    };
    if client == Tp::Udp && pbx == Tp::Udp {
        vec![entry(Tp::Udp, false)]
    } else {
        vec![entry(pbx, false), entry(client, client == Tp::Tcp)]
    }
}

/// `pattern` with `*` standing for one or more digits and `#` for one or more hex digits.
fn matches_flow(pattern: &str, value: &str) -> bool {
    let Some(i) = pattern.find(['*', '#']) else { return pattern == value };
    let Some(rest) = value.strip_prefix(&pattern[..i]) else { return false };
    let class = |c: u8| if pattern.as_bytes()[i] == b'*' { c.is_ascii_digit() } else { c.is_ascii_hexdigit() };
    let run = rest.bytes().take_while(|c| class(*c)).count();
    run > 0 && matches_flow(&pattern[i + 1..], &rest[run..])
}

fn assert_record_route(h: &Harness, msg: &SipMsg, client: Tp, pbx: Tp, who: &str) {
    let want = expected_record_route(h, client, pbx);
    let got = msg.header_values("Record-Route");
    assert!(
        got.len() == want.len() && want.iter().zip(&got).all(|(w, g)| matches_flow(w, g)),
        "{who}: Record-Route should be {want:?}, was {got:?}\n{msg:#?}"
    );
}

/// sipfront's Via on top of a request it forwarded to the PBX, and the sender's below it.
fn assert_forwarded_vias(h: &Harness, msg: &SipMsg, pbx: Tp, below: usize, who: &str) {
    let vias = msg.header_values("Via");
    let top = format!("SIP/2.0/{} {};branch=z9hG4bK", pbx.upper(), h.sipfront());
    assert!(vias.first().is_some_and(|v| v.starts_with(&top)), "{who}: top Via should start with {top:?}: {vias:?}");
    assert_eq!(vias.len(), 1 + below, "{who}: Via count: {vias:?}");
}

fn basic_call(name: &str, n: u8, client: Tp, pbx: Tp) {
    let mut h = Harness::new(name, n);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas.xml", pbx, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), pbx));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac.xml", client));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);

    // The caller: 100 from sipfront first, then 180 and 200 with the route set.
    let first = uac.received().next().expect("caller received nothing");
    assert_eq!(first.status(), Some(100), "first answer to the INVITE: {first:#?}");
    assert!(first.header("Server").is_some_and(|s| s == "sipfront"), "100 is sipfront's own: {first:#?}");
    let ok = uac.received().find(|m| m.status() == Some(200) && m.cseq_method() == Some("INVITE")).unwrap();
    assert_record_route(&h, ok, client, pbx, "200 at the caller");
    assert_eq!(ok.header_values("Via").len(), 1, "sipfront's Via must be gone from the 200: {ok:#?}");

    // The PBX: the INVITE with sipfront's Via and Record-Route, Max-Forwards decremented.
    let inv = uas.received_request("INVITE");
    assert_forwarded_vias(&h, inv, pbx, 1, "INVITE at the PBX");
    assert_record_route(&h, inv, client, pbx, "INVITE at the PBX");
    assert_eq!(inv.header("Max-Forwards"), Some("69"), "INVITE at the PBX");
    // ACK and BYE are loose-routed: sipfront pops its own Route entries, the Request-URI is the PBX's Contact.
    for method in ["ACK", "BYE"] {
        let m = uas.received_request(method);
        assert_forwarded_vias(&h, m, pbx, 1, &format!("{method} at the PBX"));
        assert!(m.header("Route").is_none(), "{method} at the PBX still has a Route: {m:#?}");
        let ruri = m.request_uri().unwrap();
        assert!(ruri.starts_with(&format!("sip:{}", h.pbx(PBX1_PORT))), "{method} Request-URI {ruri}");
    }
    let bye_ok = uac.received().find(|m| m.cseq_method() == Some("BYE")).expect("no answer to the BYE");
    assert_eq!(bye_ok.status(), Some(200));
}

#[test]
fn basic_call_udp() {
    basic_call("basic_call_udp", 20, Tp::Udp, Tp::Udp);
}

#[test]
fn basic_call_tcp() {
    basic_call("basic_call_tcp", 21, Tp::Tcp, Tp::Tcp);
}

#[test]
fn basic_call_udp_caller_tcp_pbx() {
    basic_call("basic_call_udp_caller_tcp_pbx", 22, Tp::Udp, Tp::Tcp);
}

#[test]
fn basic_call_tcp_caller_udp_pbx() {
    basic_call("basic_call_tcp_caller_udp_pbx", 23, Tp::Tcp, Tp::Udp);
}

fn cancel_before_answer(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas_cancel.xml", tp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac_cancel.xml", tp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);

    // The caller got 200 for its CANCEL and 487 for its INVITE.
    let codes: Vec<(u16, String)> = uac
        .received()
        .filter(|m| m.status().is_some_and(|c| c >= 200))
        .map(|m| (m.status().unwrap(), m.cseq_method().unwrap_or("").to_string()))
        .collect();
    assert_eq!(codes, [(200, "CANCEL".to_string()), (487, "INVITE".to_string())], "finals at the caller");

    // The PBX got sipfront's own CANCEL: same branch as the INVITE it got, one Via.
    let inv = uas.received_request("INVITE");
    let cancel = uas.received_request("CANCEL");
    let inv_top = inv.header_values("Via")[0].clone();
    assert_eq!(
        cancel.header_values("Via"),
        std::slice::from_ref(&inv_top),
        "CANCEL must carry only sipfront's INVITE Via"
    );
    assert_eq!(cancel.request_uri(), inv.request_uri(), "CANCEL Request-URI");
    // ... and the hop-by-hop ACK for its 487, again on the INVITE's branch.
    let ack = uas.received_request("ACK");
    assert_eq!(ack.header_values("Via"), [inv_top], "ACK for the 487 is sipfront's, on the INVITE's branch");
    assert_eq!(ack.header("CSeq"), Some("1 ACK"));
    assert_answered_once(&uas, 487);
}

/// The PBX sent its final `code` once: sipfront's ACK came before SIPp's first retransmission (500 ms), i.e.
/// sipfront ACKs at once rather than only when the response is retransmitted.
fn assert_answered_once(uas: &SippRun, code: u16) {
    let sent = uas.sent().filter(|m| m.status() == Some(code)).count();
    assert_eq!(sent, 1, "the PBX had to send its {code} {sent} times:\n{}", uas.summary_of_trace());
}

#[test]
fn cancel_before_answer_udp() {
    cancel_before_answer("cancel_before_answer_udp", 24, Tp::Udp);
}

#[test]
fn cancel_before_answer_tcp() {
    cancel_before_answer("cancel_before_answer_tcp", 25, Tp::Tcp);
}

fn busy_relayed(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas_486.xml", tp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac_486.xml", tp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);

    let busy = uac.received().find(|m| m.status() == Some(486)).expect("caller got no 486");
    assert_eq!(busy.reason(), "Busy Here");
    assert_eq!(busy.header_values("Via").len(), 1, "sipfront's Via must be gone from the 486: {busy:#?}");
    // The ACK at the PBX is sipfront's own (hop-by-hop), not the caller's relayed: one Via, sipfront's INVITE
    // branch, the 486's To tag.
    let inv = uas.received_request("INVITE");
    let ack = uas.received_request("ACK");
    assert_eq!(ack.header_values("Via"), [inv.header_values("Via")[0].clone()], "ACK Via");
    let sent_486 = uas.sent().find(|m| m.status() == Some(486)).unwrap();
    assert_eq!(ack.header("To"), sent_486.header("To"), "ACK To must carry the 486's tag");
    assert_eq!(
        uas.received().filter(|m| m.method() == Some("ACK")).count(),
        1,
        "the PBX must get exactly one ACK:\n{}",
        uas.summary_of_trace()
    );
    assert_answered_once(&uas, 486);
}

#[test]
fn busy_486_relayed_udp() {
    busy_relayed("busy_486_relayed_udp", 26, Tp::Udp);
}

#[test]
fn busy_486_relayed_tcp() {
    busy_relayed("busy_486_relayed_tcp", 27, Tp::Tcp);
}

fn reinvite(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas_reinvite.xml", tp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac_reinvite.xml", tp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);

    let invites: Vec<&SipMsg> = uas.received().filter(|m| m.method() == Some("INVITE")).collect();
    assert_eq!(invites.len(), 2, "the PBX should get both INVITEs:\n{}", uas.summary_of_trace());
    let re = invites[1];
    assert_eq!(re.header("CSeq"), Some("2 INVITE"));
    assert!(re.header("Route").is_none(), "sipfront must pop its Route from the re-INVITE: {re:#?}");
    assert!(re.header("Record-Route").is_none(), "a re-INVITE is not record-routed again: {re:#?}");
    assert_forwarded_vias(&h, re, tp, 1, "re-INVITE at the PBX");
    let acks = uas.received().filter(|m| m.method() == Some("ACK")).count();
    assert_eq!(acks, 2, "the PBX should get both ACKs:\n{}", uas.summary_of_trace());
}

#[test]
fn reinvite_in_dialog_udp() {
    reinvite("reinvite_in_dialog_udp", 28, Tp::Udp);
}

#[test]
fn reinvite_in_dialog_tcp() {
    reinvite("reinvite_in_dialog_tcp", 29, Tp::Tcp);
}

fn bye_from_pbx(name: &str, n: u8, tp: Tp) {
    let mut h = Harness::new(name, n);
    let uas = h.start_sipp(SippSpec::uas(&h, "uas", "uas_bye_out.xml", tp, PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("pbx1", h.pbx(PBX1_PORT), tp));
    let uac = h.run_sipp(SippSpec::uac(&h, "uac", "uac_bye_in.xml", tp));
    uac.assert_ok(1);
    let uas = h.wait_sipp(uas);
    uas.assert_ok(1);

    // The PBX sent its BYE to sipfront through the route set...
    let sent = uas.sent().find(|m| m.method() == Some("BYE")).expect("the PBX sent no BYE");
    let routes = sent.header_values("Route");
    assert!(
        !routes.is_empty() && routes.iter().all(|r| r.starts_with(&format!("<sip:{}", h.sipfront()))),
        "the PBX's BYE should be routed through sipfront: {routes:?}"
    );
    // ... and the caller got it with sipfront's Via on top and no Route left.
    let bye = uac.received_request("BYE");
    let vias = bye.header_values("Via");
    assert_eq!(vias.len(), 2, "BYE at the caller: {vias:?}");
    assert!(vias[0].starts_with(&format!("SIP/2.0/{} {};branch=z9hG4bK", tp.upper(), h.sipfront())), "{vias:?}");
    assert!(bye.header("Route").is_none(), "BYE at the caller still has a Route: {bye:#?}");
    let ok = uas.received().find(|m| m.cseq_method() == Some("BYE")).expect("PBX got no answer to its BYE");
    assert_eq!(ok.status(), Some(200));
}

#[test]
fn bye_from_pbx_udp() {
    bye_from_pbx("bye_from_pbx_udp", 30, Tp::Udp);
}

#[test]
fn bye_from_pbx_tcp() {
    bye_from_pbx("bye_from_pbx_tcp", 31, Tp::Tcp);
}

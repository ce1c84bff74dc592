//! The relay attempts of `tests/attack.rs`: requests and responses a stranger sends to make sipfront carry
//! something to a host of the stranger's choosing (the target), each with the answer sipfront must give.

use std::net::SocketAddr;

/// What sipfront must do with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Refuse it itself with this status and a reason containing this text.
    Refused(u16, &'static str),
    /// Send it to the PBX (a new request goes to the PBX whatever its Request-URI says), whose 404 comes back.
    ToPbx,
    /// Drop it without a word (an ACK, a response).
    Silence,
}

/// One attempt: its text, its Call-ID, and what must happen.
pub struct Attempt {
    pub name: &'static str,
    pub text: String,
    pub call_id: String,
    pub want: Want,
}

/// A request with a Via sent-by of the caller's choosing (`via`: forged or true), an optional To tag and extra
/// header lines (each ending in CRLF).
pub fn request(method: &str, ruri: &str, via: &str, tp: &str, cid: &str, to_tag: Option<&str>, extra: &str) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let cseq = if method == "ACK" { "1 ACK".to_string() } else { format!("2 {method}") };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{tp} {via};branch=z9hG4bK-{cid};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:mallory@attacker.invalid>;tag=m-{cid}\r\n\
         To: <{ruri}>{to_tag}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n"
    )
}

/// A 200 OK with sipfront's address in the top Via (`branch`) and the target's in the second: relayed, it would
/// land on the target.
pub fn response_via_us(front: SocketAddr, target: SocketAddr, branch: &str, cid: &str) -> String {
    format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP {front};branch={branch}\r\n\
         Via: SIP/2.0/UDP {target};branch=z9hG4bK-victim;rport\r\n\
         From: <sip:victim@{target}>;tag=v-{cid}\r\n\
         To: <sip:mallory@{front}>;tag=m-{cid}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Every UDP attempt from `local` (the attacker) at sipfront `front`, the PBX at `pbx`, aimed at `target`.
pub fn attempts(local: SocketAddr, front: SocketAddr, pbx: SocketAddr, target: SocketAddr) -> Vec<Attempt> {
    let ruri = format!("sip:victim@{target}");
    let me = local.to_string();
    let pbx = pbx.to_string();
    let ours = format!("Route: <sip:{front};lr>\r\n");
    let mut out = Vec::new();
    let mut add = |name: &'static str, want: Want, text: &dyn Fn(&str) -> String| {
        let call_id = format!("relay-{name}");
        out.push(Attempt { name, text: text(&call_id), call_id, want });
    };
    let not_relay = Want::Refused(403, "not a relay");
    let no_dialog = Want::Refused(481, "");
    add("route_to_target", not_relay, &|c| {
        request("INVITE", &ruri, &me, "UDP", c, None, &format!("Route: <sip:{target};lr>\r\n"))
    });
    add("our_route_then_target", not_relay, &|c| {
        request("INVITE", &ruri, &me, "UDP", c, None, &format!("Route: <sip:{front};lr>, <sip:{target};lr>\r\n"))
    });
    add("route_by_host_name", Want::Refused(403, "host names are not resolved"), &|c| {
        request("MESSAGE", &ruri, &me, "UDP", c, None, "Route: <sip:relay.attacker.invalid;lr>\r\n")
    });
    add("our_route_without_token_in_dialog", no_dialog, &|c| request("BYE", &ruri, &me, "UDP", c, Some("x1"), &ours));
    add("our_route_without_token_new_request", Want::ToPbx, &|c| request("MESSAGE", &ruri, &me, "UDP", c, None, &ours));
    add("forged_route_token", Want::Refused(403, "bad route token"), &|c| {
        let route = format!("Route: <sip:{front};lr;d=AAAAAAAAAAAAAAAAAAAAAAAA>\r\n");
        request("BYE", &ruri, &me, "UDP", c, Some("x1"), &route)
    });
    add("made_up_to_tag_bye", no_dialog, &|c| request("BYE", &ruri, &me, "UDP", c, Some("x2"), ""));
    add("made_up_to_tag_reinvite", no_dialog, &|c| request("INVITE", &ruri, &me, "UDP", c, Some("x3"), ""));
    add("forged_pbx_via_in_dialog", no_dialog, &|c| request("BYE", &ruri, &pbx, "UDP", c, Some("x4"), ""));
    add("forged_pbx_via_new_request", Want::ToPbx, &|c| request("MESSAGE", &ruri, &pbx, "UDP", c, None, ""));
    add("ack_made_up_to_tag", Want::Silence, &|c| request("ACK", &ruri, &me, "UDP", c, Some("x5"), ""));
    add("ack_route_to_target", Want::Silence, &|c| {
        request("ACK", &ruri, &me, "UDP", c, Some("x6"), &format!("Route: <sip:{target};lr>\r\n"))
    });
    add("response_forged_branch", Want::Silence, &|c| response_via_us(front, target, "z9hG4bK-forged", c));
    // Shaped like sipfront's own branches (loop hash, dot, 16 hex digits) but not made by it.
    add("response_lookalike_branch", Want::Silence, &|c| {
        response_via_us(front, target, "z9hG4bK0badc0de.0123456789abcdef", c)
    });
    out
}

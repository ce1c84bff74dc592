//! The requests the call generator sends inside a call: the dialog a 200 creates, ACK and BYE in it (to the
//! Contact, through the Record-Route set reversed), and the ACK of a non-2xx answer. Pure text, no state.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::{parse_name_addr, HeaderName, Message};

/// The dialog as the 200 made it.
#[derive(Default)]
pub(super) struct Dialog {
    /// The To header value, with the PBX's tag.
    to: String,
    /// The 200's Contact URI.
    target: String,
    /// The Record-Route set, reversed.
    route: Vec<String>,
}

impl Dialog {
    pub(super) fn from_ok(ok: &Message) -> Dialog {
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        let to = ok.header(HeaderName::To).map(text).unwrap_or_default();
        let target = ok
            .header_values(HeaderName::Contact)
            .next()
            .and_then(parse_name_addr)
            .map(|na| text(na.uri))
            .unwrap_or_default();
        let mut route: Vec<String> = ok.header_values(HeaderName::RecordRoute).map(text).collect();
        route.reverse();
        Dialog { to, target, route }
    }
}

/// An in-dialog request (ACK or BYE): to the Contact, through the route set.
fn in_dialog(method: &str, cseq: u32, local: SocketAddr, id: &str, from_tag: &str, d: &Dialog, branch: &str) -> Bytes {
    let mut s = format!("{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n", d.target);
    for r in &d.route {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:caller@{ip}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {id}\r\n\
         CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        ip = local.ip(),
        to = d.to
    ));
    Bytes::from(s)
}

pub(super) fn ack(local: SocketAddr, id: &str, from_tag: &str, d: &Dialog, branch: &str) -> Bytes {
    in_dialog("ACK", 1, local, id, from_tag, d, branch)
}

pub(super) fn bye(local: SocketAddr, id: &str, from_tag: &str, d: &Dialog, branch: &str) -> Bytes {
    in_dialog("BYE", 2, local, id, from_tag, d, branch)
}

/// The ACK of a non-2xx final answer (RFC 3261 §17.1.1.3): the INVITE's Request-URI, Via and From, the answer's
/// To (with its tag).
pub(super) fn non_2xx_ack(invite: &Bytes, answer: &Message, branch: &str) -> Bytes {
    let Ok(inv) = Message::parse(invite.clone()) else { return Bytes::new() };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let via = inv.header_values(HeaderName::Via).next().map(text).unwrap_or_default();
    debug_assert!(via.contains(branch));
    Bytes::from(format!(
        "ACK {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        text(inv.request_uri()),
        inv.header(HeaderName::From).map(text).unwrap_or_default(),
        answer.header(HeaderName::To).map(text).unwrap_or_default(),
        text(inv.call_id()),
        inv.cseq()
    ))
}

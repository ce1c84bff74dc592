//! The UAC's requests as bytes (INVITE, ACK, BYE) and the dialog a 2xx to the INVITE sets up. Pure code: no I/O.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use sipfront::sip::{parse_name_addr, HeaderName, Message};

/// An SDP offer the size of SIPp's built-in `uac` one, so messages weigh what the shared bench's do.
pub const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// Where one call's requests leave from and go to.
pub struct Leg {
    /// `UDP` or `TLS`, as written in Via.
    pub via_transport: &'static str,
    /// `;transport=tls` for URIs, or empty.
    pub uri_param: &'static str,
    pub local: SocketAddr,
    pub proxy: SocketAddr,
}

/// What identifies one call.
pub struct CallIds {
    pub call_id: String,
    pub from_tag: String,
}

/// The dialog as the 2xx to the INVITE left it: remote target, route set, To with the UAS's tag.
pub struct Dialog {
    pub to: Vec<u8>,
    pub target: Vec<u8>,
    pub route: Vec<Vec<u8>>,
}

impl Dialog {
    /// From a 2xx to our INVITE: the route set is its Record-Route reversed (RFC 3261 12.1.2).
    pub fn from_2xx(m: &Message) -> Option<Dialog> {
        let to = m.header(HeaderName::To)?.to_vec();
        let target = parse_name_addr(m.header(HeaderName::Contact)?)?.uri.to_vec();
        let mut route: Vec<Vec<u8>> = m.header_values(HeaderName::RecordRoute).map(<[u8]>::to_vec).collect();
        route.reverse();
        Some(Dialog { to, target, route })
    }
}

fn head(out: &mut Vec<u8>, leg: &Leg, ids: &CallIds, branch: &str) {
    let _ = write!(
        Text(out),
        "Via: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:sipload@{}>;tag={}\r\nCall-ID: {}\r\n",
        leg.via_transport,
        leg.local,
        leg.local.ip(),
        ids.from_tag,
        ids.call_id
    );
}

fn finish(mut out: Vec<u8>, body: &str) -> Bytes {
    let _ = write!(Text(&mut out), "Content-Length: {}\r\n\r\n{body}", body.len());
    Bytes::from(out)
}

pub fn invite(leg: &Leg, ids: &CallIds, branch: &str) -> Bytes {
    let mut out = Vec::with_capacity(640);
    let _ = write!(Text(&mut out), "INVITE sip:service@{}{} SIP/2.0\r\n", leg.proxy, leg.uri_param);
    head(&mut out, leg, ids, branch);
    let _ = write!(
        Text(&mut out),
        "To: <sip:service@{}>\r\nCSeq: 1 INVITE\r\nContact: <sip:sipload@{}{}>\r\n\
         Subject: sipload\r\nContent-Type: application/sdp\r\n",
        leg.proxy,
        leg.local,
        leg.uri_param
    );
    finish(out, SDP)
}

/// An in-dialog request (ACK for the 2xx, or BYE) along the route set.
pub fn in_dialog(leg: &Leg, ids: &CallIds, dialog: &Dialog, method: &str, cseq: u32, branch: &str) -> Bytes {
    let mut out = Vec::with_capacity(640);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&dialog.target);
    out.extend_from_slice(b" SIP/2.0\r\n");
    head(&mut out, leg, ids, branch);
    for r in &dialog.route {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(r);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"To: ");
    out.extend_from_slice(&dialog.to);
    let _ = write!(Text(&mut out), "\r\nCSeq: {cseq} {method}\r\n");
    finish(out, "")
}

/// The ACK to a non-2xx final response: hop by hop, same branch as the INVITE, To from the response.
pub fn ack_non2xx(leg: &Leg, ids: &CallIds, response: &Message, branch: &str) -> Bytes {
    let mut out = Vec::with_capacity(400);
    let _ = write!(Text(&mut out), "ACK sip:service@{}{} SIP/2.0\r\n", leg.proxy, leg.uri_param);
    head(&mut out, leg, ids, branch);
    out.extend_from_slice(b"To: ");
    out.extend_from_slice(response.header(HeaderName::To).unwrap_or(b"<sip:service@invalid>"));
    out.extend_from_slice(b"\r\nCSeq: 1 ACK\r\n");
    finish(out, "")
}

/// `write!` into a byte vector.
pub struct Text<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

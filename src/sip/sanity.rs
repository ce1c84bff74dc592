//! What a message must be before it is passed on, beyond what the parser needs to index it: the checks of
//! Kamailio's `sanity` module that matter to the peer behind us. A message that parses but breaks one of these
//! rules is odd in a way a real PBX may trip over (SIPp 3.6.1 as a UAS crashes on several, see
//! `tests/attack/odd/README.md`), or ambiguous in a way two parsers read differently: two Call-IDs, a lone CR
//! that one parser ends a line at and another does not. Such a request is answered by us (400, or 416 for a
//! Request-URI scheme we do not route) and never forwarded; such a response is dropped and counted.
//!
//! Run by [`Message::parse`] after the structural checks, on every message; pure code over the indexed message.

use super::error::ParseError;
use super::header::HeaderName;
use super::message::{Message, StartLine};
use super::values::{parse_name_addr, SipUri};

/// Header fields a message carries at most once (RFC 3261 §7.3.1, §20), with the error for a second one.
/// Content-Length is checked by the parser itself (two equal values are tolerated there).
const SINGLE: [(HeaderName, ParseError); 5] = [
    (HeaderName::CallId, ParseError::DuplicateCallId),
    (HeaderName::CSeq, ParseError::DuplicateCSeq),
    (HeaderName::From, ParseError::DuplicateFrom),
    (HeaderName::To, ParseError::DuplicateTo),
    (HeaderName::MaxForwards, ParseError::DuplicateMaxForwards),
];

/// Every rule, in the order a reader would check them; the first one broken.
pub(super) fn check(msg: &Message, head: &[u8]) -> Result<(), ParseError> {
    control_bytes(head)?;
    let mut seen = [false; SINGLE.len()];
    for f in msg.fields() {
        if let Some(i) = SINGLE.iter().position(|(n, _)| *n == f.name) {
            if std::mem::replace(&mut seen[i], true) {
                return Err(SINGLE[i].1);
            }
        }
    }
    // CSeq numbers are below 2**31 (RFC 3261 §8.1.1.5).
    if msg.cseq() >= 1 << 31 {
        return Err(ParseError::BadCSeq);
    }
    call_id(msg.call_id())?;
    address(msg, HeaderName::From, ParseError::BadFrom)?;
    address(msg, HeaderName::To, ParseError::BadTo)?;
    if let StartLine::Request { .. } = msg.start_line() {
        request_uri(msg.request_uri())?;
    }
    Ok(())
}

/// No control byte in the start line or the header section but HTAB, and CR only as the first half of a CRLF
/// (a lone CR ends a line for some parsers and not for others: a header smuggled past us). Bytes from 0x80 are
/// UTF-8 text and allowed.
fn control_bytes(head: &[u8]) -> Result<(), ParseError> {
    if head.iter().any(|&c| (c < 0x20 && !matches!(c, b'\t' | b'\r' | b'\n')) || c == 0x7f) {
        return Err(ParseError::ControlByte);
    }
    if memchr::memchr_iter(b'\r', head).any(|i| head.get(i + 1) != Some(&b'\n')) {
        return Err(ParseError::ControlByte);
    }
    Ok(())
}

/// A Call-ID is one word, or two joined by `@` (RFC 3261 §25.1 `callid`): not empty, no whitespace.
fn call_id(v: &[u8]) -> Result<(), ParseError> {
    if v.is_empty() {
        return Err(ParseError::MissingCallId);
    }
    if v.iter().any(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n')) {
        return Err(ParseError::BadCallId);
    }
    Ok(())
}

/// From and To name an address: a URI with a scheme, readable as a SIP URI when it says it is one.
fn address(msg: &Message, name: HeaderName, err: ParseError) -> Result<(), ParseError> {
    let Some(v) = msg.header(name) else { return Ok(()) };
    let na = parse_name_addr(v).ok_or(err)?;
    match scheme(na.uri) {
        Some(Scheme::Sip) if SipUri::parse(na.uri).is_none() => Err(err),
        Some(_) => Ok(()),
        None => Err(err),
    }
}

/// The Request-URI schemes sipfront routes: SIP and SIPS, `tel:` (RFC 3966, what phones dial) and `urn:`
/// (RFC 5031 `urn:service:sos`: an emergency call is never refused for its scheme). Anything else gets 416
/// (RFC 3261 §16.3 step 2).
fn request_uri(uri: &[u8]) -> Result<(), ParseError> {
    match scheme(uri) {
        Some(Scheme::Sip) => SipUri::parse(uri).map(|_| ()).ok_or(ParseError::BadRequestUri),
        Some(Scheme::TelOrUrn) => Ok(()),
        Some(Scheme::Other) => Err(ParseError::UnsupportedUriScheme),
        None => Err(ParseError::BadRequestUri),
    }
}

enum Scheme {
    Sip,
    TelOrUrn,
    Other,
}

/// The scheme of an absolute URI with something after the colon; `None` when it has none.
fn scheme(uri: &[u8]) -> Option<Scheme> {
    let colon = memchr::memchr(b':', uri)?;
    let (s, rest) = (&uri[..colon], &uri[colon + 1..]);
    // RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    let well_formed = s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c));
    if !well_formed || rest.is_empty() {
        return None;
    }
    Some(if s.eq_ignore_ascii_case(b"sip") || s.eq_ignore_ascii_case(b"sips") {
        Scheme::Sip
    } else if s.eq_ignore_ascii_case(b"tel") || s.eq_ignore_ascii_case(b"urn") {
        Scheme::TelOrUrn
    } else {
        Scheme::Other
    })
}

//! What a message must be before it is passed on, beyond what the parser needs to index it: the checks of
//! Kamailio's `sanity` module that matter to the peer behind us. A message that parses but breaks one of these
//! rules is odd in a way a real PBX may trip over (SIPp 3.6.1 as a UAS crashes on several, see
//! `tests/attack/odd/README.md`), or ambiguous in a way two parsers read differently: two Call-IDs, a lone CR
//! that one parser ends a line at and another does not. Such a request is answered by us (400, or 416 for a
//! Request-URI scheme we do not route) and never forwarded; such a response is dropped and counted.
//!
//! Besides the grammar, sizes: nothing in SIP's grammar bounds a method name or a header value, and SIPp 3.6.1
//! copies header values into a 20,490-byte buffer (a 22 KB To, or 500 Vias read together, crash it) and gives up
//! on a method of 64 characters. The bounds here are far above anything a phone or PBX sends and far below that.
//!
//! Run by [`Message::parse`] after the structural checks, on every message; pure code over the indexed message.

use super::error::ParseError;
use super::header::HeaderName;
use super::message::{Message, StartLine};
use super::method::Method;
use super::values::{find_param, parse_name_addr, SipUri};

/// Header fields a message carries at most once (RFC 3261 §7.3.1, §20), with the error for a second one.
/// Content-Length is checked by the parser itself (two equal values are tolerated there).
const SINGLE: [(HeaderName, ParseError); 5] = [
    (HeaderName::CallId, ParseError::DuplicateCallId),
    (HeaderName::CSeq, ParseError::DuplicateCSeq),
    (HeaderName::From, ParseError::DuplicateFrom),
    (HeaderName::To, ParseError::DuplicateTo),
    (HeaderName::MaxForwards, ParseError::DuplicateMaxForwards),
];

/// Longest method name (the longest standard one, SUBSCRIBE, has 9 characters).
pub const MAX_METHOD: usize = 32;
/// Longest header field line, folded continuations included.
pub const MAX_FIELD: usize = 8 * 1024;
/// Longest start line plus header section.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most Via values: a request that has passed more hops than Max-Forwards' usual 70 is looping.
pub const MAX_VIAS: usize = 70;
/// Longest Call-ID (they are 20 to 100 characters in practice).
pub const MAX_CALL_ID: usize = 256;

/// Every rule, in the order a reader would check them; the first one broken.
pub(super) fn check(msg: &Message, head: &[u8]) -> Result<(), ParseError> {
    if head.len() > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    if msg.fields().any(|f| (f.line_end - f.line_start) as usize > MAX_FIELD) {
        return Err(ParseError::FieldTooLong);
    }
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
    if msg.header_values(HeaderName::Via).nth(MAX_VIAS).is_some() {
        return Err(ParseError::TooManyVias);
    }
    // Max-Forwards is 0 to 255 (RFC 3261 §20.22).
    if msg.max_forwards().is_some_and(|n| n > 255) {
        return Err(ParseError::BadMaxForwards);
    }
    call_id(msg.call_id())?;
    address(msg, HeaderName::From, ParseError::BadFrom)?;
    address(msg, HeaderName::To, ParseError::BadTo)?;
    if let StartLine::Request { .. } = msg.start_line() {
        if msg.method_bytes().len() > MAX_METHOD {
            return Err(ParseError::MethodTooLong);
        }
        request_uri(msg.request_uri())?;
        // Every RFC 3261 client sends a branch; the transaction is found by it (§8.1.1.7, §17.2.3).
        if msg.top_via().and_then(|v| v.branch()).is_none() {
            return Err(ParseError::BadVia);
        }
        contacts(msg)?;
        expires(msg)?;
    }
    Ok(())
}

/// Contact values are addresses, or a lone `*` (a REGISTER removing every binding: with `Expires: 0` and
/// nothing else, RFC 3261 §10.3 step 6).
fn contacts(msg: &Message) -> Result<(), ParseError> {
    let mut star = false;
    let mut n = 0;
    for v in msg.header_values(HeaderName::Contact) {
        n += 1;
        if v == b"*" {
            star = true;
            continue;
        }
        let na = parse_name_addr(v).ok_or(ParseError::BadContact)?;
        match scheme(na.uri) {
            Some(Scheme::Sip) if SipUri::parse(na.uri).is_none() => return Err(ParseError::BadContact),
            Some(_) => {}
            None => return Err(ParseError::BadContact),
        }
    }
    if star {
        let expires_zero = msg.header_value_named(b"Expires").is_some_and(|e| e.iter().all(|c| *c == b'0'));
        if n > 1 || !expires_zero || msg.method() != Some(Method::Register) {
            return Err(ParseError::BadContact);
        }
    }
    Ok(())
}

/// `Expires` is delta-seconds (RFC 3261 §20.19): digits only.
fn expires(msg: &Message) -> Result<(), ParseError> {
    match msg.header_value_named(b"Expires") {
        Some(v) if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) => Err(ParseError::BadExpires),
        _ => Ok(()),
    }
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
    if v.len() > MAX_CALL_ID {
        return Err(ParseError::CallIdTooLong);
    }
    if v.iter().any(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n')) {
        return Err(ParseError::BadCallId);
    }
    Ok(())
}

/// From and To name an address: a URI with a scheme, readable as a SIP URI when it says it is one, and a tag
/// when there is one is not empty. (A From without a tag is tolerated: RFC 2543 peers send none.)
fn address(msg: &Message, name: HeaderName, err: ParseError) -> Result<(), ParseError> {
    let Some(v) = msg.header(name) else { return Ok(()) };
    let na = parse_name_addr(v).ok_or(err)?;
    if find_param(na.params, "tag").is_some_and(<[u8]>::is_empty) {
        return Err(err);
    }
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
        // Headers (`?Call-ID=...`) are not allowed in a Request-URI (RFC 3261 §19.1.5, Table 1).
        Some(Scheme::Sip) if uri.contains(&b'?') => Err(ParseError::BadRequestUri),
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

//! Readers for the header values routing needs: Via, name-addr (From/To/Route/Record-Route/Contact), SIP URIs and
//! `;name=value` parameters. Each borrows from the message; nothing allocates.

use std::net::IpAddr;

/// Split a header value into its comma-separated items (when `list`), honouring quotes and `<...>`.
/// Folded lines (CRLF + whitespace) inside an item are treated as whitespace by the readers below.
pub(crate) fn split_list(v: &[u8], list: bool) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(v);
    std::iter::from_fn(move || loop {
        let cur = rest?;
        if !list {
            rest = None;
            let t = trim(cur);
            return if t.is_empty() { None } else { Some(t) };
        }
        let mut in_quote = false;
        let mut in_angle = false;
        let mut i = 0;
        let mut cut = None;
        while i < cur.len() {
            match cur[i] {
                b'\\' if in_quote => i += 1,
                b'"' => in_quote = !in_quote,
                b'<' if !in_quote => in_angle = true,
                b'>' if !in_quote => in_angle = false,
                b',' if !in_quote && !in_angle => {
                    cut = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let item = match cut {
            Some(c) => {
                rest = Some(&cur[c + 1..]);
                &cur[..c]
            }
            None => {
                rest = None;
                cur
            }
        };
        let t = trim(item);
        if !t.is_empty() {
            return Some(t);
        }
    })
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if is_ws(*first) {
            v = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = v {
        if is_ws(*last) {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Find `;name=value` (or a bare `;name`, giving an empty value) in a parameter list, case-insensitive name.
pub fn find_param<'a>(params: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut quoted = false;
    let mut start = None;
    let mut i = 0;
    while i <= params.len() {
        let c = params.get(i).copied();
        if c == Some(b'"') {
            quoted = !quoted;
        }
        if c.is_none() || (c == Some(b';') && !quoted) {
            if let Some(s) = start {
                let seg = trim(&params[s..i]);
                let (n, v) = match seg.iter().position(|c| *c == b'=') {
                    Some(eq) => (trim(&seg[..eq]), trim(&seg[eq + 1..])),
                    None => (seg, &seg[seg.len()..]),
                };
                if n.eq_ignore_ascii_case(name.as_bytes()) {
                    return Some(v);
                }
            }
            start = Some(i + 1);
        }
        i += 1;
    }
    None
}

/// The `tag` parameter of a From/To value.
pub(crate) fn tag_param(v: &[u8]) -> Option<&[u8]> {
    let na = parse_name_addr(v)?;
    find_param(na.params, "tag").filter(|t| !t.is_empty())
}

/// The transport token of a Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViaTransport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    Sctp,
    Other,
}

impl ViaTransport {
    fn from_bytes(b: &[u8]) -> ViaTransport {
        if b.eq_ignore_ascii_case(b"UDP") {
            ViaTransport::Udp
        } else if b.eq_ignore_ascii_case(b"TCP") {
            ViaTransport::Tcp
        } else if b.eq_ignore_ascii_case(b"TLS") {
            ViaTransport::Tls
        } else if b.eq_ignore_ascii_case(b"WS") {
            ViaTransport::Ws
        } else if b.eq_ignore_ascii_case(b"WSS") {
            ViaTransport::Wss
        } else if b.eq_ignore_ascii_case(b"SCTP") {
            ViaTransport::Sctp
        } else {
            ViaTransport::Other
        }
    }
}

/// A host and optional port, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// Host without IPv6 brackets.
    pub host: &'a [u8],
    pub port: Option<u16>,
}

impl HostPort<'_> {
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        std::str::from_utf8(self.host).ok()?.parse().ok()
    }
}

fn parse_host_port(b: &[u8]) -> Option<HostPort<'_>> {
    let b = trim(b);
    if b.is_empty() {
        return None;
    }
    if b[0] == b'[' {
        let close = b.iter().position(|c| *c == b']')?;
        let host = &b[1..close];
        let rest = &b[close + 1..];
        let port = match rest {
            [] => None,
            [b':', p @ ..] => Some(parse_port(p)?),
            _ => return None,
        };
        return Some(HostPort { host, port });
    }
    match b.iter().position(|c| *c == b':') {
        Some(c) => Some(HostPort { host: &b[..c], port: Some(parse_port(&b[c + 1..])?) }),
        None => Some(HostPort { host: b, port: None }),
    }
    .filter(|hp| !hp.host.is_empty() && hp.host.iter().all(|c| c.is_ascii_alphanumeric() || b".-_:".contains(c)))
}

fn parse_port(p: &[u8]) -> Option<u16> {
    let p = trim(p);
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(p).ok()?.parse().ok()
}

/// One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    /// The whole value, as written.
    pub raw: &'a [u8],
    pub transport: ViaTransport,
    pub sent_by: HostPort<'a>,
    /// The raw `host[:port]` text (for transaction keys).
    pub sent_by_raw: &'a [u8],
    /// Everything from the first `;` (empty when there are no parameters).
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// Parse one Via value (as returned by `Message::header_values(Via)`).
    pub fn parse(raw: &'a [u8]) -> Option<Via<'a>> {
        let v = trim(raw);
        // sent-protocol: SIP / 2.0 / transport, whitespace allowed around the slashes.
        let mut parts = 0;
        let mut i = 0;
        let mut tstart = 0;
        while i < v.len() && parts < 2 {
            if v[i] == b'/' {
                parts += 1;
                tstart = i + 1;
            }
            i += 1;
        }
        if parts < 2 {
            return None;
        }
        let proto = &v[..tstart];
        let proto_clean: [u8; 8] = {
            let mut out = [0u8; 8];
            let mut n = 0;
            for &c in proto {
                if !is_ws(c) {
                    if n == 8 {
                        return None;
                    }
                    out[n] = c.to_ascii_uppercase();
                    n += 1;
                }
            }
            if n != 8 {
                return None;
            }
            out
        };
        if &proto_clean != b"SIP/2.0/" {
            return None;
        }
        let mut j = tstart;
        while j < v.len() && is_ws(v[j]) {
            j += 1;
        }
        let ts = j;
        while j < v.len() && !is_ws(v[j]) && v[j] != b';' {
            j += 1;
        }
        let transport = ViaTransport::from_bytes(&v[ts..j]);
        if ts == j {
            return None;
        }
        let rest = &v[j..];
        let semi = rest.iter().position(|c| *c == b';').unwrap_or(rest.len());
        let sent_by_raw = trim(&rest[..semi]);
        let sent_by = parse_host_port(sent_by_raw)?;
        Some(Via { raw: v, transport, sent_by, sent_by_raw, params: &rest[semi..] })
    }

    pub fn branch(&self) -> Option<&'a [u8]> {
        find_param(self.params, "branch").filter(|b| !b.is_empty())
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        find_param(self.params, "received").filter(|b| !b.is_empty())
    }

    /// `Some(None)` for a bare `;rport` (the client asks for it), `Some(Some(p))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        find_param(self.params, "rport").map(|v| if v.is_empty() { None } else { parse_port(v) })
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch().is_some_and(|b| b.len() > 7 && b[..7].eq_ignore_ascii_case(b"z9hG4bK"))
    }
}

/// A name-addr or addr-spec with its header parameters: `"Bob" <sip:bob@host>;tag=x` or `sip:bob@host;tag=x`.
#[derive(Debug, Clone, Copy)]
pub struct NameAddr<'a> {
    pub uri: &'a [u8],
    /// Header parameters after the URI (for a bare addr-spec: everything from the first `;`).
    pub params: &'a [u8],
}

/// Parse a name-addr / addr-spec value.
pub fn parse_name_addr(v: &[u8]) -> Option<NameAddr<'_>> {
    let v = trim(v);
    // Skip a quoted display name, which may contain '<'.
    let mut i = 0;
    let mut quoted = false;
    while i < v.len() {
        match v[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => {
                let close = i + v[i..].iter().position(|c| *c == b'>')?;
                return Some(NameAddr { uri: trim(&v[i + 1..close]), params: &v[close + 1..] });
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return None;
    }
    // addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10).
    let semi = v.iter().position(|c| *c == b';').unwrap_or(v.len());
    let uri = trim(&v[..semi]);
    if uri.is_empty() {
        return None;
    }
    Some(NameAddr { uri, params: &v[semi..] })
}

/// A SIP/SIPS URI split into the parts routing uses.
#[derive(Debug, Clone, Copy)]
pub struct SipUri<'a> {
    pub sips: bool,
    pub user: Option<&'a [u8]>,
    pub host_port: HostPort<'a>,
    /// URI parameters (from the first `;` after the host, up to `?`).
    pub params: &'a [u8],
}

impl<'a> SipUri<'a> {
    pub fn parse(uri: &'a [u8]) -> Option<SipUri<'a>> {
        let uri = trim(uri);
        let (sips, rest) = if uri.len() >= 4 && uri[..4].eq_ignore_ascii_case(b"sip:") {
            (false, &uri[4..])
        } else if uri.len() >= 5 && uri[..5].eq_ignore_ascii_case(b"sips:") {
            (true, &uri[5..])
        } else {
            return None;
        };
        let end = rest.iter().position(|c| *c == b'?').unwrap_or(rest.len());
        let rest = &rest[..end];
        let (user, hostpart) = match rest.iter().rposition(|c| *c == b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let semi = hostpart.iter().position(|c| *c == b';').unwrap_or(hostpart.len());
        let host_port = parse_host_port(&hostpart[..semi])?;
        Some(SipUri { sips, user, host_port, params: &hostpart[semi..] })
    }

    /// The `transport` URI parameter, lower-cased comparison left to the caller.
    pub fn transport(&self) -> Option<&'a [u8]> {
        find_param(self.params, "transport")
    }

    /// Whether the URI carries `;lr` (loose routing).
    pub fn is_loose(&self) -> bool {
        find_param(self.params, "lr").is_some()
    }
}

/// Convenience: host and port of a SIP URI.
pub fn parse_uri_host_port(uri: &[u8]) -> Option<HostPort<'_>> {
    SipUri::parse(uri).map(|u| u.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_params_and_ws() {
        let v = Via::parse(b"SIP / 2.0 / UDP 10.0.0.1:5070 ;branch=z9hG4bK77;rport;received=1.2.3.4").unwrap();
        assert_eq!(v.transport, ViaTransport::Udp);
        assert_eq!(v.sent_by.host, b"10.0.0.1");
        assert_eq!(v.sent_by.port, Some(5070));
        assert_eq!(v.branch(), Some(&b"z9hG4bK77"[..]));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some(&b"1.2.3.4"[..]));
        assert!(v.is_rfc3261());
    }

    #[test]
    fn via_ipv6_and_bad() {
        let v = Via::parse(b"SIP/2.0/TCP [::1]:5060;branch=z9hG4bKx").unwrap();
        assert_eq!(v.sent_by.host, b"::1");
        assert_eq!(v.transport, ViaTransport::Tcp);
        assert!(Via::parse(b"SIP/2.0 host").is_none());
        assert!(Via::parse(b"SIP/3.0/UDP host").is_none());
        assert!(Via::parse(b"SIP/2.0/UDP ho st;branch=1").is_none());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999").is_none());
    }

    #[test]
    fn list_split_respects_quotes_and_angles() {
        let items: Vec<_> = split_list(b"\"a,b\" <sip:x;p=1,2>, <sip:y> ,", true).collect();
        assert_eq!(items, vec![&b"\"a,b\" <sip:x;p=1,2>"[..], &b"<sip:y>"[..]]);
    }

    #[test]
    fn name_addr_forms() {
        let na = parse_name_addr(b"\"Bob <x>\" <sip:bob@h;transport=tcp>;tag=abc").unwrap();
        assert_eq!(na.uri, b"sip:bob@h;transport=tcp");
        assert_eq!(find_param(na.params, "tag"), Some(&b"abc"[..]));
        let na = parse_name_addr(b"sip:bob@h;tag=z").unwrap();
        assert_eq!(na.uri, b"sip:bob@h");
        assert_eq!(tag_param(b"sip:bob@h;tag=z"), Some(&b"z"[..]));
        assert_eq!(tag_param(b"<sip:bob@h>"), None);
    }

    #[test]
    fn sip_uri_parts() {
        let u = SipUri::parse(b"sip:alice@[2001:db8::1]:5070;transport=TCP;lr?subject=x").unwrap();
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host_port.port, Some(5070));
        assert_eq!(u.transport(), Some(&b"TCP"[..]));
        assert!(u.is_loose());
        assert!(SipUri::parse(b"tel:+123").is_none());
        assert_eq!(parse_uri_host_port(b"sip:127.0.0.1").unwrap().ip(), Some("127.0.0.1".parse().unwrap()));
    }
}

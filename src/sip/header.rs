//! Header names: the ones routing reads get a variant; compact forms (RFC 3261 §7.3.3 and later RFCs) map onto
//! the same variant, and matching is case-insensitive.

/// A header name as routing sees it. `Other` headers are copied untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    Contact,
    ContentLength,
    ContentType,
    Supported,
    Require,
    ProxyRequire,
    /// Read only by loop detection: credentials for the next proxy make a spiral, not a loop.
    ProxyAuthorization,
    Path,
    Other,
}

impl HeaderName {
    /// Classify a raw header name. Allocation-free: compares case-insensitively in place.
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'k' => HeaderName::Supported,
                _ => HeaderName::Other, // s, e, o, r, b, u, x, y, a, d, j: copied, never read
            };
        }
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            2 if eq("To") => HeaderName::To,
            3 if eq("Via") => HeaderName::Via,
            4 if eq("From") => HeaderName::From,
            4 if eq("CSeq") => HeaderName::CSeq,
            4 if eq("Path") => HeaderName::Path,
            5 if eq("Route") => HeaderName::Route,
            7 if eq("Call-ID") => HeaderName::CallId,
            7 if eq("Contact") => HeaderName::Contact,
            7 if eq("Require") => HeaderName::Require,
            9 if eq("Supported") => HeaderName::Supported,
            12 if eq("Max-Forwards") => HeaderName::MaxForwards,
            12 if eq("Record-Route") => HeaderName::RecordRoute,
            12 if eq("Content-Type") => HeaderName::ContentType,
            13 if eq("Proxy-Require") => HeaderName::ProxyRequire,
            14 if eq("Content-Length") => HeaderName::ContentLength,
            19 if eq("Proxy-Authorization") => HeaderName::ProxyAuthorization,
            _ => HeaderName::Other,
        }
    }

    /// Whether a header of this kind may carry several comma-separated values on one line (RFC 3261 §7.3.1).
    /// Contact is listed too, but its `*` and quoted display names are handled by the splitter.
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Contact
                | HeaderName::Supported
                | HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName;

    #[test]
    fn compact_and_case_insensitive_names() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"RECORD-ROUTE"), HeaderName::RecordRoute);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"s"), HeaderName::Other);
    }
}

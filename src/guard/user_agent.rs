//! User-Agent drop rules: substrings (`security.drop_user_agents`) that mark a scanner, matched
//! case-insensitively in place over the request's bytes. A SIPVicious run announces itself with
//! `User-Agent: friendly-scanner` on every packet, so one match is enough to drop it and ban its source.

use crate::sip::{HeaderName, Message};

/// The substrings, lower-cased once.
#[derive(Debug, Clone, Default)]
pub struct UserAgentRules {
    needles: Vec<Box<[u8]>>,
}

impl UserAgentRules {
    pub fn new(list: &[String]) -> UserAgentRules {
        let needles = list
            .iter()
            .map(|s| s.trim().to_ascii_lowercase().into_bytes().into_boxed_slice())
            .filter(|n| !n.is_empty())
            .collect();
        UserAgentRules { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Whether any rule occurs in `ua`, ignoring ASCII case. No allocation.
    pub fn matches(&self, ua: &[u8]) -> bool {
        self.needles.iter().any(|n| contains_ignore_case(ua, n))
    }

    /// The request's User-Agent matches a rule.
    pub fn matches_request(&self, req: &Message) -> bool {
        !self.is_empty() && user_agent(req).is_some_and(|ua| self.matches(ua))
    }
}

/// The value of the first User-Agent header (it has no compact form).
pub fn user_agent(msg: &Message) -> Option<&[u8]> {
    msg.fields()
        .find(|f| {
            let name = msg.field_name(f);
            f.name == HeaderName::Other && name.len() == 10 && name.eq_ignore_ascii_case(b"User-Agent")
        })
        .map(|f| msg.slice(f.value))
}

/// `needle` is lower case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else { return true };
    if hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| {
        hay[i].to_ascii_lowercase() == first && hay[i + 1..i + needle.len()].eq_ignore_ascii_case(&needle[1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rules() -> UserAgentRules {
        UserAgentRules::new(
            &crate::config::SecurityConfig::SCANNER_USER_AGENTS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn scanners_match_in_any_case_and_phones_do_not() {
        let r = rules();
        for ua in ["friendly-scanner", "Friendly-Scanner", "sipvicious 0.3.4", "sipcli/v1.8", "VaxSIPUserAgent/3.1"] {
            assert!(r.matches(ua.as_bytes()), "{ua}");
        }
        for ua in ["Yealink SIP-T46S 66.86.0.15", "PolycomVVX-VVX_411-UA/6.4.3", "Linphone/5.2", "Zoiper rv2.10", ""] {
            assert!(!r.matches(ua.as_bytes()), "{ua}");
        }
        assert!(!UserAgentRules::new(&[]).matches(b"friendly-scanner"));
        assert!(!contains_ignore_case(b"sip", b"sipcli"));
    }

    #[test]
    fn the_header_is_found_by_name() {
        let req = |ua: &str| {
            Message::parse(Bytes::from(format!(
                "OPTIONS sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK1\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n{ua}\
                 Content-Length: 0\r\n\r\n"
            )))
            .unwrap()
        };
        assert!(rules().matches_request(&req("user-agent: friendly-scanner\r\n")));
        assert!(!rules().matches_request(&req("User-Agent: Yealink\r\n")));
        assert!(!rules().matches_request(&req("Server: friendly-scanner\r\n")), "another header");
        assert!(!rules().matches_request(&req("")));
    }
}

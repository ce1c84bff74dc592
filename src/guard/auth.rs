//! Which final answers of the PBX mean "your credentials are wrong" (password guessing, as svcrack does) or
//! "no such user" (extension enumeration, as svwar does), as fail2ban's Asterisk filters and Kamailio's
//! auth-failure counting see them. A challenge is not a failure: every phone's first REGISTER gets a 401, and an
//! office behind one NAT address collects hundreds of them a minute. What counts:
//!
//! - 401 or 407 to a request that carried credentials (`Authorization` / `Proxy-Authorization`), unless the
//!   challenge says `stale=true` (the nonce expired, the password was right: RFC 2617 §3.2.1);
//! - 403 to any request (refused outright: wrong password on PBXs that do not re-challenge, a barred user);
//! - 404 to a REGISTER (no such user: what an enumeration collects).
//!
//! Pure functions over the request and the response; [`super::Guard::auth_failure`] does the counting.

use crate::sip::{HeaderName, Message, Method};

/// Whether `resp`, the final answer to `req`, refuses the requester's credentials or identity.
pub fn is_failure(req: &Message, resp: &Message) -> bool {
    match resp.status() {
        Some(401) => has_credentials(req, "Authorization") && !is_stale(resp, "WWW-Authenticate"),
        Some(407) => has_credentials(req, "Proxy-Authorization") && !is_stale(resp, "Proxy-Authenticate"),
        Some(403) => true,
        Some(404) => req.method() == Some(Method::Register),
        _ => false,
    }
}

fn has_credentials(req: &Message, name: &str) -> bool {
    if name == "Proxy-Authorization" && req.header(HeaderName::ProxyAuthorization).is_some() {
        return true;
    }
    req.header_value_named(name.as_bytes()).is_some()
}

/// Whether a challenge header of `resp` carries `stale=true` (case-insensitive, RFC 2617: `stale="true"` too).
fn is_stale(resp: &Message, name: &str) -> bool {
    resp.fields().filter(|f| resp.field_name(f).eq_ignore_ascii_case(name.as_bytes())).any(|f| {
        let v = resp.slice(f.value).to_ascii_lowercase();
        let compact: Vec<u8> = v.into_iter().filter(|c| !matches!(c, b' ' | b'\t' | b'"')).collect();
        compact.windows(10).any(|w| w == b"stale=true")
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::from(s.replace('\n', "\r\n"))).expect("parses")
    }

    fn req(method: &str, extra: &str) -> Message {
        msg(&format!(
            "{method} sip:pbx.example.net SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\n\
             From: <sip:1000@pbx.example.net>;tag=a\nTo: <sip:1000@pbx.example.net>\nCall-ID: c1\n\
             CSeq: 2 {method}\n{extra}Content-Length: 0\n\n"
        ))
    }

    fn resp(code: u16, method: &str, extra: &str) -> Message {
        msg(&format!(
            "SIP/2.0 {code} X\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\n\
             From: <sip:1000@pbx.example.net>;tag=a\nTo: <sip:1000@pbx.example.net>;tag=b\nCall-ID: c1\n\
             CSeq: 2 {method}\n{extra}Content-Length: 0\n\n"
        ))
    }

    const CREDS: &str =
        "Authorization: Digest username=\"1000\", realm=\"pbx\", nonce=\"n\", uri=\"sip:pbx\", response=\"x\"\n";
    const PCREDS: &str = "Proxy-Authorization: Digest username=\"1000\", realm=\"pbx\", nonce=\"n\", response=\"x\"\n";
    const CHALLENGE: &str = "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"m\"\n";

    #[test]
    fn a_challenge_is_not_a_failure_but_a_refused_credential_is() {
        assert!(!is_failure(&req("REGISTER", ""), &resp(401, "REGISTER", CHALLENGE)), "first REGISTER");
        assert!(is_failure(&req("REGISTER", CREDS), &resp(401, "REGISTER", CHALLENGE)), "wrong password");
        assert!(!is_failure(&req("INVITE", ""), &resp(407, "INVITE", "Proxy-Authenticate: Digest realm=\"p\"\n")));
        assert!(is_failure(&req("INVITE", PCREDS), &resp(407, "INVITE", "Proxy-Authenticate: Digest realm=\"p\"\n")));
        // Credentials for the other challenge do not make a 401 a failure.
        assert!(!is_failure(&req("INVITE", PCREDS), &resp(401, "INVITE", CHALLENGE)));
    }

    #[test]
    fn a_stale_nonce_is_not_a_failure() {
        for stale in ["stale=true", "stale=TRUE", "stale=\"true\"", "stale = true"] {
            let c = format!("WWW-Authenticate: Digest realm=\"pbx\", nonce=\"m\", {stale}\n");
            assert!(!is_failure(&req("REGISTER", CREDS), &resp(401, "REGISTER", &c)), "{stale}");
        }
        let c = "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"m\", stale=false\n";
        assert!(is_failure(&req("REGISTER", CREDS), &resp(401, "REGISTER", c)));
    }

    #[test]
    fn forbidden_and_unknown_users() {
        assert!(is_failure(&req("INVITE", ""), &resp(403, "INVITE", "")));
        assert!(is_failure(&req("REGISTER", ""), &resp(404, "REGISTER", "")));
        assert!(!is_failure(&req("INVITE", ""), &resp(404, "INVITE", "")), "a wrong number is not an attack");
        for ok in [200, 183, 486, 480, 503] {
            assert!(!is_failure(&req("REGISTER", CREDS), &resp(ok, "REGISTER", "")), "{ok}");
        }
    }
}

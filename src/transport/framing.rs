//! Content-Length framing of SIP on stream transports (RFC 3261 §18.3): where the first message in a connection's
//! buffer ends, what is a CRLF keep-alive (RFC 5626 §3.5.1), and what cannot be framed. Pure code over a byte
//! slice; the reader loop in `tcp.rs` acts on the answer.

/// What the front of a stream buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// Not a whole message yet.
    NeedMore,
    /// `n` bytes of CRLF keep-alive; `ping` when it was a double CRLF that wants a pong.
    KeepAlive { n: usize, ping: bool },
    /// A whole message of this many bytes.
    Message(usize),
    /// The stream cannot be framed; the connection must be closed.
    Invalid(&'static str),
}

/// Find the first message in a stream buffer.
pub fn frame_stream_message(buf: &[u8], max: usize) -> Framed {
    let lead = buf.iter().take_while(|c| matches!(c, b'\r' | b'\n')).count();
    if lead > 0 {
        let ping = buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
        return Framed::KeepAlive { n: lead, ping };
    }
    let Some(hend) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > max { Framed::Invalid("header section too large") } else { Framed::NeedMore };
    };
    let head = &buf[..hend];
    let mut length = None;
    for line in head.split(|c| *c == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = line[colon + 1..].trim_ascii();
            match std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(n) => length = Some(n),
                None => return Framed::Invalid("bad Content-Length"),
            }
        }
    }
    let Some(len) = length else {
        return Framed::Invalid("missing Content-Length on a stream transport");
    };
    let total = hend + 4 + len;
    if total > max {
        return Framed::Invalid("message too large");
    }
    if buf.len() < total {
        Framed::NeedMore
    } else {
        Framed::Message(total)
    }
}

/// Whether a framing failure is about size (`too_large`) rather than form (`malformed`).
pub(super) fn is_oversize(reason: &str) -> bool {
    reason.ends_with("too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let max = 65_535;
        assert_eq!(frame_stream_message(b"\r\n\r\n", max), Framed::KeepAlive { n: 4, ping: true });
        assert_eq!(frame_stream_message(b"\r\n", max), Framed::KeepAlive { n: 2, ping: false });
        assert_eq!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n", max), Framed::NeedMore);
        let m = b"OPTIONS sip:x SIP/2.0\r\nContent-Length : 3\r\n\r\nabcNEXT";
        assert_eq!(frame_stream_message(m, max), Framed::Message(m.len() - 4));
        assert_eq!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nl: 5\r\n\r\nab", max), Framed::NeedMore);
        assert!(matches!(frame_stream_message(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n", max), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(b"A\r\nl: x\r\n\r\n", max), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(b"A\r\nl: 100\r\n\r\n", 50), Framed::Invalid(_)));
        assert!(matches!(frame_stream_message(&[b'a'; 100], 50), Framed::Invalid(_)));
    }

    #[test]
    fn size_failures_are_told_from_form_failures() {
        let reason = |buf: &[u8], max| match frame_stream_message(buf, max) {
            Framed::Invalid(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(is_oversize(reason(b"A\r\nl: 100\r\n\r\n", 50)));
        assert!(is_oversize(reason(&[b'a'; 100], 50)));
        assert!(!is_oversize(reason(b"A\r\nl: x\r\n\r\n", 50)));
        assert!(!is_oversize(reason(b"A\r\nVia: x\r\n\r\n", 50)));
    }
}

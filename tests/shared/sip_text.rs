//! SIP as the tests read and write it: [`SipMsg`] (a message parsed into start line, headers and body),
//! SIPp's `-trace_msg` files, TCP framing, and the few requests and answers the tests build by hand. Pure text:
//! no sockets, no processes.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// A SIP transport, as the tests choose it for each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tp {
    Udp,
    Tcp,
}

impl Tp {
    pub fn lower(self) -> &'static str {
        match self {
            Tp::Udp => "udp",
            Tp::Tcp => "tcp",
        }
    }

    pub fn upper(self) -> &'static str {
        match self {
            Tp::Udp => "UDP",
            Tp::Tcp => "TCP",
        }
    }

    /// SIPp `-t` for a caller: one UDP socket per call, or one TCP connection for all calls.
    pub fn sipp_uac_mode(self) -> &'static str {
        match self {
            Tp::Udp => "un",
            Tp::Tcp => "t1",
        }
    }

    /// SIPp `-t` for a PBX: one UDP socket, or one TCP listener.
    pub fn sipp_uas_mode(self) -> &'static str {
        match self {
            Tp::Udp => "u1",
            Tp::Tcp => "t1",
        }
    }
}

/// A SIP message as the tests read it: start line, headers in order, body.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn long_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        _ => name,
    }
}

impl SipMsg {
    /// Parse one message (CRLF or LF line ends). `None` when there is no header section.
    pub fn parse(data: &[u8]) -> Option<SipMsg> {
        let text = String::from_utf8_lossy(data);
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &data[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &data[i + 2..]),
                None => (&text[..], &[][..]),
            },
        };
        let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
        let start = lines.next()?.to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in lines {
            if l.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(l.trim());
                }
                continue;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Some(SipMsg { start, headers, body: body.to_vec() })
    }

    pub fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    pub fn reason(&self) -> &str {
        self.start.strip_prefix("SIP/2.0 ").and_then(|r| r.get(4..)).unwrap_or("")
    }

    pub fn method(&self) -> Option<&str> {
        if self.start.starts_with("SIP/2.0 ") {
            return None;
        }
        self.start.split(' ').next()
    }

    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start.split(' ').nth(1)
    }

    /// The first header line with this name (compact forms included), its whole value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = long_name(name).to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| long_name(n).eq_ignore_ascii_case(&want)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header: all lines, each split at top-level commas (outside <> and quotes).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let want = long_name(name).to_ascii_lowercase();
        let mut out = Vec::new();
        for (n, v) in &self.headers {
            if long_name(n).eq_ignore_ascii_case(&want) {
                out.extend(split_commas(v));
            }
        }
        out
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }
}

fn split_commas(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for c in v.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// One message from a SIPp `-trace_msg` file.
#[derive(Debug, Clone)]
pub struct Traced {
    pub sent: bool,
    pub msg: SipMsg,
}

/// Parse a SIPp message trace: blocks after a dashed separator line, each "UDP|TCP message sent (N bytes):" or
/// "... message received [N] bytes :", an empty line, then the message. "Unexpected ..." echoes are skipped.
pub fn parse_sipp_trace(text: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in text.split("-----------------------------------------------").skip(1) {
        let mut lines = block.lines();
        let _timestamp = lines.next();
        let Some(kind) = lines.next() else { continue };
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let rest: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let raw = rest.join("\r\n");
        if let Some(msg) = SipMsg::parse(raw.as_bytes()) {
            out.push(Traced { sent, msg });
        }
    }
    out
}

/// An OPTIONS to `to` from `local` (Request-URI without a user part: addressed to sipfront itself).
pub fn options_to(local: SocketAddr, to: SocketAddr, tp: Tp, call_id: &str) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/{} {local};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{}>;tag=p-{call_id}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        tp.upper(),
        local.ip()
    )
}

/// A request from `local` with the usual headers, `extra` header lines (each ending in CRLF) and no body:
/// Via with rport, Max-Forwards 70 (unless `extra` has one), From tag, To without tag, CSeq 1.
pub fn request(method: &str, ruri: &str, local: SocketAddr, tp: Tp, call_id: &str, extra: &str) -> String {
    let mf = if extra.to_ascii_lowercase().contains("max-forwards:") { "" } else { "Max-Forwards: 70\r\n" };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{} {local};branch=z9hG4bK-{call_id};rport\r\n\
         {mf}\
         From: <sip:tester@{}>;tag=t-{call_id}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        tp.upper(),
        local.ip()
    )
}

/// One message off the front of a TCP byte stream (CRLF keep-alives before it skipped), framed by
/// Content-Length; `None` until a whole message is there.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let lead = buf.iter().take_while(|c| **c == b'\r' || **c == b'\n').count();
    buf.drain(..lead);
    let hend = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let len = SipMsg::parse(&buf[..hend + 4])
        .and_then(|m| m.header("Content-Length").and_then(|v| v.trim().parse::<usize>().ok()))
        .unwrap_or(0);
    if buf.len() < hend + 4 + len {
        return None;
    }
    Some(buf.drain(..hend + 4 + len).collect())
}

impl SipMsg {
    /// The text of this message again (headers in order, CRLF, Content-Length kept as it was).
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("\r\n");
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }

    /// A parameter of the URI inside `<...>` (or of the bare URI): `;name=value`.
    pub fn uri_param(uri: &str, name: &str) -> Option<String> {
        let inner = match (uri.find('<'), uri.find('>')) {
            (Some(a), Some(b)) if b > a => &uri[a + 1..b],
            _ => uri,
        };
        inner.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A response to `req`: its Via lines, From, To (with `to_tag` added when it has none), Call-ID and CSeq,
/// then `extra` header lines (each ending in CRLF) and no body.
pub fn response_to(req: &SipMsg, code: u16, reason: &str, to_tag: &str, extra: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.header_values("Via") {
        let _ = write!(s, "Via: {v}\r\n");
    }
    let to = req.header("To").unwrap_or("");
    let to = if to.contains(";tag=") || to_tag.is_empty() { to.to_string() } else { format!("{to};tag={to_tag}") };
    let _ = write!(
        s,
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        req.header("From").unwrap_or(""),
        req.header("Call-ID").unwrap_or(""),
        req.header("CSeq").unwrap_or("")
    );
    s
}

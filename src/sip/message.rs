//! The lazy message: one pass finds the start line, every header's name and value boundaries and the body; values
//! are read later, only when routing asks for them. Parsing allocates nothing for messages of up to
//! [`MAX_HEADERS`] header fields (a rarer, longer message spills the index into one `Vec`).

use std::ops::Range;

use bytes::Bytes;

pub use super::error::ParseError;
use super::header::HeaderName;
use super::method::Method;
use super::values::{split_list, Via};

/// Header fields indexed inline; more spill to the heap (allowed, just not on the common path).
pub const MAX_HEADERS: usize = 40;

/// The first line: a request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, method_raw: Range<u32>, uri: Range<u32> },
    Response { code: u16, reason: Range<u32> },
}

/// One header field line (folded continuation lines included): where its name and value are in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField {
    pub name: HeaderName,
    /// Start of the line (the name's first byte).
    pub line_start: u32,
    /// End of the raw name (before any whitespace and the colon).
    pub name_end: u32,
    /// The value, trimmed of surrounding whitespace; folded lines keep their inner CRLF.
    pub value: (u32, u32),
    /// End of the line, excluding its CRLF.
    pub line_end: u32,
}

const EMPTY_FIELD: HeaderField =
    HeaderField { name: HeaderName::Other, line_start: 0, name_end: 0, value: (0, 0), line_end: 0 };

/// A parsed SIP message over a shared buffer. Cloning is cheap (the buffer is reference-counted).
#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    fields: [HeaderField; MAX_HEADERS],
    nfields: usize,
    spill: Vec<HeaderField>,
    /// Offset just past the empty line that ends the header section.
    headers_end: u32,
    body: Range<u32>,
    has_content_length: bool,
    cseq: u32,
    cseq_method: Method,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("start", &self.start).field("len", &self.buf.len()).finish()
    }
}

fn trim_range(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(buf[s], b' ' | b'\t' | b'\r' | b'\n') {
        s += 1;
    }
    while e > s && matches!(buf[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    u32::try_from(n).ok()
}

/// Where a line ending at or after `from` ends: (end of content, start of next line). Accepts CRLF and bare LF.
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let nl = from + memchr::memchr(b'\n', &buf[from..])?;
    let end = if nl > from && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    Some((end, nl + 1))
}

impl Message {
    /// Parse a message from a datagram or a framed stream message. `buf` must hold exactly one message; bytes
    /// past Content-Length are ignored (RFC 3261 §18.3), a missing Content-Length means "the rest is the body".
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        Message::parse_inner(buf, true)
    }

    /// For answering a malformed request with 400: index the headers and skip every check that does not stop us
    /// from building a response. `None` when even that fails, or when it is not a request with a usable Via.
    pub fn parse_for_reply(buf: Bytes) -> Option<Message> {
        let msg = Message::parse_inner(buf, false).ok()?;
        (msg.is_request() && msg.top_via().is_some()).then_some(msg)
    }

    fn parse_inner(buf: Bytes, strict: bool) -> Result<Message, ParseError> {
        let b: &[u8] = &buf;
        if b.len() > u32::MAX as usize / 2 {
            return Err(ParseError::TooLarge);
        }
        // Leading CRLFs are keep-alives or padding (RFC 3261 §7.5 tolerates them).
        let mut pos = 0;
        while pos < b.len() && matches!(b[pos], b'\r' | b'\n') {
            pos += 1;
        }
        if pos == b.len() {
            return Err(ParseError::Empty);
        }
        let (sl_end, mut next) = line_end(b, pos).ok_or(ParseError::Truncated)?;
        let start = match parse_start_line(b, pos, sl_end) {
            Ok(start) => start,
            // Reading only to answer: a request whose start line is broken (`BYE Anonymous <sip:x> SIP/2.0`) is
            // still answerable from its Via, From, To, Call-ID and CSeq. Its method is the first word when that
            // is a token, so that a broken ACK is still never answered.
            Err(_) if !strict && !b[pos..sl_end].starts_with(b"SIP/") => broken_request_line(b, pos, sl_end),
            Err(e) => return Err(e),
        };

        let mut msg = Message {
            buf: Bytes::new(),
            start,
            fields: [EMPTY_FIELD; MAX_HEADERS],
            nfields: 0,
            spill: Vec::new(),
            headers_end: 0,
            body: 0..0,
            has_content_length: false,
            cseq: 0,
            cseq_method: Method::Other,
        };
        let mut content_length: Option<usize> = None;
        let mut seen_via = false;
        let mut seen = [false; 4]; // call-id, cseq, from, to
        loop {
            let (end, after) = line_end(b, next).ok_or(ParseError::Truncated)?;
            if end == next {
                msg.headers_end = after as u32;
                break;
            }
            let first = b[next];
            if first == b' ' || first == b'\t' {
                // Folded continuation of the previous header (RFC 3261 §7.3.1).
                let last = msg.last_field_mut().ok_or(ParseError::BadHeaderLine)?;
                // A whitespace-only continuation leaves the value alone; an empty value starts on this line.
                let (vs, ve) = trim_range(b, next, end);
                if vs < ve {
                    if last.value.0 == last.value.1 {
                        last.value.0 = vs as u32;
                    }
                    last.value.1 = ve as u32;
                }
                last.line_end = end as u32;
                next = after;
                continue;
            }
            let colon = memchr::memchr(b':', &b[next..end]).map(|c| next + c);
            let name_ok = colon.is_some_and(|colon| {
                let (ns, ne) = trim_range(b, next, colon);
                ns == next && ne > ns && b[ns..ne].iter().all(|c| is_token_char(*c))
            });
            let Some(colon) = colon.filter(|_| name_ok) else {
                if strict {
                    return Err(ParseError::BadHeaderLine);
                }
                // Reading only to answer 400: skip the broken line, keep what can be answered from.
                next = after;
                continue;
            };
            let (ns, ne) = trim_range(b, next, colon);
            let name = HeaderName::from_bytes(&b[ns..ne]);
            let (vs, ve) = trim_range(b, colon + 1, end);
            let field = HeaderField {
                name,
                line_start: next as u32,
                name_end: ne as u32,
                value: (vs as u32, ve as u32),
                line_end: end as u32,
            };
            match name {
                HeaderName::Via => seen_via = true,
                HeaderName::CallId => seen[0] = true,
                HeaderName::From => seen[2] = true,
                HeaderName::To => seen[3] = true,
                _ => {}
            }
            msg.push_field(field);
            next = after;
        }

        if !strict {
            let hend = msg.headers_end as usize;
            msg.body = hend as u32..b.len() as u32;
            msg.buf = buf;
            return Ok(msg);
        }
        // Values that need the whole field (folded lines) are read after the loop.
        for i in 0..msg.field_count() {
            let f = msg.field(i);
            match f.name {
                HeaderName::ContentLength => {
                    let v = &b[f.value.0 as usize..f.value.1 as usize];
                    let n = parse_u32(v).ok_or(ParseError::BadContentLength)? as usize;
                    if content_length.is_some_and(|c| c != n) {
                        return Err(ParseError::BadContentLength);
                    }
                    content_length = Some(n);
                }
                HeaderName::CSeq if !seen[1] => {
                    let v = &b[f.value.0 as usize..f.value.1 as usize];
                    let sp = v.iter().position(|c| is_lws(*c)).ok_or(ParseError::BadCSeq)?;
                    msg.cseq = parse_u32(&v[..sp]).ok_or(ParseError::BadCSeq)?;
                    let m = trim_range(v, sp, v.len());
                    if m.0 == m.1 {
                        return Err(ParseError::BadCSeq);
                    }
                    msg.cseq_method = Method::from_bytes(&v[m.0..m.1]);
                    seen[1] = true;
                }
                _ => {}
            }
        }
        if !seen_via {
            return Err(ParseError::MissingVia);
        }
        if !seen[0] {
            return Err(ParseError::MissingCallId);
        }
        if !seen[1] {
            return Err(ParseError::BadCSeq);
        }
        if !seen[2] {
            return Err(ParseError::MissingFrom);
        }
        if !seen[3] {
            return Err(ParseError::MissingTo);
        }
        if let StartLine::Request { method, method_raw, .. } = &msg.start {
            let raw = &b[method_raw.start as usize..method_raw.end as usize];
            let cseq_raw = msg.cseq_method_raw_in(b);
            if *method != msg.cseq_method || (*method == Method::Other && raw != cseq_raw) {
                return Err(ParseError::CSeqMethodMismatch);
            }
        }
        let hend = msg.headers_end as usize;
        let avail = b.len() - hend;
        let blen = match content_length {
            Some(n) if n > avail => return Err(ParseError::BodyTruncated),
            Some(n) => n,
            None => avail,
        };
        msg.has_content_length = content_length.is_some();
        msg.body = hend as u32..(hend + blen) as u32;
        msg.buf = buf;
        // The top Via must be readable: every response we route depends on it.
        msg.top_via().ok_or(ParseError::BadVia)?;
        if msg.header(HeaderName::MaxForwards).is_some() && msg.max_forwards().is_none() {
            return Err(ParseError::BadMaxForwards);
        }
        super::sanity::check(&msg, &msg.buf[pos..hend])?;
        Ok(msg)
    }

    fn push_field(&mut self, f: HeaderField) {
        if self.nfields < MAX_HEADERS {
            self.fields[self.nfields] = f;
        } else {
            self.spill.push(f);
        }
        self.nfields += 1;
    }

    fn last_field_mut(&mut self) -> Option<&mut HeaderField> {
        match self.nfields {
            0 => None,
            n if n <= MAX_HEADERS => Some(&mut self.fields[n - 1]),
            _ => self.spill.last_mut(),
        }
    }

    fn cseq_method_raw_in<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        for i in 0..self.field_count() {
            let f = self.field(i);
            if f.name == HeaderName::CSeq {
                let v = &b[f.value.0 as usize..f.value.1 as usize];
                if let Some(sp) = v.iter().position(|c| is_lws(*c)) {
                    let (s, e) = trim_range(v, sp, v.len());
                    return &v[s..e];
                }
            }
        }
        b""
    }

    /// Number of header field lines.
    pub fn field_count(&self) -> usize {
        self.nfields
    }

    /// The i-th header field line, in message order.
    pub fn field(&self, i: usize) -> HeaderField {
        if i < MAX_HEADERS {
            self.fields[i]
        } else {
            self.spill[i - MAX_HEADERS]
        }
    }

    /// Iterate over all header field lines.
    pub fn fields(&self) -> impl Iterator<Item = HeaderField> + '_ {
        (0..self.nfields).map(move |i| self.field(i))
    }

    /// The whole buffer this message was parsed from.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Bytes of a range in the buffer.
    pub fn slice(&self, r: (u32, u32)) -> &[u8] {
        &self.buf[r.0 as usize..r.1 as usize]
    }

    /// The raw name of a field as written (compact or long form).
    pub fn field_name(&self, f: &HeaderField) -> &[u8] {
        &self.buf[f.line_start as usize..f.name_end as usize]
    }

    /// The whole raw line of a field (name, colon, value; folded lines included), without the final CRLF.
    pub fn field_line(&self, f: &HeaderField) -> &[u8] {
        &self.buf[f.line_start as usize..f.line_end as usize]
    }

    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as written (for `Other` methods).
    pub fn method_bytes(&self) -> &[u8] {
        match &self.start {
            StartLine::Request { method_raw, .. } => &self.buf[method_raw.start as usize..method_raw.end as usize],
            StartLine::Response { .. } => self.cseq_method_raw_in(&self.buf),
        }
    }

    /// The Request-URI, or empty for a response.
    pub fn request_uri(&self) -> &[u8] {
        match &self.start {
            StartLine::Request { uri, .. } => &self.buf[uri.start as usize..uri.end as usize],
            StartLine::Response { .. } => b"",
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> &[u8] {
        match &self.start {
            StartLine::Response { reason, .. } => &self.buf[reason.start as usize..reason.end as usize],
            StartLine::Request { .. } => b"",
        }
    }

    /// The raw start line (without CRLF).
    pub fn start_line_bytes(&self) -> &[u8] {
        let b: &[u8] = &self.buf;
        let mut pos = 0;
        while matches!(b[pos], b'\r' | b'\n') {
            pos += 1;
        }
        let (end, _) = line_end(b, pos).expect("validated by parse");
        &b[pos..end]
    }

    /// The value of the first header field with this name (the whole line's value, all list items).
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.fields().find(|f| f.name == name).map(|f| self.slice(f.value))
    }

    /// The first value of a header the parser does not classify (`Expires`, `Authorization` ...), found by its
    /// name, case-insensitively.
    pub fn header_value_named(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|f| f.name == HeaderName::Other && self.field_name(f).eq_ignore_ascii_case(name))
            .map(|f| self.slice(f.value))
    }

    /// Every value of a header, across repeated lines and comma-separated items, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        let list = name.is_list();
        self.fields().filter(move |f| f.name == name).flat_map(move |f| {
            let v = self.slice(f.value);
            split_list(v, list)
        })
    }

    /// The topmost Via value, parsed.
    pub fn top_via(&self) -> Option<Via<'_>> {
        self.header_values(HeaderName::Via).next().and_then(Via::parse)
    }

    /// Call-ID (compact `i` included).
    pub fn call_id(&self) -> &[u8] {
        self.header(HeaderName::CallId).unwrap_or(b"")
    }

    /// CSeq sequence number.
    pub fn cseq(&self) -> u32 {
        self.cseq
    }

    /// CSeq method.
    pub fn cseq_method(&self) -> Method {
        self.cseq_method
    }

    /// The `tag` parameter of From.
    pub fn from_tag(&self) -> Option<&[u8]> {
        self.header(HeaderName::From).and_then(super::values::tag_param)
    }

    /// The `tag` parameter of To.
    pub fn to_tag(&self) -> Option<&[u8]> {
        self.header(HeaderName::To).and_then(super::values::tag_param)
    }

    /// Max-Forwards, if present and valid.
    pub fn max_forwards(&self) -> Option<u32> {
        self.header(HeaderName::MaxForwards).and_then(parse_u32)
    }

    /// The body (empty when there is none).
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.start as usize..self.body.end as usize]
    }

    /// Whether the message carried a Content-Length header (stream transports require one).
    pub fn has_content_length(&self) -> bool {
        self.has_content_length
    }

    /// Serialize from the index: start line, every field line byte for byte, the empty line, the body, with a
    /// Content-Length added when the original had none. Parsing the result gives the same message.
    pub fn write_to(&self, out: &mut bytes::BytesMut) {
        out.extend_from_slice(self.start_line_bytes());
        out.extend_from_slice(b"\r\n");
        for f in self.fields() {
            out.extend_from_slice(self.field_line(&f));
            out.extend_from_slice(b"\r\n");
        }
        if !self.has_content_length {
            super::build::put_content_length(out, self.body().len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body());
    }
}

/// Whitespace inside a value, folded line breaks included.
fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

/// The start line of a request that [`parse_start_line`] refused, for answering it: the first word as its method
/// when that word is a token, and no Request-URI.
fn broken_request_line(b: &[u8], s: usize, e: usize) -> StartLine {
    let word = memchr::memchr(b' ', &b[s..e]).map_or(e, |sp| s + sp);
    let token = word > s && b[s..word].iter().all(|c| is_token_char(*c));
    let method = if token { Method::from_bytes(&b[s..word]) } else { Method::Other };
    let raw_end = if token { word } else { s };
    StartLine::Request { method, method_raw: s as u32..raw_end as u32, uri: raw_end as u32..raw_end as u32 }
}

fn parse_start_line(b: &[u8], s: usize, e: usize) -> Result<StartLine, ParseError> {
    let line = &b[s..e];
    if line.starts_with(b"SIP/") {
        // SIP/2.0 SP code SP reason
        if !line.starts_with(b"SIP/2.0 ") {
            return Err(ParseError::BadVersion);
        }
        let rest = &line[8..];
        if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|c| *c != b' ') {
            return Err(ParseError::BadStatus);
        }
        let code = u16::from(rest[0] - b'0') * 100 + u16::from(rest[1] - b'0') * 10 + u16::from(rest[2] - b'0');
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatus);
        }
        let rs = (s + 8 + 4).min(e);
        return Ok(StartLine::Response { code, reason: rs as u32..e as u32 });
    }
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::BadStartLine)?;
    if sp2 <= sp1 + 1 || !line[..sp1].iter().all(|c| is_token_char(*c)) || sp1 == 0 {
        return Err(ParseError::BadStartLine);
    }
    if &line[sp2 + 1..] != b"SIP/2.0" {
        return Err(ParseError::BadVersion);
    }
    let uri = &line[sp1 + 1..sp2];
    if uri.contains(&b' ') || !uri.contains(&b':') {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(&line[..sp1]),
        method_raw: s as u32..(s + sp1) as u32,
        uri: (s + sp1 + 1) as u32..(s + sp2) as u32,
    })
}

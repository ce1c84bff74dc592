//! parse → write_to → parse gives the same message, on a seed corpus and deterministic mutations.

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Round trip: parse → write_to → parse gives the same message, on a seed corpus and deterministic mutations
// ---------------------------------------------------------------------------------------------------------------

const SEED_INVITE_SDP: &str = "INVITE sip:+4930123456@pbx.example.net;user=phone SIP/2.0
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;rport
v: SIP/2.0/TCP 198.51.100.7:5061;branch=z9hG4bK776asdhds;received=198.51.100.7,SIP/2.0/UDP 10.1.2.3;branch=z9hG4bKn
Route: <sip:sipfront.example.net;lr>, <sip:edge.example.net;lr>
Record-Route: <sip:edge.example.net;lr>
Max-Forwards: 69
f: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
To: <sip:+4930123456@pbx.example.net;user=phone>
i: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
m: <sip:alice@203.0.113.10:5060;transport=udp>;expires=3600
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY
k: replaces, timer, 100rel
c: application/sdp
Content-Length: 134

v=0
o=alice 2890844526 2890844526 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
m=audio 49170 RTP/AVP 0 8 101
a=sendrecv
";

const SEED_200_OK: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.53:5060;branch=z9hG4bK1a2b3c4d.00000000000000a1
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---a8f2c1d9e4b7;received=203.0.113.10;rport=5060
Record-Route: <sip:192.0.2.53:5060;lr>, <sip:edge.example.net;lr>
From: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
To: <sip:+4930123456@pbx.example.net;user=phone>;tag=as6f1c2b7e
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
Contact: <sip:+4930123456@10.20.0.11:5060>
Content-Type: application/sdp
Content-Length: 68

v=0
o=pbx 1093 1093 IN IP4 10.20.0.11
s=pbx
c=IN IP4 10.20.0.11
";

const SEED_REGISTER: &str = "REGISTER sip:registrar.example.com SIP/2.0
Via: SIP/2.0/TCP 10.0.0.5:55060;branch=z9hG4bKnashds7;rport
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: Bob <sip:bob@example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4>;expires=7200, \"Bob, mobile\" <sip:bob@192.0.2.5;transport=tcp>;q=0.5
Contact: <sip:bob@192.0.2.6>
Expires: 7200
Supported: path, outbound
Content-Length: 0

";

const SEED_BYE: &str = "BYE sip:alice@203.0.113.10:5060 SIP/2.0
Via: SIP/2.0/UDP 10.20.0.11:5060;branch=z9hG4bKbye1
Route: <sip:192.0.2.53:5060;lr>
Route: <sip:edge.example.net;lr>
Max-Forwards: 70
From: <sip:+4930123456@pbx.example.net>;tag=as6f1c2b7e
To: \"Alice Smith\" <sip:alice@example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 102 BYE
Content-Length: 0

";

const SEED_COMPACT: &str = "OPTIONS sip:sipfront.example.net SIP/2.0
v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKopt;rport
f: <sip:monitor@example.com>;tag=m1
t: <sip:sipfront.example.net>
i: opt-1@10.0.0.5
CSeq: 1 OPTIONS
m: <sip:monitor@10.0.0.5>
k: path
s: ping
l: 0

";

const SEED_FOLDED: &str = "MESSAGE sip:bob@example.net SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5:5060
  ;branch=z9hG4bKfolded;rport
Max-Forwards:
 70
From: Alice
\t<sip:alice@example.com>;tag=f1
To: <sip:bob@example.net>
Call-ID: folded-1@10.0.0.5
CSeq: 5
 MESSAGE
Subject: first line,
   second line
Content-Type: text/plain

Hello Bob, no Content-Length on UDP.";

/// Same message: start line, header names and values in order, body. A message that had no Content-Length gets
/// one, last, from `write_to`.
fn check_same(a: &Message, b: &Message) -> Result<(), String> {
    if a.start_line_bytes() != b.start_line_bytes() {
        return Err("start line differs".into());
    }
    if (a.method(), a.method_bytes(), a.request_uri(), a.status(), a.reason())
        != (b.method(), b.method_bytes(), b.request_uri(), b.status(), b.reason())
    {
        return Err("parsed start line differs".into());
    }
    let fa: Vec<_> = a.fields().map(|f| (f.name, a.field_name(&f), a.slice(f.value))).collect();
    let mut fb: Vec<_> = b.fields().map(|f| (f.name, b.field_name(&f), b.slice(f.value))).collect();
    if !a.has_content_length() {
        let added = fb.pop().ok_or("no Content-Length added")?;
        if added.0 != HeaderName::ContentLength || added.2 != a.body().len().to_string().as_bytes() {
            return Err(format!("added Content-Length wrong: {:?}", lossy(added.2)));
        }
    }
    if fa != fb {
        return Err(format!("fields differ:\n{fa:?}\n{fb:?}"));
    }
    if a.body() != b.body() || !b.has_content_length() {
        return Err("body differs".into());
    }
    if (a.call_id(), a.cseq(), a.cseq_method(), a.from_tag(), a.to_tag(), a.max_forwards())
        != (b.call_id(), b.cseq(), b.cseq_method(), b.from_tag(), b.to_tag(), b.max_forwards())
    {
        return Err("routing headers differ".into());
    }
    if a.top_via().map(|v| v.raw) != b.top_via().map(|v| v.raw) {
        return Err("top Via differs".into());
    }
    Ok(())
}

/// Round trip, then the builders on the parsed message: their output must parse too. Returns an error text instead
/// of panicking so the mutation loop can say which input failed.
fn check_message(input: &[u8]) -> Result<bool, String> {
    let Ok(a) = Message::parse(Bytes::copy_from_slice(input)) else {
        // Whatever is rejected, the 400 path must cope with it.
        if let Some(req) = Message::parse_for_reply(Bytes::copy_from_slice(input)) {
            let _ = ResponseBuilder::new(&req, 400, "Bad Request").source(addr("192.0.2.9:5060")).to_tag(b"x").build();
        }
        return Ok(false);
    };
    let mut out = BytesMut::new();
    a.write_to(&mut out);
    let b = Message::parse(out.clone().freeze()).map_err(|e| format!("write_to output does not parse: {e}"))?;
    check_same(&a, &b)?;
    let mut again = BytesMut::new();
    b.write_to(&mut again);
    if again != out {
        return Err("write_to is not a fixed point".into());
    }
    if a.is_request() {
        let rr = [OUR_RR];
        let fwd = a.forward(&fwd_edit(&rr, 1, Some(addr("198.51.100.20:40123"))));
        let f = Message::parse(fwd).map_err(|e| format!("forward output does not parse: {e}"))?;
        if f.top_via().map(|v| v.raw) != Some(OUR_VIA) || f.call_id() != a.call_id() || f.body() != a.body() {
            return Err("forward output lost something".into());
        }
        let resp = ResponseBuilder::new(&a, 200, "OK").source(addr("198.51.100.20:40123")).to_tag(b"t").build();
        let r = Message::parse(resp).map_err(|e| format!("ResponseBuilder output does not parse: {e}"))?;
        if r.call_id() != a.call_id() || r.cseq() != a.cseq() {
            return Err("response lost Call-ID/CSeq".into());
        }
        let twin = a.twin_request("CANCEL", None);
        Message::parse(twin).map_err(|e| format!("twin_request output does not parse: {e}"))?;
    }
    // What is left must be a top Via we accept: readable, and with a branch when it heads a request.
    let second_via_ok = a
        .header_values(HeaderName::Via)
        .nth(1)
        .and_then(Via::parse)
        .is_some_and(|v| !a.is_request() || v.branch().is_some());
    match Message::parse(a.strip_top_via()) {
        Ok(s) => {
            if s.header_values(HeaderName::Via).count() + 1 != a.header_values(HeaderName::Via).count() {
                return Err("strip_top_via removed other than one Via".into());
            }
        }
        Err(e) if second_via_ok => return Err(format!("strip_top_via output does not parse: {e}")),
        Err(_) => {}
    }
    Ok(true)
}

/// xorshift64* — deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\r\n \t:;,<>\"\\=/@0123456789aZ\xff\x80\x00";
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b"\n",
    b",",
    b";rport",
    b";branch=z9hG4bKmut",
    b";received=1.2.3.4",
    b"Via: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKinj\r\n",
    b"v: ,\r\n",
    b"Route: <sip:x;lr>, <sip:y;lr>\r\n",
    b"Content-Length: 3\r\n",
    b"l: 0\r\n",
    b"Max-Forwards: 0\r\n",
    b"Call-ID: dup\r\n",
    b"CSeq: 1 BYE\r\n",
    b"<sip:a@b;lr>",
    b"\"quoted, \\\" string\"",
    b"SIP/2.0",
    b"\xc3\xa9",
];

fn line_bounds(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s = 0;
    for (i, c) in b.iter().enumerate() {
        if *c == b'\n' {
            out.push((s, i + 1));
            s = i + 1;
        }
    }
    out
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    let pos = rng.below(buf.len() + 1);
    match rng.below(10) {
        0 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] = INTERESTING[rng.below(INTERESTING.len())];
        }
        1 => buf.insert(pos, INTERESTING[rng.below(INTERESTING.len())]),
        2 => {
            let end = (pos + 1 + rng.below(8)).min(buf.len());
            buf.drain(pos.min(end)..end);
        }
        3 | 4 => {
            let lines = line_bounds(buf);
            if lines.len() > 1 {
                let (s, e) = lines[rng.below(lines.len())];
                let line = buf[s..e].to_vec();
                if rng.below(2) == 0 {
                    let (at, _) = lines[rng.below(lines.len())];
                    buf.splice(at..at, line); // duplicate a line elsewhere
                } else {
                    buf.drain(s..e); // remove a line
                }
            }
        }
        5 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] ^= 0x20; // flip case (or worse)
        }
        6 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            buf.splice(pos..pos, t.iter().copied());
        }
        7 => buf.truncate(pos),
        8 if !buf.is_empty() => {
            let p = pos.min(buf.len() - 1);
            buf[p] = rng.next() as u8;
        }
        _ => {
            // Replace a line's start with a token (often a header line).
            let lines = line_bounds(buf);
            if !lines.is_empty() {
                let (s, e) = lines[rng.below(lines.len())];
                let t = TOKENS[rng.below(TOKENS.len())];
                buf.splice(s..e, t.iter().copied());
            }
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> =
        [SEED_INVITE_SDP, SEED_200_OK, SEED_REGISTER, SEED_BYE, SEED_COMPACT, SEED_FOLDED, BASE, RESPONSE, ROUTED]
            .iter()
            .map(|s| crlf(s))
            .collect();
    // The same with bare LF line endings, and with a leading keep-alive CRLF.
    v.push(SEED_BYE.as_bytes().to_vec());
    v.push([&b"\r\n"[..], &crlf(SEED_COMPACT)].concat());
    v
}

#[test]
fn round_trip_seed_corpus() {
    for (i, s) in seeds().iter().enumerate() {
        match check_message(s) {
            Ok(true) => {}
            Ok(false) => panic!("seed {i} does not parse: {:?}", Message::parse(Bytes::copy_from_slice(s)).err()),
            Err(e) => panic!("seed {i}: {e}\n{}", lossy(s)),
        }
    }
}

#[test]
fn round_trip_holds_for_mutations() {
    const PER_SEED: usize = 800;
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut parsed, mut total) = (0, 0);
    for seed in &seeds {
        for _ in 0..PER_SEED {
            let mut buf = seed.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut buf);
            }
            total += 1;
            match std::panic::catch_unwind(|| check_message(&buf)) {
                Ok(Ok(ok)) => parsed += usize::from(ok),
                Ok(Err(e)) => panic!("mutation {total}: {e}\ninput: {:?}", lossy(&buf)),
                Err(_) => panic!("mutation {total} panicked\ninput: {:?}", lossy(&buf)),
            }
        }
    }
    eprintln!("{parsed} of {total} mutations parsed and round-tripped");
    // The mutations must leave enough messages parseable for the round trip to be exercised (a fifth: many
    // mutations write a control byte, which `sip::sanity` refuses).
    assert!(parsed * 5 > total, "only {parsed} of {total} mutations parsed");
}

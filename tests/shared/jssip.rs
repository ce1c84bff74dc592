//! The JsSIP rig of the WebRTC interop rows (`tests/interop_jssip.rs`, Kamailio as the PBX;
//! `tests/interop_jssip_sippy.rs`, the Sippy B2BUA): two JsSIP user agents (alice, bob; JsSIP 3.13.8 from the npm
//! registry, `scripts/fetch-jssip.sh`) on one page in headless Chromium, each with its own secure WebSocket to
//! sipfront's `wss:` listener.
//!
//! [`PageServer`] serves `tests/webrtc/phones.html` and JsSIP bundled for `tests/webrtc/require.js`; [`tls_section`]
//! makes sipfront's self-signed certificate; [`Phones`] is the page in Chromium with what the tests ask of it: each
//! phone's events (JsSIP's UA and session events) and SIP trace (every message across its WebSocket), polled with
//! deadlines, RTP counts from `getStats()`, and the sessions and dialogs JsSIP still holds.
//!
//! Chromium runs with a fake microphone (granted without a prompt), loopback ICE candidates allowed, and
//! certificate errors ignored ([`CHROMIUM_FLAGS`]): sipfront's certificate is a self-signed one made here, and its
//! trust is not what these rows test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::browser::Browser;
use super::sip_text::SipMsg;

/// Where `scripts/fetch-jssip.sh` puts JsSIP when not told otherwise (`SIPFRONT_JSSIP`).
pub const JSSIP_DEFAULT: &str = "/var/tmp/sipfront-npm/jssip-3.13.8";
/// Deadline for anything that must happen (Chromium's start and a call's ICE included).
pub const WAIT: Duration = Duration::from_secs(15);
/// Both phones hold no session this soon after a hangup.
pub const HANGUP: Duration = Duration::from_secs(2);
pub const CHROMIUM_FLAGS: [&str; 4] = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--ignore-certificate-errors",
];

// ------------------------------------------------------------------------------------------------ the page

/// JsSIP's CommonJS modules and their dependencies as one script for `tests/webrtc/require.js` (the same bundle
/// `tests/webrtc_browser.rs` makes; see there).
pub fn jssip_bundle() -> String {
    let dir = std::env::var_os("SIPFRONT_JSSIP").map(PathBuf::from).unwrap_or_else(|| JSSIP_DEFAULT.into());
    let root = dir.join("node_modules");
    assert!(root.join("jssip/lib/JsSIP.js").is_file(), "no JsSIP in {}: run scripts/fetch-jssip.sh", dir.display());
    let mut stack = vec![root.clone()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read node_modules").flatten() {
            let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
            if path.is_dir() && name != "test" && name != "tests" {
                stack.push(path);
            } else if name.ends_with(".js") || name == "package.json" {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut js = String::from(include_str!("../webrtc/require.js"));
    js.push_str("\nwindow.require = installRequire({\n");
    for path in files {
        let key = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&path).expect("read a module");
        let body = match source.strip_prefix("#!") {
            _ if key.ends_with(".json") => format!("module.exports = {source};"),
            Some(rest) => format!("//{rest}"),
            None => source,
        };
        js.push_str(&format!("{}: function (require, module, exports) {{\n{body}\n}},\n", serde_json::json!(key)));
    }
    js + "});\n"
}

/// `tests/webrtc/phones.html` at `/` and the bundle at `/jssip.js`, from a thread that ends when the listener is
/// shut down (on drop, by a last connection after the flag is set).
pub struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start(addr: SocketAddr) -> PageServer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, script) = (stop.clone(), jssip_bundle());
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                serve(c, &script);
            }
        });
        PageServer { addr, stop }
    }
}

fn serve(mut c: TcpStream, script: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let (mut req, mut buf) = (Vec::new(), [0u8; 4096]);
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let path = String::from_utf8_lossy(&req).split(' ').nth(1).unwrap_or("/").to_owned();
    let (status, kind, body) = match path.split('?').next() {
        Some("/") => ("200 OK", "text/html", include_str!("../webrtc/phones.html")),
        Some("/jssip.js") => ("200 OK", "text/javascript", script),
        _ => ("404 Not Found", "text/plain", ""),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes()).and_then(|_| c.write_all(body.as_bytes()));
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A self-signed certificate for sipfront's address `ip`, written to `dir`; the `[tls]` section naming it.
pub fn tls_section(dir: &Path, ip: Ipv4Addr) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert =
        rcgen::CertificateParams::new(vec![ip.to_string()]).expect("params").self_signed(&key).expect("certificate");
    let (crt, key_file) = (dir.join("front.crt"), dir.join("front.key"));
    std::fs::write(&crt, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"", crt.display(), key_file.display())
}

// ------------------------------------------------------------------------------------------------ the phones

/// The page in Chromium (fields drop in order: the browser, then the page server) and the SIP domain the phones
/// use (sipfront's address).
pub struct Phones {
    pub browser: Browser,
    _pages: PageServer,
    pub domain: String,
}

impl Phones {
    /// Serve the page on `page` (an address sipfront's `[websocket] allowed_origins` names), open it in Chromium
    /// with the phones' WebSocket to `ws_url`, and wait until it has loaded JsSIP.
    pub fn open(label: &str, page: SocketAddr, ws_url: &str, domain: &str) -> Phones {
        let pages = PageServer::start(page);
        let url = format!("http://{page}/?ws={ws_url}");
        let browser = Browser::open_with(label, &url, &CHROMIUM_FLAGS);
        let mut p = Phones { browser, _pages: pages, domain: domain.to_string() };
        p.browser.wait_for("the page loads JsSIP", "typeof window.startPhone === 'function'", WAIT);
        p
    }

    /// Start the phone `who` (`sip:who@domain`) registering for `expires` seconds; not waited for.
    pub fn start_phone(&mut self, who: &str, expires: u32) {
        let aor = self.uri(who);
        self.js(&format!("startPhone('{who}', '{aor}', {expires})"));
    }

    pub fn js(&mut self, expr: &str) -> Value {
        self.browser.eval(expr)
    }

    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain)
    }

    pub fn events(&mut self, who: &str) -> Vec<Value> {
        self.js(&format!("phones.{who}.events")).as_array().cloned().unwrap_or_default()
    }

    /// The SIP messages `who` sent (true) and received over its WebSocket.
    pub fn trace(&mut self, who: &str) -> Vec<(bool, SipMsg)> {
        let v = self.js(&format!("phones.{who}.trace"));
        let items = v.as_array().cloned().unwrap_or_default();
        items.iter().filter_map(|t| Some((t[0] == "out", SipMsg::parse(t[1].as_str()?.as_bytes())?))).collect()
    }

    /// Both phones' SIP traces, headers only (for failure messages).
    pub fn traces(&mut self) -> String {
        let mut out = String::new();
        for who in ["alice", "bob"] {
            for (sent, m) in self.trace(who) {
                let heads: Vec<String> = m.headers.iter().map(|(k, v)| format!("    {k}: {v}")).collect();
                out += &format!("{who} {} {}\n{}\n", if sent { "sent" } else { "got" }, m.start, heads.join("\n"));
            }
        }
        out
    }

    /// Poll until `who` recorded the event `ev`; the first such event.
    pub fn wait_event(&mut self, who: &str, ev: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.events(who).into_iter().find(|e| e["ev"] == ev) {
                return e;
            }
            if Instant::now() >= deadline {
                let page = self.browser.text();
                panic!("{who} had no `{ev}` within {WAIT:?}; the page:\n{page}\nSIP:\n{}", self.traces());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `who`'s event `ev` came from `originator` with `cause` ("": none).
    pub fn expect_event(&mut self, who: &str, ev: &str, originator: &str, cause: &str) -> Value {
        let e = self.wait_event(who, ev);
        let got = (e["originator"].as_str(), e["cause"].as_str().unwrap_or_default());
        assert_eq!(got, (Some(originator), cause), "{who}'s `{ev}`: {e}");
        e
    }

    /// `who`'s RTP packet counts on its current session (received, sent).
    pub fn rtp(&mut self, who: &str) -> (u64, u64) {
        let v = self.js(&format!("rtp('{who}')"));
        (v["received"].as_u64().unwrap_or(0), v["sent"].as_u64().unwrap_or(0))
    }

    /// Poll until `who` received and sent more RTP packets than `above`; the counts.
    pub fn wait_rtp(&mut self, who: &str, above: (u64, u64)) -> (u64, u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.rtp(who);
            if got.0 > above.0 && got.1 > above.1 {
                return got;
            }
            assert!(Instant::now() < deadline, "{who}'s RTP (received, sent) stayed at {got:?}, above {above:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll `done` every 50 ms until it holds; at `within`, panic with `what` and both SIP traces.
    pub fn poll(&mut self, what: &str, within: Duration, mut done: impl FnMut(&mut Phones) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; SIP:\n{}", self.traces());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Called right after a hangup: neither phone holds a session or dialog within [`HANGUP`] of now.
    pub fn assert_idle_soon(&mut self) {
        self.poll("no JsSIP session or dialog left", HANGUP, |p| p.js("held('alice') + held('bob')") == 0);
    }

    /// How many `code` answers to a `method` `who` received.
    pub fn answers(&mut self, who: &str, code: u16, method: &str) -> usize {
        let trace = self.trace(who);
        trace.iter().filter(|(sent, m)| !sent && m.status() == Some(code) && m.cseq_method() == Some(method)).count()
    }

    /// `who` sent each final answer to an INVITE of `cid` at most twice (JsSIP resends its 2xx until the ACK).
    pub fn assert_sent_at_most_twice(&mut self, who: &str, cid: &str) {
        let mut per_answer = std::collections::BTreeMap::<String, usize>::new();
        for (sent, m) in self.trace(who) {
            let of_call = m.header("Call-ID") == Some(cid) && m.cseq_method() == Some("INVITE");
            if sent && of_call && m.status().is_some_and(|s| s >= 200) {
                *per_answer.entry(format!("{} {}", m.header("CSeq").unwrap_or(""), m.start)).or_default() += 1;
            }
        }
        for (answer, n) in per_answer {
            assert!(n <= 2, "{who} sent `{answer}` {n} times, no ACK reached it:\n{}", self.traces());
        }
    }

    /// How often `who` received a final answer `code` to an INVITE of `cid`.
    pub fn finals_received(&mut self, who: &str, cid: &str, code: u16) -> usize {
        let trace = self.trace(who);
        let of_call = |m: &SipMsg| m.header("Call-ID") == Some(cid) && m.cseq_method() == Some("INVITE");
        trace.iter().filter(|(sent, m)| !sent && of_call(m) && m.status() == Some(code)).count()
    }

    /// The bodies (SDP) of the messages `who` sent (true) or received with Call-ID `cid`, with their start lines.
    pub fn bodies(&mut self, who: &str, cid: &str) -> Vec<(bool, String, String)> {
        let trace = self.trace(who);
        let of_call = trace.into_iter().filter(|(_, m)| m.header("Call-ID") == Some(cid) && !m.body.is_empty());
        of_call.map(|(sent, m)| (sent, m.start.clone(), String::from_utf8_lossy(&m.body).into_owned())).collect()
    }
}

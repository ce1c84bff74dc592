//! A WebRTC-style client in a real browser through the real binary: JsSIP (from the npm registry, pinned and
//! checked by `scripts/fetch-jssip.sh`) runs in headless Chromium on a page this test serves over HTTP, connects
//! to sipfront's `ws:` listener (RFC 7118; the page's Origin is the one `[websocket] allowed_origins` lets in) and
//! registers with a PBX written in the test ([`RustPbx`], UDP), which sees sipfront's Path and answers 200. The
//! page must show "registered". Then the other way: the PBX sends a MESSAGE along that Path, sipfront delivers it
//! over the browser's WebSocket, JsSIP answers 200 and the page lists the text. The page unregisters (the PBX sees
//! `expires=0`); a MESSAGE along the old Path now gets 430 Flow Failed from sipfront. Last, the same page served
//! from another port (another Origin) is refused: the page shows "disconnected" and sipfront counts an `origin`
//! refusal. sipfront's `/metrics` must show the WebSocket connection, the flow and the requests on the way.
//!
//! The page reads its state into the DOM (`body[data-state]`, `#messages`); the test reads the DOM through the
//! DevTools protocol (`common::browser::Browser`) while the page keeps running, polling with a bound, no sleeps.
//! JsSIP's npm package has no browser bundle (CommonJS in `lib/` only), so the test serves its modules and those
//! of its dependencies wrapped for the small loader in `tests/webrtc/require.js`.
//!
//! Needs Chromium and JsSIP; both are fetched by `scripts/test.sh`, and the test fails naming the command when
//! either is missing. JsSIP is looked up in `$SIPFRONT_JSSIP`, else in the script's default cache dir.
//! Test number (tests/common/mod.rs): 120. Besides 127.0.0.120:5060 (UDP, TCP) sipfront listens for WebSocket on
//! :5066 and for its admin API on :9090; the page is served from :8080 (allowed Origin) and :8081 (not).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::*;

const WS_PORT: u16 = 5066;
const ADMIN_PORT: u16 = 9090;
const PAGE_PORT: u16 = 8080;
const FOREIGN_PAGE_PORT: u16 = 8081;

/// Where `scripts/fetch-jssip.sh` puts JsSIP when not told otherwise.
const JSSIP_DEFAULT: &str = "/var/tmp/sipfront-npm/jssip-3.13.8";

/// Bound of each wait on the PBX or the page (Chromium's start and JsSIP's first parse come before the first).
const WAIT: Duration = Duration::from_secs(15);

/// The node_modules tree `scripts/fetch-jssip.sh` made.
fn node_modules() -> PathBuf {
    let dir = std::env::var_os("SIPFRONT_JSSIP").map(PathBuf::from).unwrap_or_else(|| JSSIP_DEFAULT.into());
    let modules = dir.join("node_modules");
    assert!(
        modules.join("jssip/lib/JsSIP.js").is_file(),
        "JsSIP is not at {} (SIPFRONT_JSSIP or the default): run `scripts/fetch-jssip.sh` (scripts/test.sh does)",
        dir.display()
    );
    modules
}

/// Every module of the packages under `modules` (their `.js` files and `package.json`s, tests left out) as one
/// script for the loader of `tests/webrtc/require.js`; it defines `window.require`.
fn bundle(modules: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read node_modules").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "test" && name != "tests" {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".js") || name == "package.json" {
                let key = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((key, std::fs::read_to_string(&path).expect("read a module")));
            }
        }
    }
    let mut files = Vec::new();
    walk(modules, modules, &mut files);
    let mut js = String::from(include_str!("webrtc/require.js"));
    js.push_str("\nwindow.require = installRequire({\n");
    for (key, source) in files {
        let body = match source.strip_prefix("#!") {
            _ if key.ends_with(".json") => format!("module.exports = {source};"),
            // A script's `#!` line is valid at the top of a file only (node skips it the same way).
            Some(rest) => format!("//{rest}"),
            None => source,
        };
        js.push_str(&format!("{}: function (require, module, exports) {{\n{body}\n}},\n", serde_json::json!(key)));
    }
    js.push_str("});\n");
    js
}

/// The test page and the JsSIP bundle over HTTP/1.1 on one address, from a thread; stopped on drop.
struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    fn start(addr: SocketAddr, script: Arc<String>) -> PageServer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(c, &script);
                }
            }
        });
        PageServer { addr, stop, thread: Some(thread) }
    }
}

/// One request on a connection: `/` is the page, `/jssip.js` the bundle, anything else 404.
fn serve(mut c: TcpStream, script: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let req = String::from_utf8_lossy(&req);
    let path = req.split(' ').nth(1).unwrap_or("/");
    let (status, kind, body) = match path.split('?').next() {
        Some("/") => ("200 OK", "text/html", include_str!("webrtc/page.html")),
        Some("/jssip.js") => ("200 OK", "text/javascript", script),
        _ => ("404 Not Found", "text/plain", "not here\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes()).and_then(|_| c.write_all(body.as_bytes()));
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The PBX's next message; when none comes, the panic shows what the page says.
fn pbx_expect(pbx: &RustPbx, browser: &mut Browser, what: &str) -> (SipMsg, ReplyPath) {
    pbx.recv(WAIT).unwrap_or_else(|| panic!("the PBX got no {what} within {WAIT:?}; the page: {}", browser.text()))
}

/// The PBX's next final response (provisionals skipped).
fn pbx_final(pbx: &RustPbx, browser: &mut Browser, what: &str) -> SipMsg {
    loop {
        let (m, _) = pbx_expect(pbx, browser, what);
        if m.status().is_some_and(|c| c >= 200) {
            return m;
        }
    }
}

/// The URI inside a name-addr's `<...>`.
fn uri_of(name_addr: &str) -> &str {
    let a = name_addr.find('<').map_or(0, |i| i + 1);
    let b = name_addr[a..].find('>').map_or(name_addr.len(), |i| a + i);
    &name_addr[a..b]
}

/// A MESSAGE from the PBX to the browser: Request-URI its registered Contact, Route sipfront's Path.
fn pbx_message(pbx: &RustPbx, contact: &str, path: &str, call: &str, text: &str) -> String {
    let mut m =
        request("MESSAGE", contact, pbx.addr, Tp::Udp, call, &format!("Route: {path}\r\nContent-Type: text/plain\r\n"));
    m = m.replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{text}", text.len()));
    m
}

/// sipfront's Prometheus exposition.
fn metrics(admin: &str) -> String {
    let (code, text) = http_exchange(admin, "GET", "/metrics", None, "").expect("sipfront's admin API");
    assert_eq!(code, 200, "{text}");
    text
}

/// Poll `/metrics` until `metric` has the value `want`.
fn wait_metric(admin: &str, metric: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(admin);
        let got = metric_sample(&text, metric).unwrap_or(0.0);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{metric} = {got}, want {want} within {WAIT:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the page served from `port` is in `state` (false while a navigation has no body yet).
fn state_is(port: u16, state: &str) -> String {
    format!("location.port === '{port}' && !!document.body && document.body.dataset.state === '{state}'")
}

#[test]
fn jssip_in_chromium_registers_through_sipfront_and_is_reached_back() {
    let modules = node_modules();
    let mut h = Harness::new("webrtc_browser", 120);
    let ip = h.front_ip();
    let script = Arc::new(bundle(&modules));
    let _page = PageServer::start(h.front(PAGE_PORT), script.clone());
    let _foreign = PageServer::start(h.front(FOREIGN_PAGE_PORT), script);
    let pbx = RustPbx::healthy(h.pbx(PBX1_PORT), Tp::Udp, h.sipfront());
    let origin = format!("http://{ip}:{PAGE_PORT}");
    let admin = format!("{ip}:{ADMIN_PORT}");
    // A token, or sipfront warns that switchover and drain are refused (the test checks it warns of nothing).
    let token = h.dir.join("admin.token");
    std::fs::write(&token, "webrtc-browser-admin-token-0123456789").unwrap();
    h.start_sipfront(
        &FrontConfig::new()
            .backend("pbx", pbx.addr, Tp::Udp)
            .listen(&format!("ws:{ip}:{WS_PORT}"))
            .section(&format!("[websocket]\nallowed_origins = [\"{origin}\"]"))
            .section(&format!("[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"", token.display())),
    );
    let query = format!("?ws=ws://{ip}:{WS_PORT}&aor=sip:alice@{ip}");
    let mut browser = Browser::open("webrtc", &format!("{origin}/{query}"));

    // JsSIP's REGISTER at the PBX: sipfront's Via and Path on top of the browser's WS Via and Contact.
    let (reg, reply) = pbx_expect(&pbx, &mut browser, "JsSIP's REGISTER");
    assert_eq!(reg.method(), Some("REGISTER"), "{reg:#?}");
    let vias = reg.header_values("Via");
    assert!(vias.len() == 2 && vias[1].starts_with("SIP/2.0/WS ") && vias[1].contains(".invalid;"), "{vias:?}");
    let path = reg.header("Path").unwrap_or_else(|| panic!("no Path: {reg:#?}")).to_owned();
    assert!(path.contains(&format!("@{}", h.sipfront())) && path.ends_with(";lr;ob>"), "sipfront's Path: {path}");
    let contact = reg.header("Contact").unwrap_or_else(|| panic!("no Contact: {reg:#?}")).to_owned();
    assert!(contact.contains(".invalid;transport=ws>"), "JsSIP's Contact: {contact}");
    assert!(contact.contains(";expires=300"), "JsSIP asks for 300 s: {contact}");
    reply
        .send(response_to(&reg, 200, "OK", "registrar", &format!("Contact: {contact}\r\nPath: {path}\r\n")).as_bytes());
    browser.wait_for("the page shows the registration", &state_is(PAGE_PORT, "registered"), WAIT);

    // sipfront saw one WebSocket connection and holds one registration flow.
    let text = metrics(&admin);
    assert_eq!(metric_sample(&text, "sipfront_tcp_connections{transport=\"ws\"}"), Some(1.0), "{text}");
    assert_eq!(metric_sample(&text, "sipfront_registration_flows"), Some(1.0), "{text}");
    assert_eq!(metric_sample(&text, "sipfront_requests_total{method=\"REGISTER\"}"), Some(1.0), "{text}");
    assert!(metric_sample(&text, "sipfront_transport_rx_bytes_total{transport=\"ws\"}").unwrap_or(0.0) > 0.0);

    // The other way: the PBX reaches the browser through the Path.
    let ruri = uri_of(&contact).to_owned();
    pbx.send(pbx_message(&pbx, &ruri, &path, "msg-1", "hello from the PBX").as_bytes());
    let ok = pbx_final(&pbx, &mut browser, "JsSIP's answer to the MESSAGE");
    assert_eq!((ok.status(), ok.cseq_method()), (Some(200), Some("MESSAGE")), "{ok:#?}");
    browser.wait_for("the page lists the MESSAGE", "document.querySelectorAll('#messages li').length === 1", WAIT);
    let shown = browser.eval("document.querySelector('#messages li').textContent");
    assert_eq!(shown.as_str(), Some("hello from the PBX"));

    // Unregistration: the PBX sees expires=0; the flow is gone and the old Path gets 430.
    browser.eval("window.sipUa.unregister(); true");
    let (unreg, reply) = pbx_expect(&pbx, &mut browser, "JsSIP's un-REGISTER");
    assert_eq!(unreg.method(), Some("REGISTER"), "{unreg:#?}");
    let gone = unreg.header("Contact").unwrap_or_default();
    assert!(gone.contains(";expires=0") && gone.contains(uri_of(&contact)), "un-REGISTER Contact: {gone}");
    reply.send(response_to(&unreg, 200, "OK", "registrar", "").as_bytes());
    browser.wait_for("the page shows the unregistration", &state_is(PAGE_PORT, "unregistered"), WAIT);
    wait_metric(&admin, "sipfront_registration_flows", 0.0);
    pbx.send(pbx_message(&pbx, &ruri, &path, "msg-2", "anyone there?").as_bytes());
    let refused = pbx_final(&pbx, &mut browser, "sipfront's answer to a MESSAGE along a gone flow");
    assert_eq!(refused.status(), Some(430), "{refused:#?}");
    assert_eq!(browser.eval("document.querySelectorAll('#messages li').length").as_u64(), Some(1));

    // Another Origin: the upgrade is refused with 403, the page never connects; the first page's WebSocket
    // closed when the tab left it.
    browser.navigate(&format!("http://{ip}:{FOREIGN_PAGE_PORT}/{query}"));
    browser.wait_for("the foreign page is refused", &state_is(FOREIGN_PAGE_PORT, "disconnected"), WAIT);
    wait_metric(&admin, "sipfront_tcp_connections{transport=\"ws\"}", 0.0);
    let text = metrics(&admin);
    let refusals = metric_sample(&text, "sipfront_ws_refused_total{reason=\"origin\"}").unwrap_or(0.0);
    assert!(refusals >= 1.0, "an origin refusal counted:\n{text}");
    assert_eq!(metric_sample(&text, "sipfront_requests_total{method=\"REGISTER\"}"), Some(2.0), "{text}");
    assert_eq!(metric_sample(&text, "sipfront_requests_total{method=\"MESSAGE\"}"), Some(2.0), "{text}");
    assert!(h.front_log_problems().is_empty(), "sipfront logged problems: {:?}", h.front_log_problems());
}

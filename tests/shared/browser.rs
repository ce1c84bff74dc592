//! Headless Chromium for the browser tests (Debian's `chromium`, installed by `scripts/test.sh`): where it is,
//! the flags every run takes, and [`Browser`], one Chromium driven over the DevTools protocol (a WebSocket to its
//! page target) so that a test can read the page's DOM while the page keeps running and talking to sipfront.
//! A missing Chromium fails the test with the command that installs it: the test command installs it, so a missing
//! one is a broken machine, not a reason to skip.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, stream::MaybeTlsStream, Message, WebSocket};

use super::http::http_exchange;
use super::proc::Proc;

pub fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c.into();
        }
    }
    panic!("chromium is not installed (the README's test command, scripts/test.sh, installs Debian's `chromium`)");
}

/// The flags of every headless run: no sandbox (tests run as root), no GPU, nothing fetched from the internet;
/// Chromium's stderr (D-Bus noise) discarded. Stdout is left to the caller (`--dump-dom` writes there).
pub fn headless_args(cmd: &mut Command, profile: &Path) {
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null())
    .stderr(Stdio::null());
}

/// A fresh directory under the system temp dir (a Chromium profile, a demo's working dir).
pub fn tempdir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipfront-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How long Chromium may take to start and to answer one DevTools command.
const DEVTOOLS_WAIT: Duration = Duration::from_secs(20);

/// One headless Chromium showing one page, driven over the DevTools protocol; killed (its whole process group)
/// and its profile removed on drop.
pub struct Browser {
    proc: Proc,
    profile: PathBuf,
    devtools: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Start Chromium on `url` with a DevTools port of its choosing on loopback (read back from its profile).
    pub fn open(label: &str, url: &str) -> Browser {
        Browser::open_with(label, url, &[])
    }

    /// [`Browser::open`] with more Chromium flags (a fake microphone for WebRTC, say).
    pub fn open_with(label: &str, url: &str, extra_args: &[&str]) -> Browser {
        let profile = tempdir(&format!("{label}-chromium"));
        let mut cmd = Command::new("timeout");
        // A bound for when the test itself is killed before it can clean up.
        cmd.args(["-s", "KILL", "300"]).arg(chromium());
        headless_args(&mut cmd, &profile);
        cmd.args(extra_args);
        cmd.args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]).arg(url).stdout(Stdio::null());
        let mut proc = Proc::spawn(label, cmd);
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + DEVTOOLS_WAIT;
        let port = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(p) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok()) {
                break p;
            }
            if let Some(st) = proc.try_wait() {
                panic!("chromium exited before it opened its DevTools port ({st})");
            }
            assert!(Instant::now() < deadline, "chromium opened no DevTools port within {DEVTOOLS_WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let list = format!("127.0.0.1:{port}");
        let (code, body) = http_exchange(&list, "GET", "/json/list", None, "").expect("chromium's /json/list");
        assert_eq!(code, 200, "chromium's /json/list: {body}");
        let targets: Value = serde_json::from_str(&body).expect("chromium's /json/list is JSON");
        let page = targets
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("chromium shows no page target: {body}"))
            .to_owned();
        let (devtools, _) = tungstenite::connect(page.as_str()).expect("connect to the page's DevTools socket");
        if let MaybeTlsStream::Plain(s) = devtools.get_ref() {
            s.set_read_timeout(Some(DEVTOOLS_WAIT)).expect("read timeout");
        }
        Browser { proc, profile, devtools, next_id: 0 }
    }

    /// One DevTools command; its `result` (events that arrive meanwhile are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let cmd = json!({ "id": id, "method": method, "params": params }).to_string();
        self.devtools.send(Message::text(cmd)).unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        loop {
            let frame = self.devtools.read().unwrap_or_else(|e| panic!("DevTools {method}: no answer ({e})"));
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if v["id"] == id {
                assert!(v["error"].is_null(), "DevTools {method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluate a JavaScript expression in the page (a promise is awaited); its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r =
            self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }));
        assert!(r["exceptionDetails"].is_null(), "`{expr}` threw: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Poll `expr` every 50 ms until it is `true`; panics after `within` with `what` and the page's text.
    pub fn wait_for(&mut self, what: &str, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.eval(expr) != Value::Bool(true) {
            if Instant::now() >= deadline {
                panic!("{what}: not within {within:?}; the page says:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's text as shown (for failure messages).
    pub fn text(&mut self) -> String {
        let v = self.eval("document.body ? document.body.innerText : document.documentElement.outerHTML");
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Load another URL in the same tab (the old page and its connections go away).
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.devtools.close(None);
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

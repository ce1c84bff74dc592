//! baresip's `ctrl_tcp` control connection: commands out as netstring-framed JSON
//! (`{"command", "params", "token"}`), and in, on the same connection, the responses (matched by token) and the
//! events, queued until a wait takes them.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a command may take to be answered.
const COMMAND: Duration = Duration::from_secs(10);

/// One `ctrl_tcp` event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `CALL_ESTABLISHED`, `REGISTER_OK` ...
    pub kind: String,
    /// The call's id (its Call-ID), empty for account events.
    pub call: String,
    pub peer: String,
    pub param: String,
    pub at: Instant,
    pub json: serde_json::Value,
}

/// The control connection of one phone.
pub struct Ctrl {
    /// The phone's name, for messages.
    name: String,
    stream: TcpStream,
    /// Bytes read, not yet a whole netstring.
    buf: Vec<u8>,
    /// Events not yet taken by a wait, oldest first; `history` keeps all of them.
    pending: VecDeque<Event>,
    history: Vec<Event>,
    responses: VecDeque<serde_json::Value>,
    seq: u64,
}

impl Ctrl {
    pub fn new(name: &str, stream: TcpStream) -> Ctrl {
        stream.set_nodelay(true).expect("nodelay");
        Ctrl {
            name: name.into(),
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            history: Vec::new(),
            responses: VecDeque::new(),
            seq: 0,
        }
    }

    /// Run a command: `Ok(data)` when baresip says ok, `Err(data)` when it says not, or when no answer came.
    pub fn command(&mut self, cmd: &str, params: &str) -> Result<String, String> {
        self.seq += 1;
        let token = format!("t{}", self.seq);
        let body = serde_json::json!({ "command": cmd, "params": params, "token": token }).to_string();
        let frame = format!("{}:{body},", body.len());
        self.stream.write_all(frame.as_bytes()).map_err(|e| format!("{}: control socket: {e}", self.name))?;
        let deadline = Instant::now() + COMMAND;
        loop {
            if let Some(i) = self.responses.iter().position(|r| r["token"] == token.as_str()) {
                let r = self.responses.remove(i).expect("present");
                let data = r["data"].as_str().unwrap_or_default().to_string();
                return if r["ok"] == true { Ok(data) } else { Err(data) };
            }
            if !self.pump_until(deadline) {
                return Err(format!("{}: no answer to `{cmd} {params}` within {COMMAND:?}", self.name));
            }
        }
    }

    /// The first pending event that `pred` accepts, taken off the queue; `None` at the deadline.
    pub fn take_event(&mut self, deadline: Instant, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        loop {
            if let Some(i) = self.pending.iter().position(&pred) {
                return self.pending.remove(i);
            }
            if !self.pump_until(deadline) {
                return None;
            }
        }
    }

    /// Forget the events not taken yet (the history keeps them).
    pub fn clear_pending(&mut self) {
        self.pump_until(Instant::now());
        self.pending.clear();
    }

    /// Every event so far (reads what is waiting on the socket first).
    pub fn history(&mut self) -> &[Event] {
        self.pump_until(Instant::now());
        &self.history
    }

    /// Read what the socket has until `deadline`; false once the deadline passed with nothing new.
    fn pump_until(&mut self, deadline: Instant) -> bool {
        let mut got = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            // With something already read, only take what is there now.
            let wait = if got { Duration::from_millis(1) } else { left.min(Duration::from_millis(100)) };
            self.stream.set_read_timeout(Some(wait)).expect("set timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("{}: baresip closed its control socket (see its log below)", self.name),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    got |= self.take_frames();
                }
                // A signal (a child exiting) interrupts the read: just read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if got || Instant::now() >= deadline {
                        return got;
                    }
                }
                Err(e) => panic!("{}: control socket: {e}", self.name),
            }
        }
    }

    /// Move every whole netstring (`LEN:JSON,`) in `buf` to the responses or the events; whether there was one.
    fn take_frames(&mut self) -> bool {
        let mut any = false;
        while let Some(colon) = self.buf.iter().position(|b| *b == b':') {
            let len: Option<usize> = std::str::from_utf8(&self.buf[..colon]).ok().and_then(|s| s.trim().parse().ok());
            let Some(len) = len else {
                panic!("{}: bad netstring {:?}", self.name, String::from_utf8_lossy(&self.buf))
            };
            if self.buf.len() < colon + 1 + len + 1 {
                break;
            }
            let v: serde_json::Value =
                serde_json::from_slice(&self.buf[colon + 1..colon + 1 + len]).unwrap_or(serde_json::Value::Null);
            self.buf.drain(..colon + 1 + len + 1);
            any = true;
            if v["event"] == true {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                let (kind, call, peer, param) = (s("type"), s("id"), s("peeruri"), s("param"));
                let e = Event { kind, call, peer, param, at: Instant::now(), json: v };
                self.history.push(e.clone());
                self.pending.push_back(e);
            } else if v["response"] == true {
                self.responses.push_back(v);
            }
        }
        any
    }
}

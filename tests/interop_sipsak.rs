//! sipsak (Debian's `sipsak`, installed by scripts/test.sh) against the real binary: its OPTIONS ping is answered
//! by sipfront itself, over UDP and TCP; its REGISTER goes through sipfront to a real registrar (Kamailio, from
//! tests/interop/kamailio-b2bua.cfg) and back, and the registrar keeps sipfront's Path: a request Kamailio sends to the
//! registered user comes through sipfront to the flow the REGISTER came from. A MESSAGE that sipsak sends to that
//! user through sipfront spirals (sipfront -> Kamailio -> sipfront -> user) and is answered. Unregistering removes the
//! binding. Test numbers (tests/common/mod.rs): 240-241.
//!
//! sipsak binds 127.0.0.N (`--local-ip`) and, for the REGISTER, sends and receives on one port (`-S -l PORT`), so
//! the flow sipfront records is the Contact the test listens on afterwards.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sippy::Registrar;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// The registering user's port on 127.0.0.N (its Contact, and the flow sipfront records).
const CAROL_PORT: u16 = 5097;

/// A finished sipsak: its exit code and everything it printed.
struct SipsakRun {
    code: Option<i32>,
    out: String,
}

/// A running sipsak: its own process group under `timeout` (sipsak has its own retransmission limits; this
/// bounds a hang), SIGKILLed on drop.
struct Sipsak {
    proc: Proc,
    out: PathBuf,
}

impl Sipsak {
    /// Start sipsak from 127.0.0.N (`--local-ip`, and `-H` so its Via and Contact name that address too).
    fn spawn(h: &Harness, label: &str, args: &[&str]) -> Sipsak {
        let ip = h.front_ip().to_string();
        let out = h.dir.join(format!("sipsak-{label}.out"));
        let file = std::fs::File::create(&out).expect("create sipsak output");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", "20", "sipsak", "--local-ip", &ip, "-H", &ip])
            .args(args)
            .stdout(file.try_clone().expect("clone handle"))
            .stderr(file);
        Sipsak { proc: Proc::spawn(&format!("sipsak-{label}"), cmd), out }
    }

    /// Wait (bounded) for it to exit.
    fn wait(mut self) -> SipsakRun {
        let deadline = Instant::now() + Duration::from_secs(25);
        let status = loop {
            if let Some(st) = self.proc.try_wait() {
                break st;
            }
            assert!(Instant::now() < deadline, "sipsak did not exit:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(10));
        };
        SipsakRun { code: status.code(), out: self.output() }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }
}

impl Drop for Sipsak {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// Run sipsak to the end.
fn sipsak(h: &Harness, label: &str, args: &[&str]) -> SipsakRun {
    Sipsak::spawn(h, label, args).wait()
}

#[test]
fn options_ping_is_answered_200_over_udp_and_tcp() {
    let mut h = Harness::new("sipsak_options", 240);
    // No PBX runs: sipfront answers an OPTIONS for itself without asking a backend.
    h.start_sipfront(&FrontConfig::new().backend("pbx", h.pbx(PBX1_PORT), Tp::Udp));
    let target = format!("sip:{}", h.sipfront());
    for tp in ["udp", "tcp"] {
        let run = sipsak(&h, tp, &["--transport", tp, "-vv", "-s", &target]);
        assert_eq!(run.code, Some(0), "sipsak OPTIONS over {tp} failed:\n{}", run.out);
        assert!(run.out.contains("SIP/2.0 200 OK"), "sipsak over {tp} got no 200:\n{}", run.out);
        assert!(
            run.out.contains("Server: sipfront\r\n") || run.out.contains("Server: sipfront\n"),
            "the 200 is sipfront's own:\n{}",
            run.out
        );
    }
}

/// A MESSAGE to carol sent straight to the registrar (from beside it), for Kamailio to route by its location table.
fn message_to_carol(h: &Harness, registrar: SocketAddr, call_id: &str) -> (UdpPeer, String) {
    let sender = UdpPeer::bind(h.pbx_ip());
    let ruri = format!("sip:carol@{registrar}");
    let req = request("MESSAGE", &ruri, sender.local, Tp::Udp, call_id, "Content-Type: text/plain\r\n");
    sender.send(req.as_bytes(), registrar);
    (sender, ruri)
}

/// The final response to the request `call_id` that `peer` receives within `WAIT`.
fn final_response(peer: &UdpPeer, call_id: &str) -> Option<SipMsg> {
    let until = Instant::now() + WAIT;
    while let Some(m) = peer.recv_msg_until(until) {
        if m.header("Call-ID") == Some(call_id) && m.status().is_some_and(|s| s >= 200) {
            return Some(m);
        }
    }
    None
}

#[test]
fn register_through_sipfront_keeps_the_path_and_unregister_removes_it() {
    let mut h = Harness::new("sipsak_register", 241);
    let registrar = Registrar::start(&h.dir, h.pbx(PBX1_PORT));
    h.start_sipfront(&FrontConfig::new().backend("kamailio", registrar.addr, Tp::Udp));
    let contact = format!("sip:carol@{}:{CAROL_PORT}", h.front_ip());
    let aor = format!("sip:carol@{}", h.sipfront());
    let port = CAROL_PORT.to_string();
    let register = |expires: &str| {
        sipsak(&h, "register", &["-U", "-C", &contact, "-x", expires, "-s", &aor, "-l", &port, "-S", "-i", "-vvv"])
    };

    let run = register("60");
    assert_eq!(run.code, Some(0), "sipsak REGISTER through sipfront failed:\n{}", run.out);
    assert!(run.out.contains("SIP/2.0 200 OK") && run.out.contains("Server: kamailio"), "{}", run.out);
    let reg = registrar.expect(WAIT, "REGISTER", |l| l.is_method("REGISTER") && l.field("expires") == Some("60"));
    let front = h.sipfront().to_string();
    assert_eq!(reg.field("src"), Some(front.as_str()), "the REGISTER came through sipfront: {}", reg.line);
    let path = reg.field("path").unwrap_or_default();
    assert!(path.contains(&format!("@{front};lr")), "the registrar got sipfront's Path (flow token): {}", reg.line);

    // The registrar routes to carol along the Path: Kamailio -> sipfront -> carol's flow (sipsak's port).
    let carol = UdpPeer::bind_addr(SocketAddr::new(h.front_ip().into(), CAROL_PORT));
    let (sender, _) = message_to_carol(&h, registrar.addr, "sipsak-path-1");
    let until = Instant::now() + WAIT;
    let (data, from) = loop {
        let got = carol.recv_until(until).expect("the MESSAGE reached carol's flow through sipfront");
        if SipMsg::parse(&got.0).is_some_and(|m| m.method() == Some("MESSAGE")) {
            break got;
        }
    };
    let msg = SipMsg::parse(&data).expect("a SIP message");
    assert_eq!(from, h.sipfront(), "carol got the MESSAGE from sipfront (the Path), not from Kamailio");
    let vias = msg.header_values("Via");
    assert!(vias.len() >= 3, "sipfront, Kamailio and the sender each left a Via: {vias:?}");
    assert!(vias[0].contains(&h.sipfront().to_string()), "sipfront's Via on top: {vias:?}");
    assert!(vias[1].contains(&registrar.addr.to_string()), "Kamailio's Via next: {vias:?}");
    carol.send(response_to(&msg, 200, "OK", "carol", "").as_bytes(), from);
    let ok = final_response(&sender, "sipsak-path-1").expect("the sender got carol's answer back");
    assert_eq!(ok.status(), Some(200), "{}", ok.to_text());

    // sipsak's MESSAGE to carol through sipfront spirals: sipsak -> sipfront -> Kamailio (lookup) -> sipfront ->
    // carol, the same request twice through sipfront (only its Request-URI and Route differ).
    // (sipsak's own MESSAGE mode, -M, segfaults in 0.9.8.1: it sends this file, adding its Via.)
    let file = h.dir.join("message.sip");
    let body = "hello carol";
    let text = format!(
        "MESSAGE {aor} SIP/2.0\r\nFrom: <sip:sipsak@{ip}>;tag=s-1\r\nTo: <{aor}>\r\nCall-ID: sipsak-spiral-1\r\n\
         CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        ip = h.front_ip()
    );
    std::fs::write(&file, text).expect("write message.sip");
    let file = file.to_string_lossy().into_owned();
    let msg_run = Sipsak::spawn(&h, "message", &["-f", &file, "-s", &aor, "-vv"]);
    let until = Instant::now() + WAIT;
    let msg = loop {
        let m = carol.recv_msg_until(until).unwrap_or_else(|| {
            panic!("sipsak's MESSAGE did not reach carol (second pass through sipfront):\n{}", msg_run.output())
        });
        if m.method() == Some("MESSAGE") {
            break m;
        }
    };
    let vias = msg.header_values("Via");
    let ours = vias.iter().filter(|v| v.contains(&h.sipfront().to_string())).count();
    assert_eq!(ours, 2, "sipfront's Via from each pass: {vias:?}");
    carol.send(response_to(&msg, 200, "OK", "carol", "").as_bytes(), h.sipfront());
    let run = msg_run.wait();
    assert_eq!(run.code, Some(0), "sipsak's MESSAGE got no 200 back:\n{}", run.out);
    drop(carol);

    let run = register("0");
    assert_eq!(run.code, Some(0), "sipsak unREGISTER through sipfront failed:\n{}", run.out);
    registrar.expect(WAIT, "REGISTER with Expires 0", |l| l.is_method("REGISTER") && l.field("expires") == Some("0"));
    // No binding left: Kamailio itself answers 404.
    let (sender, _) = message_to_carol(&h, registrar.addr, "sipsak-path-2");
    let nf = final_response(&sender, "sipsak-path-2").expect("Kamailio answered the MESSAGE");
    assert_eq!(nf.status(), Some(404), "{}", nf.to_text());
    assert!(h.front_log_problems().iter().all(|l| !l.contains("ERROR")), "{:?}", h.front_log_problems());
}

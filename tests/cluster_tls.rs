//! A TLS phone through a leader failover: three real nodes in network namespaces (`tests/netns`), SIP over TLS on
//! the VIP (one certificate for the VIP on every node), a PBX of our own over UDP on pbx1 (SIPp cannot send a BYE
//! on command), and a TLS SIP phone of our own (tokio-rustls) in the phones namespace.
//!
//! Injected: `kill -9` of the leader while the phone has two established calls over its TLS connection. A
//! connection cannot move to another node, so the phone does what an RFC 5626 client does: its CRLF keep-alive
//! gets no pong, it reconnects to the VIP (now on the new leader) and registers again. Checked, nothing lost:
//! call A ends with the phone's BYE over the new connection; call B ends with the PBX's BYE, which the new leader
//! delivers over the phone's new connection (the flow it re-learned from the REGISTER); a new call C goes through;
//! the PBX saw every INVITE and ACK, both BYEs and the 200 to its own.
//!
//! Lab tag 18 (see tests/netns/mod.rs). The phase times are printed (`failover tls ...`) and appended to
//! `$SIPFRONT_FAILOVER_LOG` when it is set.

mod netns;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use netns::config::quoted;
use netns::nsenter::{in_ns, udp_socket_in};
use netns::*;
use sipfront::sip::{HeaderName, Message, ResponseBuilder};
use sipfront::transport::{frame_stream_message, Framed};

const TAG: u8 = 18;
const TLS_PORT: u16 = 5061;
/// Any single step (a transaction, a reconnect) must be done within this.
const STEP: Duration = Duration::from_secs(10);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A CA and a certificate for the VIP, as PEM files in the lab dir; the client config trusting the CA.
fn make_pki(lab: &Lab) -> Arc<ClientConfig> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "sipfront lab CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![lab.vip().to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "sipfront VIP");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(lab.dir.join("vip.crt"), cert.pem()).unwrap();
    std::fs::write(lab.dir.join("vip.key"), key.serialize_pem()).unwrap();
    std::fs::write(lab.dir.join("ca.pem"), ca.pem()).unwrap();
    // sipfront's own client side (ring): the CA file, certificates verified.
    let settings = sipfront::transport::TlsSettings {
        cert_file: None,
        key_file: None,
        ca_file: Some(lab.dir.join("ca.pem")),
        verify_backends: true,
        handshake_timeout: STEP,
    };
    sipfront::transport::tls::load_client_config(&settings).expect("client config")
}

/// What the PBX saw and did, for the checks at the end.
#[derive(Default)]
struct PbxLog {
    options: usize,
    /// Call-ID → the INVITE (for the PBX's own BYE later).
    invites: HashMap<String, Message>,
    acks: Vec<String>,
    byes_received: Vec<String>,
    /// Call-IDs whose BYE (sent by the PBX) was answered 200.
    bye_answered: Vec<String>,
}

/// A PBX over UDP on pbx1: 200 to OPTIONS, REGISTER, INVITE (with the Record-Route copied) and BYE; a BYE of
/// its own on request, retransmitted (timer E) until answered.
struct Pbx {
    sock: Arc<UdpSocket>,
    log: Arc<Mutex<PbxLog>>,
    addr: SocketAddr,
}

impl Pbx {
    fn start(lab: &Lab, rt: &tokio::runtime::Runtime) -> Pbx {
        let addr = lab.pbx_sip(1);
        let std_sock = udp_socket_in(&lab.ns(Ns::Pbx(1)), addr).expect("pbx socket");
        std_sock.set_nonblocking(true).unwrap();
        let sock = Arc::new({
            let _g = rt.enter();
            UdpSocket::from_std(std_sock).unwrap()
        });
        let log = Arc::new(Mutex::new(PbxLog::default()));
        let (s, l) = (sock.clone(), log.clone());
        rt.spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else { return };
                let Ok(m) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else { continue };
                let call = text(m.call_id());
                if let Some(code) = m.status() {
                    if code == 200 && m.cseq_method() == sipfront::sip::Method::Bye {
                        l.lock().unwrap().bye_answered.push(call);
                    }
                    continue;
                }
                let reply = match m.method_bytes() {
                    b"ACK" => {
                        l.lock().unwrap().acks.push(call);
                        continue;
                    }
                    b"INVITE" => {
                        let contact = format!("<sip:200@{addr}>");
                        let mut ok =
                            ResponseBuilder::new(&m, 200, "OK").to_tag(b"pbx").header("Contact", contact.as_bytes());
                        for rr in m.header_values(HeaderName::RecordRoute) {
                            ok = ok.header("Record-Route", rr);
                        }
                        let ok = ok.build();
                        l.lock().unwrap().invites.insert(call, m.clone());
                        ok
                    }
                    b"OPTIONS" => {
                        l.lock().unwrap().options += 1;
                        ResponseBuilder::new(&m, 200, "OK").build()
                    }
                    b"BYE" => {
                        l.lock().unwrap().byes_received.push(call);
                        ResponseBuilder::new(&m, 200, "OK").build()
                    }
                    _ => ResponseBuilder::new(&m, 200, "OK").to_tag(b"pbx").build(),
                };
                let _ = s.send_to(&reply, from).await;
            }
        });
        Pbx { sock, log, addr }
    }

    /// The PBX hangs up `call` (its route set is the INVITE's Record-Route, its target the phone's Contact),
    /// retransmitting every 500 ms until the 200 comes.
    async fn hang_up(&self, call: &str, vip: SocketAddr) {
        let inv = self.log.lock().unwrap().invites.get(call).cloned().expect("the call's INVITE");
        let contact = inv.header(HeaderName::Contact).map(text).unwrap();
        let target = contact.trim().trim_start_matches('<').split('>').next().unwrap().to_string();
        let mut bye = format!("BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKpbxbye{call}\r\n", self.addr);
        for rr in inv.header_values(HeaderName::RecordRoute) {
            bye.push_str(&format!("Route: {}\r\n", text(rr)));
        }
        bye.push_str(&format!(
            "From: {};tag=pbx\r\nTo: {}\r\nCall-ID: {call}\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            text(inv.header(HeaderName::To).unwrap()),
            text(inv.header(HeaderName::From).unwrap()),
        ));
        let deadline = Instant::now() + STEP;
        let mut wait = Duration::from_millis(500);
        loop {
            self.sock.send_to(bye.as_bytes(), vip).await.unwrap();
            let sent = Instant::now();
            while sent.elapsed() < wait {
                if self.log.lock().unwrap().bye_answered.iter().any(|c| c == call) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(Instant::now() < deadline, "the PBX's BYE of {call} was never answered");
            wait = (wait * 2).min(Duration::from_secs(4));
        }
    }
}

/// A SIP phone on one TLS connection to the VIP, from the phones namespace.
struct Phone {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    local: SocketAddr,
    pongs: usize,
}

/// One of the phone's calls: what it needs for in-dialog requests.
struct Call {
    id: String,
    to: String,
    /// Route set: the Record-Route of the 200, reversed.
    routes: Vec<String>,
    target: String,
}

impl Phone {
    /// Connect (TCP in the phones namespace, then TLS to the VIP's certificate).
    async fn connect(ns: &str, vip: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<Phone> {
        let tcp = in_ns(ns, move || std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(300)))??;
        tcp.set_nonblocking(true)?;
        let tcp = TcpStream::from_std(tcp)?;
        let local = tcp.local_addr()?;
        let name = ServerName::IpAddress(vip.ip().into());
        // A connection the killed node's kernel took while it still held the VIP is never answered: the phone
        // gives up on a handshake after a second and tries again.
        let tls =
            tokio::time::timeout(Duration::from_secs(1), tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        Ok(Phone { tls, buf: Vec::new(), local, pongs: 0 })
    }

    async fn send(&mut self, m: &str) {
        self.tls.write_all(m.as_bytes()).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next message (keep-alive pongs are counted), or why there is none within `within`.
    async fn recv(&mut self, within: Duration) -> Result<Message, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match frame_stream_message(&self.buf, 65535) {
                Framed::Message(n) => {
                    let m: Vec<u8> = self.buf.drain(..n).collect();
                    return Message::parse(Bytes::from(m)).map_err(|e| format!("unparsable: {e:?}"));
                }
                Framed::KeepAlive { n, .. } => {
                    self.buf.drain(..n);
                    self.pongs += 1;
                    return Err("pong".into());
                }
                Framed::Invalid(why) => return Err(why.into()),
                Framed::NeedMore => {}
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Err(_) => return Err("timeout".into()),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err("closed".into()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next SIP message; fails the test otherwise.
    async fn expect(&mut self, what: &str) -> Message {
        loop {
            match self.recv(STEP).await {
                Ok(m) => return m,
                Err(e) if e == "pong" => continue,
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    /// The final response to what was just sent.
    async fn final_response(&mut self, what: &str) -> Message {
        loop {
            let m = self.expect(what).await;
            if m.status().is_some_and(|s| s >= 200) {
                return m;
            }
        }
    }

    /// An RFC 5626 keep-alive: a double CRLF that must get a CRLF back within `within`.
    async fn ping(&mut self, within: Duration) -> bool {
        if self.tls.write_all(b"\r\n\r\n").await.is_err() || self.tls.flush().await.is_err() {
            return false;
        }
        let before = self.pongs;
        loop {
            match self.recv(within).await {
                Err(e) if e == "pong" => return self.pongs > before,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    fn head(&self, method: &str, ruri: &str, branch: &str) -> String {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n",
            self.local
        )
    }

    async fn register(&mut self, vip: IpAddr, cseq: u32) {
        let mut m = self.head("REGISTER", &format!("sip:{vip}"), &format!("reg{cseq}"));
        m.push_str(&format!(
            "From: <sip:100@{vip}>;tag=reg{cseq}\r\nTo: <sip:100@{vip}>\r\nCall-ID: reg@phone\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:100@{};transport=tls;ob>;expires=300\r\nContent-Length: 0\r\n\r\n",
            self.local
        ));
        self.send(&m).await;
        assert_eq!(self.final_response("REGISTER").await.status(), Some(200), "registered");
    }

    /// INVITE, 200, ACK.
    async fn call(&mut self, vip: IpAddr, id: &str) -> Call {
        let mut m = self.head("INVITE", &format!("sip:200@{vip}"), &format!("{id}inv"));
        m.push_str(&format!(
            "From: <sip:100@{vip}>;tag=ph{id}\r\nTo: <sip:200@{vip}>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:100@{};transport=tls;ob>\r\nContent-Length: 0\r\n\r\n",
            self.local
        ));
        self.send(&m).await;
        let ok = self.final_response("INVITE").await;
        assert_eq!(ok.status(), Some(200), "call {id} answered");
        let rr: Vec<String> = ok.header_values(HeaderName::RecordRoute).map(text).collect();
        assert_eq!(rr.len(), 2, "TLS to UDP: a double Record-Route: {rr:?}");
        let contact = text(ok.header(HeaderName::Contact).unwrap());
        let call = Call {
            id: id.into(),
            to: text(ok.header(HeaderName::To).unwrap()),
            routes: rr.into_iter().rev().collect(),
            target: contact.trim_start_matches('<').trim_end_matches('>').to_string(),
        };
        self.send(&self.in_dialog(&call, "ACK", 1, vip)).await;
        call
    }

    fn in_dialog(&self, call: &Call, method: &str, cseq: u32, vip: IpAddr) -> String {
        let mut m = self.head(method, &call.target, &format!("{}{method}{cseq}", call.id));
        for r in &call.routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        m.push_str(&format!(
            "From: <sip:100@{vip}>;tag=ph{}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            call.id, call.to, call.id
        ));
        m
    }

    async fn hang_up(&mut self, call: &Call, vip: IpAddr) {
        self.send(&self.in_dialog(call, "BYE", 2, vip)).await;
        let ok = self.final_response("BYE").await;
        assert_eq!(ok.status(), Some(200), "BYE of {} answered", call.id);
    }

    /// Wait for the PBX's BYE of `call` and answer it.
    async fn answer_bye(&mut self, call: &Call) {
        let bye = self.expect("the PBX's BYE").await;
        assert_eq!(bye.method_bytes(), b"BYE");
        assert_eq!(text(bye.call_id()), call.id);
        let vias: Vec<String> = bye.header_values(HeaderName::Via).map(text).collect();
        assert!(vias[0].starts_with("SIP/2.0/TLS "), "delivered over TLS by sipfront: {vias:?}");
        self.send(&text(&ResponseBuilder::new(&bye, 200, "OK").build())).await;
    }
}

#[test]
fn tls_phone_reconnects_after_a_leader_kill_and_its_calls_end_cleanly() {
    let Some(mut lab) = Lab::new(TAG) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client_cfg = make_pki(&lab);
    let pbx = Pbx::start(&lab, &rt);
    lab.start_pbx(2, "uas_health.xml");
    let vip = lab.vip();
    let vip_sip = lab.vip_sip();
    let vip_tls = SocketAddr::new(IpAddr::V4(vip), TLS_PORT);
    let dir = lab.dir.clone();
    let file = |f: &str| quoted(&dir.join(f).display().to_string());
    for i in 1..=3u8 {
        let toml = NodeConfig::cluster(&lab, i)
            .set("sip", "listen", &format!("[\"udp:{vip_sip}\", \"tcp:{vip_sip}\", \"tls:{vip_tls}\"]"))
            .table("tls", &[("cert_file", &file("vip.crt")), ("key_file", &file("vip.key"))])
            .toml();
        lab.start_node(i, &toml);
    }
    let sampler = lab.vip_sampler();
    poll_until("one VIP holder", Duration::from_secs(15), || sampler.holders().len() == 1);
    let old = *sampler.holders().first().unwrap();
    lab.wait_sip_ready(&format!("n{old}"), Ns::Phones, vip_sip);
    poll_until("pbx1 probed", STEP, || pbx.log.lock().unwrap().options >= 3);

    let phones = lab.ns(Ns::Phones);
    let (mut phone, a, b) = rt.block_on(async {
        let mut phone = Phone::connect(&phones, vip_tls, client_cfg.clone()).await.expect("TLS to the VIP");
        phone.register(IpAddr::V4(vip), 1).await;
        let a = phone.call(IpAddr::V4(vip), "call-a").await;
        let b = phone.call(IpAddr::V4(vip), "call-b").await;
        (phone, a, b)
    });
    poll_until("both ACKs at the PBX", STEP, || pbx.log.lock().unwrap().acks.len() == 2);
    poll_until("both dialogs on every node", STEP, || {
        (1..=3).all(|i| status_field(&lab.status(old), i, DIALOGS) == Some("2"))
    });

    let killed = lab.kill9(&format!("n{old}"));
    // The phone's keep-alive finds the connection dead; it reconnects until the new leader answers on the VIP.
    let (reconnected, registered) = rt.block_on(async {
        while phone.ping(Duration::from_millis(500)).await {
            assert!(killed.elapsed() < STEP, "the old connection still answers keep-alives");
        }
        let mut attempts = 0;
        let mut fresh = loop {
            attempts += 1;
            match Phone::connect(&phones, vip_tls, client_cfg.clone()).await {
                Ok(p) => break p,
                Err(e) => {
                    assert!(killed.elapsed() < STEP, "no TLS to the VIP after {attempts} attempts: {e}");
                    // A phone's reconnect interval (RFC 5626 §4.5 backs off from far longer).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let reconnected = killed.elapsed();
        fresh.register(IpAddr::V4(vip), 2).await;
        phone = fresh;
        (reconnected, killed.elapsed())
    });
    let new = *sampler.holders().first().unwrap();
    assert_ne!(new, old, "the VIP moved");
    let vip_moved = sampler
        .changes()
        .iter()
        .find(|c| c.at > killed && c.holders.len() == 1 && c.holders.contains(&new))
        .map(|c| c.at - killed)
        .expect("the VIP's move in the sampler's timeline");

    rt.block_on(async {
        phone.hang_up(&a, IpAddr::V4(vip)).await;
        tokio::join!(pbx.hang_up("call-b", vip_sip), phone.answer_bye(&b));
        let c = phone.call(IpAddr::V4(vip), "call-c").await;
        phone.hang_up(&c, IpAddr::V4(vip)).await;
    });

    let log = pbx.log.lock().unwrap();
    let mut invites: Vec<&String> = log.invites.keys().collect();
    invites.sort();
    assert_eq!(invites, ["call-a", "call-b", "call-c"], "every INVITE reached the PBX");
    for call in ["call-a", "call-b", "call-c"] {
        assert!(log.acks.iter().any(|c| c == call), "{call}: ACK at the PBX");
    }
    assert!(log.byes_received.iter().any(|c| c == "call-a"), "the phone's BYE of call A reached the PBX");
    assert!(log.byes_received.iter().any(|c| c == "call-c"), "the phone's BYE of call C reached the PBX");
    assert!(log.bye_answered.iter().any(|c| c == "call-b"), "the phone answered the PBX's BYE of call B");
    poll_until("no dialog left on the new leader", STEP, || status_field(&lab.status(new), new, DIALOGS) == Some("0"));
    sampler.assert_never_two();
    let line = format!(
        "failover tls kill9 n{old}->n{new}: VIP moved {} ms, phone reconnected {} ms, registered {} ms",
        vip_moved.as_millis(),
        reconnected.as_millis(),
        registered.as_millis()
    );
    println!("{line}");
    if let Ok(path) = std::env::var("SIPFRONT_FAILOVER_LOG") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

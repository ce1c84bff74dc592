//! SIP over TLS, in process and against the real binary, with the helpers of `support/tls.rs` (a test CA, a
//! TLS SIP client) and a raw-socket UDP PBX: calls both ways, a phone registered over TLS, TLS backends verified or
//! not, the handshake timeout, config refusals naming the key, and a SIGHUP certificate reload that leaves an open
//! connection alone (phones whose connection is gone: `tls_reconnect.rs`). Every wait has a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::CertificateDer;

use sipfront::config::Config;
use sipfront::sip::{HeaderName, ResponseBuilder};

mod support;

use support::tls::*;
use support::*;

#[tokio::test]
async fn tls_client_calls_a_udp_pbx_and_hangs_up() {
    let pki = Pki::new("call");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n = tls_node(&pki, &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let (mut phone, rr) = call_from_tls_client(&pki, &n, &pbx, "c1").await;
    let routes: Vec<String> = rr.iter().rev().cloned().collect();
    let pbx_uri = format!("sip:bob@{}", pbx.local_addr().unwrap());
    phone.send(&in_dialog("BYE", &pbx_uri, &routes, phone.local, "TLS", "c1", 2)).await;
    let (bye, from) = recv_udp(&pbx).await;
    assert_eq!(bye.method_bytes(), b"BYE");
    assert!(values(&bye, HeaderName::Via)[0].starts_with("SIP/2.0/UDP "));
    pbx.send_to(&ResponseBuilder::new(&bye, 200, "OK").build(), from).await.unwrap();
    let ok = phone.recv_final().await;
    assert_eq!((ok.status(), ok.cseq_method()), (Some(200), sipfront::sip::Method::Bye));
    n.server.shutdown().await;
}

#[tokio::test]
async fn pbx_hangs_up_over_the_clients_tls_connection() {
    let pki = Pki::new("back");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = tls_node(&pki, &backend("p", "udp", pbx_addr, 1)).await;
    let (mut phone, rr) = call_from_tls_client(&pki, &n, &pbx, "c2").await;
    // The PBX's route set is the Record-Route as it saw it; its target is the client's Contact, an address no
    // one can connect to: only the connection named in the Record-Route reaches the client.
    let contact = format!("sip:a@{};transport=tls", phone.local);
    pbx_hangs_up(&pbx, &n, &mut phone, &bye_from_pbx(&contact, &rr, pbx_addr, "c2", 7)).await;
    n.server.shutdown().await;
}

#[tokio::test]
async fn the_pbx_reaches_a_phone_registered_over_tls_through_its_connection() {
    let pki = Pki::new("register");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let pbx_addr = pbx.local_addr().unwrap();
    let n = tls_node(&pki, &backend("p", "udp", pbx_addr, 1)).await;
    let mut phone = connect_tls(&pki, n.tls).await;
    let me = phone.local;
    // The Contact is not where the phone is (a NAT, or an ephemeral TLS port): only the flow reaches it.
    let register = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtreg;rport\r\n\
         From: <sip:100@pbx>;tag=r1\r\nTo: <sip:100@pbx>\r\nCall-ID: treg@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:100@127.0.0.98:5098;transport=tls>;expires=300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send(register.as_bytes()).await;
    let (reg, from) = recv_udp(&pbx).await;
    let path = text(reg.header(HeaderName::Path).expect("our Path"));
    assert!(path.contains(&format!("@127.0.0.1:{};lr;ob>", n.udp.port())), "the Path faces the PBX: {path}");
    let ok = ResponseBuilder::new(&reg, 200, "OK")
        .to_tag(b"reg")
        .header("Contact", b"<sip:100@127.0.0.98:5098;transport=tls>;expires=120")
        .build();
    pbx.send_to(&ok, from).await.unwrap();
    assert_eq!(phone.recv_final().await.status(), Some(200));

    let invite =
        String::from_utf8(request("INVITE", "sip:100@127.0.0.98:5098;transport=tls", pbx_addr, "UDP", "tin").to_vec())
            .unwrap()
            .replace("Max-Forwards: 70", &format!("Route: {path}\r\nMax-Forwards: 70"));
    pbx.send_to(invite.as_bytes(), n.udp).await.unwrap();
    let inv = phone.recv().await;
    assert_eq!(inv.method_bytes(), b"INVITE");
    let vias = values(&inv, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{};", n.tls.port())), "{vias:?}");
    let rr = values(&inv, HeaderName::RecordRoute);
    assert!(rr.iter().any(|r| r.contains(";transport=tls;")), "the phone-facing entry says TLS: {rr:?}");
    phone.send(&ResponseBuilder::new(&inv, 486, "Busy Here").to_tag(b"busy").build()).await;
    pbx_acks_final(&pbx, n.udp, &invite, 486).await;
    // No graceful shutdown: it would wait out timer I (T4 on the UDP leg) of the ACKed INVITE.
}

#[tokio::test]
async fn requests_reach_a_tls_backend_verified_by_the_ca_file() {
    let pki = Pki::new("backend");
    pki.leaf("front");
    pki.leaf("pbx");
    let pbx = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = tls_node(&pki, &backend("p", "tls", pbx.local_addr().unwrap(), 1)).await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("MESSAGE", "sip:bob@127.0.0.1", me, "UDP", "b1"), n.udp).await.unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, pbx.accept()).await.expect("sipfront connects").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config("pbx"));
    let stream = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await.expect("handshake in time").unwrap();
    let mut conn = TlsPeer { stream, buf: Vec::new(), local: pbx.local_addr().unwrap() };
    let req = conn.recv().await;
    assert_eq!(req.method_bytes(), b"MESSAGE");
    let vias = values(&req, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{};", n.tls.port())), "{vias:?}");
    conn.send(&ResponseBuilder::new(&req, 200, "OK").to_tag(b"x").build()).await;
    let (resp, _) = recv_udp(&phone).await;
    assert_eq!(resp.status(), Some(200));
    n.server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_shakes_hands_is_dropped_after_the_handshake_timeout() {
    let pki = Pki::new("slow");
    pki.leaf("front");
    let pbx = udp_socket().await;
    let n =
        tls_node_with(&pki, "handshake_timeout = \"300ms\"", &backend("p", "udp", pbx.local_addr().unwrap(), 1)).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(n.tls).await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(WAIT, silent.read(&mut b)).await.expect("closed within the deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "sipfront closed the connection: {r:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout: {:?}", started.elapsed());
    // The listener still serves others.
    let mut good = connect_tls(&pki, n.tls).await;
    options(&mut good, n.tls, "h1").await;
    n.server.shutdown().await;
}

/// A TLS PBX with a self-signed certificate (not from the test CA): refused by default, accepted with
/// `verify_backends = false`.
async fn message_to_self_signed_backend(verify: bool) -> (Option<u16>, bool) {
    let pki = Pki::new(if verify { "verify-on" } else { "verify-off" });
    pki.leaf("front");
    let own = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(pki.path("lab.crt"), own.cert.pem()).unwrap();
    std::fs::write(pki.path("lab.key"), own.signing_key.serialize_pem()).unwrap();
    let pbx = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let extra = format!("verify_backends = {verify}");
    let n = tls_node_with(&pki, &extra, &backend("p", "tls", pbx.local_addr().unwrap(), 1)).await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    phone.send_to(&request("MESSAGE", "sip:bob@127.0.0.1", me, "UDP", "v1"), n.udp).await.unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, pbx.accept()).await.expect("sipfront connects").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config("lab"));
    let handshake = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await.expect("handshake ends in time");
    let shook_hands = handshake.is_ok();
    if let Ok(stream) = handshake {
        let mut conn = TlsPeer { stream, buf: Vec::new(), local: pbx.local_addr().unwrap() };
        let req = conn.recv().await;
        conn.send(&ResponseBuilder::new(&req, 200, "OK").to_tag(b"x").build()).await;
    }
    let status = loop {
        let (resp, _) = recv_udp(&phone).await;
        if resp.status().is_some_and(|s| s >= 200) {
            break resp.status();
        }
    };
    n.server.shutdown().await;
    (status, shook_hands)
}

#[tokio::test]
async fn a_backend_certificate_outside_the_ca_file_is_refused() {
    let (status, shook_hands) = message_to_self_signed_backend(true).await;
    assert!(!shook_hands, "sipfront aborted the handshake");
    assert!(status.is_some_and(|s| s >= 500), "the phone hears a failure: {status:?}");
}

#[tokio::test]
async fn verify_backends_false_accepts_a_self_signed_lab_pbx() {
    let (status, shook_hands) = message_to_self_signed_backend(false).await;
    assert!(shook_hands);
    assert_eq!(status, Some(200));
}

fn config_with(tls: &str) -> String {
    format!(
        "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"tls:127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n{tls}\n\
         [[backend]]\nname = \"p\"\nuri = \"sip:127.0.0.1:5080;transport=tls\"\n"
    )
}

#[test]
fn bad_tls_files_are_refused_naming_the_key() {
    let pki = Pki::new("refuse");
    pki.leaf("front");
    pki.leaf("other");
    let missing_key = tls_section(&pki, "front").replace("front.key", "nope.key");
    let e = Config::from_toml(&config_with(&missing_key)).unwrap_err().to_string();
    assert!(e.starts_with("tls.key_file: cannot read ") && e.contains("nope.key"), "{e}");
    let mismatch = tls_section(&pki, "front").replace("front.key", "other.key");
    let e = Config::from_toml(&config_with(&mismatch)).unwrap_err().to_string();
    assert!(e.starts_with("tls.key_file: the key in ") && e.contains("does not match"), "{e}");
    let key_as_cert = tls_section(&pki, "front").replace("front.crt", "front.key");
    let e = Config::from_toml(&config_with(&key_as_cert)).unwrap_err().to_string();
    assert!(e.starts_with("tls.cert_file: ") && e.contains("no PEM certificate"), "{e}");
    let cert_as_key = tls_section(&pki, "front").replace("front.key", "front.crt");
    let e = Config::from_toml(&config_with(&cert_as_key)).unwrap_err().to_string();
    assert!(e.starts_with("tls.key_file: ") && e.contains("no PEM private key"), "{e}");
    let e = Config::from_toml(&config_with("")).unwrap_err().to_string();
    assert!(e.starts_with("tls.cert_file: a tls: or wss: listener needs"), "{e}");
    let stray = format!("{}cert = \"x\"\n", tls_section(&pki, "front"));
    let e = Config::from_toml(&config_with(&stray)).unwrap_err().to_string();
    assert!(e.contains("unknown field `cert`"), "{e}");
    Config::from_toml(&config_with(&tls_section(&pki, "front"))).expect("the good files load");
}

/// The real binary, killed on drop.
struct Binary {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_binary(dir: &Path, config: &str) -> Binary {
    let cfg = dir.join("sipfront.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("sipfront.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sipfront"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Binary { child, log }
}

fn peer_cert(peer: &TlsClient) -> CertificateDer<'static> {
    peer.stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn options(peer: &mut TlsClient, to: SocketAddr, branch: &str) {
    peer.send(&request("OPTIONS", &format!("sip:{to};transport=tls"), peer.local, "TLS", branch)).await;
    let ok = peer.recv_final().await;
    assert_eq!(ok.status(), Some(200), "sipfront answers OPTIONS on the connection");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let pki = Pki::new("reload");
    let first = pki.leaf("front");
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"tls:{front}\"]\nadvertise = \"127.0.0.1\"\n\
         [log]\nlevel = \"info\"\n[health]\nenabled = false\n{}\n\
         [[backend]]\nname = \"p\"\nuri = \"sip:127.0.0.1:5080;transport=tls\"\n",
        tls_section(&pki, "front")
    );
    let bin = start_binary(&pki.dir, &config);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(front).await.is_err() {
        assert!(Instant::now() < deadline, "sipfront listens in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut old = connect_tls(&pki, front).await;
    assert_eq!(peer_cert(&old), first);
    options(&mut old, front, "o1").await;

    // A new certificate in the same files, then SIGHUP.
    let second = pki.leaf("front");
    assert_ne!(first, second);
    let pid = bin.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let fresh = connect_tls(&pki, front).await;
        if peer_cert(&fresh) == second {
            break;
        }
        assert!(Instant::now() < deadline, "a new connection sees the new certificate in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    options(&mut old, front, "o2").await;
    assert_eq!(peer_cert(&old), first, "the open connection keeps its session");

    // A broken key: the reload fails, is logged with the key at fault, and the certificate in use stays.
    std::fs::write(pki.path("front.key"), "not a key\n").unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(&bin.log).unwrap_or_default();
        if log.contains("TLS reload failed") {
            assert!(log.contains("tls.key_file"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "the failed reload is logged in time: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = connect_tls(&pki, front).await;
    assert_eq!(peer_cert(&fresh), second);
    options(&mut fresh, front, "o3").await;
    options(&mut old, front, "o4").await;
}

//! TLS helpers for the in-process tests: a test CA and certificates made here (rcgen, PEM files in a fresh
//! directory), a node with a `tls:` listener, and a small SIP client on one TLS connection (tokio-rustls).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use sipfront::config::Config;
use sipfront::server::Server;
use sipfront::sip::{HeaderName, Message, ResponseBuilder};
use sipfront::transport::Transport;

use super::{recv_udp, values, WAIT};

/// A client connection to sipfront's TLS listener.
pub type TlsClient = TlsPeer<tokio_rustls::client::TlsStream<TcpStream>>;

/// A test CA and what it signed, as PEM files in a fresh directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("sipfront-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "sipfront test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// A leaf for 127.0.0.1 written to `NAME.crt` / `NAME.key`; returns its DER.
    pub fn leaf(&self, name: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }

    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        sipfront::transport::tls::load_server_config(
            &self.path(&format!("{name}.crt")),
            &self.path(&format!("{name}.key")),
        )
        .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `[tls]` section for the leaf `NAME`.
pub fn tls_section(pki: &Pki, name: &str) -> String {
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        pki.path(&format!("{name}.crt")).display(),
        pki.path(&format!("{name}.key")).display(),
        pki.path("ca.pem").display()
    )
}

pub struct TlsNode {
    pub server: Server,
    pub udp: SocketAddr,
    pub tls: SocketAddr,
}

pub async fn tls_node(pki: &Pki, backends: &str) -> TlsNode {
    tls_node_with(pki, "", backends).await
}

/// A node with extra `[tls]` lines.
pub async fn tls_node_with(pki: &Pki, tls_extra: &str, backends: &str) -> TlsNode {
    let text = format!(
        "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n\
         advertise = \"127.0.0.1\"\n[log]\nlevel = \"warn\"\n[health]\nenabled = false\n{}{tls_extra}\n{backends}",
        tls_section(pki, "front")
    );
    let cfg = Config::from_toml(&text).expect("test config");
    let server = Server::start(&cfg, CancellationToken::new()).await.expect("start");
    let addr_of = |t| server.local_addrs().into_iter().find(|(tt, _)| *tt == t).unwrap().1;
    let (udp, tls) = (addr_of(Transport::Udp), addr_of(Transport::Tls));
    TlsNode { server, udp, tls }
}

/// A SIP client on one TLS connection.
pub struct TlsPeer<S> {
    pub stream: S,
    pub buf: Vec<u8>,
    pub local: SocketAddr,
}

pub async fn connect_tls(pki: &Pki, to: SocketAddr) -> TlsPeer<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(to).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::IpAddress(to.ip().into());
    let stream = tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(pki.client_config()).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    TlsPeer { stream, buf: Vec::new(), local }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsPeer<S> {
    pub async fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    pub async fn recv(&mut self) -> Message {
        loop {
            if let sipfront::transport::Framed::Message(n) = sipfront::transport::frame_stream_message(&self.buf, 65535)
            {
                let m: Vec<u8> = self.buf.drain(..n).collect();
                return Message::parse(Bytes::from(m)).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("data in time").unwrap();
            assert!(n > 0, "connection closed while waiting for a message");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message that is not a provisional response.
    pub async fn recv_final(&mut self) -> Message {
        loop {
            let m = self.recv().await;
            if m.status().is_none_or(|s| s >= 200) {
                return m;
            }
        }
    }
}

/// An in-dialog request from a route set (already in the order to send) with a Via of `via_transport`.
pub fn in_dialog(
    method: &str,
    ruri: &str,
    routes: &[String],
    via: SocketAddr,
    tp: &str,
    call: &str,
    cseq: u32,
) -> Vec<u8> {
    let mut s =
        format!("{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{tp} {via};branch=z9hG4bK{call}{method}{cseq};rport\r\n");
    for r in routes {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "From: <sip:a@{via}>;tag=fa\r\nTo: <sip:bob@127.0.0.1>;tag=pbx\r\nCall-ID: {call}@test\r\n\
         CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    s.into_bytes()
}

/// A TLS client calls through sipfront to a UDP PBX; returns the peer, the PBX socket, and the Record-Route the
/// PBX saw (top first) after INVITE/200/ACK.
pub async fn call_from_tls_client(
    pki: &Pki,
    n: &TlsNode,
    pbx: &tokio::net::UdpSocket,
    call: &str,
) -> (TlsClient, Vec<String>) {
    let mut phone = connect_tls(pki, n.tls).await;
    let me = phone.local;
    let invite = format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bK{call}inv;rport\r\n\
         From: <sip:a@{me}>;tag=fa\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: {call}@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:a@{me};transport=tls>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send(invite.as_bytes()).await;
    let (inv, from) = recv_udp(pbx).await;
    assert_eq!(inv.method_bytes(), b"INVITE");
    let vias = values(&inv, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/UDP 127.0.0.1:{};", n.udp.port())), "{vias:?}");
    assert!(vias[1].starts_with(&format!("SIP/2.0/TLS {me};")), "the client's Via is kept: {vias:?}");
    let rr = values(&inv, HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "transport changes: double Record-Route {rr:?}");
    assert!(rr[0].starts_with(&format!("<sip:127.0.0.1:{};d=", n.udp.port())), "{rr:?}");
    assert!(rr[1].starts_with(&format!("<sip:127.0.0.1:{};transport=tls;ft=", n.tls.port())), "{rr:?}");
    let rr_refs: Vec<&[u8]> = rr.iter().map(|s| s.as_bytes()).collect();
    let contact = format!("<sip:bob@{}>", pbx.local_addr().unwrap());
    let mut ok = ResponseBuilder::new(&inv, 200, "OK").to_tag(b"pbx").header("Contact", contact.as_bytes());
    for r in &rr_refs {
        ok = ok.header("Record-Route", r);
    }
    pbx.send_to(&ok.build(), from).await.unwrap();
    let ok = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(values(&ok, HeaderName::Via).len(), 1, "our Via is gone");
    assert_eq!(values(&ok, HeaderName::RecordRoute), rr, "the client sees both entries");
    // The client's route set is the Record-Route reversed: the TLS-facing entry first.
    let routes: Vec<String> = rr.iter().rev().cloned().collect();
    let pbx_uri = format!("sip:bob@{}", pbx.local_addr().unwrap());
    phone.send(&in_dialog("ACK", &pbx_uri, &routes, me, "TLS", call, 1)).await;
    let (ack, _) = recv_udp(pbx).await;
    assert_eq!(ack.method_bytes(), b"ACK");
    (phone, rr)
}

/// The PBX's BYE of a call made by `call_from_tls_client`: From and To the other way round, to the client's Contact
/// through the Record-Route the PBX saw.
pub fn bye_from_pbx(contact: &str, rr: &[String], pbx_addr: SocketAddr, call: &str, cseq: u32) -> String {
    String::from_utf8(in_dialog("BYE", contact, rr, pbx_addr, "UDP", call, cseq))
        .unwrap()
        .replace("From: <sip:a@", "From: <sip:bob@")
        .replace(";tag=fa\r\nTo: <sip:bob@127.0.0.1>;tag=pbx", ";tag=pbx\r\nTo: <sip:a@127.0.0.1>;tag=fa")
}

/// The PBX sends `bye`; the phone must get it over its TLS connection from our TLS listener, and its 200 must
/// reach the PBX.
pub async fn pbx_hangs_up(pbx: &tokio::net::UdpSocket, n: &TlsNode, phone: &mut TlsClient, bye: &str) {
    pbx.send_to(bye.as_bytes(), n.udp).await.unwrap();
    let got = phone.recv().await;
    assert_eq!(got.method_bytes(), b"BYE");
    assert_eq!(got.call_id(), Message::parse(bytes::Bytes::from(bye.to_owned())).unwrap().call_id());
    let vias = values(&got, HeaderName::Via);
    assert!(vias[0].starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{};", n.tls.port())), "{vias:?}");
    phone.send(&ResponseBuilder::new(&got, 200, "OK").build()).await;
    loop {
        let (m, _) = recv_udp(pbx).await;
        if m.status() == Some(200) {
            assert_eq!(m.cseq_method(), sipfront::sip::Method::Bye);
            break;
        }
    }
}

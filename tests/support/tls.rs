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
use sipfront::sip::Message;
use sipfront::transport::Transport;

use super::WAIT;

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

//! Helpers for the in-process tests: a whole node on 127.0.0.1 port 0 and small Rust UAs over real sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use sipfront::config::Config;
use sipfront::server::Server;
use sipfront::sip::{HeaderName, Message};
use sipfront::transport::Transport;

pub mod tls;
pub mod ws;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub server: Server,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

pub async fn node(backends: &str, extra_sip: &str) -> Node {
    node_with_health(backends, extra_sip, "enabled = false").await
}

/// A node like [`node`] whose `[health]` table holds `health` (probes on, say).
pub async fn node_with_health(backends: &str, extra_sip: &str, health: &str) -> Node {
    let text = format!(
        r#"
[node]
id = 1
name = "t"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
advertise = "127.0.0.1"
{extra_sip}
[log]
level = "warn"
[health]
{health}
{backends}
"#
    );
    let cfg = Config::from_toml(&text).expect("test config");
    let server = Server::start(&cfg, CancellationToken::new()).await.expect("start");
    let addr_of = |t| server.local_addrs().into_iter().find(|(tt, _)| *tt == t).unwrap().1;
    let (udp, tcp) = (addr_of(Transport::Udp), addr_of(Transport::Tcp));
    Node { server, udp, tcp }
}

pub fn backend(name: &str, transport: &str, addr: SocketAddr, priority: u32) -> String {
    format!("[[backend]]\nname = \"{name}\"\nuri = \"sip:{addr};transport={transport}\"\npriority = {priority}\n")
}

pub fn request(method: &str, ruri: &str, via: SocketAddr, transport: &str, branch: &str) -> Bytes {
    Bytes::from(format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch=z9hG4bK{branch};rport\r\n\
         From: <sip:a@{via}>;tag=f{branch}\r\nTo: <{ruri}>\r\nCall-ID: {branch}@test\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:a@{via}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

pub async fn recv_udp(sock: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("a message in time").unwrap();
    (Message::parse(Bytes::copy_from_slice(&buf[..n])).expect("parseable"), from)
}

/// Read one Content-Length-framed message from a TCP stream.
pub async fn recv_tcp(s: &mut TcpStream, buf: &mut Vec<u8>) -> Message {
    loop {
        if let sipfront::transport::Framed::Message(n) = sipfront::transport::frame_stream_message(buf, 65535) {
            let m = buf.drain(..n).collect::<Vec<u8>>();
            return Message::parse(Bytes::from(m)).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("data in time").unwrap();
        assert!(n > 0, "connection closed while waiting for a message");
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub async fn udp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// At a raw-socket PBX that sent `invite` to `front`: wait for the final response (it must be `want`, having come
/// back from the phone), and ACK it hop by hop as a non-2xx.
pub async fn pbx_acks_final(pbx: &UdpSocket, front: SocketAddr, invite: &str, want: u16) {
    loop {
        let (m, _) = recv_udp(pbx).await;
        if m.status().is_some_and(|s| s >= 200) {
            assert_eq!(m.status(), Some(want), "the phone's answer came back over its connection");
            let ack = invite.replacen("INVITE sip:", "ACK sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
            pbx.send_to(ack.as_bytes(), front).await.unwrap();
            return;
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn values(m: &Message, h: HeaderName) -> Vec<String> {
    m.header_values(h).map(text).collect()
}

//! WebSocket helpers for the in-process tests: a node with `ws:` and `wss:` listeners (the `wss:` certificate from
//! the test CA of `tls.rs`) and a small SIP-over-WebSocket client (RFC 7118) on tokio-tungstenite, over plain TCP
//! or TLS, that offers the `sip` subprotocol and sends one SIP message per text frame.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use sipfront::config::Config;
use sipfront::server::Server;
use sipfront::sip::Message;
use sipfront::transport::Transport;

use super::tls::{tls_section, Pki};
use super::WAIT;

pub struct WsNode {
    pub server: Server,
    pub udp: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
}

/// The Origin the test nodes allow.
pub const ORIGIN: &str = "https://app.example.com";

pub async fn ws_node(pki: &Pki, backends: &str) -> WsNode {
    let text = format!(
        "[node]\nid = 1\nname = \"t\"\n[sip]\nlisten = [\"udp:127.0.0.1:0\", \"ws:127.0.0.1:0\", \"wss:127.0.0.1:0\"]\n\
         advertise = \"127.0.0.1\"\n[log]\nlevel = \"warn\"\n[health]\nenabled = false\n{}\n\
         [websocket]\nallowed_origins = [\"{ORIGIN}\"]\n{backends}",
        tls_section(pki, "front")
    );
    let cfg = Config::from_toml(&text).expect("test config");
    let server = Server::start(&cfg, CancellationToken::new()).await.expect("start");
    let addr_of = |t| server.local_addrs().into_iter().find(|(tt, _)| *tt == t).unwrap().1;
    let (udp, ws, wss) = (addr_of(Transport::Udp), addr_of(Transport::Ws), addr_of(Transport::Wss));
    WsNode { server, udp, ws, wss }
}

/// A SIP client on one WebSocket connection. `host` is its `.invalid` Via and Contact host (RFC 7118 §5.2).
pub struct WsPeer<S> {
    pub ws: WebSocketStream<S>,
    pub host: String,
    pub transport: &'static str,
}

/// The upgrade request: `sip` offered unless `protocol` says otherwise, an Origin when given.
fn upgrade_request(
    scheme: &str,
    to: SocketAddr,
    origin: Option<&str>,
    protocol: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://{to}/").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", HeaderValue::from_str(o).unwrap());
    }
    req
}

/// Open `ws://to/` with an Origin and subprotocol of choice; the error is what sipfront answered.
pub async fn try_connect_ws(
    to: SocketAddr,
    origin: Option<&str>,
    protocol: Option<&str>,
) -> Result<WsPeer<TcpStream>, tungstenite::Error> {
    let tcp = TcpStream::connect(to).await.unwrap();
    let req = upgrade_request("ws", to, origin, protocol);
    let (ws, resp) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp)).await.expect("upgrade in time")?;
    assert_eq!(resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()), Some(&b"sip"[..]));
    Ok(WsPeer { ws, host: format!("ws{}.invalid", to.port()), transport: "WS" })
}

pub async fn connect_ws(to: SocketAddr) -> WsPeer<TcpStream> {
    try_connect_ws(to, Some(ORIGIN), Some("sip")).await.expect("upgrade")
}

/// Open `wss://to/` over TLS verified by the test CA.
pub async fn connect_wss(pki: &Pki, to: SocketAddr) -> WsPeer<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(to).await.unwrap();
    let name = ServerName::IpAddress(to.ip().into());
    let tls = tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(pki.client_config()).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let req = upgrade_request("wss", to, Some(ORIGIN), Some("sip"));
    let (ws, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tls)).await.expect("upgrade in time").unwrap();
    WsPeer { ws, host: format!("wss{}.invalid", to.port()), transport: "WSS" }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsPeer<S> {
    /// One SIP message in one text frame.
    pub async fn send(&mut self, data: &[u8]) {
        let text = String::from_utf8(data.to_vec()).unwrap();
        self.ws.send(Frame::text(text)).await.unwrap();
    }

    /// The next SIP message (one frame); pings and pongs are skipped.
    pub async fn recv(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time");
            let data: Bytes = match frame.expect("connection open").expect("a frame") {
                Frame::Text(t) => t.into(),
                Frame::Binary(b) => b,
                Frame::Ping(_) | Frame::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            };
            return Message::parse(data).expect("one whole SIP message per frame");
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

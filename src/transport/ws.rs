//! SIP over WebSocket (RFC 7118) for `ws:` and `wss:` listeners: the HTTP upgrade (subprotocol `sip`, allowed
//! Origins) and the per-connection loop that turns each text or binary frame into one SIP message and each queued
//! message into one frame. The TCP pool (`tcp.rs`) owns the listeners, the TLS of `wss:`, connection ids and
//! reuse; this module only speaks WebSocket on a stream it is handed. We never open WebSocket connections: a WS
//! client is reachable only over the connection it opened.
//!
//! Every `websocket.ping_interval` we send a Ping; a peer from which no frame at all arrived by the next tick
//! (a dead browser, a NAT binding gone) is closed (`ping_timeout`). The same bounds a client that trickles a
//! frame slowly, which `sip.message_timeout` cannot see inside tungstenite.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::limits::{count_close, CloseReason};
use super::{ConnId, Inbound, Source, Transport, Verdict};
use crate::metrics as m;

/// What the WebSocket side needs from the config (`[websocket]`).
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Origins a browser may connect from (`https://app.example.com`); empty: any. A request without an
    /// Origin header (a non-browser client) is let in: Origin protects browsers, others can forge it anyway.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket frame accepted, in bytes.
    pub max_frame_size: usize,
    /// The HTTP upgrade (after TLS on `wss:`) must be done this long after it starts (`[tls] handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Send a Ping this often, and close a connection that sent no frame between two pings; `None`: never.
    pub ping_interval: Option<Duration>,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            allowed_origins: Vec::new(),
            max_frame_size: 65_535,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(30)),
        }
    }
}

/// The subprotocol of RFC 7118 §4.
const SUBPROTOCOL: &str = "sip";

/// Why an upgrade was refused; the label of the refusal counter.
fn refuse(status: StatusCode, reason: &'static str, remote: SocketAddr) -> ErrorResponse {
    metrics::counter!(m::WS_REFUSED, "reason" => reason).increment(1);
    tracing::info!(%remote, reason, status = status.as_u16(), "websocket upgrade refused");
    let mut r = ErrorResponse::new(Some(format!("{reason}\n")));
    *r.status_mut() = status;
    r
}

/// Check the upgrade request: an allowed Origin (403 otherwise) and the `sip` subprotocol (400 without it),
/// which the answer then names.
// The large error type is tungstenite's callback contract, and it is built once per refused upgrade.
#[allow(clippy::result_large_err)]
fn check_upgrade(
    settings: &WsSettings,
    remote: SocketAddr,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    if let Some(origin) = req.headers().get("origin") {
        let ok = settings.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|o| settings.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            return Err(refuse(StatusCode::FORBIDDEN, "origin", remote));
        }
    }
    let offers_sip = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if !offers_sip {
        return Err(refuse(StatusCode::BAD_REQUEST, "subprotocol", remote));
    }
    resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    Ok(resp)
}

/// The HTTP upgrade on an accepted (and for `wss:`, TLS-wrapped) stream, bounded by the handshake timeout.
/// `None` when it failed or was refused: logged, and counted (`sipfront_ws_refused_total` and the close) before
/// the socket is dropped.
pub(super) async fn accept<S>(
    stream: S,
    settings: &WsSettings,
    max_message: usize,
    remote: SocketAddr,
    transport: Transport,
) -> Option<WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config =
        WebSocketConfig::default().max_frame_size(Some(settings.max_frame_size)).max_message_size(Some(max_message));
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| check_upgrade(settings, remote, req, resp);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    // Pinned here so that on a timeout the socket lives until the close is counted.
    tokio::pin!(upgrade);
    match tokio::time::timeout(settings.handshake_timeout, &mut upgrade).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            // A refusal was counted by its own reason; this counts the rest (not HTTP, bad key, reset).
            if !matches!(e, tokio_tungstenite::tungstenite::Error::Http(_)) {
                metrics::counter!(m::WS_REFUSED, "reason" => "handshake").increment(1);
            }
            tracing::debug!(%remote, error = %e, "websocket upgrade failed");
            count_close(transport, CloseReason::HandshakeFailed);
            None
        }
        Err(_) => {
            metrics::counter!(m::WS_REFUSED, "reason" => "timeout").increment(1);
            tracing::info!(%remote, "websocket upgrade timed out");
            count_close(transport, CloseReason::HandshakeTimeout);
            None
        }
    }
}

/// Everything one WebSocket connection's loop needs besides the socket.
pub(super) struct Conn {
    pub id: ConnId,
    pub source: Source,
    pub idle: Duration,
    /// `websocket.ping_interval`; `None`: no pings.
    pub ping_interval: Option<Duration>,
    pub inbound: std::sync::Arc<dyn Inbound>,
    /// Cancelled when the guard banned the peer's source (the pool's `close_where`): closed, counted `banned`.
    pub evict: CancellationToken,
}

/// Read frames into `inbound` and write queued messages as frames until either side closes, the connection is
/// idle for `idle`, the peer misses a ping, a frame cannot be parsed as SIP, its source is banned, or `cancel`. One task does both
/// directions: tungstenite answers pings and closes as part of reading, and its replies go out with the next write
/// or read. A close sipfront decides is counted before the peer can see it.
pub(super) async fn serve<S>(
    mut ws: WebSocketStream<S>,
    mut outgoing: mpsc::Receiver<Bytes>,
    conn: Conn,
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Conn { id, source, idle, ping_interval, inbound, evict } = conn;
    let transport = source.transport;
    // Ticks every ping interval; never when pings are off.
    let mut pings = ping_interval.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A tick late behind a slow send must not count as a second missed ping at once.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // Whether a ping is out and no frame of any kind came since it was sent.
    let mut ping_unanswered = false;
    // Idle counts from the last frame the peer sent: our own pings and messages do not keep it open.
    let mut idle_until = tokio::time::Instant::now() + idle;
    let mut closed_by_us = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = evict.cancelled() => {
                tracing::debug!(conn = id, remote = %source.remote, %transport, "closing websocket: its source was banned");
                closed_by_us = Some(CloseReason::Banned);
                break;
            }
            _ = next_tick(&mut pings) => {
                if ping_unanswered {
                    tracing::info!(conn = id, remote = %source.remote, %transport, "closing websocket: no answer to our ping");
                    closed_by_us = Some(CloseReason::PingTimeout);
                    break;
                }
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
                ping_unanswered = true;
            }
            out = outgoing.recv() => {
                let Some(data) = out else { break };
                // SIP is text; a body that is not UTF-8 makes the whole message a binary frame (RFC 7118 §5).
                // (A `Bytes` clone shares the buffer.)
                let frame = match Utf8Bytes::try_from(data.clone()) {
                    Ok(text) => Message::Text(text),
                    Err(_) => Message::Binary(data),
                };
                if ws.send(frame).await.is_err() {
                    break;
                }
            }
            r = tokio::time::timeout_at(idle_until, ws.next()) => {
                let msg = match r {
                    Ok(Some(Ok(msg))) => msg,
                    Ok(Some(Err(e))) => {
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            metrics::counter!(m::MALFORMED_DROPPED, "reason" => "ws_too_large").increment(1);
                            closed_by_us = Some(CloseReason::TooLarge);
                        } else if matches!(e, tokio_tungstenite::tungstenite::Error::Protocol(_)) {
                            closed_by_us = Some(CloseReason::Malformed);
                        }
                        tracing::info!(conn = id, remote = %source.remote, %transport, error = %e, "closing websocket");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::debug!(conn = id, remote = %source.remote, %transport, "closing idle websocket");
                        closed_by_us = Some(CloseReason::Idle);
                        break;
                    }
                };
                ping_unanswered = false;
                idle_until = tokio::time::Instant::now() + idle;
                let data: Bytes = match msg {
                    Message::Text(t) => t.into(),
                    Message::Binary(b) => b,
                    // Ping is answered and Close acknowledged by tungstenite itself.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    Message::Close(_) => continue,
                };
                metrics::counter!(m::TRANSPORT_RX_BYTES, "transport" => transport.as_lower())
                    .increment(data.len() as u64);
                if data.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                match inbound.on_message(data, source) {
                    Verdict::Accepted => {}
                    Verdict::Garbage => {
                        tracing::info!(conn = id, remote = %source.remote, %transport, "closing websocket after an unparseable message");
                        closed_by_us = Some(CloseReason::Malformed);
                        break;
                    }
                    Verdict::Refused => {
                        tracing::debug!(conn = id, remote = %source.remote, %transport, "closing websocket: its source is banned");
                        closed_by_us = Some(CloseReason::Banned);
                        break;
                    }
                }
            }
        }
    }
    if let Some(reason) = closed_by_us {
        count_close(transport, reason);
    }
    // A dead peer may never read our Close (and a full send buffer would hold it): bounded, then dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// The next ping tick; never when pings are off.
async fn next_tick(pings: &mut Option<tokio::time::Interval>) {
    match pings {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(settings: &WsSettings, headers: &[(&str, &str)]) -> Result<Response, u16> {
        let mut req = Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let remote: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        check_upgrade(settings, remote, &req.body(()).unwrap(), Response::new(())).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn the_upgrade_needs_sip_and_an_allowed_origin() {
        let open = WsSettings::default();
        let ok = upgrade(&open, &[("Sec-WebSocket-Protocol", "chat, SIP")]).unwrap();
        assert_eq!(ok.headers()["sec-websocket-protocol"], "sip");
        assert_eq!(upgrade(&open, &[("Origin", "https://any.example")]).unwrap_err(), 400);
        assert_eq!(upgrade(&open, &[("Sec-WebSocket-Protocol", "sipx")]).unwrap_err(), 400);
        let strict = WsSettings { allowed_origins: vec!["https://app.example.com".into()], ..WsSettings::default() };
        let sip = ("Sec-WebSocket-Protocol", "sip");
        assert!(upgrade(&strict, &[sip, ("Origin", "https://app.example.com")]).is_ok());
        assert_eq!(upgrade(&strict, &[sip, ("Origin", "https://evil.example")]).unwrap_err(), 403);
        assert_eq!(upgrade(&strict, &[("Origin", "https://evil.example")]).unwrap_err(), 403, "Origin first");
        assert!(upgrade(&strict, &[sip]).is_ok(), "no Origin: not a browser");
    }
}

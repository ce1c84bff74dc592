//! The UAC's transport toward the proxy: one UDP socket, or K TLS connections (each phone has its own). Owns
//! sockets and connections and hands every parsed inbound message to the call it belongs to (by Call-ID); the
//! calls themselves live in `uac`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use sipfront::sip::Message;
use sipfront::transport::{frame_stream_message, Framed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

/// Per call, where its responses go. A `DashMap`: every inbound message looks one up, from as many reader tasks
/// as there are connections, while call tasks insert and remove theirs.
pub type CallTable = DashMap<Vec<u8>, mpsc::Sender<Message>>;

/// Messages a call may have queued and not yet read; a call reads promptly, so more means something is wrong and
/// the surplus is dropped like a lost datagram (never an unbounded queue).
pub const CALL_QUEUE: usize = 16;
/// Outbound messages queued per TLS connection before senders wait.
const CONN_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("send: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS connection {0} is closed")]
    Closed(usize),
}

/// The inbound side shared by all readers.
pub struct Inbound {
    pub calls: CallTable,
    /// Messages for no live call (late retransmissions after a call ended) and unparsable ones.
    pub stray: AtomicU64,
}

impl Inbound {
    fn dispatch(&self, raw: Bytes) {
        let Ok(m) = Message::parse(raw) else {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.calls.get(m.call_id()) {
            Some(tx) => {
                let _ = tx.try_send(m);
            }
            None => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub enum Link {
    Udp { sock: Arc<UdpSocket>, local: SocketAddr },
    Tls { conns: Vec<TlsConn> },
}

pub struct TlsConn {
    tx: mpsc::Sender<Bytes>,
    local: SocketAddr,
}

impl Link {
    /// One UDP socket with large buffers (like SIPp's `-buff_size 4194304`), and its reader task.
    pub async fn udp(proxy: SocketAddr, inbound: Arc<Inbound>) -> std::io::Result<Link> {
        let bind: SocketAddr = if proxy.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = socket2::Socket::new(socket2::Domain::for_address(proxy), socket2::Type::DGRAM, None)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.set_nonblocking(true)?;
        s.bind(&bind.into())?;
        let sock = UdpSocket::from_std(s.into())?;
        sock.connect(proxy).await?;
        let sock = Arc::new(sock);
        let reader = sock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match reader.recv(&mut buf).await {
                    Ok(n) => inbound.dispatch(Bytes::copy_from_slice(&buf[..n])),
                    // A connected socket reports an ICMP "port unreachable" here, once per datagram that drew
                    // one: the proxy is down for a moment, the calls time out or retransmit; keep reading. The
                    // pause keeps an error that repeats from becoming a busy loop.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                }
            }
        });
        // Connected: the kernel picked the source address, which Via and Contact then name.
        let local = sock.local_addr()?;
        Ok(Link::Udp { sock, local })
    }

    /// `count` TLS connections, all handshaken before the first call (phones keep theirs open).
    pub async fn tls(
        proxy: SocketAddr,
        count: usize,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        inbound: Arc<Inbound>,
    ) -> anyhow::Result<Link> {
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..count {
            let (connector, name) = (connector.clone(), name.clone());
            pending.spawn(async move {
                let tcp = TcpStream::connect(proxy).await?;
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                let stream = connector.connect(name, tcp).await?;
                anyhow::Ok((i, local, stream))
            });
        }
        let mut conns: Vec<Option<TlsConn>> = (0..count).map(|_| None).collect();
        while let Some(done) = pending.join_next().await {
            let (i, local, stream) = done??;
            let (mut rd, mut wr) = tokio::io::split(stream);
            let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    // Gather what is queued into one flush: fewer TLS records and syscalls under load.
                    let mut ok = wr.write_all(&first).await.is_ok();
                    while let (true, Ok(more)) = (ok, rx.try_recv()) {
                        ok = wr.write_all(&more).await.is_ok();
                    }
                    if !ok || wr.flush().await.is_err() {
                        break;
                    }
                }
            });
            let inbound = inbound.clone();
            tokio::spawn(async move {
                let mut acc: Vec<u8> = Vec::with_capacity(16384);
                let mut chunk = vec![0u8; 16384];
                loop {
                    match rd.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => acc.extend_from_slice(&chunk[..n]),
                    }
                    loop {
                        match frame_stream_message(&acc, 65535) {
                            Framed::Message(n) => inbound.dispatch(Bytes::from(acc.drain(..n).collect::<Vec<u8>>())),
                            Framed::KeepAlive { n, .. } => drop(acc.drain(..n)),
                            Framed::NeedMore => break,
                            Framed::Invalid(_) => return,
                        }
                    }
                }
            });
            conns[i] = Some(TlsConn { tx, local });
        }
        Ok(Link::Tls { conns: conns.into_iter().map(|c| c.expect("every connection joined")).collect() })
    }

    pub fn reliable(&self) -> bool {
        matches!(self, Link::Tls { .. })
    }

    pub fn connections(&self) -> usize {
        match self {
            Link::Udp { .. } => 1,
            Link::Tls { conns } => conns.len(),
        }
    }

    /// The local address of connection `conn` (the UDP socket's for UDP).
    pub fn local(&self, conn: usize) -> SocketAddr {
        match self {
            Link::Udp { local, .. } => *local,
            Link::Tls { conns } => conns[conn % conns.len()].local,
        }
    }

    pub async fn send(&self, conn: usize, data: Bytes) -> Result<(), LinkError> {
        match self {
            Link::Udp { sock, .. } => {
                sock.send(&data).await?;
                Ok(())
            }
            Link::Tls { conns } => {
                let i = conn % conns.len();
                conns[i].tx.send(data).await.map_err(|_| LinkError::Closed(i))
            }
        }
    }
}

//! The answering side (the "PBX") over UDP: 100/180/200 to INVITE (the 200 retransmitted until its ACK, Timer
//! G), 200 to BYE, OPTIONS and anything else, ACK absorbed. Record-Route is echoed so callers learn the route
//! set. Keeps only the unacknowledged 200s; runs until a signal or `--max-seconds`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sipfront::sip::{HeaderName, Message, Method};
use tokio::net::UdpSocket;
use tokio::time::{interval, sleep, Instant};

use crate::msg::{Text, SDP};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// A 200 to an INVITE not yet acknowledged.
struct Unacked {
    bytes: Bytes,
    to: SocketAddr,
    next: Instant,
    every: Duration,
    give_up: Instant,
}

#[derive(Default, Serialize)]
struct Counters {
    invites: u64,
    acks: u64,
    byes: u64,
    options: u64,
    other: u64,
    retransmitted_200: u64,
    unacked_given_up: u64,
}

pub async fn run(listen: SocketAddr, max: Duration) -> anyhow::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::DGRAM, None)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&listen.into())?;
    let sock = UdpSocket::from_std(s.into())?;
    let contact = format!("<sip:pbx@{listen}>");
    let mut unacked: HashMap<Vec<u8>, Unacked> = HashMap::new();
    let mut n = Counters::default();
    let mut buf = vec![0u8; 65536];
    let mut tick = interval(Duration::from_millis(50));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = sleep(max);
    tokio::pin!(stop);
    eprintln!("sipload uas on udp:{listen}");
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let Ok(m) = Message::parse(Bytes::copy_from_slice(&buf[..len])) else { continue };
                if m.status().is_some() {
                    continue;
                }
                match m.method() {
                    Some(Method::Invite) => {
                        n.invites += 1;
                        if let Some(u) = unacked.get(m.call_id()) {
                            let _ = sock.send_to(&u.bytes, from).await;
                            continue;
                        }
                        let tag = to_tag(m.call_id());
                        for (code, reason) in [(100, "Trying"), (180, "Ringing")] {
                            let _ = sock.send_to(&response(&m, code, reason, Some(&tag), &contact, ""), from).await;
                        }
                        let ok = response(&m, 200, "OK", Some(&tag), &contact, SDP);
                        let _ = sock.send_to(&ok, from).await;
                        let now = Instant::now();
                        let u = Unacked { bytes: ok, to: from, next: now + T1, every: T1, give_up: now + 64 * T1 };
                        unacked.insert(m.call_id().to_vec(), u);
                    }
                    Some(Method::Ack) => {
                        n.acks += 1;
                        unacked.remove(m.call_id());
                    }
                    Some(method) => {
                        match method {
                            Method::Bye => n.byes += 1,
                            Method::Options => n.options += 1,
                            _ => n.other += 1,
                        }
                        let _ = sock.send_to(&response(&m, 200, "OK", None, &contact, ""), from).await;
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mut gone = Vec::new();
                for (id, u) in unacked.iter_mut().filter(|(_, u)| u.next <= now) {
                    if u.give_up <= now {
                        gone.push(id.clone());
                        continue;
                    }
                    let _ = sock.send_to(&u.bytes, u.to).await;
                    n.retransmitted_200 += 1;
                    u.every = (u.every * 2).min(T2);
                    u.next = now + u.every;
                }
                n.unacked_given_up += gone.len() as u64;
                for id in gone {
                    unacked.remove(&id);
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut stop => break,
        }
    }
    println!("{}", serde_json::json!({ "mode": "uas", "listen": listen.to_string(), "counters": n }));
    Ok(())
}

/// The same tag for every answer in one call, without keeping state for it.
fn to_tag(call_id: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    format!("u{:x}", h.finish())
}

/// A response echoing Via, From, To (tagged), Call-ID, CSeq and Record-Route, as written in the request.
fn response(req: &Message, code: u16, reason: &str, tag: Option<&str>, contact: &str, body: &str) -> Bytes {
    let mut out = Vec::with_capacity(req.as_bytes().len() + body.len() + 64);
    let _ = write!(Text(&mut out), "SIP/2.0 {code} {reason}\r\n");
    for f in req.fields() {
        let echo = match f.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq | HeaderName::To => true,
            HeaderName::RecordRoute => code > 100,
            _ => false,
        };
        if !echo {
            continue;
        }
        out.extend_from_slice(req.field_line(&f));
        if let (HeaderName::To, Some(tag), None) = (f.name, tag, req.to_tag()) {
            let _ = write!(Text(&mut out), ";tag={tag}");
        }
        out.extend_from_slice(b"\r\n");
    }
    if code > 100 {
        let _ = write!(Text(&mut out), "Contact: {contact}\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(b"Content-Type: application/sdp\r\n");
    }
    let _ = write!(Text(&mut out), "Content-Length: {}\r\n\r\n{body}", body.len());
    Bytes::from(out)
}

//! The demo's pseudo-VIP: a UDP relay on `127.0.9.100:5060` that forwards to whichever node serves now.
//!
//! A real VIP needs root (a TUN device, gratuitous ARP); the demo has none, so every node advertises
//! 127.0.9.100 and this relay stands in for the address. Via and Record-Route name it, so the PBXs' answers and
//! the phones' in-dialog requests come here and go on to the current leader: established calls survive a node
//! kill just as with the real VIP. What a node sends straight to a phone or a PBX needs nothing from us.
//!
//! How: every distinct sender (a phone or a PBX) gets a relay socket of its own, bound to `127.0.9.100:0`.
//! What the sender sends goes to the leader through that socket; what arrives on it (a node answering, or
//! sending to the `received`/`rport` it saw) goes back to that sender from the main socket. The table of
//! senders is bounded ([`MAX_SENDERS`], least recently heard from evicted) and idle entries expire
//! ([`IDLE`]). It owns these sockets only; who leads comes from a `watch` the orchestrator fills.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Senders relayed at once.
pub const MAX_SENDERS: usize = 1000;
/// A sender not heard from for this long loses its relay socket.
pub const IDLE: Duration = Duration::from_secs(300);

/// Senders and their relay legs. Generic over the leg so the bookkeeping is tested without sockets.
pub struct RelayTable<H> {
    entries: HashMap<SocketAddr, (H, Instant)>,
    max: usize,
    idle: Duration,
}

impl<H> RelayTable<H> {
    pub fn new(max: usize, idle: Duration) -> RelayTable<H> {
        RelayTable { entries: HashMap::new(), max, idle }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The leg of `sender`, made by `make` when it has none; full, the idle ones go first, then the least
    /// recently heard from.
    pub fn leg<E>(&mut self, sender: SocketAddr, now: Instant, make: impl FnOnce() -> Result<H, E>) -> Result<&H, E> {
        if !self.entries.contains_key(&sender) {
            if self.entries.len() >= self.max {
                self.expire(now);
            }
            if self.entries.len() >= self.max {
                let oldest = self.entries.iter().min_by_key(|(_, (_, last))| *last).map(|(a, _)| *a);
                if let Some(a) = oldest {
                    self.entries.remove(&a);
                }
            }
            self.entries.insert(sender, (make()?, now));
        }
        let entry = self.entries.get_mut(&sender).expect("inserted above");
        entry.1 = now;
        Ok(&entry.0)
    }

    /// Drop the legs idle since `now - idle`; how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let idle = self.idle;
        self.entries.retain(|_, (_, last)| now.duration_since(*last) < idle);
        before - self.entries.len()
    }
}

/// One sender's relay socket; dropping it stops the task that carries the answers back.
struct Leg {
    sock: Arc<UdpSocket>,
    _stop: DropGuard,
}

/// The relay, bound.
pub struct Relay {
    main: Arc<UdpSocket>,
}

impl Relay {
    /// Bind the pseudo-VIP's address (the demo fails early if it is taken).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Relay> {
        Ok(Relay { main: Arc::new(UdpSocket::bind(addr).await?) })
    }

    /// Relay until `shutdown`. `leader`: the SIP address of the node that serves now (`None`: nobody does, and
    /// what arrives is dropped; SIP's retransmissions bridge the gap).
    pub async fn run(self, leader: watch::Receiver<Option<SocketAddr>>, shutdown: CancellationToken) {
        let local_ip = match self.main.local_addr() {
            Ok(a) => a.ip(),
            Err(_) => return,
        };
        let mut table: RelayTable<Leg> = RelayTable::new(MAX_SENDERS, IDLE);
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, sender) = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    table.expire(Instant::now());
                    continue;
                }
                r = self.main.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(_) => continue, // an ICMP error for an earlier send
                },
            };
            let Some(to) = *leader.borrow() else { continue };
            let make = || open_leg(local_ip, sender, &self.main, &shutdown);
            match table.leg(sender, Instant::now(), make) {
                Ok(leg) => {
                    let _ = leg.sock.send_to(&buf[..n], to).await;
                }
                Err(e) => tracing::warn!(%sender, error = %e, "pseudo-VIP: cannot open a relay socket"),
            }
        }
    }
}

/// A relay socket for `sender` and the task that sends what it receives back to `sender` from `main`.
fn open_leg(
    ip: std::net::IpAddr,
    sender: SocketAddr,
    main: &Arc<UdpSocket>,
    shutdown: &CancellationToken,
) -> std::io::Result<Leg> {
    let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    std_sock.set_nonblocking(true)?;
    let sock = Arc::new(UdpSocket::from_std(std_sock)?);
    let stop = shutdown.child_token();
    let (back, main, done) = (sock.clone(), main.clone(), stop.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                r = back.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r {
                        let _ = main.send_to(&buf[..n], sender).await;
                    }
                }
            }
        }
    });
    Ok(Leg { sock, _stop: stop.drop_guard() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 9, 50], port))
    }

    #[test]
    fn one_leg_per_sender_made_once() {
        let mut t: RelayTable<u32> = RelayTable::new(10, IDLE);
        let now = Instant::now();
        let mut made = 0;
        for _ in 0..3 {
            let leg = *t
                .leg(addr(1), now, || {
                    made += 1;
                    Ok::<_, ()>(made)
                })
                .unwrap();
            assert_eq!(leg, 1);
        }
        assert_eq!((made, t.len()), (1, 1));
        assert!(t.leg(addr(2), now, || Err("no socket")).is_err());
        assert_eq!(t.len(), 1, "a failed make leaves no entry");
    }

    #[test]
    fn full_table_evicts_the_least_recently_heard() {
        let mut t: RelayTable<u16> = RelayTable::new(3, IDLE);
        let t0 = Instant::now();
        for p in 1..=3 {
            t.leg(addr(p), t0 + Duration::from_secs(u64::from(p)), || Ok::<_, ()>(p)).unwrap();
        }
        // Sender 1 speaks again: sender 2 is now the least recent.
        t.leg(addr(1), t0 + Duration::from_secs(10), || Ok::<_, ()>(99)).unwrap();
        t.leg(addr(4), t0 + Duration::from_secs(11), || Ok::<_, ()>(4)).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(*t.leg(addr(1), t0, || Ok::<_, ()>(0)).unwrap(), 1, "kept, not remade");
        assert_eq!(*t.leg(addr(2), t0 + Duration::from_secs(12), || Ok::<_, ()>(22)).unwrap(), 22, "was evicted");
    }

    #[test]
    fn idle_legs_expire() {
        let mut t: RelayTable<u16> = RelayTable::new(10, Duration::from_secs(300));
        let t0 = Instant::now();
        t.leg(addr(1), t0, || Ok::<_, ()>(1)).unwrap();
        t.leg(addr(2), t0 + Duration::from_secs(200), || Ok::<_, ()>(2)).unwrap();
        assert_eq!(t.expire(t0 + Duration::from_secs(299)), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(300)), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(t0 + Duration::from_secs(500)), 1);
        assert!(t.is_empty());
    }

    /// The whole path on loopback: a sender's datagram reaches the "leader" from a relay socket on the relay's
    /// address, and the leader's answer to that socket comes back to the sender from the main address.
    #[tokio::test]
    async fn relays_both_ways() {
        let relay = Relay::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let main = relay.main.local_addr().unwrap();
        let leader = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_tx, rx) = watch::channel(Some(leader.local_addr().unwrap()));
        let stop = CancellationToken::new();
        tokio::spawn(relay.run(rx, stop.clone()));
        let mut buf = [0u8; 64];
        phone.send_to(b"INVITE", main).await.unwrap();
        let (n, leg) = tokio::time::timeout(Duration::from_secs(5), leader.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"INVITE");
        assert_eq!(leg.ip(), main.ip());
        assert_ne!(leg, main, "through the sender's own leg");
        leader.send_to(b"200", leg).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), phone.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"200"[..], main));
        stop.cancel();
    }
}

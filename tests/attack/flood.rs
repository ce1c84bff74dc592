//! An INVITE flood from one source address: a sender thread paced to a rate and bounded in count and time, and a
//! reader thread that counts sipfront's answers by status code (each Call-ID once per code: a 408 that sipfront
//! retransmits because the attacker never ACKs counts once).

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running flood; both threads are stopped and joined on drop.
pub struct Flood {
    pub from: SocketAddr,
    sent: Arc<AtomicU64>,
    answers: Arc<Mutex<BTreeMap<u16, HashSet<u64>>>>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Duration>>,
    reader: Option<JoinHandle<()>>,
}

/// The INVITE number `i` of a flood toward `to` from `from`: a new call each time (its own Call-ID, tags and
/// branch), Request-URI user `flood<i>`, with a short SDP offer like a real one.
pub fn flood_invite(i: u64, from: SocketAddr, to: SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=- {i} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = from.ip()
    );
    format!(
        "INVITE sip:flood{i}@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-fl{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:attacker@{fip}>;tag=fl{i}\r\n\
         To: <sip:flood{i}@{to}>\r\n\
         Call-ID: flood-{i}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:attacker@{from}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        fip = from.ip()
    )
}

impl Flood {
    /// Send up to `max` INVITEs to `to` from `from` (port 0: any), `rate` per second, for at most `max_time`.
    pub fn start(from: SocketAddr, to: SocketAddr, rate: u64, max: u64, max_time: Duration) -> Flood {
        let sock = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let from = sock.local_addr().expect("local addr");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
        let reader_sock = sock.try_clone().expect("clone socket");
        let sent = Arc::new(AtomicU64::new(0));
        let answers: Arc<Mutex<BTreeMap<u16, HashSet<u64>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while n < max && start.elapsed() < max_time && !stop2.load(Ordering::Relaxed) {
                let due = (rate as u128 * start.elapsed().as_micros() / 1_000_000).min(max as u128) as u64;
                while n < due.max(1) {
                    // A full socket buffer at sipfront drops datagrams there, as on a real link; never here.
                    let _ = sock.send_to(flood_invite(n, from, to).as_bytes(), to);
                    n += 1;
                }
                sent2.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            start.elapsed()
        });
        let (answers2, stop3) = (answers.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !stop3.load(Ordering::Relaxed) {
                let Ok((n, _)) = reader_sock.recv_from(&mut buf) else { continue };
                let d = &buf[..n];
                let Some(code) =
                    d.strip_prefix(b"SIP/2.0 ").and_then(|r| std::str::from_utf8(r.get(..3)?).ok()?.parse().ok())
                else {
                    continue;
                };
                let call = memchr::memmem::find(d, b"Call-ID: flood-").and_then(|at| {
                    let rest = &d[at + 15..];
                    let end = rest.iter().position(|c| !c.is_ascii_digit())?;
                    std::str::from_utf8(&rest[..end]).ok()?.parse::<u64>().ok()
                });
                if let Some(call) = call {
                    answers2.lock().expect("lock").entry(code).or_default().insert(call);
                }
            }
        });
        Flood { from, sent, answers, stop, sender: Some(sender), reader: Some(reader) }
    }

    /// INVITEs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Wait for the sender to finish (it is bounded by count and time): how many it sent and how long it took.
    pub fn wait_sent(&mut self) -> (u64, Duration) {
        let took = self.sender.take().map(|t| t.join().expect("flood sender")).unwrap_or_default();
        (self.sent(), took)
    }

    /// Calls answered so far, by status code (100 Trying included).
    pub fn answers(&self) -> BTreeMap<u16, usize> {
        self.answers.lock().expect("lock").iter().map(|(c, s)| (*c, s.len())).collect()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

//! Bounded tables under one source's flood: live transactions per source and in all, dialogs per source. A
//! silent PBX holds every INVITE for timer B; one source that sends more than its share gets 503 with
//! Retry-After at once, while a caller from another address still reaches the PBX. (Confirmed dialogs whose 2xx
//! is never ACKed are reaped after `dialogs.ack_timeout`: a unit test in src/dialog/tests.rs on paused time.)

mod support;

use std::time::Duration;

use tokio::net::UdpSocket;

use sipfront::sip::{HeaderName, Message, ResponseBuilder};
use support::*;

async fn first_final_or_trying(phone: &UdpSocket) -> Message {
    recv_udp(phone).await.0
}

fn has_retry_after(m: &Message) -> bool {
    m.as_bytes().windows(13).any(|w| w.eq_ignore_ascii_case(b"Retry-After: "))
}

#[tokio::test]
async fn one_source_over_its_transaction_share_gets_503_and_others_go_on() {
    let pbx = udp_socket().await; // silent: every INVITE stays pending
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "max_transactions_per_source = 3").await;
    let flood = UdpSocket::bind("127.0.0.66:0").await.unwrap();
    let me = flood.local_addr().unwrap();
    for i in 0..3 {
        flood.send_to(&request("INVITE", "sip:x@127.0.0.1", me, "UDP", &format!("fl{i}")), n.udp).await.unwrap();
        assert_eq!(first_final_or_trying(&flood).await.status(), Some(100), "within the share");
        assert_eq!(recv_udp(&pbx).await.0.method_bytes(), b"INVITE");
    }
    flood.send_to(&request("INVITE", "sip:x@127.0.0.1", me, "UDP", "fl3"), n.udp).await.unwrap();
    let over = first_final_or_trying(&flood).await;
    assert_eq!(over.status(), Some(503), "over the share: refused at once");
    assert!(has_retry_after(&over));
    // Someone else is still served.
    let legit = UdpSocket::bind("127.0.0.65:0").await.unwrap();
    let l = legit.local_addr().unwrap();
    legit.send_to(&request("INVITE", "sip:y@127.0.0.1", l, "UDP", "ok1"), n.udp).await.unwrap();
    assert_eq!(first_final_or_trying(&legit).await.status(), Some(100));
    assert_eq!(recv_udp(&pbx).await.0.call_id(), b"ok1@test", "the other caller reached the PBX");
    assert_eq!(n.server.proxy.txs.active_from(me.ip()), 3);
    n.server.shutdown().await;
}

#[tokio::test]
async fn the_total_transaction_cap_holds() {
    let pbx = udp_socket().await;
    let extra = "max_transactions = 2\nmax_transactions_per_source = 2";
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), extra).await;
    let phone = udp_socket().await;
    let me = phone.local_addr().unwrap();
    for i in 0..2 {
        phone.send_to(&request("INVITE", "sip:x@127.0.0.1", me, "UDP", &format!("t{i}")), n.udp).await.unwrap();
        assert_eq!(first_final_or_trying(&phone).await.status(), Some(100));
    }
    let other = UdpSocket::bind("127.0.0.64:0").await.unwrap();
    let o = other.local_addr().unwrap();
    other.send_to(&request("INVITE", "sip:x@127.0.0.1", o, "UDP", "t9"), n.udp).await.unwrap();
    assert_eq!(first_final_or_trying(&other).await.status(), Some(503), "the node is full for everyone");
    assert_eq!(n.server.proxy.txs.active(), 2);
    n.server.shutdown().await;
}

/// A PBX answer with a To tag and the Record-Route set.
fn answer(req: &Message, code: u16) -> bytes::Bytes {
    let rr: Vec<&[u8]> = req.header_values(HeaderName::RecordRoute).collect();
    let tag = format!("pbx{}", String::from_utf8_lossy(req.call_id()));
    let mut b = ResponseBuilder::new(req, code, "OK").to_tag(tag.as_bytes());
    for r in &rr {
        b = b.header("Record-Route", r);
    }
    b.header("Contact", b"<sip:pbx@127.0.0.99:5099>").build()
}

#[tokio::test]
async fn one_source_over_its_dialog_share_gets_503_and_others_go_on() {
    let pbx = udp_socket().await;
    let n = node(&backend("pbx", "udp", pbx.local_addr().unwrap(), 1), "[dialogs]\nmax_per_source = 2").await;
    let caller = UdpSocket::bind("127.0.0.63:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    for i in 0..2 {
        caller.send_to(&request("INVITE", "sip:x@127.0.0.1", me, "UDP", &format!("d{i}")), n.udp).await.unwrap();
        let (inv, from) = recv_udp(&pbx).await;
        pbx.send_to(&answer(&inv, 200), from).await.unwrap();
        loop {
            if recv_udp(&caller).await.0.status() == Some(200) {
                break;
            }
        }
    }
    assert_eq!(n.server.proxy.dialogs.count_from(me.ip()), 2);
    caller.send_to(&request("INVITE", "sip:x@127.0.0.1", me, "UDP", "d2"), n.udp).await.unwrap();
    let over = first_final_or_trying(&caller).await;
    assert_eq!(over.status(), Some(503), "a third call from the same address is refused");
    assert!(has_retry_after(&over));
    let other = UdpSocket::bind("127.0.0.62:0").await.unwrap();
    let o = other.local_addr().unwrap();
    other.send_to(&request("INVITE", "sip:x@127.0.0.1", o, "UDP", "d9"), n.udp).await.unwrap();
    let (inv, _) = tokio::time::timeout(Duration::from_secs(5), recv_udp(&pbx)).await.expect("reaches the PBX");
    assert_eq!(inv.call_id(), b"d9@test");
    n.server.shutdown().await;
}

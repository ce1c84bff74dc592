//! The guard's rules end to end over parsed messages, on paused tokio time.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn config(toml_text: &str) -> SecurityConfig {
    toml::from_str(toml_text).expect("a [security] table")
}

fn guard(toml_text: &str) -> Guard {
    Guard::new(&config(toml_text), ["192.0.2.10".parse().unwrap()], Journal::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A request; `to_tag` makes it in-dialog.
fn request(method: &str, to_tag: bool, user_agent: &str) -> Message {
    let tag = if to_tag { ";tag=t" } else { "" };
    Message::parse(Bytes::from(format!(
        "{method} sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKx\r\n\
         From: <sip:200@x>;tag=f\r\nTo: <sip:100@x>{tag}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
         User-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n"
    )))
    .unwrap()
}

/// What the proxy does with one message from `src`: both checks.
fn passes(g: &Guard, src: IpAddr, msg: &Message) -> bool {
    let a = g.admit(src);
    !a.is_drop() && (!msg.is_request() || g.admit_request(a, msg))
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_cut_then_banned_and_the_ban_expires() {
    let g = guard("allow = []");
    let (attacker, caller) = (ip("203.0.113.66"), ip("198.51.100.7"));
    let invite = request("INVITE", false, "Flooder/1.0");
    let mut through = 0;
    // 10,000 INVITEs a second for a second, in 1 ms steps; a caller places one call a second meanwhile.
    for ms in 0..1000 {
        through += (0..10).filter(|_| passes(&g, attacker, &invite)).count();
        if ms % 100 == 0 {
            assert!(passes(&g, caller, &invite), "the other source's calls go through");
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    // The initial-request burst (1000) and its rate (100/s) while that lasts (~110 ms), then `ban_after` (100)
    // drops within 10 ms ban it.
    assert!((1000..=1020).contains(&through), "{through} INVITEs of 10,000 got through");
    assert!(g.is_banned(attacker) && !g.is_banned(caller));
    assert_eq!(g.bans()[0].reason, BanReason::Rate);
    assert!(!passes(&g, attacker, &request("BYE", true, "Flooder/1.0")), "everything from it is dropped");
    tokio::time::advance(Duration::from_secs(298)).await;
    assert!(g.is_banned(attacker), "5 minutes by default");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!g.is_banned(attacker));
    assert!(passes(&g, attacker, &invite), "over: a fresh start");
    g.sweep(true);
    assert!(g.bans().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_scanner_user_agent_is_dropped_and_banned_at_once() {
    let g = guard("allow = []");
    let scanner = ip("203.0.113.5");
    assert!(!passes(&g, scanner, &request("OPTIONS", false, "friendly-scanner")));
    assert!(g.is_banned(scanner));
    assert_eq!(g.bans()[0].reason, BanReason::UserAgent);
    assert!(!passes(&g, scanner, &request("REGISTER", false, "Yealink")), "banned, whatever it says next");
    let g = guard("allow = []\ndrop_user_agents = []");
    assert!(passes(&g, scanner, &request("OPTIONS", false, "friendly-scanner")), "the rule can be turned off");
}

#[tokio::test(start_paused = true)]
async fn backends_and_allowed_blocks_are_never_limited() {
    let g = guard("allow = [\"198.51.100.0/24\"]\nrate = 1\nburst = 1\nregister_rate = 1\nregister_burst = 1");
    let register = request("REGISTER", false, "friendly-scanner");
    for _ in 0..1000 {
        assert!(passes(&g, ip("192.0.2.10"), &register), "a backend");
        assert!(passes(&g, ip("198.51.100.99"), &register), "allowed");
        assert!(passes(&g, ip("::ffff:198.51.100.99"), &register), "allowed, IPv4-mapped");
    }
    assert_eq!(g.tracked_sources(), 0);
    assert!(g.bans().is_empty());
    assert!(!g.is_exempt(ip("127.0.0.1")), "a list written replaces the loopback default");
    assert!(guard("").is_exempt(ip("127.0.0.1")) && guard("").is_exempt(ip("::1")));
}

#[tokio::test(start_paused = true)]
async fn register_and_initial_requests_have_their_own_stricter_buckets() {
    let g = guard("allow = []\nregister_rate = 1\nregister_burst = 3\ninitial_rate = 1\ninitial_burst = 2");
    let src = ip("198.51.100.7");
    let ok = |m: &Message| passes(&g, src, m);
    let register = request("REGISTER", false, "Yealink");
    assert_eq!((0..10).filter(|_| ok(&register)).count(), 3);
    assert_eq!((0..10).filter(|_| ok(&request("OPTIONS", false, "Yealink"))).count(), 2);
    assert!(!ok(&request("MESSAGE", false, "Yealink")), "OPTIONS, INVITE and MESSAGE share one");
    for m in ["INVITE", "BYE", "ACK", "OPTIONS"] {
        assert!(ok(&request(m, true, "Yealink")), "in-dialog {m}: only the overall rate applies");
    }
    assert!(ok(&request("SUBSCRIBE", false, "Yealink")), "SUBSCRIBE: only the overall rate");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ok(&register) && !ok(&register), "one a second");
}

#[tokio::test(start_paused = true)]
async fn ipv6_sources_count_per_64() {
    let g = guard("allow = []\nrate = 5\nburst = 5");
    let options = request("OPTIONS", true, "x");
    let through = (0..20).filter(|i| passes(&g, format!("2001:db8:1:2::{i:x}").parse().unwrap(), &options)).count();
    assert_eq!(through, 5, "rotating the low 64 bits is one source");
    assert!(passes(&g, ip("2001:db8:1:3::1"), &options), "the next /64 is another");
    assert_eq!(source_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
    assert_eq!(source_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
}

/// The defaults against an office of 200 phones behind one NAT address: a boot storm (two lines each, every
/// REGISTER challenged once, MWI and BLF subscriptions, a keep-alive each) within 5 s, then ten minutes of
/// re-registrations, OPTIONS keep-alives every 15 s, 2 calls/s with their in-dialog requests and responses, and
/// BLF NOTIFY answers. Nothing may be dropped.
#[tokio::test(start_paused = true)]
async fn the_defaults_never_trip_on_a_200_phone_office() {
    let g = guard("allow = []");
    let office = ip("198.51.100.7");
    let register = request("REGISTER", false, "Yealink SIP-T46S 66.86.0.15");
    let subscribe = request("SUBSCRIBE", false, "Yealink SIP-T46S 66.86.0.15");
    let options = request("OPTIONS", false, "Yealink SIP-T46S 66.86.0.15");
    let invite = request("INVITE", false, "Yealink SIP-T46S 66.86.0.15");
    let in_dialog = request("BYE", true, "Yealink SIP-T46S 66.86.0.15");
    let ok = Message::parse(Bytes::from_static(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKy\r\nFrom: <sip:a@x>;tag=1\r\n\
          To: <sip:b@x>;tag=2\r\nCall-ID: n\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    let mut dropped = 0;
    let send = |m: &Message, n: usize| (0..n).filter(|_| !passes(&g, office, m)).count();
    // Boot: 800 REGISTERs, 200 MWI + 500 BLF SUBSCRIBEs challenged once (1400), 200 OPTIONS, over 5 s.
    for _ in 0..50 {
        dropped += send(&register, 16);
        dropped += send(&subscribe, 28);
        dropped += send(&options, 4);
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped, 0, "boot storm");
    for second in 0..600 {
        dropped += send(&register, 14); // 400 lines every 60 s, challenged
        dropped += send(&options, 14); // 200 phones every 15 s
        dropped += send(&invite, 2);
        dropped += send(&in_dialog, 6); // ACK, BYE, re-INVITE ... and the phones' answers to calls toward them
        dropped += send(&ok, if second % 10 == 0 { 300 } else { 80 }); // BLF NOTIFYs answered, bunched at busy moments
        dropped += send(&subscribe, 5);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(dropped, 0, "steady state");
    assert!(g.bans().is_empty());
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_ban_a_stranger_but_never_a_backend_or_an_allowed_address() {
    let g = guard("allow = [\"198.51.100.0/24\"]\nauth_ban_after = 5\nauth_ban_window = \"10s\"");
    let guesser = ip("203.0.113.9");
    for _ in 0..4 {
        g.auth_failure(guesser);
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    assert!(!g.is_banned(guesser), "4 within the window");
    g.auth_failure(guesser);
    assert!(g.is_banned(guesser), "the 5th within 10 s");
    assert_eq!(g.bans()[0].reason, BanReason::Auth);
    // A slow guesser, one every 3 s, stays under 5 per 10 s.
    let slow = ip("203.0.113.10");
    for _ in 0..20 {
        g.auth_failure(slow);
        tokio::time::advance(Duration::from_secs(3)).await;
        g.sweep(true);
    }
    assert!(!g.is_banned(slow));
    for exempt in [ip("192.0.2.10"), ip("198.51.100.7")] {
        (0..50).for_each(|_| g.auth_failure(exempt));
        assert!(!g.is_banned(exempt), "{exempt}");
    }
    let off = guard("allow = []\nauth_ban_after = 0");
    (0..100).for_each(|_| off.auth_failure(guesser));
    assert!(!off.is_banned(guesser), "the rule can be turned off");
}

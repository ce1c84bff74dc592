//! Dialog table rules, on paused time.

use std::time::Duration;

use super::*;
use crate::transport::Transport;

fn client() -> NewDialog {
    let t = Target { transport: Transport::Udp, addr: "192.0.2.9:5060".parse().unwrap(), conn: None };
    NewDialog { home: Some(0), client: Some(t), caller_cseq: 1 }
}

#[test]
fn either_side_finds_the_dialog() {
    let t = DialogTable::new();
    t.early(DialogId::new(b"c1", b"caller", b"callee"), &client());
    t.confirm(DialogId::new(b"c1", b"callee", b"caller"), &client(), Some(Bytes::from_static(b"<sip:x;lr>")));
    assert_eq!(t.len(), 1);
    let d = t.get(&DialogId::new(b"c1", b"caller", b"callee")).unwrap();
    assert_eq!(
        (d.state, d.home(), d.route_set.as_deref()),
        (DialogState::Confirmed, Some(0), Some(&b"<sip:x;lr>"[..]))
    );
    let d = t.touch(&DialogId::new(b"c1", b"callee", b"caller"), false, 5, true).unwrap();
    assert_eq!((d.state, d.callee_cseq, d.caller_cseq), (DialogState::Terminated, 5, 1));
    assert!(t.remove(&DialogId::new(b"c1", b"callee", b"caller")).is_some());
    assert!(t.is_empty());
}

#[test]
fn rehome_moves_only_the_failed_backends_dialogs() {
    let t = DialogTable::new();
    for i in 0..10u8 {
        let mut n = client();
        n.home = Some(usize::from(i % 2));
        t.confirm(DialogId::new(&[i], b"a", b"b"), &n, None);
    }
    assert_eq!(t.rehome(0, 1), 5);
    assert_eq!(t.count_on(1), 10);
    assert_eq!(t.count_on(0), 0);
}

#[tokio::test(start_paused = true)]
async fn reaper_and_failed_invite() {
    let t = DialogTable::new();
    t.early(DialogId::new(b"c1", b"a", b"b"), &client());
    t.early(DialogId::new(b"c1", b"a", b"c"), &client());
    t.confirm(DialogId::new(b"c2", b"a", b"b"), &client(), None);
    t.confirm(DialogId::new(b"c3", b"a", b"b"), &client(), None);
    t.acked(&DialogId::new(b"c2", b"a", b"b"));
    t.acked(&DialogId::new(b"c3", b"a", b"b"));
    assert_eq!(t.remove_early(b"c1"), 2);
    assert_eq!(t.len(), 2);
    let day = Duration::from_secs(86_400);
    let limits = ReapLimits {
        max_call: day,
        idle: Duration::from_secs(100),
        terminated: Duration::from_secs(32),
        early: Duration::from_secs(212),
        unacked: Duration::from_secs(32),
    };
    tokio::time::advance(Duration::from_secs(40)).await;
    t.touch(&DialogId::new(b"c3", b"a", b"b"), true, 2, true); // BYE sent, never answered
    tokio::time::advance(Duration::from_secs(40)).await;
    assert_eq!(t.reap(&limits), 1, "the terminated dialog went after the linger");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(t.reap(&limits), 1, "the silent one went after the idle timeout");
    assert!(t.is_empty());
    t.confirm(DialogId::new(b"c4", b"a", b"b"), &client(), None);
    t.acked(&DialogId::new(b"c4", b"a", b"b"));
    tokio::time::advance(Duration::from_secs(90)).await;
    t.touch(&DialogId::new(b"c4", b"a", b"b"), true, 2, false);
    assert_eq!(
        t.reap(&ReapLimits { max_call: Duration::from_secs(60), ..limits }),
        1,
        "past the maximum call duration"
    );
    t.early(DialogId::new(b"c5", b"a", b"b"), &client());
    tokio::time::advance(Duration::from_secs(99)).await;
    t.touch(&DialogId::new(b"c5", b"a", b"b"), true, 1, false);
    tokio::time::advance(Duration::from_secs(99)).await;
    t.touch(&DialogId::new(b"c5", b"a", b"b"), true, 1, false);
    assert_eq!(t.reap(&limits), 0);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(t.reap(&limits), 1, "an early dialog never answered");
}

#[test]
fn the_two_legs_of_a_spiraled_call_are_two_entries_and_one_call() {
    let t = DialogTable::new();
    let (from_phone, from_pbx) = (
        DialogId::for_leg(b"sp", b"alice", b"bob", Leg::FromPhone),
        DialogId::for_leg(b"sp", b"bob", b"alice", Leg::FromPbx),
    );
    assert_eq!((from_phone.leg(), from_pbx.leg()), (Leg::FromPhone, Leg::FromPbx));
    assert_eq!((from_phone.twin(), from_pbx.twin()), (from_pbx.clone(), from_phone.clone()));
    assert_eq!(from_pbx.call_id(), b"sp");
    // A one-character tag "p" after the second NUL is not taken for the leg marker.
    assert_eq!(DialogId::new(b"sp", b"a", b"p").leg(), Leg::FromPhone);
    // The callee's pass is answered first (bob's 200 reaches sipfront there first), then the caller's.
    let mut to_bob = client();
    to_bob.client = Some(Target { transport: Transport::Udp, addr: "192.0.2.20:5060".parse().unwrap(), conn: None });
    t.confirm(from_pbx.clone(), &to_bob, None);
    t.confirm(from_phone.clone(), &client(), None);
    assert_eq!((t.len(), t.calls_total()), (2, 1), "two legs, one call");
    assert_eq!(t.get(&from_pbx).unwrap().client, to_bob.client, "each leg keeps its own phone");
    assert_eq!(t.leg_of(b"sp", b"bob", b"alice", Leg::FromPbx), from_pbx);
    assert_eq!(t.leg_of(b"sp", b"alice", b"bob", Leg::FromPhone), from_phone);
    t.end(b"sp", b"bob", b"alice");
    assert!(t.is_empty(), "a BYE's 2xx ends both legs");
    // A call that passes once: whichever leg a request names, the one that is here is found.
    t.confirm(from_pbx.clone(), &to_bob, None);
    assert_eq!(t.leg_of(b"sp", b"alice", b"bob", Leg::FromPhone), from_pbx);
}

#[tokio::test(start_paused = true)]
async fn a_2xx_never_acked_is_reaped_after_the_ack_timeout_and_frees_its_source_place() {
    let t = DialogTable::new();
    let limits = ReapLimits {
        max_call: Duration::from_secs(86_400),
        idle: Duration::from_secs(7200),
        terminated: Duration::from_secs(32),
        early: Duration::from_secs(212),
        unacked: Duration::from_secs(32),
    };
    let (never, acked) = (DialogId::new(b"n1", b"a", b"b"), DialogId::new(b"n2", b"a", b"b"));
    t.confirm(never.clone(), &client(), None);
    t.confirm(acked.clone(), &client(), None);
    t.acked(&acked);
    let ip = "192.0.2.9".parse().unwrap();
    assert_eq!(t.count_from(ip), 2, "both calls count against their caller's address");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(t.reap(&limits), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(t.reap(&limits), 1, "the 2xx nobody ACKed");
    assert!(t.get(&never).is_none() && t.get(&acked).is_some());
    assert_eq!(t.count_from(ip), 1, "its place is free again");
    t.remove(&acked);
    assert_eq!(t.count_from(ip), 0);
    assert!(t.per_source.is_empty(), "no entry left behind for an address with no calls");
}
